"""``medcontext pretrain``: self-supervised masked volume modelling of a registered network.

``pretrain(cfg, run_dir)`` builds the network of ``cfg.model`` with as many output channels as
the images have (its output layer is the reconstruction head), wraps it in
:class:`~medcontext.method.masked_modelling.MaskedVolumeModelling` and trains it on random crops
of unlabelled volumes (``cfg.data.unlabeled``: the sources of ``train --unlabeled``, with the
split ``train`` draws from the same data section; label files are never opened). The run folder holds:

==================  ==============================================================
``config.json``     the resolved :class:`PretrainConfig`
``volumes.json``    the volumes pretrained on (case ids and image files) and those left out, why
``metrics.jsonl``   one record per step (``total`` = the masked L1 loss, ``lr``, times)
``last.pt``         the resumable state (network, mask token, optimizer, random states)
``pretrained.pt``   the network's weights without its output layer, for
                    ``medcontext train --init-checkpoint RUN_DIR/pretrained.pt``
``loss_curve.png``  the loss against the step (written when the run ends or stops)
==================  ==============================================================

The weights in ``pretrained.pt`` carry the registry's own key names, so ``train`` loads them
with no prefix map into the same model and options built for any number of classes: the
output-layer keys (those whose shape depends on the output channels) are left out and reported
as missing, i.e. kept at their initialisation. Everything is written atomically; ``--resume``
continues from ``last.pt`` and repeats the uninterrupted run's losses (same device, same seed):
each step draws its crops and masks from states saved with the step count.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

import medcontext
from medcontext.engine.config import DataConfig
from medcontext.io.atomic import atomic_write, remove_stale_temporaries, write_text_atomic
from medcontext.models.safe_load import UnreadableFileError, load_weights_file

__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "PRETRAINED_FILE",
    "output_layer_keys",
    "save_pretrained_weights",
    "pretrain",
    "plot_loss_curve",
]

PRETRAINED_FILE = "pretrained.pt"
PRETRAINED_FORMAT = "medcontext-pretrained"
STATE_FORMAT = "medcontext-pretrain-state"
#: settings that may change on ``--resume`` (they do not change the result): dotted keys of
#: :meth:`PretrainConfig.flat_dict`; the data section's sampling fields are not read by pretraining
RESUMABLE_CHANGES = (
    "data.path", "data.cache_dir", "data.num_workers", "data.num_samples", "data.pos", "data.neg",
    "data.unlabeled_batch_size", "device", "save_every", "tensorboard",
)
#: the keys of a ``config.json`` written before the data section was a ``DataConfig`` -> its field
_FLAT_DATA_KEYS = {
    "data": "path", "data_preset": "preset", "unlabeled": "unlabeled", "train_cases": "train_cases",
    "train_case_ids": "train_case_ids", "val_cases": "val_cases", "test_cases": "test_cases",
    "use_official_test": "use_official_test", "split_seed": "split_seed", "group_by": "group_by",
    "preprocess": "preprocess", "cache_dir": "cache_dir",
}


@dataclass
class PretrainConfig:
    """Settings of a pretraining run (saved as ``config.json``).

    Attributes:
        data: the data section of ``train`` (:class:`~medcontext.engine.config.DataConfig`, its
            defaults and checks): ``path`` (the labelled dataset whose preprocessing, channels and
            split the volumes follow; its labels are never read), ``preset``, ``unlabeled`` (the
            volumes: ``pool``, the cases a ``train`` split with these settings leaves over;
            ``imagesTs``; folders), the split settings (``train_cases``, ``train_case_ids``,
            ``val_cases``, ``test_cases``, ``use_official_test``, ``split_seed``, ``group_by``:
            the split is drawn by :meth:`DataConfig.split_settings` as ``train`` draws it, so the
            same values give the same ``pool``, and its validation and test cases and their groups
            are never pretrained on; ``split_seed`` ``None``: ``seed``), ``preprocess`` (as
            ``train``'s: the crops are preprocessed as the fine-tuning's) and ``cache_dir``. Its
            sampling fields (``num_samples``, ``pos``, ``neg``, ``num_workers``,
            ``unlabeled_batch_size``) are not used: ``batch_size`` random crops per step.
        model, model_options, roi: the network (registry name, builder options) and the crop.
        mask_ratio: fraction of mask cells (cubes) or in-plane positions (tubes) masked.
        mask_cell: voxels per mask cell; ``None``: 16 (smaller for small crops), in token space
            the token patch rounded up to 16.
        mask_shape: ``cube`` (SimMIM/MAE random cells) or ``tube`` (MedContext's tubes).
        mask_space: ``auto`` (token space where the network has a token adapter), ``token``, ``input``.
        steps, batch_size, lr, weight_decay, warmup_steps: AdamW with linear warmup then cosine
            decay; ``warmup_steps`` ``None``: 10% of the steps, at most 100.
        seed: weights, crops and masks.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        save_every: steps between checkpoints (and always at the end or on a signal).
        tensorboard: also write TensorBoard events.

    ``config.json`` files written before ``data`` was a section (flat keys ``data``, ``data_preset``,
    ``unlabeled``, ``train_cases``, ..., ``cache_dir``) still load (:meth:`from_dict`).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: str = "unet3d"
    model_options: dict = field(default_factory=lambda: {"size": "small"})
    roi: list[int] | None = None
    mask_ratio: float = 0.6
    mask_cell: int | list[int] | None = None
    mask_shape: str = "cube"
    mask_space: str = "auto"
    steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    save_every: int = 100
    tensorboard: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat_dict(self) -> dict[str, Any]:
        """Every setting under one key, the data section's as ``data.NAME``."""
        out = {k: v for k, v in self.to_dict().items() if k != "data"}
        return {**{f"data.{k}": v for k, v in asdict(self.data).items()}, **out}

    @property
    def sources(self) -> list[str]:
        """``data.unlabeled`` as a list of sources."""
        from medcontext.data.unlabeled import parse_unlabeled_sources

        return parse_unlabeled_sources(self.data.unlabeled)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "settings") -> "PretrainConfig":
        """Build from :meth:`to_dict`'s mapping, or from the flat keys of an older ``config.json``.

        Raises:
            ValueError: an unknown setting, a data setting of the wrong type (naming ``source``).
        """
        from medcontext.engine.config import TrainConfig

        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a mapping of pretraining settings, got {type(data).__name__}")
        settings = dict(data)
        if isinstance(settings.get("data"), DataConfig):
            settings["data"] = asdict(settings["data"])
        settings = _nested_data(settings)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"{source}: unknown pretraining setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        section = settings.get("data") or {}
        if not isinstance(section, Mapping):
            raise ValueError(f"{source}: 'data' must be a mapping of data settings, got {section!r}")
        # the data section of `train`: its fields, types and defaults, unknown keys named with a suggestion
        settings["data"] = TrainConfig.from_dict({"data": dict(section)}, source=source).data
        return cls(**settings)

    @classmethod
    def read(cls, path: str | Path) -> "PretrainConfig":
        """A run folder's ``config.json`` (this format or the flat one before it).

        Raises:
            ValueError: the file is not JSON or not pretraining settings (naming the file).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a readable pretraining config.json ({err}); start a new run "
                             "in another --out folder, or restore the file") from err
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_train_config(cls, train: Any, **settings: Any) -> "PretrainConfig":
        """The pretraining of the volumes a ``train`` run with ``train`` (a :class:`TrainConfig`)
        would leave unlabelled: its data section (dataset, split, preprocessing, unlabelled
        sources, cache), network, crop, seed and device; ``settings`` set the rest (``steps``,
        ...) and may replace ``data`` (a :class:`DataConfig`)."""
        model = train.model
        taken = dict(
            data=DataConfig(**copy.deepcopy(asdict(train.data))), model=model.name,
            model_options=dict(model.options), roi=list(model.roi) if model.roi is not None else None,
            seed=train.train.seed, device=train.train.device,
        )
        return cls.from_dict({**cls().to_dict(), **taken, **settings}, source="pretraining settings")

    @property
    def warmup(self) -> int:
        """Warmup steps actually used."""
        return self.warmup_steps if self.warmup_steps is not None else min(100, self.steps // 10)

    def validate(self) -> "PretrainConfig":
        """Check every value before any data is read (the data section with ``train``'s checks); returns ``self``."""
        from medcontext.engine.config import CHECKS, TrainConfig
        from medcontext.method.masked_modelling import MASK_SHAPES
        from medcontext.models import get_model_spec

        get_model_spec(self.model)  # unknown names list the known ones
        with_data = TrainConfig(data=self.data)
        problems = [p for p in (c.problem(with_data) for c in CHECKS if c.key.startswith("data.")) if p]
        if not self.data.path:
            problems.append("no dataset: pass --data DATASET_DIR (its preprocessing and channels; labels are not read)")
        if not problems and not self.sources:
            problems.append("no volumes: pass --unlabeled SOURCE (pool, imagesTs or a folder of images; repeatable)")
        if self.steps < 1 or self.batch_size < 1 or self.save_every < 1:
            problems.append(f"steps, batch_size and save_every must be >= 1, got {self.steps}, {self.batch_size}, "
                            f"{self.save_every}")
        if self.lr <= 0 or self.weight_decay < 0:
            problems.append(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if not 0 <= self.warmup < self.steps:
            problems.append(f"warmup_steps must be in [0, steps), got {self.warmup} for {self.steps} steps")
        if not 0.0 < self.mask_ratio < 1.0:
            problems.append(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.mask_shape not in MASK_SHAPES:
            problems.append(f"mask_shape must be one of {', '.join(MASK_SHAPES)}, got {self.mask_shape!r}")
        if self.roi is not None and (len(self.roi) != 3 or min(self.roi) < 1):
            problems.append(f"roi must be 3 positive sizes, got {self.roi}")
        if problems:
            raise ValueError("pretraining settings: " + "; ".join(problems))
        return self


def _nested_data(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with the flat data keys of an older ``config.json`` moved into the ``data`` section."""
    out = dict(settings)
    if isinstance(out.get("data"), Mapping) or not any(key in out for key in _FLAT_DATA_KEYS):
        return out  # this format (flat keys beside a data section are unknown settings)
    section = {name: out.pop(key) for key, name in _FLAT_DATA_KEYS.items() if key in out}
    out["data"] = {k: v for k, v in section.items() if not (k == "path" and v is None)}
    return out


@dataclass
class PretrainResult:
    """How :func:`pretrain` ended."""

    run_dir: Path
    start_step: int
    step: int
    total_steps: int
    loss: float | None
    stopped_by: str = ""  # "", "SIGINT", "SIGTERM" or "stop_after"
    exit_code: int = 0

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    @property
    def weights(self) -> Path:
        """The file for ``train --init-checkpoint``."""
        return self.run_dir / PRETRAINED_FILE


def output_layer_keys(model: str, in_channels: int, roi: Sequence[int], options: Mapping[str, Any]) -> list[str]:
    """State-dict keys of ``model`` whose shape depends on its output channels (its output
    layer and any deep-supervision heads): the keys a pretrained file leaves out. Built twice,
    on the meta device where the network allows it."""
    from medcontext.models import create_model

    def shapes(out_channels: int) -> dict[str, torch.Size]:
        build = lambda: create_model(model, in_channels, out_channels, tuple(roi), **dict(options))  # noqa: E731
        return {k: v.shape for k, v in _on_meta_if_possible(build).state_dict().items()}

    one, other = shapes(in_channels), shapes(in_channels + 1)
    return sorted(k for k in one if k not in other or one[k] != other[k])


def _on_meta_if_possible(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the meta device (no memory), or on the CPU for a network whose constructor
    computes with tensors (MONAI's SwinUNETR reads its drop-path rates with ``.item()``)."""
    try:
        with torch.device("meta"):
            return build()
    except (RuntimeError, NotImplementedError):
        return build()


def save_pretrained_weights(
    path: str | Path, network: nn.Module, head_keys: Sequence[str], info: Mapping[str, Any]
) -> Path:
    """Write ``network``'s weights without ``head_keys`` to ``path`` atomically, under
    ``"state_dict"`` (what ``--init-checkpoint`` reads), with ``info`` (model, options, pretext)."""
    skipped = set(head_keys)
    weights = {k: v.detach().cpu().clone() for k, v in network.state_dict().items() if k not in skipped}
    payload = {"format": PRETRAINED_FORMAT, "format_version": 1, "version": medcontext.__version__,
               "state_dict": weights, "left_out": sorted(skipped), "info": dict(info)}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def plot_loss_curve(records: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """``loss_curve.png``: the masked L1 loss per step and its moving average; ``None`` without steps."""
    from medcontext.evaluation.figures import SMOOTHING_WINDOW, pyplot, save_png, smooth

    rows = [r for r in records if r.get("kind") == "train" and r.get("total") is not None]
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["total"]) for r in rows]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, color="0.75", linewidth=0.8, label="per step")
    ax.plot(steps, smooth(losses), color="C0", label=f"moving average of {SMOOTHING_WINDOW} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("L1 on masked voxels")
    ax.set_title(title or "masked volume modelling")
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


# ---------------------------------------------------------------------------- the run
def pretrain(
    cfg: PretrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    trust_checkpoint: bool = False,
) -> PretrainResult:
    """Pretrain ``cfg.model`` on unlabelled volumes in ``run_dir`` (see the module docstring).

    Args:
        cfg: the settings.
        run_dir: the run folder (created).
        resume: continue from ``run_dir/last.pt``; the settings must equal the saved ones
            except :data:`RESUMABLE_CHANGES`.
        stop_after: stop after this many steps of this call (with a checkpoint).
        progress: show a progress bar.
        echo: where status lines go.
        trust_checkpoint: read ``last.pt`` with full pickle (only for files you trust).

    Raises:
        ValueError: bad settings, or a resume whose settings differ (listing them).
        DatasetError: the dataset or the volumes are unusable (naming the files).
        CheckpointError: ``--resume`` without ``last.pt``, or a new run in a folder that has one.
        NonFiniteLossError: the loss became NaN/Inf (the last checkpoint is intact).
    """
    from medcontext.engine.host.precision import resolve_device
    from medcontext.io.run_lock import RunFolderLock

    run_dir = Path(run_dir)
    cfg = PretrainConfig.from_dict(cfg.to_dict()).validate()
    try:  # a device this machine lacks fails here, before any data is read
        resolve_device(cfg.device)
    except ValueError as err:
        raise ValueError(str(err).replace("train.device", "--device")) from err
    # one writer per run folder (a second `pretrain --out` on the same folder is refused, naming this one)
    with RunFolderLock(run_dir, "medcontext pretrain --resume" if resume else "medcontext pretrain"):
        return _pretrain_in_locked_folder(cfg, run_dir, resume=resume, stop_after=stop_after, progress=progress,
                                          echo=echo, trust_checkpoint=trust_checkpoint)


def _pretrain_in_locked_folder(cfg: PretrainConfig, run_dir: Path, *, resume: bool, stop_after: int | None,
                               progress: bool, echo: Callable[[str], None], trust_checkpoint: bool) -> PretrainResult:
    """:func:`pretrain` once the run folder is held: resume checks, volumes, files, the loop."""
    from medcontext.engine.checkpoint import CheckpointError
    from medcontext.engine.host.cpu_threads import CpuShare
    from medcontext.engine.pretraining_data import pretraining_volumes

    state = None
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise CheckpointError(f"--resume: {run_dir / 'last.pt'} does not exist; start the run without --resume")
        state = _read_state(run_dir / "last.pt", trust=trust_checkpoint)
        _check_same_settings(PretrainConfig.from_dict(state["config"], source=f"{run_dir / 'last.pt'}"), cfg)
    elif (run_dir / "last.pt").exists():
        raise CheckpointError(f"{run_dir} already holds a pretraining run (last.pt); continue it with --resume "
                              "or choose a new --out folder")
    volumes = pretraining_volumes(cfg, check_network=lambda channels, roi: _check_network(cfg, channels, roi),
                                  progress=progress, echo=echo)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    write_text_atomic(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    write_text_atomic(run_dir / "volumes.json", json.dumps(volumes.describe_dict(), indent=2) + "\n")
    echo(f"pretraining {cfg.model} on {volumes.summary}, crop {tuple(volumes.roi)}, {cfg.steps} steps of "
         f"batch {cfg.batch_size}, masking {cfg.mask_ratio:g} of {cfg.mask_shape}s")
    with CpuShare() as cpu_share:  # threads: this process's share of the cores, as in `train`
        loop = _PretrainLoop(cfg, run_dir, volumes, state, echo=echo, progress=progress)
        if loop.device.type == "cpu":
            echo(f"threads: {cpu_share.threads} ({cpu_share.reason}; adjusted when other runs start or end)")
        loop.cpu_share = cpu_share
        return loop.run(stop_after)


def _check_network(cfg: PretrainConfig, channels: int, roi: Sequence[int]) -> None:
    """Build the network (on the meta device where possible) and its pretext wrapper: a crop the
    model cannot take or a mask that masks nothing fails here, before any image is decoded."""
    from medcontext.method.masked_modelling import MaskedVolumeModelling
    from medcontext.models import create_model

    network = _on_meta_if_possible(lambda: create_model(cfg.model, channels, channels, tuple(roi), **cfg.model_options))
    MaskedVolumeModelling(network, in_channels=channels, roi_size=roi, mask_ratio=cfg.mask_ratio,
                          mask_cell=cfg.mask_cell, mask_shape=cfg.mask_shape, mask_space=cfg.mask_space)


def _read_state(path: Path, *, trust: bool) -> dict:
    from medcontext.engine.checkpoint import CheckpointError

    try:
        state = load_weights_file(path, trust=trust, map_location="cpu")
    except UnreadableFileError as err:
        raise CheckpointError(f"checkpoint {err}") from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not the state of a `medcontext pretrain` run (no format={STATE_FORMAT!r})")
    return state


def _check_same_settings(saved: PretrainConfig, new: PretrainConfig) -> None:
    """A resume continues the same run: every setting but :data:`RESUMABLE_CHANGES` must match."""
    old, now = saved.flat_dict(), new.flat_dict()
    changed = [f"{k}: {old[k]!r} -> {now[k]!r}" for k in old if k not in RESUMABLE_CHANGES and old[k] != now[k]]
    if changed:
        raise ValueError(
            "--resume with different settings than the run was started with (" + "; ".join(changed) + "); "
            "resume with the same ones, or start a new run in another --out folder"
        )


class _PretrainLoop:
    """The optimisation loop of :func:`pretrain`: steps, logging, checkpoints, the figure."""

    def __init__(self, cfg: PretrainConfig, run_dir: Path, volumes, state: dict | None, *,
                 echo: Callable[[str], None], progress: bool):
        from medcontext.engine.host.precision import resolve_device
        from medcontext.method.masked_modelling import MaskedVolumeModelling
        from medcontext.models import create_model

        self.cfg, self.run_dir, self.volumes, self.echo, self.progress = cfg, run_dir, volumes, echo, progress
        self.device = resolve_device(cfg.device)
        channels, roi = volumes.channels, tuple(volumes.roi)
        torch.manual_seed(cfg.seed)
        network = create_model(cfg.model, channels, channels, roi, **cfg.model_options)
        self.head_keys = output_layer_keys(cfg.model, channels, roi, cfg.model_options)
        self.mvm = MaskedVolumeModelling(
            network, in_channels=channels, roi_size=roi, mask_ratio=cfg.mask_ratio, mask_cell=cfg.mask_cell,
            mask_shape=cfg.mask_shape, mask_space=cfg.mask_space, seed=cfg.seed,
        ).to(self.device)
        self.optimizer = torch.optim.AdamW(self.mvm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        self.cpu_share = None  # a CpuShare: threads re-counted after every step
        if state is not None:
            self._restore(state)

    def _restore(self, state: dict) -> None:
        from medcontext.engine.checkpoint import load_model_state, restore_rng_state

        load_model_state(self.mvm, state["model"], source=str(self.run_dir / "last.pt"))
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"], self.mvm.mask_generator)
        self.step = int(state["step"])
        self.echo(f"resuming from step {self.step} of {self.cfg.steps} ({self.run_dir / 'last.pt'})")

    @property
    def info(self) -> dict[str, Any]:
        """What ``pretrained.pt`` says about its origin."""
        cfg = self.cfg
        return {"model": cfg.model, "options": dict(cfg.model_options), "in_channels": self.volumes.channels,
                "roi": list(self.volumes.roi), "step": self.step, "pretext": "masked volume modelling (L1)",
                "mask_ratio": cfg.mask_ratio, "mask_shape": cfg.mask_shape, "mask_space": self.mvm.mask_space,
                "mask_cell": list(self.mvm.masker.cell_size), "volumes": len(self.volumes)}

    def save(self) -> None:
        """``last.pt`` then ``pretrained.pt``, each atomically."""
        from medcontext.engine.checkpoint import capture_rng_state

        state = {"format": STATE_FORMAT, "format_version": 1, "version": medcontext.__version__, "step": self.step,
                 "config": self.cfg.to_dict(), "model": self.mvm.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "rng": capture_rng_state(self.mvm.mask_generator)}
        atomic_write(self.run_dir / "last.pt", lambda handle: torch.save(state, handle))
        save_pretrained_weights(self.run_dir / PRETRAINED_FILE, self.mvm.network, self.head_keys, self.info)

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step; returns ``(loss, seconds waiting for data, learning rate)``."""
        from medcontext.engine.lr_schedules import warmup_cosine
        from medcontext.engine.trainer import NonFiniteLossError

        lr = warmup_cosine(self.step, self.cfg.steps, self.cfg.lr, self.cfg.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        images = self.volumes.batch(self.step, self.cfg.batch_size).to(self.device)
        data_time = time.perf_counter() - started
        out = self.mvm(images)
        loss = float(out.loss.detach())
        if not np.isfinite(loss):
            saved = self.run_dir / "last.pt"
            raise NonFiniteLossError(self.step + 1, {"l1": loss}, saved if saved.is_file() else None,
                                     self._saved_step)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss, data_time, lr

    def run(self, stop_after: int | None) -> PretrainResult:
        """Train to ``cfg.steps`` (or ``stop_after`` more steps, or a signal), checkpointing on the way."""
        from medcontext.engine.host.machine import machine_record
        from medcontext.engine.host.signals import GracefulStop
        from medcontext.engine.training_log import RunLog, read_metrics

        start, loss, stopped_by = self.step, None, ""
        self._saved_step = start if start else None
        self.mvm.train()
        with GracefulStop() as stop, RunLog(self.run_dir, self.cfg.steps, start, progress=self.progress,
                                            tensorboard=self.cfg.tensorboard) as log:
            # what it ran on, as `train` records it (reports and `experiment --status` name the machine)
            log.start(start, {**machine_record(self.device, "fp32"), "volumes": len(self.volumes)})
            while self.step < self.cfg.steps:
                began = time.perf_counter()
                loss, data_time, lr = self.train_step()
                log.train_step(self.step, {"total": loss, "lr": lr, "data_time": data_time,
                                           "step_time": time.perf_counter() - began})
                if self.cpu_share is not None:
                    self.cpu_share.refresh()
                done = self.step >= self.cfg.steps
                halt = stop.requested or (stop_after is not None and self.step - start >= stop_after)
                if done or halt or self.step % self.cfg.save_every == 0:
                    self.save()
                    self._saved_step = self.step
                if halt and not done:
                    stopped_by = stop.name if stop.requested else "stop_after"
                    break
            if stop.requested and not stopped_by:
                stopped_by = stop.name
        figure = plot_loss_curve(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "loss_curve.png",
                                 title=f"{self.cfg.model}: masked volume modelling")
        if figure is not None:
            self.echo(f"loss curve: {figure}")
        exit_code = stop.exit_code if stopped_by in ("SIGINT", "SIGTERM") else 0
        return PretrainResult(self.run_dir, start, self.step, self.cfg.steps, loss, stopped_by, exit_code)
