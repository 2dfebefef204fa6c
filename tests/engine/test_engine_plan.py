"""The run's plan: `train` without --roi, plan.json, explicit > preset > plan, refusal, resume."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

from medcontext.cli import main
from medcontext.data import load_dataset
from medcontext.data.fingerprint import DatasetFingerprint
from medcontext.engine.planning.training_plan import PlannedValue, TrainingPlan
from medcontext.engine import TrainConfig, load_config
from medcontext.engine.planning.run_planner import apply_plan, plan_run, read_plan


def _no_roi_argv(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--variant", "medcontext", "--steps", "2", "--seed", "0",
            "--model", "unet3d", "--model-size", "tiny", "--set", "data.num_samples=1", "--set", "data.val_cases=1",
            "--set", "data.test_cases=2", "--set", "train.tensorboard=false", "--set", "eval.every=0",
            "--no-progress", *extra]


def test_train_without_roi_plans_the_crop_prints_and_stores_the_plan(phantom_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_no_roi_argv(phantom_dir, out)) == 0
    printed = capsys.readouterr().out
    assert "plan (6 cases, median 24x24x24 voxels at 1x1x1 mm)" in printed
    assert "crop      24x24x24" in printed and "[plan]" in printed and "s/step estimated" in printed
    plan = read_plan(out)
    assert plan.roi.value == [24, 24, 24] and plan.roi.source == "plan"  # 3-level unet3d: multiples of 4
    assert plan.spacing.value is None and "no resampling" in plan.spacing.reason
    assert plan.mask_cell.value == [4, 4, 4]  # 16 and 8 leave fewer than 4 cells per side of 24
    assert plan.batch.value == 1 and plan.time["steps"] == 2
    assert load_config(out / "config.yaml").model.roi == [24, 24, 24]
    assert json.loads((out / "plan.json").read_text())["memory"]["total_gib"] > 0


def test_a_plan_that_does_not_fit_stops_before_the_run_folder_is_written(phantom_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_no_roi_argv(phantom_dir, out, "--roi", "24", "24", "24", "--set", "train.memory_budget_gb=0.0001")) == 2
    err = capsys.readouterr().err
    assert "crop 24x24x24 with 1 crops per step needs about" in err and "train.memory_budget_gb" in err
    assert not (out / "config.yaml").exists() and not (out / "last.pt").exists()


def _write_case(path, shape, spacing, axes_order=(0, 1, 2)):
    """A NIfTI image whose file axes are ``axes_order`` of the RAS axes (a permuted affine)."""
    affine = np.zeros((4, 4))
    for file_axis, ras_axis in enumerate(axes_order):
        affine[ras_axis, file_axis] = spacing[ras_axis]
    affine[3, 3] = 1
    file_shape = tuple(shape[a] for a in axes_order)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(file_shape, np.uint8), affine), str(path))


@pytest.fixture
def thick_slice_dir(tmp_path):
    """An ACDC-like MSD dataset: in-plane 1.25-1.6 mm, slices 5-10 mm; one case stored slice axis first."""
    root = tmp_path / "Task_ACDClike"
    cases = [((64, 72, 8), (1.5, 1.5, 10.0)), ((72, 64, 9), (1.25, 1.25, 10.0)), ((64, 64, 10), (1.6, 1.6, 5.0)),
             ((68, 68, 8), (1.4, 1.4, 10.0)), ((60, 72, 7), (1.5, 1.5, 10.0)), ((64, 64, 9), (1.5, 1.5, 10.0))]
    training = []
    for i, (shape, spacing) in enumerate(cases):
        order = (2, 0, 1) if i == 0 else (0, 1, 2)
        _write_case(root / "imagesTr" / f"c{i}.nii.gz", shape, spacing, order)
        _write_case(root / "labelsTr" / f"c{i}.nii.gz", shape, spacing, order)
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    meta = {"name": "ACDClike", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "RV", "2": "MYO", "3": "LV"},
            "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _cfg(**sets) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.options = {"size": "small"}
    for key, value in sets.items():
        cfg.set(key.replace("__", "."), value)
    return cfg.validate()


def test_fingerprint_reads_headers_in_ras_order(thick_slice_dir):
    fp = DatasetFingerprint.from_spec(load_dataset(thick_slice_dir))
    assert fp.shapes[0] == (64, 72, 8) and fp.spacings[0] == (1.5, 1.5, 10.0)  # stored as (8, 64, 72)
    assert fp.median_spacing == (1.5, 1.5, 10.0)


def test_thick_slice_dataset_plan_and_the_precedence_setting_preset_plan(thick_slice_dir):
    spec = load_dataset(thick_slice_dir)
    planned = plan_run(_cfg(), spec, measure_time=False)
    assert planned.spacing.source == "plan" and planned.spacing.value == [1.5, 1.5, 7.5]
    assert "thick-slice axis" in planned.spacing.reason  # 10th percentile of 10,10,5,10,10,10 = 7.5 mm
    # medians after resampling 63.8x66.1x11.3: up to multiples of 8 (64x72x16), 72 down to whole 16-voxel cells
    assert planned.roi.source == "plan" and planned.roi.value == [64, 64, 16]
    assert planned.mask_cell.value == [16, 16, 4]

    preset_like = dataclasses.replace(spec, target_spacing=(1.5, 1.5, 3.0))  # a preset fixing only the spacing
    fixed = plan_run(_cfg(), preset_like, measure_time=False)
    assert fixed.spacing.source == "preset" and fixed.spacing.value == [1.5, 1.5, 3.0]
    assert fixed.roi.source == "plan" and fixed.roi.value == [64, 64, 32]  # 26.7 slices at 3 mm

    explicit = plan_run(_cfg(model__roi=[32, 32, 16], data__preprocess={"spacing": [2.0, 2.0, 10.0]}), preset_like,
                        measure_time=False)
    assert explicit.roi.source == "setting" and explicit.roi.value == [32, 32, 16]
    assert explicit.spacing.source == "setting" and explicit.spacing.value == [2.0, 2.0, 10.0]

    cfg = apply_plan(_cfg(), planned)
    assert cfg.model.roi == [64, 64, 16] and cfg.data.preprocess["spacing"] == [1.5, 1.5, 7.5]


def test_a_resumed_run_keeps_the_crop_and_spacing_of_its_plan(thick_slice_dir):
    spec = load_dataset(thick_slice_dir)
    earlier = plan_run(_cfg(), spec, measure_time=False)
    earlier = dataclasses.replace(earlier, roi=PlannedValue([32, 32, 16], "plan", "an earlier machine"),
                                  spacing=PlannedValue([1.5, 1.5, 6.0], "plan", "an earlier dataset"))
    again = plan_run(_cfg(), spec, previous=TrainingPlan.from_dict(earlier.to_dict()), measure_time=False)
    assert again.roi.value == [32, 32, 16] and again.roi.source == "run's plan.json"
    cfg = apply_plan(_cfg(), again)
    assert cfg.model.roi == [32, 32, 16] and cfg.data.preprocess["spacing"] == [1.5, 1.5, 6.0]


def test_transformer_plans_follow_their_token_cells_and_crop_rules(thick_slice_dir):
    spec = load_dataset(thick_slice_dir)
    unetr = plan_run(_cfg(model__name="unetr", model__options={"size": "tiny"}), spec, measure_time=False)
    assert all(r % 16 == 0 for r in unetr.roi.value) and unetr.mask_cell.value == [16, 16, 16]
    assert "token space" in unetr.mask_cell.reason
    nnformer = plan_run(_cfg(model__name="nnformer", model__options={"preset": "small", "embed_dim": 8,
                                                                      "num_heads": [1, 1, 2, 2]}),
                        spec, measure_time=False)
    assert nnformer.mask_cell.value == [2, 2, 2]  # its embedding patch (SPEC 2)
    assert all(r % 16 == 0 for r in nnformer.roi.value)  # patch 2 x 2^3 down-samplings
    swin = plan_run(_cfg(model__name="swin_unetr", model__options={"size": "tiny"}), spec, measure_time=False)
    # median 63.8x66.1x11.3 up to multiples of 32, at least 64 per side
    assert swin.roi.value == [64, 96, 64] and swin.mask_cell.value == [16, 16, 16]


def test_tubes_across_the_thick_slices_are_warned_about(thick_slice_dir):
    spec = load_dataset(thick_slice_dir)
    assert not plan_run(_cfg(), spec, measure_time=False).warnings  # tubes along axis 2, the slice axis
    across = plan_run(_cfg(method__depth_axis=0), spec, measure_time=False)
    assert len(across.warnings) == 1 and "method.depth_axis=2" in across.warnings[0]
