"""The datasets built on the transforms: random training crops and whole evaluation volumes.

:func:`make_train_dataset` caches every preprocessed volume (in memory with MONAI's
``CacheDataset`` or on disk with ``PersistentDataset``, keyed by the configuration) and draws
random crops from it (:class:`CaseDataset`); :func:`make_eval_dataset` yields whole
preprocessed volumes with the metadata a :class:`~medcontext.data.restorer.Restorer` needs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose

from medcontext.data.dataset_spec import CaseRecord, DatasetSpec
from medcontext.data.preprocess_config import PreprocessConfig
from medcontext.data.transforms import parse_roi, preprocess_transforms, train_transforms

__all__ = ["CaseDataset", "make_train_dataset", "make_eval_dataset"]


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



def cached_volumes(
    data: list[dict[str, Any]],
    transform: Compose,
    cfg: PreprocessConfig,
    roi_size: Sequence[int] | int,
    kind: str,
    *,
    cache_dir: str | Path | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = None,
    progress: bool = False,
) -> Dataset:
    """The volumes of ``data`` through ``transform``, cached on disk or in memory.

    Args:
        data: one dict per case (``image``, and ``label`` when labelled).
        transform: the preprocessing and random crop chain.
        cfg, roi_size: name the on-disk cache (a subfolder ``{kind}-{hash}`` of ``cache_dir``).
        kind: what the volumes are for (``"train"``, ``"unlabeled"``), so caches never mix.
        cache_dir: keep preprocessed volumes on disk here instead of in memory.
        cache_rate: fraction of volumes kept in memory (in-memory cache only).
        num_workers: threads that fill the in-memory cache (``None``: up to 4).
        progress: show a bar while caching.
    """
    if cache_dir is not None:
        key = hashlib.sha1(f"{cfg.fingerprint()}-{parse_roi(roi_size)}".encode()).hexdigest()[:16]
        folder = Path(cache_dir) / f"{kind}-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(data, transform=transform, cache_dir=folder)
    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    return CacheDataset(data, transform=transform, cache_rate=cache_rate, num_workers=workers,
                        progress=progress, copy_cache=False)

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
    volumes = cached_volumes(data, transform, cfg, roi_size, "train", cache_dir=cache_dir, cache_rate=cache_rate,
                             num_workers=num_workers, progress=progress)
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
