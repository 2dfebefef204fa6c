"""Planning from a dataset fingerprint: spacing, crop, memory budget, mask cell, time warning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medcontext.data.fingerprint import DatasetFingerprint, plan_spacing
from medcontext.engine.planning.training_plan import (
    PlanError,
    TrainingPlan,
    add_time_estimate,
    estimate_memory,
    measure_window_time,
    plan_training,
    validation_estimate,
)
from medcontext.method.masking import default_cell_size
from medcontext.models import create_model

GIB = 2**30

# ACDC-like short-axis cine MRI: in-plane 0.7-1.8 mm, slices 5-10 mm apart, 6-10 slices
ACDC_SHAPES = [(216, 256, 10), (232, 256, 9), (154, 224, 8), (256, 216, 10), (208, 256, 9), (224, 224, 10),
               (256, 256, 6), (240, 240, 9)]
ACDC_SPACINGS = [(1.56, 1.56, 10.0), (1.37, 1.37, 10.0), (1.8, 1.8, 10.0), (1.48, 1.48, 5.0), (1.56, 1.56, 10.0),
                 (1.4, 1.4, 6.5), (0.7, 0.7, 10.0), (1.25, 1.25, 10.0)]
# MSD Hippocampus-like: 1 mm isotropic, about 35x50x36 voxels
HIPPO_SHAPES = [(35, 50, 36), (34, 49, 35), (36, 51, 37), (35, 50, 36), (33, 52, 34)]


def fingerprint(shapes, spacings) -> DatasetFingerprint:
    return DatasetFingerprint(tuple(f"case{i}" for i in range(len(shapes))), tuple(shapes), tuple(spacings))


def unet3d_plan(fp, *, budget=1024 * GIB, crops=2, **kwargs) -> TrainingPlan:
    """A plan for the 4-level ("small") unet3d: crop sides multiples of 8 (at least 16), input-space masks."""
    return plan_training(
        fp, build=lambda roi: create_model("unet3d", 1, 4, roi, size="small"), in_channels=1,
        multiple=(8, 8, 8), minimum=(16, 16, 16), mask_cell_for=lambda roi: (default_cell_size(roi), "input space"),
        crops=crops, batch_reason="test", budget_bytes=budget, budget_source="test budget", **kwargs,
    )


def test_spacing_is_kept_when_every_case_shares_it_else_the_median():
    same = fingerprint(HIPPO_SHAPES, [(1.0, 1.0, 1.0)] * 5)
    assert plan_spacing(same)[0] is None
    mixed = fingerprint([(40, 40, 40)] * 3, [(1.0, 1.0, 1.0), (1.2, 0.8, 2.0), (0.9, 1.1, 1.5)])
    assert plan_spacing(mixed)[0] == (1.0, 1.0, 1.5)


def test_thick_slices_get_the_10th_percentile_of_the_slice_spacing_as_nnunet():
    fp = fingerprint(ACDC_SHAPES, ACDC_SPACINGS)
    spacing, reason = plan_spacing(fp)
    z = np.array([s[2] for s in ACDC_SPACINGS])
    assert spacing[:2] == (1.44, 1.44)  # in-plane median
    assert spacing[2] == pytest.approx(float(np.percentile(z, 10)))  # 6.05 mm, not the 10 mm median
    assert spacing[2] == pytest.approx(6.05)
    assert "thick-slice axis" in reason and "axis 2" in reason


def test_phantom_plan_keeps_the_grid_and_takes_the_whole_volume():
    plan = unet3d_plan(fingerprint([(48, 48, 48)] * 4, [(1.0, 1.0, 1.0)] * 4))
    assert plan.spacing.value is None and plan.spacing.source == "plan"
    assert plan.roi.value == [48, 48, 48] and plan.roi.source == "plan"
    assert plan.mask_cell.value == [8, 8, 8]  # 16 would leave 3 cells per side
    assert 0 < plan.memory["total_gib"] < plan.memory["budget_gib"]


def test_hippocampus_plan_rounds_the_median_shape_up_to_the_model_multiple():
    fp = fingerprint(HIPPO_SHAPES, [(1.0, 1.0, 1.0)] * 5)
    plan = unet3d_plan(fp)
    assert plan.roi.value == [40, 56, 40]  # median 35x50x36, multiples of 8 (nnU-Net plans the same crop)
    assert plan.mask_cell.value == [8, 8, 8]
    unetr = plan_training(
        fp, build=lambda roi: create_model("unetr", 1, 3, roi, size="tiny"), in_channels=1, multiple=(16, 16, 16),
        minimum=(16, 16, 16), mask_cell_for=lambda roi: ((16, 16, 16), "token"), crops=2, batch_reason="test",
        budget_bytes=1024 * GIB, budget_source="test", token_cell=(16, 16, 16),
    )
    assert unetr.roi.value == [48, 64, 48]


def test_acdc_like_plan_resamples_thick_slices_and_keeps_the_crop_in_whole_mask_cells():
    fp = fingerprint(ACDC_SHAPES, ACDC_SPACINGS)
    plan = unet3d_plan(fp)
    assert plan.spacing.value == [1.44, 1.44, 6.05]
    assert plan.roi.value == [224, 240, 16]  # median 219x233x14 after resampling, multiples of 8
    assert plan.mask_cell.value == [16, 16, 4]
    assert all(r % c == 0 for r, c in zip(plan.roi.value, plan.mask_cell.value))


def test_a_preset_spacing_is_kept_and_the_crop_planned_for_it():
    fp = fingerprint(ACDC_SHAPES, ACDC_SPACINGS)
    plan = unet3d_plan(fp, spacing=(1.5, 1.5, 5.0), spacing_source="preset")
    assert plan.spacing.value == [1.5, 1.5, 5.0] and plan.spacing.source == "preset"
    median = fp.resampled_median_shape((1.5, 1.5, 5.0))
    assert median[2] == pytest.approx(17.0)
    assert plan.roi.source == "plan"
    # 210x224x17 rounded up to 8 gives 216x224x24; 216 is not whole 16-voxel mask cells: down to 208
    assert plan.roi.value == [208, 224, 24]
    assert "whole mask cells" in plan.roi.reason


def test_the_crop_shrinks_to_fit_the_memory_budget():
    fp = fingerprint(ACDC_SHAPES, ACDC_SPACINGS)
    free = unet3d_plan(fp)
    budget = int(0.5 * GIB)
    assert free.memory["total_gib"] * GIB > budget
    fitted = unet3d_plan(fp, budget=budget)
    assert fitted.memory["total_gib"] * GIB <= budget
    assert math.prod(fitted.roi.value) < math.prod(free.roi.value)
    assert all(r % 8 == 0 for r in fitted.roi.value) and "memory budget" in fitted.roi.reason
    # the estimate of the chosen crop is the exact meta-device estimate, not the linear guess
    exact = estimate_memory(lambda roi: create_model("unet3d", 1, 4, roi, size="small"), 1, fitted.roi.value, 2)
    assert exact.total_bytes / GIB == pytest.approx(fitted.memory["total_gib"])


def test_planned_crops_are_capped_at_nnunets_crop_volume():
    plan = unet3d_plan(fingerprint([(512, 512, 200)] * 3, [(0.8, 0.8, 2.5)] * 3), budget=4096 * GIB)
    assert math.prod(plan.roi.value) <= 128**3 and "capped" in plan.roi.reason


def test_a_plan_that_cannot_fit_is_refused_with_the_numbers():
    fp = fingerprint(HIPPO_SHAPES, [(1.0, 1.0, 1.0)] * 5)
    with pytest.raises(PlanError, match=r"smallest crop 16x16x16 .* GiB .* memory budget 0\.00 GiB \(test budget\)"):
        unet3d_plan(fp, budget=1000)
    with pytest.raises(PlanError, match=r"crop 64x64x64 with 2 crops per step needs about .* GiB"):
        unet3d_plan(fp, roi=(64, 64, 64), roi_source="setting", budget=int(0.05 * GIB))


def test_memory_counts_two_student_graphs_and_the_teacher_for_medcontext():
    build = lambda roi: create_model("unet3d", 1, 2, roi, size="tiny")  # noqa: E731
    base = estimate_memory(build, 1, (16, 16, 16), 2, variant="baseline")
    full = estimate_memory(build, 1, (16, 16, 16), 2, variant="medcontext")
    assert full.activations_bytes == 2 * base.activations_bytes
    assert full.weights_bytes == base.weights_bytes * 5 // 4  # + teacher: weights, grads, 2 Adam states, teacher
    assert base.weights_bytes == 4 * 4 * base.parameters


def test_an_explicit_crop_that_is_not_whole_mask_cells_is_reported():
    fp = fingerprint(HIPPO_SHAPES, [(1.0, 1.0, 1.0)] * 5)
    plan = unet3d_plan(fp, roi=(40, 56, 40), roi_source="setting", token_cell=None)
    assert plan.roi.value == [40, 56, 40] and plan.roi.source == "setting"
    odd = plan_training(
        fp, build=lambda roi: create_model("unet3d", 1, 4, roi, size="small"), in_channels=1, multiple=(8, 8, 8),
        minimum=(8, 8, 8), mask_cell_for=lambda roi: ((16, 16, 16), "set"), crops=2, batch_reason="test",
        budget_bytes=1024 * GIB, budget_source="test", roi=(40, 56, 40), roi_source="setting",
    )
    assert "partial" in odd.mask_cell.reason


def test_a_run_of_days_is_said_up_front_and_the_plan_round_trips():
    plan = unet3d_plan(fingerprint([(48, 48, 48)] * 4, [(1.0, 1.0, 1.0)] * 4))
    add_time_estimate(plan, 2.0, crops=2, variant="medcontext", steps=100_000)
    assert plan.time["step_s"] == pytest.approx(2.0 * 7 / 3)
    assert len(plan.warnings) == 1 and "5.4 days" in plan.warnings[0]
    text = plan.format()
    assert "4.67 s/step" in text and "warning:" in text and "crop      48x48x48" in text
    assert TrainingPlan.from_dict(plan.to_dict()) == plan
    short = add_time_estimate(unet3d_plan(fingerprint([(48, 48, 48)] * 4, [(1.0,) * 3] * 4)), 0.5, crops=2,
                              variant="baseline", steps=100)
    assert short.time["step_s"] == pytest.approx(0.5) and not short.warnings


def test_the_validation_estimate_counts_windows_cases_and_validations():
    """One validation = cases x windows of the mean case (at the plan's spacing) x one timed
    forward; a run validates every ``every`` steps and after the last one."""
    import torch

    network = create_model("unet3d", 1, 2, (16, 16, 16), size="small").train()
    seconds = measure_window_time(network, 1, (16, 16, 16), torch.device("cpu"), windows=2)
    assert seconds > 0 and network.training  # the mode is restored
    fp = fingerprint([(40, 16, 16), (16, 16, 16)], [(1.0, 1.0, 1.0), (1.0, 1.0, 1.0)])
    # at 1 mm: 4 windows (40 voxels, interval 8) and 1; at 3 mm both fit one window
    estimate = validation_estimate(fp, (1.0, 1.0, 1.0), (16, 16, 16), forward_s=0.5, overlap=0.5,
                                   sw_batch_size=2, cases=3, every=100)
    assert estimate.windows_per_case == 2.5
    assert estimate.one_s == pytest.approx(3 * math.ceil(2.5 / 2) * 0.5)
    assert estimate.total_s(250) == pytest.approx(3 * estimate.one_s)  # steps 100, 200 and 250
    coarse = validation_estimate(fp, (3.0, 3.0, 3.0), (16, 16, 16), forward_s=0.5, overlap=0.5,
                                 sw_batch_size=1, cases=3, every=0)
    assert coarse.windows_per_case == 1 and coarse.total_s(250) == pytest.approx(1.5)
