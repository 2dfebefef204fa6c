"""A dataset's fingerprint and the target spacing it implies (nnU-Net's rule).

:class:`DatasetFingerprint` holds every labelled case's shape and spacing, read from the image
headers (no voxel data) in the training orientation; :func:`plan_spacing` picks the spacing to
resample to: none when every case shares one, else the median, with nnU-Net's rule for thick
slices (a slice axis more than :data:`ANISOTROPY_THRESHOLD` times coarser than the others, with
that many times fewer voxels, gets the 10th percentile of its spacings instead of the median).
The crop, batch, memory and time of a run are planned from it by
:mod:`medcontext.engine.planning.training_plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["DatasetFingerprint", "ANISOTROPY_THRESHOLD", "plan_spacing", "thick_slice_axis", "format_axes", "Spacing"]

Spacing = tuple[float, float, float]

ANISOTROPY_THRESHOLD = 3.0
"""nnU-Net's threshold: an axis this many times coarser (and with this many times fewer
voxels) than the others is a thick-slice axis."""


@dataclass(frozen=True)
class DatasetFingerprint:
    """Shapes and spacings of a dataset's labelled cases, in the training orientation.

    Attributes:
        case_ids: the cases.
        shapes: voxels per axis of each case, ``(H, W, D)`` after reorientation.
        spacings: mm per voxel of each case, same axis order.
    """

    case_ids: tuple[str, ...]
    shapes: tuple[Triple, ...]
    spacings: tuple[Spacing, ...]

    def __post_init__(self) -> None:
        if not self.case_ids or len(self.shapes) != len(self.case_ids) or len(self.spacings) != len(self.case_ids):
            raise ValueError("a fingerprint needs one shape and one spacing per case, and at least one case")

    @classmethod
    def from_spec(cls, spec: Any, orientation: str = "RAS") -> "DatasetFingerprint":
        """Read the first image header of every labelled case of ``spec`` (no voxel data).

        Args:
            spec: a :class:`~medcontext.data.DatasetSpec`.
            orientation: the axis codes preprocessing reorients to (``"RAS"``).
        """
        import nibabel as nib
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

        target = axcodes2ornt(tuple(orientation))
        ids, shapes, spacings = [], [], []
        for case in spec.cases:
            path = Path(case.images[0])
            try:
                img = nib.load(str(path))
            except Exception as err:  # nibabel raises several types for unreadable files
                raise ValueError(f"case {case.case_id}: cannot read the header of {path}: {err}") from err
            shape = [int(s) for s in img.shape[:3]]
            zooms = [float(z) for z in img.header.get_zooms()[:3]]
            transform = ornt_transform(io_orientation(img.affine), target)
            out_shape, out_spacing = [0, 0, 0], [0.0, 0.0, 0.0]
            for axis, (new_axis, _flip) in enumerate(transform):
                out_shape[int(new_axis)] = shape[axis]
                out_spacing[int(new_axis)] = zooms[axis]
            ids.append(case.case_id)
            shapes.append(tuple(out_shape))
            spacings.append(tuple(out_spacing))
        return cls(tuple(ids), tuple(shapes), tuple(spacings))  # type: ignore[arg-type]

    @property
    def median_shape(self) -> tuple[float, float, float]:
        """Median voxels per axis."""
        return tuple(float(v) for v in np.median(np.asarray(self.shapes, dtype=float), axis=0))  # type: ignore[return-value]

    @property
    def median_spacing(self) -> Spacing:
        """Median mm per voxel per axis."""
        return tuple(float(v) for v in np.median(np.asarray(self.spacings, dtype=float), axis=0))  # type: ignore[return-value]

    def resampled_shapes(self, spacing: Sequence[float] | None) -> np.ndarray:
        """Voxels per axis of every case after resampling to ``spacing`` (``None``: as stored),
        ``(cases, 3)`` floats."""
        shapes = np.asarray(self.shapes, dtype=float)
        if spacing is not None:
            shapes = shapes * np.asarray(self.spacings, dtype=float) / np.asarray(spacing, dtype=float)
        return shapes

    def resampled_median_shape(self, spacing: Sequence[float] | None) -> tuple[float, float, float]:
        """Median voxels per axis after resampling every case to ``spacing`` (``None``: as stored)."""
        return tuple(float(v) for v in np.median(self.resampled_shapes(spacing), axis=0))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: case count, medians and ranges (not every case)."""
        shapes, spacings = np.asarray(self.shapes), np.asarray(self.spacings)
        return {
            "cases": len(self.case_ids),
            "median_shape": list(self.median_shape),
            "min_shape": shapes.min(axis=0).tolist(),
            "max_shape": shapes.max(axis=0).tolist(),
            "median_spacing": list(self.median_spacing),
            "min_spacing": spacings.min(axis=0).tolist(),
            "max_spacing": spacings.max(axis=0).tolist(),
        }


def format_axes(values: Sequence[float], digits: int = 3) -> str:
    return "x".join(f"{float(v):.{digits}g}" for v in values)


def thick_slice_axis(fingerprint: DatasetFingerprint) -> int | None:
    """The axis nnU-Net's anisotropy rule calls thick-slice (median spacing more than
    :data:`ANISOTROPY_THRESHOLD` times the others', and that many times fewer voxels), or None."""
    target = np.median(np.asarray(fingerprint.spacings, dtype=float), axis=0)
    size = np.asarray(fingerprint.median_shape)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[a] for a in others)
    aniso_voxels = size[worst] * ANISOTROPY_THRESHOLD < min(size[a] for a in others)
    return worst if aniso_spacing and aniso_voxels else None


def plan_spacing(fingerprint: DatasetFingerprint) -> tuple[Spacing | None, str]:
    """The target spacing nnU-Net would choose, and why.

    Returns:
        ``(spacing or None, reason)``; ``None`` keeps every case's own grid (all share one).
    """
    spacings = np.asarray(fingerprint.spacings, dtype=float)
    n = len(spacings)
    if np.allclose(spacings, spacings[0], rtol=1e-3, atol=1e-5):
        return None, f"all {n} cases share {format_axes(spacings[0])} mm: no resampling"
    target = np.median(spacings, axis=0)
    worst = thick_slice_axis(fingerprint)
    reason = f"median spacing of {n} cases (from {format_axes(spacings.min(axis=0))} to {format_axes(spacings.max(axis=0))} mm)"
    if worst is not None:
        others = [a for a in range(3) if a != worst]
        tenth = float(np.percentile(spacings[:, worst], 10))
        finest_other = float(max(target[a] for a in others))
        if tenth < finest_other:
            tenth = finest_other + 1e-5
        reason += (
            f"; axis {worst} is a thick-slice axis (median {target[worst]:.3g} mm > {ANISOTROPY_THRESHOLD:g}x the "
            f"in-plane {finest_other:.3g} mm): its 10th percentile {tenth:.3g} mm, as nnU-Net"
        )
        target[worst] = tenth
    return tuple(float(round(v, 5)) for v in target), reason  # type: ignore[return-value]
