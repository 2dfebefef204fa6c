"""The deterministic preprocessing of every case, as settings saved with a run.

:class:`PreprocessConfig` says how a case is reoriented, resampled, normalised, cropped and
how its label is encoded; :meth:`PreprocessConfig.from_spec` takes a dataset's conventions.
The transforms that carry it out are in :mod:`medcontext.data.transforms`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from medcontext.data.dataset_spec import DatasetSpec

__all__ = ["PreprocessConfig", "NORMALIZATIONS"]

NORMALIZATIONS = ("ct", "zscore", "zscore_nonzero", "none")


@dataclass
class PreprocessConfig:
    """The deterministic preprocessing of every case (saved with a run).

    Attributes:
        orientation: axis codes every volume is reoriented to, e.g. ``"RAS"``.
        spacing: voxel size in mm to resample to; ``None`` keeps each file's own grid.
        normalization: ``"ct"`` (clip to ``ct_window`` in HU, scale to ``[0, 1]``),
            ``"zscore"`` (per channel over all voxels), ``"zscore_nonzero"`` (per channel
            over nonzero voxels, zeros stay 0) or ``"none"``.
        ct_window: ``(low, high)`` HU for ``"ct"``.
        crop_foreground: crop to the bounding box of voxels > 0 (after the CT window for
            ``"ct"``, on raw intensities otherwise).
        output_mode: ``"softmax"`` (label map) or ``"sigmoid"`` (region masks).
        regions: sigmoid region name -> label values, e.g. ``{"WT": [1, 2, 4]}``.
        labels: the dataset's label values (incl. 0); a label map with a larger value is an
            error naming the file.
        lateral: the labels tell left from right (e.g. BTCV's left/right kidney); training
            augmentation then never mirrors the left-right axis (no flip along it, no 90-degree
            rotation in a plane containing it), which would teach swapped sides.
    """

    orientation: str = "RAS"
    spacing: tuple[float, float, float] | None = None
    normalization: str = "zscore"
    ct_window: tuple[float, float] | None = None
    crop_foreground: bool = False
    output_mode: str = "softmax"
    regions: dict[str, list[int]] | None = None
    labels: list[int] | None = None
    lateral: bool = False

    def __post_init__(self) -> None:
        if self.spacing is not None:
            sp = tuple(float(s) for s in (self.spacing if isinstance(self.spacing, (list, tuple)) else [self.spacing] * 3))
            if len(sp) != 3 or not all(s > 0 for s in sp):
                raise ValueError(f"spacing must be three positive mm values, got {self.spacing!r}")
            self.spacing = sp  # type: ignore[assignment]
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.ct_window is not None:
            lo, hi = (float(v) for v in self.ct_window)
            if not lo < hi:
                raise ValueError(f"ct_window must be (low, high) with low < high, got {self.ct_window!r}")
            self.ct_window = (lo, hi)
        if self.normalization == "ct" and self.ct_window is None:
            raise ValueError("normalization 'ct' needs ct_window, e.g. (-175, 250)")
        if len(self.orientation) != 3 or set(self.orientation.upper()) - set("LRAPIS"):
            raise ValueError(f"orientation must be three axis codes like 'RAS', got {self.orientation!r}")
        self.orientation = self.orientation.upper()
        if self.output_mode not in ("softmax", "sigmoid"):
            raise ValueError(f"output_mode must be 'softmax' or 'sigmoid', got {self.output_mode!r}")
        if self.output_mode == "sigmoid" and not self.regions:
            raise ValueError("output_mode 'sigmoid' needs regions, e.g. {'WT': [1, 2, 4]}")
        if self.regions is not None:
            self.regions = {str(k): [int(v) for v in vs] for k, vs in self.regions.items()}
        if self.labels is not None:
            self.labels = sorted(int(v) for v in self.labels)

    @property
    def num_outputs(self) -> int | None:
        """Output channels: labels (softmax) or regions (sigmoid); ``None`` if labels unknown."""
        if self.output_mode == "sigmoid":
            return len(self.regions or {})
        return None if self.labels is None else len(self.labels)

    @classmethod
    def from_spec(cls, spec: DatasetSpec, **overrides: Any) -> "PreprocessConfig":
        """The dataset's conventions, with ``overrides`` on top.

        ``target_spacing`` is accepted as another name for ``spacing``. Overriding
        ``ct_window`` on a CT dataset keeps the CT normalisation.

        Raises:
            ValueError: an unknown override key (the message lists the known ones).
        """
        if "target_spacing" in overrides:
            if "spacing" in overrides:
                raise ValueError("give 'spacing' or 'target_spacing', not both")
            overrides["spacing"] = overrides.pop("target_spacing")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing settings {unknown}; known: {sorted(known)} (or target_spacing)")
        normalization = spec.normalization or ("ct" if spec.modality == "CT" else "zscore")
        values: dict[str, Any] = {
            "orientation": "RAS",
            "spacing": spec.target_spacing,
            "normalization": normalization,
            "ct_window": spec.ct_window if normalization == "ct" else None,
            "crop_foreground": spec.crop_foreground,
            "output_mode": spec.output_mode,
            "regions": spec.regions,
            "labels": sorted(spec.labels),
            "lateral": any(word in name.lower() for name in spec.labels.values() for word in ("left", "right")),
        }
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "orientation": self.orientation,
            "spacing": None if self.spacing is None else list(self.spacing),
            "normalization": self.normalization,
            "ct_window": None if self.ct_window is None else list(self.ct_window),
            "crop_foreground": self.crop_foreground,
            "output_mode": self.output_mode,
            "regions": None if self.regions is None else {k: list(v) for k, v in self.regions.items()},
            "labels": None if self.labels is None else list(self.labels),
            "lateral": self.lateral,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreprocessConfig":
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing settings {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def fingerprint(self) -> str:
        """Short hash of the settings (names persistent caches)."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
