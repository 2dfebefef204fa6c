"""The MedContext wrapper: adds the masked-view and teacher terms to any segmentation network.

One training step (docs/method.md, paper Algorithm 1)::

    losses = mc.losses(images, labels)   # student on X and X_M, teacher on X
    losses.total.backward()
    optimizer.step()                      # optimizer over mc.parameters(): student + mask tokens
    mc.update_teacher(step)               # EMA, momentum cosine 0.996 -> 1 over the global step

With unlabelled crops ``U`` (a semi-supervised variant, :mod:`medcontext.method.semisupervised`)
the step is the same with ``mc.losses(images, labels, unlabeled=U, step=step)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .adapters import TokenAdapter, find_token_adapter
from .losses import SegmentationLoss, consistency_loss, first_head
from .masking import InputMasker, as_triple, default_cell_size, tube_mask
from .schedules import mean_teacher_momentum, momentum_after_pretrain, momentum_at, momentum_for_horizon
from .semisupervised import semi_supervised_losses
from .settings import DEFAULTS, MASK_MODES, MASK_SPACES, OUTPUT_MODES, STUDENT_PASSES, VARIANTS, check_choice
from .settings import SemiSupervision, semi_supervised_variants, semi_supervision
from .teacher import copy_into_teacher, ema_update, make_teacher, max_teacher_difference, unwrap_model
from .token_masking import TokenMasker

__all__ = ["MedContext", "LossBreakdown", "VARIANTS", "TeacherOutOfSyncWarning"]


class TeacherOutOfSyncWarning(UserWarning):
    """The teacher differs from the student before the first teacher update (the teacher starts as
    an exact copy, docs/method.md): weights were most likely loaded into the network after wrapping it."""


@dataclass
class LossBreakdown:
    """Loss terms of one step; absent terms are zero tensors. All are scalars.

    The terms of the unlabelled crops are ``None`` for the labelled-only variants; the
    semi-supervised ones set ``cl_unlabeled`` (consistency on the unlabelled crops), ``pseudo``
    (pseudo-label loss), ``ramp`` (the ramp-up weight at the step) and, with MIC's confidence
    weighting, ``confident`` (mean fraction of confident teacher voxels; for sigmoid region
    outputs, of confident (voxel, region) pairs).
    """

    total: torch.Tensor
    sup: torch.Tensor
    msl: torch.Tensor
    cl: torch.Tensor
    cl_unlabeled: torch.Tensor | None = None
    pseudo: torch.Tensor | None = None
    ramp: torch.Tensor | None = None
    confident: torch.Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        """The terms that are set, as Python floats (one device sync), for logging."""
        names = ["total", "sup", "msl", "cl"] + [
            n for n in ("cl_unlabeled", "pseudo", "ramp", "confident") if getattr(self, n) is not None
        ]
        values = torch.stack([getattr(self, n).float() for n in names]).detach().cpu().tolist()
        return dict(zip(names, values))


def _semi_settings(variant: str, semi: SemiSupervision | None, momentum: float | None):
    """The unlabelled-term settings (``None`` for a labelled-only variant) and the momentum."""
    if VARIANTS[variant].unlabeled is None:
        if semi is not None:
            raise ValueError(f"semi= sets the unlabelled terms of a semi-supervised variant; {variant!r} has none")
        return None, DEFAULTS.momentum if momentum is None else momentum
    semi = semi if semi is not None else semi_supervision(variant)
    return semi, semi.momentum if momentum is None else momentum


def _first_conv_in_channels(network: nn.Module) -> int | None:
    for module in network.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.in_channels
    return None


def _has_training_batchnorm(network: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) and m.training for m in network.modules())


def _teacher_state_dict_hook(module: "MedContext", state_dict: dict, prefix: str, local_metadata: dict) -> None:
    if module.teacher is not None:
        for key, value in module.teacher.state_dict().items():
            state_dict[f"{prefix}teacher.{key}"] = value


def _teacher_load_pre_hook(
    module: "MedContext", state_dict: dict, prefix: str, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
) -> None:
    module._teacher_checked = True  # a loaded state (a checkpoint, a resume) brings its own teacher
    teacher_prefix = f"{prefix}teacher."
    teacher_state = {k[len(teacher_prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(teacher_prefix)}
    if module.teacher is None:
        unexpected_keys.extend(teacher_prefix + k for k in teacher_state)
        return
    result = module.teacher.load_state_dict(teacher_state, strict=False)
    missing_keys.extend(teacher_prefix + k for k in result.missing_keys)
    unexpected_keys.extend(teacher_prefix + k for k in result.unexpected_keys)


def _check_step_numbers(variant: str, has_teacher: bool, mask_ratio: float, beta: float, momentum: float,
                        total_steps: int | None, depth_axis: int) -> None:
    """The numeric arguments of :class:`MedContext`, each in its range (``ValueError`` naming it)."""
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if has_teacher and (total_steps is None or total_steps < 1):
        raise ValueError(
            f"variant {variant!r} keeps an EMA teacher whose momentum follows the global step: "
            f"pass total_steps (the number of optimizer steps of the run), got {total_steps!r}"
        )
    if not -3 <= depth_axis < 3:
        raise ValueError(f"depth_axis must be a spatial axis in [-3, 2], got {depth_axis}")


def _base_momentum(momentum: float, horizon: float | None, total_steps: int | None) -> float:
    """The teacher's momentum at step 0: ``momentum``, or the one of a time constant of
    ``horizon`` x ``total_steps`` steps."""
    if horizon is not None and total_steps is not None:
        return float(momentum_for_horizon(horizon, total_steps))
    if horizon is not None and not 0.0 < horizon <= 1.0:
        raise ValueError(f"momentum_horizon must be in (0, 1], got {horizon}")
    return float(momentum)


def _checked_student_passes(student_passes: str, network: nn.Module) -> str:
    """``student_passes`` if valid; ``concat`` is refused for a network with BatchNorm in training mode."""
    student_passes = check_choice("student_passes", student_passes, STUDENT_PASSES)
    if student_passes == "concat" and _has_training_batchnorm(network):
        raise ValueError(
            "student_passes='concat' runs the clean and masked views as one batch, which couples them "
            "through BatchNorm in training mode; use student_passes='separate' or a network with "
            "instance/group/layer norm"
        )
    return student_passes


class MedContext(nn.Module):
    """MedContext training around any segmentation network.

    Args:
        network: the student, mapping (B, C, H, W, D) to logits (B, K, H, W, D) or a list of
            deep-supervision heads (full resolution first).
        variant: a name of :data:`~medcontext.method.settings.VARIANTS` (``"baseline"``,
            ``"medcontext"``, ``"no_teacher"``, ``"msl_only"``, ``"cl_only"``, ...), among them
            the semi-supervised ones that also train on unlabelled crops (``"medcontext_semi"``,
            ``"medcontext_semi_cl"``, ``"mean_teacher"``, ``"bcp"``, ``"medcontext_bcp"``).
        mask_ratio: fraction of in-plane mask positions masked (paper: 0.4).
        beta: weight of the consistency loss (default 0.5).
        momentum: EMA momentum at step 0, cosine to 1.0 at the last step; ``None`` = 0.996
            (``DEFAULTS.momentum``), for a semi-supervised variant its ``semi.momentum`` (0.99,
            constant, for ``mean_teacher`` and ``bcp``).
        momentum_horizon: instead of ``momentum``, the teacher's EMA time constant as a
            fraction of ``total_steps`` (:func:`~medcontext.method.schedules.momentum_for_horizon`);
            ``None`` (default) uses ``momentum`` as the paper does.
        total_steps: number of optimizer steps of the run (needed when there is a teacher).
        mask_space: ``"token"`` (after the patch embedding, needs a registered adapter),
            ``"input"`` (voxel cubes, any network) or ``"auto"`` (token where possible).
        depth_axis: spatial axis the mask tubes run along (default: last, axial in RAS).
        mask_cell: voxels per mask cell (int or triple); ``None`` = the defaults of docs/method.md.
        roi_size: training crop (H, W, D), used to pick the default input-space cell size.
        mask_mode: ``"exact"`` (round(ratio*N) masked) or ``"bernoulli"``.
        output_mode: ``"softmax"`` (labels (B, 1, ...) int) or ``"sigmoid"`` (regions (B, R, ...)).
        loss: optional replacement for the supervised loss ``(output, labels) -> scalar``.
        head_weights: deep-supervision head weights (default 1/2^i normalised).
        student_passes: ``"separate"`` (two forwards), ``"concat"`` (one forward over 2B; not
            allowed with BatchNorm in training mode) or ``"auto"`` (concat on CUDA when allowed,
            separate otherwise: measured faster on CPU, BENCHMARKS.md).
        seed: seeds the mask generator (CPU ``torch.Generator``); ``None`` uses torch's global RNG.
        in_channels: image channels, when they cannot be read off the network.
        adapter: explicit token adapter, overriding the registered one.
        semi: weights of the unlabelled terms of a semi-supervised variant; ``None`` = the
            variant's defaults (:func:`~medcontext.method.settings.semi_supervision`).
    """

    def __init__(
        self,
        network: nn.Module,
        variant: str = DEFAULTS.variant,
        mask_ratio: float = DEFAULTS.mask_ratio,
        beta: float = DEFAULTS.beta,
        momentum: float | None = None,
        total_steps: int | None = None,
        momentum_horizon: float | None = DEFAULTS.momentum_horizon,
        mask_space: str = DEFAULTS.mask_space,
        depth_axis: int = DEFAULTS.depth_axis,
        mask_cell: int | Sequence[int] | None = None,
        roi_size: Sequence[int] | None = None,
        mask_mode: str = DEFAULTS.mask_mode,
        output_mode: str = "softmax",
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        head_weights: Sequence[float] | None = None,
        student_passes: str = DEFAULTS.student_passes,
        seed: int | None = None,
        in_channels: int | None = None,
        adapter: TokenAdapter | None = None,
        semi: SemiSupervision | None = None,
    ):
        super().__init__()
        self.variant = check_choice("variant", variant, list(VARIANTS))
        self.config = VARIANTS[variant]
        self.semi, momentum = _semi_settings(variant, semi, momentum)
        _check_step_numbers(variant, self.config.teacher, mask_ratio, beta, momentum, total_steps, depth_axis)
        self.mask_ratio = float(mask_ratio)
        self.beta = float(beta)
        self.momentum_horizon = None if momentum_horizon is None else float(momentum_horizon)
        self.base_momentum = _base_momentum(momentum, self.momentum_horizon, total_steps)
        self.total_steps = total_steps
        self.depth_axis = depth_axis
        self.mask_mode = check_choice("mask_mode", mask_mode, MASK_MODES)
        self.output_mode = check_choice("output_mode", output_mode, OUTPUT_MODES)
        self.student_passes = _checked_student_passes(student_passes, network)

        self.network = network
        self.criterion = loss if loss is not None else SegmentationLoss(self.output_mode, head_weights)
        self.mask_generator = torch.Generator().manual_seed(seed) if seed is not None else None

        self.mask_space = "none"
        self.masker: InputMasker | TokenMasker | None = None
        if self.config.masked_pass:
            self.masker = self._build_masker(network, mask_space, mask_cell, roi_size, in_channels, adapter)

        # The teacher is held outside the module tree: parameters()/named_parameters() never
        # yield it (so no optimizer or DDP reducer sees it), state_dict() still saves it.
        object.__setattr__(self, "teacher", make_teacher(network) if self.config.teacher else None)
        # until the first teacher update, losses() checks once that the teacher still equals the student
        self._teacher_checked = self.teacher is None
        self.register_state_dict_post_hook(_teacher_state_dict_hook)
        self.register_load_state_dict_pre_hook(_teacher_load_pre_hook)

    # ------------------------------------------------------------------ construction
    def _build_masker(self, network, mask_space, mask_cell, roi_size, in_channels, adapter):
        mask_space = check_choice("mask_space", mask_space, MASK_SPACES)
        adapter = adapter or find_token_adapter(unwrap_model(network))
        if mask_space == "token" and adapter is None:
            raise ValueError(
                f"mask_space='token' needs a token adapter for {type(network).__name__}; none is registered "
                "(see medcontext.method.adapters.register_token_adapter), use mask_space='input'"
            )
        if mask_space in ("token", "auto") and adapter is not None:
            self.mask_space = "token"
            if mask_cell is not None:
                cell = as_triple(mask_cell, "mask_cell")
            elif adapter.default_mask_cell is not None:
                cell = as_triple(adapter.default_mask_cell(network), "default_mask_cell")
            else:
                patch = adapter.token_patch(network)
                cell = tuple(-(-16 // p) * p for p in patch)
            return TokenMasker(network, adapter, cell)
        self.mask_space = "input"
        channels = in_channels or _first_conv_in_channels(network)
        if channels is None:
            raise ValueError(f"cannot read the input channels of {type(network).__name__}; pass in_channels=")
        cell = as_triple(mask_cell, "mask_cell") if mask_cell is not None else default_cell_size(roi_size)
        return InputMasker(channels, cell)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True) -> "MedContext":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # ------------------------------------------------------------------ masks
    def mask_grid(self, roi_size: Sequence[int]) -> tuple[int, int, int]:
        """Grid shape (gx, gy, gz) masks are drawn on for a crop of ``roi_size`` voxels."""
        if self.masker is None:
            raise ValueError(f"variant {self.variant!r} has no masked view")
        return self.masker.grid(as_triple(roi_size, "roi_size"))

    def draw_mask(self, batch: int, spatial: Sequence[int]) -> torch.Tensor:
        """A fresh tube mask (B, *grid), bool on the CPU, drawn from the mask generator."""
        return tube_mask(
            batch, self.mask_grid(spatial), self.mask_ratio, self.depth_axis, self.mask_mode, self.mask_generator
        )

    # ------------------------------------------------------------------ forward passes
    def student_masked(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Student output on the masked view of ``images`` (B, C, H, W, D) for ``mask`` (B, *grid)."""
        if self.masker is None:
            raise ValueError(f"variant {self.variant!r} has no masked view")
        mask = mask.to(device=images.device, dtype=torch.bool)
        if isinstance(self.masker, TokenMasker):
            return self.masker(self.network, images, mask)
        return self.network(self.masker(images, mask))

    def _concatenate_passes(self, images: torch.Tensor) -> bool:
        if self.student_passes == "separate":
            return False
        batchnorm = _has_training_batchnorm(self.network)
        if self.student_passes == "concat":
            if batchnorm:
                raise ValueError(
                    "student_passes='concat' is not allowed while the network has BatchNorm in training mode "
                    "(the clean and masked views would share batch statistics); use 'separate'"
                )
            return True
        return images.is_cuda and not batchnorm

    def _student_both(self, images: torch.Tensor, mask: torch.Tensor):
        """Student outputs on the clean and the masked view, as two passes or one of 2B."""
        if not self._concatenate_passes(images):
            return self.network(images), self.student_masked(images, mask)
        batch = images.shape[0]
        if isinstance(self.masker, TokenMasker):
            masked_images = self.masker.input(images, mask)
            joint_mask = torch.cat([torch.zeros_like(mask), mask])
            with self.masker.applied(self.network, joint_mask, images.shape[2:]):
                output = self.network(torch.cat([images, masked_images]))
        else:
            output = self.network(torch.cat([images, self.masker(images, mask)]))
        if isinstance(output, (list, tuple)):
            return [o[:batch] for o in output], [o[batch:] for o in output]
        return output[:batch], output[batch:]

    def losses(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        unlabeled: torch.Tensor | None = None,
        step: int | None = None,
    ) -> LossBreakdown:
        """Loss terms of one training step.

        Args:
            images: clean crops (B, C, H, W, D).
            labels: (B, 1, H, W, D) integer classes (softmax) or (B, R, H, W, D) regions (sigmoid).
            mask: optional fixed mask (B, *grid); drawn from the mask generator when omitted.
            unlabeled: unlabelled crops (B_u, C, H, W, D), images only; required by the
                semi-supervised variants (``bcp`` needs ``B_u == B`` and the same crop size),
                refused by the others. Both output modes: sigmoid region outputs get the
                sigmoid form of every unlabelled term (:mod:`medcontext.method.semisupervised`).
            step: the optimizer step (0-based), required with ``unlabeled``: the ramp-up of
                the unlabelled terms and BCP's labelled-only phase follow it.

        Returns:
            :class:`LossBreakdown` with ``total = sup + msl + beta * cl`` (terms the variant
            does not use are zero tensors); the semi-supervised variants add their unlabelled
            terms (:mod:`medcontext.method.semisupervised`).
        """
        if not self._teacher_checked:
            self._check_teacher_in_sync()
        if self.semi is not None or unlabeled is not None:
            self._check_unlabeled(unlabeled, step)
            return semi_supervised_losses(self, images, labels, unlabeled, step, mask)
        zero = torch.zeros((), device=images.device)
        if not self.config.masked_pass:
            sup = self.criterion(self.network(images), labels)
            return LossBreakdown(total=sup, sup=sup, msl=zero, cl=zero)
        if mask is None:
            mask = self.draw_mask(images.shape[0], images.shape[2:])
        mask = mask.to(device=images.device, dtype=torch.bool)
        teacher_out = None
        if self.config.cl:
            # first, while no student graph is alive: the peak memory is the two student graphs only
            with torch.no_grad():
                teacher_out = first_head(self.teacher(images))
        clean_out, masked_out = self._student_both(images, mask)
        sup = self.criterion(clean_out, labels)
        msl = self.criterion(masked_out, labels) if self.config.msl else zero
        cl = consistency_loss(first_head(masked_out), teacher_out) if teacher_out is not None else zero
        return LossBreakdown(total=sup + msl + self.beta * cl, sup=sup, msl=msl, cl=cl)

    def _check_unlabeled(self, unlabeled: torch.Tensor | None, step: int | None) -> None:
        if self.semi is None:
            raise ValueError(
                f"variant {self.variant!r} trains on labelled crops only; unlabelled crops need a semi-supervised "
                f"variant ({', '.join(map(repr, semi_supervised_variants()))})"
            )
        if unlabeled is None:
            raise ValueError(
                f"variant {self.variant!r} is semi-supervised: pass unlabeled= (a batch of unlabelled crops) "
                "and step= to mc.losses(...)"
            )
        if step is None:
            raise ValueError(f"variant {self.variant!r} needs step= (the optimizer step) for its ramp-up and phases")

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        unlabeled: torch.Tensor | None = None,
        step: int | None = None,
    ) -> LossBreakdown:
        """Same as :meth:`losses` (so ``DistributedDataParallel`` can wrap the whole module)."""
        return self.losses(images, labels, mask, unlabeled, step)

    # ------------------------------------------------------------------ teacher
    @torch.no_grad()
    def sync_teacher(self) -> None:
        """Copy the student's current weights and buffers into the teacher (docs/method.md).

        Call it after loading pretrained weights into the network once ``MedContext`` wraps
        it: the teacher was copied at construction, from the weights the network had then.
        Does nothing for variants without a teacher.
        """
        if self.teacher is not None:
            copy_into_teacher(self.teacher, self.network)
        self._teacher_checked = True

    def _check_teacher_in_sync(self) -> None:
        """Warn once when the teacher differs from the student before its first update."""
        self._teacher_checked = True
        difference = max_teacher_difference(self.teacher, self.network)
        if difference > 0:
            warnings.warn(
                f"the MedContext teacher differs from the student before the first teacher update (largest "
                f"difference {difference:.3g}): it was copied when MedContext(...) wrapped the network, so weights "
                "loaded into the network afterwards are not in the teacher. Call mc.sync_teacher() after loading "
                "(or load before wrapping); the teacher starts as an exact copy of the student (docs/method.md).",
                TeacherOutOfSyncWarning,
                stacklevel=3,
            )

    def momentum_at(self, step: int) -> float:
        """Teacher momentum after optimizer step ``step`` (0-based), by the variant's schedule."""
        schedule = "cosine" if self.semi is None else self.config.unlabeled.teacher_schedule
        if schedule == "mean_teacher":
            return mean_teacher_momentum(step, self.base_momentum)
        if schedule == "constant_after_pretrain":
            return momentum_after_pretrain(step, self.total_steps, self.semi.pretrain, self.base_momentum)
        return momentum_at(step, self.total_steps, self.base_momentum)

    @torch.no_grad()
    def update_teacher(self, step: int) -> float | None:
        """EMA update of the teacher after optimizer step ``step``; returns the momentum used
        (``None`` when the variant has no teacher)."""
        if self.teacher is None:
            return None
        self._teacher_checked = True
        momentum = self.momentum_at(step)
        ema_update(self.teacher, self.network, momentum)
        return momentum

    # ------------------------------------------------------------------ inference
    def inference_network(self, use: str = "student") -> nn.Module:
        """The network to run at inference: the student (default) or the teacher."""
        check_choice("use", use, ["student", "teacher"])
        if use == "teacher":
            if self.teacher is None:
                raise ValueError(f"variant {self.variant!r} has no teacher; use='student'")
            return self.teacher
        return unwrap_model(self.network)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, use: str = "student") -> torch.Tensor:
        """Full-resolution logits (B, K, H, W, D) in eval mode, without gradients."""
        network = self.inference_network(use)
        was_training = network.training
        network.eval()
        try:
            return first_head(network(images))
        finally:
            network.train(was_training)
