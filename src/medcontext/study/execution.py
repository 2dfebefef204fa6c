"""Run a study: train and evaluate every run, skipping finished ones and resuming cut ones.

A run is finished when ``RUN/study_done.json`` exists (written atomically after its test-set
evaluation). An interrupted run with a ``last.pt`` resumes from it. The study can therefore be
stopped at any time (Ctrl-C, a closed laptop) and continued with the same command;
:func:`study_status` says where each run stands without training anything.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..engine.checkpoint import CheckpointError, read_checkpoint
from ..engine.config import load_config
from ..engine.run_folder import train
from ..engine.training_log import read_metrics
from ..engine.host.signals import stop_if_interrupted
from ..io.atomic import write_text_atomic
from ..models.safe_load import UntrustedFileError
from ..run_scoring import evaluate_run
from .definitions import StudyRun
from .comparison_report import run_machine

__all__ = ["run_study", "study_status", "format_status", "RunStatus", "DONE_MARKER", "LAST_STEP_EVAL"]

DONE_MARKER = "study_done.json"
#: the run's subfolder of its test evaluation at the last step (studies with ``last_step``)
LAST_STEP_EVAL = "eval_last"


def _run_one(
    run: StudyRun, data: str, test_ids: list[str], run_dir: Path, echo: Callable[[str], None], progress: bool,
    trust_checkpoint: bool = False, last_step: bool = False,
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
    if last_step:
        record["test_mean_dice_last"] = _evaluate_last_step(run_dir, progress, trust_checkpoint)
    write_text_atomic(run_dir / DONE_MARKER, json.dumps(record, indent=2) + "\n")
    return record


def _evaluate_last_step(run_dir: Path, progress: bool, trust_checkpoint: bool) -> float:
    """Test evaluation of the last checkpoint into ``RUN/eval_last/``; its mean Dice."""
    evaluation = evaluate_run(run_dir, split="test", checkpoint="last", out_name=LAST_STEP_EVAL, progress=progress,
                              echo=lambda _line: None, trust_checkpoint=trust_checkpoint)
    return evaluation.table.summary().mean_dice


def _add_last_step(runs: Sequence[StudyRun], out: Path, echo: Callable[[str], None], progress: bool,
                   trust_checkpoint: bool) -> None:
    """Evaluate at the last step the finished runs that lack it (runs finished before their study asked
    for it, e.g. the ACDC study's labelled runs reused by the semi-supervised one); no training."""
    for run in runs:
        run_dir = out / run.name
        if (run_dir / LAST_STEP_EVAL / "metrics.csv").is_file():
            continue
        if not (run_dir / "last.pt").is_file():
            echo(f"{run.name}: finished, but without last.pt its last step cannot be evaluated")
            continue
        record = json.loads((run_dir / DONE_MARKER).read_text())
        record["test_mean_dice_last"] = _evaluate_last_step(run_dir, progress, trust_checkpoint)
        write_text_atomic(run_dir / DONE_MARKER, json.dumps(record, indent=2) + "\n")
        echo(f"{run.name}: test mean Dice at the last step {record['test_mean_dice_last']:.4f}")


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
    last_step: bool = False,
) -> list[dict]:
    """Train and evaluate ``runs`` under ``out`` (one folder each); returns the new records.

    Args:
        runs: the plan (e.g. :func:`~medcontext.study.definitions.hippocampus_plan`).
        data: dataset folder.
        out: study folder.
        test_ids: the fixed test case ids (never trained or selected on).
        max_runs: stop after this many newly finished runs (``None`` = all).
        trust_checkpoint: read the runs' checkpoints with full pickle instead of
            weights-only (only for files you trust).
        last_step: also evaluate every run's last checkpoint on the test split
            (``RUN/eval_last/``; finished runs that lack it get it without training).

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
    if last_step:
        _add_last_step(done, out, echo, progress, trust_checkpoint)
    records = []
    for index, run in enumerate(todo, start=1):
        if max_runs is not None and len(records) >= max_runs:
            break
        echo(f"[{index}/{len(todo)}] {run.name}")
        record = _run_one(run, data, list(test_ids), out / run.name, echo, progress, trust_checkpoint, last_step)
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


@dataclass(frozen=True)
class RunStatus:
    """Where one run of a study stands.

    Attributes:
        state: ``finished`` (trained and evaluated), ``interrupted`` (resumes from ``last.pt``),
            ``started`` (a folder without a checkpoint yet: starts again from step 0) or
            ``not started``.
        step: completed steps that a resume keeps (the checkpoint's step; ``steps`` when finished).
        median_step_s: median logged step time in seconds (None before the first step).
        machine: where it trained (:func:`~medcontext.study.comparison_report.run_machine`).
        note: why a checkpoint could not be read, when it could not.
    """

    name: str
    state: str
    step: int
    steps: int
    test_mean_dice: float | None = None
    median_step_s: float | None = None
    machine: str = ""
    note: str = ""

    @property
    def hours_left(self) -> float | None:
        """Hours of training steps left at this run's own median step time (validation not counted)."""
        if self.state == "finished":
            return 0.0
        if self.median_step_s is None:
            return None
        return (self.steps - self.step) * self.median_step_s / 3600


def study_status(runs: Sequence[StudyRun], out: str | Path) -> list[RunStatus]:
    """The state of every run of ``runs`` in the study folder ``out``; reads, never trains.

    An interrupted run's step is read from its ``last.pt`` (weights-only), so it is the step a
    resume starts from, not the last logged one.
    """
    statuses = []
    for run in runs:
        run_dir = Path(out) / run.name
        steps = int(run.settings("", [])["train.steps"])
        log = read_metrics(run_dir / "metrics.jsonl")
        times = [float(r["step_time"]) for r in log if r.get("kind") == "train" and "step_time" in r]
        median = float(np.median(times)) if times else None
        config = run_dir / "config.yaml"
        precision = load_config(config).train.precision if config.is_file() else "auto"
        machine = run_machine(log, precision) if log else ""
        common = {"name": run.name, "steps": steps, "median_step_s": median, "machine": machine}
        if (run_dir / DONE_MARKER).is_file():
            record = json.loads((run_dir / DONE_MARKER).read_text())
            dice = record.get("test_mean_dice")
            statuses.append(RunStatus(state="finished", step=steps, test_mean_dice=dice, **common))
        elif (run_dir / "last.pt").is_file():
            try:
                step, note = int(read_checkpoint(run_dir / "last.pt")["step"]), ""
            except (CheckpointError, UntrustedFileError) as err:  # a resume would refuse it too
                step, note = 0, f"last.pt unreadable: {err}"
            statuses.append(RunStatus(state="interrupted", step=step, note=note, **common))
        elif run_dir.is_dir():
            statuses.append(RunStatus(state="started", step=0, **common))
        else:
            statuses.append(RunStatus(state="not started", step=0, **common))
    return statuses


def format_status(statuses: Sequence[RunStatus]) -> str:
    """A plain-text table of :func:`study_status` with a closing line of totals."""
    header = ("run", "state", "steps", "test Dice", "step", "left", "machine")
    rows = [header]
    for st in statuses:
        rows.append((
            st.name, st.state, f"{st.step}/{st.steps}",
            f"{st.test_mean_dice:.4f}" if st.test_mean_dice is not None else "-",
            f"{st.median_step_s:.2f} s" if st.median_step_s is not None else "-",
            f"{st.hours_left:.1f} h" if st.hours_left not in (None, 0.0) else "-",
            st.machine + (f" ({st.note})" if st.note else ""),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    finished = sum(st.state == "finished" for st in statuses)
    timed = [st.hours_left for st in statuses if st.state != "finished" and st.hours_left is not None]
    untimed = sum(st.state != "finished" and st.hours_left is None for st in statuses)
    total = f"{finished} of {len(statuses)} runs finished"
    if timed:
        total += f"; {sum(timed):.1f} h of steps left in {len(timed)} started run(s) at their own step times"
    if untimed:
        total += f"; {untimed} run(s) not started or without a logged step"
    return "\n".join([line.rstrip() for line in lines] + [total])
