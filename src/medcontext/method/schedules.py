"""The method's schedules as pure functions of the global optimizer step: the teacher momentum.

Every schedule takes ``(step, total_steps, ...)`` and is recomputed from the step, so a resumed
run needs no stored schedule state. ``step`` counts optimizer steps from 0; the last step of a
run of ``total_steps`` steps is ``total_steps - 1``. The training loop's learning-rate
schedules, built on :func:`cosine_schedule` and :func:`check_step`, live with the loop in
:mod:`medcontext.engine.lr_schedules`.
"""

from __future__ import annotations

import math

__all__ = ["check_step", "cosine_schedule", "momentum_at", "momentum_for_horizon"]


def check_step(step: int, total_steps: int) -> None:
    """Raise ``ValueError`` unless ``total_steps >= 1`` and ``0 <= step < total_steps``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, {total_steps - 1}] for total_steps={total_steps}, got {step}")


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` at step 0 to ``end`` at step ``total_steps - 1``.

    ``value = end - (end - start) * (cos(pi * step / (total_steps - 1)) + 1) / 2``; a run of a
    single step returns ``end``.
    """
    check_step(step, total_steps)
    if total_steps == 1:
        return float(end)
    return float(end - (end - start) * (math.cos(math.pi * step / (total_steps - 1)) + 1.0) / 2.0)


def momentum_at(step: int, total_steps: int, base: float = 0.996) -> float:
    """EMA teacher momentum (docs/method.md): ``base`` at step 0, cosine up to 1.0 at the last step.

    ``m(k) = 1 - (1 - base) * (cos(pi * k / K) + 1) / 2`` with ``K = total_steps - 1``.
    """
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"momentum base must be in [0, 1], got {base}")
    return cosine_schedule(step, total_steps, base, 1.0)


def momentum_for_horizon(horizon: float, total_steps: int) -> float:
    """Starting momentum whose EMA time constant is ``horizon`` of the run.

    An EMA with momentum ``m`` averages over about ``1 / (1 - m)`` steps; the paper's 0.996 is
    250 steps, most of a 300-step run but 1% of a 25k-step one. Expressing the time constant as
    a fraction of the run, ``m0 = 1 - 1 / (horizon * total_steps)``, keeps the teacher's lag
    the same share of training at every budget (the cosine ramp to 1.0 then follows as usual).

    Args:
        horizon: time constant as a fraction of ``total_steps``, in (0, 1].
        total_steps: optimizer steps of the run.

    Returns:
        ``m0`` in [0, 1) (0 when the time constant is below one step).
    """
    if not 0.0 < horizon <= 1.0:
        raise ValueError(f"momentum horizon must be in (0, 1] (a fraction of the run), got {horizon}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return max(0.0, 1.0 - 1.0 / (horizon * total_steps))
