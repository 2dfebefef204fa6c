"""Every architecture trains end to end through the engine's API (MedContext on every architecture);
the CLI's --model-preset flag is checked on its own."""

import json

import pytest
import torch

from medcontext.cli import main
from medcontext.engine import load_config, train
from medcontext.method.token_masking import TokenMasker
from medcontext.run_scoring import evaluate_run

# the narrowed small preset of the training test below
NNFORMER_TINY = {"preset": "small", "embed_dim": 8, "num_heads": [1, 1, 2, 2]}


def _train(phantom_dir, out, *model_settings):
    cfg = load_config(None, [
        f"data.path={phantom_dir}", "method.variant=medcontext", "train.steps=2", "train.seed=0",
        "model.roi=[32, 32, 32]", *model_settings, "data.num_samples=1", "data.val_cases=1", "data.test_cases=1",
        "train.tensorboard=false", "eval.every=2",
    ])
    assert train(cfg, out, progress=False, echo=lambda _: None).finished


def _count_token_replacements(monkeypatch) -> list[float]:
    """Spy on the token-masking hook: every call appends the fraction of tokens it replaced.
    Input-space masking never calls it."""
    calls: list[float] = []
    original = TokenMasker._replace_tokens

    def spy(self, tokens, mask, token_grid):
        out = original(self, tokens, mask, token_grid)
        channel_axis = 1 if self.adapter.layout == "channels_first" else -1
        calls.append((out != tokens).any(dim=channel_axis).float().mean().item())
        return out

    monkeypatch.setattr(TokenMasker, "_replace_tokens", spy)
    return calls


@pytest.mark.parametrize("mask_space, replaced", [("token", True), ("input", False)])
def test_the_token_spy_tells_token_from_input_masking(monkeypatch, mask_space, replaced):
    """The spy of the CLI test below sees token masking and nothing else: with input-space masking
    the same network and batch give no call, so that test fails if the engine masks the input."""
    from medcontext import MedContext
    from medcontext.models import create_model

    calls = _count_token_replacements(monkeypatch)
    torch.manual_seed(0)
    network = create_model("nnformer", 1, 2, (32, 32, 32), **NNFORMER_TINY)
    mc = MedContext(network, total_steps=2, mask_space=mask_space, roi_size=(32, 32, 32), seed=0)
    assert mc.mask_space == mask_space
    images, labels = torch.randn(1, 1, 32, 32, 32), torch.randint(0, 2, (1, 1, 32, 32, 32))
    mc.losses(images, labels)
    assert bool(calls) == replaced


def test_nnformer_small_preset_trains_evaluates_and_uses_token_masking(tmp_path, phantom_dir, monkeypatch):
    calls = _count_token_replacements(monkeypatch)
    run = tmp_path / "nnformer"
    # small preset, narrowed so that two CPU steps stay fast
    _train(phantom_dir, run, "model.name=nnformer", "model.options={preset: small, embed_dim: 8, num_heads: [1, 1, 2, 2]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 2 and all(r["msl"] > 0 and r["cl"] > 0 for r in train)
    # the masked student pass went through the token hook once per step (mask_space auto = token
    # for nnFormer) and replaced about mask_ratio (0.4) of the patch tokens each time
    assert len(calls) == 2 and all(0.2 < fraction < 0.6 for fraction in calls)
    evaluate_run(run, progress=False, echo=lambda _: None)
    assert (run / "eval" / "metrics.csv").is_file()


@pytest.mark.parametrize("preset, expected", [("small", {"preset": "small"}), ("tiny", {"size": "tiny"})])
def test_preset_flag_maps_to_the_model_vocabulary(tmp_path, capsys, phantom_dir, preset, expected):
    model = "nnformer" if "preset" in expected else "unet3d"
    assert main(["train", "--data", str(phantom_dir), "--model", model, "--model-preset", preset, "--print-config"]) == 0
    out = capsys.readouterr().out
    key, value = next(iter(expected.items()))
    assert f"{key}: {value}" in out
