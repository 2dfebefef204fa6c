"""Fixtures for the engine and CLI tests: a tiny phantom dataset and tiny training settings."""

from __future__ import annotations

from pathlib import Path

import pytest

# a 3-level unet3d at 16^3 crops: a training step takes a few hundredths of a second
TINY = [
    "--model", "unet3d", "--model-size", "tiny", "--roi", "16", "16", "16",
    "--set", "data.num_samples=1", "--set", "data.val_cases=1", "--set", "data.test_cases=2",
    "--set", "train.tensorboard=false", "--set", "optim.lr=1e-3", "--no-progress",
]


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Six phantom cases of 24^3 voxels (MSD layout)."""
    from medcontext.data import generate_phantom

    return generate_phantom(tmp_path_factory.mktemp("phantom") / "Phantom", num_cases=6, shape=(24, 24, 24), seed=0)


def _train_argv(phantom_dir: Path, out: Path, *extra: str, steps: int = 4, variant: str = "baseline") -> list[str]:
    return ["train", "--data", str(phantom_dir), "--out", str(out), "--variant", variant, "--steps", str(steps),
            "--seed", "0", *TINY, *extra]


@pytest.fixture
def train_argv():
    """``train_argv(phantom_dir, out, *extra, steps=4, variant="baseline")``: arguments of a tiny run."""
    return _train_argv


# the same tiny run as TINY, as configuration keys for the engine's own API
TINY_SETTINGS = [
    "model.name=unet3d", "model.options={size: tiny}", "model.roi=[16, 16, 16]", "data.num_samples=1",
    "data.val_cases=1", "data.test_cases=2", "train.tensorboard=false", "optim.lr=1e-3",
]


def _tiny_config(phantom_dir: Path, *overrides: str, steps: int = 4, variant: str = "baseline"):
    from medcontext.engine import load_config

    return load_config(None, [f"data.path={phantom_dir}", f"method.variant={variant}", f"train.steps={steps}",
                              "train.seed=0", *TINY_SETTINGS, *overrides])


def _train_tiny(phantom_dir: Path, out: Path, *overrides: str, steps: int = 4, variant: str = "baseline", **train_kwargs):
    from medcontext.engine import train

    return train(_tiny_config(phantom_dir, *overrides, steps=steps, variant=variant), out, progress=False, **train_kwargs)


@pytest.fixture
def tiny_config():
    """``tiny_config(phantom_dir, *overrides, steps=4, variant="baseline")``: the TrainConfig of a tiny run."""
    return _tiny_config


@pytest.fixture
def train_tiny():
    """``train_tiny(phantom_dir, out, *overrides, steps=4, variant="baseline", **train_kwargs)``: a tiny
    run through :func:`medcontext.engine.train` (not the CLI); returns its ``TrainResult``."""
    return _train_tiny
