"""Settings of the whole test session, the one home of the real-data folder, and shared fakes.

Real data (MSD Task04_Hippocampus, Task_ACDC, a few fixture volumes) lives beside the repository
in ``../shared/data``, never inside it; ``MEDCONTEXT_DATA_DIR`` points elsewhere. Tests reach it
only through the ``require_data`` fixture, which skips with the reason when the data is absent,
or fails when ``MEDCONTEXT_REQUIRE_DATA=1`` (CI sets it: there, missing data is a broken setup,
not a reason to skip).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import nibabel as nib
import numpy as np
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


# ---------------------------------------------------------------------- tiny NIfTI writers (``helpers``)
def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` with ``affine`` (identity by default) as NIfTI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def blob_case(shape=(12, 12, 12), seed=0, labels=(1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """An image with two boxes of distinct intensity and their label map."""
    rng = np.random.default_rng(seed)
    image = rng.normal(10.0, 1.0, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[2:6, 2:6, 2:6] = labels[0]
    label[6:10, 5:9, 4:9] = labels[1]
    image[label == labels[0]] += 20
    image[label == labels[1]] += 40
    return image, label


def write_msd(root: Path, n: int = 3, *, channels: int = 1, modality=None, labels=None, shape=(12, 12, 12)) -> Path:
    """A tiny MSD-layout dataset (``channels > 1`` writes 4D images)."""
    modality = modality or {str(i): ("MRI" if channels == 1 else f"seq{i}") for i in range(channels)}
    labels = labels or {"0": "background", "1": "a", "2": "b"}
    training = []
    for i in range(n):
        image, label = blob_case(shape, seed=i)
        if channels > 1:
            image = np.stack([image * (c + 1) for c in range(channels)], axis=-1)
        name = f"case_{i:03d}.nii.gz"
        write_nifti(root / "imagesTr" / name, image)
        write_nifti(root / "labelsTr" / name, label)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": root.name, "modality": modality, "labels": labels, "numTraining": n, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime (to prove nothing was written)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def collect_records_script():
    """``scripts/collect_study_records.py`` as a module (scripts are not a package)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "collect_study_records.py"
    spec = importlib.util.spec_from_file_location("collect_study_records", script)
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    return collect


def _sign_net_class():
    import torch
    from torch import nn

    class SignNet(nn.Module):
        """logits (x, -x): a 1x1x1 convolution with weights (1, -1), no bias (losses worked out by hand)."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 1, bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1, 1))

        def forward(self, x):
            return self.conv(x)

    return SignNet


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The writers above, ``SignNet`` and the records script, for tests (``--import-mode=importlib``
    cannot import this file)."""
    return SimpleNamespace(write_nifti=write_nifti, blob_case=blob_case, write_msd=write_msd, snapshot=snapshot,
                           SignNet=_sign_net_class(), collect_records_script=collect_records_script)


# ---------------------------------------------------------------------------------- broken datasets
@dataclass(frozen=True)
class BrokenDataset:
    """One way a dataset can be broken, and what the error must say about it.

    Attributes:
        name: the test id.
        break_it: ``(root, helpers) -> None`` breaks the healthy 3-case dataset of ``write_msd`` at ``root``.
        file: the file the error must name, relative to ``root``.
        problem: text the error must contain.
        case_problem: what :func:`~medcontext.data.validate_dataset` names for a dataset loaded before it
            broke (``"case case_001: label"``); ``None`` when the break is found before validation
            (``dataset.json``) or only ``data check``'s suite covers it.
    """

    name: str
    break_it: Callable[[Path, SimpleNamespace], None]
    file: str
    problem: str
    case_problem: str | None = None


def _rewrite_label(value_at_origin=None, affine=None, dtype=None):
    def break_it(root: Path, h: SimpleNamespace) -> None:
        _, label = h.blob_case(seed=1)
        if dtype is not None:
            label = label.astype(dtype)
        if value_at_origin is not None:
            label[0, 0, 0] = value_at_origin
        h.write_nifti(root / "labelsTr" / "case_001.nii.gz", label, affine)
    return break_it


def _offset_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 3] = [5.0, 0.0, 0.0]
    return affine


def _truncate(root: Path, h: SimpleNamespace) -> None:
    path = root / "imagesTr" / "case_001.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage_gzip(root: Path, h: SimpleNamespace) -> None:
    (root / "imagesTr" / "case_001.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")


def _nan_inf(root: Path, h: SimpleNamespace) -> None:
    image, _ = h.blob_case(seed=1)
    image[1, 2, 3], image[2, 2, 3] = np.nan, np.inf
    h.write_nifti(root / "imagesTr" / "case_001.nii.gz", image)


def _two_channels(root: Path, h: SimpleNamespace) -> None:
    image, _ = h.blob_case(seed=1)
    h.write_nifti(root / "imagesTr" / "case_001.nii.gz", np.stack([image, image], -1))


def _incomplete_json(root: Path, h: SimpleNamespace) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    del meta["labels"]
    (root / "dataset.json").write_text(json.dumps(meta))


def _symlink_loop(root: Path, h: SimpleNamespace) -> None:
    path = root / "imagesTr" / "case_001.nii.gz"
    path.unlink()
    os.symlink("loop.nii.gz", path)
    os.symlink("case_001.nii.gz", root / "imagesTr" / "loop.nii.gz")


LABEL, IMAGE = "labelsTr/case_001.nii.gz", "imagesTr/case_001.nii.gz"
BROKEN_DATASETS = [
    BrokenDataset("truncated", _truncate, IMAGE, "truncated or corrupt"),
    BrokenDataset("corrupt", _garbage_gzip, IMAGE, "case_001.nii.gz is", "case case_001: image file"),
    BrokenDataset("zero_bytes", lambda root, h: (root / LABEL).write_bytes(b""), LABEL, "Empty file"),
    BrokenDataset("missing_label", lambda root, h: (root / LABEL).unlink(), LABEL, "does not exist",
                  "case case_001: label file"),
    BrokenDataset("missing_image", lambda root, h: (root / "imagesTr" / "case_002.nii.gz").unlink(),
                  "imagesTr/case_002.nii.gz", "does not exist"),
    BrokenDataset("symlink_loop", _symlink_loop, IMAGE, "does not exist"),
    BrokenDataset("shape", lambda root, h: h.write_nifti(root / LABEL, np.zeros((12, 12, 11), np.uint8)), LABEL,
                  "has shape (12, 12, 11) but image", "case case_001: label"),
    BrokenDataset("affine_offset", _rewrite_label(affine=_offset_affine()), LABEL, "affine differs from image"),
    BrokenDataset("spacing", _rewrite_label(affine=np.diag([2.0, 2.0, 2.0, 1.0])), LABEL, "affine differs from image"),
    BrokenDataset("slice_spacing", _rewrite_label(affine=np.diag([1.0, 1.0, 1.2, 1.0])), LABEL,
                  "affine differs from image", "case case_001: label"),
    BrokenDataset("undeclared_label", _rewrite_label(value_at_origin=7), LABEL,
                  "has values [7] not in the dataset's labels [0, 1, 2]", "case case_001: label"),
    BrokenDataset("float_label", _rewrite_label(value_at_origin=0.5, dtype=np.float32), LABEL,
                  "non-integer values [0.5]", "case case_001: label"),
    BrokenDataset("nan_inf", _nan_inf, IMAGE, "has 2 NaN/Inf voxels", "case case_001: image"),
    BrokenDataset("two_channels_for_3d", _two_channels, IMAGE, "has 2 channel(s) but the dataset has 1",
                  "case case_001: image"),
    BrokenDataset("two_dimensions", lambda root, h: h.write_nifti(root / IMAGE, np.zeros((12, 12), np.float32)), IMAGE,
                  "has 2 dimensions", "case case_001: image"),
    BrokenDataset("zero_byte_image", lambda root, h: (root / IMAGE).write_bytes(b""), IMAGE, "Empty file",
                  "case case_001: image file"),
    BrokenDataset("not_nifti", lambda root, h: (root / IMAGE).write_text("this is not an image\n"), IMAGE,
                  "is unreadable: ImageFileError", "case case_001: image file"),
    BrokenDataset("broken_json", lambda root, h: (root / "dataset.json").write_text('{"name": "ds", "labels": '),
                  "dataset.json", "is not valid JSON"),
    BrokenDataset("incomplete_json", _incomplete_json, "dataset.json", "missing key 'labels'"),
]
"""The one catalogue of broken datasets: ``data check`` answers each (tests/data/test_data_check_probes.py),
:func:`validate_dataset` names those with a ``case_problem`` (tests/data/test_data_validation.py), and
``train``, ``evaluate`` and ``predict`` answer each like ``data check`` (tests/engine/test_input_checks_everywhere.py)."""


def pytest_generate_tests(metafunc):
    """A test asking for ``broken_dataset`` runs once per catalogue entry (those with a
    ``case_problem`` when the test module sets ``BROKEN_DATASETS_FOUND_BY = "validate_dataset"``)."""
    if "broken_dataset" in metafunc.fixturenames:
        entries = BROKEN_DATASETS
        if getattr(metafunc.module, "BROKEN_DATASETS_FOUND_BY", None) == "validate_dataset":
            entries = [b for b in BROKEN_DATASETS if b.case_problem is not None]
        metafunc.parametrize("broken_dataset", entries, ids=[b.name for b in entries])
