"""How many CPU threads a training process uses: the physical cores it has, shared fairly.

OpenMP threads that outnumber the cores do not add speed: they wait for each other at every
parallel region, and two 2-thread processes on 2 cores stall far more than they gain. A run
therefore uses the physical cores it may run on (CPU affinity, then a cgroup CPU quota, then
one thread per core: hyper-threads add little to these kernels), divided by the medcontext
training processes running on the machine: the processes of a ``torchrun`` launch on the
node (``LOCAL_WORLD_SIZE``) and any other training, e.g. two studies started side by side, and
the processes predicting or evaluating a run (``medcontext predict`` / ``evaluate``, a study's test
evaluation), which register the same way and re-count before every case: a training process that
took both cores while another run evaluated ran 10-40x slower per step (threads waiting at every
parallel region on an over-subscribed core).
:class:`CpuShare` registers each training process in a per-user folder of the temporary
directory; the training loop re-counts the live ones after every step (a directory listing)
and changes its thread count when another run starts or ends.

An explicit choice wins and stays fixed: the setting ``train.threads`` (> 0), else
``OMP_NUM_THREADS`` from the environment (``torchrun`` sets it to 1 per process when it starts
several and it was not set). Processes of other users or programs are not counted.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Mapping

__all__ = ["physical_cores", "choose_threads", "CpuShare"]


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
                   cores: int | None = None, others: int = 0) -> tuple[int, str]:
    """Threads for one training process, and why (one phrase for the start of a run).

    Args:
        setting: ``train.threads``; ``None`` or 0 = automatic.
        environ: the environment (``OMP_NUM_THREADS``, ``LOCAL_WORLD_SIZE``); default ``os.environ``.
        cores: physical cores (default :func:`physical_cores`).
        others: other medcontext training processes running on this machine (:class:`CpuShare`).

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
    processes = max(int(local) if local.isdigit() and int(local) > 0 else 1, 1 + others)
    threads = max(1, cores // processes)
    if processes == 1:
        return threads, f"{cores} physical core(s)"
    return threads, f"{cores} physical core(s) shared by {processes} training processes on this machine"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class CpuShare:
    """This process's share of the CPU while it trains or predicts (a context manager).

    On entry it registers the process (a file named by its pid in ``folder``) and sets
    ``torch.set_num_threads`` from :func:`choose_threads`; :meth:`refresh` (after every
    training step) re-counts the live registered processes and adjusts the threads when that
    number changed; on exit it unregisters and restores the thread count it found. Files of
    processes that died are ignored and removed.

    Args:
        setting: ``train.threads`` (``None`` = automatic).
        folder: the registry (default: ``medcontext-cpu-<uid>`` in the temporary directory).
        environ: the environment (default ``os.environ``).
        cores: physical cores (default :func:`physical_cores`).
    """

    def __init__(self, setting: int | None = None, folder: str | Path | None = None,
                 environ: Mapping[str, str] | None = None, cores: int | None = None):
        self.setting = setting
        uid = os.getuid() if hasattr(os, "getuid") else 0
        self.folder = Path(folder) if folder is not None else Path(tempfile.gettempdir()) / f"medcontext-cpu-{uid}"
        self.environ = os.environ if environ is None else environ
        self.cores = physical_cores() if cores is None else cores
        self.threads, self.reason = choose_threads(setting, self.environ, self.cores)
        self.fixed = self.reason in ("train.threads", "OMP_NUM_THREADS")
        self._file: Path | None = None
        self._threads_before: int | None = None

    def others(self) -> int:
        """Live medcontext training processes registered besides this one."""
        count = 0
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return 0
        for entry in entries:
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            if _alive(int(entry.name)):
                count += 1
            else:
                entry.unlink(missing_ok=True)
        return count

    def refresh(self) -> int:
        """Re-count the trainers and set this process's threads; returns the thread count."""
        import torch

        if not self.fixed:
            self.threads, self.reason = choose_threads(None, self.environ, self.cores, self.others())
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.threads

    def __enter__(self) -> "CpuShare":
        import torch

        self._threads_before = torch.get_num_threads()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = self.folder / str(os.getpid())
            self._file.touch()
        except OSError:  # no writable temporary directory: count nobody else
            self._file = None
        self.refresh()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self._file is not None:
            self._file.unlink(missing_ok=True)
            self._file = None
        if self._threads_before is not None and torch.get_num_threads() != self._threads_before:
            torch.set_num_threads(self._threads_before)
