"""What the new-user probes of ``medcontext data check`` found sound, kept sound: every broken
input ends with exit code 2 and one message naming the file and the problem; odd but valid
names work; a ``dataset.json`` without its ``training`` list says what was read instead."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medcontext.cli import main


def test_data_check_answers_broken_input_with_exit_code_2_and_a_message(tmp_path, helpers, capsys, broken_dataset):
    """Every entry of the broken-dataset catalogue (tests/data/conftest.py)."""
    root = helpers.write_msd(tmp_path / "ds", n=3)
    broken_dataset.break_it(root, helpers)
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{root}/{broken_dataset.file}" in err and broken_dataset.problem in err, err
    assert "Traceback" not in err and err.count("error:") == 1


def test_names_with_spaces_and_non_ascii_characters_work(tmp_path, helpers, capsys):
    root = tmp_path / "Données du patient"
    training = []
    for i, name in enumerate(["cas ü 01", "Fall ß 02", "病例 03"]):
        image, label = helpers.blob_case(seed=i)
        helpers.write_nifti(root / "imagesTr" / f"{name}.nii.gz", image)
        helpers.write_nifti(root / "labelsTr" / f"{name}.nii.gz", label)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    meta = {"name": "odd names", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a", "2": "b"},
            "training": training}
    (root / "dataset.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 labelled" in out and "病例 03" in out and "cas ü 01" in out


def test_a_dataset_json_without_training_says_what_was_read(tmp_path, helpers, capsys):
    root = helpers.write_msd(tmp_path / "ds", n=3)
    meta = json.loads((root / "dataset.json").read_text())
    del meta["training"]
    (root / "dataset.json").write_text(json.dumps(meta))
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "has no 'training' list: the 3 labelled case(s) were read from imagesTr/ and labelsTr/ by file name" in out
    for name in ("imagesTr", "labelsTr"):  # with nothing to read instead, it is an error
        for file in (root / name).iterdir():
            file.unlink()
    assert main(["data", "check", str(root)]) == 2
    assert "no NIfTI files" in capsys.readouterr().err
