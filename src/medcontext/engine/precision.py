"""Device and mixed-precision choice: autocast context and gradient scaler for a run.

``fp32`` runs without autocast. ``bf16`` autocasts on CPU and CUDA (no scaler needed: bf16
has fp32's exponent range). ``fp16`` is CUDA only and uses a ``GradScaler`` whose state is
checkpointed. ``auto`` picks bf16 on CUDA devices that support it, else fp16, and fp32 on CPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["Precision", "resolve_device", "resolve_precision"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"train.device={name!r} is not a valid device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu")
    return device


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` in fp32/bf16/fp16 on ``device``."""

    name: str
    device: torch.device

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for forward passes (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Resolve ``train.precision`` for ``device`` (errors name the fix)."""
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"train.precision must be auto, fp32, bf16 or fp16, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    return Precision(name, device)
