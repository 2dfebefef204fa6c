"""A markdown report over many evaluated runs: tables, paired differences, plots.

For every setting (architecture, number of training cases, training steps) and method: mean and
std over seeds of the per-class and mean Dice and HD95 (mm) on the test cases; the paired
difference MedContext minus baseline per seed (same seed = same training subset and
initialisation) with a 95% bootstrap interval over test cases, and over all seeds a
hierarchical bootstrap interval (seeds resampled, then test cases within each seed) that
decides the verdict: "better" or "worse" only when it excludes zero, so a verdict holds across
training randomness and not only across test cases (the statistics:
:mod:`medcontext.evaluation.statistics`). A run that started from weights (``model.init_checkpoint``)
is its own method, labelled ``VARIANT (pretrained)``, and its cost counts the compute of the
pretraining those weights came from (its study record's, or the ``medcontext pretrain`` folder
beside the weights). Figures: box plots of per-case Dice, training curves, validation Dice
against training steps (every seed), and an overlay.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..engine.config import load_config
from ..engine.host.machine import machine_label
from ..engine.training_log import read_metrics
from ..evaluation import figures, read_csv
from ..evaluation.statistics import hierarchical_bootstrap, paired_bootstrap, summarize
from ..io.atomic import write_text_atomic
from ..method.settings import DEFAULTS, VARIANTS

__all__ = ["RunResult", "collect_runs", "run_machine", "write_report", "pretraining_compute_seconds", "PRETRAIN_SECONDS"]

DEFAULT_RATIO = DEFAULTS.mask_ratio
DEFAULT_MOMENTUM = DEFAULTS.momentum
DEFAULT_BETA = DEFAULTS.beta
#: :func:`run_machine`'s answer (or its ending) for a log without ``start`` records
UNRECORDED_MACHINE = "machine not recorded"
#: the key of a fine-tuning run's ``study_done.json`` with the compute seconds of the pretraining
#: its weights came from (counted in the run's cost; every run of one pretraining repeats it)
PRETRAIN_SECONDS = "pretrain_compute_seconds"


@dataclass
class RunResult:
    """One evaluated run: its setting, method, seed and per-case metrics."""

    path: Path
    setting: str
    method: str
    seed: int
    classes: list[str]
    dice: dict[str, dict[str, float]]  # case -> class -> Dice
    hd95: dict[str, dict[str, float]]  # case -> class -> HD95 (NaN = missing)
    train_log: list[dict] = field(default_factory=list)
    val_log: list[dict] = field(default_factory=list)
    machine: str = UNRECORDED_MACHINE  # where it trained (:func:`run_machine`)
    unlabeled: int = 0  # unlabelled volumes it trained on (``split.json``)
    # scores without post-processing when evaluate applied one (dice/hd95 are then post-processed)
    raw_dice: dict[str, dict[str, float]] | None = None
    raw_hd95: dict[str, dict[str, float]] | None = None
    postprocessing: str = ""  # what was applied ("" = the run has no decision)
    # compute seconds of the pretraining its initial weights came from (None: from scratch, or not known)
    pretrain_seconds: float | None = None

    def case_mean_dice(self, cases: Sequence[str]) -> np.ndarray:
        """Mean Dice over classes per case, in the order of ``cases``."""
        return np.array([np.mean([self.dice[c][k] for k in self.classes]) for c in cases])


def _method_label(variant: str, ratio: float, momentum: float, beta: float = DEFAULT_BETA,
                  horizon: float | None = None, pretrained: bool = False) -> str:
    """The variant's name, with each setting it uses that differs from the defaults in brackets
    (first ``pretrained`` for a run that started from weights, ``model.init_checkpoint``)."""
    known = VARIANTS.get(variant)  # a variant this version does not know: every setting may matter
    uses_ratio, uses_momentum, uses_beta = (
        (known.uses_mask_ratio, known.uses_momentum, known.uses_beta) if known else (True, True, True)
    )
    notes = ["pretrained"] if pretrained else []
    if uses_ratio and not math.isclose(ratio, DEFAULT_RATIO):
        notes.append(f"ratio {ratio:g}")
    if uses_momentum and horizon is not None:
        notes.append(f"EMA horizon {horizon:g} of the run")
    elif uses_momentum and not math.isclose(momentum, DEFAULT_MOMENTUM):
        notes.append(f"momentum {momentum:g}")
    if uses_beta and not math.isclose(beta, DEFAULT_BETA):
        notes.append(f"beta {beta:g}")
    return f"{variant} ({', '.join(notes)})" if notes else variant


#: a run's test metrics in a records folder (``scripts/collect_study_records.py``: the small files
#: of a run kept in the repository, since run folders do not outlive a machine)
RECORDED_TEST_METRICS = "test_metrics.csv"
#: the raw (not post-processed) test metrics in a records folder, when post-processing changed them
RECORDED_RAW_TEST_METRICS = "test_metrics_raw.csv"


def recorded_metrics(eval_name: str = "eval", raw: bool = False) -> str:
    """The records folder's name of a run's ``EVAL/metrics.csv`` (``EVAL/raw/metrics.csv`` with ``raw``):
    :data:`RECORDED_TEST_METRICS` (:data:`RECORDED_RAW_TEST_METRICS`) for ``eval``, else
    ``test_metrics_EVAL.csv`` (``test_metrics_EVAL_raw.csv``), e.g. the last-step evaluation's."""
    if eval_name == "eval":
        return RECORDED_RAW_TEST_METRICS if raw else RECORDED_TEST_METRICS
    return f"test_metrics_{eval_name}{'_raw' if raw else ''}.csv"


def collect_runs(run_dirs: Iterable[str | Path], *, eval_name: str = "eval") -> list[RunResult]:
    """Read every run folder that has ``config.yaml`` and ``EVAL/metrics.csv``, or a records
    folder of a run (``config.yaml`` and :func:`recorded_metrics` of ``eval_name``).

    Raises:
        FileNotFoundError: a folder lacks one of them (named in the message).
    """
    results = []
    for run_dir in map(Path, run_dirs):
        config_path, metrics_path = run_dir / "config.yaml", run_dir / eval_name / "metrics.csv"
        if not metrics_path.is_file() and (run_dir / recorded_metrics(eval_name)).is_file():
            metrics_path = run_dir / recorded_metrics(eval_name)
        for needed in (config_path, metrics_path):
            if not needed.is_file():
                raise FileNotFoundError(f"{run_dir} is not an evaluated run: {needed} is missing (run medcontext evaluate)")
        cfg = load_config(config_path)
        table = read_csv(metrics_path)
        dice, hd95 = _case_metrics(table)
        raw_dice, raw_hd95 = _raw_case_metrics(run_dir, eval_name)
        log = read_metrics(run_dir / "metrics.jsonl")
        k = cfg.data.train_cases if cfg.data.train_cases is not None else "all"
        results.append(
            RunResult(
                path=run_dir,
                setting=f"{cfg.model.name}, k={k}, {cfg.train.steps} steps",
                method=_method_label(cfg.method.variant, cfg.method.mask_ratio, cfg.method.momentum, cfg.method.beta,
                                     cfg.method.momentum_horizon, pretrained=bool(cfg.model.init_checkpoint)),
                seed=cfg.train.seed,
                classes=list(table.class_names),
                dice=dict(dice),
                hd95=dict(hd95),
                train_log=[r for r in log if r.get("kind") == "train"],
                val_log=[r for r in log if r.get("kind") == "val"],
                machine=run_machine(log, cfg.train.precision),
                unlabeled=_unlabeled_count(run_dir),
                raw_dice=raw_dice,
                raw_hd95=raw_hd95,
                postprocessing=_postprocessing_text(run_dir),
                pretrain_seconds=_pretraining_seconds(run_dir, cfg.model.init_checkpoint),
            )
        )
    return results


def _pretraining_seconds(run_dir: Path, init_checkpoint: str | None) -> float | None:
    """The compute of the pretraining a run started from: its study record's
    (:data:`PRETRAIN_SECONDS`), else the log of the ``medcontext pretrain`` folder that holds its
    ``model.init_checkpoint``; ``None`` from scratch, or for weights of unknown cost."""
    from .execution import DONE_MARKER

    if not init_checkpoint:
        return None
    record = run_dir / DONE_MARKER
    if record.is_file():
        seconds = json.loads(record.read_text(encoding="utf-8")).get(PRETRAIN_SECONDS)
        if seconds is not None:
            return float(seconds)
    folder = Path(init_checkpoint).parent
    return pretraining_compute_seconds(folder) if (folder / "config.json").is_file() else None


def pretraining_compute_seconds(run_dir: str | Path) -> float | None:
    """Seconds of training steps of a ``medcontext pretrain`` run folder, from its
    ``metrics.jsonl`` by the rule of :func:`run_compute_seconds`; ``None`` without step times."""
    timed = _steps_seconds(read_metrics(Path(run_dir) / "metrics.jsonl", kind="train"))
    return timed[0] if timed is not None else None


def _unlabeled_count(run_dir: Path) -> int:
    """How many unlabelled volumes a run trained on (its ``split.json``'s ``unlabeled`` list; 0 without)."""
    path = run_dir / "split.json"
    if not path.is_file():
        return 0
    return len(json.loads(path.read_text(encoding="utf-8")).get("unlabeled", []))


def _case_metrics(table) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """``(case -> class -> Dice, case -> class -> HD95)`` of a metric table."""
    dice: dict[str, dict[str, float]] = defaultdict(dict)
    hd95: dict[str, dict[str, float]] = defaultdict(dict)
    for row in table.rows:
        dice[row.case_id][row.class_name] = row.dice
        hd95[row.case_id][row.class_name] = row.hd95
    return dict(dice), dict(hd95)


def _raw_case_metrics(run_dir: Path, eval_name: str):
    """The raw scores of a run whose evaluation applied a post-processing, else ``(None, None)``."""
    for path in (run_dir / eval_name / "raw" / "metrics.csv", run_dir / recorded_metrics(eval_name, raw=True)):
        if path.is_file():
            return _case_metrics(read_csv(path))
    return None, None


def _postprocessing_text(run_dir: Path) -> str:
    """What the run's post-processing decision applies ("" without one)."""
    from medcontext.evaluation.postprocessing import read_postprocessing

    decision = read_postprocessing(run_dir)
    return decision.describe() if decision is not None else ""


def _postprocessing_lines(runs: list[RunResult]) -> list[str]:
    """Raw against post-processed test scores per method (only when some run has a decision)."""
    if not any(run.postprocessing for run in runs):
        return []
    lines = ["Post-processing (largest connected components, chosen per run on its validation cases): test mean "
             "Dice (%) and mean HD95 (mm), raw -> post-processed, mean ± std over seeds; runs without a decision "
             "count with their raw scores.", "",
             "| method | seeds | with a decision | changed | mean Dice raw | post-processed | mean HD95 raw (mm) | "
             "post-processed |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_method: dict[str, list[RunResult]] = defaultdict(list)
    for run in runs:
        by_method[run.method].append(run)
    for method, method_runs in sorted(by_method.items(), key=lambda item: _method_order(item[0])):
        post = [_run_summary(r) for r in method_runs]
        raw = [_run_summary(replace(r, dice=r.raw_dice, hd95=r.raw_hd95)) if r.raw_dice is not None else p
               for r, p in zip(method_runs, post)]

        def stat(summaries, key, scale=100.0, digits=1):
            over_seeds = summarize((s[key] for s in summaries), finite_only=True)
            return _fmt(over_seeds.mean, over_seeds.std, scale, digits)

        decided = sum(bool(r.postprocessing) for r in method_runs)
        changed = sum(r.raw_dice is not None for r in method_runs)
        lines.append(
            f"| {method} | {len(method_runs)} | {decided} | {changed} | {stat(raw, 'dice:mean')} | "
            f"{stat(post, 'dice:mean')} | {stat(raw, 'hd95:mean', 1.0, 2)} | {stat(post, 'hd95:mean', 1.0, 2)} |"
        )
    return lines + [""]


def run_machine(log: Sequence[dict], precision_setting: str = "auto") -> str:
    """Where a run trained, from the ``start`` records of its log, e.g. ``fp32 on AMD EPYC (AVX2)``;
    a run resumed elsewhere lists each machine in order (``A, then B``). Logs written before
    these records existed give ``machine not recorded`` (with the precision when the config
    named one rather than ``auto``)."""
    labels = list(dict.fromkeys(machine_label(r) for r in log if r.get("kind") == "start"))
    if labels:
        return ", then ".join(labels)
    if precision_setting != "auto":
        return f"{precision_setting}, {UNRECORDED_MACHINE}"
    return UNRECORDED_MACHINE


def _fmt(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _run_summary(run: RunResult) -> dict[str, float]:
    cases = sorted(run.dice)
    out = {}
    for k in run.classes:
        out[f"dice:{k}"] = summarize(run.dice[c][k] for c in cases).mean
        hd = summarize((run.hd95[c][k] for c in cases), finite_only=True)
        out[f"hd95:{k}"] = hd.mean
        out[f"missing:{k}"] = hd.missing
    out["dice:mean"] = summarize(out[f"dice:{k}"] for k in run.classes).mean
    out["hd95:mean"] = summarize((out[f"hd95:{k}"] for k in run.classes), finite_only=True).mean
    return out


def _method_table(runs: list[RunResult]) -> list[str]:
    classes = runs[0].classes
    by_method: dict[str, list[dict]] = defaultdict(list)
    unlabeled: dict[str, set[int]] = defaultdict(set)
    for run in runs:
        by_method[run.method].append(_run_summary(run))
        unlabeled[run.method].add(run.unlabeled)
    semi = any(n for counts in unlabeled.values() for n in counts)  # the column only where a run used some
    header = (
        "| method | seeds | " + ("unlabelled volumes | " if semi else "") + " | ".join(f"Dice {k}" for k in classes)
        + " | **mean Dice** | " + " | ".join(f"HD95 {k} (mm)" for k in classes) + " | mean HD95 (mm) | HD95 missing |"
    )
    lines = [header, "|" + "---|" * (4 + 2 * len(classes) + 1 + semi)]
    for method, summaries in sorted(by_method.items(), key=lambda item: _method_order(item[0])):
        def stat(key, scale=100.0, digits=1):
            over_seeds = summarize((s[key] for s in summaries), finite_only=True)
            return _fmt(over_seeds.mean, over_seeds.std, scale, digits)

        missing = sum(s[f"missing:{k}"] for s in summaries for k in classes)
        counts = sorted(unlabeled[method])
        column = (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}") + " | " if semi else ""
        lines.append(
            f"| {method} | {len(summaries)} | {column}" + " | ".join(stat(f"dice:{k}") for k in classes)
            + f" | **{stat('dice:mean')}** | " + " | ".join(stat(f"hd95:{k}", 1.0, 2) for k in classes)
            + f" | {stat('hd95:mean', 1.0, 2)} | {missing} |"
        )
    return lines


def _final_loss_lines(runs: list[RunResult], last_steps: int = 50) -> list[str]:
    """Table of the mean loss terms over each run's last ``last_steps`` logged steps, per seed."""
    by_method: dict[str, list[RunResult]] = defaultdict(list)
    for run in runs:
        if run.train_log:
            by_method[run.method].append(run)
    if not by_method:
        return []
    seeds = sorted({run.seed for group in by_method.values() for run in group})
    lines = [
        f"Loss terms, mean over the last {last_steps} steps of training, per seed "
        f"({' / '.join(f's{seed}' for seed in seeds)}):",
        "",
        "| method | supervised | masked-view (MSL) | consistency (CL) |",
        "|---|---|---|---|",
    ]
    terms = ("sup", "msl", "cl")
    for method, group in sorted(by_method.items(), key=lambda item: _method_order(item[0])):
        means = []  # per seed: term -> mean over the run's last steps
        for run in sorted(group, key=lambda r: r.seed):
            final_step = max(r["step"] for r in run.train_log)
            tail = [r for r in run.train_log if r["step"] > final_step - last_steps]
            means.append({term: np.mean([r.get(term, math.nan) for r in tail]) for term in terms})
        cells = [" / ".join(f"{seed_means[term]:.2f}" for seed_means in means) for term in terms]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _method_order(method: str) -> tuple[int, str]:
    order = ["baseline", "medcontext", "no_teacher", "msl_only", "cl_only"]
    base = method.split(" ")[0]
    return (order.index(base) if base in order else len(order), method)


def _paired_lines(runs: list[RunResult], reference: str = "baseline") -> list[str]:
    by_key = {(r.method, r.seed): r for r in runs}
    methods = sorted({r.method for r in runs if r.method != reference}, key=_method_order)
    lines = [
        f"| method − {reference} | seed | Δ mean Dice (points) | 95% interval | verdict |",
        "|---|---|---:|---|---|",
    ]
    for method in methods:
        rows = []
        for seed in sorted({r.seed for r in runs if r.method == method}):
            if (reference, seed) not in by_key:
                continue
            ours, base = by_key[(method, seed)], by_key[(reference, seed)]
            cases = sorted(set(ours.dice) & set(base.dice))
            diff = ours.case_mean_dice(cases) - base.case_mean_dice(cases)
            rows.append(diff)
            mean, low, high = paired_bootstrap(diff, seed=seed)
            lines.append(f"| {method} | {seed} | {100 * mean:+.2f} | [{100 * low:+.2f}, {100 * high:+.2f}] over test cases | |")
        if len(rows) > 1:
            mean, low, high = hierarchical_bootstrap(rows)
            lines.append(
                f"| **{method}** | all {len(rows)} | **{100 * mean:+.2f}** | **[{100 * low:+.2f}, {100 * high:+.2f}]** "
                f"over seeds and cases | **{_verdict(low, high)}** |"
            )
        elif rows:
            lines.append(f"| **{method}** | 1 | | | one seed: no verdict |")
    return lines


def _verdict(low: float, high: float) -> str:
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no measurable difference"


def _plot_boxes(by_setting: dict[str, list[RunResult]], path: Path) -> None:
    plt = figures.pyplot()
    settings = list(by_setting)
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        runs = by_setting[setting]
        methods = sorted({r.method for r in runs}, key=_method_order)
        data = []
        for method in methods:
            values = [r.case_mean_dice(sorted(r.dice)) for r in runs if r.method == method]
            data.append(np.concatenate(values))
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(methods) + 1), [m.replace(" (", "\n(") for m in methods], rotation=30, fontsize=8)
        ax.set_title(setting)
        ax.set_ylabel("per-case mean Dice (all seeds)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    figures.save_png(fig, path, dpi=110)


def _plot_curves(by_setting: dict[str, list[RunResult]], path: Path) -> None:
    plt = figures.pyplot()
    settings = list(by_setting)
    fig, axes = plt.subplots(len(settings), 3, figsize=(15, 3.2 * len(settings)), squeeze=False)
    for row, setting in zip(axes, settings):
        for run in sorted(by_setting[setting], key=lambda r: (_method_order(r.method), r.seed)):
            if run.seed != min(r.seed for r in by_setting[setting]):
                continue
            steps = [r["step"] for r in run.train_log]
            row[0].plot(steps, figures.smooth([r.get("sup", np.nan) for r in run.train_log]), label=run.method)
            if any(r.get("msl") for r in run.train_log):
                row[1].plot(steps, figures.smooth([r.get("msl", np.nan) for r in run.train_log]), label=f"{run.method} MSL")
            if any(r.get("cl") for r in run.train_log):
                row[1].plot(steps, figures.smooth([r.get("cl", np.nan) for r in run.train_log]), "--", label=f"{run.method} CL")
            if run.val_log:
                row[2].plot([r["step"] for r in run.val_log], [r.get("mean_dice", np.nan) for r in run.val_log], "o-", label=run.method)
        row[0].set_title(f"{setting}: supervised loss (seed {min(r.seed for r in by_setting[setting])})")
        row[1].set_title("masked-student (MSL) and consistency (CL) losses")
        row[2].set_title("validation mean Dice")
        for ax in row:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    figures.save_png(fig, path, dpi=100)


def _val_curve(run: RunResult) -> dict[int, float]:
    return {int(r["step"]): float(r["mean_dice"]) for r in run.val_log if "mean_dice" in r}


def _validation_lines(runs: list[RunResult], max_columns: int = 12) -> list[str]:
    """Validation mean Dice (mean over seeds) at every validated step, one row per method, and the
    mean over seeds of each run's best validation Dice (the value that selects its checkpoint, and
    the criterion for choosing a setting without looking at the test cases)."""
    curves = {id(run): _val_curve(run) for run in runs}
    steps = sorted(set.intersection(*(set(c) for c in curves.values()))) if curves else []
    if len(steps) < 3:
        return []
    if len(steps) > max_columns:  # keep the first, the last and evenly spaced ones between
        keep = np.unique(np.round(np.linspace(0, len(steps) - 1, max_columns)).astype(int))
        steps = [steps[i] for i in keep]
    by_method: dict[str, list[RunResult]] = defaultdict(list)
    for run in runs:
        by_method[run.method].append(run)
    lines = [
        "Validation mean Dice (percent, mean over seeds; the validation cases select the checkpoint and are "
        "disjoint from the test cases) by training step, and each run's best validation Dice (mean over seeds):",
        "",
        "| method | seeds | " + " | ".join(str(s) for s in steps) + " | best |",
        "|---|---|" + "---:|" * (len(steps) + 1),
    ]
    for method, group in sorted(by_method.items(), key=lambda item: _method_order(item[0])):
        cells = [f"{100 * np.mean([curves[id(r)][s] for r in group]):.1f}" for s in steps]
        cells.append(f"{100 * np.mean([max(curves[id(r)].values()) for r in group]):.1f}")
        lines.append(f"| {method} | {len(group)} | " + " | ".join(cells) + " |")
    return lines + [""]


def run_compute_seconds(run: RunResult) -> tuple[float, float, float] | None:
    """``(training steps, validation, median step)`` seconds of one run, from its log.

    Read from the logged step and validation times rather than the study runner's wall clock,
    which a resumed run restarts: steps x the mean logged step time (a resumed run logs the
    steps after its last checkpoint twice; the last record of a step counts), plus every
    validation's time. None when the log has no step times.
    """
    timed = _steps_seconds(run.train_log)
    if timed is None:
        return None
    val_times = {int(r["step"]): float(r.get("time", 0.0)) for r in run.val_log}
    return timed[0], float(sum(val_times.values())), timed[1]


def _steps_seconds(train_log: Sequence[dict]) -> tuple[float, float] | None:
    """``(steps x mean step time, median step time)`` of a log's training records (the last
    record of a step counts); ``None`` without step times."""
    step_times = {int(r["step"]): float(r["step_time"]) for r in train_log if "step_time" in r}
    if not step_times:
        return None
    times = list(step_times.values())
    return max(step_times) * float(np.mean(times)), float(np.median(times))


def _cost_lines(runs: list[RunResult]) -> list[str]:
    """Each method's cost with the pretraining of its initial weights counted in (only where some
    run started from pretrained weights)."""
    if not any(run.pretrain_seconds is not None for run in runs):
        return []
    by_method: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for run in runs:
        compute = run_compute_seconds(run)
        if compute is not None:
            by_method[run.method].append((run.pretrain_seconds or 0.0, compute[0], compute[1]))
    lines = ["Cost per method with its pretraining (minutes, mean over seeds, from the logged step and validation "
             "times; test evaluation not included): the pretraining of a seed serves every run fine-tuned from its "
             "weights and is counted in each of them, so the total is what one arm costs from nothing.", "",
             "| method | seeds | pretraining | fine-tuning steps | validation | total |", "|---|---:|---:|---:|---:|---:|"]
    for method, values in sorted(by_method.items(), key=lambda item: _method_order(item[0])):
        pre, steps, validation = (float(np.mean([v[i] for v in values])) for i in range(3))
        lines.append(f"| {method} | {len(values)} | {pre / 60:.1f} | {steps / 60:.1f} | {validation / 60:.1f} | "
                     f"{(pre + steps + validation) / 60:.1f} |")
    return lines + [""]


def _time_lines(runs: list[RunResult]) -> list[str]:
    """Compute per method and machine; a step-cost ratio only against baseline runs of the same machine."""
    timed: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    for run in runs:
        compute = run_compute_seconds(run)
        if compute is not None:
            timed[(run.method, run.machine)].append(compute)
    if not timed:
        return []
    machines = sorted({machine for _, machine in timed})
    parts = []
    for (method, machine), values in sorted(timed.items(), key=lambda item: (_method_order(item[0][0]), item[0][1])):
        steps, validation = (np.mean([v[i] for v in values]) for i in range(2))
        median_step = np.median([v[2] for v in values])
        baseline = timed.get(("baseline", machine))
        ratio = ""
        if baseline and method != "baseline":
            ratio = f", {median_step / np.median([c[2] for c in baseline]):.2f}x the baseline's step"
        where = f" [{len(values)} run{'s' if len(values) > 1 else ''}, {machine}]" if len(machines) > 1 else ""
        parts.append(f"{method} {steps / 60:.0f} min of steps ({median_step:.2f} s median step{ratio}) "
                     f"+ {validation / 60:.0f} min of validation{where}")
    where = ("" if machines == [UNRECORDED_MACHINE] else f" All runs: {machines[0]}." if len(machines) == 1 else
             " The runs trained on different machines or precisions (in brackets): compare step times only "
             "within one machine.")
    unrecorded = sum(len(values) for (_, machine), values in timed.items() if machine.endswith(UNRECORDED_MACHINE))
    if unrecorded:
        where += (f" {unrecorded} run(s) logged no machine (trained before runs recorded it), so their step times "
                  "may come from different machines.")
    return ["Training time per run (mean over seeds, from the logged step and validation times; test "
            "evaluation not included; the median step is the median over seeds of each run's median step): "
            + "; ".join(parts) + "." + where + " These are wall-clock times: they follow the load of the machine "
            "while each run trained, so compare methods' step cost with `benchmarks/bench_step.py` on a quiet "
            "machine.", ""]


def _plot_validation(by_setting: dict[str, list[RunResult]], path: Path) -> bool:
    """Validation mean Dice against step: every seed thin, the mean over seeds bold."""
    plt = figures.pyplot()
    settings = [s for s, runs in by_setting.items() if sum(len(_val_curve(r)) >= 3 for r in runs) >= 1]
    if not settings:
        return False
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        by_method: dict[str, list[dict[int, float]]] = defaultdict(list)
        for run in by_setting[setting]:
            curve = _val_curve(run)
            if len(curve) >= 3:
                by_method[run.method].append(curve)
        for index, (method, curves) in enumerate(sorted(by_method.items(), key=lambda item: _method_order(item[0]))):
            color = f"C{index}"
            for curve in curves:
                ax.plot(list(curve), list(curve.values()), color=color, alpha=0.3, linewidth=0.8)
            common = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(common, [np.mean([c[s] for c in curves]) for s in common], color=color, linewidth=2,
                    label=f"{method} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        ax.set_title(f"{setting}: validation mean Dice")
        ax.set_xlabel("training step")
        ax.set_ylabel("mean Dice")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    figures.save_png(fig, path, dpi=110)
    return True


def _plot_overlay(runs: list[RunResult], data_root: Path | None, path: Path) -> bool:
    """Fig. 2-style panel: image, ground truth, baseline and MedContext on one test case."""
    import nibabel as nib

    plt = figures.pyplot()
    base = next((r for r in runs if r.method == "baseline"), None)
    ours = next((r for r in runs if r.method == "medcontext" and base is not None and r.seed == base.seed), None)
    if base is None or ours is None:
        return False
    if not (base.path / "dataset.json").is_file():  # a records folder: no predictions to show
        return False
    cases = sorted(set(base.dice) & set(ours.dice))
    gain = ours.case_mean_dice(cases) - base.case_mean_dice(cases)
    case = cases[int(np.argsort(gain)[len(gain) // 2])]  # the median case, not a cherry-pick
    spec = json.loads((base.path / "dataset.json").read_text())
    record = next((c for c in spec["cases"] if c["case_id"] == case), None)
    root = Path(data_root or spec.get("root", ""))
    if record is None:
        return False
    image_path = root / record["images"][0]
    label_path = root / record["label"]
    pred_paths = [r.path / "eval" / "predictions" / f"{case}.nii.gz" for r in (base, ours)]
    if not all(p.is_file() for p in [image_path, label_path, *pred_paths]):
        return False
    image = np.asarray(nib.load(image_path).dataobj, dtype=float)
    label = np.asarray(nib.load(label_path).dataobj).astype(int)
    preds = [np.asarray(nib.load(p).dataobj).astype(int) for p in pred_paths]
    z = figures.slice_with_most_labels(label)
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    titles = ["image", "ground truth", f"baseline (Dice {base.case_mean_dice([case])[0]:.3f})",
              f"MedContext (Dice {ours.case_mean_dice([case])[0]:.3f})"]
    figures.draw_overlays(axes, image, list(zip(titles, [None, label, *preds])), z, cmap="tab10", vmin=0, vmax=9,
                          alpha=0.55, title_size=9)
    fig.suptitle(f"test case {case} (median MedContext − baseline gain), axial slice {z}, seed {base.seed}", fontsize=9)
    fig.tight_layout()
    figures.save_png(fig, path, dpi=120)
    return True


def write_report(
    runs: list[RunResult],
    out_md: str | Path,
    *,
    title: str = "MedContext study",
    preamble: str = "",
    data_root: str | Path | None = None,
    also_against: Sequence[str] = (),
) -> Path:
    """Write the markdown report and its PNG figures next to it; returns the report path.

    ``also_against``: method labels (e.g. ``"medcontext"``) that every other method is compared
    with too, paired per seed like the comparison with the baseline."""
    out_md = Path(out_md)
    figure_dir = out_md.parent
    figure_dir.mkdir(parents=True, exist_ok=True)
    by_setting: dict[str, list[RunResult]] = defaultdict(list)
    for run in runs:
        by_setting[run.setting].append(run)
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble.strip(), ""]
    lines += [
        "Dice in percent (mean ± std over seeds of the test-set mean), HD95 in mm (finite values only; "
        "cases where exactly one of prediction and truth is empty have no HD95 and are counted under "
        "'HD95 missing'). Δ = paired difference per seed (same training subset and initialisation), "
        "95% percentile bootstrap over test cases (5000 resamples); the 'all' row's interval is a hierarchical "
        "bootstrap over seeds and then test cases, and only it gives a verdict: 'better' or 'worse' when it "
        "excludes zero.",
        "",
    ]
    for setting, setting_runs in by_setting.items():
        lines += [f"## {setting}", "", *_method_table(setting_runs), ""]
        lines += _postprocessing_lines(setting_runs)
        methods = {r.method for r in setting_runs}
        for reference in dict.fromkeys(("baseline", *also_against)):
            if reference in methods and len(methods) > 1:
                lines += [*_paired_lines(setting_runs, reference), ""]
        final_losses = _final_loss_lines(setting_runs)
        if final_losses:
            lines += [*final_losses, ""]
        lines += _validation_lines(setting_runs)
        lines += _time_lines(setting_runs)
        lines += _cost_lines(setting_runs)
    box_path, curve_path, overlay_path = figure_dir / "dice_boxplots.png", figure_dir / "training_curves.png", figure_dir / "overlay.png"
    _plot_boxes(by_setting, box_path)
    _plot_curves(by_setting, curve_path)
    lines += ["## Figures", "", f"![per-case Dice]({box_path.name})", "", f"![training curves]({curve_path.name})", ""]
    validation_path = figure_dir / "validation_curves.png"
    if _plot_validation(by_setting, validation_path):
        lines += [f"![validation Dice against training steps]({validation_path.name})", ""]
    first_setting = next(iter(by_setting.values()))
    if _plot_overlay(first_setting, Path(data_root) if data_root else None, overlay_path):
        lines += [f"![qualitative comparison]({overlay_path.name})", ""]
    write_text_atomic(out_md, "\n".join(lines) + "\n")
    return out_md
