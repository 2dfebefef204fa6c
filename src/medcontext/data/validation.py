"""Whether a dataset's files are sound: every case loaded once, every problem reported at once.

:func:`validate_dataset` checks each case (:func:`_check_case`: files decode, image channels
agree in shape and affine, the channel count, the label's grid and values, NaN/Inf
intensities) and returns a :class:`~medcontext.data.dataset_summary.DatasetSummary` or raises
one :class:`~medcontext.data.dataset_spec.DatasetError` listing every problem.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medcontext.data.dataset_spec import CaseRecord, DatasetError, DatasetSpec, format_problems
from medcontext.data.dataset_summary import CaseSummary, DatasetSummary

__all__ = ["validate_dataset", "check_case"]

AFFINE_RTOL = 1e-3


def _affine_close(a: np.ndarray, b: np.ndarray) -> bool:
    scale = max(1.0, float(np.abs(a[:3, :3]).max()))
    return bool(np.allclose(a, b, rtol=AFFINE_RTOL, atol=AFFINE_RTOL * scale))


def _read_nifti(case_id: str, path: Path, what: str, problems: list[str]) -> Any | None:
    if not path.is_file():
        problems.append(f"case {case_id}: {what} file {path} does not exist")
        return None
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt files
        kind = "truncated or corrupt" if isinstance(err, (EOFError, zlib.error, OSError)) else "unreadable"
        problems.append(f"case {case_id}: {what} file {path} is {kind}: {type(err).__name__}: {err}")
        return None
    return img, data


def _check_case(spec: DatasetSpec, case: CaseRecord, labelled: bool) -> tuple[CaseSummary | None, list[str]]:
    """Every check of one case, in order: images, channel count, label; a summary when all pass."""
    problems: list[str] = []
    cid = case.case_id
    loaded = [_read_nifti(cid, p, "image", problems) for p in case.images]
    if any(x is None for x in loaded):
        return None, problems
    ref_img, _ = loaded[0]
    channels, intensity = _check_images(case, loaded, problems)
    _check_channel_count(spec, case, channels, problems)
    counts: dict[int, int] = {}
    if labelled and case.label is not None:
        counts = _check_label(spec, case, ref_img, problems)
    elif labelled:
        problems.append(f"case {cid}: no label file")
    if problems:
        return None, problems
    return _case_summary(case, ref_img, channels, counts, intensity, labelled), problems


def check_case(spec: DatasetSpec, case: CaseRecord, labelled: bool) -> tuple[CaseSummary | None, list[str]]:
    """Every check of one case (what :func:`validate_dataset` runs per case): ``(summary, problems)``,
    the summary ``None`` when a check failed. Shared with the other commands' input checks
    (:mod:`medcontext.data.input_checks`)."""
    return _check_case(spec, case, labelled)


def _check_images(case: CaseRecord, loaded: list[Any], problems: list[str]) -> tuple[int, tuple[float, float]]:
    """Each image file: 3D or 4D, the first file's grid, finite values. Returns channels and ``(min, max)``."""
    ref_img, _ = loaded[0]
    ref_shape = tuple(int(s) for s in ref_img.shape[:3])
    channels = 0
    lo, hi = math.inf, -math.inf
    for path, (img, data) in zip(case.images, loaded):
        found = _image_channels(case.case_id, path, data, problems)
        if found is None:
            continue
        channels += found
        _check_image_grid(case, path, img, data, ref_img, ref_shape, problems)
        img_lo, img_hi = _intensity_range(case.case_id, path, data, problems)
        lo, hi = min(lo, img_lo), max(hi, img_hi)
    return channels, (lo, hi)


def _image_channels(cid: str, path: Path, data: np.ndarray, problems: list[str]) -> int | None:
    """Channels of one image file (4D: its last axis); ``None`` when it is neither 3D nor 4D."""
    if data.ndim == 4:
        return int(data.shape[3])
    if data.ndim == 3:
        return 1
    problems.append(f"case {cid}: image {path} has {data.ndim} dimensions {data.shape}; expected 3D or 4D")
    return None


def _check_image_grid(case: CaseRecord, path: Path, img: Any, data: np.ndarray, ref_img: Any,
                      ref_shape: tuple[int, ...], problems: list[str]) -> None:
    """The image file has the first file's shape and affine."""
    cid = case.case_id
    if tuple(data.shape[:3]) != ref_shape:
        problems.append(f"case {cid}: image {path} has shape {data.shape[:3]} but {case.images[0].name} has {ref_shape}")
    elif not _affine_close(img.affine, ref_img.affine):
        problems.append(f"case {cid}: image {path} has a different affine than {case.images[0].name}")


def _intensity_range(cid: str, path: Path, data: np.ndarray, problems: list[str]) -> tuple[float, float]:
    """``(min, max)`` of the finite voxels (``(inf, -inf)`` for none); NaN/Inf voxels are a problem."""
    lo, hi = math.inf, -math.inf
    if data.dtype.kind == "f":
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        if bad:
            problems.append(f"case {cid}: image {path} has {bad} NaN/Inf voxels")
        finite = data[np.isfinite(data)] if bad else data
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
    elif data.size:
        lo, hi = float(data.min()), float(data.max())
    return lo, hi


def _check_channel_count(spec: DatasetSpec, case: CaseRecord, channels: int, problems: list[str]) -> None:
    """The case's image files hold as many channels as the dataset names."""
    if channels != spec.num_channels:
        files = ", ".join(str(p) for p in case.images)
        problems.append(
            f"case {case.case_id}: image {files} has {channels} channel(s) but the dataset has {spec.num_channels} "
            f"({', '.join(spec.channel_names)})"
        )


def _check_label(spec: DatasetSpec, case: CaseRecord, ref_img: Any, problems: list[str]) -> dict[int, int]:
    """The label file: readable, 3D, the image's grid, whole known values. Returns value -> voxel count."""
    cid = case.case_id
    got = _read_nifti(cid, case.label, "label", problems)
    if got is None:
        return {}
    limg, ldata = got
    if ldata.ndim == 4 and ldata.shape[3] == 1:
        ldata = ldata[..., 0]
    if ldata.ndim != 3:
        problems.append(f"case {cid}: label {case.label} has shape {ldata.shape}; expected a 3D label map")
        return {}
    _check_label_grid(case, limg, ldata, ref_img, problems)
    counts = _label_counts(cid, case.label, ldata, problems)
    _check_label_values(spec, cid, case.label, counts, problems)
    return counts


def _check_label_grid(case: CaseRecord, limg: Any, ldata: np.ndarray, ref_img: Any, problems: list[str]) -> None:
    """The label has the first image's shape and affine."""
    cid = case.case_id
    ref_shape = tuple(int(s) for s in ref_img.shape[:3])
    if tuple(ldata.shape) != ref_shape:
        problems.append(
            f"case {cid}: label {case.label} has shape {tuple(ldata.shape)} but image "
            f"{case.images[0]} has {ref_shape}"
        )
    elif not _affine_close(limg.affine, ref_img.affine):
        problems.append(
            f"case {cid}: label {case.label} affine differs from image {case.images[0]} "
            f"(max difference {np.abs(limg.affine - ref_img.affine).max():.3g})"
        )


def _label_counts(cid: str, label: Path, ldata: np.ndarray, problems: list[str]) -> dict[int, int]:
    """Voxel count of every whole label value; NaN/Inf and fractional values are problems."""
    values, n = np.unique(ldata, return_counts=True)
    if ldata.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            problems.append(f"case {cid}: label {label} has NaN/Inf values")
            values, n = values[np.isfinite(values)], n[np.isfinite(values)]
        frac = values[values != np.round(values)]
        if frac.size:
            problems.append(
                f"case {cid}: label {label} has non-integer values {frac[:5].tolist()}; "
                "labels must be whole numbers"
            )
    return {int(round(float(v))): int(c) for v, c in zip(values, n) if float(v) == round(float(v))}


def _check_label_values(spec: DatasetSpec, cid: str, label: Path, counts: dict[int, int], problems: list[str]) -> None:
    """Every label value is one of the dataset's labels."""
    unknown = sorted(v for v in counts if v not in spec.labels)
    if unknown:
        problems.append(
            f"case {cid}: label {label} has values {unknown} not in the dataset's labels "
            f"{sorted(spec.labels)}"
        )


def _case_summary(case: CaseRecord, ref_img: Any, channels: int, counts: dict[int, int],
                  intensity: tuple[float, float], labelled: bool) -> CaseSummary:
    """Shape, spacing (header zooms, mm), orientation and label volumes of a case that passed."""
    zooms = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
    orientation = "".join(nib.aff2axcodes(ref_img.affine))
    voxel_ml = float(np.prod(zooms)) / 1000.0
    lo, hi = intensity
    return CaseSummary(
        case_id=case.case_id,
        shape=tuple(int(s) for s in ref_img.shape[:3]),  # type: ignore[arg-type]
        channels=channels,
        spacing=zooms,  # type: ignore[arg-type]
        orientation=orientation,
        label_voxels=counts,
        label_ml={k: v * voxel_ml for k, v in counts.items()},
        intensity_range=(lo, hi) if lo <= hi else (math.nan, math.nan),
        labelled=labelled,
    )


def validate_dataset(spec: DatasetSpec, *, progress: bool = True, include_unlabeled: bool = True) -> DatasetSummary:
    """Load every case once and check it; report every problem at once.

    Checks: files exist and decode; image channels agree in shape and affine; the channel
    count equals ``spec.num_channels``; labels are 3D, have the image's shape and affine
    (relative tolerance 1e-3), hold whole numbers and only values of ``spec.labels``;
    images have no NaN/Inf. Nothing is written.

    Args:
        spec: the dataset, from :func:`load_dataset`.
        progress: show a tqdm bar.
        include_unlabeled: check the unlabelled cases' images too.

    Returns:
        Per-case shapes, spacings (mm, from the header zooms), orientation codes, label
        voxel counts and volumes (ml); print it with :meth:`DatasetSummary.format`.

    Raises:
        DatasetError: listing every problem found, each naming the case and the file.
    """
    from tqdm.auto import tqdm

    todo = [(c, True) for c in spec.cases] + ([(c, False) for c in spec.unlabeled] if include_unlabeled else [])
    summaries: list[CaseSummary] = []
    problems: list[str] = []
    for case, labelled in tqdm(todo, desc=f"checking {spec.name}", unit="case", disable=not progress, leave=False):
        summary, found = _check_case(spec, case, labelled)
        problems.extend(found)
        if summary is not None:
            summaries.append(summary)
    if problems:
        bad_cases = len({p.split(":")[0] for p in problems})
        raise DatasetError(
            format_problems(f"dataset {spec.name!r} ({spec.root}) failed its check in {bad_cases} case(s)", problems),
            problems,
        )
    return DatasetSummary(spec=spec, cases=summaries)
