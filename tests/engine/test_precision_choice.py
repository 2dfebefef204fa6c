"""Precision ``auto`` on the CPU: bf16 only with native support, decided from the capability
(mocked here) and oneDNN's instruction-set cap; explicit bf16 without it warns with the cost."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from medcontext.engine.host import precision
from medcontext.engine.host.precision import cpu_bf16_support, resolve_precision

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cpu(monkeypatch):
    """Set the mocked CPU: ``cpu(instructions=..., onednn=...)``; counts capability queries."""
    calls = {"instructions": 0}

    def set_cpu(instructions: bool, onednn: bool = True):
        def has_instructions():
            calls["instructions"] += 1
            return instructions

        monkeypatch.setattr(precision, "_cpu_has_bf16_instructions", has_instructions)
        monkeypatch.setattr(precision, "_onednn_bf16_enabled", lambda: onednn)
        precision._cpu_bf16_support.cache_clear()
        return calls

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    yield set_cpu
    precision._cpu_bf16_support.cache_clear()


def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively(cpu):
    cpu(instructions=True)
    chosen = resolve_precision("auto", CPU)
    assert chosen.name == "bf16" and chosen.dtype == torch.bfloat16 and chosen.warning is None
    assert "natively" in chosen.describe()
    cpu(instructions=False)
    chosen = resolve_precision("auto", CPU)
    assert chosen.name == "fp32" and chosen.dtype is None
    assert "no bf16 instructions" in chosen.describe() and chosen.describe().startswith("fp32 (auto:")


@pytest.mark.parametrize("isa, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                                         ("AVX512_CORE_AMX", True), ("ALL", True)])
def test_auto_follows_the_onednn_instruction_set_cap(cpu, monkeypatch, isa, native):
    cpu(instructions=True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    chosen = resolve_precision("auto", CPU)
    assert chosen.name == ("bf16" if native else "fp32")
    if not native:
        assert f"ONEDNN_MAX_CPU_ISA={isa.upper()}" in chosen.reason


def test_auto_believes_onednn_when_it_reports_no_bf16(cpu):
    cpu(instructions=True, onednn=False)
    assert resolve_precision("auto", CPU).name == "fp32"


def test_explicit_bf16_without_native_support_runs_with_a_warning_naming_the_cost(cpu):
    cpu(instructions=False)
    chosen = resolve_precision("bf16", CPU)
    assert chosen.name == "bf16"
    assert "slower" in chosen.warning and "fp32" in chosen.warning and "train.precision=auto" in chosen.warning
    cpu(instructions=True)
    assert resolve_precision("bf16", CPU).warning is None
    assert resolve_precision("fp32", CPU).warning is None


def test_the_capability_is_asked_once_per_instruction_set_cap(cpu, monkeypatch):
    calls = cpu(instructions=True)
    for _ in range(3):
        cpu_bf16_support()
    assert calls["instructions"] == 1
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_bf16_support().native
    assert calls["instructions"] == 2


def test_this_cpu_answer_matches_onednn():
    """Unmocked: native support implies oneDNN's own bf16 support (whatever this CPU is)."""
    precision._cpu_bf16_support.cache_clear()
    if cpu_bf16_support().native:
        assert torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_the_demo_the_cpu_configs_and_the_study_use_auto(tmp_path):
    from medcontext.demo import BUDGETS, demo_config
    from medcontext.study.definitions import hippocampus_plan

    for name in ("cpu_phantom.yaml", "cpu_hippocampus_unet3d.yaml"):
        assert yaml.safe_load((REPO / "configs" / name).read_text())["train"]["precision"] == "auto"
    assert demo_config(tmp_path, "medcontext", BUDGETS["full"], train_cases=2, seed=0).train.precision == "auto"
    assert {r.settings("data", ["a"])["train.precision"] for r in hippocampus_plan()} == {"auto"}


def test_precision_choices():
    cpu = torch.device("cpu")
    # auto on the CPU: bf16 exactly where it runs natively (the choice itself: test_precision_choice.py)
    assert resolve_precision("auto", cpu).name == ("bf16" if cpu_bf16_support().native else "fp32")
    assert resolve_precision("bf16", cpu).dtype is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_precision("fp16", cpu)
    assert not resolve_precision("bf16", cpu).grad_scaler().is_enabled()
