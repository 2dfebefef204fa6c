"""A synthetic abdomen whose look-alike organs can only be told apart by context.

:func:`generate_phantom` writes a small MSD-layout dataset (``dataset.json``, ``imagesTr/``,
``labelsTr/``, optionally ``imagesTs/``) of 3D MRI-like volumes, and :func:`generate_phantom_images`
a flat folder of images only (unlabelled volumes: no label file is written): an elliptical body with
seven structures in a fixed anatomical layout. Three pairs share one intensity
distribution and differ only by where they are and what surrounds them:

* liver (subject's right) and spleen (subject's left), same intensity;
* right and left kidney, same intensity, same size, either side of the spine;
* aorta (left of the midline) and inferior vena cava (right), same intensity, both tubes
  in front of the spine.

A network that looks only at local intensity confuses each pair; one that uses context
does not, which is what MedContext is meant to teach. Every case varies the body's position
and size and each organ's position and size, then adds a smooth multiplicative bias field,
slight blur and Gaussian noise. Volumes use 1 mm voxels and an identity (RAS) affine: voxel
axis 0 increases towards the subject's right, axis 1 anterior, axis 2 superior.

The output is bit-for-bit deterministic for a given ``seed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from medcontext.io.atomic import atomic_path, write_text_atomic

__all__ = [
    "PhantomStructure",
    "PHANTOM_STRUCTURES",
    "LOOKALIKE_PAIRS",
    "make_phantom_case",
    "generate_phantom",
    "generate_phantom_images",
]


@dataclass(frozen=True)
class PhantomStructure:
    """One labelled structure of the phantom.

    Attributes:
        label: label value.
        name: label name in ``dataset.json``.
        intensity: mean signal before bias and noise (body tissue is 100, air 0).
        center: ``(x, y, z)`` offset from the body centre, as fractions of the volume size
            (x towards the subject's right, y anterior, z superior).
        radii: semi-axes as fractions of the volume size; a tube has ``z`` radius ``None``
            and runs through the whole volume.
    """

    label: int
    name: str
    intensity: float
    center: tuple[float, float, float]
    radii: tuple[float, float, float | None]


BODY_INTENSITY = 100.0
#: Painted in this order (later ones overwrite earlier ones).
PHANTOM_STRUCTURES: tuple[PhantomStructure, ...] = (
    PhantomStructure(4, "liver", 160.0, (0.19, 0.05, 0.16), (0.16, 0.19, 0.20)),
    PhantomStructure(5, "spleen", 160.0, (-0.23, -0.02, 0.18), (0.09, 0.11, 0.14)),
    PhantomStructure(6, "right kidney", 215.0, (0.17, -0.15, -0.10), (0.07, 0.08, 0.13)),
    PhantomStructure(7, "left kidney", 215.0, (-0.17, -0.15, -0.10), (0.07, 0.08, 0.13)),
    PhantomStructure(2, "aorta", 260.0, (-0.065, -0.07, 0.0), (0.045, 0.045, None)),
    PhantomStructure(3, "inferior vena cava", 260.0, (0.075, -0.07, 0.0), (0.05, 0.042, None)),
    PhantomStructure(1, "spine", 40.0, (0.0, -0.21, 0.0), (0.07, 0.07, None)),
)
#: Pairs of labels with the same intensity distribution (told apart only by context).
LOOKALIKE_PAIRS: tuple[tuple[int, int], ...] = ((4, 5), (6, 7), (2, 3))

_NOISE_SIGMA = 12.0
_BIAS_STRENGTH = 0.12


def _labels() -> dict[int, str]:
    out = {0: "background"}
    out.update({s.label: s.name for s in sorted(PHANTOM_STRUCTURES, key=lambda s: s.label)})
    return out


def make_phantom_case(shape: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One phantom volume and its label map.

    Args:
        shape: ``(X, Y, Z)`` voxels, each at least 16.
        rng: the case's random generator (its whole state decides the case).

    Returns:
        ``(image, label)``: float32 ``(X, Y, Z)`` intensities >= 0 and uint8 labels.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"phantom shape must be three sizes >= 16, got {shape}")
    size = np.array(shape, dtype=np.float64)
    grid = [np.arange(n, dtype=np.float64) + 0.5 for n in shape]
    x, y, z = np.meshgrid(*grid, indexing="ij", sparse=True)

    center = size / 2 + rng.uniform(-0.04, 0.04, 3) * size
    scale = rng.uniform(0.9, 1.1)
    body_r = np.array([0.43, 0.33]) * size[:2] * scale * rng.uniform(0.95, 1.05, 2)
    signal = np.zeros(shape, dtype=np.float64)
    label = np.zeros(shape, dtype=np.uint8)
    body = ((x - center[0]) / body_r[0]) ** 2 + ((y - center[1]) / body_r[1]) ** 2 <= 1.0
    body = np.broadcast_to(body, shape)
    signal[body] = BODY_INTENSITY

    for s in PHANTOM_STRUCTURES:
        c = center + (np.array(s.center) * scale + rng.uniform(-0.02, 0.02, 3)) * size
        jitter = rng.uniform(0.9, 1.1, 3)
        rx, ry = s.radii[0] * size[0] * scale * jitter[0], s.radii[1] * size[1] * scale * jitter[1]
        inside = ((x - c[0]) / rx) ** 2 + ((y - c[1]) / ry) ** 2
        if s.radii[2] is not None:
            rz = s.radii[2] * size[2] * scale * jitter[2]
            inside = inside + ((z - c[2]) / rz) ** 2
        mask = np.broadcast_to(inside <= 1.0, shape) & body
        signal[mask] = s.intensity
        label[mask] = s.label

    # smooth multiplicative bias: exp of a random quadratic polynomial of the normalised position
    u = [(g / n - 0.5) * 2.0 for g, n in zip((x, y, z), shape)]
    terms = [u[0], u[1], u[2], u[0] * u[1], u[0] * u[2], u[1] * u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2]
    coeffs = rng.uniform(-1.0, 1.0, len(terms)) * _BIAS_STRENGTH / 2
    log_bias = sum(cf * t for cf, t in zip(coeffs, terms))
    image = ndimage.gaussian_filter(signal, sigma=0.6) * np.exp(log_bias) * rng.uniform(0.8, 1.25)
    image = image + rng.normal(0.0, _NOISE_SIGMA, shape)
    return np.abs(image).astype(np.float32), label


def generate_phantom(
    out_dir: str | Path,
    num_cases: int = 12,
    shape: Sequence[int] = (48, 48, 48),
    seed: int = 0,
    num_test: int = 0,
) -> Path:
    """Write a phantom dataset in MSD layout.

    Args:
        out_dir: dataset folder (created; existing phantom files are overwritten).
        num_cases: labelled cases in ``imagesTr``/``labelsTr``.
        shape: ``(X, Y, Z)`` voxels per volume (1 mm each).
        seed: seed of the whole dataset; case ``i`` uses ``SeedSequence([seed, i])``.
        num_test: extra unlabelled cases in ``imagesTs``.

    Returns:
        ``out_dir``, ready for :func:`~medcontext.data.load_dataset` (preset ``msd``).
    """
    if num_cases < 1 or num_test < 0:
        raise ValueError(f"num_cases must be >= 1 and num_test >= 0, got {num_cases} and {num_test}")
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(num_cases):
        image, label = make_phantom_case(shape, _case_rng(seed, i))
        name = _case_file(i)
        _save(image, _AFFINE, out / "imagesTr" / name)
        _save(label, _AFFINE, out / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    test = []
    if num_test:
        images = generate_phantom_images(out / "imagesTs", num_test, shape, seed, first_case=num_cases)
        test = [f"./imagesTs/{path.name}" for path in images]
    meta = {
        "name": "Phantom",
        "description": (
            "Synthetic MRI-like abdomen from medcontext.data.phantom: look-alike pairs liver/spleen, "
            "right/left kidney, aorta/inferior vena cava differ only by position and neighbours"
        ),
        "reference": "medcontext",
        "licence": "Apache-2.0",
        "release": f"generate_phantom(num_cases={num_cases}, shape={list(map(int, shape))}, seed={seed}, num_test={num_test})",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {str(k): v for k, v in _labels().items()},
        "numTraining": num_cases,
        "numTest": num_test,
        "training": training,
        "test": test,
    }
    write_text_atomic(out / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return out


def generate_phantom_images(
    out_dir: str | Path,
    num_cases: int,
    shape: Sequence[int] = (48, 48, 48),
    seed: int = 0,
    *,
    first_case: int = 0,
) -> list[Path]:
    """Write phantom images only, as unlabelled volumes: ``out_dir/phantom_NNN.nii.gz``, no label file.

    Case ``i`` (``first_case <= i < first_case + num_cases``) is the image that
    :func:`generate_phantom` with the same ``seed`` writes for its case ``i``; its label map is
    computed with it (:func:`make_phantom_case`) and dropped, never written. Give ``first_case``
    at least the labelled dataset's ``num_cases``, so that these are other phantoms than its
    labelled ones and their case ids differ from theirs.

    Args:
        out_dir: folder of the images (created; existing files of the same names are overwritten).
        num_cases: images to write (>= 1).
        shape: ``(X, Y, Z)`` voxels per volume (1 mm each).
        seed: seed of the dataset; case ``i`` uses ``SeedSequence([seed, i])``.
        first_case: index of the first case.

    Returns:
        The paths written, in case order.
    """
    if num_cases < 1 or first_case < 0:
        raise ValueError(f"num_cases must be >= 1 and first_case >= 0, got {num_cases} and {first_case}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first_case, first_case + num_cases):
        image, _ = make_phantom_case(shape, _case_rng(seed, i))
        paths.append(out / _case_file(i))
        _save(image, _AFFINE, paths[-1])
    return paths


_AFFINE = np.eye(4)


def _case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def _case_file(index: int) -> str:
    return f"phantom_{index:03d}.nii.gz"


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))
