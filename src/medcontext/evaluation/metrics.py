"""Dice and HD95 of one case: pure functions on numpy masks, no torch.

Data enters as boolean masks (or integer label maps for :func:`evaluate_case`) of shape
``(H, W, D)`` plus the voxel spacing in millimetres, read from the image header by the caller;
it leaves as floats and :class:`CaseMetric` rows for :class:`~medcontext.evaluation.metric_table.MetricTable`.

Conventions (docs/method.md, "Evaluation conventions"), stated on every report:

* Dice ``2|P and T| / (|P| + |T|)``; both masks empty -> 1.0; exactly one empty -> 0.0.
* HD95 in millimetres; both empty -> 0.0; exactly one empty -> NaN (missing: counted and
  reported separately, never averaged as 0).

HD95 follows MONAI's ``compute_hausdorff_distance(percentile=95, spacing=...)`` (MONAI 1.6)
and the paper's Eq. 8, ``HD95 = max(d95(P -> T), d95(T -> P))``:

* the surface of a mask is its voxels removed by one binary erosion with the 6-connected
  cross (``mask & ~binary_erosion(mask)``), with everything outside the array counted as
  background, so foreground on the array border is surface;
* a directed distance set holds, for every surface voxel of one mask, the Euclidean distance
  in mm (centre to centre, scaled by ``spacing``) to the nearest surface voxel of the other;
* each directed set gives its 95th percentile with linear interpolation (``np.percentile``,
  as ``torch.quantile``), and HD95 is the larger of the two.

``combine="union"`` instead takes the 95th percentile of both directed sets pooled, as
``medpy.metric.binary.hd95`` (used by nnFormer's evaluation) does; it is never larger than the
default. Differences from MONAI: it returns NaN when both masks are empty and a non-finite
value (NaN from infinite distances) when exactly one is, where we give 0.0 and NaN as docs/method.md
asks; it returns float32, we return float64 (agreement to about 1e-6 relative).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from .classes import ClassMap, label_masks

__all__ = [
    "NOTE_BOTH_EMPTY",
    "NOTE_PRED_EMPTY",
    "NOTE_TRUTH_EMPTY",
    "HD_COMBINE_MODES",
    "CaseMetric",
    "dice_score",
    "surface_voxels",
    "surface_distances",
    "hd95",
    "evaluate_masks",
    "evaluate_case",
    "label_masks",
]

NOTE_BOTH_EMPTY = "both empty"
NOTE_PRED_EMPTY = "prediction empty"
NOTE_TRUTH_EMPTY = "truth empty"
HD_COMBINE_MODES = ("max", "union")


@dataclass(frozen=True)
class CaseMetric:
    """Dice and HD95 of one class (or region) in one case.

    Attributes:
        case_id: case identifier, e.g. ``"hippocampus_001"``.
        class_name: class or region name, e.g. ``"spleen"`` or ``"WT"``.
        dice: Dice in [0, 1].
        hd95: HD95 in mm; NaN when exactly one of prediction and truth is empty.
        pred_voxels: number of predicted foreground voxels.
        truth_voxels: number of truth foreground voxels.
        note: ``"both empty"``, ``"prediction empty"``, ``"truth empty"`` or ``""``.
    """

    case_id: str
    class_name: str
    dice: float
    hd95: float
    pred_voxels: int
    truth_voxels: int
    note: str = ""

    def as_dict(self) -> dict:
        """The fields as a plain dict (for CSV/JSON writers)."""
        return asdict(self)


def _as_mask(mask: np.ndarray, what: str) -> np.ndarray:
    """Return ``mask`` as a bool array; accept 0/1 numbers, refuse label maps."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{what} must be a boolean mask, got dtype {arr.dtype}")
    if np.any((arr != 0) & (arr != 1)):
        found = np.unique(arr)[:6]
        raise ValueError(
            f"{what} must be a boolean (0/1) mask but holds values {found.tolist()}; "
            "for a label map use evaluate_case or label_masks to build one mask per class"
        )
    return arr != 0


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = _as_mask(pred, "pred")
    truth = _as_mask(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth must have the same shape, got {pred.shape} and {truth.shape}")
    return pred, truth


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except TypeError as err:
        raise TypeError(f"spacing must be a sequence of {ndim} voxel sizes in mm, got {spacing!r}") from err
    if len(values) != ndim:
        raise ValueError(f"spacing {values} has {len(values)} values but the masks have {ndim} dimensions")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values must be finite and positive (mm), got {values}")
    return values


def _joint_box(pred: np.ndarray, truth: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of ``pred | truth`` grown by one voxel (clipped to the array), or None."""
    union = pred | truth
    box: list[slice] = []
    for axis in range(union.ndim):
        others = tuple(a for a in range(union.ndim) if a != axis)
        hit = np.flatnonzero(union.any(axis=others))
        if hit.size == 0:
            return None
        lo, hi = max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, union.shape[axis])
        box.append(slice(lo, hi))
        # shrink the union along this axis so the next projections read less memory
        index = [slice(None)] * union.ndim
        index[axis] = box[-1]
        union = union[tuple(index)]
    return tuple(box)


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity of two boolean masks.

    Args:
        pred: predicted mask, any shape, bool (or 0/1 numbers).
        truth: reference mask of the same shape.

    Returns:
        ``2 |pred & truth| / (|pred| + |truth|)``; 1.0 when both are empty, 0.0 when exactly
        one is.

    Raises:
        ValueError: when shapes differ or a mask holds values other than 0/1.
    """
    pred, truth = _check_pair(pred, truth)
    return _dice(pred, truth, int(np.count_nonzero(pred)), int(np.count_nonzero(truth)))


def _dice(pred: np.ndarray, truth: np.ndarray, n_pred: int, n_truth: int) -> float:
    if n_pred + n_truth == 0:
        return 1.0
    if n_pred == 0 or n_truth == 0:
        return 0.0
    return 2.0 * int(np.count_nonzero(pred & truth)) / (n_pred + n_truth)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a mask: those removed by one erosion with the 6-connected cross.

    Voxels outside the array count as background, so foreground voxels on the array border
    are surface (as in MONAI's ``get_mask_edges``).

    Args:
        mask: boolean mask, any number of dimensions.

    Returns:
        Boolean array of the same shape, True on surface voxels.
    """
    mask = _as_mask(mask, "mask")
    return mask & ~ndimage.binary_erosion(mask)


def _directed_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Both directed surface distance sets of two non-empty masks (mm)."""
    box = _joint_box(pred, truth)
    assert box is not None  # callers check emptiness
    pred_surface = surface_voxels(pred[box])
    truth_surface = surface_voxels(truth[box])
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_truth[pred_surface], to_pred[truth_surface]


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two non-empty masks, in mm.

    Args:
        pred: predicted mask, shape ``(H, W, D)`` (any number of dimensions works).
        truth: reference mask of the same shape.
        spacing: voxel size in mm along each axis, e.g. ``(0.8, 0.8, 5.0)``.

    Returns:
        ``(pred_to_truth, truth_to_pred)``: float64 arrays, one distance per surface voxel of
        ``pred`` (to the nearest truth surface voxel) and per surface voxel of ``truth``, in
        C order of the voxels.

    Raises:
        ValueError: when a mask is empty (no surface to measure from), shapes differ, or the
            spacing does not fit.
    """
    pred, truth = _check_pair(pred, truth)
    spacing_t = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not truth.any():
        if not (pred.any() or truth.any()):
            which = "pred and truth are"
        else:
            which = "pred is" if not pred.any() else "truth is"
        raise ValueError(f"surface distances need two non-empty masks, but {which} empty")
    return _directed_distances(pred, truth, spacing_t)


def _check_hd_options(percentile: float, combine: str) -> None:
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if combine not in HD_COMBINE_MODES:
        raise ValueError(f"combine must be one of {HD_COMBINE_MODES}, got {combine!r}")


def _hd(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, ...],
    any_pred: bool,
    any_truth: bool,
    percentile: float,
    combine: str,
) -> float:
    if not any_pred and not any_truth:
        return 0.0
    if not any_pred or not any_truth:
        return math.nan
    to_truth, to_pred = _directed_distances(pred, truth, spacing)
    if combine == "union":
        return float(np.percentile(np.concatenate([to_truth, to_pred]), percentile))
    return float(max(np.percentile(to_truth, percentile), np.percentile(to_pred, percentile)))


def hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    *,
    percentile: float = 95.0,
    combine: str = "max",
) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two masks, in mm.

    See the module docstring for the exact convention (MONAI's, the paper's Eq. 8). Both
    masks are cropped to their joint bounding box plus one voxel before the distance
    transforms, so the cost follows the objects, not the volume.

    Args:
        pred: predicted mask, shape ``(H, W, D)``, bool (or 0/1 numbers).
        truth: reference mask of the same shape.
        spacing: voxel size in mm along each axis, from the image header.
        percentile: the percentile in [0, 100]; 100 gives the classic Hausdorff distance.
        combine: ``"max"`` (default; MONAI, paper): the larger of the two directed
            percentiles. ``"union"`` (medpy): the percentile of both directed sets pooled.

    Returns:
        Distance in mm; 0.0 when both masks are empty, NaN when exactly one is.

    Raises:
        ValueError: on different shapes, non-0/1 masks, bad spacing, percentile or combine.
    """
    pred, truth = _check_pair(pred, truth)
    spacing_t = _check_spacing(spacing, pred.ndim)
    _check_hd_options(percentile, combine)
    return _hd(pred, truth, spacing_t, bool(pred.any()), bool(truth.any()), percentile, combine)


def _note(n_pred: int, n_truth: int) -> str:
    if n_pred == 0 and n_truth == 0:
        return NOTE_BOTH_EMPTY
    if n_pred == 0:
        return NOTE_PRED_EMPTY
    if n_truth == 0:
        return NOTE_TRUTH_EMPTY
    return ""


def evaluate_masks(
    pred_masks: Mapping[str, np.ndarray],
    truth_masks: Mapping[str, np.ndarray],
    spacing: Sequence[float],
    case_id: str,
    *,
    combine: str = "max",
) -> list[CaseMetric]:
    """Dice and HD95 of each named mask pair of one case.

    Use this directly for sigmoid region outputs that are thresholded per channel (BraTS),
    where the regions overlap and no single label map holds them.

    Args:
        pred_masks: name -> predicted boolean mask ``(H, W, D)``.
        truth_masks: name -> reference mask; the same names and shape.
        spacing: voxel size in mm, from the reference image header.
        case_id: case identifier written in every row and error.
        combine: HD95 convention, see :func:`hd95`.

    Returns:
        One :class:`CaseMetric` per name, in the order of ``truth_masks``.

    Raises:
        ValueError: when the names differ, or a pair has different shapes (naming the case).
    """
    _check_hd_options(95.0, combine)
    if set(pred_masks) != set(truth_masks):
        raise ValueError(
            f"case {case_id!r}: prediction classes {sorted(pred_masks)} differ from truth classes {sorted(truth_masks)}"
        )
    rows: list[CaseMetric] = []
    spacing_t: tuple[float, ...] | None = None
    for name, truth_raw in truth_masks.items():
        truth = _as_mask(truth_raw, f"case {case_id!r} truth mask {name!r}")
        pred = _as_mask(pred_masks[name], f"case {case_id!r} prediction mask {name!r}")
        if pred.shape != truth.shape:
            raise ValueError(
                f"case {case_id!r}, class {name!r}: prediction shape {pred.shape} "
                f"differs from truth shape {truth.shape}"
            )
        if spacing_t is None:
            spacing_t = _check_spacing(spacing, truth.ndim)
        n_pred, n_truth = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
        rows.append(
            CaseMetric(
                case_id=case_id,
                class_name=name,
                dice=_dice(pred, truth, n_pred, n_truth),
                hd95=_hd(pred, truth, spacing_t, n_pred > 0, n_truth > 0, 95.0, combine),
                pred_voxels=n_pred,
                truth_voxels=n_truth,
                note=_note(n_pred, n_truth),
            )
        )
    return rows


def evaluate_case(
    pred_labels: np.ndarray,
    truth_labels: np.ndarray,
    spacing: Sequence[float],
    classes: ClassMap,
    case_id: str,
    *,
    combine: str = "max",
) -> list[CaseMetric]:
    """Dice and HD95 of every class (or region) of one case from two integer label maps.

    Args:
        pred_labels: predicted label map ``(H, W, D)``, integer (e.g. the argmax of softmax).
        truth_labels: reference label map of the same shape.
        spacing: voxel size in mm ``(sx, sy, sz)``, from the reference image header.
        classes: name -> label values it unites, e.g. ``{"spleen": [1]}`` or
            ``{"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}``.
        case_id: case identifier written in every row and error.
        combine: HD95 convention, see :func:`hd95`.

    Returns:
        One :class:`CaseMetric` per class, in the order of ``classes``.

    Raises:
        ValueError: when the shapes differ (the message names the case and both shapes), or
            the classes or spacing are invalid.
    """
    pred_labels = np.asarray(pred_labels)
    truth_labels = np.asarray(truth_labels)
    if pred_labels.shape != truth_labels.shape:
        raise ValueError(
            f"case {case_id!r}: prediction shape {pred_labels.shape} differs from truth shape {truth_labels.shape}"
        )
    _check_spacing(spacing, truth_labels.ndim)
    return evaluate_masks(
        label_masks(pred_labels, classes), label_masks(truth_labels, classes), spacing, case_id, combine=combine
    )
