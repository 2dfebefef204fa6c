"""Fixtures for the evaluation tests: MONAI's reference metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest


def _monai_hd95(pred: np.ndarray, truth: np.ndarray, spacing) -> float:
    """MONAI's compute_hausdorff_distance(percentile=95) on two single masks."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    def batch(m: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(m))[None, None]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_hausdorff_distance(
            batch(pred), batch(truth), include_background=True, percentile=95, spacing=[float(s) for s in spacing]
        )
    return float(out.item())


def _monai_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """MONAI's compute_dice with ignore_empty=False (both empty -> 1) on two single masks."""
    import torch
    from monai.metrics import compute_dice

    def batch(m: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(m)).float()[None, None]

    return float(compute_dice(batch(pred), batch(truth), include_background=True, ignore_empty=False).item())


@pytest.fixture
def monai_hd95():
    """``(pred, truth, spacing) -> float``: MONAI's HD95 of two masks."""
    return _monai_hd95


@pytest.fixture
def monai_dice():
    """``(pred, truth) -> float``: MONAI's Dice of two masks (both empty -> 1)."""
    return _monai_dice

