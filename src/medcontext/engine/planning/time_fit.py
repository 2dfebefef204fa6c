"""Plans that fit the time: a coarser in-plane spacing and a smaller crop when a step is too slow.

nnU-Net plans for a GPU's memory; on a CPU the time runs out first (a 224x240x24 ACDC crop
costs seconds per step on two cores). After the memory-driven plan is made and one step timed,
:func:`fit_plan_to_time` keeps it when its estimated step time is within a bound, else looks
for the largest plan within the bound:

1. at the planned (or preset) spacing, then at in-plane spacings up to :data:`SPACING_LIMIT`
   times coarser (the thick-slice axis keeps its spacing; a dataset without one coarsens
   every axis), in steps of 1.25x,
2. the crop shrinks from the median shape (nnU-Net's rule: the axis largest relative to its
   floor first) but never below the dataset's median foreground extent times
   :data:`FOREGROUND_MARGIN` (read from up to 60 label files),
3. the step time is predicted as proportional to the crop's voxels from the timed step, and
   the chosen crop is timed again; if it is still above the bound, the prediction is
   corrected once with the new measurement.

The bound: :data:`BUDGET_SHARE` of ``train.time_budget`` (``--time-budget 2h``; the rest for
start-up and the loop's own overhead), less the estimated time of every validation (the plan's
sliding windows per case x validation cases x validations, from one timed inference forward),
divided by ``train.steps``; without a budget, ``train.max_step_s`` (``auto``:
:data:`DEFAULT_CPU_STEP_BOUND_S` on a CPU, no bound on a GPU, whose plan stays memory-driven).
With a budget and ``train.steps_from_budget`` (what ``--time-budget`` without ``--steps``
sets), the bound is the CPU default (none on a GPU) and the steps are chosen so that steps and
validations fill the budget. A crop or spacing set explicitly (``--roi``,
``data.preprocess.spacing``) or by the preset's crop is never changed; a resumed run keeps its
``plan.json``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medcontext.data.fingerprint import DatasetFingerprint, format_axes, thick_slice_axis
from medcontext.engine.planning.training_plan import PlanError, plan_validation, set_steps, validation_runs

__all__ = [
    "DEFAULT_CPU_STEP_BOUND_S",
    "SPACING_LIMIT",
    "FOREGROUND_MARGIN",
    "BUDGET_SHARE",
    "TimeTarget",
    "parse_duration",
    "time_target",
    "foreground_extent_mm",
    "fit_plan_to_time",
    "steps_for_budget",
]

DEFAULT_CPU_STEP_BOUND_S = 1.5
"""Estimated seconds per training step a CPU plan keeps to without a time budget: 3000 steps in
about 1.25 h, and within 3x of the ACDC study's hand plan (0.66 s per step on 2 cores)."""
SPACING_LIMIT = 1.5
"""In-plane spacing at most this many times the planned (or preset) spacing."""
FOREGROUND_MARGIN = 1.25
"""A crop covers at least the median foreground extent times this (per axis)."""
BUDGET_SHARE = 0.9
"""Share of ``train.time_budget`` planned for training steps and validation (start-up, data
loading and the loop's overhead over a timed forward+backward: the rest)."""
_SPACING_FACTORS = (1.0, 1.25, SPACING_LIMIT)
_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds of ``value``: a number of seconds, or text like ``2h``, ``90m``, ``1h30m``, ``45s``, ``1d``.

    Raises:
        ValueError: not a positive duration.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)(min|s|m|h|d)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(f"{value!r} is not a duration: use e.g. 2h, 90m, 1h30m, 45s or a number of seconds") from None
        else:
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration")
    return seconds


@dataclass(frozen=True)
class TimeTarget:
    """What the plan must fit: ``step_bound_s`` per step (``None``: no bound), why, and whether
    the steps are chosen to fill ``budget_s``. With a budget and fixed ``steps``,
    ``step_bound_s`` is the bound before validation's share (see :meth:`bound_for`)."""

    step_bound_s: float | None
    reason: str
    budget_s: float | None = None
    choose_steps: bool = False
    steps: int | None = None

    def bound_for(self, plan: Any) -> float | None:
        """The step-time bound for ``plan``: with a budget and fixed steps, what is left of
        :data:`BUDGET_SHARE` of the budget after the plan's validations, per step.

        Raises:
            PlanError: the validations alone take the budget's share.
        """
        if self.budget_s is None or self.choose_steps or self.steps is None:
            return self.step_bound_s
        validation = plan_validation(plan)
        validation_s = validation.total_s(self.steps) if validation is not None else 0.0
        left = BUDGET_SHARE * self.budget_s - validation_s
        if left <= 0:  # only validation can take it: the budget is positive
            assert validation is not None
            runs = validation_runs(self.steps, validation.every)
            raise PlanError(
                f"validating {validation.cases} case(s) {runs} times takes about {validation_s / 60:.0f} min "
                f"on this device, more than {BUDGET_SHARE:g} x the time budget ({self.budget_s / 60:.0f} min): "
                "validate less often (eval.every), on fewer cases (eval.max_val_cases) or give more time"
            )
        return left / self.steps


def time_target(train_cfg: Any, device_type: str) -> TimeTarget:
    """The time target of a run's ``train`` settings on a ``cpu`` or ``cuda`` device."""
    cpu_default = DEFAULT_CPU_STEP_BOUND_S if device_type == "cpu" else None
    bound_setting = train_cfg.max_step_s
    if bound_setting == "auto":
        default, default_reason = cpu_default, (
            f"the CPU default bound train.max_step_s=auto ({cpu_default:g} s)" if cpu_default
            else "no step-time bound (train.max_step_s=auto on a GPU): the plan is memory-driven")
    elif bound_setting is None:
        default, default_reason = None, "no step-time bound (train.max_step_s=null): the plan is memory-driven"
    else:
        default, default_reason = float(bound_setting), f"train.max_step_s={float(bound_setting):g} s"
    if train_cfg.time_budget is None:
        return TimeTarget(default, default_reason)
    budget = parse_duration(train_cfg.time_budget)
    if train_cfg.steps_from_budget:
        return TimeTarget(default, default_reason + f"; the steps fill train.time_budget={train_cfg.time_budget}",
                          budget, True)
    bound = BUDGET_SHARE * budget / train_cfg.steps
    return TimeTarget(bound, f"train.time_budget={train_cfg.time_budget} x {BUDGET_SHARE:g}, less validation, / "
                      f"{train_cfg.steps} steps", budget, False, int(train_cfg.steps))


def foreground_extent_mm(spec: Any, orientation: str = "RAS", max_cases: int = 60) -> tuple[tuple[float, float, float], int]:
    """Median extent (mm per axis, training orientation) of the foreground bounding box of up
    to ``max_cases`` labelled cases (evenly spread), and how many were read.

    Raises:
        ValueError: a label file cannot be read (named).
    """
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    cases = [c for c in spec.cases if c.label is not None]
    if not cases:
        raise ValueError("the dataset has no labelled case to measure the foreground on")
    picked = [cases[int(i)] for i in np.linspace(0, len(cases) - 1, min(max_cases, len(cases)))]
    picked = list({c.case_id: c for c in picked}.values())
    target = axcodes2ornt(tuple(orientation))
    extents = []
    for case in picked:
        path = Path(case.label)
        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj)
        except Exception as err:  # nibabel raises several types for unreadable files
            raise ValueError(f"case {case.case_id}: cannot read the label {path}: {err}") from err
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        found = np.nonzero(data.reshape(data.shape[:3] + (-1,)).any(axis=-1) if data.ndim > 3 else data)
        if not found[0].size:
            continue
        size = [(int(f.max()) - int(f.min()) + 1) * z for f, z in zip(found, zooms)]
        out = [0.0, 0.0, 0.0]
        for axis, (new_axis, _flip) in enumerate(ornt_transform(io_orientation(img.affine), target)):
            out[int(new_axis)] = size[axis]
        extents.append(out)
    if not extents:
        raise ValueError("every label read is empty: no foreground to plan the crop around")
    return tuple(float(v) for v in np.median(np.asarray(extents), axis=0)), len(picked)  # type: ignore[return-value]


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _candidate_spacings(base: Sequence[float], thick: int | None) -> list[tuple[float, float, float]]:
    axes = [a for a in range(3) if a != thick]
    out = []
    for factor in _SPACING_FACTORS:
        spacing = [float(s) for s in base]
        for a in axes:
            spacing[a] = round(spacing[a] * factor, 5)
        out.append(tuple(spacing))
    return out  # type: ignore[return-value]


def _crop_range(fingerprint: DatasetFingerprint, spacing, extent_mm, step, floor, max_voxels: int):
    """``(largest, smallest)`` crop at ``spacing``: the median shape rounded up (capped like the
    memory plan), and the margin-covered foreground extent (never above the largest)."""
    median = fingerprint.resampled_median_shape(spacing)
    largest = [max(f, _round_up(m, s)) for m, s, f in zip(median, step, floor)]
    while math.prod(largest) > max_voxels:
        axis = int(np.argmax([c / max(m, 1.0) if c - s >= f else 0 for c, m, s, f in zip(largest, median, step, floor)]))
        if largest[axis] - step[axis] < floor[axis]:
            break
        largest[axis] -= step[axis]
    smallest = [min(lg, max(f, _round_up(e * FOREGROUND_MARGIN / sp, s)))
                for lg, e, sp, s, f in zip(largest, extent_mm, spacing, step, floor)]
    return largest, smallest


def _shrink_to(crop: list[int], smallest: Sequence[int], step: Sequence[int], voxels: float) -> list[int]:
    """Shrink ``crop`` one step at a time (the axis largest relative to ``smallest`` first)
    until it holds at most ``voxels`` voxels or every axis is at ``smallest``."""
    crop = list(crop)
    while math.prod(crop) > voxels:
        axes = [a for a in range(3) if crop[a] - step[a] >= smallest[a]]
        if not axes:
            break
        axis = max(axes, key=lambda a: (crop[a] / max(smallest[a], 1), crop[a]))
        crop[axis] -= step[axis]
    return crop


def fit_plan_to_time(
    plan: Any,
    fingerprint: DatasetFingerprint,
    target: TimeTarget,
    *,
    replan: Callable[[Sequence[float] | None, Sequence[int]], Any],
    extent_mm: Callable[[], tuple[tuple[float, float, float], int]],
    step: Sequence[int],
    floor: Sequence[int],
    crop_fixed: bool,
    spacing_fixed: bool,
    max_voxels: int,
) -> Any:
    """The plan to train with, given the memory-driven ``plan`` (timed) and the time ``target``.

    Args:
        plan: the unconstrained :class:`~medcontext.engine.planning.training_plan.TrainingPlan`
            with its time estimate.
        fingerprint: the dataset's shapes and spacings.
        target: from :func:`time_target`.
        replan: ``(spacing, crop) -> timed TrainingPlan`` at that spacing and crop.
        extent_mm: ``() -> (median foreground extent in mm, cases read)`` (read only if needed).
        step: crop sides are multiples of this; floor: and at least this.
        crop_fixed: the crop comes from a setting or the preset (kept).
        spacing_fixed: the spacing comes from a setting (kept; a preset's may be coarsened).
        max_voxels: the largest crop the memory plan allows.

    Returns:
        The chosen plan; ``plan.time_fit`` says how it was chosen and ``plan.unconstrained``
        holds the memory-driven plan when they differ.
    """
    step_s = plan.time["step_s"]
    bound = target.bound_for(plan)
    record: dict[str, Any] = {"bound_s": bound, "bound_reason": target.reason, "unconstrained_step_s": step_s}
    if bound is None or step_s <= bound:
        record["reason"] = ("no step-time bound" if bound is None else
                            f"the memory-driven plan's {step_s:.3g} s/step is within the bound {bound:.3g} s")
        return _with_steps(plan, target, record)
    if crop_fixed:
        record["reason"] = (f"{step_s:.3g} s/step is above the bound {bound:.3g} s, but the crop is fixed by the "
                            f"{plan.roi.source}: kept")
        plan.warnings.append(record["reason"] + "; drop --roi (or give a smaller one) to let the planner fit the time")
        return _with_steps(plan, target, record)
    base = plan.spacing.value if plan.spacing.value is not None else list(fingerprint.median_spacing)
    thick = thick_slice_axis(fingerprint)
    spacings = [tuple(base)] if spacing_fixed else _candidate_spacings(base, thick)
    extent, cases_read = extent_mm()
    record["foreground_extent_mm"], record["foreground_cases_read"] = list(extent), cases_read
    voxels_per_s = math.prod(plan.roi.value) / step_s  # step time ~ proportional to voxels
    chosen = None
    for spacing in spacings:
        largest, smallest = _crop_range(fingerprint, spacing, extent, step, floor, max_voxels)
        crop = _shrink_to(largest, smallest, step, bound * voxels_per_s)
        chosen = (spacing, crop, smallest)
        if math.prod(crop) <= bound * voxels_per_s:
            break
    spacing, crop, smallest = chosen
    fitted = replan(spacing, crop)
    bound = target.bound_for(fitted)  # validation's share at the fitted crop
    record["bound_s"] = bound
    if fitted.time["step_s"] > bound:  # correct the prediction once with this measurement
        corrected = _shrink_to(crop, smallest, step, bound * math.prod(crop) / fitted.time["step_s"])
        if corrected != crop:
            crop, fitted = corrected, replan(spacing, corrected)
    record["reason"] = _fit_reason(plan, fitted, spacing, base, crop, smallest, extent, bound)
    if fitted.time["step_s"] > bound:
        fitted.warnings.append(
            f"the smallest plan within the limits ({format_axes(spacing)} mm, crop covering the foreground with margin) "
            f"still takes {fitted.time['step_s']:.3g} s/step, above the bound {bound:.3g} s; a GPU, a smaller model "
            "(--model-size) or fewer crops per step would help"
        )
    fitted.unconstrained = {k: v for k, v in plan.to_dict().items() if k not in ("unconstrained", "time_fit")}
    fitted.warnings = [w for w in fitted.warnings if w not in plan.warnings] + [
        w for w in plan.warnings if "take about" not in w]
    return _with_steps(fitted, target, record)


def _fit_reason(plan, fitted, spacing, base, crop, smallest, extent, bound) -> str:
    what = []
    if list(spacing) != [float(b) for b in base]:
        what.append(f"in-plane spacing {format_axes(spacing)} mm (limit {SPACING_LIMIT:g}x {format_axes(base)} mm)")
    what.append(f"crop {format_axes(crop)} (at least {format_axes(smallest)}: the median foreground extent "
                f"{format_axes([round(e) for e in extent])} mm x {FOREGROUND_MARGIN:g})")
    return (f"the memory-driven plan ({format_axes(plan.roi.value)} crop) takes {plan.time['step_s']:.3g} s/step, above "
            f"the bound {bound:.3g} s: " + ", ".join(what) + f" -> {fitted.time['step_s']:.3g} s/step")


def _with_steps(plan: Any, target: TimeTarget, record: dict[str, Any]) -> Any:
    """Record the fit; with ``choose_steps``, set the steps that fill the budget."""
    if target.choose_steps and target.budget_s is not None:
        steps = steps_for_budget(plan, BUDGET_SHARE * target.budget_s)
        record["steps"] = steps
        record["steps_reason"] = (f"{BUDGET_SHARE:g} x the budget {target.budget_s / 3600:.3g} h at "
                                  f"{plan.time['step_s']:.3g} s per step and its validations")
        set_steps(plan, steps)
        plan.warnings = [w for w in plan.warnings if "take about" not in w]
    plan.time_fit = record
    return plan


def steps_for_budget(plan: Any, seconds: float) -> int:
    """The most steps (at least 1) whose time and validations (the plan's estimate) fit in
    ``seconds``."""
    step_s = plan.time["step_s"]
    validation = plan_validation(plan)
    if validation is None or not validation.cases:
        return max(1, int(seconds / step_s))
    per_step = step_s + (validation.one_s / validation.every if validation.every > 0 else 0.0)
    steps = max(1, int(seconds / per_step))
    while steps > 1 and steps * step_s + validation.total_s(steps) > seconds:
        steps -= 1
    return steps
