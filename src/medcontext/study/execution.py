"""Run a study: train and evaluate every run, skipping finished ones and resuming cut ones.

A run is finished when ``RUN/study_done.json`` exists (written atomically after its test-set
evaluation). An interrupted run with a ``last.pt`` resumes from it. The study can therefore be
stopped at any time (Ctrl-C, a closed laptop) and continued with the same command;
:func:`study_status` says where each run stands without training anything.

A pretraining stage (:class:`~medcontext.study.definitions.PretrainStage`) is run the same way
with ``medcontext pretrain``: finished when ``STAGE/pretrain_done.json`` exists (its compute time
from the logged step times, its wall-clock time summed over the calls that ran it), resumed from
its ``last.pt``. A run that starts from a stage's ``pretrained.pt`` runs the stage first when it is
not finished (also when ``--only`` did not select it), and its ``study_done.json`` repeats the
stage's times, so that the report counts them in the run's cost.

Several processes may work on one study folder at once (the same command started again, in
another terminal or on another machine that mounts the folder): each takes the next run or stage
no other process holds. A worker claims a run for all of its work (training, both evaluations,
its pretraining stage) with a lock file of its own, :data:`STUDY_CLAIM`, beside the run's writer
lock; a run another process holds is skipped and named at the end, and the cores are shared
between the trainings (``train.threads: auto``).
"""

from __future__ import annotations

import json
import socket
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
from ..io.run_lock import RunFolderBusyError, RunFolderLock, read_holder
from ..models.safe_load import UntrustedFileError
from ..run_scoring import evaluate_run
from .definitions import PretrainStage, StudyRun
from .comparison_report import PRETRAIN_SECONDS, pretraining_compute_seconds, run_machine

__all__ = ["run_study", "study_status", "format_status", "RunStatus", "DONE_MARKER", "PRETRAIN_DONE",
           "STAGE_WALL_TIME", "LAST_STEP_EVAL", "STUDY_CLAIM", "done_marker"]

DONE_MARKER = "study_done.json"
#: a pretraining stage's marker: finished, with its compute and wall-clock seconds
PRETRAIN_DONE = "pretrain_done.json"
#: a stage's wall-clock seconds so far, summed over the calls that ran it (a resume adds its own)
STAGE_WALL_TIME = "stage_wall_time.json"
#: a study worker's claim on a run or stage folder (held while it trains and evaluates it)
STUDY_CLAIM = ".study_worker.lock"
#: the run's subfolder of its test evaluation at the last step (studies with ``last_step``)
LAST_STEP_EVAL = "eval_last"


def done_marker(item: StudyRun | PretrainStage) -> str:
    """The file that marks a plan item finished: :data:`PRETRAIN_DONE` for a stage, else :data:`DONE_MARKER`."""
    return PRETRAIN_DONE if isinstance(item, PretrainStage) else DONE_MARKER


def _run_one(
    run: StudyRun, data: str, test_ids: list[str], run_dir: Path, echo: Callable[[str], None], progress: bool,
    trust_checkpoint: bool = False, last_step: bool = False,
) -> dict | None:
    """Train (or resume) and evaluate one run (after its pretraining stage, if it has one); ``None``
    when the training or the stage ended early without a signal.

    Raises:
        RunInterrupted: SIGINT/SIGTERM stopped the training (``last.pt`` is saved; nothing of
            this run is evaluated or recorded).
    """
    stage_record = None
    if run.pretrain is not None:
        stage_record = _finished_stage(run.pretrain, data, test_ids, _study_folder(run_dir, run), echo, progress,
                                       trust_checkpoint)
        if stage_record is None:
            return None
    cfg, resume = _run_config(run, data, test_ids, run_dir)
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
    if stage_record is not None:  # the stage's cost, counted in this run's (once per stage, in every run of it)
        record.update({"pretrain": run.pretrain.name, PRETRAIN_SECONDS: stage_record["compute_seconds"],
                       "pretrain_wall_seconds": stage_record["wall_seconds"]})
    if last_step:
        record["test_mean_dice_last"] = _evaluate_last_step(run_dir, progress, trust_checkpoint)
    write_text_atomic(run_dir / DONE_MARKER, json.dumps(record, indent=2) + "\n")
    return record


def _run_config(run: StudyRun, data: str, test_ids: list[str], run_dir: Path):
    """``(TrainConfig, resume)`` of a study run: its settings, the stage's ``pretrained.pt`` as
    ``model.init_checkpoint`` when it has one, and, when it resumes, the precision and initial
    weights it started with (runs begun before ``auto`` saved bf16; the study folder may have moved)."""
    from ..engine.pretraining import PRETRAINED_FILE

    settings = run.settings(data, test_ids)
    if run.pretrain is not None:
        settings["model.init_checkpoint"] = str(_study_folder(run_dir, run) / run.pretrain.name / PRETRAINED_FILE)
    resume = (run_dir / "last.pt").is_file()
    if resume and (run_dir / "config.yaml").is_file():
        saved = load_config(run_dir / "config.yaml")
        settings["train.precision"] = saved.train.precision
        settings["model.init_checkpoint"] = saved.model.init_checkpoint
    return load_config(None, settings), resume


def _study_folder(run_dir: Path, run: StudyRun) -> Path:
    """The study folder that holds ``run_dir`` (``STUDY/GROUP/RUN``)."""
    return run_dir.parents[len(Path(run.name).parts) - 1]


def _finished_stage(stage: PretrainStage, data: str, test_ids: list[str], out: Path, echo: Callable[[str], None],
                    progress: bool, trust_checkpoint: bool) -> dict | None:
    """The record of a finished pretraining stage, running (or resuming) it first when needed;
    ``None`` when it ended early without a signal."""
    marker = out / stage.name / PRETRAIN_DONE
    if marker.is_file():
        return json.loads(marker.read_text())
    with _claim(out / stage.name, echo):
        if marker.is_file():  # another worker finished it since the check above
            return json.loads(marker.read_text())
        echo(f"{stage.name}: pretraining first ({stage.steps} steps)")
        record = _pretrain_one(stage, data, test_ids, out / stage.name, echo, progress, trust_checkpoint)
    if record is not None:
        echo(f"{stage.name}: {_record_line(record)}")
        with (out / "study.jsonl").open("a") as log:
            log.write(json.dumps(record) + "\n")
    return record


def _pretrain_one(stage: PretrainStage, data: str, test_ids: list[str], stage_dir: Path,
                  echo: Callable[[str], None], progress: bool, trust_checkpoint: bool) -> dict | None:
    """Pretrain (or resume) one stage and write :data:`PRETRAIN_DONE`; ``None`` when it ended early
    without a signal.

    Raises:
        RunInterrupted: SIGINT/SIGTERM stopped it (``last.pt`` is saved, its time so far kept).
    """
    from ..engine.pretraining import pretrain

    cfg = stage.config(data, test_ids)
    resume = (stage_dir / "last.pt").is_file()
    start = time.perf_counter()
    try:
        result = pretrain(cfg, stage_dir, resume=resume, progress=progress, echo=echo,
                          trust_checkpoint=trust_checkpoint)
    finally:
        wall = _add_wall_time(stage_dir, time.perf_counter() - start)
    stop_if_interrupted(result, f"the pretraining stage {stage_dir}", "Run the same command again to continue the study.")
    if not result.finished:
        return None
    volumes = json.loads((stage_dir / "volumes.json").read_text())
    losses = [r["total"] for r in read_metrics(stage_dir / "metrics.jsonl", kind="train") if "total" in r]
    record = {
        "run": stage.name, "kind": "pretrain", "group": stage.group, "model": stage.model, "seed": stage.seed,
        "steps": result.step, "resumed": resume, "volumes": volumes["count"],
        # a stage killed after its last checkpoint but before its marker resumes with no step left to log
        "final_loss": result.loss if result.loss is not None else (losses[-1] if losses else None),
        # milliseconds: a tiny stage's steps take hundredths of a second, which a tenth would round to zero
        "wall_seconds": round(wall, 3),
        "compute_seconds": round(pretraining_compute_seconds(stage_dir) or 0.0, 3),
    }
    write_text_atomic(stage_dir / PRETRAIN_DONE, json.dumps(record, indent=2) + "\n")
    return record


def _add_wall_time(stage_dir: Path, seconds: float) -> float:
    """Add one call's wall-clock seconds to the stage's total (kept in the stage folder); the total."""
    path = stage_dir / STAGE_WALL_TIME
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    if stage_dir.is_dir():  # a stage refused before it wrote anything leaves no folder
        write_text_atomic(path, json.dumps({"seconds": round(total, 3)}) + "\n")
    return total


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
        try:
            with _claim(run_dir, echo):
                if (run_dir / LAST_STEP_EVAL / "metrics.csv").is_file():
                    continue
                record = json.loads((run_dir / DONE_MARKER).read_text())
                record["test_mean_dice_last"] = _evaluate_last_step(run_dir, progress, trust_checkpoint)
                write_text_atomic(run_dir / DONE_MARKER, json.dumps(record, indent=2) + "\n")
        except RunFolderBusyError:
            echo(f"{run.name}: another process holds it; its last step is evaluated there")
            continue
        echo(f"{run.name}: test mean Dice at the last step {record['test_mean_dice_last']:.4f}")


def _claim(folder: Path, echo: Callable[[str], None]) -> RunFolderLock:
    """This worker's claim on a run or stage folder (raises :class:`RunFolderBusyError` on entry
    when another live process holds it)."""
    return RunFolderLock(folder, "medcontext experiment", name=STUDY_CLAIM, warn=echo)


def run_study(
    runs: Sequence[StudyRun | PretrainStage],
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
        runs: the plan (e.g. :func:`~medcontext.study.definitions.hippocampus_plan`): runs and
            pretraining stages (each a stage finished before the runs that start from it).
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
    done = [r for r in runs if (out / r.name / done_marker(r)).is_file()]
    todo = [r for r in runs if r not in done]
    stages = sum(isinstance(r, PretrainStage) for r in runs)
    echo(f"study {out}: {len(runs) - stages} runs" + (f" and {stages} pretraining stages" if stages else "")
         + f", {len(done)} finished, {len(todo)} to go")
    if last_step:
        _add_last_step([r for r in done if isinstance(r, StudyRun)], out, echo, progress, trust_checkpoint)
    records, elsewhere = [], []
    for index, item in enumerate(todo, start=1):
        if max_runs is not None and len(records) >= max_runs:
            break
        try:
            with _claim(out / item.name, echo):
                if (out / item.name / done_marker(item)).is_file():  # another worker finished it meanwhile
                    continue
                echo(f"[{index}/{len(todo)}] {item.name}")
                if isinstance(item, PretrainStage):
                    record = _pretrain_one(item, data, list(test_ids), out / item.name, echo, progress, trust_checkpoint)
                else:
                    record = _run_one(item, data, list(test_ids), out / item.name, echo, progress, trust_checkpoint,
                                      last_step)
        except RunFolderBusyError as err:
            holder = err.holder.describe() if err.holder is not None else "another process"
            echo(f"[{index}/{len(todo)}] {item.name}: skipped, {holder} holds {err.folder or item.name}")
            elsewhere.append(item.name)
            continue
        if record is None:
            echo(f"study stopped during {item.name} before its last step; run the same command again to continue")
            break
        echo(f"[{index}/{len(todo)}] {item.name}: {_record_line(record)}")
        with (out / "study.jsonl").open("a") as log:
            log.write(json.dumps(record) + "\n")
        records.append(record)
    if elsewhere:
        echo(f"{len(elsewhere)} run(s) held by other processes, not run here: {', '.join(elsewhere)}")
    return records


def _record_line(record: dict) -> str:
    """What a finished run or stage reports on its line."""
    if record.get("kind") == "pretrain":
        loss = f", last loss {record['final_loss']:.4f}" if record.get("final_loss") is not None else ""
        return (f"pretrained on {record['volumes']} volumes{loss} ({record['compute_seconds']:.0f} s of steps, "
                f"{record['wall_seconds']:.0f} s wall-clock)")
    text = (f"test mean Dice {record['test_mean_dice']:.4f} (train {record['train_seconds']:.0f} s, "
            f"eval {record['eval_seconds']:.0f} s")
    if record.get("pretrain"):
        text += f", plus {record[PRETRAIN_SECONDS]:.0f} s of steps of {record['pretrain']}"
    return text + ")"


@dataclass(frozen=True)
class RunStatus:
    """Where one run of a study stands.

    Attributes:
        state: ``finished`` (trained and evaluated), ``running`` (a live process on this host holds
            the folder's writer lock; ``step`` is its last logged step), ``interrupted`` (resumes
            from ``last.pt``),
            ``started`` (a folder without a checkpoint yet: starts again from step 0) or
            ``not started``.
        step: completed steps that a resume keeps (the checkpoint's step; ``steps`` when finished;
            the last logged step while running).
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


def study_status(runs: Sequence[StudyRun | PretrainStage], out: str | Path) -> list[RunStatus]:
    """The state of every run and pretraining stage of ``runs`` in the study folder ``out``; reads,
    never trains.

    An interrupted run's step is read from its ``last.pt`` (weights-only), so it is the step a
    resume starts from, not the last logged one.
    """
    statuses = []
    for run in runs:
        run_dir = Path(out) / run.name
        stage = isinstance(run, PretrainStage)
        steps = run.steps if stage else int(run.settings("", [])["train.steps"])
        log = read_metrics(run_dir / "metrics.jsonl")
        times = [float(r["step_time"]) for r in log if r.get("kind") == "train" and "step_time" in r]
        median = float(np.median(times)) if times else None
        config = run_dir / "config.yaml"
        precision = "fp32" if stage else load_config(config).train.precision if config.is_file() else "auto"
        machine = run_machine(log, precision) if log else ""
        common = {"name": run.name, "steps": steps, "median_step_s": median, "machine": machine}
        if (run_dir / done_marker(run)).is_file():
            record = json.loads((run_dir / done_marker(run)).read_text())
            dice = record.get("test_mean_dice")
            statuses.append(RunStatus(state="finished", step=steps, test_mean_dice=dice, **common))
        elif _writer_alive(run_dir):
            logged = [int(r["step"]) for r in log if r.get("kind") == "train" and "step" in r]
            statuses.append(RunStatus(state="running", step=max(logged, default=0), **common))
        elif (run_dir / "last.pt").is_file():
            step, note = _saved_step(run_dir / "last.pt", stage)
            statuses.append(RunStatus(state="interrupted", step=step, note=note, **common))
        elif run_dir.is_dir():
            statuses.append(RunStatus(state="started", step=0, **common))
        else:
            statuses.append(RunStatus(state="not started", step=0, **common))
    return statuses


def _writer_alive(run_dir: Path) -> bool:
    """A live process on this host holds the run folder's writer lock (read from the lock file's
    content, never by locking it: a status must not make a starting writer think the folder busy)."""
    holder = read_holder(run_dir)
    return holder is not None and holder.host == socket.gethostname() and not holder.is_dead_here()


def _saved_step(path: Path, stage: bool) -> tuple[int, str]:
    """``(step, note)``: the step a resume starts from (read weights-only), or 0 and why the file
    cannot be read (a resume would refuse it too)."""
    from ..models.safe_load import UnreadableFileError, load_weights_file

    try:
        if stage:
            return int(load_weights_file(path, map_location="cpu")["step"]), ""
        return int(read_checkpoint(path)["step"]), ""
    except (CheckpointError, UntrustedFileError, UnreadableFileError, KeyError, TypeError) as err:
        return 0, f"last.pt unreadable: {err}"


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
