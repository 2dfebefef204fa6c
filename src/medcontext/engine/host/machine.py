"""What a run trained on: processor, instruction set, precision, threads.

A run's step time and, through the precision, its numbers depend on the machine. A study spread
over sittings and machines (a bf16 CPU one day, an AVX2-only one the next) must say which run
trained where, so the trainer logs one ``{"kind": "start", ...}`` record (:func:`machine_record`)
each time it starts or resumes, and ``medcontext report`` groups step times by machine
(:func:`machine_label`).
"""

from __future__ import annotations

import platform

import torch

__all__ = ["cpu_model_name", "cpu_instruction_set", "machine_record", "machine_label"]


def cpu_model_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor's marketing name (``model name`` in ``/proc/cpuinfo``), else what Python knows."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_instruction_set() -> str:
    """The widest vector instructions PyTorch's CPU kernels use here: ``AMX``, ``AVX512-BF16``,
    or ATen's own answer (``AVX512``, ``AVX2``, ``DEFAULT``...)."""
    cpu = getattr(torch, "cpu", None)
    for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported")):
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return name
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return platform.machine() or "unknown"


def machine_record(device: torch.device, precision: str, *, processes: int = 1) -> dict:
    """The ``start`` record's fields: ``device`` (cpu/cuda/mps), ``processor`` (CPU or GPU name),
    ``isa`` (CPU instruction set, see :func:`cpu_instruction_set`), ``precision``, ``threads``
    (intra-op threads of this process), ``processes`` (training processes), ``torch`` version."""
    if device.type == "cuda":
        processor = torch.cuda.get_device_name(device)
    else:
        processor = cpu_model_name()
    return {
        "device": device.type,
        "processor": processor,
        "isa": cpu_instruction_set(),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "processes": int(processes),
        "torch": torch.__version__,
    }


def machine_label(record: dict) -> str:
    """A short label of a ``start`` record, e.g. ``fp32 on AMD EPYC (AVX2)`` or
    ``bf16 on NVIDIA H200``: what two step times must share to be compared."""
    precision = record.get("precision", "?")
    processor = record.get("processor", "unknown machine")
    if record.get("device", "cpu") == "cpu":
        return f"{precision} on {processor} ({record.get('isa', '?')})"
    return f"{precision} on {processor}"
