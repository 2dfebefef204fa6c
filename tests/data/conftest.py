"""Fixtures for the data tests: tiny NIfTI writers (``helpers``) and a phantom dataset."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from medcontext.data import generate_phantom


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


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The writers above, for tests (``--import-mode=importlib`` cannot import this file)."""
    return SimpleNamespace(write_nifti=write_nifti, blob_case=blob_case, write_msd=write_msd, snapshot=snapshot)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A 6-case (+1 unlabelled) phantom of 24^3 voxels; treat as read-only."""
    return generate_phantom(tmp_path_factory.mktemp("phantom"), num_cases=6, shape=(24, 24, 24), seed=3, num_test=1)
