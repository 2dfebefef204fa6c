"""End to end on real MRI (MSD Task04_Hippocampus from ../shared/data): train, resume,
evaluate, predict. Needs the real data (the `require_data` fixture of tests/conftest.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcontext.cli import main
from medcontext.engine import read_checkpoint
from medcontext.engine.training_log import read_metrics

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_hippocampus_train_resume_evaluate_predict(tmp_path, capsys, require_data):
    hippocampus = require_data("Task04_Hippocampus", "dataset.json")
    out = tmp_path / "run"
    argv = ["train", "--config", str(REPO / "configs" / "cpu_hippocampus_unet3d.yaml"),
            "--data", str(hippocampus), "--out", str(out), "--train-cases", "2", "--steps", "4", "--seed", "1",
            "--model-size", "tiny", "--no-progress",
            "--set", "data.val_cases=1", "--set", "data.test_cases=2", "--set", "train.batch_size=1",
            "--set", "eval.every=2", "--set", "train.tensorboard=false", "--set", "train.precision=fp32",
            "--set", "optim.warmup_steps=0"]
    assert main([*argv, "--stop-after", "2"]) == 0
    assert read_checkpoint(out / "last.pt")["step"] == 2
    assert main([*argv, "--resume"]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "train")] == [1, 2, 3, 4]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "val")] == [2, 4]
    split = json.loads((out / "split.json").read_text())
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (2, 1, 2)

    assert main(["evaluate", "--run", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out / "eval" / "metrics.csv")))
    assert {r["case_id"] for r in rows} == set(split["test"])
    assert {r["class_name"] for r in rows} == {"Anterior", "Posterior"}

    case = split["test"][0]
    source = hippocampus / "imagesTr" / f"{case}.nii.gz"
    assert main(["predict", "--run", str(out), "--input", str(source), "--output", str(tmp_path / "pred")]) == 0
    pred, ref = nib.load(str(tmp_path / "pred" / f"{case}.nii.gz")), nib.load(str(source))
    assert pred.shape == ref.shape
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2}
