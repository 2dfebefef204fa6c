"""The training engine: configuration, the training loop, checkpoints, distributed training, prediction.

>>> from medcontext.engine import load_config, train
>>> cfg = load_config("configs/cpu_phantom.yaml", ["data.path=phantom", "train.steps=50"])
>>> result = train(cfg, "runs/phantom")

Rooms: :mod:`~medcontext.engine.config` (``TrainConfig``: schema, checks, loading),
:mod:`~medcontext.engine.planning` (crop, batch, memory and time before a run),
:mod:`~medcontext.engine.host` (precision, threads, memory, signals, the machine, distributed
training). Modules: :mod:`~medcontext.engine.trainer` (the loop and its hooks),
:mod:`~medcontext.engine.checkpoint`, :mod:`~medcontext.engine.sampling` (resumable batches),
:mod:`~medcontext.engine.training_log` (``metrics.jsonl``, TensorBoard),
:mod:`~medcontext.engine.run_folder` (``train``: starting, resuming, reloading a run folder),
:mod:`~medcontext.engine.predict`.
"""

from medcontext.engine.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from medcontext.engine.config import ConfigError, TrainConfig, load_config, save_config
from medcontext.engine.run_folder import RunInfo, load_model, load_run, train
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
