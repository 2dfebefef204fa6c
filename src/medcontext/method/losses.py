"""Losses of the MedContext step (paper Eq. 2-4, SPEC 1.4).

* :class:`SegmentationLoss`: soft Dice + cross-entropy (softmax over classes with one-hot
  targets) or soft Dice + BCE (sigmoid multi-label regions, e.g. BraTS WT/TC/ET), over one
  output or a list of deep-supervision heads.
* :func:`consistency_loss`: ``||F_s^M - F_t||^2 / ||F_t||^2`` per sample, then the batch mean.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["SegmentationLoss", "consistency_loss", "deep_supervision_weights", "first_head"]

OutputMode = Literal["softmax", "sigmoid"]


def consistency_loss(student_masked_logits: torch.Tensor, teacher_logits: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Relative squared error between masked-student and teacher logits (SPEC 1.4).

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
    """nnU-Net's weights 1/2^i for head i (full resolution first), normalised to sum 1."""
    raw = [0.5**i for i in range(num_heads)]
    total = sum(raw)
    return [w / total for w in raw]


def first_head(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution output of a network that may return deep-supervision heads."""
    if isinstance(output, (list, tuple)):
        return output[0]
    return output


class SegmentationLoss(nn.Module):
    """Dice + CE for one output or a list of deep-supervision heads.

    Args:
        output_mode: ``"softmax"``: logits (B, K, ...) and integer labels (B, 1, ...);
            ``"sigmoid"``: logits (B, R, ...) and binary region targets (B, R, ...).
        head_weights: weights of deep-supervision heads; ``None`` = 1/2^i normalised.
    """

    def __init__(self, output_mode: OutputMode = "softmax", head_weights: Sequence[float] | None = None):
        super().__init__()
        if output_mode == "softmax":
            self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        elif output_mode == "sigmoid":
            self.dice_ce = DiceCELoss(sigmoid=True)
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
                continue
            target = labels
            if head.shape[2:] != labels.shape[2:]:
                target = F.interpolate(labels.float(), size=head.shape[2:], mode="nearest").to(labels.dtype)
            total = total + weight * self.dice_ce(head.float(), target)
        return total
