"""The EMA teacher (paper Eq. 6, docs/method.md).

``theta_t <- m * theta_t + (1 - m) * theta_s`` after every optimizer step, with the fused
multi-tensor ``torch._foreach_*`` ops; floating-point buffers (norm statistics) are averaged the
same way and integer buffers copied. The teacher starts as an exact copy of the student, never
requires gradients and always runs in eval mode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["unwrap_model", "make_teacher", "copy_into_teacher", "max_teacher_difference", "ema_update"]


def unwrap_model(module: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel``/``DataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def make_teacher(student: nn.Module) -> nn.Module:
    """An exact, frozen, eval-mode copy of ``student`` (docs/method.md)."""
    teacher = copy.deepcopy(unwrap_model(student))
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def copy_into_teacher(teacher: nn.Module, student: nn.Module) -> None:
    """Make ``teacher`` an exact copy of ``student``'s current weights and buffers, in place.

    Raises:
        ValueError: the two modules differ in structure.
    """
    pairs = _paired_tensors(teacher, unwrap_model(student))
    for t, s in pairs:
        t.copy_(s.detach())


@torch.no_grad()
def max_teacher_difference(teacher: nn.Module, student: nn.Module) -> float:
    """Largest absolute difference between a parameter or buffer of ``teacher`` and ``student``."""
    largest = 0.0
    for t, s in _paired_tensors(teacher, unwrap_model(student)):
        if t.numel():
            diff = (t.detach().double() - s.detach().to(t.device).double()).abs().max()
            largest = max(largest, float(diff))
    return largest


def _paired_tensors(teacher: nn.Module, student: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    t_named = list(teacher.named_parameters()) + list(teacher.named_buffers())
    s_named = list(student.named_parameters()) + list(student.named_buffers())
    if [n for n, _ in t_named] != [n for n, _ in s_named] or any(
        t.shape != s.shape for (_, t), (_, s) in zip(t_named, s_named)
    ):
        raise ValueError("teacher and student have different structures; the teacher must be a copy of the student")
    return [(t, s) for (_, t), (_, s) in zip(t_named, s_named)]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In-place ``teacher = momentum * teacher + (1 - momentum) * student``.

    Parameters and floating-point buffers are averaged; other buffers (e.g. BatchNorm's
    ``num_batches_tracked``) are copied. Both modules must have the same structure.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    student = unwrap_model(student)
    t_params = [p for _, p in teacher.named_parameters()]
    s_params = [p.detach() for _, p in student.named_parameters()]
    t_buffers = [b for _, b in teacher.named_buffers()]
    s_buffers = [b for _, b in student.named_buffers()]
    if len(t_params) != len(s_params) or len(t_buffers) != len(s_buffers):
        raise ValueError("teacher and student have different structures; the teacher must be a copy of the student")
    t_float = t_params + [t for t in t_buffers if t.is_floating_point()]
    s_float = s_params + [s for t, s in zip(t_buffers, s_buffers) if t.is_floating_point()]
    if t_float:
        torch._foreach_mul_(t_float, momentum)
        torch._foreach_add_(t_float, s_float, alpha=1.0 - momentum)
    for t, s in zip(t_buffers, s_buffers):
        if not t.is_floating_point():
            t.copy_(s)
