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
4. prints a comparison table with a sentence naming the arm with the highest mean Dice and
   writes ``results.md``, ``overlay.png`` (a slice: image, ground truth, every prediction) and
   ``curves.png`` (loss terms and validation Dice).

``--semi`` (``semi=True``) adds a third arm, :data:`SEMI_VARIANT` (``medcontext_semi``: MedContext
plus the masked student's consistency with the teacher and the teacher's confident predictions on
unlabelled crops; :mod:`medcontext.method.settings`): :func:`medcontext.data.generate_phantom_images`
writes ``budget.unlabeled_cases`` more phantoms of the same seed (cases after the labelled ones) to
``OUT/unlabeled/`` as images only (their label maps are never written), and that folder is the run's
``data.unlabeled``. Everything else is the other two runs' (seed, split, crops, steps, schedule,
teacher momentum). It is opt-in because it costs more than the two other arms together
(:func:`semi_cost_ratio`: 11 cost units per step against 7 and 3, about 2.1x the default demo's training).

Interrupted (Ctrl-C, SIGTERM), the demo saves the run in training and exits with 130/143
without evaluating anything; the same command continues it (finished runs are kept, the
interrupted one resumes from its ``last.pt``). ``--semi`` on a demo folder whose demo ran without
it (finished or interrupted, same other settings) keeps its runs and trains only what is missing;
an interrupted ``--semi`` demo continued without ``--semi`` keeps its ``medcontext_semi`` run
untrained and unreported (a later ``--semi`` continues it). Other settings, and the same
command on a finished demo, start the folder afresh, and the demo says why.

Budgets: 300 steps of one 32^3 crop per variant (``--quick``: 100). On CPUs without native bf16
the runs are fp32 (precision ``auto``); BENCHMARKS.md ("Portable CPU defaults") has the times
measured with oneDNN capped at AVX2 and the estimate for an idle 2-core AVX2-only CPU.
The numbers depend on ``k`` and the seed; the demo shows them as they come out.
All runs share every setting except ``method.variant`` (and the semi arm's ``data.unlabeled``);
the teacher momentum is scaled to the short run (:func:`short_run_momentum`).
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

__all__ = [
    "DemoBudget",
    "BUDGETS",
    "VARIANTS",
    "SEMI_VARIANT",
    "UNLABELED_DIR",
    "demo_variants",
    "semi_cost_ratio",
    "demo_config",
    "run_demo",
    "DemoResult",
    "comparison_table",
    "mean_dice_sentence",
]

VARIANTS = ("baseline", "medcontext")
"""The arms of the default demo."""
SEMI_VARIANT = "medcontext_semi"
"""The arm ``--semi`` adds (a semi-supervised variant of :data:`medcontext.method.settings.VARIANTS`)."""
UNLABELED_DIR = "unlabeled"
"""The folder of ``OUT`` that holds the semi arm's unlabelled phantoms (images only)."""
_MARKER = "demo.json"
_OUTPUTS = ("results.md", "overlay.png", "curves.png")


@dataclass(frozen=True)
class DemoBudget:
    """Size of a demo run (every variant gets the same)."""

    cases: int  # labelled phantom cases generated
    shape: tuple[int, int, int]  # phantom volume shape
    steps: int  # optimizer steps per variant
    val_cases: int
    eval_every: int
    unlabeled_cases: int = 8  # unlabelled phantoms (images only) of the --semi arm


def demo_variants(semi: bool = False) -> tuple[str, ...]:
    """The arms of a demo: :data:`VARIANTS`, and :data:`SEMI_VARIANT` with ``semi``."""
    return VARIANTS + ((SEMI_VARIANT,) if semi else ())


def semi_cost_ratio() -> float:
    """Training cost of the three-arm demo over the default two-arm one, by the cost units of
    :mod:`medcontext.method.settings` (one unlabelled crop per labelled crop): (3 + 7 + 11) / (3 + 7)."""
    from medcontext.method.settings import get_variant

    def units(variants) -> int:
        return sum(get_variant(v).cost_units for v in variants)

    return units(demo_variants(True)) / units(demo_variants(False))


BUDGETS = {
    "quick": DemoBudget(cases=10, shape=(48, 48, 48), steps=100, val_cases=1, eval_every=25),
    "full": DemoBudget(cases=16, shape=(48, 48, 48), steps=300, val_cases=2, eval_every=50),
}


def demo_config(data_dir: str | Path, variant: str, budget: DemoBudget, *, train_cases: int, seed: int,
                steps: int | None = None, unlabeled: str | Path | None = None) -> TrainConfig:
    """The configuration of one demo run (identical for every variant except ``method.variant``,
    and ``data.unlabeled`` for a semi-supervised one: the folder ``unlabeled`` of images)."""
    steps = steps or budget.steps
    extra = {} if unlabeled is None else {"data.unlabeled": str(Path(unlabeled).resolve())}
    return load_config(
        None,
        {
            **extra,
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


def _prepare_out(out: Path, settings: dict | None = None, echo: Callable[[str], None] = lambda s: None) -> bool:
    """Make ``out`` ready for a demo with ``settings``; ``True`` when the runs of the folder's earlier
    demo are kept (:func:`_why_kept`: an interrupted demo with the same settings continues, ``--semi``
    adds its arm to a demo that ran without it), ``False`` when it starts afresh (every run, the
    phantoms and the results removed; :func:`_why_afresh` says why). Kept or not, the earlier
    ``results.md`` and figures are removed: until the demo ends, the folder counts as interrupted."""
    if out.exists() and any(out.iterdir()) and not (out / _MARKER).exists():
        raise ConfigError(f"{out} exists and is not a demo folder; choose another --out (the demo overwrites its folder)")
    previous = None
    if settings is not None and (out / _MARKER).is_file():
        try:
            previous = json.loads((out / _MARKER).read_text())
        except ValueError:
            previous = None
    finished = (out / "results.md").exists()
    kept = _why_kept(out, previous, settings, finished) if isinstance(previous, dict) else None
    if kept is None and isinstance(previous, dict):
        echo(_why_afresh(out, previous, settings))
    if kept is None:
        for name in (*demo_variants(semi=True), "phantom", UNLABELED_DIR):
            if (out / name).exists():
                shutil.rmtree(out / name)
    for name in _OUTPUTS:
        (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if kept is not None:
        echo(kept)
    return kept is not None


def _other_settings(previous: dict, settings: dict) -> list[str]:
    """The settings, ``semi`` aside, in which ``previous`` (an earlier demo's marker) differs."""
    keys = sorted((set(previous) | set(settings)) - {"semi"})
    return [k for k in keys if previous.get(k) != settings.get(k)]


def _why_kept(out: Path, previous: dict, settings: dict, finished: bool) -> str | None:
    """Why the earlier demo's runs in ``out`` serve the demo of ``settings`` (a message), or
    ``None`` when they do not: other settings than ``semi`` changed, or the demo finished and
    ``--semi`` adds nothing to it. Every run depends on the shared settings only, so a run of
    either demo is the run the other would train."""
    if _other_settings(previous, settings):
        return None
    had, wants = bool(previous.get("semi")), bool(settings.get("semi"))
    if not finished:
        if had and not wants:
            return (f"continuing the interrupted demo in {out} (same settings); its {SEMI_VARIANT} run is kept "
                    "but neither trained nor reported without --semi")
        if wants and not had:
            return (f"continuing the interrupted demo in {out} (same settings) and adding its {SEMI_VARIANT} arm: "
                    "runs trained earlier are kept")
        return f"continuing the interrupted demo in {out} (same settings)"
    if wants and not had:
        return (f"adding the {SEMI_VARIANT} arm to the finished demo in {out}: its {' and '.join(VARIANTS)} runs are "
                "kept (same settings, only the new arm trains); results.md and the figures are written again")
    return None


def _why_afresh(out: Path, previous: dict, settings: dict | None) -> str:
    """Why the demo in ``out`` starts afresh instead of keeping the earlier demo's runs (other
    settings, or else, by :func:`_why_kept`, a finished demo)."""
    changed = _other_settings(previous, settings or {})
    if changed:
        what = ", ".join(f"{k} {previous.get(k)!r} -> {(settings or {}).get(k)!r}" for k in changed)
        return f"starting afresh in {out}: its earlier demo had other settings ({what}); its runs are removed"
    semi = " with --semi" if previous.get("semi") else ""
    return f"starting afresh in {out}: its earlier demo{semi} finished (results.md); the same command trains it again"


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
    semi: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo (see the module docstring); returns where everything went.

    ``semi`` adds the :data:`SEMI_VARIANT` arm on ``budget.unlabeled_cases`` unlabelled phantoms
    (CLI ``--semi``).
    """
    from medcontext.run_scoring import evaluate_run

    start = time.perf_counter()
    budget = BUDGETS["quick" if quick else "full"]
    if train_cases < 1 or train_cases > budget.cases - budget.val_cases - 2:
        raise ConfigError(f"--train-cases must be in [1, {budget.cases - budget.val_cases - 2}], got {train_cases}")
    out = Path(out)
    settings = {"quick": quick, "seed": seed, "train_cases": train_cases, "steps": steps, "semi": semi}
    _prepare_out(out, settings, echo=echo)
    write_text_atomic(out / _MARKER, json.dumps(settings) + "\n")
    data_dir, unlabeled_dir = _write_phantoms(out, budget, seed, semi, echo)

    result = DemoResult(out=out, runs={})
    for variant in demo_variants(semi):
        cfg = demo_config(data_dir, variant, budget, train_cases=train_cases, seed=seed, steps=steps,
                          unlabeled=unlabeled_dir if variant == SEMI_VARIANT else None)
        result.runs[variant] = _train_arm(cfg, out / variant, progress=progress, echo=echo)
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


def _write_phantoms(out: Path, budget: DemoBudget, seed: int, semi: bool,
                    echo: Callable[[str], None]) -> tuple[Path, Path | None]:
    """The labelled phantom dataset ``out/phantom`` and, with ``semi``, the unlabelled phantoms
    ``out/unlabeled`` (images only: cases after the labelled ones, their label maps never written)."""
    from medcontext.data import generate_phantom, generate_phantom_images

    data_dir = generate_phantom(out / "phantom", num_cases=budget.cases, shape=budget.shape, seed=seed)
    echo(f"phantom: {budget.cases} cases of {budget.shape} voxels in {data_dir}")
    if not semi:
        return data_dir, None
    images = generate_phantom_images(out / UNLABELED_DIR, budget.unlabeled_cases, budget.shape, seed,
                                     first_case=budget.cases)
    echo(f"unlabelled: {len(images)} more phantoms of {budget.shape} voxels, images only (no label file), "
         f"in {out / UNLABELED_DIR}")
    return data_dir, out / UNLABELED_DIR


def _train_arm(cfg: TrainConfig, run_dir: Path, *, progress: bool, echo: Callable[[str], None]) -> Path:
    """Train one arm in ``run_dir``: skipped when finished earlier, resumed from its ``last.pt``.

    Raises:
        RunInterrupted: Ctrl-C or SIGTERM stopped the run (saved; the same command continues it).
    """
    from medcontext.engine.host.signals import stop_if_interrupted
    from medcontext.engine.run_folder import train

    variant = cfg.method.variant
    done = _finished_steps(run_dir)
    if done is not None and done >= cfg.train.steps:
        echo(f"\n=== {variant}: finished earlier ({done} steps) ===")
        return run_dir
    unlabeled = f", unlabelled volumes from {cfg.data.unlabeled}" if cfg.data.unlabeled else ""
    echo(f"\n=== {variant}: {cfg.train.steps} steps, {cfg.data.train_cases} training cases{unlabeled} ===")
    trained = train(cfg, run_dir, resume=done is not None, progress=progress, echo=echo)
    stop_if_interrupted(trained, f"the {variant} run in {run_dir}",
                        "Run the same `medcontext demo` command again to continue.")
    return run_dir


def comparison_table(summaries: dict[str, object]) -> str:
    """A markdown table: Dice per class, mean Dice and mean HD95 for each variant, then a line on
    the test cases and missing HD95 values and :func:`mean_dice_sentence`."""
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
    lines.append("")
    lines.append(mean_dice_sentence({v: summaries[v].mean_dice for v in variants}))
    return "\n".join(lines)


def mean_dice_sentence(mean_dice: dict[str, float]) -> str:
    """Which arm won on mean Dice, in one plain sentence, judged at the table's three decimals
    (equal there: a tie); arms without a finite mean Dice are named as such.

    >>> mean_dice_sentence({"baseline": 0.9661, "medcontext": 0.9442})
    'On mean Dice, baseline won: 0.966, against medcontext 0.944 (one seed on a synthetic phantom: an illustration, not evidence).'
    """
    shown = {v: round(float(d), 3) for v, d in mean_dice.items() if d is not None and np.isfinite(d)}
    caveat = " (one seed on a synthetic phantom: an illustration, not evidence)."
    without = [v for v in mean_dice if v not in shown]
    missing = f" No mean Dice for {' and '.join(without)}." if without else ""
    if not shown:
        return "No arm has a mean Dice."
    best = max(shown.values())
    leaders = [v for v, d in shown.items() if d == best]
    others = ", ".join(f"{v} {d:.3f}" for v, d in shown.items() if d != best)
    against = f", against {others}" if others else ""
    if len(leaders) == 1:
        return f"On mean Dice, {leaders[0]} won: {best:.3f}{against}{caveat}{missing}"
    return f"On mean Dice, {' and '.join(leaders)} tie at {best:.3f}{against}{caveat}{missing}"


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
    # the loss terms (a semi-supervised arm's unlabelled ones too); "ramp" and "confident" are not losses
    styles = {"total": "-", "sup": "--", "msl": ":", "cl": "-.", "cl_unlabeled": (0, (5, 1, 1, 1, 1, 1)),
              "pseudo": (0, (1, 3))}
    for i, (variant, run_dir) in enumerate(runs.items()):
        color = f"C{i}"
        train_rows = read_metrics(run_dir / "metrics.jsonl", "train")
        steps = np.array([r["step"] for r in train_rows])
        for term, style in styles.items():
            values = np.array([r.get(term, 0.0) for r in train_rows], dtype=float)
            if not np.any(values):
                continue
            ax_loss.plot(steps, figures.smooth(values), linestyle=style, color=color, label=f"{variant} {term}")
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
