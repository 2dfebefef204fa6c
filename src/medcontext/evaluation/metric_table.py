"""Collect per-case metrics and report them: CSV rows, a markdown summary, terminal text.

:class:`MetricTable` accumulates :class:`~medcontext.evaluation.metrics.CaseMetric` rows (one
per case and class) like MONAI's metric classes accumulate batches; :meth:`MetricTable.summary`
reduces them per class. A missing HD95 (exactly one of prediction and truth empty, stored as
NaN) is never averaged as 0: the HD95 mean, std and median use the finite values only and the
number of missing values is reported next to them (statistics: :mod:`~medcontext.evaluation.statistics`).

Every file is written atomically (:mod:`medcontext.io.atomic`).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable

import numpy as np

from medcontext.io.atomic import write_text_atomic

from .metrics import HD_COMBINE_MODES, NOTE_BOTH_EMPTY, NOTE_PRED_EMPTY, NOTE_TRUTH_EMPTY, CaseMetric
from .statistics import summarize

__all__ = [
    "CSV_COLUMNS",
    "ClassSummary",
    "TableSummary",
    "MetricTable",
    "write_csv",
    "read_csv",
    "write_markdown",
    "format_summary",
]

CSV_COLUMNS = tuple(f.name for f in fields(CaseMetric))
"""``case_id, class_name, dice, hd95, pred_voxels, truth_voxels, note``; a missing HD95 is an empty cell."""


@dataclass(frozen=True)
class ClassSummary:
    """Statistics of one class over the cases of a :class:`MetricTable`.

    Attributes:
        class_name: the class or region.
        n_cases: number of cases (rows) of this class.
        dice_mean, dice_std, dice_median: over all cases; std is the population std (ddof=0).
        hd95_mean, hd95_std, hd95_median: in mm over the cases with a finite HD95 only;
            NaN when no case has one.
        hd95_missing: number of cases whose HD95 is missing (NaN).
        n_both_empty, n_pred_empty, n_truth_empty: cases with the matching note.
    """

    class_name: str
    n_cases: int
    dice_mean: float
    dice_std: float
    dice_median: float
    hd95_mean: float
    hd95_std: float
    hd95_median: float
    hd95_missing: int
    n_both_empty: int
    n_pred_empty: int
    n_truth_empty: int


@dataclass(frozen=True)
class TableSummary:
    """Per-class statistics and their mean over classes.

    Attributes:
        classes: one :class:`ClassSummary` per class, in order of first appearance.
        n_cases: number of distinct case ids.
        mean_dice: unweighted mean of the per-class Dice means ("mean Dice").
        mean_hd95: unweighted mean of the per-class HD95 means that are finite (mm); NaN when
            none is.
        hd95_missing: number of missing HD95 values over all classes and cases.
        hd95_combine: the HD95 convention of the rows, ``"max"`` or ``"union"``.
    """

    classes: tuple[ClassSummary, ...]
    n_cases: int
    mean_dice: float
    mean_hd95: float
    hd95_missing: int
    hd95_combine: str = "max"

    def by_class(self, name: str) -> ClassSummary:
        """The summary of class ``name``; KeyError listing the known classes otherwise."""
        for item in self.classes:
            if item.class_name == name:
                return item
        raise KeyError(f"no class {name!r} in the summary; known: {[c.class_name for c in self.classes]}")


def _check_row(row: object) -> CaseMetric:
    if not isinstance(row, CaseMetric):
        raise TypeError(f"MetricTable rows must be CaseMetric, got {type(row).__name__}")
    where = f"case {row.case_id!r}, class {row.class_name!r}"
    if not (math.isfinite(row.dice) and 0.0 <= row.dice <= 1.0):
        raise ValueError(f"{where}: Dice must be in [0, 1], got {row.dice}")
    if not (math.isnan(row.hd95) or (math.isfinite(row.hd95) and row.hd95 >= 0.0)):
        raise ValueError(f"{where}: HD95 must be a finite distance >= 0 or NaN (missing), got {row.hd95}")
    if row.pred_voxels < 0 or row.truth_voxels < 0:
        raise ValueError(f"{where}: voxel counts must be >= 0, got {row.pred_voxels} and {row.truth_voxels}")
    return row


class MetricTable:
    """Accumulator of per-case, per-class metrics.

    Example::

        table = MetricTable()
        for case_id, pred, truth, spacing in cases:
            table.add(evaluate_case(pred, truth, spacing, {"spleen": [1]}, case_id))
        print(format_summary(table))

    Args:
        rows: initial rows.
        hd95_combine: the HD95 convention the rows were computed with (see
            :func:`~medcontext.evaluation.metrics.hd95`); it is stated in the reports.
    """

    def __init__(self, rows: Iterable[CaseMetric] = (), *, hd95_combine: str = "max") -> None:
        if hd95_combine not in HD_COMBINE_MODES:
            raise ValueError(f"hd95_combine must be one of {HD_COMBINE_MODES}, got {hd95_combine!r}")
        self.hd95_combine = hd95_combine
        self._rows: list[CaseMetric] = []
        self._keys: set[tuple[str, str]] = set()
        self.add(rows)

    def add(self, rows: CaseMetric | Iterable[CaseMetric]) -> None:
        """Append one row or several (e.g. the output of ``evaluate_case``).

        All rows are checked before any is added.

        Raises:
            TypeError: for something that is not a CaseMetric.
            ValueError: for an invalid value or a (case, class) pair already in the table.
        """
        batch = [rows] if isinstance(rows, CaseMetric) else list(rows)
        new_keys: set[tuple[str, str]] = set()
        for row in batch:
            _check_row(row)
            key = (row.case_id, row.class_name)
            if key in self._keys or key in new_keys:
                raise ValueError(f"case {row.case_id!r}, class {row.class_name!r} is already in the table")
            new_keys.add(key)
        self._rows.extend(batch)
        self._keys |= new_keys

    def reset(self) -> None:
        """Remove all rows."""
        self._rows.clear()
        self._keys.clear()

    @property
    def rows(self) -> list[CaseMetric]:
        """A copy of the rows, in the order added."""
        return list(self._rows)

    @property
    def class_names(self) -> list[str]:
        """Class names in order of first appearance."""
        return list(dict.fromkeys(r.class_name for r in self._rows))

    @property
    def case_ids(self) -> list[str]:
        """Case ids in order of first appearance."""
        return list(dict.fromkeys(r.case_id for r in self._rows))

    def __len__(self) -> int:
        return len(self._rows)

    def summary(self) -> TableSummary:
        """Per-class mean/std/median of Dice and HD95 and their mean over classes.

        Raises:
            ValueError: when the table is empty.
        """
        if not self._rows:
            raise ValueError("the metric table is empty: add rows (evaluate_case output) before summarising")
        per_class = []
        for name in self.class_names:
            rows = [r for r in self._rows if r.class_name == name]
            dice = summarize(r.dice for r in rows)
            hd = summarize((r.hd95 for r in rows), finite_only=True)
            notes = [r.note for r in rows]
            per_class.append(
                ClassSummary(
                    class_name=name,
                    n_cases=len(rows),
                    dice_mean=dice.mean,
                    dice_std=dice.std,
                    dice_median=dice.median,
                    hd95_mean=hd.mean,
                    hd95_std=hd.std,
                    hd95_median=hd.median,
                    hd95_missing=hd.missing,
                    n_both_empty=notes.count(NOTE_BOTH_EMPTY),
                    n_pred_empty=notes.count(NOTE_PRED_EMPTY),
                    n_truth_empty=notes.count(NOTE_TRUTH_EMPTY),
                )
            )
        class_hd = [c.hd95_mean for c in per_class if math.isfinite(c.hd95_mean)]
        return TableSummary(
            classes=tuple(per_class),
            n_cases=len(self.case_ids),
            mean_dice=float(np.mean([c.dice_mean for c in per_class])),
            mean_hd95=float(np.mean(class_hd)) if class_hd else math.nan,
            hd95_missing=sum(c.hd95_missing for c in per_class),
            hd95_combine=self.hd95_combine,
        )


def write_csv(table: MetricTable, path: str | os.PathLike) -> Path:
    """Write one line per case and class (columns :data:`CSV_COLUMNS`), atomically.

    Floats are written with ``repr`` so that :func:`read_csv` gives the same values back; a
    missing HD95 is an empty cell.

    Returns:
        The path written.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in table.rows:
        hd = "" if math.isnan(r.hd95) else repr(float(r.hd95))
        writer.writerow([r.case_id, r.class_name, repr(float(r.dice)), hd, r.pred_voxels, r.truth_voxels, r.note])
    return write_text_atomic(path, buffer.getvalue())


def read_csv(path: str | os.PathLike, *, hd95_combine: str = "max") -> MetricTable:
    """Read a file written by :func:`write_csv` back into a :class:`MetricTable`.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the header is not :data:`CSV_COLUMNS` or a line cannot be parsed
            (the message names the file and line).
    """
    path = Path(path)
    table = MetricTable(hd95_combine=hd95_combine)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(header) != CSV_COLUMNS:
            raise ValueError(f"{path}: expected the header {','.join(CSV_COLUMNS)}, got {header}")
        rows = []
        for line_no, values in enumerate(reader, start=2):
            try:
                case_id, class_name, dice, hd, n_pred, n_truth, note = values
                rows.append(
                    CaseMetric(
                        case_id=case_id,
                        class_name=class_name,
                        dice=float(dice),
                        hd95=float(hd) if hd.strip() else math.nan,
                        pred_voxels=int(n_pred),
                        truth_voxels=int(n_truth),
                        note=note,
                    )
                )
            except ValueError as err:
                raise ValueError(f"{path}, line {line_no}: cannot parse {values}: {err}") from err
    table.add(rows)
    return table


def _fmt(value: float, digits: int) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _pm(mean: float, std: float, digits: int) -> str:
    return "n/a" if not math.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _convention_lines(summary: TableSummary) -> list[str]:
    n_both = sum(c.n_both_empty for c in summary.classes)
    n_pred = sum(c.n_pred_empty for c in summary.classes)
    n_truth = sum(c.n_truth_empty for c in summary.classes)
    if summary.hd95_combine == "max":
        hd_rule = (
            "HD95 (mm, voxel spacing from the reference image header): the larger of the two directed "
            "95th percentiles of surface distances, prediction -> truth and truth -> prediction "
            "(MONAI `compute_hausdorff_distance(percentile=95)`, paper Eq. 8)."
        )
    else:
        hd_rule = (
            "HD95 (mm, voxel spacing from the reference image header): the 95th percentile of the "
            "surface distances of both directions pooled (medpy `hd95`)."
        )
    return [
        "- Dice = 2|P ∩ T| / (|P| + |T|) per case and class.",
        "- " + hd_rule + " Surface voxels: those removed by one 6-connected erosion.",
        f"- Both prediction and truth empty: Dice 1, HD95 0 ({n_both} rows).",
        f"- Exactly one empty: Dice 0, HD95 missing ({n_pred} rows with the prediction empty, "
        f"{n_truth} with the truth empty).",
        f"- HD95 mean, std and median use the finite values only; the {summary.hd95_missing} missing "
        "values are counted in the 'HD95 missing' column, never averaged as 0.",
        "- std is the population standard deviation (ddof=0) over cases. The mean over classes is "
        "the unweighted mean of the per-class means (HD95: of the classes with a finite mean).",
    ]


def write_markdown(table: MetricTable, path: str | os.PathLike, title: str = "Evaluation") -> Path:
    """Write a markdown report: per-class summary, mean over classes, missing counts, conventions.

    Returns:
        The path written (atomically).
    """
    s = table.summary()
    lines = [
        f"# {title}",
        "",
        f"{s.n_cases} cases, {len(s.classes)} classes. Dice as a fraction; HD95 in mm.",
        "",
        "| Class | Cases | Dice mean ± std | Dice median | HD95 mean ± std (mm) | HD95 median (mm) | HD95 missing |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in s.classes:
        lines.append(
            f"| {c.class_name} | {c.n_cases} | {_pm(c.dice_mean, c.dice_std, 4)} | {_fmt(c.dice_median, 4)} "
            f"| {_pm(c.hd95_mean, c.hd95_std, 2)} | {_fmt(c.hd95_median, 2)} | {c.hd95_missing} |"
        )
    lines.append(
        f"| **Mean over classes** | {s.n_cases} | {_fmt(s.mean_dice, 4)} |  | {_fmt(s.mean_hd95, 2)} |  "
        f"| {s.hd95_missing} |"
    )
    lines += ["", "Conventions:", "", *_convention_lines(s), ""]
    return write_text_atomic(path, "\n".join(lines))


def format_summary(table: MetricTable) -> str:
    """The summary as fixed-width text for a terminal (one line per class, then the mean)."""
    s = table.summary()
    width = max(12, *(len(c.class_name) for c in s.classes))
    head = (
        f"{'class':<{width}} {'cases':>5}  {'Dice mean±std':>15} {'median':>7}  "
        f"{'HD95 mm mean±std':>17} {'median':>7} {'missing':>7}"
    )
    lines = [head, "-" * len(head)]
    for c in s.classes:
        dice = f"{c.dice_mean:.4f}±{c.dice_std:.4f}"
        hd = "n/a" if not math.isfinite(c.hd95_mean) else f"{c.hd95_mean:.2f}±{c.hd95_std:.2f}"
        lines.append(
            f"{c.class_name:<{width}} {c.n_cases:>5}  {dice:>15} {c.dice_median:>7.4f}  {hd:>17} "
            f"{_fmt(c.hd95_median, 2):>7} {c.hd95_missing:>7}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"{'mean':<{width}} {s.n_cases:>5}  {s.mean_dice:>15.4f} {'':>7}  {_fmt(s.mean_hd95, 2):>17} {'':>7} "
        f"{s.hd95_missing:>7}"
    )
    lines.append("HD95 missing = exactly one of prediction/truth empty (not averaged); both empty: Dice 1, HD95 0.")
    return "\n".join(lines)

