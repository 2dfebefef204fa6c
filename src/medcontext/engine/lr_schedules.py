"""Learning-rate schedules of the training loop, pure functions of the global optimizer step.

Every schedule takes ``(step, total_steps, base_lr, ...)``, checks its inputs and is recomputed
from the step on resume (no stored state). ``step`` counts optimizer steps from 0; the last step
of a run of ``total_steps`` steps is ``total_steps - 1``. :func:`medcontext.engine.optim.learning_rate`
applies the one named by ``optim.schedule``.
The teacher-momentum schedule belongs to the method (:mod:`medcontext.method.schedules`).
"""

from __future__ import annotations

from medcontext.method.schedules import check_step, cosine_schedule

__all__ = ["constant", "poly", "warmup_cosine"]


def _check_warmup(warmup_steps: int, total_steps: int) -> None:
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps), got {warmup_steps} for {total_steps} steps")


def warmup_cosine(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, final_lr: float = 0.0) -> float:
    """Linear warmup from ``base_lr / warmup_steps`` to ``base_lr`` over ``warmup_steps`` steps,
    then cosine decay to ``final_lr`` at the last step."""
    check_step(step, total_steps)
    _check_warmup(warmup_steps, total_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return cosine_schedule(step - warmup_steps, total_steps - warmup_steps, base_lr, final_lr)


def poly(step: int, total_steps: int, base_lr: float, power: float = 0.9) -> float:
    """nnU-Net's polynomial decay: ``base_lr * (1 - step / total_steps) ** power``."""
    check_step(step, total_steps)
    return float(base_lr * (1.0 - step / total_steps) ** power)


def constant(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """``base_lr`` after a linear warmup from ``base_lr / warmup_steps`` over ``warmup_steps`` steps."""
    check_step(step, total_steps)
    _check_warmup(warmup_steps, total_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return float(base_lr)
