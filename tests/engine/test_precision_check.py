"""The layer-by-layer check of bf16 against fp32, and what a run does with its answer.

A layer that a machine computes wrongly in bf16 is simulated by a convolution whose forward (or
backward) goes wrong only under autocast, so the tests behave the same on every CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medcontext.engine import load_config, train
from medcontext.engine.host.precision import Precision
from medcontext.engine.host.precision_check import (
    LayerPrecisionError,
    fall_back_if_wrong,
    reduced_precision_errors,
)
from medcontext.engine.training_log import read_metrics

CPU = torch.device("cpu")
BF16 = Precision("bf16", CPU, reason="train.precision=bf16")


def _under_autocast() -> bool:
    return torch.is_autocast_enabled("cpu")


class _WrongForwardConv(nn.Conv3d):
    """Right in fp32; under autocast every output but the first voxel is shifted by 10."""

    def forward(self, x):
        out = super().forward(x)
        if _under_autocast():
            wrong = out.clone()
            wrong.view(-1)[1:] += 10.0
            return wrong
        return out


class _TripleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return 3 * grad


class _WrongBackwardConv(nn.Conv3d):
    """Right forward everywhere; under autocast its gradients are 3x too large."""

    def forward(self, x):
        out = super().forward(x)
        return _TripleGradient.apply(out) if _under_autocast() else out


def _net(conv_class=nn.Conv3d) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), conv_class(4, 4, 2, stride=2),
        nn.Flatten(1), nn.Linear(4 * 4 * 4 * 4, 3),
    )


def test_correct_layers_pass_and_an_input_gradient_difference_would_not_hide():
    assert reduced_precision_errors(_net(), (2, 1, 8, 8, 8), BF16) == []
    # tolerance 0 lists every layer and quantity: the check does compare all of them
    every = reduced_precision_errors(_net(), (2, 1, 8, 8, 8), BF16, tolerance=0.0)
    assert {(e.layer, e.quantity) for e in every} == {
        (name, quantity) for name in ("0", "3", "5") for quantity in ("output", "input gradient", "weight gradient")
    }
    assert all(0 < e.error < 0.05 for e in every)


def test_a_wrong_forward_is_found_and_named():
    errors = reduced_precision_errors(_net(_WrongForwardConv), (2, 1, 8, 8, 8), BF16)
    assert [(e.layer, e.quantity) for e in errors] == [("3", "output")]
    (error,) = errors
    assert error.input_shape == (2, 4, 8, 8, 8) and error.error > 1
    assert error.describe().startswith("3 (_WrongForwardConv(4, 4, kernel_size=(2, 2, 2)") and "output off by" in error.describe()


def test_a_wrong_backward_is_found():
    errors = reduced_precision_errors(_net(_WrongBackwardConv), (2, 1, 8, 8, 8), BF16)
    assert {(e.layer, e.quantity) for e in errors} == {("3", "input gradient"), ("3", "weight gradient")}
    assert all(e.error > 0.5 for e in errors)  # 3x - 1x: twice the largest gradient, about one range


def test_the_check_leaves_the_network_and_the_random_state_as_they_were():
    net = _net(_WrongForwardConv).train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    reduced_precision_errors(net, (2, 1, 8, 8, 8), BF16)
    assert torch.equal(torch.rand(3), expected)
    assert net.training and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert not net._forward_hooks and not any(m._forward_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_fp32_has_nothing_to_check():
    assert reduced_precision_errors(_net(_WrongForwardConv), (2, 1, 8, 8, 8), Precision("fp32", CPU)) == []


def test_non_finite_results_count_as_wrong():
    class _NaNConv(nn.Conv3d):
        def forward(self, x):
            out = super().forward(x)
            return out * float("nan") if _under_autocast() else out

    (error,) = [e for e in reduced_precision_errors(_net(_NaNConv), (2, 1, 8, 8, 8), BF16) if e.quantity == "output"]
    assert error.error == float("inf") and "non-finite" in error.describe()


def test_auto_falls_back_to_fp32_and_an_explicit_bf16_is_an_error():
    wrong = [LayerPrecisionError("vit.patch", "Conv3d(1, 8, 16)", (2, 1, 32, 32, 16), "output", 0.73)]
    assert fall_back_if_wrong(BF16, [], requested="auto") is BF16
    fallback = fall_back_if_wrong(BF16, wrong, requested="auto")
    assert fallback.name == "fp32" and fallback.dtype is None and fallback.device == CPU
    assert "checked and is wrong here" in fallback.reason and "vit.patch" in fallback.warning and "73%" in fallback.warning
    with pytest.raises(ValueError, match=r"train.precision=bf16: .*vit\.patch .*off by 73%.*train.precision=auto"):
        fall_back_if_wrong(BF16, wrong, requested="bf16")


def _swap_last_conv(net: nn.Module) -> nn.Module:
    """A network hook: the last ``Conv3d`` of the network becomes a :class:`_WrongForwardConv`."""
    name, conv = [(n, m) for n, m in net.named_modules() if type(m) is nn.Conv3d][-1]
    parent_name, _, child = name.rpartition(".")
    wrong = _WrongForwardConv(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                              padding=conv.padding, bias=conv.bias is not None)
    wrong.load_state_dict(conv.state_dict())
    setattr(net.get_submodule(parent_name) if parent_name else net, child, wrong)
    return net


def _tiny_run(phantom_dir, *settings):
    return load_config(None, [f"data.path={phantom_dir}", "model.options={size: tiny}", "model.roi=[16,16,16]",
                              "method.variant=baseline", "train.steps=1", "data.num_samples=1", "data.val_cases=0",
                              "data.test_cases=2", "train.tensorboard=false", *settings])


def test_a_run_in_explicit_bf16_stops_before_reading_data_when_a_layer_is_wrong(phantom_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"train.precision=bf16: .*_WrongForwardConv.*on \(1, "):
        train(_tiny_run(phantom_dir, "train.precision=bf16"), out, progress=False, echo=lambda s: None,
              network_hook=_swap_last_conv)
    assert not (out / "split.json").exists()  # refused before the dataset was checked and split


def test_a_run_with_auto_trains_in_fp32_when_a_layer_is_wrong(phantom_dir, tmp_path, monkeypatch):
    # auto resolves to bf16 only on CPUs with native bf16; make it do so everywhere for this test
    monkeypatch.setattr("medcontext.engine.run_folder.resolve_precision",
                        lambda name, device: Precision("bf16", device, reason="auto: native bf16 (test)"))
    lines: list[str] = []
    out = tmp_path / "run"
    train(_tiny_run(phantom_dir), out, progress=False, echo=lines.append, network_hook=_swap_last_conv)
    (start,) = read_metrics(out / "metrics.jsonl", "start")
    assert start["precision"] == "fp32"
    assert any(line.startswith("precision: fp32 (auto: bf16 was checked and is wrong here") for line in lines)
    assert any(line.startswith("warning: bf16 computes this network wrongly here") for line in lines)


def test_precision_check_false_trusts_the_kernels(phantom_dir, tmp_path):
    out = tmp_path / "run"
    train(_tiny_run(phantom_dir, "train.precision=bf16", "train.precision_check=false"), out, progress=False,
          echo=lambda s: None, network_hook=_swap_last_conv)
    (start,) = read_metrics(out / "metrics.jsonl", "start")
    assert start["precision"] == "bf16"
