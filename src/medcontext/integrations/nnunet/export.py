"""Export a MedContext nnU-Net model as a plain nnU-Net model folder.

The result predicts with unmodified nnunetv2 (``nnUNetv2_predict_from_modelfolder``), without
``medcontext`` installed: each checkpoint names ``nnUNetTrainer`` as its trainer, holds the
student's or the teacher's weights as ``network_weights`` and no MedContext entry. Only torch is
needed here; nnunetv2 is not imported. Checkpoints are read weights-only
(:mod:`~medcontext.integrations.nnunet.checkpoint_io`) unless ``trust``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from medcontext.integrations.nnunet.checkpoint_io import read_nnunet_checkpoint
from medcontext.io.atomic import atomic_write

__all__ = ["export_plain_model", "PLAIN_TRAINER_NAME", "MODEL_FILES"]

PLAIN_TRAINER_NAME = "nnUNetTrainer"
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
_CHECKPOINT_KEY = "medcontext"  # trainer.CHECKPOINT_KEY, repeated so that nnunetv2 need not import


def _folds(model_folder: Path, folds: Sequence[str] | None) -> list[str]:
    found = sorted(p.name[len("fold_"):] for p in model_folder.glob("fold_*") if p.is_dir())
    if folds is None:
        if not found:
            raise FileNotFoundError(f"{model_folder} holds no fold_* folder: is it an nnU-Net trained-model folder?")
        return found
    missing = [str(f) for f in folds if str(f) not in found]
    if missing:
        raise FileNotFoundError(f"{model_folder}: no fold_{missing[0]} (folds present: {found or 'none'})")
    return [str(f) for f in folds]


def export_plain_model(
    model_folder: str | os.PathLike,
    output_folder: str | os.PathLike,
    use: str = "student",
    checkpoint_name: str = "checkpoint_final.pth",
    folds: Sequence[str | int] | None = None,
    trust: bool = False,
) -> list[Path]:
    """Write a plain nnU-Net model folder from a MedContext one.

    Args:
        model_folder: ``nnUNet_results/DatasetXXX/nnUNetTrainerMedContext...__PLANS__CONF``.
        output_folder: new folder (must not exist or be empty) receiving ``plans.json``,
            ``dataset.json``, ``dataset_fingerprint.json`` and ``fold_F/<checkpoint_name>``.
        use: ``"student"`` (what nnU-Net's validation scored) or ``"teacher"`` (the EMA model).
        checkpoint_name: checkpoint file in each fold folder.
        folds: folds to export; all ``fold_*`` folders by default.
        trust: read the checkpoints with full pickle (CLI ``--trust-checkpoint``; only for files
            you trust: a crafted file runs code).

    Returns:
        The checkpoint files written.

    Raises:
        ValueError: ``use`` is unknown, a checkpoint has no MedContext entry, or asks for a
            teacher the variant does not keep.
        FileNotFoundError / FileExistsError: missing inputs or a non-empty output folder.
        UntrustedFileError: a checkpoint holds objects a weights-only load refuses.
    """
    if use not in ("student", "teacher"):
        raise ValueError(f"use must be 'student' or 'teacher', got {use!r}")
    model_folder, output_folder = Path(model_folder), Path(output_folder)
    for name in MODEL_FILES[:2]:
        if not (model_folder / name).is_file():
            raise FileNotFoundError(f"{model_folder / name} is missing: is {model_folder} an nnU-Net trained-model folder?")
    if output_folder.exists() and any(output_folder.iterdir()):
        raise FileExistsError(f"output folder {output_folder} exists and is not empty; choose a new folder")
    selected = _folds(model_folder, None if folds is None else [str(f) for f in folds])

    checkpoints = {}
    for fold in selected:  # read and check everything before writing anything
        source = model_folder / f"fold_{fold}" / checkpoint_name
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing (train to the end, or pass checkpoint_name)")
        checkpoint = read_nnunet_checkpoint(source, trust=trust)
        state = checkpoint.get(_CHECKPOINT_KEY)
        if state is None:
            raise ValueError(f"{source} has no MedContext entry ({_CHECKPOINT_KEY!r}): trainer {checkpoint.get('trainer_name')!r}")
        if use == "teacher":
            if state.get("teacher_weights") is None:
                raise ValueError(f"{source}: variant {state['settings']['variant']!r} keeps no teacher; use='student'")
            checkpoint["network_weights"] = state["teacher_weights"]
        del checkpoint[_CHECKPOINT_KEY]
        checkpoint["trainer_name"] = PLAIN_TRAINER_NAME
        checkpoints[fold] = checkpoint

    output_folder.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (model_folder / name).is_file():
            shutil.copyfile(model_folder / name, output_folder / name)
    written = []
    for fold, checkpoint in checkpoints.items():
        target = output_folder / f"fold_{fold}" / checkpoint_name
        target.parent.mkdir(exist_ok=True)
        atomic_write(target, lambda handle, checkpoint=checkpoint: torch.save(checkpoint, handle))
        written.append(target)
    return written

