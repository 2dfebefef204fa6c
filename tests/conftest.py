"""Settings of the whole test session, and the one home of the real-data folder.

Real data (MSD Task04_Hippocampus, Task_ACDC, a few fixture volumes) lives beside the repository
in ``../shared/data``, never inside it; ``MEDCONTEXT_DATA_DIR`` points elsewhere. Tests reach it
only through the ``require_data`` fixture, which skips with the reason when the data is absent,
or fails when ``MEDCONTEXT_REQUIRE_DATA=1`` (CI sets it: there, missing data is a broken setup,
not a reason to skip).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

pytest_plugins = ["pytester"]

# A training process shares the cores with the other medcontext runs on the machine and re-counts
# them after every step (medcontext.engine.cpu_threads). A thread count that changes mid-run changes
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
