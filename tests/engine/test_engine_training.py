"""End-to-end training on a tiny phantom: run folder, resume, crash safety, signals.

Most tests call the engine (:func:`medcontext.engine.train`); the run-folder, refusal and SIGTERM
tests go through ``medcontext train`` because what they check is what the command prints and returns."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from medcontext.cli import main
from medcontext.engine import load_config, read_checkpoint, train
from medcontext.engine.checkpoint import CheckpointError
from medcontext.engine.host.precision import resolve_precision
from medcontext.engine.training_log import read_metrics
from medcontext.engine.trainer import NonFiniteLossError, Trainer


def _losses(run_dir):
    return [(r["step"], r["total"], r["sup"], r["msl"], r["cl"]) for r in read_metrics(run_dir / "metrics.jsonl", "train")]


def test_train_writes_a_complete_run_folder(phantom_dir, train_argv, tmp_path, capsys):
    out = tmp_path / "run"
    argv = train_argv(phantom_dir, out, "--train-cases", "2", "--set", "eval.every=2",
                      "--set", "train.tensorboard=true", steps=4, variant="medcontext")
    assert main(argv) == 0
    for name in ("config.yaml", "split.json", "dataset.json", "preprocess.json", "metrics.jsonl", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 2 and len(split["val"]) == 1 and len(split["test"]) == 2
    assert not set(split["train"]) & set(split["test"])
    cfg = load_config(out / "config.yaml")
    assert cfg.data.train_cases == 2 and cfg.train.steps == 4 and cfg.model.roi == [16, 16, 16]
    assert cfg.data.preset == "msd"  # resolved, not "auto"

    train_rows = read_metrics(out / "metrics.jsonl", "train")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(r["msl"] > 0 and r["cl"] > 0 and 0 <= r["data_share"] <= 1 for r in train_rows)
    val_rows = read_metrics(out / "metrics.jsonl", "val")
    assert [r["step"] for r in val_rows] == [2, 4]
    assert set(val_rows[0]["dice"]) == {"spine", "aorta", "inferior vena cava", "liver", "spleen", "right kidney", "left kidney"}

    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["step"] == 4 and ckpt["config"]["train"]["steps"] == 4
    keys = ckpt["model"].keys()
    assert any(k.startswith("teacher.") for k in keys) and any("mask_token" in k for k in keys)
    assert {"python", "numpy", "torch", "mask_generator"} <= set(ckpt["rng"])
    assert ckpt["optimizer"]["state"] and ckpt["version"]
    best = read_checkpoint(out / "best.pt")
    assert best["best"]["step"] in (2, 4)
    assert best["best"]["metric"] == max(r["mean_dice"] for r in val_rows)
    assert "data wait" in capsys.readouterr().out
    (start,) = read_metrics(out / "metrics.jsonl", "start")  # where it trained, before its first step
    auto = resolve_precision("auto", torch.device("cpu")).name  # bf16 on a CPU with AVX512-BF16/AMX, else fp32
    assert start["step"] == 0 and start["device"] == "cpu" and start["precision"] == auto and start["threads"] >= 1
    assert start["processor"] and start["isa"] and start["torch"] == torch.__version__


def test_resume_reproduces_the_uninterrupted_losses_exactly(phantom_dir, train_tiny, tmp_path, capsys):
    full, parts = tmp_path / "full", tmp_path / "parts"
    extra = ("eval.every=3", "train.checkpoint_every=2")
    assert train_tiny(phantom_dir, full, *extra, steps=6, variant="medcontext").finished
    assert not train_tiny(phantom_dir, parts, *extra, steps=6, variant="medcontext", stop_after=3).finished
    assert read_checkpoint(parts / "last.pt")["step"] == 3
    capsys.readouterr()
    assert train_tiny(phantom_dir, parts, *extra, steps=6, variant="medcontext", resume=True).finished
    assert f"resuming at step 3 of 6 from {parts / 'last.pt'}" in capsys.readouterr().err
    assert _losses(parts) == _losses(full)  # bit-identical floats, all four terms
    assert [r["step"] for r in read_metrics(parts / "metrics.jsonl", "start")] == [0, 3]  # one per start
    a, b = read_checkpoint(full / "last.pt")["model"], read_checkpoint(parts / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # student, teacher and mask token


def test_resume_refuses_changed_settings_and_fresh_run_refuses_existing_folder(phantom_dir, train_argv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(phantom_dir, out, "--stop-after", "1", steps=3)) == 0
    capsys.readouterr()
    assert main(train_argv(phantom_dir, out, "--resume", "--set", "optim.lr=5e-3", steps=3)) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "Traceback" not in err
    assert main(train_argv(phantom_dir, out, steps=3)) == 2
    assert "--resume" in capsys.readouterr().err


def test_crash_during_checkpoint_save_keeps_previous_file(phantom_dir, train_tiny, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train_tiny(phantom_dir, out, steps=4, stop_after=2).step == 2
    before = read_checkpoint(out / "last.pt")
    real_save = torch.save

    def torn_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="simulated"):
        train(load_config(out / "config.yaml"), out, resume=True, progress=False, echo=lambda s: None)
    monkeypatch.setattr(torch, "save", real_save)
    after = read_checkpoint(out / "last.pt")
    assert after["step"] == before["step"] == 2
    assert all(torch.equal(after["model"][k], before["model"][k]) for k in before["model"])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


class _NaNAfter(torch.nn.Module):
    """Wraps a network; its training-mode outputs turn NaN after ``good`` calls."""

    calls = 0

    def __init__(self, net, good):
        super().__init__()
        self.net, self.good = net, good

    def forward(self, x):
        out = self.net(x)
        if self.training:
            type(self).calls += 1
            if type(self).calls > self.good:
                out = out * float("nan")
        return out


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(phantom_dir, train_argv, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, [f"data.path={phantom_dir}", "model.options={size: tiny}", "model.roi=[16,16,16]",
                             "method.variant=baseline", "train.steps=8", "train.checkpoint_every=2",
                             "data.num_samples=1", "data.val_cases=0", "data.test_cases=2", "train.tensorboard=false"])
    _NaNAfter.calls = 0
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, out, progress=False, echo=lambda s: None, network_hook=lambda net: _NaNAfter(net, good=3))
    message = str(info.value)
    assert "step 4" in message and "total=nan" in message and "sup=nan" in message and "after step 2" in message
    assert read_checkpoint(out / "last.pt")["step"] == 2
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "train")] == [1, 2, 3]
    state = read_checkpoint(out / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_sigterm_finishes_the_step_saves_and_exits_143(phantom_dir, train_argv, tmp_path, monkeypatch, capsys):
    def send_sigterm(self, step, values):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "on_train_step_end", send_sigterm)
    out = tmp_path / "run"
    previous = signal.getsignal(signal.SIGTERM)
    assert main(train_argv(phantom_dir, out, steps=50)) == 143
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
    assert read_checkpoint(out / "last.pt")["step"] == 2
    assert "--resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(train_argv(phantom_dir, out, "--resume", "--stop-after", "1", steps=50)) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "train")] == [1, 2, 3]


def test_strict_checkpoint_loading_names_differing_keys(phantom_dir, train_tiny, tmp_path):
    out = tmp_path / "run"
    assert train_tiny(phantom_dir, out, steps=1).finished
    ckpt = read_checkpoint(out / "last.pt")
    from medcontext.engine.checkpoint import load_model_state
    from medcontext.engine.builder import build_medcontext, build_network
    from medcontext.engine.run_folder import load_run

    info = load_run(out)
    cfg = info.cfg
    cfg.method.variant = "medcontext"  # has teacher.* and mask token keys the baseline lacks
    mc = build_medcontext(cfg, build_network(cfg, 1, 8, info.roi), info.roi, "softmax")
    with pytest.raises(CheckpointError) as err:
        load_model_state(mc, ckpt["model"], source="last.pt")
    assert "missing in last.pt" in str(err.value) and "teacher." in str(err.value)
    (out / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pt"):
        read_checkpoint(out / "broken.pt")


def test_init_checkpoint_loads_student_and_teacher(phantom_dir, train_tiny, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert train_tiny(phantom_dir, first, steps=2).finished
    capsys.readouterr()
    assert train_tiny(phantom_dir, second, f"model.init_checkpoint={first / 'last.pt'}", steps=2, variant="medcontext",
                      stop_after=1).step == 1
    report = capsys.readouterr().out
    assert "loaded" in report and "missing 0" in report and "unexpected 0" in report
    # the teacher started as a copy of the initialised student: after one step at momentum
    # 0.996 it is still within 0.4 % of the first run's weights
    src = read_checkpoint(first / "last.pt")["model"]
    dst = read_checkpoint(second / "last.pt")["model"]
    key = next(k for k in src if k.startswith("network.") and k.endswith("weight"))
    teacher = dst["teacher." + key[len("network."):]]
    assert torch.allclose(teacher, src[key], atol=0.004 * src[key].abs().max().item() + 1e-6)
