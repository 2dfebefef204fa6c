"""The method's schedules as pure functions of the global optimizer step: the teacher momentum
and the ramp-up of the unlabelled terms.

Every schedule takes ``(step, total_steps, ...)`` and is recomputed from the step, so a resumed
run needs no stored schedule state. ``step`` counts optimizer steps from 0; the last step of a
run of ``total_steps`` steps is ``total_steps - 1``. The training loop's learning-rate
schedules, built on :func:`cosine_schedule` and :func:`check_step`, live with the loop in
:mod:`medcontext.engine.lr_schedules`.
"""

from __future__ import annotations

import math

__all__ = [
    "check_step",
    "cosine_schedule",
    "momentum_at",
    "momentum_for_horizon",
    "sigmoid_rampup",
    "mean_teacher_momentum",
    "pretrain_steps",
    "momentum_after_pretrain",
]


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


def sigmoid_rampup(step: int, total_steps: int, rampup: float) -> float:
    """Weight multiplier ``exp(-5 (1 - t)^2)`` rising to 1 over the first ``rampup`` of the run.

    The ramp-up of Laine & Aila (ICLR 2017) that Mean Teacher and SSL4MIS use:
    ``t = min(step / (rampup * total_steps), 1)``; ``exp(-5) = 0.0067`` at step 0, 1 from step
    ``rampup * total_steps`` on. SSL4MIS counts the ramp in blocks of 150 iterations
    (``sigmoid_rampup(iter // 150, 200)``, 200 blocks = its 30000 iterations, so ``rampup = 1``);
    this one is continuous in the step.

    Args:
        step: optimizer step, 0-based, ``< total_steps``.
        total_steps: steps of the run.
        rampup: ramp length as a fraction of the run, in [0, 1]; 0 means no ramp (always 1).
    """
    check_step(step, total_steps)
    if not 0.0 <= rampup <= 1.0:
        raise ValueError(f"rampup must be a fraction of the run in [0, 1], got {rampup}")
    length = rampup * total_steps
    if length == 0:
        return 1.0
    phase = 1.0 - min(step / length, 1.0)
    return float(math.exp(-5.0 * phase * phase))


def mean_teacher_momentum(step: int, base: float = 0.99) -> float:
    """Mean Teacher's EMA momentum: the true average of the students so far while that is the
    larger weight on the new student, then ``base``: ``min(1 - 1 / (step + 1), base)``
    (SSL4MIS ``update_ema_variables``); 0 at step 0, so the teacher first copies the student."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"momentum base must be in [0, 1], got {base}")
    return float(min(1.0 - 1.0 / (step + 1), base))


def pretrain_steps(total_steps: int, pretrain: float) -> int:
    """Number of steps of a labelled-only first phase of ``pretrain`` of the run (rounded)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= pretrain < 1.0:
        raise ValueError(f"pretrain must be a fraction of the run in [0, 1), got {pretrain}")
    return int(round(pretrain * total_steps))


def momentum_after_pretrain(step: int, total_steps: int, pretrain: float, base: float = 0.99) -> float:
    """BCP's teacher momentum: 0 during the labelled-only phase (the teacher copies the student,
    so self-training starts from a teacher equal to the pre-trained student), ``base`` after."""
    check_step(step, total_steps)
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"momentum base must be in [0, 1], got {base}")
    return 0.0 if step < pretrain_steps(total_steps, pretrain) else float(base)
