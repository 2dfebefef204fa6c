"""Crafted (malicious-pickle) weight files on every loading path: refused, named, never executed.

Each crafted file holds an object whose unpickling would create a marker file. A weights-only
load refuses it before anything runs: the marker must not exist after any command, the error
names the file and the explicit opt-in (``--trust-checkpoint`` / ``trust=True``).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medcontext.cli import main
from medcontext.engine import load_config, read_checkpoint, train
from medcontext.engine.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from medcontext.models.pretrained import load_pretrained
from medcontext.models.safe_load import UntrustedFileError, load_weights_file


class _Payload:
    """Unpickling this calls ``pathlib.Path(marker).touch()``: code execution from a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _craft(path: Path, marker: Path, base: dict | None = None) -> Path:
    """A weights file that looks right (tensors, format fields) and carries the payload."""
    data = dict(base or {"weight": torch.zeros(2)})
    data["extra"] = _Payload(marker)
    torch.save(data, path)
    return path


TINY = ["--variant", "baseline", "--seed", "0", "--model", "unet3d", "--model-size", "tiny", "--roi", "16", "16", "16",
        "--no-progress", "--set", "data.num_samples=1", "--set", "data.val_cases=1", "--set", "data.test_cases=2",
        "--set", "train.tensorboard=false", "--set", "eval.every=2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, phantom_dir) -> Path:
    """A finished 2-step run folder (with best.pt and last.pt)."""
    out = tmp_path_factory.mktemp("safe") / "run"
    assert main(["train", "--data", str(phantom_dir), "--out", str(out), "--steps", "2", *TINY]) == 0
    return out


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copied_run"
    shutil.copytree(tiny_run, copy)
    return copy


def test_weights_only_refuses_code_and_trust_opts_in(tmp_path):
    marker = tmp_path / "PWNED"
    evil = _craft(tmp_path / "evil.pt", marker)
    with pytest.raises(UntrustedFileError) as err:
        load_weights_file(evil)
    assert not marker.exists()
    assert str(evil) in str(err.value) and "--trust-checkpoint" in str(err.value) and "pathlib" in str(err.value)
    load_weights_file(evil, trust=True)  # the explicit opt-in really loads with full pickle
    assert marker.exists()


def test_init_checkpoint_crafted_file_is_refused_api_and_cli(tmp_path, phantom_dir, train_argv, capsys):
    marker = tmp_path / "PWNED"
    evil = _craft(tmp_path / "pretrained.pt", marker)
    with pytest.raises(UntrustedFileError):
        load_pretrained(torch.nn.Linear(2, 2), evil)
    rc = main(train_argv(phantom_dir, tmp_path / "run", "--init-checkpoint", str(evil), steps=1))
    err = capsys.readouterr().err
    assert rc == 2 and "pretrained.pt" in err and "--trust-checkpoint" in err
    assert not marker.exists()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_resume_of_a_crafted_last_pt_is_refused(tmp_path, tiny_run, phantom_dir, capsys):
    run = _copy_run(tiny_run, tmp_path)
    marker = tmp_path / "PWNED"
    _craft(run / "last.pt", marker, read_checkpoint(tiny_run / "last.pt"))
    rc = main(["train", "--data", str(phantom_dir), "--out", str(run), "--steps", "2", *TINY, "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and str(run / "last.pt") in err and "--trust-checkpoint" in err
    assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_refuse_a_crafted_checkpoint(tmp_path, tiny_run, phantom_dir, command, capsys):
    run = _copy_run(tiny_run, tmp_path)
    marker = tmp_path / "PWNED"
    _craft(run / "best.pt", marker, read_checkpoint(tiny_run / "best.pt"))
    argv = ["evaluate", "--run", str(run), "--no-progress"] if command == "evaluate" else [
        "predict", "--run", str(run), "--input", str(phantom_dir / "imagesTr"), "--output", str(tmp_path / "pred")]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "best.pt" in err and "--trust-checkpoint" in err
    assert not marker.exists()
    assert not (tmp_path / "pred").exists() and not (run / "eval" / "metrics.csv").exists()


def test_study_refuses_a_crafted_checkpoint_in_a_run_folder(tmp_path, phantom_dir):
    from medcontext.study import StudyRun, run_study

    tiny = {"model.options": {"size": "tiny"}, "model.roi": [16, 16, 16], "train.steps": 3, "data.val_cases": 1,
            "data.num_samples": 1, "eval.every": 0, "optim.warmup_steps": 0, "train.checkpoint_every": 1}
    run = StudyRun("unet3d_k2", "unet3d", 2, "baseline", 0, overrides=tiny)
    test_ids = sorted(p.name.split(".")[0] for p in (phantom_dir / "labelsTr").iterdir())[:2]
    out = tmp_path / "study"
    cfg = load_config(None, run.settings(str(phantom_dir), test_ids))
    train(cfg, out / run.name, stop_after=1, progress=False, echo=lambda s: None)  # an interrupted study run
    marker = tmp_path / "PWNED"
    _craft(out / run.name / "last.pt", marker, read_checkpoint(out / run.name / "last.pt"))
    with pytest.raises(UntrustedFileError, match="last.pt"):
        run_study([run], phantom_dir, out, test_ids, progress=False, echo=lambda s: None)
    assert not marker.exists()
    assert not (out / run.name / "study_done.json").exists()


def test_demo_refuses_a_crafted_checkpoint_when_continuing(tmp_path):
    from medcontext.demo import run_demo

    out = tmp_path / "demo"
    (out / "baseline").mkdir(parents=True)
    settings = {"quick": True, "seed": 0, "train_cases": 2, "steps": 2}
    (out / "demo.json").write_text(json.dumps(settings))
    marker = tmp_path / "PWNED"
    _craft(out / "baseline" / "last.pt", marker, {"format": "medcontext-checkpoint", "step": 1})
    with pytest.raises(UntrustedFileError, match="last.pt"):
        run_demo(out, quick=True, steps=2, progress=False, echo=lambda s: None)
    assert not marker.exists()


def test_own_checkpoints_load_weights_only_with_exact_random_states(tmp_path):
    gen = torch.Generator().manual_seed(3)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state(gen)
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    save_checkpoint(tmp_path / "c.pt", {"rng": state, "step": 1})
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "c.pt")) == []
    random.seed(9), np.random.seed(9), torch.manual_seed(9), gen.manual_seed(9)
    restore_rng_state(read_checkpoint(tmp_path / "c.pt")["rng"], gen)
    assert (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item()) == expected


def test_format_1_checkpoints_with_a_numpy_random_state_still_load(tmp_path):
    np.random.seed(5)
    legacy = {"format": "medcontext-checkpoint", "format_version": 1, "step": 1,
              "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                      "cuda": None, "mask_generator": None}}
    expected = np.random.rand()
    torch.save(legacy, tmp_path / "old.pt")
    data = read_checkpoint(tmp_path / "old.pt")  # weights-only, numpy's array allowed
    restore_rng_state(data["rng"])
    assert np.random.rand() == expected
