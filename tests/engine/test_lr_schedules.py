"""The training loop's learning-rate schedules against tables of exact values."""

import pytest
import torch

from medcontext.engine.config import OptimConfig
from medcontext.engine.lr_schedules import constant, poly, warmup_cosine
from medcontext.engine.optim import build_optimizer, learning_rate


def test_lr_schedules():
    assert warmup_cosine(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert warmup_cosine(99, 100, 1.0, warmup_steps=10, final_lr=0.01) == pytest.approx(0.01)
    assert poly(0, 10, 0.01) == pytest.approx(0.01)
    assert poly(5, 10, 0.01) == pytest.approx(0.01 * 0.5**0.9)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(0, 10, 1.0, warmup_steps=10)


@pytest.mark.parametrize(
    "step, warmup, expected",
    [(0, 4, 0.25), (2, 4, 0.75), (3, 4, 1.0), (9, 4, 1.0), (0, 0, 1.0), (9, 0, 1.0)],
)
def test_constant_schedule_table(step, warmup, expected):
    assert constant(step, 10, 1.0, warmup_steps=warmup) == expected


def test_lr_schedule_inputs_are_checked():
    for schedule in (warmup_cosine, poly, constant):
        with pytest.raises(ValueError, match="step must be in"):
            schedule(10, 10, 1.0)
        with pytest.raises(ValueError, match="total_steps"):
            schedule(0, 0, 1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        constant(0, 10, 1.0, warmup_steps=10)


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
