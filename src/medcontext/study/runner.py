"""Run a study: train and evaluate every run, skipping finished ones and resuming cut ones.

A run is finished when ``RUN/study_done.json`` exists (written atomically after its test-set
evaluation). An interrupted run with a ``last.pt`` resumes from it. The study can therefore be
stopped at any time (Ctrl-C, a closed laptop) and continued with the same command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

from ..engine.config import load_config
from ..engine.run import train
from ..engine.signals import stop_if_interrupted
from ..io.atomic import write_text_atomic
from ..run_evaluation import evaluate_run
from .plan import StudyRun

__all__ = ["run_study", "DONE_MARKER"]

DONE_MARKER = "study_done.json"


def _run_one(
    run: StudyRun, data: str, test_ids: list[str], run_dir: Path, echo: Callable[[str], None], progress: bool,
    trust_checkpoint: bool = False,
) -> dict | None:
    """Train (or resume) and evaluate one run; ``None`` when training ended early without a signal.

    Raises:
        RunInterrupted: SIGINT/SIGTERM stopped the training (``last.pt`` is saved; nothing of
            this run is evaluated or recorded).
    """
    settings = run.settings(data, test_ids)
    resume = (run_dir / "last.pt").is_file()
    if resume and (run_dir / "config.yaml").is_file():
        # a run continues in the precision it started with (runs begun before `auto` saved bf16)
        settings["train.precision"] = load_config(run_dir / "config.yaml").train.precision
    cfg = load_config(None, settings)
    start = time.perf_counter()
    result = train(cfg, run_dir, resume=resume, progress=progress, echo=echo, trust_checkpoint=trust_checkpoint)
    stop_if_interrupted(result, f"the study run {run_dir}", "Run the same command again to continue the study.")
    if not result.finished:
        return None
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    evaluation = evaluate_run(run_dir, split="test", progress=progress, echo=lambda _line: None,
                              trust_checkpoint=trust_checkpoint)
    eval_seconds = time.perf_counter() - start
    summary = evaluation.table.summary()
    record = {
        "run": run.name,
        "group": run.group,
        "model": run.model,
        "train_cases": run.train_cases,
        "variant": run.variant,
        "ablation": run.ablation,
        "mask_ratio": run.mask_ratio,
        "seed": run.seed,
        "resumed": resume,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "best_step": getattr(result, "best_step", None),
        "test_mean_dice": summary.mean_dice,
    }
    write_text_atomic(run_dir / DONE_MARKER, json.dumps(record, indent=2) + "\n")
    return record


def run_study(
    runs: Sequence[StudyRun],
    data: str | Path,
    out: str | Path,
    test_ids: Sequence[str],
    *,
    max_runs: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    trust_checkpoint: bool = False,
) -> list[dict]:
    """Train and evaluate ``runs`` under ``out`` (one folder each); returns the new records.

    Args:
        runs: the plan (e.g. :func:`~medcontext.study.plan.hippocampus_plan`).
        data: dataset folder.
        out: study folder.
        test_ids: the fixed test case ids (never trained or selected on).
        max_runs: stop after this many newly finished runs (``None`` = all).
        trust_checkpoint: read the runs' checkpoints with full pickle instead of
            weights-only (only for files you trust).

    Raises:
        RunInterrupted: SIGINT/SIGTERM stopped a run's training: it is saved and resumes
            when the study is run again; the runs finished before it keep their records.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = str(Path(data).resolve())
    done = [r for r in runs if (out / r.name / DONE_MARKER).is_file()]
    todo = [r for r in runs if r not in done]
    echo(f"study {out}: {len(runs)} runs, {len(done)} finished, {len(todo)} to go")
    records = []
    for index, run in enumerate(todo, start=1):
        if max_runs is not None and len(records) >= max_runs:
            break
        echo(f"[{index}/{len(todo)}] {run.name}")
        record = _run_one(run, data, list(test_ids), out / run.name, echo, progress, trust_checkpoint)
        if record is None:
            echo(f"study stopped during {run.name} before its last step; run the same command again to continue")
            break
        echo(
            f"[{index}/{len(todo)}] {run.name}: test mean Dice {record['test_mean_dice']:.4f} "
            f"(train {record['train_seconds']:.0f} s, eval {record['eval_seconds']:.0f} s)"
        )
        with (out / "study.jsonl").open("a") as log:
            log.write(json.dumps(record) + "\n")
        records.append(record)
    return records
