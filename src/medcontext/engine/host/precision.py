"""Device and mixed-precision choice: autocast context and gradient scaler for a run.

``fp32`` runs without autocast. ``bf16`` autocasts on CPU and CUDA (no scaler needed: bf16
has fp32's exponent range). ``fp16`` is CUDA only and uses a ``GradScaler`` whose state is
checkpointed. ``auto`` picks bf16 on CUDA devices that support it, else fp16; on the CPU it
picks bf16 only where the CPU runs it natively (:func:`cpu_bf16_support`), else fp32.

On the CPU, PyTorch's bf16 convolutions and matrix products run in oneDNN. With AVX512-BF16
or AMX instructions they are faster than fp32; without them oneDNN emulates bf16 or falls
back to reference kernels, and a training step becomes many times slower than in fp32
(BENCHMARKS.md, "Portable CPU defaults": 16x for UNETR-small and 51x for unet3d-small at the
study's crop, capped at AVX2). oneDNN
can be capped below the CPU's instruction set with ``ONEDNN_MAX_CPU_ISA`` (``AVX2``
reproduces an AVX2-only CPU on a newer one); the choice follows that cap, because it decides
which kernels oneDNN runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

__all__ = ["Precision", "CpuBf16Support", "cpu_bf16_support", "resolve_device", "resolve_precision"]

#: ``ONEDNN_MAX_CPU_ISA`` values that keep oneDNN's native bf16 kernels (AVX512_CORE_BF16 and above)
_BF16_ISAS = frozenset({
    "ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
})

#: measured cost of emulated bf16 against fp32 on the CPU (BENCHMARKS.md, "Portable CPU defaults")
EMULATED_BF16_COST = "training steps 16x (UNETR) to 51x (unet3d) slower than fp32 were measured"


@dataclass(frozen=True)
class CpuBf16Support:
    """Whether this CPU runs bf16 natively for PyTorch, and why (one sentence)."""

    native: bool
    reason: str


def _isa_limit() -> tuple[str, str] | None:
    """``(variable, value)`` of oneDNN's instruction-set cap, when one is set."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip()
        if value:
            return name, value.upper()
    return None


def _cpu_has_bf16_instructions() -> bool:
    """AVX512-BF16 or AMX on x86 (cpuinfo through PyTorch); elsewhere what oneDNN reports."""
    cpu = getattr(torch, "cpu", None)
    avx512_bf16 = getattr(cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is not None and amx is not None:
        if avx512_bf16() or amx():
            return True
        import platform

        if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
            return False
    return _onednn_bf16_enabled()


def _onednn_bf16_enabled() -> bool:
    """oneDNN's own answer (it follows ``ONEDNN_MAX_CPU_ISA``; on x86 it also says yes for
    AVX-512 without BF16, where bf16 is emulated)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=8)
def _cpu_bf16_support(isa_limit: tuple[str, str] | None) -> CpuBf16Support:
    if not _cpu_has_bf16_instructions():
        return CpuBf16Support(False, "this CPU has no bf16 instructions (AVX512-BF16 or AMX), so bf16 would be emulated")
    if isa_limit is not None and isa_limit[1] not in _BF16_ISAS:
        return CpuBf16Support(
            False, f"{isa_limit[0]}={isa_limit[1]} keeps oneDNN below AVX512_CORE_BF16, so bf16 would be emulated"
        )
    if not _onednn_bf16_enabled():
        return CpuBf16Support(False, "oneDNN reports no bf16 support here, so bf16 would be emulated")
    return CpuBf16Support(True, "this CPU runs bf16 natively (AVX512-BF16/AMX) and oneDNN uses it")


def cpu_bf16_support() -> CpuBf16Support:
    """Whether PyTorch's CPU kernels run bf16 natively here (cached per ``ONEDNN_MAX_CPU_ISA``).

    Native means the CPU has AVX512-BF16 or AMX instructions, ``ONEDNN_MAX_CPU_ISA`` (or the
    older ``DNNL_MAX_CPU_ISA``) does not cap oneDNN below ``AVX512_CORE_BF16``, and oneDNN
    reports bf16 support. No timing probe: the answer comes from cpuinfo and oneDNN.
    """
    return _cpu_bf16_support(_isa_limit())


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
    """A resolved precision: ``name`` in fp32/bf16/fp16 on ``device``.

    Attributes:
        reason: why this precision (printed at the start of a run).
        warning: set when the choice costs speed (explicit bf16 on a CPU that emulates it).
    """

    name: str
    device: torch.device
    reason: str = ""
    warning: str | None = None

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

    def describe(self) -> str:
        """One line: the precision and why, e.g. ``fp32 (auto: this CPU has no bf16 ...)``."""
        return f"{self.name} ({self.reason})" if self.reason else self.name


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Resolve ``train.precision`` for ``device`` (errors name the fix).

    ``auto``: CUDA -> bf16 where supported, else fp16; CPU -> bf16 where
    :func:`cpu_bf16_support` says native, else fp32. An explicit ``bf16`` on a CPU without
    native support runs, with :attr:`Precision.warning` naming the cost.
    """
    reason, warning = "", None
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            reason = f"auto: {'this GPU supports bf16' if name == 'bf16' else 'this GPU has no bf16'}"
        else:
            support = cpu_bf16_support()
            name = "bf16" if support.native else "fp32"
            reason = f"auto: {support.reason}"
    elif name == "bf16" and device.type == "cpu":
        support = cpu_bf16_support()
        reason = f"train.precision=bf16; {support.reason}"
        if not support.native:
            warning = (
                f"train.precision=bf16 on a CPU without native bf16: {support.reason}; {EMULATED_BF16_COST} "
                "(BENCHMARKS.md). Use train.precision=auto (fp32 here) unless you need bf16's numerics."
            )
    elif name in ("fp32", "bf16", "fp16"):
        reason = f"train.precision={name}"
    if name not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"train.precision must be auto, fp32, bf16 or fp16, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    return Precision(name, device, reason, warning)
