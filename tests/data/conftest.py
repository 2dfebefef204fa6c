"""Fixtures for the data tests: a phantom dataset. The NIfTI writers (``helpers``) and the one catalogue
of broken datasets (``broken_dataset``) are in tests/conftest.py: the engine's tests use them too."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcontext.data import generate_phantom


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A 6-case (+1 unlabelled) phantom of 24^3 voxels; treat as read-only."""
    return generate_phantom(tmp_path_factory.mktemp("phantom"), num_cases=6, shape=(24, 24, 24), seed=3, num_test=1)
