"""The volumes of ``medcontext pretrain``: sources, checks and seeded random crops.

The sources are those of ``train --unlabeled`` (:mod:`medcontext.data.unlabeled`): ``pool``
(the cases a split of ``--data`` with the run's split settings leaves over), ``imagesTs`` (the
dataset's unlabelled images) and folders of images. The rules of that module hold (never a
validation or test case or one of their patients), the images pass the checks of
``medcontext data check``, and label files are never opened. Crops follow the labelled
dataset's preprocessing and augmentation. Each step's crops are a function of ``(seed, step)``,
so a resumed run draws what the uninterrupted one would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from medcontext.engine.pretraining import PretrainConfig

__all__ = ["PretrainingVolumes", "pretraining_volumes"]


@dataclass
class PretrainingVolumes:
    """Random crops over the unlabelled volumes of a pretraining run.

    Attributes:
        cases: the volumes (``CaseRecord``, label ``None``).
        channels: image channels C.
        roi: crop size (H, W, D) in voxels.
        crops: item ``i`` is a fresh random crop ``{"image": (C, *roi)}`` of volume ``i``; its
            ``transform.set_random_state(seed)`` reseeds the crop and augmentation.
        summary: one line saying how many volumes came from which source.
        seed: the run's seed.
    """

    cases: list
    channels: int
    roi: tuple[int, int, int]
    crops: Any
    summary: str
    seed: int = 0

    def __len__(self) -> int:
        return len(self.cases)

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """The crops of optimizer step ``step``: ``(batch_size, C, *roi)`` float32, drawn from
        ``(seed, step)`` alone (volumes with replacement, then their random crops)."""
        rng = np.random.default_rng([self.seed, step])
        indices = rng.integers(0, len(self.cases), size=batch_size)
        self.crops.transform.set_random_state(seed=int(rng.integers(2**31)))
        images = []
        for index in indices:
            image = self.crops[int(index)]["image"]
            images.append((image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)).float())
        return torch.stack(images)

    def describe_dict(self) -> dict[str, Any]:
        """``volumes.json``: the summary and every case's image files."""
        return {"summary": self.summary, "count": len(self.cases), "roi": list(self.roi),
                "cases": [{"case_id": c.case_id, "images": [str(p) for p in c.images]} for c in self.cases]}


def _unlabeled_cases(cfg: "PretrainConfig", spec) -> tuple[list, str]:
    """The volumes of ``cfg.unlabeled`` that the split of ``cfg``'s settings allows, and a summary line."""
    from medcontext.data import split_for_spec
    from medcontext.data.unlabeled import select_unlabeled

    split = split_for_spec(
        spec, train_cases=cfg.train_cases, train_case_ids=cfg.train_case_ids, val_cases=cfg.val_cases,
        test_cases=cfg.test_cases, use_official_test=cfg.use_official_test,
        seed=cfg.split_seed if cfg.split_seed is not None else cfg.seed,
    )
    _, unlabeled = select_unlabeled(spec, split, cfg.unlabeled)
    return list(unlabeled.cases), unlabeled.describe()


def pretraining_volumes(
    cfg: "PretrainConfig",
    *,
    check_network: Callable[[int, tuple[int, int, int]], None] | None = None,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> PretrainingVolumes:
    """Find, check and cache the volumes of a pretraining run.

    Args:
        cfg: the settings (``data``, ``unlabeled``, split settings, ``roi``, ``cache_dir``, ``seed``).
        check_network: called with ``(channels, roi)`` once both are known and before any image
            is decoded (a bad crop for the model fails there, not after the caching).
        progress: show bars while checking and caching.
        echo: status lines.

    Raises:
        DatasetError: no usable volume, or images that fail the checks (each file named).
        ConfigError: no crop given and the dataset's preset has none.
    """
    from medcontext.data import DatasetError, PreprocessConfig, load_dataset
    from medcontext.data.unlabeled import check_unlabeled_images, make_unlabeled_dataset
    from medcontext.engine.config import ConfigError

    # label files are never opened: they may even be missing
    spec = load_dataset(cfg.data, preset=cfg.data_preset, group_by=cfg.group_by, missing_labels_ok=True)
    roi = cfg.roi if cfg.roi is not None else spec.default_roi
    if roi is None:
        raise ConfigError(f"no crop for dataset {spec.name!r} (its preset {spec.preset!r} has none): pass --roi X Y Z")
    roi = tuple(int(r) for r in roi)
    if check_network is not None:
        check_network(spec.num_channels, roi)
    cases, summary = _unlabeled_cases(cfg, spec)
    if not cases:
        raise DatasetError(f"no unlabelled volumes to pretrain on from {', '.join(cfg.unlabeled)} ({summary}); "
                           "`pool` needs --train-cases K (the cases a k-shot split leaves over)")
    echo(f"checking {len(cases)} unlabelled volume(s) ...")
    check_unlabeled_images(cases, spec.channel_names, progress=progress)
    preprocess = PreprocessConfig.from_spec(spec, **cfg.preprocess)
    crops = make_unlabeled_dataset(cases, preprocess, roi, cache_dir=cfg.cache_dir, seed=cfg.seed, progress=progress)
    return PretrainingVolumes(cases, spec.num_channels, roi, crops, summary, cfg.seed)
