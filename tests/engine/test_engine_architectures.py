"""Every architecture trains end to end through the CLI (issue: MedContext on every architecture)."""

import json

import pytest

from medcontext.cli import main


def _train(phantom_dir, out, *model_args):
    argv = [
        "train", "--data", str(phantom_dir), "--out", str(out), "--variant", "medcontext", "--steps", "2",
        "--seed", "0", "--roi", "32", "32", "32", *model_args,
        "--set", "data.num_samples=1", "--set", "data.val_cases=1", "--set", "data.test_cases=1",
        "--set", "train.tensorboard=false", "--set", "eval.every=2", "--no-progress",
    ]
    assert main(argv) == 0


def test_nnformer_small_preset_trains_evaluates_and_uses_token_masking(tmp_path, phantom_dir):
    run = tmp_path / "nnformer"
    # small preset, narrowed so that two CPU steps stay fast
    _train(phantom_dir, run, "--model", "nnformer", "--model-preset", "small",
           "--set", "model.options={preset: small, embed_dim: 8, num_heads: [1, 1, 2, 2]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 2 and all(r["msl"] > 0 and r["cl"] > 0 for r in train)
    assert main(["evaluate", "--run", str(run), "--no-progress"]) == 0
    assert (run / "eval" / "metrics.csv").is_file()


@pytest.mark.parametrize("preset, expected", [("small", {"preset": "small"}), ("tiny", {"size": "tiny"})])
def test_preset_flag_maps_to_the_model_vocabulary(tmp_path, capsys, phantom_dir, preset, expected):
    model = "nnformer" if "preset" in expected else "unet3d"
    assert main(["train", "--data", str(phantom_dir), "--model", model, "--model-preset", preset, "--print-config"]) == 0
    out = capsys.readouterr().out
    key, value = next(iter(expected.items()))
    assert f"{key}: {value}" in out
