"""Shipped configs and test splits: found by name from any directory, and after a wheel install."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from medcontext.shipped import find_config, find_split

ROOT = Path(__file__).resolve().parents[1]


def test_names_resolve_independently_of_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("cpu_phantom") == ROOT / "configs" / "cpu_phantom.yaml"
    assert find_config("cpu_phantom.yaml") == ROOT / "configs" / "cpu_phantom.yaml"
    split = find_split("hippocampus_test")  # the study's default test split, by name
    assert split == ROOT / "benchmarks" / "splits" / "hippocampus_test.json"
    assert len(json.loads(split.read_text())["test"]) == 50
    (tmp_path / "mine.yaml").write_text("train: {steps: 3}\n")
    assert find_config("mine.yaml") == tmp_path / "mine.yaml"  # a file given as a path still wins
    with pytest.raises(FileNotFoundError, match="cpu_phantom"):
        find_config("no_such_config")  # the message lists the shipped names


def test_a_wheel_install_ships_and_finds_the_configs_and_splits(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "configs", source / "configs")
    shutil.copytree(ROOT / "benchmarks" / "splits", source / "benchmarks" / "splits")
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
        capture_output=True, text=True,
    )
    if built.returncode != 0 and "No module named pip" in built.stderr:
        pytest.skip("pip is not available to build a wheel")
    assert built.returncode == 0, built.stderr
    site = tmp_path / "site"
    with zipfile.ZipFile(next(wheels.glob("medcontext-*.whl"))) as wheel:
        wheel.extractall(site)  # what pip install puts in site-packages
    assert (site / "medcontext" / "configs" / "cpu_phantom.yaml").is_file()
    assert (site / "medcontext" / "configs" / "base" / "paper.yaml").is_file()  # what the paper configs build on
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("from medcontext.shipped import find_config, find_split; "
            "from medcontext.engine.config import load_config; "
            "print(find_config('cpu_phantom')); print(find_split('hippocampus_test')); "
            "cfg = load_config(find_config('acdc_swin_unetr_5shot')); "
            "print(cfg.model.name, cfg.data.preset, cfg.optim.lr, cfg.optim.warmup_steps)")
    found = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                           env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, check=True).stdout.split()
    assert found == [str(site / "medcontext" / "configs" / "cpu_phantom.yaml"),
                     str(site / "medcontext" / "splits" / "hippocampus_test.json"),
                     "swin_unetr", "acdc", "0.0001", "250"]  # a composed config resolves from the wheel
