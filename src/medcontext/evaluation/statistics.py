"""Summary statistics of metric values: mean, std, median, missing counts, bootstrap intervals.

The one home of the statistics that the per-run reports (:class:`~medcontext.evaluation.metric_table.MetricTable`)
and the study report (:mod:`medcontext.study.comparison_report`) print. Pure numpy; values in, floats out.

Conventions:

* std is the population standard deviation (``ddof=0``).
* With ``finite_only=True`` non-finite values (a missing HD95 is NaN) are left out of the mean,
  std and median and counted as ``missing``; with no finite value the statistics are NaN. A
  missing value is never averaged as 0.
* Bootstrap intervals are 95% percentile intervals (2.5th and 97.5th percentiles of the
  resampled means) from a seeded generator, so a report is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = ["Summary", "summarize", "paired_bootstrap", "hierarchical_bootstrap"]


@dataclass(frozen=True)
class Summary:
    """Mean, std and median of some values.

    Attributes:
        mean, std, median: over the values used (all, or the finite ones); NaN when none is.
        count: number of values used.
        missing: number of values left out as non-finite (0 unless ``finite_only``).
    """

    mean: float
    std: float
    median: float
    count: int
    missing: int = 0


def summarize(values: Iterable[float], *, finite_only: bool = False) -> Summary:
    """Mean, population std (ddof=0) and median of ``values``.

    Args:
        values: numbers, e.g. the Dice of every case of a class.
        finite_only: leave out NaN and infinite values (count them as ``missing``).

    Returns:
        A :class:`Summary`; its statistics are NaN when no value is used.
    """
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64).ravel()
    used = array[np.isfinite(array)] if finite_only else array
    if used.size == 0:
        return Summary(math.nan, math.nan, math.nan, 0, int(array.size))
    return Summary(
        mean=float(used.mean()),
        std=float(used.std()),
        median=float(np.median(used)),
        count=int(used.size),
        missing=int(array.size - used.size),
    )


def paired_bootstrap(diff_per_case: np.ndarray, *, samples: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a paired per-case difference and its 95% percentile bootstrap interval.

    Args:
        diff_per_case: (N,) or (S, N) differences; with several seeds (rows) the cases are
            resampled jointly and the statistic is the mean over seeds and cases.
        samples: bootstrap resamples.
        seed: seed of the resampling generator.

    Returns:
        ``(mean, low, high)``.
    """
    values = np.atleast_2d(np.asarray(diff_per_case, dtype=float))
    rng = np.random.default_rng(seed)
    n = values.shape[1]
    draws = rng.integers(0, n, size=(samples, n))
    stats = values[:, draws].mean(axis=(0, 2))
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def hierarchical_bootstrap(
    diffs_per_seed: Sequence[np.ndarray], *, samples: int = 5000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean paired difference over seeds and its 95% interval across seeds AND test cases.

    Each bootstrap sample draws the seeds with replacement, then the test cases of every drawn
    seed with replacement, and averages; the interval thus covers both training randomness
    (which subset and initialisation a seed gives) and test-case sampling. With one seed it is
    the interval over test cases only.

    Args:
        diffs_per_seed: one (N_s,) array of per-case differences per seed.
        samples: bootstrap resamples.
        seed: seed of the resampling generator.

    Returns:
        ``(mean, low, high)``: the mean of the per-seed means and the 2.5/97.5 percentiles.
    """
    rows = [np.asarray(d, dtype=float) for d in diffs_per_seed]
    if not rows or any(r.ndim != 1 or r.size == 0 for r in rows):
        raise ValueError("diffs_per_seed must be non-empty 1-D arrays, one per seed")
    rng = np.random.default_rng(seed)
    n_seeds = len(rows)
    seed_draws = rng.integers(0, n_seeds, size=(samples, n_seeds))
    # per seed, `samples` case-resampled means; a bootstrap sample averages the drawn seeds' means
    case_means = np.stack([r[rng.integers(0, r.size, size=(samples, r.size))].mean(axis=1) for r in rows])
    stats = case_means[seed_draws, np.arange(samples)[:, None]].mean(axis=1)
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(np.mean([r.mean() for r in rows])), float(low), float(high)
