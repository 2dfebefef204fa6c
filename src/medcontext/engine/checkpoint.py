"""Training checkpoints: what they hold, atomic writing, strict loading.

A checkpoint (``last.pt``, ``best.pt``) is a dict::

    {
      "format": "medcontext-checkpoint", "format_version": 2,
      "version": medcontext.__version__,
      "step": completed optimizer steps,
      "model": mc.state_dict(),          # student, teacher.*, mask tokens
      "optimizer": ..., "scaler": ... | None,
      "rng": {"python", "numpy", "torch", "cuda", "mask_generator"},   # tensors and plain values
      "config": TrainConfig.to_dict(),
      "model_info": {"name", "in_channels", "out_channels", "roi", "output_mode"},
      "best": {"metric", "step"}, "extra": {...},
    }

It is written with :func:`medcontext.io.atomic.atomic_write` (temp file, fsync,
``os.replace``): a crash during a save leaves the previous file intact, and a full disk
raises :class:`~medcontext.io.atomic.DiskFullError` naming the file and the space it needs. Loading is strict:
any key difference between the checkpoint and the model is an error listing the keys.

Everything in it is a tensor or a plain Python value, so it is read with
``torch.load(weights_only=True)`` (:mod:`medcontext.models.safe_load`): a crafted file in a run
folder cannot run code. Format version 2 stores numpy's random state as a tensor (version 1
stored a numpy array; such files still load, see :mod:`~medcontext.models.safe_load`).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

import medcontext
from medcontext.io.atomic import atomic_write
from medcontext.models.safe_load import UnreadableFileError, load_weights_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "tensor_bytes",
    "read_checkpoint",
    "load_model_state",
    "capture_rng_state",
    "restore_rng_state",
]

CHECKPOINT_FORMAT = "medcontext-checkpoint"
FORMAT_VERSION = 2
_LIST_LIMIT = 12


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the model."""


def capture_rng_state(mask_generator: torch.Generator | None = None) -> dict:
    """Every random state a training step consumes (python, numpy, torch CPU/CUDA, masks).

    Only tensors and plain values, so that a weights-only load reads it back: numpy's state
    ``(kind, keys, pos, has_gauss, cached_gaussian)`` becomes a dict with the 624 keys as an
    int64 tensor.
    """
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "mask_generator": mask_generator.get_state() if mask_generator is not None else None,
    }
    return state


def _numpy_state(saved: Any) -> tuple:
    """numpy's ``set_state`` tuple from :func:`capture_rng_state`'s dict (or a format-1 tuple)."""
    if isinstance(saved, Mapping):
        keys = saved["keys"].numpy() if isinstance(saved["keys"], torch.Tensor) else np.asarray(saved["keys"])
        return (saved["kind"], keys.astype(np.uint32), int(saved["pos"]), int(saved["has_gauss"]),
                float(saved["cached_gaussian"]))
    return tuple(saved)


def restore_rng_state(state: Mapping[str, Any], mask_generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_python_state(state["python"]))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if mask_generator is not None:
        if state.get("mask_generator") is None:
            raise CheckpointError("the checkpoint has no mask generator state but the model draws seeded masks")
        mask_generator.set_state(state["mask_generator"])


def _python_state(saved: Any) -> tuple:
    """``random.setstate`` wants tuples; a loader may hand back lists."""
    version, internal, gauss = saved
    return (int(version), tuple(int(v) for v in internal), gauss)


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (plus format and version fields) to ``path`` atomically.

    Raises:
        DiskFullError: the file system is full; the message names ``path`` and the size
            of the checkpoint, and the previous file at ``path`` is intact.
    """
    data = {"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION, "version": medcontext.__version__}
    data.update(payload)
    # the tensors are a lower bound; the previous checkpoint of the same run measures the metadata too
    path = Path(path)
    previous = path.stat().st_size if path.is_file() else 0
    return atomic_write(path, lambda handle: torch.save(data, handle), expected_size=max(tensor_bytes(data), previous))


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensor storages in a nested dict/list/tuple, each shared storage counted once
    (what ``torch.save`` writes; the checkpoint's size on disk, less a few kB of metadata)."""
    storages: dict[tuple, int] = {}

    def visit(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[(item.device.type, item.device.index, storage.data_ptr())] = storage.nbytes()
        elif isinstance(item, Mapping):
            for value in item.values():
                visit(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                visit(value)

    visit(obj)
    return sum(storages.values())


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, trust: bool = False) -> dict:
    """Load a medcontext checkpoint dict, with errors that name the file.

    Args:
        path: the checkpoint file.
        map_location: where tensors go.
        trust: load with full pickle instead of ``weights_only=True`` (only for files whose
            origin you trust; CLI ``--trust-checkpoint``).

    Raises:
        CheckpointError: missing, unreadable or not a medcontext checkpoint.
        UntrustedFileError: the file holds objects a weights-only load refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = load_weights_file(path, trust=trust, map_location=map_location)
    except UnreadableFileError as err:
        raise CheckpointError(f"checkpoint {err}") from err
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a medcontext training checkpoint (no format={CHECKPOINT_FORMAT!r} field); "
            "to initialise a network from foreign weights use --init-checkpoint"
        )
    return data


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def load_model_state(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """``module.load_state_dict(state, strict=True)`` with an error naming differing keys/shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing in {source} ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected in {source} ({len(unexpected)}): {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_listing(shapes)}")
        raise CheckpointError(
            f"{source} does not match the model: " + "; ".join(parts) + ". Was it written by a run with a "
            "different model, variant or dataset?"
        )
    module.load_state_dict(state, strict=True)
