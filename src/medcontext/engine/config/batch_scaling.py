"""The batch of a run over processes and the learning rate scaled with it.

:func:`resolve_batch_scaling` fills in ``train.effective_batch_size`` for a launch;
:func:`lr_scale_factor` is the factor ``optim.lr_scaling`` applies to the learning rates.
"""

from __future__ import annotations

from .checks import LR_SCALING
from .schema import ConfigError, TrainConfig

__all__ = ["resolve_batch_scaling", "lr_scale_factor"]


def resolve_batch_scaling(cfg: TrainConfig, world_size: int) -> TrainConfig:
    """Fill in (or check) ``train.effective_batch_size`` for a run of ``world_size`` processes.

    The effective batch is ``train.batch_size x data.num_samples x world_size`` crops per
    optimizer step: every process draws its own ``batch_size`` volumes and the gradients are
    averaged over processes. Modifies ``cfg`` in place and returns it.

    Raises:
        ConfigError: ``train.effective_batch_size`` is set and differs from that product.
    """
    per_process = cfg.train.batch_size * cfg.data.num_samples
    derived = per_process * int(world_size)
    if cfg.train.effective_batch_size is None:
        cfg.train.effective_batch_size = derived
    elif cfg.train.effective_batch_size != derived:
        wanted = cfg.train.effective_batch_size
        fits = f"; launch {wanted // per_process} processes" if wanted % per_process == 0 else ""
        raise ConfigError(
            f"train.effective_batch_size={wanted} but this launch gives {derived} crops per step "
            f"(train.batch_size={cfg.train.batch_size} x data.num_samples={cfg.data.num_samples} x {world_size} "
            f"process(es)){fits}, change train.batch_size, or set train.effective_batch_size=null to accept {derived}"
        )
    return cfg


def lr_scale_factor(cfg: TrainConfig) -> float:
    """The factor applied to ``optim.lr`` and ``optim.final_lr`` (``optim.lr_scaling``).

    ``none``: 1; ``linear``: ``effective / base`` (Goyal et al. 2017, with warmup);
    ``sqrt``: ``sqrt(effective / base)`` (common for Adam-type optimizers), where
    ``effective = train.effective_batch_size`` (resolved, see :func:`resolve_batch_scaling`)
    and ``base = optim.base_batch_size``.
    """
    if cfg.optim.lr_scaling == "none":
        return 1.0
    if cfg.train.effective_batch_size is None:
        raise ConfigError("train.effective_batch_size is not resolved yet; call resolve_batch_scaling(cfg, world_size)")
    ratio = cfg.train.effective_batch_size / cfg.optim.base_batch_size
    if cfg.optim.lr_scaling == "linear":
        return float(ratio)
    if cfg.optim.lr_scaling == "sqrt":
        return float(ratio) ** 0.5
    raise ConfigError(f"optim.lr_scaling must be one of {', '.join(LR_SCALING)}, got {cfg.optim.lr_scaling!r}")
