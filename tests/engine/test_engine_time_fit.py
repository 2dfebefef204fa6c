"""Plans that fit the time (engine.planning.time_fit): a CPU step-time bound, a time budget, the
steps chosen for a budget, validation's share of a budget, explicit settings and resumed runs.
The step and inference times are a deterministic model of the crop's voxels (monkeypatched), so no
test depends on this machine's speed."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from medcontext.engine.config import TrainConfig
from medcontext.engine.planning import run_planner
from medcontext.engine.planning.training_plan import PlanError, sliding_window_count, validation_runs
from medcontext.engine.planning.time_fit import (
    DEFAULT_CPU_STEP_BOUND_S,
    FOREGROUND_MARGIN,
    SPACING_LIMIT,
    parse_duration,
    time_target,
)

SECONDS_PER_VOXEL = 2e-6  # one forward+backward of a batch: 2 us per crop voxel per crop


@pytest.fixture(autouse=True)
def voxel_clock(monkeypatch, _no_cpu_step_time_bound):
    from medcontext.engine.planning import time_fit

    monkeypatch.setattr(time_fit, "DEFAULT_CPU_STEP_BOUND_S", DEFAULT_CPU_STEP_BOUND_S)  # the conftest turns it off

    def measure(network, in_channels, roi, device, *, crops=1, repeats=2, autocast=None):
        return SECONDS_PER_VOXEL * math.prod(roi) * crops

    def measure_inference(network, in_channels, roi, device, *, windows=1, repeats=2, autocast=None):
        return SECONDS_PER_VOXEL / 3 * math.prod(roi) * windows  # a forward: a third of forward+backward

    monkeypatch.setattr(run_planner, "measure_step_time", measure)
    monkeypatch.setattr(run_planner, "measure_window_time", measure_inference)


def _dataset(root, name, shapes, spacings, box_mm):
    """An MSD-style dataset whose labels hold one foreground box of ``box_mm`` per case."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i, (shape, spacing) in enumerate(zip(shapes, spacings)):
        affine = np.diag([*spacing, 1.0])
        label = np.zeros(shape, np.uint8)
        half = [max(1, int(round(b / s / 2))) for b, s in zip(box_mm, spacing)]
        centre = [n // 2 for n in shape]
        label[tuple(slice(max(0, c - h), c + h) for c, h in zip(centre, half))] = 1
        nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), str(root / "imagesTr" / f"patient{i:03d}_frame01.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"patient{i:03d}_frame01.nii.gz"))
        training.append({"image": f"./imagesTr/patient{i:03d}_frame01.nii.gz", "label": f"./labelsTr/patient{i:03d}_frame01.nii.gz"})
    labels = {"0": "background", "1": "RV", "2": "MYO", "3": "LV"} if name == "ACDC" else {"0": "background", "1": "fg"}
    (root / "dataset.json").write_text(json.dumps({
        "name": name, "modality": {"0": "MRI"}, "labels": labels, "numTraining": len(shapes), "training": training}))
    return root


# ACDC-like: about 224x240 in-plane at 1.5 mm after resampling, 8-10 slices 10 mm apart -> 5 mm
ACDC_SHAPES = [(150, 160, 10), (156, 160, 9), (144, 160, 8), (160, 150, 10), (150, 156, 9), (160, 160, 10)]
ACDC_SPACINGS = [(2.25, 2.25, 10.0)] * 6
HEART_MM = (100.0, 100.0, 80.0)


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    from medcontext.data import load_dataset

    return load_dataset(_dataset(tmp_path_factory.mktemp("acdc"), "ACDC", ACDC_SHAPES, ACDC_SPACINGS, HEART_MM))


def _cfg(**train) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name, cfg.model.options = "unet3d", {"size": "small"}
    cfg.train.device, cfg.train.batch_size, cfg.data.num_samples = "cpu", 1, 2
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg.validate()


def _fits_the_foreground(plan, extent_mm=HEART_MM):
    spacing = plan.spacing.value
    return all(c >= e * FOREGROUND_MARGIN / s for c, e, s in zip(plan.roi.value, extent_mm, spacing))


def test_an_acdc_like_cpu_plan_keeps_to_the_default_step_bound_and_keeps_the_memory_driven_one(acdc):
    plan = run_planner.plan_run(_cfg(steps=3000), acdc)
    assert plan.unconstrained is not None
    free = plan.unconstrained
    assert free["time"]["step_s"] > DEFAULT_CPU_STEP_BOUND_S  # the memory-driven crop is too slow here
    assert plan.time["step_s"] <= DEFAULT_CPU_STEP_BOUND_S
    assert math.prod(plan.roi.value) < math.prod(free["roi"]["value"])
    assert _fits_the_foreground(plan)
    assert plan.time_fit["bound_s"] == DEFAULT_CPU_STEP_BOUND_S and "train.max_step_s=auto" in plan.time_fit["bound_reason"]
    text = plan.format()
    assert "memory-driven plan (not used)" in text and "time fit" in text
    # both plans in plan.json
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["unconstrained"]["roi"]["value"] == free["roi"]["value"] and data["roi"]["value"] == plan.roi.value


def test_a_tight_budget_coarsens_the_in_plane_spacing_within_its_limit(acdc):
    plan = run_planner.plan_run(_cfg(steps=3000, time_budget="42m"), acdc)
    validation = plan.time["validation_total_s"]
    assert validation > 0 and plan.time["validation"]["cases"] == 1
    bound = (0.9 * 2520 - validation) / 3000  # what validation leaves of the budget's share, per step
    assert plan.time_fit["bound_s"] == pytest.approx(bound)
    assert plan.time["total_s"] <= 0.9 * 2520
    preset = (1.5, 1.5, 5.0)
    assert plan.spacing.value[2] == preset[2]  # the thick-slice axis keeps its spacing
    assert preset[0] < plan.spacing.value[0] <= SPACING_LIMIT * preset[0] + 1e-9
    assert plan.time["step_s"] <= bound and _fits_the_foreground(plan)
    cfg = run_planner.apply_plan(_cfg(steps=3000, time_budget="42m"), plan)
    assert cfg.data.preprocess["spacing"] == plan.spacing.value and cfg.model.roi == plan.roi.value


def test_without_steps_a_budget_chooses_them(acdc):
    cfg = _cfg(steps=200, time_budget="2h", steps_from_budget=True)
    plan = run_planner.plan_run(cfg, acdc)
    steps, step_s, one_validation = plan.time["steps"], plan.time["step_s"], plan.time["validation"]["one_s"]

    def run_s(n):
        return n * step_s + validation_runs(n, cfg.eval.every) * one_validation

    assert plan.time_fit["steps"] == steps and plan.time["total_s"] == pytest.approx(run_s(steps))
    assert run_s(steps) <= 0.9 * 7200 < run_s(steps + 1)  # the most steps whose validations fit too
    assert steps < int(0.9 * 7200 / step_s)
    assert run_planner.apply_plan(cfg, plan).train.steps == steps


def test_validation_counts_against_the_budget(acdc):
    """Ten validation cases every 250 steps take a larger share of a 50-minute budget than one
    case does (issue 29's acceptance run overran its budget by its validations); a budget the
    validations alone exceed is refused before training with what to change."""
    def planned(val_cases, every, budget="50m"):
        cfg = _cfg(steps=3000, time_budget=budget)
        cfg.data.val_cases, cfg.eval.every = val_cases, every
        return run_planner.plan_run(cfg, acdc)

    few, many = planned(1, 250), planned(10, 250)
    assert many.time["validation"]["cases"] == 10 and many.time["validation_total_s"] > few.time["validation_total_s"]
    assert many.time_fit["bound_s"] < few.time_fit["bound_s"]
    assert math.prod(many.roi.value) <= math.prod(few.roi.value)
    for plan in (few, many):
        assert plan.time["total_s"] <= 0.9 * 3000 or any("still takes" in w for w in plan.warnings)
    assert "validation 12 x" in many.format()
    with pytest.raises(PlanError, match="eval.every"):
        planned(10, 1, budget="1m")


def test_the_window_count_is_monai_s(acdc):
    """sliding_window_count against the windows MONAI's sliding_window_inference runs."""
    import torch
    from monai.inferers import sliding_window_inference

    for shape, roi, overlap in [((40, 37, 9), (16, 16, 8), 0.5), ((16, 16, 8), (16, 16, 8), 0.5),
                                ((10, 50, 20), (16, 16, 16), 0.25), ((33, 33, 33), (16, 24, 8), 0.5)]:
        calls = []

        def predictor(window):
            calls.append(window.shape[0])
            return window

        sliding_window_inference(torch.zeros(1, 1, *shape), roi, 1, predictor, overlap=overlap)
        assert sliding_window_count(shape, roi, overlap) == sum(calls), (shape, roi, overlap)


def test_explicit_crop_and_spacing_win(acdc):
    cfg = _cfg(steps=3000)
    cfg.model.roi = [224, 240, 32]
    plan = run_planner.plan_run(cfg, acdc)
    assert plan.roi.value == [224, 240, 32] and plan.unconstrained is None
    assert any("fixed by the setting" in w for w in plan.warnings)
    cfg = _cfg(steps=3000)
    cfg.data.preprocess = {"spacing": [1.5, 1.5, 5.0]}
    plan = run_planner.plan_run(cfg, acdc)
    assert plan.spacing.value == [1.5, 1.5, 5.0] and plan.spacing.source == "setting"
    # the crop alone was fitted: down to the foreground with margin (88x88x24), still above the bound
    assert plan.roi.value == [88, 88, 24] and _fits_the_foreground(plan)
    assert plan.time["step_s"] < plan.unconstrained["time"]["step_s"]
    assert plan.time["step_s"] > DEFAULT_CPU_STEP_BOUND_S and any("still takes" in w for w in plan.warnings)


def test_a_resumed_run_keeps_its_plan(acdc):
    first = run_planner.plan_run(_cfg(steps=3000), acdc)
    # the memory-driven crop of an older run: resuming does not re-fit it
    previous = run_planner.plan_run(_cfg(steps=3000, max_step_s=None), acdc)
    assert previous.roi.value != first.roi.value
    resumed = run_planner.plan_run(_cfg(steps=3000), acdc, previous=previous)
    assert resumed.roi.value == previous.roi.value and resumed.roi.source == "run's plan.json"
    assert resumed.unconstrained is None


def test_a_gpu_plan_stays_memory_driven_and_small_datasets_keep_their_plan(tmp_path):
    from medcontext.data import generate_phantom, load_dataset

    train = _cfg().train
    assert time_target(train, "cuda").step_bound_s is None
    assert time_target(train, "cpu").step_bound_s == DEFAULT_CPU_STEP_BOUND_S
    hippo = _dataset(tmp_path / "hippo", "Hippocampus", [(35, 50, 36), (34, 49, 35), (36, 51, 37)],
                     [(1.0, 1.0, 1.0)] * 3, (20.0, 30.0, 20.0))
    for spec in (load_dataset(hippo), load_dataset(generate_phantom(tmp_path / "phantom", num_cases=3, seed=0))):
        plan = run_planner.plan_run(_cfg(steps=3000), spec)
        assert plan.unconstrained is None and "within the bound" in plan.time_fit["reason"]


def test_durations():
    assert parse_duration("2h") == 7200 and parse_duration("1h30m") == 5400 and parse_duration("90m") == 5400
    assert parse_duration(45) == 45 and parse_duration("1d") == 86400 and parse_duration("30s") == 30
    for bad in ("soon", "-1h", "0", "2x"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    cfg = TrainConfig()
    cfg.train.time_budget = "soon"
    with pytest.raises(Exception, match="train.time_budget"):
        cfg.validate()
