"""Engine building blocks: resumable sampling, learning-rate schedules, label conversion,
atomic writes, signal handling, precision choice."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from medcontext.io.atomic import atomic_write, write_text_atomic
from medcontext.engine.config import OptimConfig
from medcontext.engine.inference import logits_to_labels, region_paint_order, regions_to_labels
from medcontext.engine.optim import build_optimizer, learning_rate
from medcontext.engine.host.precision import cpu_bf16_support, resolve_precision
from medcontext.engine.sampling import SeededDraws, StepSampler, draw_seed, make_step_loader
from medcontext.engine.host.signals import GracefulStop


class _RandomTransform:
    """A Randomizable-like transform: adds uniform noise from its own generator."""

    def __init__(self):
        self.R = np.random.RandomState(0)

    def set_random_state(self, seed=None):
        self.R = np.random.RandomState(seed)

    def __call__(self, value):
        return value + self.R.uniform()


class _Items(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n, self.transform = n, _RandomTransform()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.tensor([self.transform(float(i))]), "label": torch.tensor([i])}


def test_step_sampler_indices_and_sharding():
    assert list(StepSampler(0, 3, batch_size=2)) == [0, 1, 2, 3, 4, 5]
    assert list(StepSampler(2, 3, batch_size=2)) == [4, 5]
    ranks = [list(StepSampler(0, 2, batch_size=2, world_size=2, rank=r)) for r in (0, 1)]
    assert ranks == [[0, 1, 4, 5], [2, 3, 6, 7]]  # disjoint, together the single-process stream
    with pytest.raises(ValueError, match="rank"):
        StepSampler(0, 2, 1, world_size=2, rank=2)


def test_draws_depend_only_on_seed_and_index():
    a, b = SeededDraws(_Items(5), seed=3), SeededDraws(_Items(5), seed=3)
    forward = [a[i]["image"].item() for i in range(12)]
    backward = [b[i]["image"].item() for i in reversed(range(12))][::-1]
    assert forward == backward
    # every epoch visits every item once, in a seed-dependent order
    cases = [a.case_index(i) for i in range(10)]
    assert sorted(cases[:5]) == sorted(cases[5:]) == list(range(5)) and cases[:5] != cases[5:]
    assert [SeededDraws(_Items(5), seed=4).case_index(i) for i in range(5)] != cases[:5]
    assert draw_seed(0, 1) != draw_seed(0, 2) != draw_seed(1, 1)


def test_loader_resumed_at_a_step_yields_the_same_batches():
    kwargs = dict(seed=1, total_steps=6, batch_size=2, collate_fn=None)
    full = [b["image"].flatten().tolist() for b in make_step_loader(_Items(4), start_step=0, **kwargs)]
    tail = [b["image"].flatten().tolist() for b in make_step_loader(_Items(4), start_step=4, **kwargs)]
    assert len(full) == 6 and tail == full[4:]
    # worker processes give the same batches
    workers = [b["image"].flatten().tolist() for b in make_step_loader(_Items(4), start_step=0, num_workers=2, **kwargs)]
    assert workers == full
    # creating and iterating a loader does not consume the global torch RNG
    state = torch.get_rng_state()
    list(make_step_loader(_Items(4), start_step=0, **kwargs))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(
    "schedule, step, expected",
    [
        ("constant", 0, 0.25),  # warmup 4 steps: (0+1)/4 * 1.0
        ("constant", 3, 1.0),
        ("constant", 9, 1.0),
        ("warmup_cosine", 0, 0.25),
        ("warmup_cosine", 4, 1.0),
        ("warmup_cosine", 9, 0.0),
        ("poly", 5, (1 - 5 / 10) ** 0.9),
    ],
)
def test_learning_rate_is_a_pure_function_of_the_step(schedule, step, expected):
    cfg = OptimConfig(lr=1.0, schedule=schedule, warmup_steps=4 if schedule != "poly" else 0)
    assert learning_rate(step, 10, cfg) == pytest.approx(expected)


def test_optimizers():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, OptimConfig(name="sgd", lr=0.1))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.99
    adamw = build_optimizer(params, OptimConfig(name="adamw", lr=0.1, weight_decay=0.01))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.01


def test_brats_regions_paint_et_over_tc_over_wt():
    brats21 = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    assert region_paint_order(brats21) == [(0, 2), (1, 1), (2, 4)]
    msd = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert region_paint_order(msd) == [(0, 1), (1, 2), (2, 3)]
    # voxel 0: WT only -> edema 2; voxel 1: WT+TC -> necrosis 1; voxel 2: all -> ET 4; voxel 3: none
    on = np.array([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0]], dtype=np.float32).reshape(3, 4, 1, 1)
    assert regions_to_labels(on, brats21).ravel().tolist() == [2, 1, 4, 0]
    logits = torch.from_numpy(np.where(on > 0, 3.0, -3.0))
    assert logits_to_labels(logits, "sigmoid", regions=brats21).ravel().tolist() == [2, 1, 4, 0]


def test_softmax_labels_are_argmax_channels():
    logits = torch.zeros(3, 2, 1, 1)
    logits[2, 0], logits[1, 1] = 5.0, 5.0
    assert logits_to_labels(logits, "softmax").ravel().tolist() == [2, 1]
    assert logits_to_labels(logits, "softmax", channel_labels=[0, 4, 7]).ravel().tolist() == [7, 4]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    write_text_atomic(target, "old")

    def fail(handle):
        handle.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_graceful_stop_sets_flag_and_restores_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM" and stop.exit_code == 143
        stop.signum = None
        stop.handle(signal.SIGINT)
        assert stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C aborts at once
            stop.handle(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_precision_choices():
    cpu = torch.device("cpu")
    # auto on the CPU: bf16 exactly where it runs natively (the choice itself: test_precision_choice.py)
    assert resolve_precision("auto", cpu).name == ("bf16" if cpu_bf16_support().native else "fp32")
    assert resolve_precision("bf16", cpu).dtype is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_precision("fp16", cpu)
    assert not resolve_precision("bf16", cpu).grad_scaler().is_enabled()
