"""End to end with nnU-Net's own commands on a tiny synthetic MSD task: convert, plan and
preprocess (the session fixture), train a MedContext run on the CPU, stop it, resume it with
``--c``, predict, find the best configuration, export student and teacher, and predict the
export with unmodified nnunetv2 while ``medcontext`` cannot be imported. Skips without nnunetv2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2", reason='nnunetv2 is not installed (pip install "medcontext[nnunet]")')

from medcontext.integrations.nnunet import discovery  # noqa: E402

NAME = "nnUNetTrainerMedContext_3epochs_2iters_1valiters"


@pytest.fixture
def trainer_installed():
    """The shim in nnU-Net's own trainer folder for the test, removed afterwards if it was absent."""
    target = discovery.nnunet_trainer_folder() / discovery.SHIM_NAME
    existed = target.exists()
    discovery.install_trainer()
    yield target
    if not existed:
        discovery.remove_trainer()


def _segmentations(folder):
    import nibabel as nib

    files = sorted(folder.glob("*.nii.gz"))
    return {f.name: np.asarray(nib.load(str(f)).dataobj) for f in files}


def _train_until_first_checkpoint(command, env, fold_dir, timeout=600):
    """Start training, kill it (SIGKILL) once the first epoch's checkpoint exists: an interrupted run."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    try:
        while not (fold_dir / "checkpoint_best.pth").exists():
            if process.poll() is not None:
                raise AssertionError(f"training ended before its first checkpoint:\n{process.stderr.read()[-3000:]}")
            if time.time() > deadline:
                raise AssertionError("no checkpoint within the timeout")
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()


@pytest.mark.slow
def test_train_stop_resume_predict_export(nnunet_dataset, run_nnunet, trainer_installed, tmp_path):
    env = nnunet_dataset["env"]
    model_folder = nnunet_dataset["results"] / f"{NAME}__nnUNetPlans__3d_fullres"
    fold_dir = model_folder / "fold_0"
    train = [os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train"), "990", "3d_fullres", "0", "-tr", NAME,
             "-device", "cpu"]

    _train_until_first_checkpoint(train, env, fold_dir)
    assert not (fold_dir / "checkpoint_final.pth").exists(), "the run finished before it could be stopped"
    interrupted = torch.load(fold_dir / "checkpoint_best.pth", weights_only=False)
    assert interrupted["trainer_name"] == NAME and interrupted["current_epoch"] < 3
    assert interrupted["medcontext"]["settings"]["num_epochs"] == 3

    run_nnunet("nnUNetv2_train", 990, "3d_fullres", 0, "-tr", NAME, "-device", "cpu", "--c")
    final = torch.load(fold_dir / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 3 and final["trainer_name"] == NAME
    logs = sorted(fold_dir.glob("training_log_*.txt"))
    assert len(logs) == 2
    resumed_log = logs[-1].read_text()
    assert f"MedContext ({NAME})" in resumed_log and "MedContext terms: sup" in resumed_log
    assert "teacher initialised as a copy" not in resumed_log  # restored from the checkpoint instead
    assert "teacher initialised as a copy" in logs[0].read_text()
    assert (fold_dir / "validation" / "summary.json").is_file()

    run_nnunet("nnUNetv2_find_best_configuration", 990, "-c", "3d_fullres", "-tr", NAME, "-f", 0, "--disable_ensembling")
    assert NAME in (nnunet_dataset["results"] / "inference_instructions.txt").read_text()

    predict_args = ["-i", nnunet_dataset["test_images"], "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1]
    ours = tmp_path / "pred_medcontext"
    run_nnunet("nnUNetv2_predict", *predict_args, "-o", ours, "-d", 990, "-c", "3d_fullres", "-f", 0, "-tr", NAME)
    assert len(_segmentations(ours)) == 2

    exported = {}
    for use in ("student", "teacher"):
        out = tmp_path / f"plain_{use}"
        subprocess.run([sys.executable, "-m", "medcontext", "nnunet", "export", str(model_folder), str(out), "--use", use],
                       check=True, capture_output=True, env=env)
        exported[use] = torch.load(out / "fold_0" / "checkpoint_final.pth", weights_only=False)
        assert exported[use]["trainer_name"] == "nnUNetTrainer" and "medcontext" not in exported[use]
        # plain nnunetv2, with every import of medcontext failing
        script = ("import sys; sys.modules['medcontext'] = None; "
                  "from nnunetv2.inference.predict_from_raw_data import predict_entry_point_modelfolder as main; "
                  f"sys.argv = ['nnUNetv2_predict_from_modelfolder'] + {[str(a) for a in predict_args]!r} + "
                  f"['-o', {str(tmp_path / f'pred_{use}')!r}, '-m', {str(out)!r}, '-f', '0']; main()")
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    assert any(not torch.equal(a, b) for a, b in zip(exported["student"]["network_weights"].values(),
                                                     exported["teacher"]["network_weights"].values()))
    plain_student, medcontext_run = _segmentations(tmp_path / "pred_student"), _segmentations(ours)
    assert plain_student.keys() == medcontext_run.keys()
    for name, seg in medcontext_run.items():
        assert np.array_equal(seg, plain_student[name]), name
    assert len(_segmentations(tmp_path / "pred_teacher")) == 2


def _nnunet_search_imports_cleanly() -> str | None:
    """Why nnU-Net's search of its own trainer folder fails here, or None if it works (it imports
    its Primus trainers, hence timm and torchvision)."""
    code = "from nnunetv2.training.nnUNetTrainer.primus import primus_trainers"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["?"])[-1]


def test_nnunet_finds_the_trainer_through_nnUNet_extTrainer(nnunet_dataset):
    problem = _nnunet_search_imports_cleanly()
    if problem is not None:
        pytest.skip(f"nnU-Net cannot search its own trainer folder here ({problem}), so it never reaches "
                    "nnUNet_extTrainer; `medcontext nnunet install-trainer` is the way on such a machine")
    if (discovery.nnunet_trainer_folder() / discovery.SHIM_NAME).exists():
        pytest.skip("the trainer is installed in nnU-Net's own folder, which nnU-Net searches first")
    env = dict(nnunet_dataset["env"], nnUNet_extTrainer=str(discovery.ext_trainer_folder()))
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find; "
            "c = find('nnUNetTrainerMedContext_ratio60'); print(c.__module__, c.medcontext_settings.mask_ratio)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "medcontext.integrations.nnunet.trainer 0.6"
