"""The GPU check script (benchmarks/gpu_check.sh + gpu_check.py) in its tiny CPU mode, so that it
cannot rot before a GPU comes: every part runs (eager and compiled steps, ratios, smoke run)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_tiny_mode_runs_every_part_through_the_shell_script(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny", "--models", "unet3d",
                           "--budget", "900"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    rows = result["steps"]
    assert {(r["setup"], r["compile"]) for r in rows} == {(s, c) for s in ("baseline", "separate", "concat")
                                                          for c in (False, True)}
    assert all(r["s_per_step"] > 0 and "error" not in r for r in rows), rows
    by_compile = {r["compile"]: r for r in result["ratios"]}
    assert set(by_compile) == {False, True}
    for ratio in by_compile.values():
        assert ratio["separate"] > 0 and abs(ratio["separate_vs_bound"] * 7 / 3 - ratio["separate"]) < 1e-9
    smoke = result["smoke"]
    assert smoke["exit_code"] == 0 and smoke["steps"] == 2 and len(smoke["validations"]) == 2
    assert all(0.0 <= v["mean_dice"] <= 1.0 and v["postprocessed_mean_dice"] is not None for v in smoke["validations"])
    summary = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "bound 2.33" in summary and "| unet3d | 32^3 | concat | on |" in summary
    assert (tmp_path / "out" / "gpu_check.log").is_file()


def test_what_does_not_fit_the_budget_is_listed_as_skipped(tmp_path):
    gpu_check = _gpu_check()
    settings = gpu_check.tiny_settings()
    settings.budget_s = 0.0
    result = gpu_check.run_check(settings, tmp_path, gpu_check.torch.device("cpu"), log=lambda line: None)
    assert result["steps"] and all(r.get("skipped") == "time budget" for r in result["steps"])
    assert result["smoke"] == {"skipped": "time budget"} and result["ratios"] == []
    assert "time budget" in (tmp_path / "gpu_check.md").read_text()
