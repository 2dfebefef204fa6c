"""``medcontext pretrain``: weights that ``train --init-checkpoint`` takes, labels never read, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medcontext.cli import main
from medcontext.engine.pretraining import PRETRAINED_FILE, output_layer_keys, save_pretrained_weights
from medcontext.engine.training_log import read_metrics
from medcontext.models import create_model, get_model_spec, list_models
from medcontext.models.pretrained import load_pretrained

# pool = the 2 cases a 2-shot split of the 6 phantom cases (1 validation, 1 test) leaves over
TINY_PRETRAIN = [
    "--unlabeled", "pool", "--train-cases", "2", "--val-cases", "1", "--test-cases", "1",
    "--model", "unet3d", "--model-size", "tiny", "--roi", "16", "16", "16", "--batch-size", "2",
    "--no-tensorboard", "--no-progress",
]


def _pretrain(data, out, *extra) -> int:
    return main(["pretrain", "--data", str(data), "--out", str(out), *TINY_PRETRAIN, *extra])


def _losses(run) -> list[float]:
    return [r["total"] for r in read_metrics(run / "metrics.jsonl", kind="train")]


def test_pretrain_writes_weights_that_train_takes_without_a_prefix_map(tmp_path, phantom_dir, capsys):
    run = tmp_path / "pretrain"
    assert _pretrain(phantom_dir, run, "--steps", "3") == 0
    assert len(_losses(run)) == 3 and all(loss > 0 for loss in _losses(run))
    assert (run / "loss_curve.png").stat().st_size > 0 and (run / "last.pt").is_file()
    assert json.loads((run / "volumes.json").read_text())["count"] == 2
    capsys.readouterr()
    finetune = tmp_path / "finetune"
    assert main(["train", "--data", str(phantom_dir), "--out", str(finetune), "--model", "unet3d", "--model-size",
                 "tiny", "--roi", "16", "16", "16", "--steps", "1", "--train-cases", "2", "--seed", "0",
                 "--set", "data.val_cases=1", "--set", "data.test_cases=1", "--set", "data.num_samples=1",
                 "--set", "train.tensorboard=false", "--no-progress",
                 "--init-checkpoint", str(run / PRETRAINED_FILE)]) == 0
    out = capsys.readouterr().out
    # every weight but the output layer (2 tensors, its shape depends on the classes) is loaded
    assert "missing 2, unexpected 0, shape-mismatched 0" in out
    assert "missing (kept at initialisation): output_block.conv.conv.bias, output_block.conv.conv.weight" in out


@pytest.mark.parametrize("name", list_models())
def test_pretrained_weights_load_into_every_registered_model(tmp_path, name):
    """The file pretrain writes loads, with no prefix map and no skipped shapes, into the model
    built for another number of classes: only the output layer stays at its initialisation."""
    spec = get_model_spec(name)
    torch.manual_seed(0)
    pretrained = create_model(name, 1, 1, spec.test_roi, **spec.test_options)  # 1 output: the reconstruction
    head = output_layer_keys(name, 1, spec.test_roi, spec.test_options)
    assert head, f"{name}: no output-layer key found"
    path = save_pretrained_weights(tmp_path / PRETRAINED_FILE, pretrained, head, {"model": name})
    torch.manual_seed(1)
    network = create_model(name, 1, 4, spec.test_roi, **spec.test_options)
    report = load_pretrained(network, path)
    assert not report.unexpected and not report.mismatched
    assert set(report.missing) == set(head) & set(network.state_dict())
    assert set(report.loaded) == set(pretrained.state_dict()) - set(head)
    source = pretrained.state_dict()
    assert all(torch.equal(network.state_dict()[k], source[k]) for k in report.loaded)


def test_labels_are_never_read(tmp_path, phantom_dir, monkeypatch):
    data = tmp_path / "Phantom"
    shutil.copytree(phantom_dir, data)
    labels = sorted((data / "labelsTr").glob("*.nii.gz"))
    for i, label in enumerate(labels):  # half the label files gone, the other half not NIfTI at all
        label.unlink() if i % 2 else label.write_bytes(b"not a label")
    import nibabel

    opened = []
    original = nibabel.load
    monkeypatch.setattr(nibabel, "load", lambda path, *a, **k: opened.append(str(path)) or original(path, *a, **k))
    run = tmp_path / "pretrain"
    assert _pretrain(data, run, "--steps", "2") == 0
    assert len(_losses(run)) == 2
    assert opened and not [p for p in opened if "labelsTr" in p]


def test_resume_repeats_the_uninterrupted_losses(tmp_path, phantom_dir, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _pretrain(phantom_dir, straight, "--steps", "4") == 0
    assert _pretrain(phantom_dir, resumed, "--steps", "4", "--stop-after", "2") == 0
    assert len(_losses(resumed)) == 2
    assert main(["pretrain", "--out", str(resumed), "--resume", "--no-progress"]) == 0  # the saved settings
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-5, abs=1e-6)
    weights = [torch.load(run / PRETRAINED_FILE, weights_only=True)["state_dict"] for run in (straight, resumed)]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5) for k in weights[0])
    capsys.readouterr()
    assert main(["pretrain", "--out", str(resumed), "--resume", "--mask-ratio", "0.3", "--no-progress"]) == 2
    assert "mask_ratio: 0.6 -> 0.3" in capsys.readouterr().err


def test_bad_settings_fail_before_any_image_is_read(tmp_path, phantom_dir, capsys, monkeypatch):
    import nibabel

    monkeypatch.setattr(nibabel, "load", lambda *a, **k: pytest.fail("an image was read"))
    assert main(["pretrain", "--data", str(phantom_dir), "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    assert "pass --unlabeled SOURCE" in capsys.readouterr().err
    assert _pretrain(phantom_dir, tmp_path / "b", "--roi", "18", "16", "16") == 2
    assert "multiples of 4, got (18, 16, 16)" in capsys.readouterr().err
    assert _pretrain(phantom_dir, tmp_path / "c", "--mask-cell", "16", "--mask-ratio", "0.4") == 2
    assert "masks nothing" in capsys.readouterr().err


def test_a_train_config_gives_the_pool_that_its_run_leaves_unlabelled(tmp_path, phantom_dir):
    config = tmp_path / "train.yaml"
    config.write_text("data: {train_cases: 2, val_cases: 1, test_cases: 2, split_seed: 3, num_samples: 1}\n"
                      "model: {name: unet3d, options: {size: tiny}, roi: [16, 16, 16]}\n"
                      "train: {seed: 5, tensorboard: false}\n")
    run, pre = tmp_path / "train", tmp_path / "pretrain"
    assert main(["train", "--config", str(config), "--data", str(phantom_dir), "--out", str(run), "--steps", "1",
                 "--no-progress"]) == 0
    split = json.loads((run / "split.json").read_text())
    assert main(["pretrain", "--config", str(config), "--data", str(phantom_dir), "--unlabeled", "pool",
                 "--steps", "1", "--out", str(pre), "--no-tensorboard", "--no-progress"]) == 0
    saved = json.loads((pre / "config.json").read_text())
    assert (saved["model"], saved["model_options"], saved["roi"], saved["seed"]) == ("unet3d", {"size": "tiny"},
                                                                                       [16, 16, 16], 5)
    pooled = {case["case_id"] for case in json.loads((pre / "volumes.json").read_text())["cases"]}
    everything = {f"phantom_{i:03d}" for i in range(6)}
    assert pooled and pooled == everything - set(split["train"]) - set(split["val"]) - set(split["test"])


def test_sigterm_stops_after_the_step_with_a_checkpoint(tmp_path, phantom_dir, monkeypatch, capsys):
    import os
    import signal

    from medcontext.engine import pretraining

    original = pretraining._PretrainLoop.train_step

    def step_then_signal(self):
        out = original(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 2: the loop finishes it, saves, stops
        return out

    monkeypatch.setattr(pretraining._PretrainLoop, "train_step", step_then_signal)
    run = tmp_path / "pretrain"
    assert _pretrain(phantom_dir, run, "--steps", "5") == 143
    assert "stopped by SIGTERM after step 2" in capsys.readouterr().err
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 2 and len(_losses(run)) == 2 and (run / "loss_curve.png").is_file()


def test_a_run_folder_held_by_another_writer_is_refused(tmp_path, phantom_dir, capsys):
    from medcontext.io.run_lock import RunFolderLock

    run = tmp_path / "pretrain"
    with RunFolderLock(run, "medcontext train"):
        assert _pretrain(phantom_dir, run, "--steps", "1") == 2
    assert "medcontext train" in capsys.readouterr().err and not (run / "last.pt").exists()


# ------------------------------------------------------------------ the data section is train's
ROOT = Path(__file__).resolve().parents[2]


def test_the_data_section_is_trains_own_with_its_defaults_and_split():
    from medcontext.engine.config import DataConfig, TrainConfig
    from medcontext.engine.pretraining import PretrainConfig

    assert PretrainConfig().data == DataConfig()  # one home of the defaults
    train = TrainConfig.from_dict({"data": {"path": "D", "train_cases": 5, "val_cases": 10, "test_cases": ["a", "b"],
                                            "use_official_test": False, "preprocess": {"target_spacing": [2, 2, 5]},
                                            "unlabeled": "pool"}, "train": {"seed": 2}})
    cfg = PretrainConfig.from_train_config(train, steps=7)
    assert cfg.data == train.data and cfg.data is not train.data and cfg.steps == 7
    # the split is read from the settings in one place, with the run's seed when split_seed is unset
    assert cfg.data.split_settings(cfg.seed) == train.data.split_settings(train.train.seed)
    assert cfg.data.split_settings(2)["seed"] == 2 and cfg.sources == ["pool"]
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="data.test_cases must be"):
        PretrainConfig.from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "test_cases": -1}}).validate()


def test_a_flat_config_json_of_an_older_run_still_loads():
    from medcontext.engine.pretraining import PretrainConfig

    old = ROOT / "results" / "pretrain" / "hippocampus_unet3d_small" / "config.json"
    assert "data_preset" in json.loads(old.read_text())  # the flat format of the first pretraining runs
    cfg = PretrainConfig.read(old)
    assert (cfg.data.path, cfg.data.train_cases, cfg.data.val_cases, cfg.data.test_cases) == (
        "/work/shared/data/Task04_Hippocampus", 5, 1, 0.2)
    assert (cfg.data.unlabeled, cfg.data.preset, cfg.steps, cfg.roi) == (["pool"], "auto", 300, [32, 48, 32])
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg


def test_a_resume_of_a_run_with_a_flat_config_continues_it(tmp_path, phantom_dir, capsys):
    run = tmp_path / "pretrain"
    assert _pretrain(phantom_dir, run, "--steps", "3", "--stop-after", "1") == 0
    saved = json.loads((run / "config.json").read_text())
    data = saved.pop("data")
    flat = {**saved, "data": data["path"], "data_preset": data["preset"], "unlabeled": data["unlabeled"],
            **{k: data[k] for k in ("train_cases", "train_case_ids", "val_cases", "test_cases", "use_official_test",
                                    "split_seed", "group_by", "preprocess", "cache_dir")}}
    (run / "config.json").write_text(json.dumps(flat))  # both records as a run of the old format wrote them
    state = torch.load(run / "last.pt", weights_only=True)
    torch.save({**state, "config": flat}, run / "last.pt")
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert len(_losses(run)) == 3 and isinstance(json.loads((run / "config.json").read_text())["data"], dict)
    (run / "config.json").write_text("{not json")
    capsys.readouterr()
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert f"{run / 'config.json'} is not a readable pretraining config.json" in capsys.readouterr().err


# ------------------------------------------------------------------ test split safety
def test_a_test_image_in_an_unlabeled_folder_is_never_pretrained_on(tmp_path, phantom_dir, capsys):
    """The fixed test split (``--test-split``) reaches every source: a copy of a test image in a folder
    given as ``--unlabeled`` is left out, with a line saying how many and why, as in ``train --unlabeled``."""
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    shutil.copyfile(phantom_dir / "imagesTr" / "phantom_005.nii.gz", folder / "phantom_005.nii.gz")  # a test image
    shutil.copyfile(phantom_dir / "imagesTr" / "phantom_001.nii.gz", folder / "other_001.nii.gz")
    split = tmp_path / "test_split.json"
    split.write_text(json.dumps({"test": ["phantom_004", "phantom_005"]}))
    args = ["--unlabeled", str(folder), "--train-cases", "2", "--val-cases", "1", "--model", "unet3d",
            "--model-size", "tiny", "--roi", "16", "16", "16", "--steps", "1", "--no-tensorboard", "--no-progress"]
    run = tmp_path / "pretrain"
    assert main(["pretrain", "--data", str(phantom_dir), "--out", str(run), "--test-split", str(split), *args]) == 0
    out = capsys.readouterr().out
    volumes = json.loads((run / "volumes.json").read_text())
    assert [c["case_id"] for c in volumes["cases"]] == ["other_001"]
    assert volumes["excluded"] == {"validation/test cases or cases of their groups": ["phantom_005"]}
    assert "1 left out as validation/test cases or cases of their groups" in out and "own draw" not in out
    saved = json.loads((run / "config.json").read_text())["data"]
    assert (saved["test_cases"], saved["use_official_test"]) == (["phantom_004", "phantom_005"], False)
    # without the fixed split the run draws its own and says so: nothing ties it to the runs to come
    assert main(["pretrain", "--data", str(phantom_dir), "--out", str(tmp_path / "drawn"), *args]) == 0
    assert "are this run's own draw" in capsys.readouterr().out
    assert main(["pretrain", "--data", str(phantom_dir), "--out", str(tmp_path / "both"), "--test-split", str(split),
                 "--test-cases", "1", *args]) == 2
    assert "--test-split and --test-cases" in capsys.readouterr().err
