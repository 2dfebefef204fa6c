"""One input check for every command: the broken-dataset catalogue (``broken_dataset``, tests/conftest.py)
drives `train`, `evaluate` and `predict` as it drives `data check`: exit code 2 and the message of
`data check`, naming the file, before any work."""

from __future__ import annotations

import os
import shutil

import pytest

from medcontext.cli import main

# a run on the catalogue's dataset (12^3 voxels): case_000 trains, case_001 and case_002 are its test cases
_TINY_ON_BLOBS = ["--roi", "8", "8", "8", "--set", "data.train_case_ids=[case_000]", "--set", "data.val_cases=0",
                  "--set", "data.test_cases=[case_001, case_002]"]


@pytest.fixture(scope="module")
def blob_run(tmp_path_factory, helpers):
    root = helpers.write_msd(tmp_path_factory.mktemp("blobs") / "ds", n=3)
    out = root.parent / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--variant", "baseline", "--steps", "1", "--seed", "0",
                 "--model", "unet3d", "--model-size", "tiny", "--no-progress", "--set", "train.tensorboard=false",
                 "--set", "data.num_samples=1", *_TINY_ON_BLOBS]) == 0
    return root, out


def _broken_copy(root, tmp_path, broken_dataset, helpers):
    copy = tmp_path / "ds"
    shutil.copytree(root, copy, symlinks=True)
    broken_dataset.break_it(copy, helpers)
    return copy, broken_dataset.file, broken_dataset.problem


def _assert_named(err: str, path, problem: str) -> None:
    assert str(path) in err and problem in err, err
    assert "Traceback" not in err


def test_train_answers_every_broken_dataset_before_planning(tmp_path, helpers, train_argv, capsys, broken_dataset):
    root = helpers.write_msd(tmp_path / "ds", n=3)
    broken_dataset.break_it(root, helpers)
    file, problem = broken_dataset.file, broken_dataset.problem
    out = tmp_path / "run"
    assert main(train_argv(root, out, *_TINY_ON_BLOBS, steps=1)) == 2
    _assert_named(capsys.readouterr().err, root / file, problem)
    assert not out.exists()  # nothing written, no lock left


def test_evaluate_answers_every_broken_dataset_before_predicting(blob_run, tmp_path, helpers, capsys, broken_dataset):
    root, run = blob_run
    copy, file, problem = _broken_copy(root, tmp_path, broken_dataset, helpers)
    assert main(["evaluate", "--run", str(run), "--data", str(copy), "--no-progress"]) == 2
    _assert_named(capsys.readouterr().err, copy / file, problem)
    assert not (run / "eval").exists()


def test_predict_answers_every_broken_image_for_that_case_and_writes_the_others(blob_run, tmp_path, helpers, capsys,
                                                                                broken_dataset):
    root, run = blob_run
    copy, file, problem = _broken_copy(root, tmp_path, broken_dataset, helpers)
    if not file.startswith("imagesTr/") or not os.path.lexists(copy / file):
        pytest.skip("predict reads images only: a label, dataset.json or a deleted file is not its input")
    out = tmp_path / "out"
    assert main(["predict", "--run", str(run), "--input", str(copy / "imagesTr"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    _assert_named(err, copy / file, problem)
    assert "could not be predicted" in err
    assert sorted(p.name for p in out.iterdir()) == ["case_000.nii.gz", "case_002.nii.gz"]
