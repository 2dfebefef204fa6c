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

from medcontext.data.dataset_spec import DatasetSpec
from medcontext.io.atomic import write_text_atomic

__all__ = ["Split", "make_split", "split_for_spec"]


@dataclass
class Split:
    """Disjoint lists of case ids, and the group of every case when the dataset groups them.

    ``unlabeled`` lists the volumes a semi-supervised run trains on without their labels
    (:mod:`medcontext.data.unlabeled`); like the other lists it shares no case and no group
    with them.

    Raises:
        ValueError: a case id appears twice (within or across lists), or one group (e.g. a
            patient) has cases on two sides.
    """

    train: list[str]
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    groups: dict[str, str] | None = None
    unlabeled: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.train, self.val, self.test = list(self.train), list(self.val), list(self.test)
        self.unlabeled = list(self.unlabeled)
        seen: dict[str, str] = {}
        for part in ("train", "val", "test", "unlabeled"):
            for cid in getattr(self, part):
                if cid in seen:
                    raise ValueError(f"case {cid!r} is in both {seen[cid]} and {part}; a split must not overlap")
                seen[cid] = part
        if self.groups is not None:
            self.groups = {str(c): str(g) for c, g in self.groups.items()}
            missing = [c for c in seen if c not in self.groups]
            if missing:
                raise ValueError(f"cases {missing[:5]} have no group key")
            side: dict[str, str] = {}
            for cid, part in seen.items():
                group = self.groups[cid]
                if side.setdefault(group, part) != part:
                    raise ValueError(f"group {group!r} is in both {side[group]} and {part}; a group must stay on one side")

    def to_dict(self) -> dict[str, Any]:
        """``{"train": [...], "val": [...], "test": [...]}`` (+ ``"unlabeled"`` when there are
        unlabelled cases, + ``"groups": {case: group}``)."""
        out: dict[str, Any] = {"train": list(self.train), "val": list(self.val), "test": list(self.test)}
        if self.unlabeled:
            out["unlabeled"] = list(self.unlabeled)
        if self.groups is not None:
            out["groups"] = {c: self.groups[c] for c in sorted(self.groups)}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Split":
        """Inverse of :meth:`to_dict`."""
        unknown = sorted(set(data) - {"train", "val", "test", "groups", "unlabeled"})
        if unknown or "train" not in data:
            raise ValueError(f"a split needs keys train (and val, test, unlabeled, groups); got {sorted(data)}")
        groups = data.get("groups")
        return cls(train=[str(c) for c in data["train"]], val=[str(c) for c in data.get("val", [])],
                   test=[str(c) for c in data.get("test", [])], groups=None if groups is None else dict(groups),
                   unlabeled=[str(c) for c in data.get("unlabeled", [])])

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
    groups: Mapping[str, str] | None = None,
) -> Split:
    """Split ``case_ids`` into disjoint train / val / test lists, deterministically by ``seed``.

    Without ``groups`` every case is drawn on its own. With ``groups`` (case id -> group key,
    e.g. the patient of each ACDC frame) the permutation is over groups: test and validation
    take whole groups until they hold at least the asked number of cases, and training cases
    are dealt round-robin over the remaining groups (one case of each group in permuted order,
    then a second case of each, ...), so k training cases come from k different groups
    whenever there are that many. A group never has cases on two sides.

    Args:
        case_ids: all usable case ids (order does not matter).
        train_cases: number of training cases k (few-shot); ``None`` = every remaining case.
        val_cases: validation cases drawn from the non-test cases (a count, or a fraction).
        test_cases: ``None`` (no test set), a count, a fraction in (0, 1), or the test ids.
        seed: seed of the permutation.
        explicit_train: exactly these training cases (overrides ``train_cases``); validation
            cases are then drawn from the other non-test cases.
        groups: group key of every case, or ``None``.

    Returns:
        The split; each list sorted (with the groups of its cases when grouped).

    Raises:
        ValueError: duplicate or unknown ids, overlapping explicit lists, explicit lists that
            cut a group, or more cases asked for than are available (the message says how
            many there are).
    """
    ids = [str(c) for c in case_ids]
    dupes = sorted(c for c, n in Counter(ids).items() if n > 1)
    if dupes:
        raise ValueError(f"case_ids has duplicates: {dupes}")
    order = sorted(ids)
    units = _permuted_units(order, groups, np.random.default_rng(seed))
    test, pool_units = _draw_test(test_cases, order, units, groups)
    if explicit_train is not None:
        train, val = _explicit_train_and_val(explicit_train, val_cases, order, test, pool_units, groups)
    else:
        train, val = _drawn_train_and_val(train_cases, val_cases, order, test, pool_units)
    used = set(train) | set(val) | set(test)
    split_groups = None if groups is None else {c: str(groups[c]) for c in sorted(used)}
    return Split(train=sorted(train), val=sorted(val), test=sorted(test), groups=split_groups)


def _group_of(cid: str, groups: Mapping[str, str] | None) -> str:
    return cid if groups is None else str(groups[cid])


def _permuted_units(order: list[str], groups: Mapping[str, str] | None, rng: np.random.Generator) -> list[list[str]]:
    """The units a split deals (every case alone, or the cases of each group) in ``rng``'s order;
    inside a group the cases are permuted too (the order of round-robin training draws)."""
    if groups is None:
        units = [[c] for c in order]  # every case its own unit
    else:
        missing = [c for c in order if c not in groups]
        if missing:
            raise ValueError(f"cases {missing[:5]} have no group key")
        members: dict[str, list[str]] = {}
        for cid in order:
            members.setdefault(str(groups[cid]), []).append(cid)
        units = [members[g] for g in sorted(members)]
    units = [units[i] for i in rng.permutation(len(units))]
    if groups is not None:
        units = [[unit[i] for i in rng.permutation(len(unit))] for unit in units]
    return units


def _take_whole(pool_units: list[list[str]], n: int) -> tuple[list[str], list[list[str]]]:
    """The first units holding at least ``n`` cases, and the units left."""
    taken: list[str] = []
    index = 0
    while len(taken) < n and index < len(pool_units):
        taken += pool_units[index]
        index += 1
    return taken, pool_units[index:]


def _check_whole(chosen: Sequence[str], what: str, order: list[str], groups: Mapping[str, str] | None) -> None:
    """An explicit list may not cut a group."""
    if groups is None:
        return
    chosen_set = set(chosen)
    left_out = {_group_of(c, groups) for c in order if c not in chosen_set}
    cut = sorted({_group_of(c, groups) for c in chosen} & left_out)
    if cut:
        raise ValueError(
            f"{what} takes only some cases of group(s) {cut[:5]}; a group (e.g. a patient) must "
            "stay on one side of the split: list all of its cases or none"
        )


def _draw_test(test_cases, order: list[str], units: list[list[str]],
               groups: Mapping[str, str] | None) -> tuple[list[str], list[list[str]]]:
    """The test cases (listed, or whole units drawn first) and the units left for train and val."""
    if test_cases is not None and not isinstance(test_cases, (int, float)):
        test = _check_known([str(c) for c in test_cases], order, "test_cases")
        _check_whole(test, "test_cases", order, groups)
        test_set = set(test)
        pool_units = [[c for c in unit if c not in test_set] for unit in units]
        return test, [unit for unit in pool_units if unit]
    n_test = _count(test_cases, len(order), "test_cases")
    if n_test >= len(order):
        raise ValueError(f"test_cases={test_cases} leaves no case for training out of {len(order)}")
    test, pool_units = _take_whole(units, n_test)
    if not pool_units:
        raise ValueError(f"test_cases={test_cases} takes every group; none is left for training")
    return test, pool_units


def _explicit_train_and_val(explicit_train: Sequence[str], val_cases, order: list[str], test: list[str],
                            pool_units: list[list[str]], groups: Mapping[str, str] | None) -> tuple[list[str], list[str]]:
    """The listed training cases, and validation drawn from the groups they leave."""
    pool = [c for unit in pool_units for c in unit]
    train = _check_known([str(c) for c in explicit_train], order, "explicit_train")
    clash = sorted(set(train) & set(test))
    if clash:
        raise ValueError(f"explicit_train cases {clash} are also test cases")
    if not train:
        raise ValueError("explicit_train is empty")
    train_groups = {_group_of(c, groups) for c in train}  # test groups are whole, so none is among these
    rest_units = [unit for unit in pool_units if _group_of(unit[0], groups) not in train_groups]
    n_val = _count(val_cases, len(pool), "val_cases")
    available = sum(len(unit) for unit in rest_units)
    if n_val > available:
        raise ValueError(f"val_cases={val_cases} but only {available} non-test cases are not in explicit_train"
                         + (" or its groups" if groups is not None else ""))
    val, _ = _take_whole(rest_units, n_val)
    return train, val


def _drawn_train_and_val(train_cases: int | None, val_cases, order: list[str], test: list[str],
                         pool_units: list[list[str]]) -> tuple[list[str], list[str]]:
    """Validation as whole units first, then k training cases dealt round-robin over the rest."""
    pool = [c for unit in pool_units for c in unit]
    n_val = _count(val_cases, len(pool), "val_cases")
    if n_val >= len(pool):
        raise ValueError(
            f"val_cases={val_cases} leaves no training case: {len(pool)} cases remain after {len(test)} test cases"
        )
    val, rest_units = _take_whole(pool_units, n_val)
    if not rest_units:
        raise ValueError(f"val_cases={val_cases} takes every remaining group; none is left for training")
    rest = _round_robin(rest_units)
    if train_cases is None:
        return rest, val
    k = int(train_cases)
    if k < 1:
        raise ValueError(f"train_cases must be >= 1, got {train_cases}")
    if k > len(rest):
        raise ValueError(
            f"train_cases={k} but only {len(rest)} cases are available "
            f"({len(order)} in total, {len(test)} test, {len(val)} validation)"
        )
    return rest[:k], val


def _round_robin(units: Sequence[Sequence[str]]) -> list[str]:
    """The first case of every unit, then the second of every unit, ... (units in order)."""
    out: list[str] = []
    depth = max((len(u) for u in units), default=0)
    for i in range(depth):
        out += [unit[i] for unit in units if i < len(unit)]
    return out


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
                          explicit_train=train_case_ids, groups=spec.groups)
    return make_split(ids, train_cases=train_cases, val_cases=val_cases, test_cases=test_cases, seed=seed,
                      explicit_train=train_case_ids, groups=spec.groups)
