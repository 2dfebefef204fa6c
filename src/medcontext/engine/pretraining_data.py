"""The volumes of ``medcontext pretrain``: sources, checks and seeded random crops.

The sources are those of ``train --unlabeled`` (:mod:`medcontext.data.unlabeled`): ``pool``
(the cases a split of ``--data`` with the run's split settings leaves over), ``imagesTs`` (the
dataset's unlabelled images) and folders of images. The split is the one ``train`` draws from
the same data section (:meth:`~medcontext.engine.config.DataConfig.split_settings`), and the
rules of that module hold for every source: a volume of a validation or test case or of one of
their groups (patients) is left out, with a printed line saying how many and why, as in
``train --unlabeled``. Give the fixed test split of the runs to come (``data.test_cases`` as a
list, CLI ``--test-split``): a test split drawn here is not theirs (a printed note says so). The
images pass the checks of ``medcontext data check``, and label files are never opened. Crops follow the labelled
dataset's preprocessing and augmentation. Each step's crops are a function of ``(seed, step)``,
so a resumed run draws what the uninterrupted one would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
        summary: one line saying how many volumes came from which source (and how many were left out why).
        seed: the run's seed.
        excluded: reason -> case ids a source held but the split's rules left out (validation or
            test cases and their groups, labelled cases, files listed twice).
    """

    cases: list
    channels: int
    roi: tuple[int, int, int]
    crops: Any
    summary: str
    seed: int = 0
    excluded: dict = field(default_factory=dict)

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
        """``volumes.json``: the summary, every case's image files and what was left out why."""
        return {"summary": self.summary, "count": len(self.cases), "roi": list(self.roi),
                "cases": [{"case_id": c.case_id, "images": [str(p) for p in c.images]} for c in self.cases],
                "excluded": {why: list(ids) for why, ids in self.excluded.items()}}


def _unlabeled_set(cfg: "PretrainConfig", spec, echo: Callable[[str], None]):
    """The volumes of ``cfg.data.unlabeled`` that the split of ``cfg.data`` allows (an
    :class:`~medcontext.data.unlabeled.UnlabeledSet`): the split ``train`` draws from the same
    settings; whatever any source holds of its validation and test cases or of their groups is
    left out and counted in the printed line, as in ``train --unlabeled``."""
    from medcontext.data import split_for_spec
    from medcontext.data.unlabeled import select_unlabeled
    from medcontext.engine.unlabeled_data import unlabeled_line

    settings = cfg.data.split_settings(cfg.seed)
    split = split_for_spec(spec, **settings)
    if not isinstance(cfg.data.test_cases, list) and not (cfg.data.use_official_test and spec.official_test):
        echo(f"note: the {len(split.test)} test case(s) are this run's own draw (data.test_cases="
             f"{cfg.data.test_cases!r}, split seed {settings['seed']}); give the fixed test split of the runs to "
             "come (--test-split JSON) so that no test image of theirs, in any source, is pretrained on")
    _, unlabeled = select_unlabeled(spec, split, cfg.sources)
    echo(unlabeled_line(unlabeled))
    return unlabeled


def pretraining_volumes(
    cfg: "PretrainConfig",
    *,
    check_network: Callable[[int, tuple[int, int, int]], None] | None = None,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> PretrainingVolumes:
    """Find, check and cache the volumes of a pretraining run.

    Args:
        cfg: the settings (``data``: dataset, sources, split, preprocessing, cache; ``roi``, ``seed``).
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
    spec = load_dataset(cfg.data.path, preset=cfg.data.preset, group_by=cfg.data.group_by, missing_labels_ok=True)
    roi = cfg.roi if cfg.roi is not None else spec.default_roi
    if roi is None:
        raise ConfigError(f"no crop for dataset {spec.name!r} (its preset {spec.preset!r} has none): pass --roi X Y Z")
    roi = tuple(int(r) for r in roi)
    if check_network is not None:
        check_network(spec.num_channels, roi)
    chosen = _unlabeled_set(cfg, spec, echo)
    cases = list(chosen.cases)
    if not cases:
        raise DatasetError(f"no unlabelled volumes to pretrain on from {', '.join(cfg.sources)} ({chosen.describe()}); "
                           "`pool` needs --train-cases K (the cases a k-shot split leaves over)")
    echo(f"checking {len(cases)} unlabelled volume(s) ...")
    check_unlabeled_images(cases, spec.channel_names, progress=progress)
    preprocess = PreprocessConfig.from_spec(spec, **cfg.data.preprocess)
    crops = make_unlabeled_dataset(cases, preprocess, roi, cache_dir=cfg.data.cache_dir, seed=cfg.seed,
                                   progress=progress)
    return PretrainingVolumes(cases, spec.num_channels, roi, crops, chosen.describe(), cfg.seed,
                              {why: list(ids) for why, ids in chosen.excluded.items() if ids})
