"""The training configuration: every hyperparameter of a run in one typed, saved object.

The package has three parts: :mod:`~medcontext.engine.config.schema` (the sections and
:class:`TrainConfig` with its dotted access), :mod:`~medcontext.engine.config.checks` (one
:class:`Check` row per setting, applied by :meth:`TrainConfig.validate`),
:mod:`~medcontext.engine.config.loading` (YAML with ``base:``, ``--set`` overrides, saving) and
:mod:`~medcontext.engine.config.batch_scaling` (the batch over processes, the scaled learning
rate). Every name is importable from ``medcontext.engine.config`` itself.
"""

from .batch_scaling import lr_scale_factor, resolve_batch_scaling
from .checks import CHECKS, LR_SCALING, PRECISIONS, Check
from .loading import BASE_KEY, load_config, parse_override, read_yaml, save_config
from .schema import (
    ConfigError,
    DataConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    TrainingConfig,
)

__all__ = [
    "DataConfig",
    "ModelConfig",
    "MethodConfig",
    "OptimConfig",
    "TrainingConfig",
    "EvalConfig",
    "TrainConfig",
    "ConfigError",
    "Check",
    "CHECKS",
    "LR_SCALING",
    "PRECISIONS",
    "resolve_batch_scaling",
    "lr_scale_factor",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_config",
    "BASE_KEY",
]
