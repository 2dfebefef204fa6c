"""No silent harm from a command: `--resume` checks its data like a fresh start and refuses another
dataset, all-empty labels are refused, `predict` never overwrites an input or writes one file for
two cases and treats a non-finite network output as that case's error, and file-system problems
(a file as --out, a read-only run folder) are clear messages before any work."""

from __future__ import annotations

import errno
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from medcontext.cli import main
from medcontext.engine.checkpoint import read_checkpoint
from medcontext.io import run_lock


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, phantom_dir):
    """A 2-step run on a copy of the phantom (the tests break the copy, never the shared phantom)."""
    root = tmp_path_factory.mktemp("guards")
    data = root / "Phantom"
    shutil.copytree(phantom_dir, data)
    out = root / "run"
    argv = ["train", "--data", str(data), "--out", str(out), "--variant", "baseline", "--steps", "2", "--seed", "0",
            "--model", "unet3d", "--model-size", "tiny", "--roi", "16", "16", "16", "--no-progress",
            "--set", "data.num_samples=1", "--set", "data.val_cases=1", "--set", "data.test_cases=2",
            "--set", "train.tensorboard=false", "--stop-after", "1"]
    assert main(argv) == 0
    return data, out, argv


def _copy_run(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_resume_checks_the_dataset_like_a_fresh_start(finished_run, tmp_path, capsys):
    data, run, argv = finished_run
    copy_data = tmp_path / "Phantom"
    shutil.copytree(data, copy_data)
    run = _copy_run(run, tmp_path)
    image = copy_data / "imagesTr" / "phantom_003.nii.gz"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    resume = [a if a != str(data) else str(copy_data) for a in argv]
    resume[resume.index("--out") + 1] = str(run)
    assert main([*resume, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"case phantom_003: image file {image} is truncated or corrupt" in err, err
    assert read_checkpoint(run / "last.pt")["step"] == 1


def test_resume_refuses_a_dataset_that_differs_from_the_runs(finished_run, tmp_path, capsys):
    data, run, argv = finished_run
    other = tmp_path / "Other"
    shutil.copytree(data, other)
    label = other / "labelsTr" / "phantom_002.nii.gz"
    img = nib.load(str(label))
    values = np.asarray(img.dataobj).copy()
    values[values == 1] = 0  # one structure removed from one case
    nib.save(nib.Nifti1Image(values, img.affine, img.header), str(label))
    run = _copy_run(run, tmp_path)
    resume = [a if a != str(data) else str(other) for a in argv]
    resume[resume.index("--out") + 1] = str(run)
    assert main([*resume, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"the dataset {other} differs from the one this run was trained on ({data}" in err, err
    assert "case phantom_002: label_voxels differ" in err
    moved = tmp_path / "Moved"  # the same dataset in another folder is the run's own dataset
    shutil.copytree(data, moved)
    resume = [a if a != str(data) else str(moved) for a in argv]
    resume[resume.index("--out") + 1] = str(run)
    assert main([*resume, "--resume"]) == 0
    assert read_checkpoint(run / "last.pt")["step"] == 2


def test_all_empty_training_labels_warn_in_data_check_and_refuse_training(tmp_path, helpers, train_argv, capsys):
    root = helpers.write_msd(tmp_path / "ds", n=3)
    for label in (root / "labelsTr").iterdir():
        helpers.write_nifti(label, np.zeros((12, 12, 12), np.uint8))
    assert main(["data", "check", str(root)]) == 0
    assert "warning: every label volume is empty (3 case(s) without a foreground voxel)" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(train_argv(root, out, "--roi", "8", "8", "8", "--set", "data.val_cases=0", "--set",
                           "data.test_cases=1", steps=1)) == 2
    err = capsys.readouterr().err
    assert "every training label is empty: none of the 2 training case(s)" in err
    assert not out.exists()


def test_predict_refuses_outputs_that_are_inputs_or_shared_before_any_work(finished_run, tmp_path, capsys,
                                                                           monkeypatch):
    import medcontext.engine.predict as predict

    monkeypatch.setattr(predict, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    data, run, _ = finished_run
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(data / "imagesTr" / "phantom_000.nii.gz", inputs / "case.nii.gz")
    before = (inputs / "case.nii.gz").read_bytes()
    assert main(["predict", "--run", str(run), "--input", str(inputs), "--output", str(inputs)]) == 2
    assert f"--output {inputs} is a folder of the input files" in capsys.readouterr().err
    assert main(["predict", "--run", str(run), "--input", str(inputs / "case.nii.gz"), "--output", str(inputs)]) == 2
    assert "is a folder of the input files" in capsys.readouterr().err
    assert (inputs / "case.nii.gz").read_bytes() == before
    nib.save(nib.load(str(inputs / "case.nii.gz")), str(inputs / "case.nii"))
    assert main(["predict", "--run", str(run), "--input", str(inputs), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"two input cases would both be written to {tmp_path / 'out' / 'case.nii.gz'}" in err
    assert f"{inputs / 'case.nii'} and {inputs / 'case.nii.gz'}" in err
    assert not (tmp_path / "out").exists()


def test_a_non_finite_network_output_fails_that_case_only(finished_run, tmp_path, capsys):
    data, run, _ = finished_run
    broken = _copy_run(run, tmp_path)
    checkpoint = torch.load(broken / "last.pt", weights_only=True)
    checkpoint["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                           for k, v in checkpoint["model"].items()}  # weights broken by a diverged run
    torch.save(checkpoint, broken / "last.pt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(data / "imagesTr" / "phantom_000.nii.gz", inputs / "a.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", "--run", str(broken), "--input", str(inputs), "--output", str(out), "--checkpoint",
                 "last"]) == 2
    err = capsys.readouterr().err
    assert "a (" in err and "NaN/Inf values" in err and "no label map written" in err
    assert not (out / "a.nii.gz").exists()
    image = nib.load(str(inputs / "a.nii.gz"))  # and a NaN voxel in the input: that case's error, the other written
    values = np.asarray(image.dataobj).astype(np.float32)
    values[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(values, image.affine), str(inputs / "b.nii.gz"))
    assert main(["predict", "--run", str(run), "--input", str(inputs), "--output", str(out), "--checkpoint", "last"]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 case(s) could not be predicted" in err and f"image {inputs / 'b.nii.gz'} has 1 NaN/Inf voxels" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz"]


def _read_only(path, *args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


def test_file_system_problems_are_named_before_any_work(finished_run, tmp_path, train_argv, phantom_dir, capsys,
                                                       monkeypatch):
    import medcontext.data

    data, run, _ = finished_run
    (tmp_path / "a_file").write_text("")
    assert main(["predict", "--run", str(run), "--input", str(data / "imagesTr" / "phantom_000.nii.gz"),
                 "--output", str(tmp_path / "a_file")]) == 2
    assert f"--output {tmp_path / 'a_file'} is an existing file, not a folder" in capsys.readouterr().err
    monkeypatch.setattr(medcontext.data, "validate_dataset",
                        lambda *a, **k: pytest.fail("the dataset was checked before the run folder"))
    monkeypatch.setattr(run_lock, "open", _read_only, raising=False)
    assert main(train_argv(phantom_dir, tmp_path / "ro_run", steps=1)) == 2
    assert (f"the run folder {tmp_path / 'ro_run'} cannot be written: the file system is mounted read-only"
            in capsys.readouterr().err)
    assert main(["evaluate", "--run", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"the run folder {run} cannot be written: the file system is mounted read-only" in err
    assert "Traceback" not in err and not (run / "eval").exists()
