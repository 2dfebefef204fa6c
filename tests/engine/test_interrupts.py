"""SIGINT/SIGTERM stop the demo, a study and an experiment: saved, exit 130/143, nothing of the
unfinished training evaluated or reported, and a message that says how to continue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medcontext.engine.host.signals import GracefulStop, RunInterrupted, StopOnSignal

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_a_signal_outside_training_raises_run_interrupted_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted) as err:
        with StopOnSignal():
            signal.raise_signal(signal.SIGTERM)
            time.sleep(1)  # the handler raises before this ends
    assert err.value.exit_code == 143 and err.value.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_stops_the_demo_without_evaluating(tmp_path):
    """What ``timeout 120 medcontext demo`` does: SIGTERM during the first run's training.

    The run is far longer than the test waits (100000 steps), so it cannot finish before the
    signal arrives, however fast the machine: the outcome does not depend on timing.
    """
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medcontext", "demo", "--quick", "--steps", "100000", "--out", str(out), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    metrics = out / "baseline" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and '"train"' in metrics.read_text()) and proc.poll() is None:
        assert time.monotonic() < deadline, "the demo did not start training"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr
    assert "SIGTERM stopped the baseline run" in stderr and "same `medcontext demo` command again" in stderr
    assert "evaluating" not in stdout and "| liver |" not in stdout
    assert not (out / "results.md").exists() and not (out / "medcontext").exists()
    assert (out / "baseline" / "last.pt").is_file()


def test_a_signal_during_a_study_run_saves_it_and_records_nothing(tmp_path, phantom_dir, monkeypatch):
    from medcontext.engine.checkpoint import read_checkpoint
    from medcontext.study import StudyRun, run_study, execution

    real_train = execution.train

    class SignalOnSecondForward(torch.nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network, self.calls = network, 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C in the middle of a step
            return self.network(x)

    def train_with_a_signal(cfg, run_dir, **kwargs):
        return real_train(cfg, run_dir, network_hook=SignalOnSecondForward, **kwargs)

    monkeypatch.setattr(execution, "train", train_with_a_signal)
    tiny = {"model.options": {"size": "tiny"}, "model.roi": [16, 16, 16], "train.steps": 5, "data.val_cases": 1,
            "data.num_samples": 1, "eval.every": 0, "optim.warmup_steps": 0}
    runs = [StudyRun("unet3d_k2", "unet3d", 2, "baseline", 0, overrides=tiny)]
    test_ids = sorted(p.name.split(".")[0] for p in (phantom_dir / "labelsTr").iterdir())[:2]
    out = tmp_path / "study"
    with pytest.raises(RunInterrupted) as err:
        run_study(runs, phantom_dir, out, test_ids, progress=False, echo=lambda s: None)
    assert err.value.exit_code == 130 and "same command again" in str(err.value)
    run_dir = out / runs[0].name
    assert 1 <= read_checkpoint(run_dir / "last.pt")["step"] < 5
    assert not (run_dir / "study_done.json").exists() and not (out / "study.jsonl").exists()
    assert not (run_dir / "eval").exists()


def test_the_cli_turns_run_interrupted_into_its_exit_code(monkeypatch, capsys):
    from medcontext import cli

    def stopped(args):
        raise RunInterrupted(signal.SIGTERM, "SIGTERM stopped the run; run the same command again to continue")

    monkeypatch.setattr(cli, "_COMMANDS", {**cli._COMMANDS, "experiment": stopped})
    rc = cli.main(["experiment", "hippocampus", "--data", "d", "--out", "o"])
    assert rc == 143 and "run the same command again" in capsys.readouterr().err


def test_the_demo_continues_its_own_interrupted_folder_and_restarts_otherwise(tmp_path):
    from medcontext.demo import _prepare_out

    out = tmp_path / "demo"
    settings = {"quick": True, "seed": 0, "train_cases": 2, "steps": 40}
    assert _prepare_out(out, settings) is False
    (out / "demo.json").write_text(json.dumps(settings))
    (out / "baseline").mkdir()
    assert _prepare_out(out, dict(settings)) is True and (out / "baseline").is_dir()  # same settings: continue
    assert _prepare_out(out, {**settings, "seed": 1}) is False and not (out / "baseline").exists()
    (out / "baseline").mkdir()
    (out / "results.md").write_text("done")
    assert _prepare_out(out, settings) is False and not (out / "results.md").exists()  # a finished demo restarts


def test_a_stopped_and_resumed_run_reaches_the_same_validation_dice_at_the_same_steps(tmp_path, phantom_dir):
    from medcontext.cli import main
    from medcontext.engine.training_log import read_metrics

    def argv(out, *extra):
        return ["train", "--data", str(phantom_dir), "--out", str(out), "--steps", "6", "--variant", "medcontext",
                "--seed", "0", "--model", "unet3d", "--model-size", "tiny", "--roi", "16", "16", "16", "--no-progress",
                "--set", "data.num_samples=1", "--set", "data.val_cases=1", "--set", "data.test_cases=2",
                "--set", "train.tensorboard=false", "--set", "eval.every=2", "--set", "train.checkpoint_every=2",
                *extra]

    full, parts = tmp_path / "full", tmp_path / "parts"
    assert main(argv(full)) == 0
    assert main(argv(parts, "--stop-after", "3")) == 0
    assert main(argv(parts, "--resume")) == 0

    def dice(run):
        return [(r["step"], r["mean_dice"]) for r in read_metrics(run / "metrics.jsonl", "val")]

    assert [s for s, _ in dice(full)] == [2, 4, 6]
    assert dice(parts) == dice(full)


def test_graceful_stop_sets_flag_and_restores_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM" and stop.exit_code == 143
        stop.signum = None
        stop.handle(signal.SIGINT)
        assert stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C aborts at once
            stop.handle(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is previous
