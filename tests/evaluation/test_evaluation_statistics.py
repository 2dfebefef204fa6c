"""Summary statistics: exact values, missing-value handling, bootstrap intervals."""

import math

import numpy as np
import pytest

from medcontext.evaluation.statistics import Summary, hierarchical_bootstrap, paired_bootstrap, summarize


def test_summarize_exact_values_and_missing_values():
    assert summarize([1.0, 2.0, 6.0]) == Summary(mean=3.0, std=math.sqrt(14 / 3), median=2.0, count=3, missing=0)
    finite = summarize([4.0, float("nan"), 2.0, float("inf")], finite_only=True)
    assert (finite.mean, finite.std, finite.median, finite.count, finite.missing) == (3.0, 1.0, 3.0, 2, 2)
    none = summarize([float("nan")] * 3, finite_only=True)
    assert math.isnan(none.mean) and math.isnan(none.std) and math.isnan(none.median)
    assert (none.count, none.missing) == (0, 3)
    assert math.isnan(summarize([1.0, float("nan")]).mean)  # without finite_only a NaN is not dropped


def test_paired_bootstrap_of_a_constant_difference_is_that_constant():
    mean, low, high = paired_bootstrap(np.full(20, 0.03))
    assert mean == pytest.approx(0.03) and low == pytest.approx(0.03) and high == pytest.approx(0.03)


def test_paired_bootstrap_interval_covers_the_mean_and_shrinks_with_more_cases():
    rng = np.random.default_rng(0)
    small = rng.normal(0.02, 0.05, 10)
    large = rng.normal(0.02, 0.05, 1000)
    m1, l1, h1 = paired_bootstrap(small)
    m2, l2, h2 = paired_bootstrap(large)
    assert l1 < m1 < h1 and l2 < m2 < h2
    assert (h2 - l2) < (h1 - l1) / 5
    assert m2 == pytest.approx(large.mean())
    # several seeds: the statistic is the mean over seeds and cases
    both = np.stack([small, small + 0.1])
    assert paired_bootstrap(both)[0] == pytest.approx(small.mean() + 0.05)


def test_hierarchical_bootstrap_covers_seed_spread_not_only_cases():
    rng = np.random.default_rng(1)
    # three seeds whose case-level differences are tight around -0.04, +0.03 and -0.01
    rows = [rng.normal(mu, 0.01, 40) for mu in (-0.04, 0.03, -0.01)]
    mean, low, high = hierarchical_bootstrap(rows)
    assert mean == pytest.approx(np.mean([r.mean() for r in rows]))
    assert low < -0.03 and high > 0.02  # about the spread of the seed means
    _, pooled_low, pooled_high = paired_bootstrap(np.stack(rows))  # cases only: far too narrow
    assert pooled_high - pooled_low < (high - low) / 5
    constant = hierarchical_bootstrap([np.full(5, 0.02), np.full(8, 0.02)])
    assert constant == pytest.approx((0.02, 0.02, 0.02))
    one_seed = hierarchical_bootstrap([rows[0]])
    assert one_seed[1] == pytest.approx(paired_bootstrap(rows[0])[1], abs=0.002)
    with pytest.raises(ValueError, match="one per seed"):
        hierarchical_bootstrap([])
