"""Settings of the whole test session, the one home of the real-data folder, and shared fakes.

Real data (MSD Task04_Hippocampus, Task_ACDC, a few fixture volumes) lives beside the repository
in ``../shared/data``, never inside it; ``MEDCONTEXT_DATA_DIR`` points elsewhere. Tests reach it
only through the ``require_data`` fixture, which skips with the reason when the data is absent,
or fails when ``MEDCONTEXT_REQUIRE_DATA=1`` (CI sets it: there, missing data is a broken setup,
not a reason to skip).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

pytest_plugins = ["pytester"]

# A training process shares the cores with the other medcontext runs on the machine and re-counts
# them after every step (medcontext.engine.host.cpu_threads). A thread count that changes mid-run changes
# the rounding of float reductions, so a test's numbers would depend on what else the machine runs
# (a resumed run would no longer match its uninterrupted twin bit for bit). An explicit count fixes it.
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))

#: The real-data folder: ``$MEDCONTEXT_DATA_DIR``, else ``../shared/data`` beside the repository.
DATA_DIR = Path(os.environ.get("MEDCONTEXT_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
REQUIRE_DATA_FLAG = "MEDCONTEXT_REQUIRE_DATA"


def _data_required() -> bool:
    return os.environ.get(REQUIRE_DATA_FLAG, "").strip().lower() not in ("", "0", "false", "no")


def require_data(name: str, *needed: str) -> Path:
    """``DATA_DIR / name``, after checking that it and every ``needed`` path inside it exist.

    Missing data skips the test with a reason naming the path, or fails it when
    ``MEDCONTEXT_REQUIRE_DATA=1``.
    """
    folder = DATA_DIR / name
    missing = [p for p in (folder, *(folder / n for n in needed)) if not p.exists()]
    if missing:
        what = f"real data {missing[0]} is missing (the data folder {DATA_DIR} lives beside the repository as ../shared/data)"
        if _data_required():
            pytest.fail(f"{REQUIRE_DATA_FLAG} is set (CI must run the real-data tests), but {what}", pytrace=False)
        pytest.skip(what)
    return folder


@pytest.fixture(name="require_data", scope="session")
def _require_data_fixture() -> Callable[..., Path]:
    """``require_data(name, *needed) -> Path``: a folder of the real data, or skip (see above)."""
    return require_data


class FullDiskFile:
    """A binary file whose writes fail with ENOSPC once ``budget`` bytes are written, like a disk
    that fills up: the write that crosses the budget still writes the bytes that fit."""

    def __init__(self, path, mode, budget: int):
        self._handle = open(path, mode)
        self._budget = budget

    def write(self, data):
        if len(data) > self._budget:
            self._handle.write(bytes(data[: self._budget]))
            self._budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@pytest.fixture(scope="session")
def full_disk() -> Callable[[int], Callable[[str, str], FullDiskFile]]:
    """``full_disk(budget)``: an ``open(path, mode)`` replacement whose files hold only ``budget``
    bytes, e.g. ``monkeypatch.setattr(atomic, "open", full_disk(2000), raising=False)``."""
    return lambda budget: (lambda path, mode: FullDiskFile(path, mode, budget))


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has just exited (what a writer killed with -9 leaves in file names)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(autouse=True)
def _no_cpu_step_time_bound(monkeypatch):
    """The planner's CPU step-time bound (``train.max_step_s=auto``) acts on the step time it
    MEASURES, so under load (several test processes on 2 cores) it would shrink crops that tests
    assert; every test plans without it, except ``tests/engine/test_engine_time_fit.py``, which
    restores it and measures with a deterministic clock."""
    from medcontext.engine.planning import time_fit

    monkeypatch.setattr(time_fit, "DEFAULT_CPU_STEP_BOUND_S", None)
