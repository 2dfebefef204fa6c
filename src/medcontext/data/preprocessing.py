"""Transforms from files to network inputs, the datasets built on them, and the way back.

Data enters as NIfTI files named by a :class:`~medcontext.data.datasets.CaseRecord` and
leaves as dictionaries with keys ``"image"`` (``(C, H, W, D)`` float32) and ``"label"``
(softmax: ``(1, H, W, D)`` int64 label values; sigmoid: ``(R, H, W, D)`` float32 region
masks). Three pieces:

* :func:`preprocess_transforms`: the deterministic part (load, channel first, reorient,
  resample, normalise, optional foreground crop, label encoding). It is cached: in memory
  (MONAI ``CacheDataset``) or on disk (``PersistentDataset``, keyed by the configuration).
* :func:`train_transforms`: the random part applied to every cached volume at every draw
  (pad to the crop, foreground/background-balanced crops, flips, 90-degree rotations,
  intensity scale and shift), as in the UNETR / Swin UNETR training scripts.
* :class:`Restorer` (from :func:`load_for_inference` or :meth:`Restorer.from_image`): maps a
  prediction in preprocessed space back onto the original file's voxel grid. It does so by
  resampling through the two affines (preprocessed voxel -> world mm -> original voxel),
  which undoes reorientation, resampling and cropping in one step; labels use nearest
  neighbour, probabilities linear interpolation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
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
from scipy import ndimage

from medcontext.io.atomic import atomic_path
from medcontext.data.datasets import CaseRecord, DatasetSpec

__all__ = [
    "PreprocessConfig",
    "NORMALIZATIONS",
    "EncodeLabeld",
    "preprocess_transforms",
    "train_transforms",
    "CaseDataset",
    "make_train_dataset",
    "make_eval_dataset",
    "Restorer",
    "load_for_inference",
    "save_nifti",
]

NORMALIZATIONS = ("ct", "zscore", "zscore_nonzero", "none")
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


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
    roi = _roi(roi_size)
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
        _Cloned(keys),
    ]
    left_right = cfg.orientation.find("L") if "L" in cfg.orientation else cfg.orientation.find("R")
    mirror_free = [axis for axis in range(3) if not (cfg.lateral and axis == left_right)]
    ts += [RandFlipd(keys, prob=0.1, spatial_axis=axis) for axis in mirror_free]
    if roi[0] == roi[1] and not (cfg.lateral and left_right in (0, 1)):
        ts.append(RandRotate90d(keys, prob=0.1, max_k=3, spatial_axes=(0, 1)))
    ts += [
        RandScaleIntensityd("image", factors=0.1, prob=0.1),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        EnsureTyped("image", dtype=torch.float32, track_meta=False),
        EnsureTyped("label", dtype=label_dtype, track_meta=False),
    ]
    return Compose(ts)


class _Cloned(MapTransform):
    """Copy crops so that nothing downstream can write into a cached volume."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key].clone().contiguous()
        return d


def _roi(roi_size: Sequence[int]) -> tuple[int, int, int]:
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or not all(r > 0 for r in roi):
        raise ValueError(f"roi_size must be three positive voxel counts, got {roi_size!r}")
    return roi  # type: ignore[return-value]


def _data_dicts(spec: DatasetSpec, cases: Sequence[CaseRecord | str], with_label: bool) -> list[dict[str, Any]]:
    records = spec.select(cases)
    out = []
    for c in records:
        if with_label and c.label is None:
            raise ValueError(f"case {c.case_id} has no label; it cannot be used for training or evaluation")
        images = [str(p) for p in c.images]
        d: dict[str, Any] = {
            "case_id": c.case_id,
            "image": images[0] if len(images) == 1 else images,
            # not "image_*"/"label_*": MONAI treats such keys as metadata dicts of "image"/"label"
            "source_images": images,
            # changes when a file changes, so persistent caches are rebuilt
            "stamp": [(p.stat().st_size, p.stat().st_mtime_ns) for p in [*c.images, *([c.label] if c.label else [])]],
        }
        if with_label:
            d["label"] = str(c.label)
            d["source_label"] = str(c.label)
        out.append(d)
    return out


class CaseDataset(torch.utils.data.Dataset):
    """Training crops: ``len(cases) * num_samples`` items, each ONE crop dict.

    Item ``i`` draws a fresh random crop from volume ``i // num_samples`` (preprocessed once
    and cached). Items: ``{"image": (C, *roi) float32, "label": (1, *roi) int64 or
    (R, *roi) float32, "case_id": str}``. Randomness comes from the transforms' own
    generators, seeded by ``seed``; with worker processes use ``monai.data.DataLoader``,
    which reseeds them per worker (a plain torch DataLoader would repeat crops across
    workers), or reseed :attr:`transform` yourself before each draw.

    Attributes:
        volumes: the MONAI dataset of preprocessed volumes (``CacheDataset`` or
            ``PersistentDataset``) whose transform ends in the random crop + augmentation.
        num_samples: items (crops) per volume.
    """

    def __init__(self, volumes: Dataset, num_samples: int) -> None:
        self.volumes = volumes
        self.num_samples = int(num_samples)

    @property
    def transform(self) -> Compose:
        """The full transform; ``transform.set_random_state(seed)`` reseeds the augmentation."""
        return self.volumes.transform  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.volumes) * self.num_samples  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crops")
        crops = self.volumes[index // self.num_samples]
        crop = crops[0] if isinstance(crops, list) else crops
        return {"image": crop["image"], "label": crop["label"], "case_id": crop["case_id"]}


def make_train_dataset(
    spec: DatasetSpec,
    cases: Sequence[CaseRecord | str],
    cfg: PreprocessConfig,
    roi_size: Sequence[int],
    *,
    num_samples: int = 2,
    pos: float = 1.0,
    neg: float = 1.0,
    cache_dir: str | Path | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> CaseDataset:
    """A dataset of random training crops over ``cases``.

    Args:
        spec: the dataset.
        cases: case ids or records (labelled).
        cfg: preprocessing settings (:meth:`PreprocessConfig.from_spec`).
        roi_size: crop size in voxels.
        num_samples: crops drawn per volume per pass (items per case).
        pos, neg: foreground/background centre odds of the crops.
        cache_dir: keep preprocessed volumes on disk here (a subfolder named by the
            settings' fingerprint) instead of in memory.
        cache_rate: fraction of volumes kept in memory (in-memory cache only).
        num_workers: threads that fill the in-memory cache (``None``: up to 4).
        seed: seeds the random transforms.
        progress: show a bar while caching.
    """
    if not cases:
        raise ValueError("make_train_dataset needs at least one case")
    data = _data_dicts(spec, cases, with_label=True)
    transform = Compose(
        list(preprocess_transforms(cfg, with_label=True).transforms)
        + list(train_transforms(cfg, roi_size, num_samples=1, pos=pos, neg=neg).transforms)
    )
    transform.set_random_state(seed=seed)
    volumes: Dataset
    if cache_dir is not None:
        key = hashlib.sha1(f"{cfg.fingerprint()}-{_roi(roi_size)}".encode()).hexdigest()[:16]
        folder = Path(cache_dir) / f"train-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        volumes = PersistentDataset(data, transform=transform, cache_dir=folder)
    else:
        workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
        volumes = CacheDataset(data, transform=transform, cache_rate=cache_rate, num_workers=workers,
                               progress=progress, copy_cache=False)
    return CaseDataset(volumes, num_samples)


def make_eval_dataset(
    spec: DatasetSpec,
    cases: Sequence[CaseRecord | str],
    cfg: PreprocessConfig,
    cache: bool = True,
    *,
    with_label: bool = True,
    num_workers: int | None = None,
    progress: bool = False,
) -> Dataset:
    """Whole preprocessed volumes for validation / testing.

    Items: ``{"image": MetaTensor (C, H, W, D), "label": MetaTensor, "case_id": str,
    "source_images": [str], "source_label": str}``. The image's ``affine`` and
    ``meta["original_affine"]`` / ``meta["spatial_shape"]`` are what
    :meth:`Restorer.from_image` needs to map a prediction back to the original file grid.
    Read items directly (or with ``batch_size=1`` and ``monai.data.decollate_batch``).

    Args:
        cache: keep preprocessed volumes in memory (copied on every access).
        with_label: load labels (``False`` for unlabelled cases).
    """
    data = _data_dicts(spec, cases, with_label=with_label)
    transform = preprocess_transforms(cfg, with_label=with_label)
    if cache:
        workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
        return CacheDataset(data, transform=transform, num_workers=workers, progress=progress, copy_cache=True)
    return Dataset(data, transform=transform)


# ----------------------------------------------------------------------------------------
# Back to the original grid
# ----------------------------------------------------------------------------------------


@dataclass
class Restorer:
    """Maps arrays in preprocessed space back onto the original file's voxel grid.

    Attributes:
        preprocessed_affine: ``(4, 4)`` preprocessed voxel -> world mm.
        preprocessed_shape: preprocessed spatial shape ``(H, W, D)``.
        original_affine: ``(4, 4)`` affine of the original file.
        original_shape: spatial shape of the original file.
        output_mode: ``"softmax"`` or ``"sigmoid"`` (sets the fill of probability channels
            outside the preprocessed field of view: background 1 for softmax, else 0).
        header: the original NIfTI header, reused by :meth:`save`.
    """

    preprocessed_affine: np.ndarray
    preprocessed_shape: tuple[int, int, int]
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    output_mode: str = "softmax"
    header: Any = None

    @property
    def affine(self) -> np.ndarray:
        """The original file's affine (what restored arrays are saved with)."""
        return self.original_affine

    @property
    def shape(self) -> tuple[int, int, int]:
        """The original file's spatial shape."""
        return self.original_shape

    @classmethod
    def from_image(cls, image: MetaTensor, output_mode: str = "softmax", header: Any = None) -> "Restorer":
        """From a preprocessed ``MetaTensor`` ``(C, H, W, D)`` (e.g. an eval dataset item)."""
        if not isinstance(image, MetaTensor):
            raise TypeError("Restorer.from_image needs the preprocessed MetaTensor (it carries the affines)")
        meta = image.meta
        if "original_affine" not in meta or "spatial_shape" not in meta:
            raise ValueError("the image's metadata lacks 'original_affine'/'spatial_shape'; was it loaded by LoadImaged?")
        shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).reshape(-1)[:3])
        return cls(
            preprocessed_affine=_np(image.affine).astype(np.float64),
            preprocessed_shape=tuple(int(s) for s in image.shape[1:4]),  # type: ignore[arg-type]
            original_affine=_np(meta["original_affine"]).astype(np.float64),
            original_shape=shape,  # type: ignore[arg-type]
            output_mode=output_mode,
            header=header,
        )

    def __call__(self, volume: np.ndarray | torch.Tensor, *, is_label: bool | None = None) -> np.ndarray:
        """Resample ``volume`` onto the original grid.

        Args:
            volume: labels ``(H, W, D)`` (integer or bool; ``(1, H, W, D)`` is squeezed) or
                probabilities/masks ``(K, H, W, D)`` in preprocessed space.
            is_label: nearest-neighbour (True) or linear (False) sampling; default: nearest
                for integer/bool arrays, linear for floats.

        Returns:
            ``(*original_shape)`` or ``(K, *original_shape)``, the input's dtype (labels) or
            float32 (probabilities).
        """
        arr = _np(volume)
        if is_label is None:
            is_label = arr.dtype.kind in "biu"
        if arr.ndim == 4 and arr.shape[0] == 1 and is_label:
            arr = arr[0]
        if arr.ndim == 3:
            channels, squeeze = arr[None], True
        elif arr.ndim == 4:
            channels, squeeze = arr, False
        else:
            raise ValueError(f"expected (H, W, D) or (K, H, W, D), got shape {arr.shape}")
        if tuple(channels.shape[1:]) != tuple(self.preprocessed_shape):
            raise ValueError(
                f"volume has spatial shape {tuple(channels.shape[1:])} but the preprocessed image was "
                f"{tuple(self.preprocessed_shape)}"
            )
        out_dtype = arr.dtype if is_label else np.float32
        matrix = np.linalg.inv(self.preprocessed_affine) @ self.original_affine  # original voxel -> preprocessed voxel
        fills = [0.0] * channels.shape[0]
        if not is_label and self.output_mode == "softmax" and channels.shape[0] > 1:
            fills[0] = 1.0  # outside the preprocessed field of view is background
        exact = _index_map(matrix)
        outs = []
        for c in range(channels.shape[0]):
            if exact is not None:
                outs.append(_gather(channels[c], exact, self.original_shape, fills[c]))
            else:
                outs.append(_resample(channels[c], matrix, self.original_shape, order=0 if is_label else 1, fill=fills[c]))
        out = np.stack(outs).astype(out_dtype, copy=False)
        return out[0] if squeeze else out

    def save(self, volume: np.ndarray | torch.Tensor, path: str | Path, dtype: Any = None, *,
             is_label: bool | None = None) -> Path:
        """Restore ``volume`` and write it as NIfTI with the original affine (atomically).

        Channel-first ``(K, ...)`` results are written as ``(H, W, D, K)``.
        """
        restored = self(volume, is_label=is_label)
        if restored.ndim == 4:
            restored = np.moveaxis(restored, 0, -1)
        return save_nifti(restored, self.original_affine, path, dtype=dtype, header=self.header)


def _np(x: Any) -> np.ndarray:
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _index_map(matrix: np.ndarray, tol: float = 1e-4) -> list[tuple[int, int, int]] | None:
    """(source axis, sign, offset) per original axis when ``matrix`` only permutes/flips/shifts."""
    lin, off = matrix[:3, :3], matrix[:3, 3]
    if not np.allclose(np.abs(lin), np.round(np.abs(lin)), atol=tol) or not np.allclose(off, np.round(off), atol=tol):
        return None
    rounded = np.round(lin).astype(int)
    if not (np.abs(rounded).sum(axis=0) == 1).all() or not (np.abs(rounded).sum(axis=1) == 1).all():
        return None
    out = []
    for a in range(3):
        b = int(np.flatnonzero(rounded[:, a])[0])
        out.append((b, int(rounded[b, a]), int(round(off[b]))))
    return out


def _gather(src: np.ndarray, index_map: list[tuple[int, int, int]], shape: Sequence[int], fill: float) -> np.ndarray:
    perm = [b for b, _, _ in index_map]
    moved = np.transpose(src, perm)
    idx, valid = [], []
    for a, (b, sign, offset) in enumerate(index_map):
        i = sign * np.arange(shape[a]) + offset
        ok = (i >= 0) & (i < src.shape[b])
        idx.append(i[ok])
        valid.append(ok)
    out = np.full(tuple(shape), fill, dtype=src.dtype)
    out[np.ix_(*valid)] = moved[np.ix_(*idx)]
    return out


def _resample(src: np.ndarray, matrix: np.ndarray, shape: Sequence[int], order: int, fill: float) -> np.ndarray:
    # Pad one edge voxel on every side: original voxels up to one preprocessed voxel beyond the
    # preprocessed grid (the last partial voxel after resampling) take the edge value, farther
    # ones the fill value.
    padded = np.pad(src.astype(np.float32 if order else src.dtype, copy=False), 1, mode="edge")
    return ndimage.affine_transform(
        padded, matrix[:3, :3], offset=matrix[:3, 3] + 1.0, output_shape=tuple(shape),
        order=order, mode="constant", cval=fill, prefilter=False,
    )


def load_for_inference(cfg: PreprocessConfig, image_paths: str | Path | Sequence[str | Path] | CaseRecord
                       ) -> tuple[torch.Tensor, Restorer]:
    """Preprocess one case for prediction.

    Args:
        cfg: preprocessing settings (as saved with the run).
        image_paths: the case's image file(s) (one per channel, or one 3D/4D file), or a
            :class:`CaseRecord`.

    Returns:
        ``(image, restore)``: the network input ``(C, H, W, D)`` float32 and a
        :class:`Restorer` mapping predictions back to the original file's grid and affine.

    Raises:
        FileNotFoundError: an image file does not exist.
    """
    if isinstance(image_paths, CaseRecord):
        paths = list(image_paths.images)
    elif isinstance(image_paths, (str, Path)):
        paths = [Path(image_paths)]
    else:
        paths = [Path(p) for p in image_paths]
    if not paths:
        raise ValueError("load_for_inference needs at least one image file")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"image file {p} does not exist")
    header_img = nib.load(str(paths[0]))
    data = {"image": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]}
    image = preprocess_transforms(cfg, with_label=False)(data)["image"]
    restorer = Restorer(
        preprocessed_affine=_np(image.affine).astype(np.float64),
        preprocessed_shape=tuple(int(s) for s in image.shape[1:4]),  # type: ignore[arg-type]
        original_affine=np.asarray(header_img.affine, dtype=np.float64),
        original_shape=tuple(int(s) for s in header_img.shape[:3]),  # type: ignore[arg-type]
        output_mode=cfg.output_mode,
        header=header_img.header,
    )
    return image.as_tensor().to(torch.float32), restorer


def save_nifti(array: np.ndarray | torch.Tensor, affine: np.ndarray, path: str | Path, dtype: Any = None,
               header: Any = None) -> Path:
    """Write ``array`` as NIfTI (``.nii`` or ``.nii.gz``) atomically.

    The file appears complete or not at all: it is written to a temp file in the same folder
    and moved into place with ``os.replace``.

    Args:
        array: data in file axis order, ``(H, W, D)`` or ``(H, W, D, K)``.
        affine: ``(4, 4)`` voxel -> world mm (written to both qform and sform).
        path: destination.
        dtype: stored data type (default: the array's).
        header: a header to start from (e.g. the original image's); its scaling is reset.
    """
    path = Path(path)
    name = path.name
    if not name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: NIfTI file names end in .nii or .nii.gz")
    data = _np(array)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if dtype is None and data.dtype == np.int64:
        data = data.astype(np.int32) if np.abs(data).max(initial=0) > 32767 else data.astype(np.int16)
    affine = np.asarray(affine, dtype=np.float64)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(data, affine, header=hdr)
    img.header.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    img.set_sform(affine, code=1)
    try:
        img.set_qform(affine, code=1)
    except Exception:  # a sheared affine has no qform
        img.set_qform(None, code=0)
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return path
