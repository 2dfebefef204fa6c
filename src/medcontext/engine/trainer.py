"""The training loop, with named hooks and every hyperparameter from a :class:`TrainConfig`.

One optimizer step (``train_step``)::

    lr = learning_rate(step)                    # pure function of the global step
    losses = model(images, labels)              # MedContext: student on X and X_M, teacher on X
    check every loss term is finite             # else stop; the last checkpoint stays intact
    scaler.scale(losses.total).backward(); clip; scaler.step(optimizer)
    mc.update_teacher(step)                     # EMA, momentum cosine 0.996 -> 1

Around it: validation every ``eval.every`` steps (sliding window over whole preprocessed
validation volumes, mean Dice over the evaluated classes, ``best.pt`` on improvement),
``last.pt`` every ``train.checkpoint_every`` steps and at the end, a graceful stop on
SIGINT/SIGTERM, and logs (``metrics.jsonl``, TensorBoard, progress bar).

Exact resume: weights, optimizer, scaler and every RNG (python, numpy, torch, mask
generator) are checkpointed, schedules are recomputed from the step, and batches are a pure
function of ``(seed, step)`` (:mod:`medcontext.engine.sampling`). A run resumed from step
``k`` therefore repeats the uninterrupted run's losses bit for bit on CPU.

Distributed training (``torchrun``, :mod:`medcontext.engine.host.distributed`): with a
``world`` of N processes the Trainer

- wraps ``mc`` in ``DistributedDataParallel`` (``self.model``; ``self.mc`` stays the unwrapped
  MedContext), so the gradients of the student AND the mask tokens are averaged over ranks;
- broadcasts rank 0's teacher (DDP only broadcasts the wrapped module, and the teacher lives
  outside it), re-broadcasts floating buffers (BatchNorm statistics) before every EMA update,
  and checks at start and at every checkpoint that student, mask tokens and teacher are
  bit-identical on every rank;
- seeds each rank's masks (and dropout) with :func:`~medcontext.engine.host.distributed.rank_seed`
  and checkpoints every rank's random states, so a resumed run continues every rank exactly;
- reads a disjoint share of the training draws on each rank (:mod:`medcontext.engine.sampling`:
  ``(step, rank)`` -> draws, re-shuffled per epoch with the run seed);
- shards validation over ranks and gathers the per-case Dice, so every rank computes the same
  mean and keeps the same ``best.pt`` decision;
- gathers the loss terms every step (a NaN on one rank stops every rank at the same step) and
  agrees on SIGINT/SIGTERM after every step (a signal to any rank stops all ranks after the
  same step, with a checkpoint);
- writes files (checkpoints, logs, TensorBoard, progress bar) on rank 0 only.

The effective batch is ``train.batch_size x data.num_samples x world size`` crops per step
(``train.effective_batch_size``); ``optim.lr_scaling`` scales the learning rate with it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from medcontext.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_model_state,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from medcontext.engine.config import TrainConfig, lr_scale_factor, resolve_batch_scaling
from medcontext.engine.host.cpu_memory import retain_freed_cpu_memory
from medcontext.engine.host.distributed import World, rank_seed, wrap_ddp
from medcontext.engine.inference import logits_to_labels, sliding_window_logits
from medcontext.engine.host.machine import machine_record
from medcontext.engine.optim import build_optimizer, learning_rate, set_learning_rate
from medcontext.engine.host.precision import Precision, resolve_device, resolve_precision
from medcontext.engine.resume import check_resume_settings
from medcontext.engine.training_log import RunLog, read_metrics, summarize_timing
from medcontext.engine.sampling import make_step_loader
from medcontext.engine.host.signals import GracefulStop
from medcontext.evaluation import dice_score, label_masks, region_channel_masks
from medcontext.evaluation.postprocessing import candidate_dice, choose_postprocessing, write_postprocessing
from medcontext.method.teacher import unwrap_model

# key of validation_step's result holding the post-processing candidates' Dice (not a class)
POSTPROCESSING_CANDIDATES = "_postprocessing_candidates"

__all__ = ["World", "ValidationCase", "TrainResult", "NonFiniteLossError", "Trainer"]


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; training stopped before applying that step."""

    def __init__(
        self,
        step: int,
        terms: Mapping[str, float],
        checkpoint: Path | None,
        checkpoint_step: int | None,
        ranks: Sequence[int] | None = None,
    ):
        self.step, self.terms, self.checkpoint, self.checkpoint_step = step, dict(terms), checkpoint, checkpoint_step
        self.ranks = list(ranks) if ranks is not None else None
        shown = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
        if self.ranks:
            shown += f" on rank {', '.join(map(str, self.ranks))}"
        kept = (
            f"the last good checkpoint {checkpoint} (after step {checkpoint_step}) is intact"
            if checkpoint is not None
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"training stopped at step {step}: the loss is not finite ({shown}); the weights of this step were not "
            f"applied and {kept}. Try a lower optim.lr, gradient clipping (optim.grad_clip) or train.precision=fp32."
        )


@dataclass
class ValidationCase:
    """One whole preprocessed validation volume.

    Attributes:
        case_id: case identifier.
        image: (C, H, W, D) float tensor, preprocessed like the training crops.
        label: (H, W, D) integer label values in the same (preprocessed) space.
        spacing: voxel size in mm of the preprocessed space.
    """

    case_id: str
    image: torch.Tensor
    label: np.ndarray
    spacing: tuple[float, float, float]


@dataclass
class TrainResult:
    """How :meth:`Trainer.fit` ended."""

    run_dir: Path
    start_step: int
    step: int
    total_steps: int
    stopped_by: str = ""  # "", "SIGINT", "SIGTERM" or "stop_after"
    exit_code: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    timing: dict = field(default_factory=dict)  # rank 0 only
    rank: int = 0  # the process that returns this result (print only on rank 0)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


def run_device(name: str, world: World) -> torch.device:
    """``train.device`` resolved for this process: ``cuda`` means ``cuda:LOCAL_RANK`` in a
    multi-process run (the device :func:`~medcontext.engine.host.distributed.init_distributed` set)."""
    device = resolve_device(name)
    if world.is_distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class Trainer:
    """Trains a :class:`~medcontext.method.MedContext` module as a :class:`TrainConfig` says.

    Args:
        mc: the MedContext module (student, teacher, mask tokens).
        cfg: the resolved configuration (saved with every checkpoint).
        run_dir: folder for checkpoints and logs.
        train_dataset: one item per training case, ``{"image", "label"}`` after random
            transforms (a MONAI dataset whose ``transform`` has ``set_random_state``).
        val_cases: whole validation volumes (may be empty: no validation, no ``best.pt``).
            In a multi-process run each rank validates cases ``rank::world_size`` of them.
        classes: evaluated classes or regions, name -> label values.
        output_mode: ``softmax`` or ``sigmoid`` (region outputs).
        roi_size: training crop (H, W, D); the sliding-window size.
        channel_labels: softmax only: label value of each output channel.
        regions: sigmoid only: region name -> label values, in output-channel order.
        world: process group facts (rank 0 writes); with several processes the module is
            wrapped in ``DistributedDataParallel`` (see the module docstring).
        progress: show a progress bar.
        checkpoint_extra: stored in every checkpoint under ``"model_info"``.
        collate_fn: batch collation (default MONAI's ``list_data_collate``).
        val_sharded: ``val_cases`` already hold only this rank's share (cases
            ``rank::world_size`` of the full list), e.g. to load only those volumes.
        precision: the precision to train in, already resolved (e.g. checked by
            :mod:`medcontext.engine.host.precision_check`); default: ``train.precision`` resolved
            for the device.
        unlabeled_dataset: random crops of unlabelled volumes (``{"image"}`` items, e.g.
            :func:`~medcontext.data.unlabeled.make_unlabeled_dataset`): every step then also
            draws ``data.unlabeled_batch_size`` of them, passed to the model as ``unlabeled``
            (:mod:`medcontext.engine.unlabeled_data`).
    """

    def __init__(
        self,
        mc: nn.Module,
        cfg: TrainConfig,
        run_dir: str | Path,
        train_dataset: Any,
        val_cases: Sequence[ValidationCase],
        *,
        classes: Mapping[str, Sequence[int]],
        output_mode: str,
        roi_size: Sequence[int],
        channel_labels: Sequence[int] | None = None,
        regions: Mapping[str, Sequence[int]] | None = None,
        world: World | None = None,
        progress: bool = True,
        checkpoint_extra: Mapping[str, Any] | None = None,
        collate_fn: Callable | None = None,
        val_sharded: bool = False,
        precision: Precision | None = None,
        unlabeled_dataset: Any = None,
    ):
        self.world = world or World()
        self.cfg = resolve_batch_scaling(TrainConfig.from_dict(cfg.to_dict()), self.world.world_size)
        cfg = self.cfg
        self.lr_scale = lr_scale_factor(cfg)
        self.run_dir = Path(run_dir)
        self.device = run_device(cfg.train.device, self.world) if precision is None else precision.device
        self.precision: Precision = precision or resolve_precision(cfg.train.precision, self.device)
        if self.device.type == "cpu" and cfg.train.retain_cpu_memory:
            retain_freed_cpu_memory()
        self._mc = mc.to(self.device)
        self.model: nn.Module = self._mc  # the DDP wrapper replaces it below; self.mc stays unwrapped
        self.train_dataset = train_dataset
        self.unlabeled_dataset = unlabeled_dataset
        if val_sharded:
            self.val_cases = list(val_cases)
            self.val_total = sum(self.world.all_gather_object(len(self.val_cases)))
        else:
            self.val_total = len(val_cases)
            self.val_cases = list(val_cases)[self.world.rank :: self.world.world_size]
        self.classes = {k: tuple(v) for k, v in classes.items()}
        self.output_mode = output_mode
        self.roi_size = tuple(int(r) for r in roi_size)
        self.channel_labels = list(channel_labels) if channel_labels is not None else None
        self.regions = dict(regions) if regions is not None else None
        self.progress = progress
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.collate_fn = collate_fn
        self.total_steps = cfg.train.steps
        if cfg.eval.use == "teacher" and getattr(self.mc, "teacher", None) is None:
            raise ValueError(f"eval.use=teacher but variant {cfg.method.variant!r} has no teacher; use eval.use=student")
        self.optimizer = build_optimizer(self.mc.parameters(), cfg.optim)
        self.scaler = self.precision.grad_scaler()
        self.step = 0  # completed optimizer steps
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.last_checkpoint_step: int | None = None
        self.log: RunLog | None = None
        self.cpu_share = None  # a medcontext.engine.host.cpu_threads.CpuShare: threads re-counted after every step
        self._float_buffers = [b for b in self.mc.buffers() if b.is_floating_point()]
        if self.world.is_distributed:
            self._join_world()

    def _join_world(self) -> None:
        """Per-rank random streams, DDP around ``mc``, rank 0's teacher everywhere, then a check."""
        seed = rank_seed(self.cfg.train.seed, self.world.rank)
        generator = getattr(self.mc, "mask_generator", None)
        if generator is not None:
            generator.manual_seed(seed)
        if self.world.rank > 0:  # dropout and anything else on the global streams; rank 0 keeps the run's
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        self.model = wrap_ddp(self.mc, self.device)  # broadcasts rank 0's student and mask tokens
        teacher = getattr(self.mc, "teacher", None)
        if teacher is not None:
            self.world.broadcast_tensors(list(teacher.parameters()) + list(teacher.buffers()))
        self.world.check_replicas(self.mc.state_dict(), "the initial student, mask tokens and teacher")

    def scaling_summary(self) -> str:
        """Processes, batch per process, effective batch and learning-rate scaling, in one line."""
        cfg = self.cfg
        per_process = f"{cfg.train.batch_size} volume(s) x {cfg.data.num_samples} crop(s)"
        text = (
            f"{self.world.describe()}; batch per process {per_process}, effective batch "
            f"{cfg.train.effective_batch_size} crops per step"
        )
        if cfg.optim.lr_scaling == "none":
            return text + f"; learning rate {cfg.optim.lr:g} (optim.lr_scaling=none)"
        return text + (
            f"; learning rate {cfg.optim.lr:g} x {self.lr_scale:.4g} = {cfg.optim.lr * self.lr_scale:.4g} "
            f"(optim.lr_scaling={cfg.optim.lr_scaling} from optim.base_batch_size={cfg.optim.base_batch_size})"
        )

    # ------------------------------------------------------------------ properties
    @property
    def mc(self) -> nn.Module:
        """The unwrapped MedContext module."""
        return unwrap_model(self._mc)

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self, rng_ranks: Sequence[dict] | None = None) -> dict:
        """Everything needed to continue the run exactly (see :mod:`medcontext.engine.checkpoint`).

        Args:
            rng_ranks: every rank's random states (multi-process runs); ``rng`` holds this
                process's own.
        """
        payload = {
            "step": self.step,
            "model": self.mc.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": capture_rng_state(getattr(self.mc, "mask_generator", None)),
            "world_size": self.world.world_size,
            "config": self.cfg.to_dict(),
            "model_info": self.checkpoint_extra,
            "best": {"metric": self.best_metric, "step": self.best_step},
        }
        if rng_ranks is not None:
            payload["rng_ranks"] = list(rng_ranks)
        return payload

    def save(self, path: Path) -> None:
        """Write a checkpoint atomically; call it on every rank (rank 0 writes).

        With several processes the other ranks contribute their random states, and the
        student, mask tokens and teacher are first checked to be identical on every rank.
        """
        rng_ranks = None
        if self.world.is_distributed:
            rng_ranks = self.world.all_gather_object(capture_rng_state(getattr(self.mc, "mask_generator", None)))
            self.world.check_replicas(self.mc.state_dict(), f"the student, mask tokens and teacher (saving {path.name})")
        if self.world.is_main:
            save_checkpoint(path, self.checkpoint_payload(rng_ranks))
        if path == self.last_path:
            self.last_checkpoint_step = self.step

    def restore(self, path: Path, *, trust: bool = False) -> None:
        """Continue from a checkpoint written by :meth:`save` (strict); every rank reads it.

        The file is read weights-only (a crafted ``last.pt`` cannot run code) unless ``trust``.
        """
        if not self.world.is_main and not Path(path).is_file():
            raise CheckpointError(
                f"rank {self.world.rank} cannot see {path}: with several nodes, the run folder must be on a "
                "filesystem that every node mounts at the same path"
            )
        data = read_checkpoint(path, map_location="cpu", trust=trust)
        saved_world = int(data.get("world_size", 1))
        if saved_world != self.world.world_size:
            raise CheckpointError(
                f"cannot resume from {path}: it was written by a run of {saved_world} process(es), this launch has "
                f"{self.world.world_size}; resume with the same number of processes (torchrun --nnodes/--nproc_per_node)"
            )
        saved = TrainConfig.from_dict(data["config"], source=f"{path} config")
        check_resume_settings(saved, self.cfg, saved_world_size=saved_world, source=str(path))
        load_model_state(self.mc, data["model"], source=str(path))
        self.optimizer.load_state_dict(data["optimizer"])
        if data.get("scaler") is not None:
            self.scaler.load_state_dict(data["scaler"])
        rng = data["rng_ranks"][self.world.rank] if self.world.is_distributed else data["rng"]
        restore_rng_state(rng, getattr(self.mc, "mask_generator", None))
        self.step = int(data["step"])
        self.best_metric = data.get("best", {}).get("metric")
        self.best_step = data.get("best", {}).get("step")
        self.last_checkpoint_step = self.step

    # ------------------------------------------------------------------ hooks
    def on_train_start(self) -> None:
        """Called once before the first step (after a resume restored the state)."""

    def train_step(self, batch: Mapping[str, torch.Tensor], step: int) -> dict[str, float]:
        """One optimizer step on ``batch``; ``step`` is 0-based. Returns the values to log."""
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        lr = learning_rate(step, self.total_steps, self.cfg.optim) * self.lr_scale
        set_learning_rate(self.optimizer, lr)
        self.model.train()
        extra = {}
        if "unlabeled" in batch:  # semi-supervised: the step sets the ramp-up of the unlabelled terms
            extra = {"unlabeled": batch["unlabeled"].to(self.device, non_blocking=True), "step": step}
        with self.precision.autocast():
            losses = self.model(images, labels, **extra)
        terms, bad_ranks = self._agree_on_losses(losses.as_floats())
        if bad_ranks:
            raise NonFiniteLossError(
                step + 1, terms, self.last_path if self.last_checkpoint_step is not None else None, self.last_checkpoint_step,
                ranks=bad_ranks if self.world.is_distributed else None,
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.total).backward()
        grad_norm = float("nan")
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.mc.parameters(), self.cfg.optim.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.world.is_distributed and self._float_buffers:
            # running statistics were updated by each rank's own batch: rank 0's win (as DDP's
            # broadcast_buffers does before the next forward) so the teacher EMA stays identical
            self.world.broadcast_tensors(self._float_buffers)
        momentum = self.mc.update_teacher(step)
        values = {**terms, "lr": lr, "grad_norm": grad_norm}
        if momentum is not None:
            values["momentum"] = momentum
        return values

    def _agree_on_losses(self, terms: dict[str, float]) -> tuple[dict[str, float], list[int]]:
        """The loss terms to log (mean over ranks) and the ranks whose terms are not finite.

        Every rank gets the same answer, so a NaN on one rank stops all of them before any
        enters the gradient all-reduce.
        """
        if not self.world.is_distributed:
            return terms, [] if all(math.isfinite(v) for v in terms.values()) else [0]
        rows = self.world.gather_floats(list(terms.values()))
        bad = [r for r in range(self.world.world_size) if not bool(torch.isfinite(rows[r]).all())]
        shown = rows[bad[0]] if bad else rows.mean(dim=0)
        return dict(zip(terms, shown.tolist())), bad

    def on_train_step_end(self, step: int, values: dict[str, float]) -> None:
        """Called after every step with the logged values (``step`` = completed steps)."""

    def validation_step(self, case: ValidationCase) -> dict[str, float]:
        """Dice per evaluated class of one whole validation volume (sigmoid region tasks: per
        region channel against the region's ground truth, not through a painted label map)."""
        network = self.mc.inference_network(self.cfg.eval.use)
        logits = sliding_window_logits(
            network,
            case.image.unsqueeze(0),
            self.roi_size,
            overlap=self.cfg.eval.overlap,
            mode=self.cfg.eval.mode,
            sw_batch_size=self.cfg.eval.sw_batch_size,
            precision=self.precision,
            device=self.device,
        )[0]
        if self.output_mode == "sigmoid":
            pred = (logits > 0).numpy().astype(np.uint8)
            pred_masks = region_channel_masks(pred, self.regions, self.classes)
        else:
            pred = logits_to_labels(logits, self.output_mode, channel_labels=self.channel_labels, regions=self.regions)
            pred_masks = label_masks(pred, self.classes)
        truth_masks = label_masks(case.label, self.classes)
        result: dict[str, Any] = {name: dice_score(pred_masks[name], truth_masks[name]) for name in self.classes}
        # every largest-component candidate's Dice, so that best.pt comes with its post-processing decision
        foreground = self._foreground_labels(logits.shape[0])
        result[POSTPROCESSING_CANDIDATES] = {
            "foreground_labels": foreground,
            "dice": candidate_dice(pred, truth_masks, self.classes, target=self._pp_target, regions=self.regions,
                                   foreground_labels=foreground),
        }
        return result

    @property
    def _pp_target(self) -> str:
        return "regions" if self.output_mode == "sigmoid" else "labels"

    def _foreground_labels(self, channels: int) -> list[int]:
        """What post-processing's whole-foreground step unites: every region channel, or every
        non-zero label value the network predicts."""
        if self.output_mode == "sigmoid":
            return list(range(channels))
        values = self.channel_labels if self.channel_labels is not None else range(channels)
        return [int(v) for v in values if int(v) != 0]

    def _choose_postprocessing(self, step: int, results: dict[str, dict[str, Any]]):
        """The post-processing decision of this validation (nnU-Net's rule, on every validation case)."""
        found = [r[POSTPROCESSING_CANDIDATES] for r in results.values() if POSTPROCESSING_CANDIDATES in r]
        if not found or len(found) != len(results):  # a validation_step of a subclass without candidates
            return None
        return choose_postprocessing([f["dice"] for f in found], self.classes, target=self._pp_target,
                                     regions=self.regions, foreground_labels=found[0]["foreground_labels"], step=step)

    def on_validation_end(self, step: int, results: dict[str, dict[str, float]]) -> dict[str, Any]:
        """Aggregate per-case Dice, keep the best checkpoint; returns the logged record."""
        per_class = {name: float(np.mean([r[name] for r in results.values()])) for name in self.classes}
        mean_dice = float(np.mean(list(per_class.values())))
        improved = self.best_metric is None or mean_dice > self.best_metric
        decision = self._choose_postprocessing(step, results)
        if improved:
            self.best_metric, self.best_step = mean_dice, step
            self.save(self.best_path)
            if decision is not None and self.world.is_main:  # the decision that goes with best.pt
                write_postprocessing(self.run_dir, decision)
        record = {"mean_dice": mean_dice, "dice": per_class, "cases": len(results), "best": improved}
        if decision is not None:
            record["postprocessed_mean_dice"] = decision.metrics["validation_dice_postprocessed"]["mean"]
        return record

    def on_train_end(self, result: TrainResult) -> None:
        """Called once after the loop (also after a graceful stop)."""

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, Any] | None:
        """Run validation at the current step on every rank's share of the cases, log it (rank 0)
        and return the record (the same on every rank)."""
        if not self.val_total:
            return None
        start = time.perf_counter()
        local = [(case.case_id, self.validation_step(case)) for case in self.val_cases]
        shards = self.world.all_gather_object(local)
        size = self.world.world_size
        # back into the order of the full list (rank r validated cases r, r + size, ...)
        results = dict(shards[i % size][i // size] for i in range(self.val_total))
        record = self.on_validation_end(self.step, results)
        record["time"] = time.perf_counter() - start
        if self.log is not None:
            self.log.validation(self.step, record)
        return record

    def _should_validate(self, step: int) -> bool:
        every = self.cfg.eval.every
        return step == self.total_steps or (every > 0 and step % every == 0)

    # ------------------------------------------------------------------ the loop
    def fit(self, *, resume: bool = False, stop_after: int | None = None, handle_signals: bool = True,
            trust_checkpoint: bool = False) -> TrainResult:
        """Train from step 0 (or from ``last.pt`` with ``resume``) to ``train.steps``.

        Args:
            resume: continue from ``run_dir/last.pt``.
            stop_after: stop (with a checkpoint) after this many steps of this call; the
                run can be continued with ``resume`` (for time-limited jobs and tests).
            handle_signals: turn SIGINT/SIGTERM into a graceful stop.
            trust_checkpoint: read ``last.pt`` with full pickle (only for a file you trust).

        Returns:
            A :class:`TrainResult`; ``stopped_by`` says why it ended early.

        Raises:
            NonFiniteLossError: a loss term became NaN/Inf (that step was not applied).
        """
        if resume:
            self.restore(self.last_path, trust=trust_checkpoint)
        start_step = self.step
        result = TrainResult(self.run_dir, start_step, self.step, self.total_steps, rank=self.world.rank)
        self.log = self._open_log(start_step)
        self.log.start(start_step, machine_record(self.device, self.precision.name, processes=self.world.world_size))
        if resume:
            self.log.message(f"resuming at step {start_step} of {self.total_steps} from {self.last_path}")
        loader = self._step_loader(start_step)
        try:
            with GracefulStop(enabled=handle_signals) as stop:
                self.on_train_start()
                batches = iter(loader)
                while self.step < self.total_steps:
                    self._timed_step(batches)
                    self._after_step()
                    if self._checkpoint_or_stop(stop, result, ran=self.step - start_step, stop_after=stop_after):
                        break
            self._finish(result, stop)
            self.on_train_end(result)
            self.world.barrier()  # the last checkpoint is on disk when fit returns on any rank
            return result
        except BaseException as err:
            explained = self.world.explain_failure(err)
            if explained is err:
                raise
            raise explained from err
        finally:
            self.log.close()

    def _open_log(self, start_step: int) -> RunLog:
        """``metrics.jsonl``, TensorBoard and the progress bar (written on rank 0 only)."""
        return RunLog(
            self.run_dir,
            self.total_steps,
            start_step,
            enabled=self.world.is_main,
            progress=self.progress,
            tensorboard=self.cfg.train.tensorboard,
            log_every=self.cfg.train.log_every,
        )

    def _step_loader(self, start_step: int):
        """Batches as a pure function of ``(seed, step, rank)``, from ``start_step`` on (with the
        step's unlabelled crops as ``batch["unlabeled"]`` when the run has unlabelled volumes)."""
        loader = make_step_loader(
            self.train_dataset,
            seed=self.cfg.train.seed,
            start_step=start_step,
            total_steps=self.total_steps,
            batch_size=self.cfg.train.batch_size * self.cfg.data.num_samples,
            num_workers=self.cfg.data.num_workers,
            collate_fn=self.collate_fn,
            world_size=self.world.world_size,
            rank=self.world.rank,
            pin_memory=self.device.type == "cuda",
        )
        if self.unlabeled_dataset is None:
            return loader
        from medcontext.engine.unlabeled_data import WithUnlabeled, make_unlabeled_loader

        unlabeled = make_unlabeled_loader(self.unlabeled_dataset, self.cfg, start_step=start_step,
                                          world_size=self.world.world_size, rank=self.world.rank,
                                          pin_memory=self.device.type == "cuda")
        return WithUnlabeled(loader, unlabeled)

    def _timed_step(self, batches) -> None:
        """Fetch a batch, run :meth:`train_step`, count the step, log it with its timing, call the hook."""
        tick = time.perf_counter()
        batch = next(batches)
        data_time = time.perf_counter() - tick
        values = self.train_step(batch, self.step)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.step += 1
        step_time = time.perf_counter() - tick
        values.update(data_time=data_time, step_time=step_time, data_share=data_time / step_time)
        self.log.train_step(self.step, values)
        self.on_train_step_end(self.step, values)

    def _after_step(self) -> None:
        """Validation when it is due; the thread count re-counted."""
        if self._should_validate(self.step):
            self.validate()
        if self.cpu_share is not None:
            self.cpu_share.refresh()

    def _checkpoint_or_stop(self, stop: GracefulStop, result: TrainResult, *, ran: int, stop_after: int | None) -> bool:
        """Save ``last.pt`` when due; at the end, on a signal or after ``stop_after`` steps save and
        return True (``result.stopped_by`` says why it ended early)."""
        signalled = self._agree_on_stop(stop)
        if signalled or (stop_after is not None and ran >= stop_after) or self.step == self.total_steps:
            self.save(self.last_path)
            if signalled:
                result.stopped_by, result.exit_code = stop.name, stop.exit_code
            elif self.step < self.total_steps:
                result.stopped_by = "stop_after"
            return True
        if self.step % self.cfg.train.checkpoint_every == 0:
            self.save(self.last_path)
        return False

    def _finish(self, result: TrainResult, stop: GracefulStop) -> None:
        """Fill in the result (step, best, timing) and log how a signal ended the run."""
        result.step = self.step
        result.best_metric, result.best_step = self.best_metric, self.best_step
        result.timing = summarize_timing(read_metrics(self.log.path, "train")) if self.world.is_main else {}
        if result.stopped_by in ("SIGINT", "SIGTERM"):
            who = "another process of the group received" if stop.from_peer else "received"
            if result.finished:  # the signal came during the last step: nothing is left to resume
                self.log.message(
                    f"{who} {result.stopped_by} during the last step: the run is complete "
                    f"({self.step} of {self.total_steps} steps, saved {self.last_path})"
                )
            else:
                self.log.message(
                    f"{who} {result.stopped_by}: stopped after step {self.step} and saved {self.last_path}; "
                    "continue with --resume"
                )

    def _agree_on_stop(self, stop: GracefulStop) -> bool:
        """Whether a stop signal reached any rank; every rank gets the same answer."""
        if not self.world.is_distributed:
            return stop.requested
        agreed = self.world.max_int(stop.signum or 0)
        if agreed:
            stop.request(agreed)
        return bool(agreed)

