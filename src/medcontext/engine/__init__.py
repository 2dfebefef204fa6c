"""The training engine: configuration, the training loop, checkpoints, distributed training, prediction.

>>> from medcontext.engine import load_config, train
>>> cfg = load_config("configs/cpu_phantom.yaml", ["data.path=phantom", "train.steps=50"])
>>> result = train(cfg, "runs/phantom")

Modules: :mod:`~medcontext.engine.config` (``TrainConfig``), :mod:`~medcontext.engine.trainer`
(the loop and its hooks), :mod:`~medcontext.engine.checkpoint`, :mod:`~medcontext.engine.sampling`
(resumable batches), :mod:`~medcontext.engine.run` (run folders), :mod:`~medcontext.engine.predict`,
:mod:`~medcontext.engine.distributed` (torchrun, DDP).
"""

from medcontext.engine.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from medcontext.engine.config import ConfigError, TrainConfig, load_config, save_config
from medcontext.engine.run import RunInfo, load_model, load_run, train
from medcontext.engine.trainer import NonFiniteLossError, TrainResult, Trainer, ValidationCase, World

__all__ = [
    "TrainConfig",
    "ConfigError",
    "load_config",
    "save_config",
    "Trainer",
    "TrainResult",
    "ValidationCase",
    "World",
    "NonFiniteLossError",
    "CheckpointError",
    "read_checkpoint",
    "save_checkpoint",
    "train",
    "load_run",
    "load_model",
    "RunInfo",
]
