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
