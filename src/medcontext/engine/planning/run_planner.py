"""The plan of a run: what the config leaves open, derived from the dataset before training.

:func:`plan_run` gathers what :func:`medcontext.engine.planning.training_plan.plan_training` needs from a
:class:`TrainConfig` and a dataset (the model's crop rules and mask cell, the crops per step,
the device's memory budget), measures one forward and backward for the time estimate, and
returns the :class:`~medcontext.engine.planning.training_plan.TrainingPlan`. :func:`apply_plan` writes the
planned crop (and a planned spacing) into the config, so that ``config.yaml`` holds every
value a run used and ``--resume`` compares them like any other setting.

Explicit settings win, then the dataset preset, then the plan; a resumed run keeps the
values of its ``plan.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch

from medcontext.data.fingerprint import DatasetFingerprint, thick_slice_axis
from medcontext.engine.builder import build_medcontext, build_network
from medcontext.engine.config import TrainConfig
from medcontext.method.settings import get_variant
from medcontext.engine.host.precision import resolve_device, resolve_precision
from medcontext.engine.planning.training_plan import (
    MAX_CROP_VOXELS,
    PlanError,
    PlannedValue,
    TrainingPlan,
    add_time_estimate,
    build_on_meta,
    measure_step_time,
    measure_window_time,
    memory_budget,
    plan_training,
    validation_estimate,
)

__all__ = ["plan_run", "apply_plan", "read_plan", "PlanError", "PLAN_FILE"]

PLAN_FILE = "plan.json"


def read_plan(run_dir: str | Path) -> TrainingPlan | None:
    """The run folder's ``plan.json``, or ``None`` for a run without one."""
    path = Path(run_dir) / PLAN_FILE
    if not path.is_file():
        return None
    return TrainingPlan.from_dict(json.loads(path.read_text()))


def _mask_cell_reporter(cfg: TrainConfig, spec, in_channels: int, out_channels: int):
    """``roi -> (cell or None, space, reason)``: the mask cell the MedContext wrapper will use."""
    m = cfg.method
    masked = get_variant(m.variant).masked_pass  # semi-supervised variants may run two unmasked graphs

    def report(roi: Sequence[int]) -> tuple[tuple[int, int, int] | None, str, str]:
        if not masked:
            return None, "none", f"no masked view (variant {m.variant})"
        network = build_on_meta(lambda: build_network(cfg, in_channels, out_channels, roi))
        mc = build_medcontext(cfg, network, roi, spec.output_mode)
        cell = tuple(int(c) for c in mc.masker.cell_size)
        if m.mask_cell is not None:
            return cell, mc.mask_space, f"set by method.mask_cell ({mc.mask_space} space)"
        if mc.mask_space == "token":
            patch = tuple(mc.masker.token_patch)
            tokens = "x".join(str(c // p) for c, p in zip(cell, patch))
            return cell, "token", (
                f"token space, default of {cfg.model.name}: {tokens} tokens of {'x'.join(map(str, patch))} voxels"
            )
        if cell == (16, 16, 16):
            return cell, "input", "input space, default 16^3 (docs/method.md)"
        return cell, "input", (
            "input space: the default 16 voxels halved on axes where the crop would hold fewer than 4 cells "
            "(smaller for small crops)"
        )

    return report


def _fixed_spacing(cfg: TrainConfig, spec, previous: TrainingPlan | None) -> tuple[object, str | None]:
    """``(spacing, source)`` when a setting, the resumed plan or the preset fixes it; ``(None, None)``: planned."""
    preprocess = cfg.data.preprocess
    if "spacing" in preprocess or "target_spacing" in preprocess:
        return preprocess.get("spacing", preprocess.get("target_spacing")), "setting"
    if previous is not None:
        return previous.spacing.value, "run's plan.json"
    if spec.target_spacing is not None:
        return spec.target_spacing, "preset"
    return None, None


def _fixed_roi(cfg: TrainConfig, spec, previous: TrainingPlan | None) -> tuple[object, str]:
    """``(crop, source)`` when ``model.roi``, the resumed plan or the preset fixes it; ``(None, "plan")``: planned."""
    if cfg.model.roi is not None:
        return cfg.model.roi, "setting"
    if previous is not None:
        return previous.roi.value, "run's plan.json"
    if spec.default_roi is not None:
        return spec.default_roi, "preset"
    return None, "plan"


def _memory_budget(cfg: TrainConfig, device) -> tuple[int, str]:
    """``train.memory_budget_gb`` in bytes, else the device's budget, with where it comes from."""
    if cfg.train.memory_budget_gb is not None:
        return int(cfg.train.memory_budget_gb * 2**30), "train.memory_budget_gb"
    return memory_budget(device)


def plan_run(
    cfg: TrainConfig,
    spec,
    *,
    steps: int | None = None,
    previous: TrainingPlan | None = None,
    measure_time: bool = True,
) -> TrainingPlan:
    """Plan the run ``cfg`` describes on ``spec`` (a :class:`~medcontext.data.DatasetSpec`).

    Args:
        cfg: the configuration; ``model.roi`` and ``data.preprocess.spacing`` (or
            ``target_spacing``), when set, are kept.
        spec: the dataset; its preset's ``default_roi`` and ``target_spacing`` are kept too.
        steps: optimizer steps for the time estimate (default ``train.steps``).
        previous: a resumed run's plan; its crop and spacing are kept.
        measure_time: time one forward and backward on the device (the time estimate).

    Raises:
        PlanError: the crop and batch do not fit the device's memory budget.
    """
    from medcontext.models.registry import roi_requirements

    in_channels, out_channels = spec.num_channels, spec.num_outputs
    fingerprint = DatasetFingerprint.from_spec(spec, orientation=str(cfg.data.preprocess.get("orientation", "RAS")))
    spacing, spacing_source = _fixed_spacing(cfg, spec, previous)
    roi, roi_source = _fixed_roi(cfg, spec, previous)
    multiple, minimum = roi_requirements(cfg.model.name, cfg.model.options)
    report = _mask_cell_reporter(cfg, spec, in_channels, out_channels)
    floor = tuple(max(a, b) for a, b in zip(multiple, minimum))
    first_cell, space, _ = report(floor)
    token_cell = first_cell if space == "token" or (first_cell is not None and cfg.method.mask_cell is not None) else None
    crops = cfg.train.batch_size * cfg.data.num_samples
    device = resolve_device(cfg.train.device)
    budget, budget_source = _memory_budget(cfg, device)

    def build(crop: Sequence[int]):
        return build_network(cfg, in_channels, out_channels, crop)

    common = dict(
        build=build,
        in_channels=in_channels,
        multiple=multiple,
        minimum=minimum,
        mask_cell_for=lambda crop: report(crop)[::2],
        crops=crops,
        batch_reason=(
            f"train.batch_size={cfg.train.batch_size} x data.num_samples={cfg.data.num_samples} per device "
            "(nnU-Net's 3D batch is 2 crops); the crop is fitted to it"
        ),
        variant=cfg.method.variant,
        optimizer=cfg.optim.name,
        budget_bytes=budget,
        budget_source=budget_source,
        token_cell=token_cell,
    )
    plan = plan_training(fingerprint, roi=roi, roi_source=roi_source, spacing=spacing, spacing_source=spacing_source,
                         **common)
    thick = thick_slice_axis(fingerprint)
    depth = cfg.method.depth_axis % 3
    if thick is not None and thick != depth and get_variant(cfg.method.variant).masked_pass:
        plan.warnings.append(
            f"axis {thick} is the dataset's thick-slice axis but the mask tubes run along axis {depth} "
            f"(method.depth_axis={cfg.method.depth_axis}); for tubes along the slices set method.depth_axis={thick}"
        )
    if not measure_time:
        return plan
    timed = _timer(cfg, device, build, in_channels, crops, steps or cfg.train.steps, fingerprint)
    timed(plan)
    if previous is not None:  # a resumed run keeps its plan
        return plan
    return _fit_to_time(cfg, spec, plan, fingerprint, device, common, timed,
                        crop_fixed=roi_source != "plan", spacing_fixed=spacing_source == "setting")


def _timer(cfg: TrainConfig, device, build, in_channels: int, crops: int, steps: int, fingerprint):
    """``plan -> plan`` with its time estimate: one forward and backward timed on the device,
    and one inference forward for validation's share."""
    precision = resolve_precision(cfg.train.precision, device)
    devices = [device.index or 0] if device.type == "cuda" else []
    val_cases = validation_cases(cfg)

    def timed(plan: TrainingPlan) -> TrainingPlan:
        validation = None
        with torch.random.fork_rng(devices=devices):  # planning leaves the run's random streams alone
            network = build(plan.roi.value)
            seconds = measure_step_time(
                network, in_channels, plan.roi.value, device, crops=crops, autocast=precision.autocast
            )
            if val_cases:
                forward_s = measure_window_time(network, in_channels, plan.roi.value, device,
                                                windows=cfg.eval.sw_batch_size, autocast=precision.autocast)
                validation = validation_estimate(
                    fingerprint, plan.spacing.value, plan.roi.value, forward_s=forward_s, overlap=cfg.eval.overlap,
                    sw_batch_size=cfg.eval.sw_batch_size, cases=val_cases, every=cfg.eval.every)
            del network
        return add_time_estimate(plan, seconds, crops=crops, variant=cfg.method.variant, steps=steps,
                                 validation=validation)

    return timed


def validation_cases(cfg: TrainConfig) -> int:
    """Cases one validation of the run reads: ``data.val_cases``, at most ``eval.max_val_cases``
    (the dataset may hold fewer; several processes share them, which this does not count)."""
    cases = int(cfg.data.val_cases)
    if cfg.eval.max_val_cases is not None:
        cases = min(cases, int(cfg.eval.max_val_cases))
    return max(cases, 0)


def _fit_to_time(cfg: TrainConfig, spec, plan: TrainingPlan, fingerprint, device, common: dict, timed, *,
                 crop_fixed: bool, spacing_fixed: bool) -> TrainingPlan:
    """The plan within the run's time target (:mod:`~.time_fit`); the memory-driven one is kept in it."""
    from medcontext.engine.planning.time_fit import fit_plan_to_time, foreground_extent_mm, time_target

    target = time_target(cfg.train, device.type)
    orientation = str(cfg.data.preprocess.get("orientation", "RAS"))

    base = plan.spacing.value if plan.spacing.value is not None else list(fingerprint.median_spacing)

    def replan(spacing, crop) -> TrainingPlan:
        same = [float(v) for v in spacing] == [float(v) for v in base]
        fitted = plan_training(fingerprint, roi=crop, roi_source="plan", spacing=plan.spacing.value if same else spacing,
                               spacing_source="plan", **common)
        fitted.spacing = plan.spacing if same else PlannedValue(
            [float(v) for v in spacing], "plan", "coarser in-plane than the memory-driven plan, to fit the step-time bound")
        fitted.roi.reason = "fitted to the step-time bound (see the time line)"
        return timed(fitted)

    step = [int(m) for m in common["multiple"]]
    if common["token_cell"] is not None:
        step = [s * int(c) // math.gcd(s, int(c)) for s, c in zip(step, common["token_cell"])]
    floor = [int(math.ceil(max(int(lo), s) / s) * s) for lo, s in zip(common["minimum"], step)]
    return fit_plan_to_time(plan, fingerprint, target, replan=replan,
                            extent_mm=lambda: foreground_extent_mm(spec, orientation), step=step, floor=floor,
                            crop_fixed=crop_fixed, spacing_fixed=spacing_fixed, max_voxels=MAX_CROP_VOXELS)


def apply_plan(cfg: TrainConfig, plan: TrainingPlan) -> TrainConfig:
    """Write the plan's crop, planned spacing and steps chosen for a time budget into ``cfg``
    (in place; returns it)."""
    cfg.model.roi = [int(r) for r in plan.roi.value]
    if plan.time_fit.get("steps") is not None and cfg.train.steps_from_budget:
        cfg.train.steps = int(plan.time_fit["steps"])
    if plan.spacing.source in ("plan", "run's plan.json") and plan.spacing.value is not None:
        cfg.data.preprocess = {**cfg.data.preprocess, "spacing": [float(s) for s in plan.spacing.value]}
    return cfg
