"""Transforms from files to network inputs: the deterministic part and the random training part.

Data enters as NIfTI file names and leaves as dictionaries with keys ``"image"``
(``(C, H, W, D)`` float32) and ``"label"`` (softmax: ``(1, H, W, D)`` int64 label values;
sigmoid: ``(R, H, W, D)`` float32 region masks).

* :func:`preprocess_transforms`: the deterministic part (load, channel first, reorient,
  resample, normalise, optional foreground crop, label encoding), as a
  :class:`~medcontext.data.preprocess_config.PreprocessConfig` says. It is cached by the
  datasets of :mod:`medcontext.data.case_datasets`.
* :func:`train_transforms`: the random part applied to every cached volume at every draw
  (pad to the crop, foreground/background-balanced crops, flips, 90-degree rotations,
  intensity scale and shift), as in the UNETR / Swin UNETR training scripts.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from medcontext.data.preprocess_config import PreprocessConfig

__all__ = ["EncodeLabeld", "preprocess_transforms", "train_transforms", "augmentation_transforms", "parse_roi", "Cloned"]

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class EncodeLabeld(MapTransform):
    """Label map (float after resampling) -> the training target.

    softmax: ``(1, H, W, D)`` int64 label values; sigmoid: ``(R, H, W, D)`` float32 masks,
    mask ``r`` = voxels whose label is one of ``regions[r]``.

    Raises:
        ValueError: the label holds a value above the largest known label (names the file).
    """

    def __init__(self, keys: KeysCollection, output_mode: str, regions: Mapping[str, Sequence[int]] | None,
                 labels: Sequence[int] | None) -> None:
        super().__init__(keys)
        self.output_mode = output_mode
        self.regions = [list(v) for v in (regions or {}).values()]
        self.max_label = None if labels is None else max(labels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            values = torch.round(torch.as_tensor(lab)).to(torch.int64)
            if self.max_label is not None and values.numel() and (int(values.max()) > self.max_label or int(values.min()) < 0):
                source = getattr(lab, "meta", {}).get("filename_or_obj", "<label>")
                found = sorted(int(v) for v in torch.unique(values))
                raise ValueError(f"label {source} holds values {found}; known labels are 0..{self.max_label}")
            if self.output_mode == "sigmoid":
                masks = [torch.isin(values[0], torch.tensor(r)) for r in self.regions]
                out = torch.stack(masks).to(torch.float32)
            else:
                out = values
            if isinstance(lab, MetaTensor):
                out = MetaTensor(out, meta=lab.meta, applied_operations=lab.applied_operations)
            d[key] = out
        return d


def preprocess_transforms(cfg: PreprocessConfig, with_label: bool = True) -> Compose:
    """The deterministic part: files -> ``image`` ``(C, H, W, D)`` float32 (+ encoded label).

    Steps: load (NIfTI, per-channel files stacked), channel first, reorient to
    ``cfg.orientation``, resample to ``cfg.spacing`` (bilinear image, nearest label),
    normalise, optionally crop to the foreground, encode the label. The outputs are MONAI
    ``MetaTensor`` objects whose ``affine`` maps preprocessed voxels to world mm.

    Args:
        cfg: the settings.
        with_label: also load and transform ``"label"``.
    """
    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    ts: list[Any] = [
        LoadImaged(keys, image_only=True, reader="NibabelReader"),
        EnsureChannelFirstd(keys),
        EnsureTyped(keys, dtype=torch.float32),
        Orientationd(keys, axcodes=cfg.orientation, labels=_RAS_LABELS),
    ]
    if cfg.spacing is not None:
        ts.append(Spacingd(keys, pixdim=cfg.spacing, mode=modes, padding_mode="border"))
    crop = CropForegroundd(keys, source_key="image", select_fn=_positive, allow_smaller=True)
    if cfg.normalization == "ct":
        assert cfg.ct_window is not None
        lo, hi = cfg.ct_window
        ts.append(ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
        if cfg.crop_foreground:
            ts.append(crop)
    else:
        if cfg.crop_foreground:
            ts.append(crop)
        if cfg.normalization in ("zscore", "zscore_nonzero"):
            ts.append(NormalizeIntensityd("image", nonzero=cfg.normalization == "zscore_nonzero", channel_wise=True))
    ts.append(EnsureTyped("image", dtype=torch.float32))
    if with_label:
        ts.append(EncodeLabeld("label", cfg.output_mode, cfg.regions, cfg.labels))
    return Compose(ts)


def _positive(x: torch.Tensor) -> torch.Tensor:
    return x > 0


def train_transforms(
    cfg: PreprocessConfig,
    roi_size: Sequence[int],
    num_samples: int = 2,
    pos: float = 1.0,
    neg: float = 1.0,
) -> Compose:
    """The random part, applied after the cached :func:`preprocess_transforms`.

    Pad to ``roi_size``, then ``num_samples`` crops centred on foreground with probability
    ``pos / (pos + neg)``, flips along each axis (p = 0.1), 90-degree rotations in the first
    two axes when they have equal crop size (p = 0.1) -- without mirroring the left-right axis
    when ``cfg.lateral`` --, intensity scale (+-10 %, p = 0.1)
    and shift (+-0.1, p = 0.5). Outputs are plain tensors (no metadata).

    Returns:
        A Compose mapping one volume dict to a list of ``num_samples`` crop dicts with
        ``image`` ``(C, *roi_size)`` float32 and ``label`` (int64 or float32 masks).
    """
    roi = parse_roi(roi_size)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if pos < 0 or neg < 0 or pos + neg == 0:
        raise ValueError(f"pos and neg must be >= 0 and not both 0, got pos={pos}, neg={neg}")
    keys = ["image", "label"]
    label_dtype = torch.float32 if cfg.output_mode == "sigmoid" else torch.int64
    ts: list[Any] = [
        SpatialPadd(keys, spatial_size=roi, mode="constant"),
        EnsureTyped(keys, track_meta=False),
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=roi, pos=pos, neg=neg, num_samples=num_samples),
        Cloned(keys),
    ]
    ts += augmentation_transforms(cfg, roi, keys)
    ts.append(EnsureTyped("label", dtype=label_dtype, track_meta=False))
    return Compose(ts)


def augmentation_transforms(cfg: PreprocessConfig, roi_size: Sequence[int], keys: Sequence[str]) -> list[Any]:
    """The augmentation of every training crop (labelled or not), after the crop is cut.

    Flips along each axis (p = 0.1), 90-degree rotations in the first two axes when they have
    equal crop size (p = 0.1) -- without mirroring the left-right axis when ``cfg.lateral`` --,
    intensity scale (+-10 %, p = 0.1) and shift (+-0.1, p = 0.5) of ``"image"``, which leaves
    as float32. ``keys`` are the spatial keys, ``"image"`` first (``["image", "label"]``, or
    ``["image"]`` for unlabelled crops).
    """
    roi = parse_roi(roi_size)
    keys = list(keys)
    left_right = cfg.orientation.find("L") if "L" in cfg.orientation else cfg.orientation.find("R")
    mirror_free = [axis for axis in range(3) if not (cfg.lateral and axis == left_right)]
    ts: list[Any] = [RandFlipd(keys, prob=0.1, spatial_axis=axis) for axis in mirror_free]
    if roi[0] == roi[1] and not (cfg.lateral and left_right in (0, 1)):
        ts.append(RandRotate90d(keys, prob=0.1, max_k=3, spatial_axes=(0, 1)))
    ts += [
        RandScaleIntensityd("image", factors=0.1, prob=0.1),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        EnsureTyped("image", dtype=torch.float32, track_meta=False),
    ]
    return ts


class Cloned(MapTransform):
    """Copy crops so that nothing downstream can write into a cached volume."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key].clone().contiguous()
        return d


def parse_roi(roi_size: Sequence[int]) -> tuple[int, int, int]:
    """``roi_size`` as three positive voxel counts (``ValueError`` otherwise)."""
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or not all(r > 0 for r in roi):
        raise ValueError(f"roi_size must be three positive voxel counts, got {roi_size!r}")
    return roi  # type: ignore[return-value]
