"""How many CPU threads a training process uses: the physical cores it has, shared fairly.

OpenMP threads that outnumber the cores do not add speed: they wait for each other at every
parallel region, and two 2-thread processes on 2 cores stall far more than they gain. A run
therefore uses the physical cores it may run on (CPU affinity, then a cgroup CPU quota, then
one thread per core: hyper-threads add little to these kernels), divided by the processes of
the run on this node (``torchrun``'s ``LOCAL_WORLD_SIZE``).

An explicit choice wins: the setting ``train.threads`` (> 0), else ``OMP_NUM_THREADS`` from
the environment (``torchrun`` sets it to 1 per process when it starts several and it was not
set; set it yourself to give each process more). Commands that run at the same time on one
machine do not know of each other: give each its share with ``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

__all__ = ["physical_cores", "choose_threads"]


def _cpus_of_this_process() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def _cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """CPUs allowed by a cgroup v2 quota (``"200000 100000"`` -> 2.0), ``None`` without one."""
    try:
        quota, period = Path(path).read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return float(quota) / float(period)
    except (ValueError, ZeroDivisionError):
        return None


def _core_of_each_cpu(cpuinfo: str = "/proc/cpuinfo") -> dict[int, tuple[str, str]]:
    """Logical CPU -> (physical package id, core id), from ``/proc/cpuinfo`` (empty elsewhere)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {}
    cores: dict[int, tuple[str, str]] = {}
    for block in text.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                fields[key.strip()] = value.strip()
        if "processor" in fields and "core id" in fields:
            cores[int(fields["processor"])] = (fields.get("physical id", "0"), fields["core id"])
    return cores


def physical_cores(cpuinfo: str = "/proc/cpuinfo", cgroup: str = "/sys/fs/cgroup/cpu.max") -> int:
    """Physical cores this process may use: its CPU affinity, counted once per core, capped
    by a cgroup CPU quota (rounded down, at least 1)."""
    cpus = _cpus_of_this_process()
    core_map = _core_of_each_cpu(cpuinfo)
    if core_map and cpus <= set(core_map):
        count = len({core_map[c] for c in cpus})
    else:
        count = len(cpus)
    limit = _cgroup_cpu_limit(cgroup)
    if limit is not None:
        count = min(count, max(1, math.floor(limit)))
    return max(1, count)


def choose_threads(setting: int | None = None, environ: Mapping[str, str] | None = None,
                   cores: int | None = None) -> tuple[int, str]:
    """Threads for one training process, and why (one phrase for the start of a run).

    Args:
        setting: ``train.threads``; ``None`` or 0 = automatic.
        environ: the environment (``OMP_NUM_THREADS``, ``LOCAL_WORLD_SIZE``); default ``os.environ``.
        cores: physical cores (default :func:`physical_cores`).

    Returns:
        ``(threads, reason)``.
    """
    environ = os.environ if environ is None else environ
    if setting:
        return int(setting), "train.threads"
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    cores = physical_cores() if cores is None else cores
    local = environ.get("LOCAL_WORLD_SIZE", "").strip()
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    threads = max(1, cores // processes)
    if processes == 1:
        return threads, f"{cores} physical core(s)"
    return threads, f"{cores} physical core(s) shared by {processes} processes on this node"
