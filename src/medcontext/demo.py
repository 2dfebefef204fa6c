"""``medcontext demo``: baseline vs MedContext, few-shot, on a synthetic phantom, on a CPU.

What it does, all in ``OUT``:

1. writes a phantom dataset (:func:`medcontext.data.generate_phantom`) whose look-alike
   organs (liver/spleen, right/left kidney, aorta/vena cava) differ only by context;
2. trains a small 3D U-Net twice with the same seed, split, crops, steps and learning-rate
   schedule: ``baseline`` (supervised Dice-CE) and ``medcontext`` (+ masked view and EMA
   teacher), on ``k`` training cases (default 2: the few-shot regime where context matters
   most; with 4 cases the baseline already reaches about 0.97 mean Dice on this phantom);
3. evaluates both on the same held-out test cases (Dice and HD95 per class at the labels'
   geometry, :mod:`medcontext.evaluation`);
4. prints a comparison table and writes ``results.md``, ``overlay.png`` (a slice: image,
   ground truth, both predictions) and ``curves.png`` (loss terms and validation Dice).

Interrupted (Ctrl-C, SIGTERM), the demo saves the run in training and exits with 130/143
without evaluating anything; the same command continues it (finished runs are kept, the
interrupted one resumes from its ``last.pt``). Other settings start the folder afresh.

Budgets: 300 steps of one 32^3 crop per variant (``--quick``: 100). On CPUs without native bf16
the runs are fp32 (precision ``auto``); BENCHMARKS.md ("Portable CPU defaults") has the times
measured with oneDNN capped at AVX2 and the estimate for an idle 2-core AVX2-only CPU.
The numbers depend on ``k`` and the seed; the demo shows them as they come out.
Both runs share every setting except ``method.variant``; the teacher momentum is scaled to
the short run (:func:`short_run_momentum`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from medcontext.engine.config import ConfigError, TrainConfig, load_config
from medcontext.evaluation import figures
from medcontext.io.atomic import write_text_atomic

__all__ = ["DemoBudget", "BUDGETS", "demo_config", "run_demo", "DemoResult"]

VARIANTS = ("baseline", "medcontext")
_MARKER = "demo.json"


@dataclass(frozen=True)
class DemoBudget:
    """Size of a demo run (both variants get the same)."""

    cases: int  # labelled phantom cases generated
    shape: tuple[int, int, int]  # phantom volume shape
    steps: int  # optimizer steps per variant
    val_cases: int
    eval_every: int


BUDGETS = {
    "quick": DemoBudget(cases=10, shape=(48, 48, 48), steps=100, val_cases=1, eval_every=25),
    "full": DemoBudget(cases=16, shape=(48, 48, 48), steps=300, val_cases=2, eval_every=50),
}


def demo_config(data_dir: str | Path, variant: str, budget: DemoBudget, *, train_cases: int, seed: int,
                steps: int | None = None) -> TrainConfig:
    """The configuration of one demo run (identical for both variants except ``method.variant``)."""
    steps = steps or budget.steps
    return load_config(
        None,
        {
            "data.path": str(Path(data_dir).resolve()),
            "data.preset": "msd",
            "data.train_cases": train_cases,
            "data.val_cases": budget.val_cases,
            "data.test_cases": budget.cases - train_cases - budget.val_cases,
            "data.num_samples": 1,  # one crop per step: half the cost of two (BENCHMARKS.md, AVX2-only CPUs)
            "model.name": "unet3d",
            "model.options": {"size": "small"},
            "model.roi": [32, 32, 32],
            "method.variant": variant,
            "method.momentum": short_run_momentum(steps),
            "optim.name": "adamw",
            "optim.lr": 3e-3,
            "optim.weight_decay": 1e-5,
            "optim.schedule": "warmup_cosine",
            "optim.warmup_steps": steps // 20,
            "train.steps": steps,
            "train.seed": seed,
            "train.precision": "auto",
            "train.device": "cpu",
            "train.checkpoint_every": steps,
            "eval.every": min(budget.eval_every, steps),
        },
    )


def short_run_momentum(steps: int) -> float:
    """Teacher momentum at step 0 for a short run: ``1 - 15 / steps``, within [0.5, 0.996].

    The paper's 0.996 gives the EMA teacher a memory of ``1 / (1 - m) = 250`` steps, a small
    part of its 25k-90k-step runs but most of a 300-step CPU run, where the teacher would stay
    close to its random initialisation. This keeps the memory at about 7 % of the run
    (20 steps of 300); for runs of 3750 steps and more it is the paper's 0.996.
    """
    return float(min(0.996, max(0.5, 1.0 - 15.0 / steps)))


@dataclass
class DemoResult:
    """Paths and numbers of a finished demo."""

    out: Path
    runs: dict[str, Path]
    summaries: dict[str, object] = field(default_factory=dict)  # variant -> TableSummary
    table: str = ""
    seconds: float = 0.0


def _prepare_out(out: Path, settings: dict | None = None) -> bool:
    """Make ``out`` ready for a demo with ``settings``; ``True`` when it continues an earlier,
    interrupted demo with the same settings (its runs are kept), ``False`` when it starts afresh."""
    if out.exists() and any(out.iterdir()) and not (out / _MARKER).exists():
        raise ConfigError(f"{out} exists and is not a demo folder; choose another --out (the demo overwrites its folder)")
    if settings is not None and (out / _MARKER).is_file():
        try:
            previous = json.loads((out / _MARKER).read_text())
        except ValueError:
            previous = None
        if previous == settings and not (out / "results.md").exists():
            return True
    for name in (*VARIANTS, "phantom"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    for name in ("results.md", "overlay.png", "curves.png"):
        (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return False


def _finished_steps(run_dir: Path) -> int | None:
    """Completed steps saved in ``run_dir/last.pt`` (read weights-only), ``None`` without one."""
    from medcontext.engine.checkpoint import read_checkpoint

    last = run_dir / "last.pt"
    return int(read_checkpoint(last)["step"]) if last.is_file() else None


def run_demo(
    out: str | Path = "medcontext-demo",
    *,
    quick: bool = False,
    steps: int | None = None,
    train_cases: int = 2,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo (see the module docstring); returns where everything went."""
    from medcontext.data import generate_phantom
    from medcontext.engine.run_folder import train
    from medcontext.engine.host.signals import stop_if_interrupted
    from medcontext.run_scoring import evaluate_run

    start = time.perf_counter()
    budget = BUDGETS["quick" if quick else "full"]
    if train_cases < 1 or train_cases > budget.cases - budget.val_cases - 2:
        raise ConfigError(f"--train-cases must be in [1, {budget.cases - budget.val_cases - 2}], got {train_cases}")
    out = Path(out)
    settings = {"quick": quick, "seed": seed, "train_cases": train_cases, "steps": steps}
    continuing = _prepare_out(out, settings)
    write_text_atomic(out / _MARKER, json.dumps(settings) + "\n")
    if continuing:
        echo(f"continuing the interrupted demo in {out} (same settings)")
    data_dir = generate_phantom(out / "phantom", num_cases=budget.cases, shape=budget.shape, seed=seed)
    echo(f"phantom: {budget.cases} cases of {budget.shape} voxels in {data_dir}")

    result = DemoResult(out=out, runs={})
    for variant in VARIANTS:
        cfg = demo_config(data_dir, variant, budget, train_cases=train_cases, seed=seed, steps=steps)
        run_dir = out / variant
        done = _finished_steps(run_dir)
        result.runs[variant] = run_dir
        if done is not None and done >= cfg.train.steps:
            echo(f"\n=== {variant}: finished earlier ({done} steps) ===")
            continue
        echo(f"\n=== {variant}: {cfg.train.steps} steps, {train_cases} training cases ===")
        trained = train(cfg, run_dir, resume=done is not None, progress=progress, echo=echo)
        stop_if_interrupted(trained, f"the {variant} run in {run_dir}",
                            "Run the same `medcontext demo` command again to continue.")
    for variant, run_dir in result.runs.items():
        echo(f"\n=== evaluating {variant} ===")
        evaluation = evaluate_run(run_dir, progress=False, echo=lambda s: None, device="cpu")
        result.summaries[variant] = evaluation.table.summary()
    result.table = comparison_table(result.summaries)
    write_text_atomic(out / "results.md", "# medcontext demo\n\n" + result.table + "\n")
    write_overlay(out / "overlay.png", result.runs)
    write_curves(out / "curves.png", result.runs)
    result.seconds = time.perf_counter() - start
    echo("\n" + result.table)
    echo(f"\nwrote {out / 'results.md'}, {out / 'overlay.png'}, {out / 'curves.png'} ({result.seconds:.0f} s in total)")
    return result


def comparison_table(summaries: dict[str, object]) -> str:
    """A markdown table: Dice per class, mean Dice and mean HD95 for each variant."""
    variants = list(summaries)
    first = summaries[variants[0]]
    names = [c.class_name for c in first.classes]
    header = "| class | " + " | ".join(f"{v} Dice" for v in variants) + " | " + " | ".join(f"{v} HD95 mm" for v in variants) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(variants))]
    for name in names:
        dice = [summaries[v].by_class(name).dice_mean for v in variants]
        hd = [summaries[v].by_class(name).hd95_mean for v in variants]
        lines.append(f"| {name} | " + " | ".join(f"{d:.3f}" for d in dice) + " | " + " | ".join(_fmt_mm(h) for h in hd) + " |")
    mean_dice = [summaries[v].mean_dice for v in variants]
    mean_hd = [summaries[v].mean_hd95 for v in variants]
    lines.append("| **mean** | " + " | ".join(f"**{d:.3f}**" for d in mean_dice) + " | "
                 + " | ".join(f"**{_fmt_mm(h)}**" for h in mean_hd) + " |")
    missing = [summaries[v].hd95_missing for v in variants]
    cases = first.n_cases
    lines.append("")
    lines.append(f"{cases} held-out test cases; HD95 missing (one mask empty, not averaged): "
                 + ", ".join(f"{v} {m}" for v, m in zip(variants, missing)) + ".")
    return "\n".join(lines)


def _fmt_mm(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.2f}"


def _label_cmap(num_labels: int):
    from matplotlib.colors import ListedColormap
    import matplotlib

    base = matplotlib.colormaps["tab10"].colors
    colors = [(0, 0, 0, 0)] + [(*base[i % len(base)], 0.6) for i in range(num_labels - 1)]
    return ListedColormap(colors)


def write_overlay(path: Path, runs: dict[str, Path]) -> Path:
    """A slice of the first test case: image, ground truth and each run's prediction."""
    import nibabel as nib
    from matplotlib.patches import Patch

    from medcontext.engine.run_folder import load_run

    plt = figures.pyplot()
    info = load_run(next(iter(runs.values())))
    case = info.spec.get_case(sorted(info.split.test)[0])
    image = np.asarray(nib.load(str(case.images[0])).dataobj, dtype=np.float32)
    truth = np.asarray(nib.load(str(case.label)).dataobj).astype(np.int16)
    preds = {v: np.asarray(nib.load(str(r / "eval" / "predictions" / f"{case.case_id}.nii.gz")).dataobj).astype(np.int16)
             for v, r in runs.items()}
    z = figures.slice_with_most_labels(truth)
    cmap = _label_cmap(max(info.spec.labels) + 1)
    panels = [("image", None), ("ground truth", truth)] + [(v, p) for v, p in preds.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    figures.draw_overlays(axes, image, panels, z, cmap=cmap, vmin=0, vmax=max(info.spec.labels))
    handles = [Patch(color=cmap(value), label=name) for value, name in sorted(info.spec.labels.items()) if value]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{case.case_id}, axial slice z={z}")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return figures.save_png(fig, path, dpi=110)


def write_curves(path: Path, runs: dict[str, Path]) -> Path:
    """Training loss terms and validation mean Dice against the step, for every run."""
    from medcontext.engine.training_log import read_metrics

    plt = figures.pyplot()
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"total": "-", "sup": "--", "msl": ":", "cl": "-."}
    for i, (variant, run_dir) in enumerate(runs.items()):
        color = f"C{i}"
        train_rows = read_metrics(run_dir / "metrics.jsonl", "train")
        steps = np.array([r["step"] for r in train_rows])
        for term, style in styles.items():
            values = np.array([r.get(term, 0.0) for r in train_rows], dtype=float)
            if not np.any(values):
                continue
            ax_loss.plot(steps, figures.smooth(values), style, color=color, label=f"{variant} {term}")
        val = read_metrics(run_dir / "metrics.jsonl", "val")
        ax_dice.plot([r["step"] for r in val], [r["mean_dice"] for r in val], "o-", color=color, label=variant)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(f"loss (moving average of {figures.SMOOTHING_WINDOW} steps)")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=7)
    ax_dice.set_xlabel("step")
    ax_dice.set_ylabel("validation mean Dice")
    ax_dice.legend()
    fig.tight_layout()
    return figures.save_png(fig, path, dpi=110)
