"""The demo pipeline on a 2-step budget: both runs share everything but the variant, outputs exist."""

from __future__ import annotations

import json

import pytest

from medcontext.demo import _prepare_out, run_demo, short_run_momentum
from medcontext.engine import load_config
from medcontext.engine.config import ConfigError


def test_demo_runs_both_variants_with_the_same_budget(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, quick=True, steps=2, progress=False, echo=lambda s: None)
    base, mc = (load_config(result.runs[v] / "config.yaml") for v in ("baseline", "medcontext"))
    assert base.diff(mc) == {"method.variant": ("baseline", "medcontext")}
    split = [json.loads((result.runs[v] / "split.json").read_text()) for v in ("baseline", "medcontext")]
    assert split[0] == split[1] and len(split[0]["train"]) == 2
    for name in ("overlay.png", "curves.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    table = (out / "results.md").read_text()
    assert "| liver |" in table and "baseline Dice" in table and "medcontext Dice" in table
    assert set(result.summaries) == {"baseline", "medcontext"}
    assert result.summaries["medcontext"].n_cases == len(split[0]["test"])
    # a second run reuses its own folder (old runs removed); a foreign non-empty folder is refused
    _prepare_out(out)
    assert not (out / "baseline").exists() and (out / "demo.json").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a demo folder"):
        run_demo(foreign, quick=True, steps=1, progress=False, echo=lambda s: None)


def test_short_run_momentum():
    assert short_run_momentum(300) == pytest.approx(0.95)
    assert short_run_momentum(100_000) == 0.996
    assert short_run_momentum(10) == 0.5
