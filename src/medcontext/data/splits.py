"""Train / validation / test splits of case ids, seeded and saved with a run.

One permutation of the sorted case ids, drawn from ``seed``, decides everything: test cases
are taken first, validation cases next, training cases after that. So the test set does not
depend on how many validation or training cases are asked for, the validation set does not
depend on the number of training cases, and the k-shot training set of a seed contains the
(k-1)-shot set of the same seed.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medcontext.data.atomic import write_text_atomic
from medcontext.data.datasets import DatasetSpec

__all__ = ["Split", "make_split", "split_for_spec"]


@dataclass
class Split:
    """Disjoint lists of case ids.

    Raises:
        ValueError: a case id appears twice (within or across lists).
    """

    train: list[str]
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.train, self.val, self.test = list(self.train), list(self.val), list(self.test)
        seen: dict[str, str] = {}
        for part in ("train", "val", "test"):
            for cid in getattr(self, part):
                if cid in seen:
                    raise ValueError(f"case {cid!r} is in both {seen[cid]} and {part}; a split must not overlap")
                seen[cid] = part

    def to_dict(self) -> dict[str, list[str]]:
        """``{"train": [...], "val": [...], "test": [...]}``."""
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Split":
        """Inverse of :meth:`to_dict`."""
        unknown = sorted(set(data) - {"train", "val", "test"})
        if unknown or "train" not in data:
            raise ValueError(f"a split needs keys train (and val, test); got {sorted(data)}")
        return cls(train=[str(c) for c in data["train"]], val=[str(c) for c in data.get("val", [])],
                   test=[str(c) for c in data.get("test", [])])

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        """Read a split written by :meth:`save`.

        Raises:
            ValueError: the file is not a valid split (names the file).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_dict(data)
        except (json.JSONDecodeError, ValueError, AttributeError, TypeError) as err:
            raise ValueError(f"{path} is not a valid split file: {err}") from err


def _count(value: int | float | None, total: int, what: str) -> int:
    """An int count, or a fraction in (0, 1) of ``total`` (at least 1)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of cases, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        if not 0.0 < value < 1.0:
            raise ValueError(f"{what} as a fraction must be in (0, 1), got {value}")
        return max(1, int(round(value * total)))
    n = int(value)
    if n < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return n


def _check_known(ids: Sequence[str], known: Sequence[str], what: str) -> list[str]:
    known_set = set(known)
    unknown = [c for c in ids if c not in known_set]
    if unknown:
        hints = []
        for c in unknown[:5]:
            close = difflib.get_close_matches(c, list(known), n=1)
            hints.append(f"{c!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{what} lists case ids not in the dataset: {', '.join(hints)}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    dupes = sorted(c for c, n in Counter(ids).items() if n > 1)
    if dupes:
        raise ValueError(f"{what} lists case ids twice: {dupes}")
    return list(ids)


def make_split(
    case_ids: Sequence[str],
    *,
    train_cases: int | None = None,
    val_cases: int | float = 0,
    test_cases: int | float | Sequence[str] | None = None,
    seed: int = 0,
    explicit_train: Sequence[str] | None = None,
) -> Split:
    """Split ``case_ids`` into disjoint train / val / test lists, deterministically by ``seed``.

    Args:
        case_ids: all usable case ids (order does not matter).
        train_cases: number of training cases k (few-shot); ``None`` = every remaining case.
        val_cases: validation cases drawn from the non-test cases (a count, or a fraction).
        test_cases: ``None`` (no test set), a count, a fraction in (0, 1), or the test ids.
        seed: seed of the permutation.
        explicit_train: exactly these training cases (overrides ``train_cases``); validation
            cases are then drawn from the other non-test cases.

    Returns:
        The split; each list sorted.

    Raises:
        ValueError: duplicate or unknown ids, overlapping explicit lists, or more cases asked
            for than are available (the message says how many there are).
    """
    ids = [str(c) for c in case_ids]
    dupes = sorted(c for c, n in Counter(ids).items() if n > 1)
    if dupes:
        raise ValueError(f"case_ids has duplicates: {dupes}")
    order = sorted(ids)
    perm = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]

    if test_cases is not None and not isinstance(test_cases, (int, float)):
        test = _check_known([str(c) for c in test_cases], order, "test_cases")
    else:
        n_test = _count(test_cases, len(order), "test_cases")
        if n_test >= len(order):
            raise ValueError(f"test_cases={test_cases} leaves no case for training out of {len(order)}")
        test = perm[:n_test]
    test_set = set(test)
    pool = [c for c in perm if c not in test_set]

    if explicit_train is not None:
        train = _check_known([str(c) for c in explicit_train], order, "explicit_train")
        clash = sorted(set(train) & test_set)
        if clash:
            raise ValueError(f"explicit_train cases {clash} are also test cases")
        if not train:
            raise ValueError("explicit_train is empty")
        rest = [c for c in pool if c not in set(train)]
        n_val = _count(val_cases, len(pool), "val_cases")
        if n_val > len(rest):
            raise ValueError(f"val_cases={val_cases} but only {len(rest)} non-test cases are not in explicit_train")
        val = rest[:n_val]
    else:
        n_val = _count(val_cases, len(pool), "val_cases")
        if n_val >= len(pool):
            raise ValueError(
                f"val_cases={val_cases} leaves no training case: {len(pool)} cases remain after {len(test)} test cases"
            )
        val = pool[:n_val]
        rest = pool[n_val:]
        if train_cases is None:
            train = rest
        else:
            k = int(train_cases)
            if k < 1:
                raise ValueError(f"train_cases must be >= 1, got {train_cases}")
            if k > len(rest):
                raise ValueError(
                    f"train_cases={k} but only {len(rest)} cases are available "
                    f"({len(order)} in total, {len(test)} test, {len(val)} validation)"
                )
            train = rest[:k]
    return Split(train=sorted(train), val=sorted(val), test=sorted(test))


def split_for_spec(
    spec: DatasetSpec,
    *,
    train_cases: int | None = None,
    train_case_ids: Sequence[str] | None = None,
    val_cases: int | float = 0,
    test_cases: int | float | Sequence[str] | None = None,
    use_official_test: bool = True,
    seed: int = 0,
) -> Split:
    """The split of a dataset, honouring its published split when asked.

    With ``use_official_test`` and a preset that has an official test list (Synapse), the
    test set is that list and training / validation cases come from the official training
    list (or, without one, from every other case); ``test_cases`` is then ignored.
    Otherwise this is :func:`make_split` over all labelled cases.

    Args:
        spec: the dataset.
        train_cases: k training cases drawn by ``seed`` (few-shot); ``None`` = all remaining.
        train_case_ids: exactly these training cases, e.g. ``spec.few_shot``.
        val_cases: validation cases drawn from the training pool.
        test_cases: held-out test cases when no official list is used (count, fraction, ids).
        use_official_test: use ``spec.official_test`` when the dataset has one.
        seed: split seed.
    """
    ids = spec.case_ids
    if use_official_test and spec.official_test:
        test = _check_known(list(spec.official_test), ids, f"the official test list of {spec.name!r}")
        pool = list(spec.official_train) if spec.official_train else [c for c in ids if c not in set(test)]
        pool = _check_known(pool, ids, f"the official training list of {spec.name!r}")
        return make_split(pool + test, train_cases=train_cases, val_cases=val_cases, test_cases=test, seed=seed,
                          explicit_train=train_case_ids)
    return make_split(ids, train_cases=train_cases, val_cases=val_cases, test_cases=test_cases, seed=seed,
                      explicit_train=train_case_ids)
