"""A BraTS-like region task end to end through the engine's API: sigmoid regions trained (also by
semi-supervised variants on unlabelled volumes), validated and evaluated per region."""

import json

import nibabel as nib
import numpy as np
import pytest

from medcontext.data.tumour_phantom import generate_tumour_phantom
from medcontext.engine import load_config, train
from medcontext.engine.training_log import read_metrics
from medcontext.evaluation import dice_score, label_masks
from medcontext.evaluation.metric_table import read_csv
from medcontext.run_scoring import evaluate_run


@pytest.fixture(scope="module")
def tumour_dir(tmp_path_factory):
    return generate_tumour_phantom(tmp_path_factory.mktemp("tumour") / "Task01like", num_cases=5, shape=(24, 24, 24))


def test_brats_like_phantom_trains_validates_and_evaluates_per_region(tumour_dir, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, [f"data.path={tumour_dir}", "data.preset=brats17", "method.variant=medcontext",
                             "train.steps=3", "train.seed=0", "model.name=unet3d", "model.options={size: tiny}",
                             "model.roi=[24, 24, 24]", "data.num_samples=1", "data.val_cases=1", "data.test_cases=2",
                             "eval.every=3", "train.tensorboard=false"])
    printed: list[str] = []
    assert train(cfg, out, progress=False, echo=printed.append).finished
    assert any("4 channel(s), 3 outputs (sigmoid)" in line for line in printed), printed
    val = read_metrics(out / "metrics.jsonl", "val")
    assert list(val[-1]["dice"]) == ["WT", "TC", "ET"]

    evaluate_run(out, progress=False, echo=lambda _: None)
    table = read_csv(out / "eval" / "metrics.csv")
    assert table.class_names == ["WT", "TC", "ET"] and len(table.case_ids) == 2
    # every row is the region channel's Dice against the region's ground truth
    spec = json.loads((out / "dataset.json").read_text())
    regions = {name: tuple(values) for name, values in spec["regions"].items()}
    for row in table.rows:
        stack = np.asanyarray(nib.load(out / "eval" / "regions" / f"{row.case_id}.nii.gz").dataobj)
        truth = np.asanyarray(nib.load(tumour_dir / "labelsTr" / f"{row.case_id}.nii.gz").dataobj)
        channel = list(regions).index(row.class_name)
        expected = dice_score(stack[..., channel] > 0, label_masks(truth, regions)[row.class_name])
        assert row.dice == pytest.approx(expected)
    # prediction still writes the conventional label map (values 0..3)
    painted = np.asanyarray(nib.load(out / "eval" / "predictions" / f"{table.case_ids[0]}.nii.gz").dataobj)
    assert painted.shape == (24, 24, 24) and set(np.unique(painted)) <= {0, 1, 2, 3}


@pytest.mark.parametrize("variant", ["medcontext_semi", "bcp"])
def test_a_semi_supervised_variant_trains_a_region_task_on_unlabelled_volumes(tumour_dir, tmp_path, variant):
    out = tmp_path / "run"
    cfg = load_config(None, [f"data.path={tumour_dir}", "data.preset=brats17", f"method.variant={variant}",
                             "train.steps=2", "train.seed=0", "model.name=unet3d", "model.options={size: tiny}",
                             "model.roi=[24, 24, 24]", "data.num_samples=1", "data.val_cases=1", "data.test_cases=2",
                             "data.train_cases=1", "data.unlabeled=pool", "eval.every=2", "train.tensorboard=false",
                             "train.precision=fp32"])
    assert train(cfg, out, progress=False, echo=lambda _: None).finished
    assert json.loads((out / "unlabeled.json").read_text())["count"] == 1  # 5 cases: 2 test, 1 val, 1 labelled
    rows = read_metrics(out / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == [1, 2]
    live = "cl_unlabeled" if variant == "medcontext_semi" else "pseudo"  # MIC's pseudo term may find no confident pair
    assert all(np.isfinite([r["total"], r["pseudo"]]).all() and r[live] > 0 for r in rows), rows
    assert list(read_metrics(out / "metrics.jsonl", "val")[-1]["dice"]) == ["WT", "TC", "ET"]
