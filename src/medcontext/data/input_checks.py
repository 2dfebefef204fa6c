"""One input check for every command: the checks of ``data check``, with its messages, before any work.

``medcontext data check``, ``train``, ``train --resume``, ``evaluate`` and ``predict`` all read
their NIfTI inputs through the same per-case check
(:func:`medcontext.data.validation.check_case`: files decode, 3D or 4D, channels, label grid
and values, NaN/Inf intensities), so a broken file gets the same message from each:

* :func:`check_training_data`: every case of the dataset (``train``, ``train --resume``);
* :func:`check_evaluation_cases`: the cases a run evaluates (``evaluate``, before any prediction);
* :func:`check_prediction_case`: one input case of ``predict`` (a failure is that case's error;
  the other cases are still predicted).

On top of the per-case checks: :func:`check_training_labels` refuses a training set whose every
label is empty (the network would learn to predict background only; ``data check`` warns, see
:func:`dataset_warnings`), and :func:`data_fingerprint` / :func:`compare_fingerprints` tie a run
to its dataset, so that ``--resume`` refuses a dataset that differs from the one the run started
on and says which cases differ.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from medcontext.data.dataset_spec import CaseRecord, DatasetError, DatasetSpec, format_problems
from medcontext.data.dataset_summary import DatasetSummary

__all__ = [
    "FINGERPRINT_FILE",
    "check_training_data",
    "check_evaluation_cases",
    "check_prediction_case",
    "check_training_labels",
    "empty_label_cases",
    "dataset_warnings",
    "data_fingerprint",
    "compare_fingerprints",
]

#: The run folder's record of the dataset it was trained on (written by ``train``).
FINGERPRINT_FILE = "data_fingerprint.json"


def check_training_data(spec: DatasetSpec, *, progress: bool = True) -> DatasetSummary:
    """Every case of ``spec`` through the per-case check (what ``data check`` runs).

    Raises:
        DatasetError: listing every problem, each naming the case and the file.
    """
    from medcontext import data  # through the package, so that tests can watch the call

    return data.validate_dataset(spec, progress=progress)


def check_evaluation_cases(spec: DatasetSpec, case_ids: Sequence[str], *, progress: bool = False) -> DatasetSummary:
    """The labelled cases ``case_ids`` of ``spec`` through the same checks, labels included.

    Raises:
        DatasetError: a case is unknown, has no label, or fails a check (every problem listed).
    """
    records = spec.select(case_ids)
    subset = dataclasses.replace(spec, cases=records, unlabeled=[])
    return check_training_data(subset, progress=progress)


def check_prediction_case(spec: DatasetSpec, case_id: str, paths: Sequence[Path]) -> None:
    """One unlabelled input case of ``predict``: readable NIfTI, 3D or 4D, the run's channel
    count, one grid across channel files, finite intensities.

    Raises:
        DatasetError: naming the file and every problem (the messages of ``data check``).
    """
    from medcontext.data.validation import check_case

    _, problems = check_case(spec, CaseRecord(case_id, [Path(p) for p in paths], None), labelled=False)
    if problems:
        raise DatasetError("; ".join(problems), problems)  # one line: the case's reason in predict's summary


def empty_label_cases(summary: DatasetSummary) -> list[str]:
    """Labelled cases whose label holds no voxel of any foreground value."""
    return [c.case_id for c in summary.cases if c.labelled and not any(n for v, n in c.label_voxels.items() if v != 0)]


def dataset_warnings(summary: DatasetSummary) -> list[str]:
    """What ``data check`` warns about without failing: empty label volumes."""
    empty = empty_label_cases(summary)
    labelled = [c for c in summary.cases if c.labelled]
    if not empty:
        return []
    shown = ", ".join(empty[:10]) + (f", ... ({len(empty) - 10} more)" if len(empty) > 10 else "")
    if len(empty) == len(labelled):
        return [f"every label volume is empty ({len(empty)} case(s) without a foreground voxel): `medcontext train` "
                "refuses this dataset; check that the label files are the right ones"]
    return [f"{len(empty)} of {len(labelled)} label volume(s) are empty (no foreground voxel): {shown}"]


def check_training_labels(summary_or_fingerprint: DatasetSummary | Mapping[str, Any], train_ids: Sequence[str]) -> None:
    """Refuse a training set whose every label is empty (it would train to Dice 0).

    Args:
        summary_or_fingerprint: the dataset check's result, or its :func:`data_fingerprint`.
        train_ids: the training cases of the split.

    Raises:
        DatasetError: every training case's label is empty (names them).
    """
    fingerprint = (data_fingerprint(summary_or_fingerprint) if isinstance(summary_or_fingerprint, DatasetSummary)
                   else summary_or_fingerprint)
    cases = fingerprint["cases"]
    known = [cid for cid in train_ids if cid in cases]
    if known and all(not any(int(v) != 0 and n for v, n in cases[cid]["label_voxels"].items()) for cid in known):
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        raise DatasetError(
            f"every training label is empty: none of the {len(known)} training case(s) ({shown}) has a foreground "
            "voxel, so the network could only learn to predict background. Check the label files "
            "(`medcontext data check` lists the label volumes), or choose other training cases"
        )


def data_fingerprint(summary: DatasetSummary) -> dict[str, Any]:
    """What a run records of its dataset: per labelled case its files, shape, spacing (mm,
    6 digits), channels and label voxel counts. JSON-serialisable."""
    spec = summary.spec
    records = {c.case_id: c for c in spec.cases}
    cases = {}
    for c in summary.cases:
        if not c.labelled:
            continue
        record = records.get(c.case_id)
        cases[c.case_id] = {
            "files": [Path(p).name for p in record.images] + ([Path(record.label).name] if record and record.label else [])
            if record is not None else [],
            "shape": list(c.shape),
            "spacing": [round(float(s), 6) for s in c.spacing],
            "channels": int(c.channels),
            "label_voxels": {str(k): int(v) for k, v in sorted(c.label_voxels.items())},
        }
    return {"dataset": spec.name, "root": str(spec.root), "cases": cases}


def compare_fingerprints(saved: Mapping[str, Any], current: Mapping[str, Any], *, source: str) -> None:
    """Refuse a dataset that differs from the one a run started on.

    Args:
        saved: the run's :data:`FINGERPRINT_FILE`.
        current: the fingerprint of the dataset given now.
        source: how to name the run's record in the message (its path).

    Raises:
        DatasetError: names the cases only in one of the two and the cases whose content differs.
    """
    before, now = saved["cases"], current["cases"]
    problems = []
    gone = sorted(set(before) - set(now))
    new = sorted(set(now) - set(before))
    if gone:
        problems.append(f"cases of the run's dataset missing now: {_listing(gone)}")
    if new:
        problems.append(f"cases not in the run's dataset: {_listing(new)}")
    for cid in sorted(set(before) & set(now)):
        changed = [key for key in ("files", "shape", "spacing", "channels", "label_voxels")
                   if key in before[cid] and before[cid][key] != now[cid].get(key)]
        if changed:
            problems.append(f"case {cid}: {', '.join(changed)} differ ({_differences(before[cid], now[cid], changed)})")
    if problems:
        raise DatasetError(
            format_problems(
                f"the dataset {current['root']} differs from the one this run was trained on ({saved['root']}, "
                f"recorded in {source}); resume with the run's own dataset, or start a new run with --out", problems),
            problems,
        )


def _listing(ids: Sequence[str]) -> str:
    return ", ".join(ids[:10]) + (f", ... ({len(ids) - 10} more)" if len(ids) > 10 else "")


def _differences(before: Mapping[str, Any], now: Mapping[str, Any], keys: Sequence[str]) -> str:
    return "; ".join(f"{key} {before[key]} -> {now.get(key)}" for key in keys)
