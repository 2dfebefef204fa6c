"""The unlabelled volumes of a run: chosen with its split, recorded in the run folder, drawn every step.

A run with ``data.unlabeled`` (CLI ``--unlabeled``):

1. draws its split as any run does, then checks only the labelled cases it trains, validates
   and tests on (``pool``'s label files are never opened, they may be absent), then chooses the
   unlabelled volumes (:func:`medcontext.data.unlabeled.select_unlabeled`: no validation or test
   patient, no labelled patient) and checks their images (:func:`prepare_split`);
2. writes them into the run folder: ``split.json`` lists their ids, ``unlabeled.json`` their
   files, sources and what was left out why (:func:`save_unlabeled`, :func:`read_unlabeled`);
3. draws ``data.unlabeled_batch_size`` random crops of them per step (default: as many as
   labelled crops) from a second seeded stream, so a resumed run gets the same unlabelled crops
   as an uninterrupted one (:func:`make_unlabeled_loader`); :class:`WithUnlabeled` hands each
   step's crops to the trainer as ``batch["unlabeled"]`` ``(U, C, *roi)``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
from torch.utils.data import DataLoader

from medcontext.engine.config import ConfigError, TrainConfig
from medcontext.engine.sampling import make_step_loader
from medcontext.io.atomic import write_text_atomic

__all__ = [
    "UNLABELED_FILE",
    "variant_trains_on_unlabeled",
    "semi_supervised_variants",
    "check_unlabeled_settings",
    "unlabeled_sources",
    "unlabeled_batch_size",
    "prepare_split",
    "save_unlabeled",
    "read_unlabeled",
    "unlabeled_line",
    "make_unlabeled_loader",
    "WithUnlabeled",
]

#: the run folder's record of its unlabelled volumes (only in runs that have some)
UNLABELED_FILE = "unlabeled.json"
#: mixed into the run seed for the unlabelled draws (a stream apart from the labelled one)
_STREAM = 0x756E6C62


def unlabeled_sources(cfg: TrainConfig) -> list[str]:
    """``data.unlabeled`` as a list of sources (empty: a labelled-only run)."""
    from medcontext.data.unlabeled import parse_unlabeled_sources

    return parse_unlabeled_sources(cfg.data.unlabeled)


def variant_trains_on_unlabeled(variant: str) -> bool:
    """Whether ``method.variant`` draws unlabelled crops every step (its ``Variant.unlabeled`` step)."""
    from medcontext.method.settings import VARIANTS

    return variant in VARIANTS and VARIANTS[variant].unlabeled is not None


def semi_supervised_variants() -> list[str]:
    """The variants that train on unlabelled volumes too."""
    from medcontext.method.settings import semi_supervised_variants as names

    return names()


def check_unlabeled_settings(cfg: TrainConfig) -> None:
    """At the door: a semi-supervised variant needs unlabelled volumes, a labelled-only one takes none.

    Raises:
        ConfigError: naming the variant and the fix (``--unlabeled``, or another variant).
    """
    sources, variant = unlabeled_sources(cfg), cfg.method.variant
    needs = variant_trains_on_unlabeled(variant)
    if needs and not sources:
        raise ConfigError(
            f"method.variant={variant!r} trains on unlabelled volumes too, but none are given: pass --unlabeled DIR "
            "(a folder of images), --unlabeled pool (the training cases the split leaves over, used without their "
            "labels) or --unlabeled imagesTs (the dataset's images without labels), or set data.unlabeled"
        )
    if sources and not needs:
        semi = semi_supervised_variants()
        choice = f"choose a semi-supervised variant ({', '.join(semi)})" if semi else "no variant uses them yet"
        raise ConfigError(
            f"data.unlabeled={cfg.data.unlabeled!r} (--unlabeled) is given but method.variant={variant!r} trains on "
            f"labelled crops only: {choice}, or drop --unlabeled"
        )


def unlabeled_batch_size(cfg: TrainConfig) -> int:
    """Unlabelled crops per step per process: ``data.unlabeled_batch_size``, else as many as labelled crops."""
    if cfg.data.unlabeled_batch_size is not None:
        return int(cfg.data.unlabeled_batch_size)
    return cfg.train.batch_size * cfg.data.num_samples


def prepare_split(cfg: TrainConfig, spec, draw_split: Callable[[], Any], *, progress: bool,
                  echo: Callable[[str], None]):
    """A new semi-supervised run's split: drawn, its labelled cases checked, its unlabelled volumes
    chosen and checked.

    Args:
        cfg: the run's settings (``data.unlabeled`` set).
        spec: the labelled dataset (read with ``missing_labels_ok`` when ``pool`` is a source).
        draw_split: draws the labelled split (as a labelled-only run does).
        progress: show bars while checking.
        echo: status lines.

    Returns:
        ``(split with its unlabeled list, UnlabeledSet)``.

    Raises:
        DatasetError: a labelled case of the split or an unlabelled image fails its check, a
            source is unknown or holds no images, or no unlabelled volume is left.
    """
    from medcontext.data import validate_dataset
    from medcontext.data.unlabeled import check_unlabeled_images, select_unlabeled

    split = draw_split()
    used = [*split.train, *split.val, *split.test]
    echo(f"checking the {len(used)} labelled cases of the split of {spec.name!r} in {spec.root} ...")
    # only the cases whose labels the run reads: the pool's label files are never opened
    labelled = dataclasses.replace(spec, cases=spec.select(used), unlabeled=[])
    validate_dataset(labelled, progress=progress)
    split, chosen = select_unlabeled(spec, split, unlabeled_sources(cfg))
    echo(f"checking {len(chosen.cases)} unlabelled volume(s) ...")
    check_unlabeled_images(chosen.cases, spec.channel_names, progress=progress)
    echo(unlabeled_line(chosen))
    return split, chosen


def unlabeled_line(chosen) -> str:
    """The status line of a run's unlabelled volumes (what ``unlabeled.json`` says)."""
    return f"unlabelled: {chosen.describe()}"


def save_unlabeled(run_dir: str | Path, chosen) -> Path:
    """Write ``RUN_DIR/unlabeled.json`` (atomically)."""
    return write_text_atomic(Path(run_dir) / UNLABELED_FILE, json.dumps(chosen.to_dict(), indent=2) + "\n")


def read_unlabeled(run_dir: str | Path):
    """The run's :class:`~medcontext.data.unlabeled.UnlabeledSet`, or ``None`` for a labelled-only run.

    Raises:
        ValueError: ``unlabeled.json`` is not valid (names the file).
    """
    from medcontext.data.unlabeled import UnlabeledSet

    path = Path(run_dir) / UNLABELED_FILE
    if not path.is_file():
        return None
    try:
        return UnlabeledSet.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a valid record of unlabelled volumes: {err}") from err


def _stream_seed(seed: int) -> int:
    return int(np.random.SeedSequence([int(seed), _STREAM]).generate_state(1)[0])


def make_unlabeled_loader(dataset, cfg: TrainConfig, *, start_step: int, world_size: int = 1, rank: int = 0,
                          pin_memory: bool = False) -> DataLoader:
    """One batch of :func:`unlabeled_batch_size` unlabelled crops per step, a pure function of
    ``(seed, step, rank)`` on a stream apart from the labelled crops' (see
    :mod:`medcontext.engine.sampling`)."""
    return make_step_loader(
        dataset,
        seed=_stream_seed(cfg.train.seed),
        start_step=start_step,
        total_steps=cfg.train.steps,
        batch_size=unlabeled_batch_size(cfg),
        num_workers=cfg.data.num_workers,
        world_size=world_size,
        rank=rank,
        pin_memory=pin_memory,
    )


class WithUnlabeled:
    """Each labelled batch with the same step's unlabelled crops as ``batch["unlabeled"]`` ``(U, C, *roi)``.

    Args:
        labelled: the labelled step loader (one batch per step).
        unlabeled: the unlabelled step loader (:func:`make_unlabeled_loader`, same steps).
    """

    def __init__(self, labelled: Iterable[Mapping[str, Any]], unlabeled: Iterable[Mapping[str, Any]]):
        self.labelled, self.unlabeled = labelled, unlabeled

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch, extra in zip(self.labelled, self.unlabeled):
            yield {**batch, "unlabeled": extra["image"], "unlabeled_case_id": extra["case_id"]}

    def __len__(self) -> int:
        return len(self.labelled)  # type: ignore[arg-type]
