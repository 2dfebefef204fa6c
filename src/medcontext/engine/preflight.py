"""Settings checked before any work: the checks of a run that need the network, not the data.

:meth:`~medcontext.engine.config.TrainConfig.validate` checks each value on its own (its
table :data:`~medcontext.engine.config.CHECKS`). What remains needs the dataset's
description (channels, outputs, default crop: read from ``dataset.json`` in milliseconds)
and the network: does the model accept ``model.options``, do the ``method.*`` settings fit it,
does one training forward pass work at ``model.roi``. :func:`check_run_settings` answers all
of these before the dataset is checked, cached or split and before the run folder is written,
with errors that name the full setting (``model.options.dropout``, ``method.mask_cell``).

The network is built on PyTorch's ``meta`` device (shapes only, no memory, no arithmetic), so
the check of a paper-size network takes seconds on a CPU. A network whose constructor needs
real numbers (MONAI's SwinUNETR) is built on the CPU, under a forked random state, and then
moved to ``meta``; the global random generators are left as they were.
"""

from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from medcontext.engine.builder import build_medcontext, build_network
from medcontext.engine.config import ConfigError, TrainConfig
from medcontext.engine.host.precision import resolve_device, resolve_precision

__all__ = ["check_run_settings"]

_METHOD_ARGUMENTS = ("variant", "mask_ratio", "beta", "momentum", "mask_space", "depth_axis", "mask_cell", "mask_mode",
                     "student_passes")
_UNKNOWN_KEYWORD = re.compile(r"unexpected keyword argument '(?P<key>[^']+)'")
_CROP_TOO_SMALL = ("more than 1 spatial element", "more than 1 value per channel", "kernel size can't be greater",
                   "output size is too small", "padding size should be less")


def check_run_settings(
    cfg: TrainConfig,
    *,
    in_channels: int,
    out_channels: int,
    output_mode: str,
    roi: Sequence[int],
    preprocess: Callable[[], object] | None = None,
) -> None:
    """Check the settings that need the network or the dataset description; no data is read.

    The network and the wrapper are built as training builds them
    (:mod:`medcontext.engine.builder`), on the ``meta`` device.

    Args:
        cfg: the validated configuration (``model.roi`` resolved).
        in_channels: image channels C of the dataset.
        out_channels: network outputs of the dataset (classes or regions).
        output_mode: ``"softmax"`` or ``"sigmoid"`` (the dataset's).
        roi: the training crop (H, W, D) in voxels.
        preprocess: builds the preprocessing from ``data.preprocess`` (its errors are named).

    Raises:
        ConfigError: naming the full key (``model.options.<name>``, ``model.roi``,
            ``method.<name>``, ``train.device``, ``data.preprocess``,
            ``model.init_checkpoint``) and what is wrong.
    """
    try:
        device = resolve_device(cfg.train.device)
        resolve_precision(cfg.train.precision, device)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if preprocess is not None:
        try:
            preprocess()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"data.preprocess={cfg.data.preprocess!r}: {err}") from err
    init = cfg.model.init_checkpoint
    if init and not Path(init).is_file():
        raise ConfigError(f"model.init_checkpoint={init!r}: the file does not exist (--init-checkpoint)")
    network = _meta_network(cfg, roi, lambda: build_network(cfg, in_channels, out_channels, roi))
    try:
        with torch.device("meta"):
            mc = build_medcontext(cfg, network, roi, output_mode)
    except (TypeError, ValueError) as err:
        m = cfg.method
        settings = (f"method.variant={m.variant!r}, method.mask_space={m.mask_space!r}, method.mask_cell={m.mask_cell!r}, "
                    f"method.student_passes={m.student_passes!r}")
        raise ConfigError(
            f"the method settings ({settings}) do not fit model {cfg.model.name!r}: {_full_method_keys(str(err))}"
        ) from err
    _dry_forward(cfg, mc, in_channels, roi)


def _model_settings(cfg: TrainConfig, roi: Sequence[int]) -> str:
    return f"model.name={cfg.model.name!r}, model.options={cfg.model.options!r}, model.roi={list(roi)}"


def _meta_network(cfg: TrainConfig, roi: Sequence[int], build: Callable[[], nn.Module]) -> nn.Module:
    """The student network on the ``meta`` device; construction errors named by setting."""
    try:
        try:
            with torch.device("meta"):
                return build()
        except Exception as err:  # a constructor that computes with tensors (e.g. .item()) cannot run on meta
            if not _meta_unsupported(err):
                raise
        with torch.random.fork_rng(devices=[]):  # the CPU build draws initial weights: keep the run's stream
            return build().to("meta")
    except TypeError as err:
        unknown = _UNKNOWN_KEYWORD.search(str(err))
        if unknown and unknown.group("key") in cfg.model.options:
            raise ConfigError(_unknown_option_message(cfg, unknown.group("key"), err)) from err
        raise ConfigError(f"{_model_settings(cfg, roi)}: the network cannot be built ({err})") from err
    except ValueError as err:
        raise ConfigError(f"{_model_settings(cfg, roi)}: {err}") from err


def _unknown_option_message(cfg: TrainConfig, key: str, err: Exception) -> str:
    from medcontext.models.registry import get_model_spec

    builder = get_model_spec(cfg.model.name).builder
    named = [
        p.name for p in list(inspect.signature(builder).parameters.values())[3:]
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    constructor = []  # the network class the builder passes other options to, named in the error
    owner = re.match(r"(?P<cls>\w+)\.__init__\(\)", str(err))
    network_class = builder.__globals__.get(owner.group("cls")) if owner else None
    if isinstance(network_class, type):
        constructor = [
            p.name for p in inspect.signature(network_class.__init__).parameters.values()
            if p.name not in ("self", "in_channels", "out_channels") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
    close = difflib.get_close_matches(key, named + constructor, n=1)
    hint = f" Did you mean model.options.{close[0]}?" if close else ""
    others = f"an argument of {owner.group('cls')}" if owner else "an argument of the network's constructor"
    return (
        f"model.options.{key}: model {cfg.model.name!r} has no option {key!r} ({err}). Its own options are "
        f"{', '.join(named) or 'none'}; any other key must be {others}.{hint}"
    )


def _meta_unsupported(err: BaseException) -> bool:
    return isinstance(err, NotImplementedError) or "meta" in str(err).lower()


def _full_method_keys(message: str) -> str:
    """MedContext names its arguments (``mask_cell``); a run's user knows ``method.mask_cell``."""
    pattern = r"(?<![\w.])(" + "|".join(_METHOD_ARGUMENTS) + r")(?=\W|$)"
    return re.sub(pattern, r"method.\1", message)


def _dry_forward(cfg: TrainConfig, mc: nn.Module, in_channels: int, roi: Sequence[int]) -> None:
    """One training-mode forward pass of the clean (and masked) view on a meta batch."""
    batch = cfg.train.batch_size * cfg.data.num_samples
    images = torch.empty((batch, in_channels, *roi), device="meta")
    mc.train()
    try:
        mc.network(images)
        if getattr(mc, "masker", None) is not None:
            mc.student_masked(images, mc.draw_mask(batch, tuple(roi)))
    except Exception as err:
        if _meta_unsupported(err):
            return  # an operation without a shape-only version: this check cannot run, training will tell
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = (
            "the crop is too small for this network's depth: choose a larger crop (--roi X Y Z / model.roi) "
            "or a smaller network"
            if any(fragment in text.lower() for fragment in _CROP_TOO_SMALL)
            else "check model.roi, model.options and method.mask_cell"
        )
        raise ConfigError(
            f"{_model_settings(cfg, roi)}, method.mask_cell={cfg.method.mask_cell!r}: a training forward pass of "
            f"{batch} crop(s) fails before any data is loaded ({type(err).__name__}: {text}); {hint}"
        ) from err
