"""Optimizer construction and the learning rate as a pure function of the global step
(the schedules: :mod:`medcontext.engine.lr_schedules`)."""

from __future__ import annotations

from typing import Iterable

import torch

from medcontext.engine.config import OptimConfig
from medcontext.engine.lr_schedules import constant, poly, warmup_cosine

__all__ = ["build_optimizer", "learning_rate", "set_learning_rate"]


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or SGD with Nesterov momentum (nnU-Net's 0.99)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, nesterov=cfg.nesterov
        )
    raise ValueError(f"optim.name must be adamw or sgd, got {cfg.name!r}")


def learning_rate(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of a ``total_steps`` run.

    ``warmup_cosine``: linear warmup then cosine to ``final_lr``; ``poly``: nnU-Net's
    ``lr * (1 - step/total)^power``; ``constant``: ``lr`` after an optional linear warmup.
    """
    if cfg.schedule == "warmup_cosine":
        return warmup_cosine(step, total_steps, cfg.lr, cfg.warmup_steps, cfg.final_lr)
    if cfg.schedule == "poly":
        return poly(step, total_steps, cfg.lr, cfg.poly_power)
    if cfg.schedule == "constant":
        return constant(step, total_steps, cfg.lr, cfg.warmup_steps)
    raise ValueError(f"optim.schedule must be warmup_cosine, poly or constant, got {cfg.schedule!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
