"""A BraTS-like synthetic brain-tumour dataset with nested regions, for region (sigmoid) tasks.

:func:`generate_tumour_phantom` writes a small dataset in the layout of the Medical
Segmentation Decathlon's Task01_BrainTumour (BraTS 2017): 4-channel 4D images (FLAIR, T1w,
T1Gd, T2w) and labels 1 edema, 2 non-enhancing tumour, 3 enhancing tumour, so that the
``brats17`` preset reads it with its sigmoid regions WT = {1, 2, 3} contains TC = {2, 3}
contains ET = {3}. Each case is an ellipsoidal brain with one tumour: an edema blob around
a core blob, whose rim enhances; every channel shows the compartments with its own
contrast, plus noise. 1 mm voxels, identity (RAS) affine; deterministic for a ``seed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from medcontext.io.atomic import write_text_atomic
from medcontext.data.phantom import _save

__all__ = ["TUMOUR_LABELS", "TUMOUR_CHANNELS", "make_tumour_case", "generate_tumour_phantom"]

TUMOUR_LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
TUMOUR_CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")
#: mean signal per channel of brain, edema, non-enhancing core, enhancing rim
_CONTRAST = np.array([
    # brain, edema, core, enhancing
    [100.0, 190.0, 150.0, 160.0],  # FLAIR: edema bright
    [100.0, 85.0, 60.0, 95.0],     # T1w: core dark
    [100.0, 95.0, 70.0, 230.0],    # T1Gd: enhancing rim bright
    [100.0, 200.0, 170.0, 150.0],  # T2w: fluid bright
])


def make_tumour_case(shape: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One case: image ``(X, Y, Z, 4)`` float32 and labels ``(X, Y, Z)`` uint8 (0-3).

    Args:
        shape: ``(X, Y, Z)`` voxels, each at least 16.
        rng: the case's random generator.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"tumour phantom shape must be three sizes >= 16, got {shape}")
    size = np.array(shape, dtype=np.float64)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float64) + 0.5 for n in shape], indexing="ij", sparse=True)

    def ellipsoid(center, radii) -> np.ndarray:
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0

    brain = ellipsoid(size / 2, size * 0.42 * rng.uniform(0.9, 1.05, 3))
    center = size / 2 + rng.uniform(-0.12, 0.12, 3) * size
    core_r = size * rng.uniform(0.12, 0.15)
    edema = ellipsoid(center, size * rng.uniform(0.22, 0.28, 3)) & brain
    core = ellipsoid(center, core_r) & brain
    necrotic = ellipsoid(center, core_r * 0.6)
    label = np.zeros(shape, np.uint8)
    label[edema] = 1
    label[core] = 3  # the enhancing rim ...
    label[core & necrotic] = 2  # ... around a non-enhancing centre
    compartment = np.where(brain, 0, -1)
    compartment[label == 1], compartment[label == 2], compartment[label == 3] = 1, 2, 3
    image = np.zeros(shape + (4,), np.float32)
    for channel in range(4):
        signal = np.where(compartment >= 0, _CONTRAST[channel][np.clip(compartment, 0, 3)], 0.0)
        image[..., channel] = np.abs(signal * rng.uniform(0.9, 1.1) + rng.normal(0.0, 10.0, shape))
    return image, label


def generate_tumour_phantom(out_dir: str | Path, num_cases: int = 4, shape: Sequence[int] = (24, 24, 24),
                            seed: int = 0) -> Path:
    """Write a BraTS-like MSD Task01 dataset; load it with ``preset="brats17"``.

    Args:
        out_dir: dataset folder (created).
        num_cases: labelled cases.
        shape: ``(X, Y, Z)`` voxels per volume (1 mm each).
        seed: case ``i`` uses ``SeedSequence([seed, i])``.

    Returns:
        ``out_dir``.
    """
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(num_cases):
        image, label = make_tumour_case(shape, np.random.default_rng(np.random.SeedSequence([int(seed), i])))
        name = f"tumour_{i:03d}.nii.gz"
        _save(image, np.eye(4), out / "imagesTr" / name)
        _save(label, np.eye(4), out / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "TumourPhantom",
        "description": "Synthetic BraTS-like brain tumours (medcontext.data.tumour_phantom): nested regions WT/TC/ET",
        "tensorImageSize": "4D",
        "modality": {str(i): name for i, name in enumerate(TUMOUR_CHANNELS)},
        "labels": {str(k): v for k, v in TUMOUR_LABELS.items()},
        "numTraining": num_cases,
        "training": training,
        "test": [],
    }
    write_text_atomic(out / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return out
