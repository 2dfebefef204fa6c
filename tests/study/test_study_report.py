import json

import numpy as np
import pytest

from medcontext.study import hippocampus_plan, load_test_split
from medcontext.study.report import RunResult, _final_loss_lines, _paired_lines, paired_bootstrap


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


def _run(method, seed, dice_by_case):
    dice = {c: {"a": d, "b": d} for c, d in dice_by_case.items()}
    hd = {c: {"a": 1.0, "b": float("nan")} for c in dice_by_case}
    return RunResult(path=None, setting="s", method=method, seed=seed, classes=["a", "b"], dice=dice, hd95=hd)


def test_paired_lines_give_differences_per_seed_and_pooled():
    cases = [f"c{i}" for i in range(30)]
    runs = []
    for seed in (0, 1):
        runs.append(_run("baseline", seed, {c: 0.5 for c in cases}))
        runs.append(_run("medcontext", seed, {c: 0.6 for c in cases}))
    lines = _paired_lines(runs)
    text = "\n".join(lines)
    assert "| medcontext | 0 | +10.00 | [+10.00, +10.00] | better |" in text
    assert "**+10.00**" in text and "all 2" in text


def test_final_loss_table_averages_the_last_steps_per_seed():
    runs = []
    for seed, level in ((0, 1.0), (1, 3.0)):
        run = _run("medcontext", seed, {"c0": 0.5})
        # 100 logged steps: the first 50 at 9.0, the last 50 at `level` (sup), level / 2 (msl), 0 (cl)
        run.train_log = [
            {"step": step, "sup": 9.0 if step <= 50 else level, "msl": 9.0 if step <= 50 else level / 2, "cl": 0.0}
            for step in range(1, 101)
        ]
        runs.append(run)
    text = "\n".join(_final_loss_lines(runs))
    assert "per seed (s0 / s1)" in text
    assert "| medcontext | 1.00 / 3.00 | 0.50 / 1.50 | 0.00 / 0.00 |" in text
    assert _final_loss_lines([_run("baseline", 0, {"c0": 0.5})]) == []  # no training log, no table


def test_plan_is_paired_and_within_budget():
    runs = hippocampus_plan()
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 53
    assert {r.overrides.get("method.beta") for r in runs if "beta" in r.ablation} == {0.1, 1.0}
    for group in ("unet3d_k5", "unet3d_k20", "unetr_k5"):
        for seed in (0, 1, 2):
            for variant in ("baseline", "medcontext", "no_teacher"):
                assert f"{group}/{variant}_s{seed}" in names
    # all methods of a setting share every setting except the method section
    a, b = (r.settings("D", ["x"]) for r in runs[:2])
    assert {k for k in a if a[k] != b[k]} <= {"method.variant", "method.mask_ratio"}


def test_fixed_test_split_file(tmp_path):
    from pathlib import Path

    split = Path(__file__).resolve().parents[2] / "benchmarks" / "splits" / "hippocampus_test.json"
    ids = load_test_split(split)
    assert len(ids) == len(set(ids)) == 50
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": []}))
    with pytest.raises(ValueError, match="'test' list"):
        load_test_split(bad)


def test_runner_does_not_evaluate_a_run_stopped_by_a_signal(tmp_path, monkeypatch):
    """A SIGTERM-stopped run must neither be evaluated nor marked done (it resumes next time)."""
    from types import SimpleNamespace

    from medcontext.study import runner

    calls = []
    monkeypatch.setattr(runner, "train", lambda cfg, run_dir, **kw: SimpleNamespace(finished=False, step=3))
    monkeypatch.setattr(runner, "evaluate_run", lambda *a, **kw: calls.append(a))
    plan = hippocampus_plan()[:2]
    records = runner.run_study(plan, tmp_path, tmp_path / "study", ["x"], progress=False, echo=lambda _: None)
    assert records == [] and calls == []
    assert not any((tmp_path / "study" / r.name / runner.DONE_MARKER).exists() for r in plan)
