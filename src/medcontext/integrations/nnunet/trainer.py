"""``nnUNetTrainerMedContext``: nnU-Net v2's trainer with the MedContext training step.

nnU-Net plans, builds, augments, validates and predicts as usual; only the step changes
(docs/method.md): the student (nnU-Net's planned network) sees the clean patch and its tube-masked view,
an EMA teacher sees the clean patch, and the loss is nnU-Net's own deep-supervision loss on both
student outputs plus ``beta`` times the consistency loss on the full-resolution logits.

How it fits nnU-Net's conventions:

* Settings are the class attribute :attr:`nnUNetTrainerMedContext.medcontext_settings`; trainer
  names such as ``nnUNetTrainerMedContext_ratio60_noTeacher`` build subclasses on demand through
  this module's ``__getattr__`` (see :mod:`.settings`), so the constructor keeps nnU-Net's
  signature and a checkpoint's class name rebuilds the same trainer.
* Masks are drawn in input space over nnU-Net's patch (z, y, x); the tubes run along axis 0,
  the through-plane axis that nnU-Net puts first.
* The mask token is an extra parameter group of nnU-Net's optimizer (no weight decay). Under
  DDP its gradient is averaged by hand (it lives outside the DDP-wrapped network) and the clean
  and masked views run as one forward of 2B (DDP allows one forward per backward).
* The teacher is copied from the student in ``on_train_start``, after ``-pretrained_weights``
  were loaded; ``--c`` restores it and the mask token from the checkpoint. The momentum follows
  the global step ``epoch * iterations + i``, recomputed on resume.
* Checkpoints are nnU-Net's (student weights in ``network_weights``, so nnU-Net predicts with
  the student) plus a ``"medcontext"`` entry: settings, teacher weights, mask token.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import distributed as dist

try:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.helpers import dummy_context
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "medcontext.integrations.nnunet.trainer needs nnU-Net v2: pip install \"medcontext[nnunet]\""
    ) from err

from medcontext.io.atomic import atomic_write
from medcontext.method import MedContext, default_cell_size, unwrap_model

from .checkpoint_io import TRUST_ENV, read_nnunet_checkpoint, trust_from_environment
from .settings import BASE_TRAINER_NAME, MedContextSettings, parse_trainer_name

__all__ = ["nnUNetTrainerMedContext", "CHECKPOINT_KEY", "GRADIENT_CLIP", "DEPTH_AXIS"]

CHECKPOINT_KEY = "medcontext"
GRADIENT_CLIP = 12.0  # nnU-Net's clip_grad_norm_ value
DEPTH_AXIS = 0  # nnU-Net's patches are (z, y, x) with the through-plane axis first


class nnUNetTrainerMedContext(nnUNetTrainer):
    """nnU-Net's trainer with the MedContext step; the paper's defaults.

    Change settings with a trainer name (``-tr nnUNetTrainerMedContext_ratio60``) or a subclass::

        class MyTrainer(nnUNetTrainerMedContext):
            medcontext_settings = MedContextSettings(mask_ratio=0.6, beta=1.0)
    """

    medcontext_settings: ClassVar[MedContextSettings] = MedContextSettings()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        settings = type(self).medcontext_settings
        settings.validate(source=f"{type(self).__name__}.medcontext_settings")
        patch = tuple(self.configuration_manager.patch_size)
        if len(patch) != 3:
            raise ValueError(
                f"{type(self).__name__}: configuration {configuration!r} has a {len(patch)}D patch {list(patch)}; "
                "MedContext masks 3D patches: use 3d_fullres, 3d_lowres or 3d_cascade_fullres"
            )
        if settings.num_epochs is not None:
            self.num_epochs = settings.num_epochs
        if settings.iterations_per_epoch is not None:
            self.num_iterations_per_epoch = settings.iterations_per_epoch
        if settings.val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = settings.val_iterations_per_epoch
        self.mask_cell = settings.mask_cell or default_cell_size(patch)
        self.medcontext: MedContext | None = None
        self.medcontext_step = 0  # global optimizer step, recomputed from the epoch on resume
        self._teacher_restored = False
        self.print_to_log_file(
            f"MedContext ({type(self).__name__}): {settings.as_dict()}; mask cell {list(self.mask_cell)} voxels "
            f"over the patch {list(patch)}, tubes along axis {DEPTH_AXIS}",
            also_print_to_console=True,
        )

    # ------------------------------------------------------------------ construction
    def initialize(self):
        """nnU-Net's initialize, then the MedContext wrapper and the mask token's parameter group."""
        super().initialize()
        self.medcontext = self._build_medcontext()
        token = list(self.medcontext.masker.parameters()) if self.medcontext.masker is not None else []
        if token:
            self.optimizer.add_param_group({"params": token, "weight_decay": 0.0})
        self.logger.update_config({"medcontext": {**self.medcontext_settings.as_dict(), "mask_cell_used": list(self.mask_cell)}})

    def _build_medcontext(self) -> MedContext:
        settings = self.medcontext_settings
        passes = "auto"
        if self.is_ddp and settings.variant != "baseline":
            passes = "concat"  # DDP: one forward per backward
        medcontext = MedContext(
            self.network,
            variant=settings.variant,
            mask_ratio=settings.mask_ratio,
            beta=settings.beta,
            momentum=settings.momentum,
            total_steps=self.num_epochs * self.num_iterations_per_epoch,
            mask_space="input",
            depth_axis=DEPTH_AXIS,
            mask_cell=self.mask_cell,
            roi_size=tuple(self.configuration_manager.patch_size),
            loss=self.loss,
            student_passes=passes,
            in_channels=self.num_input_channels,
        ).to(self.device)
        teacher = medcontext.teacher
        decoder = getattr(teacher, "decoder", None)
        if decoder is not None and hasattr(decoder, "deep_supervision"):
            decoder.deep_supervision = False  # the consistency term reads the full-resolution head only
        return medcontext

    # ------------------------------------------------------------------ training
    def on_train_start(self):
        """nnU-Net's start; then the teacher becomes a copy of the student as it is now (after any
        ``-pretrained_weights``), unless ``--c`` restored it from a checkpoint."""
        super().on_train_start()
        teacher = self.medcontext.teacher
        if teacher is not None and not self._teacher_restored:
            teacher.load_state_dict(unwrap_model(self.network).state_dict())
            self.print_to_log_file("MedContext: teacher initialised as a copy of the student")

    def on_train_epoch_start(self):
        self.medcontext_step = self.current_epoch * self.num_iterations_per_epoch
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        """One optimizer step of the MedContext loss; returns nnU-Net's ``{'loss': ...}`` plus the
        terms ``sup``, ``msl``, ``cl`` (numpy scalars)."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        cuda = self.device.type == "cuda"
        with torch.autocast(self.device.type, enabled=True) if cuda else dummy_context():
            terms = self.medcontext.losses(data, target)

        parameters = list(self.medcontext.parameters())  # student + mask token
        if self.grad_scaler is not None:
            self.grad_scaler.scale(terms.total).backward()
            self._average_mask_token_gradient()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            terms.total.backward()
            self._average_mask_token_gradient()
            torch.nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP)
            self.optimizer.step()
        self.medcontext.update_teacher(self.medcontext_step)
        self.medcontext_step += 1
        values = terms.as_floats()
        return {"loss": np.array(values["total"]), **{k: np.array(values[k]) for k in ("sup", "msl", "cl")}}

    def _average_mask_token_gradient(self) -> None:
        if not self.is_ddp or self.medcontext.masker is None:
            return
        world = dist.get_world_size()
        for parameter in self.medcontext.masker.parameters():
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= world

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        if self.medcontext_settings.variant != "baseline":
            means = {k: float(np.mean([o[k] for o in train_outputs])) for k in ("sup", "msl", "cl")}
            momentum = self.medcontext.momentum_at(max(self.medcontext_step - 1, 0)) if self.medcontext.teacher is not None else None
            self.print_to_log_file(
                "MedContext terms: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
                + (f", teacher momentum {momentum:.6f}" if momentum is not None else "")
            )

    # ------------------------------------------------------------------ checkpoints
    def _restore_nnunet_state(self, checkpoint: dict) -> None:
        """What nnU-Net's ``load_checkpoint`` restores from an already read checkpoint dict:
        network weights (a DataParallel ``module.`` prefix dropped), epoch, logger, EMA Dice,
        mirroring axes, optimizer and grad scaler."""
        network = unwrap_model(self.network)
        own_keys = network.state_dict().keys()
        weights = {(k[len("module."):] if k not in own_keys and k.startswith("module.") else k): v
                   for k, v in checkpoint["network_weights"].items()}
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        network.load_state_dict(weights)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])

    def medcontext_state(self) -> dict:
        """The ``"medcontext"`` entry of a checkpoint: settings, teacher weights, mask token."""
        medcontext = self.medcontext
        return {
            "trainer_name": type(self).__name__,
            "settings": self.medcontext_settings.as_dict(),
            "mask_cell": list(self.mask_cell),
            "depth_axis": DEPTH_AXIS,
            "teacher_weights": medcontext.teacher.state_dict() if medcontext.teacher is not None else None,
            "mask_token": medcontext.masker.state_dict() if medcontext.masker is not None else None,
        }

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint (same keys) plus ``"medcontext"``, written atomically."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": unwrap_model(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": type(self).__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            CHECKPOINT_KEY: self.medcontext_state(),
        }
        atomic_write(filename, lambda handle: torch.save(checkpoint, handle))

    def load_checkpoint(self, filename_or_checkpoint: str) -> None:
        """nnU-Net's state, then the teacher and mask token; the checkpoint's settings must equal
        this trainer's (else ``ValueError`` naming both).

        The file is read weights-only with the types nnU-Net stores
        (:mod:`~medcontext.integrations.nnunet.checkpoint_io`; nnU-Net's own load uses full
        pickle, so a crafted file would run code); ``MEDCONTEXT_TRUST_CHECKPOINT=1`` opts in to
        full pickle for a file you trust."""
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError(f"{type(self).__name__}.load_checkpoint takes a file name, got {type(filename_or_checkpoint).__name__}")
        if not self.was_initialized:
            self.initialize()
        checkpoint = read_nnunet_checkpoint(filename_or_checkpoint, trust=trust_from_environment(),
                                            map_location=self.device, trust_hint=f"{TRUST_ENV}=1")
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise ValueError(
                f"{filename_or_checkpoint}: no MedContext state (key {CHECKPOINT_KEY!r}); it was written by "
                f"{checkpoint.get('trainer_name')!r}, not by a MedContext trainer. To start from its weights use "
                "-pretrained_weights instead of --c"
            )
        self._restore_nnunet_state(checkpoint)
        saved = MedContextSettings.from_dict(state["settings"])
        if saved != self.medcontext_settings:
            raise ValueError(
                f"{filename_or_checkpoint}: written with MedContext settings {saved.as_dict()} "
                f"({state.get('trainer_name')}), but {type(self).__name__} has {self.medcontext_settings.as_dict()}"
            )
        medcontext = self.medcontext
        if medcontext.teacher is not None:
            medcontext.teacher.load_state_dict(state["teacher_weights"])
            self._teacher_restored = True
        if medcontext.masker is not None:
            medcontext.masker.load_state_dict(state["mask_token"])


_NAMED_TRAINERS: dict[str, type] = {}


def named_trainer(name: str) -> type:
    """The trainer class for ``name`` (``nnUNetTrainerMedContext[_token...]``), built once and cached.

    Raises:
        ValueError: the name has an unknown token or an out-of-range value.
    """
    if name == BASE_TRAINER_NAME:
        return nnUNetTrainerMedContext
    if name not in _NAMED_TRAINERS:
        settings = parse_trainer_name(name)
        _NAMED_TRAINERS[name] = type(name, (nnUNetTrainerMedContext,), {
            "medcontext_settings": settings,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"nnUNetTrainerMedContext with {settings.as_dict()}.",
        })
    return _NAMED_TRAINERS[name]


def __getattr__(name: str):
    """``nnUNetTrainerMedContext_<tokens>`` as a class (nnU-Net finds trainers by ``hasattr``)."""
    if name.startswith(BASE_TRAINER_NAME + "_"):
        return named_trainer(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
