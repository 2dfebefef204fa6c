"""Which settings a resumed run may change, and the check that the others did not.

A run continues exactly (:mod:`medcontext.engine.trainer`) only with the settings it started
with. :data:`RESUME_MAY_CHANGE` lists the settings that do not change the training trajectory
(paths, workers, device, logging); :func:`check_resume_settings` compares every other one
with the run's saved configuration (its ``config.yaml`` before the run folder is touched, the
checkpoint's own when :class:`~medcontext.engine.trainer.Trainer` restores it).
"""

from __future__ import annotations

from medcontext.engine.config import ConfigError, TrainConfig, resolve_batch_scaling

__all__ = ["RESUME_MAY_CHANGE", "check_resume_settings"]

RESUME_MAY_CHANGE = frozenset(
    {
        "data.path", "data.num_workers", "data.cache_dir", "train.device", "train.log_every", "train.tensorboard",
        "train.memory_budget_gb", "train.dist_timeout_min", "train.retain_cpu_memory", "train.threads",
    }
)
"""Settings that do not change the training trajectory and may differ on ``--resume``."""


def check_resume_settings(saved: TrainConfig, current: TrainConfig, *, saved_world_size: int, source: str) -> None:
    """Raise when ``current`` differs from the run's ``saved`` settings outside :data:`RESUME_MAY_CHANGE`.

    Args:
        saved: the run's configuration; a run written before ``train.effective_batch_size``
            existed gets it from ``saved_world_size`` (modified in place).
        current: this launch's resolved configuration (batch scaling resolved).
        saved_world_size: the number of processes that wrote ``saved``.
        source: where ``saved`` came from, for the message (``"the run's config.yaml"``, a path).

    Raises:
        ConfigError: listing every differing setting with both values (and, when the effective
            batch differs, that the number of processes changed it).
    """
    if saved.train.effective_batch_size is None:  # a run folder written before the setting existed
        resolve_batch_scaling(saved, saved_world_size)
    differences = {k: v for k, v in saved.diff(current).items() if k not in RESUME_MAY_CHANGE}
    if not differences:
        return
    listing = "; ".join(f"{k}: run {a!r}, now {b!r}" for k, (a, b) in differences.items())
    hint = (
        " (the number of processes changed the effective batch: resume with the run's number of processes)"
        if "train.effective_batch_size" in differences else ""
    )
    raise ConfigError(
        f"--resume: the settings differ from {source} ({listing}){hint}; resume with the same "
        "settings (drop the changed options) or start a new run"
    )
