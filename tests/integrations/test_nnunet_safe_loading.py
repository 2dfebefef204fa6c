"""nnU-Net checkpoints are read weights-only with nnU-Net's own value types allowed: a crafted
``checkpoint_final.pth`` is refused by `medcontext nnunet export` and by the trainer's
``load_checkpoint`` before it runs anything; ``--trust-checkpoint`` / ``MEDCONTEXT_TRUST_CHECKPOINT=1``
are the explicit opt-ins."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from medcontext.cli import main
from medcontext.integrations.nnunet.checkpoint_io import read_nnunet_checkpoint
from medcontext.integrations.nnunet.settings import MedContextSettings
from medcontext.models.safe_load import UntrustedFileError


class _Payload:
    """Unpickling this creates the marker file: code execution from a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _nnunet_checkpoint(extra=None) -> dict:
    """What nnU-Net v2's save_checkpoint stores (logger values are numpy scalars), plus the MedContext entry."""
    logging = {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.nanmean(np.array([0.4, 0.6]))],
               "dice_per_class_or_region": [[np.float32(0.3), np.float64(0.7)]], "train_losses": [np.float64(-0.2)],
               "val_losses": [np.float64(-0.1)], "lrs": [0.01], "epoch_start_timestamps": [1.0e9],
               "epoch_end_timestamps": [1.0e9 + 5]}
    checkpoint = {
        "network_weights": {"w": torch.ones(2)}, "optimizer_state": {"state": {}, "param_groups": []},
        "grad_scaler_state": None, "logging": logging, "_best_ema": np.float64(0.55), "current_epoch": 3,
        "init_args": {"plans": {"a": 1}, "configuration": "3d_fullres", "fold": 0, "dataset_json": {},
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainerMedContext", "inference_allowed_mirroring_axes": (0, 1, 2),
        "medcontext": {"settings": MedContextSettings().as_dict(), "teacher_weights": {"w": torch.full((2,), 3.0)},
                       "mask_token": None},
    }
    checkpoint.update(extra or {})
    return checkpoint


def _model_folder(root, checkpoint: dict):
    folder = root / "nnUNetTrainerMedContext__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        (folder / name).write_text("{}")
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def test_a_real_nnunet_checkpoint_loads_weights_only(tmp_path):
    torch.save(_nnunet_checkpoint(), tmp_path / "c.pth")
    loaded = read_nnunet_checkpoint(tmp_path / "c.pth")
    assert loaded["_best_ema"] == np.float64(0.55) and loaded["init_args"]["device"] == torch.device("cpu")
    assert main(["nnunet", "export", str(_model_folder(tmp_path, _nnunet_checkpoint())), str(tmp_path / "out")]) == 0


def test_export_refuses_a_crafted_checkpoint_before_it_runs(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    folder = _model_folder(tmp_path, _nnunet_checkpoint({"logging": {"x": _Payload(marker)}}))
    assert main(["nnunet", "export", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert f"{folder / 'fold_0' / 'checkpoint_final.pth'} was not loaded" in err and "pathlib" in err
    assert "--trust-checkpoint" in err
    assert main(["nnunet", "export", str(folder), str(tmp_path / "out"), "--trust-checkpoint"]) == 0
    assert marker.exists()  # the opt-in is what it says: full pickle


def test_the_trainers_load_checkpoint_refuses_a_crafted_file(tmp_path, monkeypatch):
    pytest.importorskip("nnunetv2", reason='nnunetv2 is not installed (pip install "medcontext[nnunet]")')
    from medcontext.integrations.nnunet.trainer import nnUNetTrainerMedContext

    marker = tmp_path / "code_ran"
    torch.save(_nnunet_checkpoint({"logging": {"x": _Payload(marker)}}), tmp_path / "checkpoint_latest.pth")
    trainer = object.__new__(nnUNetTrainerMedContext)  # the file is read before any trainer state is touched
    trainer.was_initialized, trainer.device = True, torch.device("cpu")
    monkeypatch.delenv("MEDCONTEXT_TRUST_CHECKPOINT", raising=False)
    with pytest.raises(UntrustedFileError, match="MEDCONTEXT_TRUST_CHECKPOINT=1") as info:
        trainer.load_checkpoint(str(tmp_path / "checkpoint_latest.pth"))
    assert "pathlib" in str(info.value) and not marker.exists()
