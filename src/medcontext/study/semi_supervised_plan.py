"""The semi-supervised ACDC study (issue 31): k = 5 labelled patients plus the unlabelled pool.

The ACDC study's setting (``definitions.acdc_plan``: its splits, seeds, fixed test split,
``unet3d`` small, crops, optimizer, validation every 250 steps) with, for the semi-supervised
arms, ``data.unlabeled: pool``: every patient of the shared data that is neither a validation,
a test nor a labelled patient, both frames, used without labels (50 patients, 100 volumes per
seed; a labelled patient's other frame is not used). One unlabelled crop per labelled crop.

Arms (every one for seeds 0, 1, 2):

- ``baseline`` and ``medcontext`` on the labelled volumes only: at the ACDC study's budget these
  are that study's own runs (same folder names and settings, so ``--out`` on the ACDC study's
  folder reuses finished ones);
- ``mean_teacher`` and ``bcp``, the field's reference methods on the same data and network;
- ``medcontext_semi_cl`` (MedContext with the consistency term on unlabelled crops),
  ``medcontext_semi`` (consistency and confident pseudo-labels) and ``medcontext_bcp`` (MedContext's
  masking with copy-paste): the *best MedContext combination* is the one of these three that
  seed 0's validation Dice ranks first (RESULTS.md's rule; no extra run).

The budget is fixed by a pilot on seed 0 (validation only) with the rule written in RESULTS.md
before any run: :data:`ACDC_SEMI_STEPS` is the pilot's budget, :data:`ACDC_SEMI_BUDGET` the one it
decided (6000 steps, on 2026-12-06) and :func:`acdc_semi_study_plan` the study's runs; :func:`acdc_semi_plan` takes
another one when the rule asks for it. Every run is evaluated on the test split twice: at the
checkpoint validation chose and at the last step (``eval/`` and ``eval_last/``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..method.settings import VARIANTS

__all__ = [
    "ACDC_SEMI_GROUP", "LABELLED_ARMS", "SEMI_ARMS", "COMBINATION_CANDIDATES", "ACDC_SEMI_STEPS", "ACDC_SEMI_BUDGET",
    "acdc_semi_plan", "acdc_semi_study_plan",
    "BudgetDecision", "validation_growth", "decide_budget", "choose_combination", "pilot_lines",
    "PublishedFigure", "PUBLISHED_ACDC", "field_lines", "acdc_semi_notes",
]

#: the folder group of the semi-supervised runs (and of labelled runs at another budget)
ACDC_SEMI_GROUP = "acdc_semi_unet3d_k5"
#: labelled-only arms (the ACDC study's runs at its budget)
LABELLED_ARMS = ("baseline", "medcontext")
#: semi-supervised arms, in the order their pilot runs
SEMI_ARMS = ("mean_teacher", "bcp", "medcontext_semi_cl", "medcontext_semi", "medcontext_bcp")
#: the MedContext combinations among which seed 0's validation picks the best one
COMBINATION_CANDIDATES = ("medcontext_semi_cl", "medcontext_semi", "medcontext_bcp")
#: the pilot's budget: the ACDC study's 3000 steps (the rule in RESULTS.md may double it)
ACDC_SEMI_STEPS = 3000
#: the study's budget, decided by the rule on 2026-12-06 from the pilot's validation curves alone:
#: ``mean_teacher_s0`` rose by g = +5.70 Dice points from steps 1500-2000 to 2500-3000 (> 1.0), so every
#: arm, the labelled ones included, trains 6000 steps and the 3000-step pilot is learning curves only
ACDC_SEMI_BUDGET = 6000
#: what the semi-supervised arms add to the ACDC study's settings
UNLABELED_SETTINGS = {"data.unlabeled": "pool"}


def acdc_semi_plan(seeds=(0, 1, 2), steps: int = ACDC_SEMI_STEPS) -> list:
    """Every run of the study at ``steps``, the pilot first.

    Order: seed 0's labelled arms (reused at the ACDC study's budget), seed 0's semi-supervised
    arms (the pilot whose validation curves the budget rule reads), then seeds 1 and 2 of every
    arm, so that a study cut short keeps complete, paired seeds.

    Args:
        seeds: the ACDC study's seeds (split, initialisation and data order per seed).
        steps: optimizer steps of every run (every arm shares one budget).

    Returns:
        The :class:`~medcontext.study.definitions.StudyRun` list.
    """
    from medcontext.study.definitions import ACDC_PILOT_STEPS, StudyRun

    budget = {} if steps == ACDC_PILOT_STEPS else {"train.steps": int(steps)}

    def labelled(variant: str, seed: int):
        if not budget:  # the ACDC study's own run: same name, same settings
            return StudyRun("acdc_unet3d_k5", "unet3d", 5, variant, seed, study="acdc")
        return StudyRun(ACDC_SEMI_GROUP, "unet3d", 5, variant, seed, ablation=f"{steps}steps",
                        overrides=dict(budget), study="acdc")

    def semi(variant: str, seed: int):
        tag = "" if not budget else f"{steps}steps"
        return StudyRun(ACDC_SEMI_GROUP, "unet3d", 5, variant, seed, ablation=tag,
                        overrides={**UNLABELED_SETTINGS, **budget}, study="acdc")

    runs = []
    for seed in seeds:
        runs += [labelled(variant, seed) for variant in LABELLED_ARMS]
        runs += [semi(variant, seed) for variant in SEMI_ARMS]
    return runs


def acdc_semi_study_plan() -> list:
    """The runs ``medcontext experiment acdc_semi`` trains: every arm and seed at the budget the
    pilot decided (:data:`ACDC_SEMI_BUDGET`). The pilot's own runs (seed 0 at 3000 steps, folders
    ``acdc_semi_unet3d_k5/{arm}_s0``) are not rerun: their validation curves are kept as records."""
    return acdc_semi_plan(steps=ACDC_SEMI_BUDGET)


# The budget rule of RESULTS.md (written on 2026-12-04, before any pilot run): validation only.

#: validated steps whose mean validation Dice is the pilot's end ...
LATE_STEPS = (2500, 2750, 3000)
#: ... and its middle: g = mean(late) - mean(middle), in Dice points
MIDDLE_STEPS = (1500, 1750, 2000)
#: an arm with g above this many Dice points is still improving at the end of the pilot
GROWTH_LIMIT_POINTS = 1.0
#: the one longer budget the rule allows (there is no third)
LONG_BUDGET_STEPS = 6000
#: best-validation Dice points within which two combinations count as level (rule 5)
COMBINATION_TIE_POINTS = 0.5


@dataclass(frozen=True)
class BudgetDecision:
    """What the pilot's validation curves decide (rules 2-4 of RESULTS.md's budget rule).

    Attributes:
        growth_points: g of each pilot arm that has every step the rule reads, in Dice points.
        missing: pilot arms whose curves do not yet reach every step the rule reads.
        steps: the chosen budget; ``None`` while an arm is missing and no finished arm already
            asks for the long budget.
    """

    growth_points: dict[str, float]
    missing: tuple[str, ...]
    steps: int | None


def validation_growth(mean_dice_by_step: Mapping[int, float]) -> float | None:
    """g of one pilot run: mean validation Dice at :data:`LATE_STEPS` minus the mean at
    :data:`MIDDLE_STEPS`, in Dice points (the curve in fractions of 1); ``None`` while a step is missing."""
    if not all(step in mean_dice_by_step for step in LATE_STEPS + MIDDLE_STEPS):
        return None
    late = np.mean([mean_dice_by_step[s] for s in LATE_STEPS])
    middle = np.mean([mean_dice_by_step[s] for s in MIDDLE_STEPS])
    return round(float(100.0 * (late - middle)), 6)  # so that a g of exactly 1.0 point is not 1.0000000001


def decide_budget(curves: Mapping[str, Mapping[int, float]], arms: Sequence[str] = SEMI_ARMS) -> BudgetDecision:
    """The budget of every arm from the pilot's validation curves (arm -> step -> mean Dice).

    3000 steps when every arm's g is at most :data:`GROWTH_LIMIT_POINTS`; :data:`LONG_BUDGET_STEPS`
    as soon as one arm's g is above it (even before the others have finished); undecided otherwise.
    """
    growth = {arm: validation_growth(curves.get(arm, {})) for arm in arms}
    known = {arm: g for arm, g in growth.items() if g is not None}
    missing = tuple(arm for arm, g in growth.items() if g is None)
    if any(g > GROWTH_LIMIT_POINTS for g in known.values()):
        steps: int | None = LONG_BUDGET_STEPS
    else:
        steps = None if missing else ACDC_SEMI_STEPS
    return BudgetDecision(growth_points=known, missing=missing, steps=steps)


def _unlabelled_terms(variant: str) -> int:
    step = VARIANTS[variant].unlabeled
    return 0 if step is None else (step.consistency is not None) + (step.pseudo_labels is not None)


def choose_combination(best_validation: Mapping[str, float]) -> str:
    """Rule 5: the MedContext combination with the highest best-validation mean Dice (fractions of 1)
    of seed 0; combinations within :data:`COMBINATION_TIE_POINTS` of the highest are level, and of
    those the one with the fewest cost units per step wins, then the one with the fewest loss terms.

    Raises:
        ValueError: a candidate of :data:`COMBINATION_CANDIDATES` has no value yet.
    """
    missing = [name for name in COMBINATION_CANDIDATES if name not in best_validation]
    if missing:
        raise ValueError(f"no best validation Dice yet for {', '.join(missing)}: the rule compares all "
                         f"of {', '.join(COMBINATION_CANDIDATES)}")
    top = max(best_validation[name] for name in COMBINATION_CANDIDATES)
    level = [name for name in COMBINATION_CANDIDATES
             if 100.0 * (top - best_validation[name]) <= COMBINATION_TIE_POINTS + 1e-9]

    def cost(name: str) -> tuple[int, int]:
        variant = VARIANTS[name]
        return variant.cost_units, len(variant.loss_terms) + _unlabelled_terms(name)

    return min(level, key=cost)


def _pilot_curve(run_dir: Path) -> dict[int, float]:
    from ..engine.training_log import read_metrics

    validations = read_metrics(run_dir / "metrics.jsonl", kind="val")
    return {int(r["step"]): float(r["mean_dice"]) for r in validations if "mean_dice" in r}


def pilot_lines(study_dir: str | Path) -> list[str]:
    """The budget rule applied to the pilot runs found in ``study_dir`` (markdown lines): each
    arm's g, the budget it decides (or what it still waits for) and, once decided, the best
    MedContext combination when every candidate's curve is complete. Reads validation records only."""
    study_dir = Path(study_dir)
    curves = {arm: _pilot_curve(study_dir / ACDC_SEMI_GROUP / f"{arm}_s0") for arm in SEMI_ARMS}
    decision = decide_budget(curves)
    lines = [
        "Budget rule (RESULTS.md, fixed before the pilot; seed 0, validation Dice only): g = mean validation "
        f"mean Dice at steps {', '.join(map(str, LATE_STEPS))} minus the mean at {', '.join(map(str, MIDDLE_STEPS))}; "
        f"{LONG_BUDGET_STEPS} steps for every arm if any g > {GROWTH_LIMIT_POINTS:g} point, else {ACDC_SEMI_STEPS}.",
        "",
        "| pilot arm (seed 0) | validated steps | g (Dice points) | best validation mean Dice |",
        "|---|---:|---:|---:|",
    ]
    for arm in SEMI_ARMS:
        curve = curves[arm]
        g = decision.growth_points.get(arm)
        best = f"{100 * max(curve.values()):.1f}" if curve else "-"
        lines.append(f"| {arm} | {len(curve)} | {'-' if g is None else f'{g:+.2f}'} | {best} |")
    if decision.steps is None:
        verdict = f"budget not decided yet: waiting for {', '.join(decision.missing)}"
    else:
        verdict = f"budget: **{decision.steps} steps** for every arm"
        if decision.missing:
            verdict += f" (decided before {', '.join(decision.missing)} finished: one g above the limit suffices)"
    lines += ["", verdict + "."]
    if decision.steps is not None:
        lines.append(_combination_line(study_dir, decision.steps))
    return lines + [""]


def _combination_line(study_dir: Path, steps: int) -> str:
    """Rule 5 on the seed-0 runs at the decided budget, once each candidate has its last validation."""
    names = {run.variant: run.name for run in acdc_semi_plan(seeds=(0,), steps=steps)
             if run.variant in COMBINATION_CANDIDATES}
    curves = {arm: _pilot_curve(study_dir / names[arm]) for arm in COMBINATION_CANDIDATES}
    waiting = [arm for arm, curve in curves.items() if steps not in curve]
    if waiting:
        return (f"Best MedContext combination (rule 5, seed 0 at {steps} steps): waiting for "
                f"{', '.join(Path(names[arm]).name for arm in waiting)}.")
    best = {arm: max(curve.values()) for arm, curve in curves.items()}
    return f"Best MedContext combination (rule 5, seed 0 at {steps} steps): **{choose_combination(best)}**."


# Beside the field: published ACDC figures (issue 31's list: the ACDC table of the BCP paper, Bai et al.,
# CVPR 2023, on the split of the SSL4MIS code base) and this study's arms.


@dataclass(frozen=True)
class PublishedFigure:
    """One published ACDC mean Dice (percent): ``method`` with ``labelled`` labelled patients."""

    method: str
    labelled: int
    mean_dice: str
    source: str


#: the published protocol: 2D U-Net on slices, 100 patients split 70 training / 10 validation / 20 test
PUBLISHED_PROTOCOL = "2D U-Net, 70 / 10 / 20 patients (train / validation / test)"
PUBLISHED_ACDC = (
    PublishedFigure("U-Net, labelled only", 3, "47.8", "BCP paper's ACDC table"),
    PublishedFigure("U-Net, labelled only", 7, "79.4", "BCP paper's ACDC table"),
    PublishedFigure("UA-MT (Mean Teacher family)", 3, "46.0", "BCP paper's ACDC table"),
    PublishedFigure("UA-MT (Mean Teacher family)", 7, "81.7", "BCP paper's ACDC table"),
    PublishedFigure("BCP", 3, "87.6", "BCP paper's ACDC table"),
    PublishedFigure("BCP", 7, "88.8", "BCP paper's ACDC table"),
    PublishedFigure("ABD / AD-MT (2024)", 3, "about 89", "their papers, as quoted in issue 31"),
)
#: this study's protocol, for the same table
OUR_PROTOCOL = "3D `unet3d` small (80 x 80 x 16 crops), 80 patients: 5 labelled{} / 5 validation / 20 test"
#: what the arms add to the labelled patients
_POOL = {True: " + 50 unlabelled", False: " (the other 50 unused)"}


def field_lines(study_dir: str | Path) -> list[str]:
    """Markdown: the published ACDC figures beside this study's arms at :data:`ACDC_SEMI_BUDGET`
    (mean test Dice over the finished seeds, at the validation-chosen checkpoint and at the last
    step), with each protocol. Reads the finished runs' study records only; the pilot's are not
    among them."""
    from .execution import DONE_MARKER

    study_dir = Path(study_dir)
    found: dict[str, list[dict]] = {}
    for run in acdc_semi_study_plan():
        marker = study_dir / run.name / DONE_MARKER
        if marker.is_file():
            found.setdefault(run.variant, []).append(json.loads(marker.read_text(encoding="utf-8")))
    lines = [
        "Beside the field (not the same protocol: the published rows are 2D networks on slices of 100 patients "
        "with 3 or 7 labelled; ours are 3D on the 80 patients of the shared data with 5 labelled; read the "
        "columns before the numbers):",
        "",
        "| method | labelled patients | mean Dice (%) | protocol | source |",
        "|---|---:|---:|---|---|",
    ]
    for row in PUBLISHED_ACDC:
        lines.append(f"| {row.method} | {row.labelled} | {row.mean_dice} | {PUBLISHED_PROTOCOL} | {row.source} |")
    for variant in (*LABELLED_ARMS, *SEMI_ARMS):
        records = found.get(variant, [])
        protocol = OUR_PROTOCOL.format(_POOL[variant not in LABELLED_ARMS])
        if not records:
            lines.append(f"| `{variant}` (ours) | 5 | not run yet | {protocol} | this study |")
            continue
        chosen = 100 * float(np.mean([r["test_mean_dice"] for r in records]))
        last = [r["test_mean_dice_last"] for r in records if r.get("test_mean_dice_last") is not None]
        value = f"{chosen:.1f}" + (f" (last step {100 * float(np.mean(last)):.1f})" if last else "")
        seeds = f"{len(records)} seed{'s' if len(records) > 1 else ''}"
        lines.append(f"| `{variant}` (ours, {seeds}) | 5 | {value} | {protocol} | this study, "
                     f"{ACDC_SEMI_BUDGET} steps |")
    return lines + [""]


def acdc_semi_notes(study_dir: str | Path) -> list[str]:
    """What ``experiment acdc_semi --status`` prints and its report starts with: the budget rule on
    the pilot (:func:`pilot_lines`) and the table beside the field (:func:`field_lines`)."""
    return pilot_lines(study_dir) + field_lines(study_dir)
