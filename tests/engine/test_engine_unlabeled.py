"""Runs with unlabelled volumes: the door check, the run folder, the per-step crops, exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from medcontext.data import generate_phantom, load_dataset, split_for_spec
from medcontext.engine import load_config, train
from medcontext.engine.config import ConfigError
from medcontext.engine.trainer import Trainer
from medcontext.engine.unlabeled_data import check_unlabeled_settings

TINY = {
    "model.name": "unet3d", "model.options": {"size": "tiny"}, "model.roi": [16, 16, 16],
    "data.num_samples": 1, "data.val_cases": 1, "data.test_cases": 2, "data.train_cases": 2,
    "train.tensorboard": False, "train.precision": "fp32", "train.steps": 4, "train.seed": 0, "eval.every": 0, "method.variant": "baseline",
}


@pytest.fixture(scope="module")
def eight_cases(tmp_path_factory):
    return generate_phantom(tmp_path_factory.mktemp("phantom8") / "Phantom", num_cases=8, shape=(24, 24, 24), seed=1)


class Recording(Trainer):
    """Records each step's unlabelled crops and trains the labelled step alone (a labelled-only variant)."""

    seen: list = []

    def train_step(self, batch, step):
        Recording.seen.append((step, batch["unlabeled"].clone(), list(batch["unlabeled_case_id"])))
        return super().train_step({"image": batch["image"], "label": batch["label"]}, step)


def test_the_door_refuses_unlabelled_data_for_a_labelled_only_variant():
    cfg = load_config(None, {**TINY, "data.unlabeled": "pool"})
    with pytest.raises(ConfigError, match="trains on labelled crops only.*drop --unlabeled"):
        check_unlabeled_settings(cfg)
    check_unlabeled_settings(load_config(None, TINY))  # labelled-only without unlabelled data: fine


def _semi(monkeypatch):
    """Let the labelled-only baseline pass the door as if it drew unlabelled crops (Recording drops them)."""
    monkeypatch.setattr("medcontext.engine.unlabeled_data.variant_trains_on_unlabeled", lambda variant: True)


def test_pool_run_folder_and_per_step_crops_with_the_pool_labels_deleted(eight_cases, tmp_path, monkeypatch):
    _semi(monkeypatch)
    data = tmp_path / "Phantom"
    data.mkdir()
    for item in eight_cases.iterdir():  # a copy whose pool labels we may delete
        target = data / item.name
        target.symlink_to(item) if item.is_file() else target.mkdir()
    for sub in ("imagesTr", "labelsTr"):
        for f in (eight_cases / sub).iterdir():
            (data / sub / f.name).symlink_to(f)
    settings = {**TINY, "data.path": str(data), "data.unlabeled": "pool", "data.unlabeled_batch_size": 3}
    split = split_for_spec(load_dataset(data), train_cases=2, val_cases=1, test_cases=2, seed=0).to_dict()
    pool = sorted(set(load_dataset(data).case_ids) - {*split["train"], *split["val"], *split["test"]})
    assert len(pool) == 8 - 2 - 1 - 2
    for case_id in pool:  # labels are never read: the run trains without them
        (data / "labelsTr" / f"{case_id}.nii.gz").unlink()
    lines: list[str] = []
    Recording.seen = []
    train(load_config(None, settings), tmp_path / "run", trainer_class=Recording, progress=False, echo=lines.append)
    saved = json.loads((tmp_path / "run" / "split.json").read_text())
    assert saved["unlabeled"] == pool and {k: saved[k] for k in ("train", "val", "test")} == {
        k: split[k] for k in ("train", "val", "test")}
    record = json.loads((tmp_path / "run" / "unlabeled.json").read_text())
    assert record["count"] == 3 and record["counts"] == {"pool": 3} and [c["case_id"] for c in record["cases"]] == pool
    assert any(line.startswith("unlabelled: 3 unlabelled volume(s) (3 from pool)") for line in lines)
    assert [step for step, _, _ in Recording.seen] == [0, 1, 2, 3]
    assert all(crops.shape == (3, 1, 16, 16, 16) and set(ids) <= set(pool) for _, crops, ids in Recording.seen)
    assert not torch.equal(Recording.seen[0][1], Recording.seen[1][1])


def test_a_resumed_run_draws_the_same_unlabelled_crops(eight_cases, tmp_path, monkeypatch):
    _semi(monkeypatch)
    settings = {**TINY, "data.path": str(eight_cases), "data.unlabeled": ["pool"]}
    Recording.seen = []
    train(load_config(None, settings), tmp_path / "straight", trainer_class=Recording, progress=False, echo=lambda _: None)
    straight = [(step, crops) for step, crops, _ in Recording.seen]
    Recording.seen = []
    cut = tmp_path / "cut"
    train(load_config(None, settings), cut, trainer_class=Recording, progress=False, echo=lambda _: None, stop_after=2)
    train(load_config(None, settings), cut, trainer_class=Recording, progress=False, echo=lambda _: None, resume=True)
    resumed = [(step, crops) for step, crops, _ in Recording.seen]
    assert [s for s, _ in resumed] == [0, 1, 2, 3]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(straight, resumed))
    assert straight[0][1].shape[0] == 1  # default: as many unlabelled crops as labelled ones


def test_a_semi_supervised_variant_trains_on_the_pool_through_the_cli(phantom_dir, train_argv, tmp_path, capsys):
    from medcontext.cli import main
    from medcontext.engine.training_log import read_metrics

    out = tmp_path / "run"
    argv = train_argv(phantom_dir, out, "--train-cases", "2", "--unlabeled", "pool", "--set", "train.precision=fp32",
                      steps=2, variant="medcontext_semi")
    assert main(argv) == 0
    assert "unlabelled: 1 unlabelled volume(s) (1 from pool)" in capsys.readouterr().out
    rows = read_metrics(out / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == [1, 2] and all("cl_unlabeled" in r and "pseudo" in r for r in rows)
    assert json.loads((out / "unlabeled.json").read_text())["count"] == 1
    with pytest.raises(ConfigError, match="trains on unlabelled volumes too.*--unlabeled pool"):
        check_unlabeled_settings(load_config(None, {**TINY, "method.variant": "medcontext_semi"}))


@pytest.mark.parametrize("variant, masked", [("mean_teacher", False), ("bcp", False), ("medcontext_bcp", True)])
def test_the_plan_gives_a_mask_cell_only_to_variants_with_a_masked_view(eight_cases, variant, masked):
    from medcontext.engine.planning.run_planner import plan_run

    cfg = load_config(None, {**TINY, "data.path": str(eight_cases), "method.variant": variant, "data.unlabeled": "pool"})
    plan = plan_run(cfg, load_dataset(eight_cases), measure_time=False)
    assert (plan.mask_cell.value is not None) == masked  # mean_teacher / bcp: two student graphs, no mask
