"""Evaluate a folder of predicted NIfTI label maps against the reference label maps.

Predictions and references are paired by case id (the file name without ``.nii.gz`` /
``.nii``: :func:`medcontext.data.nifti_names.case_id_from_path`). Every pair's header is
checked (same 3D shape, same affine) before any volume is read, so a wrong folder fails in
seconds with both file names. The voxel spacing comes from
the REFERENCE header (``get_zooms``, in mm). Each case then goes through
:func:`~medcontext.evaluation.metrics.evaluate_case` into a
:class:`~medcontext.evaluation.metric_table.MetricTable`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np
from tqdm import tqdm

from medcontext.data.nifti_names import NIFTI_SUFFIXES, case_id_from_path, is_nifti_file

from .classes import ClassMap, label_masks, region_channel_masks, validate_classes
from .metrics import HD_COMBINE_MODES, evaluate_case, evaluate_masks
from .metric_table import MetricTable

__all__ = [
    "NIFTI_SUFFIXES",
    "case_id_from_path",
    "as_label_map",
    "header_spacing",
    "pair_cases",
    "evaluate_folder",
    "evaluate_region_folder",
]

_UNIT_TO_MM = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 0.001}


def _scan(folder: Path, suffix: str, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist or is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        if not is_nifti_file(path):
            continue
        if suffix and not name.endswith(tuple(suffix + s for s in NIFTI_SUFFIXES)):
            continue
        case_id = case_id_from_path(path, suffix)
        if case_id in found:
            raise ValueError(
                f"{what} folder {folder}: case {case_id!r} has two files, {found[case_id].name} and {name}"
            )
        found[case_id] = path
    return found


def pair_cases(
    pred_dir: str | os.PathLike,
    truth: str | os.PathLike | Mapping[str, str | os.PathLike],
    *,
    pred_suffix: str = "",
) -> list[tuple[str, Path, Path]]:
    """Pair prediction files with reference files by case id.

    Args:
        pred_dir: folder of predicted label maps ``<case_id><pred_suffix>.nii.gz``.
        truth: a folder of reference label maps ``<case_id>.nii.gz`` (e.g. an MSD
            ``labelsTr``; references without a prediction are ignored, so a folder holding
            every case can serve a test split), or a mapping case id -> reference file (then
            exactly these cases are evaluated and each needs a prediction).
        pred_suffix: text between the case id and the extension in prediction names.

    Returns:
        ``(case_id, prediction path, reference path)`` sorted by case id.

    Raises:
        FileNotFoundError: when a folder or a listed reference file does not exist.
        ValueError: when no prediction is found or a case has no partner (listing them).
    """
    pred_dir = Path(pred_dir)
    preds = _scan(pred_dir, pred_suffix, "prediction")
    if isinstance(truth, Mapping):
        truths = {str(k): Path(v) for k, v in truth.items()}
        if not truths:
            raise ValueError("the truth mapping is empty: give case id -> reference label file")
        absent = [str(p) for p in truths.values() if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"reference label files not found: {absent[:5]}{' ...' if len(absent) > 5 else ''}")
        unpredicted = sorted(set(truths) - set(preds))
        if unpredicted:
            raise ValueError(
                f"{len(unpredicted)} listed cases have no prediction in {pred_dir} "
                f"(expected <case_id>{pred_suffix}.nii.gz): {unpredicted[:10]}"
            )
        case_ids = sorted(truths)
    else:
        truths = _scan(Path(truth), "", "reference")
        if not preds:
            raise ValueError(f"no prediction files *{pred_suffix}.nii.gz / *{pred_suffix}.nii in {pred_dir}")
        orphans = sorted(set(preds) - set(truths))
        if orphans:
            raise ValueError(f"{len(orphans)} predictions in {pred_dir} have no reference in {truth}: {orphans[:10]}")
        case_ids = sorted(preds)
    return [(case_id, preds[case_id], truths[case_id]) for case_id in case_ids]


def _spatial_shape(img: nib.spatialimages.SpatialImage, path: Path) -> tuple[int, ...]:
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise ValueError(f"{path}: expected a 3D label map, got shape {shape}")
    return shape[:3]


def _check_affines(case_id: str, pred_img, truth_img, affine_atol: float, what: str, advice: str = "") -> None:
    """Raise ``ValueError`` naming ``what`` when the two images' affines differ by more than ``affine_atol``."""
    diff = float(np.max(np.abs(pred_img.affine - truth_img.affine)))
    if not diff <= affine_atol:
        raise ValueError(
            f"case {case_id!r}: {what} have different affines "
            f"(largest difference {diff:.4g} > affine_atol={affine_atol}){advice}"
        )


def header_spacing(
    img: nib.spatialimages.SpatialImage, path: str | os.PathLike = "<image>"
) -> tuple[float, float, float]:
    """Voxel spacing in mm from an image header (``get_zooms``, converted from m or µm if so declared).

    Raises:
        ValueError: when a spacing value is not finite and positive.
    """
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    unit = "mm"
    if hasattr(img.header, "get_xyzt_units"):
        unit = img.header.get_xyzt_units()[0] or "unknown"
    scale = _UNIT_TO_MM.get(unit, 1.0)
    spacing = tuple(z * scale for z in zooms)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"{path}: header voxel spacing {zooms} ({unit}) is not three positive numbers")
    return spacing  # type: ignore[return-value]


def as_label_map(data: np.ndarray, source: str | os.PathLike = "<array>") -> np.ndarray:
    """A 3D integer label map from image data: drops trailing size-1 axes, rounds whole floats.

    Args:
        data: ``(H, W, D)`` or ``(H, W, D, 1, ...)`` array; floats must hold whole numbers
            (label maps saved as float32 are common).
        source: file name for error messages.

    Raises:
        ValueError: when the array is not 3D or holds fractional or non-finite values.
    """
    arr = np.asarray(data)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{source}: expected a 3D label map, got shape {np.shape(data)}")
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{source}: label map has unsupported dtype {arr.dtype}")
    rounded = np.rint(arr)
    if not np.all(np.isfinite(arr)) or np.any(np.abs(arr - rounded) > 1e-3):
        raise ValueError(f"{source}: label map holds non-integer values (is this a probability map, not labels?)")
    return rounded.astype(np.int64)


def evaluate_folder(
    pred_dir: str | os.PathLike,
    truth: str | os.PathLike | Mapping[str, str | os.PathLike],
    classes: ClassMap,
    *,
    pred_suffix: str = "",
    affine_atol: float = 1e-3,
    combine: str = "max",
    progress: bool = True,
) -> MetricTable:
    """Dice and HD95 of every predicted case in a folder against its reference label map.

    Args:
        pred_dir: folder of predicted integer label maps ``<case_id><pred_suffix>.nii.gz``,
            in the reference images' space (same shape and affine).
        truth: reference folder or mapping case id -> file, see :func:`pair_cases`.
        classes: name -> label values, e.g. ``{"Anterior": [1], "Posterior": [2]}``.
        pred_suffix: text between the case id and the extension in prediction names.
        affine_atol: largest allowed absolute difference between the two affines (mm).
        combine: HD95 convention, see :func:`~medcontext.evaluation.metrics.hd95`.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`MetricTable` with one row per case and class.

    Raises:
        ValueError: before any volume is read, when pairing fails or a pair differs in shape or
            affine (naming both files); later, when a label map is not integral.
    """
    classes = validate_classes(classes)
    if combine not in HD_COMBINE_MODES:
        raise ValueError(f"combine must be one of {HD_COMBINE_MODES}, got {combine!r}")
    pairs = pair_cases(pred_dir, truth, pred_suffix=pred_suffix)

    checked = []
    for case_id, pred_path, truth_path in pairs:
        try:
            pred_img, truth_img = nib.load(pred_path), nib.load(truth_path)
        except Exception as err:  # nibabel raises several types for unreadable files
            raise ValueError(f"case {case_id!r}: cannot read {pred_path} or {truth_path}: {err}") from err
        pred_shape, truth_shape = _spatial_shape(pred_img, pred_path), _spatial_shape(truth_img, truth_path)
        if pred_shape != truth_shape:
            raise ValueError(
                f"case {case_id!r}: prediction {pred_path} has shape {pred_shape} but reference {truth_path} "
                f"has {truth_shape}; save predictions in the reference image's grid"
            )
        _check_affines(case_id, pred_img, truth_img, affine_atol,
                       f"prediction {pred_path} and reference {truth_path}",
                       f"; save predictions with the reference affine\nprediction:\n{pred_img.affine}"
                       f"\nreference:\n{truth_img.affine}")
        checked.append((case_id, pred_path, truth_path, pred_img, truth_img, header_spacing(truth_img, truth_path)))

    table = MetricTable(hd95_combine=combine)
    for case_id, pred_path, truth_path, pred_img, truth_img, spacing in tqdm(
        checked, desc="evaluate", unit="case", disable=not progress
    ):
        pred = as_label_map(np.asanyarray(pred_img.dataobj), pred_path)
        ref = as_label_map(np.asanyarray(truth_img.dataobj), truth_path)
        table.add(evaluate_case(pred, ref, spacing, classes, case_id, combine=combine))
    return table


def evaluate_region_folder(
    pred_dir: str | os.PathLike,
    truth: str | os.PathLike | Mapping[str, str | os.PathLike],
    regions: Mapping[str, Sequence[int]],
    classes: ClassMap,
    *,
    affine_atol: float = 1e-3,
    combine: str = "max",
    progress: bool = True,
) -> MetricTable:
    """Dice and HD95 of every region of sigmoid region predictions, each channel on its own.

    Args:
        pred_dir: folder of region stacks ``<case_id>.nii.gz``, ``(H, W, D, R)`` 0/1 in the
            reference images' space, channels in the order of ``regions`` (what
            ``Predictor.predict_case(..., regions_dir=...)`` writes).
        truth: reference label maps, see :func:`pair_cases`; each region's ground truth is
            the union of its label values.
        regions: region name -> label values in channel order, e.g. BraTS ``WT, TC, ET``.
        classes: the evaluated regions (name -> label values).
        affine_atol, combine, progress: as for :func:`evaluate_folder`.

    Returns:
        A :class:`MetricTable` with one row per case and region.

    Raises:
        ValueError: a pair differs in grid or channel count (naming both files), or a class
            is none of the regions.
    """
    classes = validate_classes(classes)
    if combine not in HD_COMBINE_MODES:
        raise ValueError(f"combine must be one of {HD_COMBINE_MODES}, got {combine!r}")
    table = MetricTable(hd95_combine=combine)
    pairs = pair_cases(pred_dir, truth)
    loaded = []
    for case_id, pred_path, truth_path in pairs:
        pred_img, truth_img = nib.load(pred_path), nib.load(truth_path)
        shape, truth_shape = tuple(pred_img.shape), _spatial_shape(truth_img, truth_path)
        if len(shape) == 3 and len(regions) == 1:  # one region: the restored stack lost its channel axis
            shape = shape + (1,)
        if len(shape) != 4 or shape[:3] != truth_shape or shape[3] != len(regions):
            raise ValueError(
                f"case {case_id!r}: region prediction {pred_path} has shape {shape}; expected {truth_shape + (len(regions),)} "
                f"(the reference {truth_path} grid, one channel per region {list(regions)})"
            )
        _check_affines(case_id, pred_img, truth_img, affine_atol,
                       f"region prediction {pred_path} and reference {truth_path}")
        loaded.append((case_id, pred_path, truth_path, pred_img, truth_img))
    for case_id, pred_path, truth_path, pred_img, truth_img in tqdm(
        loaded, desc="evaluate regions", unit="case", disable=not progress
    ):
        stack = np.asanyarray(pred_img.dataobj)
        stack = np.moveaxis(stack if stack.ndim == 4 else stack[..., None], -1, 0)
        ref = as_label_map(np.asanyarray(truth_img.dataobj), truth_path)
        spacing = header_spacing(truth_img, truth_path)
        pred_masks = region_channel_masks(stack, regions, classes)
        table.add(evaluate_masks(pred_masks, label_masks(ref, classes), spacing, case_id, combine=combine))
    return table
