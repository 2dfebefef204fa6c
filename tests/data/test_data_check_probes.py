"""What the new-user probes of ``medcontext data check`` found sound, kept sound: every broken
input ends with exit code 2 and one message naming the file and the problem; odd but valid
names work; a ``dataset.json`` without its ``training`` list says what was read instead."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from medcontext.cli import main


def _truncated(root, h):
    path = root / "imagesTr" / "case_001.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "imagesTr/case_001.nii.gz", "truncated or corrupt"


def _zero_bytes(root, h):
    (root / "labelsTr" / "case_001.nii.gz").write_bytes(b"")
    return "labelsTr/case_001.nii.gz", "Empty file"


def _shape(root, h):
    h.write_nifti(root / "labelsTr" / "case_001.nii.gz", np.zeros((12, 12, 11), np.uint8))
    return "labelsTr/case_001.nii.gz", "has shape (12, 12, 11) but image"


def _affine(root, h):
    _, label = h.blob_case(seed=1)
    affine = np.eye(4)
    affine[:3, 3] = [5.0, 0.0, 0.0]
    h.write_nifti(root / "labelsTr" / "case_001.nii.gz", label, affine)
    return "labelsTr/case_001.nii.gz", "affine differs from image"


def _spacing(root, h):
    _, label = h.blob_case(seed=1)
    h.write_nifti(root / "labelsTr" / "case_001.nii.gz", label, np.diag([2.0, 2.0, 2.0, 1.0]))
    return "labelsTr/case_001.nii.gz", "affine differs from image"


def _undeclared_label(root, h):
    _, label = h.blob_case(seed=1)
    label[0, 0, 0] = 7
    h.write_nifti(root / "labelsTr" / "case_001.nii.gz", label)
    return "labelsTr/case_001.nii.gz", "has values [7] not in the dataset's labels"


def _nan_inf(root, h):
    image, _ = h.blob_case(seed=1)
    image[0, 0, 0], image[1, 1, 1] = np.nan, np.inf
    h.write_nifti(root / "imagesTr" / "case_001.nii.gz", image)
    return "imagesTr/case_001.nii.gz", "2 NaN/Inf voxels"


def _four_d_for_3d(root, h):
    image, _ = h.blob_case(seed=1)
    h.write_nifti(root / "imagesTr" / "case_001.nii.gz", np.stack([image, image], -1))
    return "imagesTr/case_001.nii.gz", "has 2 channel(s) but the dataset has 1"


def _float_label(root, h):
    _, label = h.blob_case(seed=1)
    label = label.astype(np.float32)
    label[0, 0, 0] = 0.5
    h.write_nifti(root / "labelsTr" / "case_001.nii.gz", label)
    return "labelsTr/case_001.nii.gz", "non-integer values [0.5]"


def _broken_json(root, h):
    (root / "dataset.json").write_text('{"name": "ds", "labels": ')
    return "dataset.json", "is not valid JSON"


def _incomplete_json(root, h):
    meta = json.loads((root / "dataset.json").read_text())
    del meta["labels"]
    (root / "dataset.json").write_text(json.dumps(meta))
    return "dataset.json", "missing key 'labels'"


def _missing_file(root, h):
    (root / "imagesTr" / "case_002.nii.gz").unlink()
    return "imagesTr/case_002.nii.gz", "does not exist"


def _symlink_loop(root, h):
    path = root / "imagesTr" / "case_001.nii.gz"
    path.unlink()
    os.symlink("loop.nii.gz", path)
    os.symlink("case_001.nii.gz", root / "imagesTr" / "loop.nii.gz")
    return "imagesTr/case_001.nii.gz", "does not exist"


PROBES = [_truncated, _zero_bytes, _shape, _affine, _spacing, _undeclared_label, _nan_inf, _four_d_for_3d,
          _float_label, _broken_json, _incomplete_json, _missing_file, _symlink_loop]


@pytest.mark.parametrize("break_it", PROBES, ids=[p.__name__.strip("_") for p in PROBES])
def test_data_check_answers_broken_input_with_exit_code_2_and_a_message(tmp_path, helpers, capsys, break_it):
    root = helpers.write_msd(tmp_path / "ds", n=3)
    file, problem = break_it(root, helpers)
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{root}/{file}" in err and problem in err, err
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
