"""``medcontext evaluate``: predict a run's held-out cases and score them at full resolution.

Predictions are written to ``RUN_DIR/eval/predictions/<case>.nii.gz`` (the label file's
geometry) and compared with the reference labels at their original geometry, spacing from
the label header: Dice and HD95 per case and class, with the empty-mask conventions of
:mod:`medcontext.evaluation`. Sigmoid region tasks (BraTS WT/TC/ET) are scored per region
channel (``eval/regions/<case>.nii.gz``, ``(H, W, D, R)``) against each region's ground
truth; the painted label map in ``predictions/`` is written for use, not scored. Results: ``eval/metrics.csv``, ``eval/summary.md``, and the
summary printed.

When the run has a post-processing decision (``postprocessing.json``, chosen on validation after
training) that changes anything, ``predictions/`` (and ``regions/``) and ``metrics.csv`` are the
post-processed outputs and ``eval/raw/`` holds the raw ones with their own ``metrics.csv``;
``summary.md`` and the printed summary show both.

A workflow above the engine (it loads a run and predicts with the engine) and beside ``study`` and
``demo``, which call it; the metrics and reports it uses are the pure :mod:`medcontext.evaluation`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medcontext.data.input_checks import check_evaluation_cases
from medcontext.engine.config import ConfigError
from medcontext.engine.host.cpu_threads import CpuShare
from medcontext.engine.predict import InputCase, Predictor
from medcontext.engine.run_folder import load_run
from medcontext.io.run_lock import RunFolderLock
from medcontext.evaluation import evaluate_folder, evaluate_region_folder, format_summary, write_csv, write_markdown
from medcontext.evaluation.postprocessing import comparison_lines
from medcontext.io.atomic import write_text_atomic

__all__ = ["EvaluationResult", "evaluate_run"]


@dataclass
class EvaluationResult:
    """Where the evaluation went and what it found."""

    table: object  # medcontext.evaluation.MetricTable
    metrics_csv: Path
    summary_md: Path
    summary_text: str
    checkpoint: dict


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    use: str = "student",
    checkpoint: str = "best",
    device: str = "auto",
    out_name: str = "eval",
    progress: bool = True,
    echo: Callable[[str], None] = print,
    trust_checkpoint: bool = False,
) -> EvaluationResult:
    """Evaluate a run on its ``test`` (default), ``val`` or ``all`` (test + val) cases.

    Args:
        run_dir: the run folder.
        data: the dataset folder, when it moved since training (else the saved paths).
        split: which cases of the run's ``split.json``.
        use: ``student`` or ``teacher`` weights.
        checkpoint: ``best``, ``last`` or a path.
        device: ``auto``, ``cpu``, ``cuda``...
        out_name: output subfolder of the run (``eval``).
        progress: show a progress bar while scoring.
        echo: where to print.
        trust_checkpoint: read the checkpoint with full pickle instead of weights-only
            (only for a file you trust; CLI ``--trust-checkpoint``).

    The cases are checked like ``train`` checks its dataset (same messages) before any
    prediction, and the run folder is held against other writers (:mod:`medcontext.io.run_lock`)
    while ``eval/`` is written.

    Raises:
        ConfigError: the split has no case; DatasetError: a case's files fail the input checks;
        RunFolderError: the run folder is in use by another writer or cannot be written.
    """
    run = load_run(run_dir, data=data)
    case_ids = _split_cases(run, split)
    # the inputs checked like `train` checks them, and the run folder taken for writing, before any prediction
    with RunFolderLock(run.run_dir, "medcontext evaluate"):
        check_evaluation_cases(run.spec, case_ids)
        return _evaluate(run, case_ids, split=split, use=use, checkpoint=checkpoint, device=device, out_name=out_name,
                         progress=progress, echo=echo, trust_checkpoint=trust_checkpoint)


def _split_cases(run, split: str) -> list[str]:
    """The case ids of the run's ``test``, ``val`` or ``all`` (test + val) split; an empty one is an error."""
    if split == "test":
        case_ids = list(run.split.test)
    elif split == "val":
        case_ids = list(run.split.val)
    elif split == "all":
        case_ids = list(run.split.test) + list(run.split.val)
    else:
        raise ConfigError(f"--split must be test, val or all, got {split!r}")
    if not case_ids:
        raise ConfigError(
            f"the run's {split} split is empty ({run.run_dir / 'split.json'}); evaluate another split "
            "(--split val) or train with data.test_cases / data.val_cases > 0"
        )
    return case_ids


def _evaluate(run, case_ids: list[str], *, split: str, use: str, checkpoint: str, device: str, out_name: str,
              progress: bool, echo: Callable[[str], None], trust_checkpoint: bool) -> EvaluationResult:
    """Predict the checked cases, score them and write the tables (the caller holds the run folder's lock)."""
    predictor = Predictor(run, checkpoint=checkpoint, use=use, device=device, trust_checkpoint=trust_checkpoint)
    out = Path(run.run_dir) / out_name
    pred_dir = out / "predictions"
    # region tasks: every sigmoid channel scored on its own against its region (not the painted map)
    regions_dir = out / "regions" if run.spec.output_mode == "sigmoid" else None
    records = run.spec.select(case_ids)
    echo(
        f"evaluating {len(records)} {split} case(s) of {run.run_dir} with {predictor.checkpoint['path'].name} "
        f"(step {predictor.checkpoint['step']}, {use} weights)"
    )
    decision = predictor.postprocessing
    # raw predictions beside the post-processed ones (eval/raw/), so that both are scored
    raw_dir = out / "raw" if decision is not None and decision.changes_anything else None
    truth = {}
    # a share of the cores like a training process: runs training beside this one count it, and it them
    with CpuShare(run.cfg.train.threads) as cpu_share:
        for record in records:
            if record.label is None:
                raise ConfigError(f"case {record.case_id} has no label file; it cannot be evaluated")
            cpu_share.refresh()  # trainings that started or ended since the last case
            start = time.perf_counter()
            predictor.predict_case(InputCase(record.case_id, list(record.images)), pred_dir, regions_dir=regions_dir,
                                   raw_dir=raw_dir)
            truth[record.case_id] = record.label
            echo(f"  predicted {record.case_id} ({time.perf_counter() - start:.1f} s)")
    table = _score(run, pred_dir, regions_dir, truth, progress)
    raw_table = None
    if raw_dir is not None:
        raw_table = _score(run, raw_dir / "predictions", raw_dir / "regions" if regions_dir else None, truth, progress)
        write_csv(raw_table, raw_dir / "metrics.csv")
    metrics_csv = write_csv(table, out / "metrics.csv")
    title = f"{run.cfg.model.name} / {run.cfg.method.variant} ({use} weights), {split} split of {run.run_dir.name}"
    summary_md = write_markdown(table, out / "summary.md", title=title)
    before, after = (raw_table, table) if raw_table is not None else (table, None)
    compared = comparison_lines(before, after, decision)
    write_text_atomic(summary_md, summary_md.read_text() + "\n" + "\n".join(compared) + "\n")
    text = format_summary(table) + "\n" + "\n".join(comparison_lines(before, after, decision, markdown=False))
    echo(text)
    echo(f"wrote {metrics_csv} and {summary_md}")
    return EvaluationResult(table, metrics_csv, summary_md, text, predictor.checkpoint)


def _score(run, pred_dir: Path, regions_dir: Path | None, truth: dict, progress: bool):
    """The metric table of one prediction folder (region tasks: of its region channels)."""
    if regions_dir is not None:
        return evaluate_region_folder(regions_dir, truth, run.spec.regions, run.classes, progress=progress)
    return evaluate_folder(pred_dir, truth, run.classes, progress=progress)
