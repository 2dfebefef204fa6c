"""The run folder: umask permissions, stale temporaries, a full disk, a signal on the last step."""

from __future__ import annotations

import os
import signal
import stat

import torch

import medcontext.io.atomic as atomic
from medcontext.cli import main
from medcontext.engine import train
from medcontext.engine.checkpoint import read_checkpoint
from medcontext.engine.config import load_config
from medcontext.engine.trainer import Trainer


def test_run_folder_files_get_the_umask_permissions(phantom_dir, train_argv, tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main(train_argv(phantom_dir, out, steps=2)) == 0
    finally:
        os.umask(old)
    files = [p for p in out.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"config.yaml", "split.json", "dataset.json", "preprocess.json", "last.pt",
                                       "best.pt", "metrics.jsonl"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(0o644) for p in files}


def test_resume_removes_the_temporary_file_of_a_killed_checkpoint_write(phantom_dir, train_argv, tmp_path, capsys,
                                                                         dead_pid):
    out = tmp_path / "run"
    assert main(train_argv(phantom_dir, out, "--stop-after", "1", steps=3)) == 0
    stale = out / f".last.pt.{dead_pid}.0123456789ab.tmp"  # what kill -9 during save_checkpoint leaves
    stale.write_bytes(b"\0" * 2_000_000)
    capsys.readouterr()
    assert main(train_argv(phantom_dir, out, "--resume", "--stop-after", "1", steps=3)) == 0
    assert not stale.exists()
    assert f"removed 1 temporary file(s) of interrupted writes from {out}: {stale.name} (2.0 MB)" in capsys.readouterr().out
    assert read_checkpoint(out / "last.pt")["step"] == 2


def test_a_full_disk_during_training_names_the_checkpoint_and_keeps_the_last_one(phantom_dir, train_argv, tmp_path,
                                                                                  monkeypatch, capsys, full_disk):
    out = tmp_path / "run"
    every_step = ("--set", "train.checkpoint_every=1")  # step 3 writes last.pt (before the validation's best.pt)
    assert main(train_argv(phantom_dir, out, *every_step, "--stop-after", "2", steps=4)) == 0
    before = read_checkpoint(out / "last.pt")
    size = (out / "last.pt").stat().st_size
    monkeypatch.setattr(atomic, "open", full_disk(4096), raising=False)
    capsys.readouterr()
    assert main(train_argv(phantom_dir, out, *every_step, "--resume", steps=4)) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"cannot write {out / 'last.pt'}: no space left" in err
    assert f"it needs about {size / 1e6:.1f} MB" in err
    assert "keeps its previous content" in err
    after = read_checkpoint(out / "last.pt")
    assert after["step"] == before["step"] == 2
    assert all(torch.equal(after["model"][k], before["model"][k]) for k in before["model"])
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


def test_sigterm_during_the_last_step_reports_a_complete_run(phantom_dir, train_argv, tmp_path, monkeypatch, capsys):
    def sigterm_on_last_step(self, step, values):
        if step == self.total_steps:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "on_train_step_end", sigterm_on_last_step)
    out = tmp_path / "run"
    assert main(train_argv(phantom_dir, out, steps=3)) == 143
    err = capsys.readouterr().err
    assert "--resume" not in err
    assert "received SIGTERM during the last step: the run is complete (3 of 3 steps" in err
    assert f"SIGTERM arrived during the last step; the run is complete: {out / 'last.pt'}" in err
    assert read_checkpoint(out / "last.pt")["step"] == 3


def test_sigterm_before_the_last_step_still_says_resume(phantom_dir, tmp_path, monkeypatch, capsys):
    def sigterm_on_step_two(self, step, values):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "on_train_step_end", sigterm_on_step_two)
    cfg = load_config(None, [f"data.path={phantom_dir}", "model.options={size: tiny}", "model.roi=[16,16,16]",
                             "method.variant=baseline", "train.steps=3", "data.num_samples=1", "data.val_cases=0",
                             "data.test_cases=2", "train.tensorboard=false"])
    result = train(cfg, tmp_path / "run", progress=False, echo=lambda s: None)
    assert (result.stopped_by, result.finished, result.exit_code) == ("SIGTERM", False, 143)
    assert "continue with --resume" in capsys.readouterr().err
