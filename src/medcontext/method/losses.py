"""Losses of the MedContext step (paper Eq. 2-4, docs/method.md).

* :class:`SegmentationLoss`: soft Dice + cross-entropy (softmax over classes with one-hot
  targets) or :class:`RegionLoss`, soft Dice on sigmoid outputs + per-channel binary
  cross-entropy (multi-label regions, e.g. BraTS WT/TC/ET), over one output or a list of
  deep-supervision heads weighted as nnU-Net weighs them (:func:`deep_supervision_weights`).
* :func:`consistency_loss`: ``||F_s^M - F_t||^2 / ||F_t||^2`` per sample, then the batch mean.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

__all__ = ["SegmentationLoss", "RegionLoss", "consistency_loss", "deep_supervision_weights", "first_head"]

OutputMode = Literal["softmax", "sigmoid"]


def consistency_loss(student_masked_logits: torch.Tensor, teacher_logits: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Relative squared error between masked-student and teacher logits (docs/method.md).

    Args:
        student_masked_logits: ``F_s^M`` of shape (B, K, H, W, D).
        teacher_logits: ``F_t`` of the same shape (treated as a constant target).
        eps: guards the denominator of an all-zero teacher output.

    Returns:
        Scalar: mean over the batch of ``sum((F_s^M - F_t)^2) / (sum(F_t^2) + eps)``, each sum
        over all voxels and channels of one sample, computed in float32.
    """
    if student_masked_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"consistency_loss needs equal shapes, got {tuple(student_masked_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    student = student_masked_logits.float().flatten(1)
    teacher = teacher_logits.detach().float().flatten(1)
    numerator = (student - teacher).pow(2).sum(dim=1)
    denominator = teacher.pow(2).sum(dim=1) + eps
    return (numerator / denominator).mean()


def deep_supervision_weights(num_heads: int) -> list[float]:
    """nnU-Net's deep-supervision weights: 1/2^i for head i (full resolution first), the
    lowest-resolution head 0 when there are several, normalised to sum 1.

    Examples: 1 head ``[1.0]``; 2 heads ``[1.0, 0.0]``; 3 heads ``[2/3, 1/3, 0]``;
    4 heads ``[4/7, 2/7, 1/7, 0]`` (nnU-Net v2 ``_get_deep_supervision_scales`` and
    ``DeepSupervisionWrapper``; its DDP variant uses 1e-6 instead of 0, here a zero-weight
    head still joins the graph with a zero gradient, so DDP needs no such trick).
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    raw = [0.5**i for i in range(num_heads)]
    if num_heads > 1:
        raw[-1] = 0.0
    total = sum(raw)
    return [w / total for w in raw]


def first_head(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution output of a network that may return deep-supervision heads."""
    if isinstance(output, (list, tuple)):
        return output[0]
    return output


class RegionLoss(nn.Module):
    """Soft Dice on sigmoid outputs plus per-channel binary cross-entropy (docs/method.md).

    For nested multi-label regions (BraTS WT contains TC contains ET) every channel is its own
    binary problem. MONAI's ``DiceCELoss(sigmoid=True)`` is not this: its CE part is a softmax
    cross-entropy across channels whenever there are several, which pushes nested regions
    apart.

    ``loss = mean_{b,r}(1 - (2 sum(p t) + 1e-5) / (sum(p) + sum(t) + 1e-5)) + mean(BCE(x, t))``
    with ``p = sigmoid(x)``, sums over the voxels of one sample and channel, the BCE mean over
    every voxel, channel and sample.

    Args:
        logits: (B, R, H, W, D); targets: binary (B, R, H, W, D), any numeric dtype.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape:
            raise ValueError(
                f"RegionLoss needs one binary target channel per region: logits {tuple(logits.shape)}, "
                f"targets {tuple(targets.shape)}"
            )
        targets = targets.to(logits.dtype)
        return self.dice(logits, targets) + F.binary_cross_entropy_with_logits(logits, targets)


class SegmentationLoss(nn.Module):
    """Dice + CE for one output or a list of deep-supervision heads.

    Args:
        output_mode: ``"softmax"``: logits (B, K, ...) and integer labels (B, 1, ...), Dice +
            softmax cross-entropy (MONAI ``DiceCELoss``); ``"sigmoid"``: logits (B, R, ...) and
            binary region targets (B, R, ...), :class:`RegionLoss`.
        head_weights: weights of deep-supervision heads; ``None`` =
            :func:`deep_supervision_weights` (nnU-Net's).
    """

    def __init__(self, output_mode: OutputMode = "softmax", head_weights: Sequence[float] | None = None):
        super().__init__()
        if output_mode == "softmax":
            self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        elif output_mode == "sigmoid":
            self.dice_ce = RegionLoss()
        else:
            raise ValueError(f"output_mode must be 'softmax' or 'sigmoid', got {output_mode!r}")
        self.output_mode = output_mode
        self.head_weights = list(head_weights) if head_weights is not None else None

    def forward(self, output: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``output`` against ``labels`` (resized by nearest neighbour per head)."""
        heads = list(output) if isinstance(output, (list, tuple)) else [output]
        weights = self.head_weights or deep_supervision_weights(len(heads))
        if len(weights) < len(heads):
            raise ValueError(f"{len(heads)} deep-supervision heads but only {len(weights)} head weights")
        total = torch.zeros((), device=labels.device)
        for head, weight in zip(heads, weights):
            if weight == 0:
                # kept in the graph with a zero gradient, so every parameter gets one (DDP)
                total = total + 0.0 * head.float().sum()
                continue
            target = labels
            if head.shape[2:] != labels.shape[2:]:
                target = F.interpolate(labels.float(), size=head.shape[2:], mode="nearest").to(labels.dtype)
            total = total + weight * self.dice_ce(head.float(), target)
        return total
