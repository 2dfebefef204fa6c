"""Loss terms on unlabelled crops: softmax consistency, pseudo-labels, region-restricted Dice + CE.

* :func:`softmax_mse`: Mean Teacher's consistency, the mean squared error of two softmax outputs.
* :func:`confident_pseudo_labels` and :func:`pseudo_label_loss`: the teacher's argmax as the
  target, weighted per crop by the fraction ``q`` of voxels whose teacher probability exceeds a
  threshold (MIC / DAFormer: ``q * CE`` over every voxel, not a mask of the confident ones).
* :func:`region_dice_ce`: soft Dice + cross-entropy restricted to a voxel region (BCP's loss on
  the labelled and the pasted part of a copy-paste mix).
* :func:`largest_component`: BCP's clean-up of the pseudo-labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["softmax_mse", "confident_pseudo_labels", "pseudo_label_loss", "region_dice_ce", "largest_component"]


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``mean((softmax(student) - softmax(teacher))^2)`` over batch, classes and voxels (float32).

    Args:
        student_logits: (B, K, H, W, D); teacher_logits: the same shape (a constant target).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"softmax_mse needs equal shapes, got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    student = torch.softmax(student_logits.float(), dim=1)
    teacher = torch.softmax(teacher_logits.detach().float(), dim=1)
    return (student - teacher).pow(2).mean()


def confident_pseudo_labels(teacher_logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's argmax and, per crop, the fraction of voxels it is confident on.

    Args:
        teacher_logits: (B, K, H, W, D).
        threshold: a voxel is confident when its largest softmax probability exceeds it.

    Returns:
        ``(labels, q)``: int64 labels (B, 1, H, W, D) and float32 ``q`` (B,) in [0, 1].
    """
    probabilities = torch.softmax(teacher_logits.detach().float(), dim=1)
    confidence, labels = probabilities.max(dim=1, keepdim=True)
    q = (confidence > threshold).float().flatten(1).mean(dim=1)
    return labels, q


def pseudo_label_loss(student_logits: torch.Tensor, pseudo_labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_b(weights_b * mean_voxels CE(student_b, pseudo_labels_b))`` (MIC's masked-image loss).

    Args:
        student_logits: (B, K, H, W, D).
        pseudo_labels: int (B, 1, H, W, D).
        weights: (B,) per-crop weights (MIC: the fraction of confident voxels).
    """
    ce = F.cross_entropy(student_logits.float(), pseudo_labels[:, 0].long(), reduction="none")
    return (weights.detach().float() * ce.flatten(1).mean(dim=1)).mean()


def region_dice_ce(logits: torch.Tensor, labels: torch.Tensor, region: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice + cross-entropy over the voxels of ``region`` only.

    ``Dice = mean_{b,k}(1 - (2 sum(r p t) + s) / (sum(r (p + t)) + s))`` with ``p`` the softmax, ``t``
    the one-hot target, ``r`` the region, every class including the background (BCP's
    ``mask_DiceLoss``); ``CE = sum(r * ce) / sum(r)`` over all crops.

    Args:
        logits: (B, K, H, W, D).
        labels: int (B, 1, H, W, D).
        region: (B or 1, 1, H, W, D), 1 = counted, 0 = ignored (float or bool).
        smooth: Dice smoothing (BCP: 1e-5).
    """
    logits = logits.float()
    num_classes = logits.shape[1]
    region = region.float().expand(logits.shape[0], 1, *logits.shape[2:])
    probabilities = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).float()
    intersection = (region * probabilities * one_hot).flatten(2).sum(dim=2)
    union = (region * (probabilities + one_hot)).flatten(2).sum(dim=2)
    dice = 1.0 - ((2.0 * intersection + smooth) / (union + smooth)).mean()
    ce = F.cross_entropy(logits, labels[:, 0].long(), reduction="none").unsqueeze(1)
    ce = (ce * region).sum() / (region.sum() + 1e-16)
    return dice + ce


def largest_component(labels: torch.Tensor) -> torch.Tensor:
    """Keep only the largest 26-connected component of every foreground class of every crop.

    Voxels of a class outside its largest component become background (0), as BCP's
    ``LargestCC`` does with the teacher's pseudo-labels. Runs on the CPU (scipy).

    Args:
        labels: int (B, 1, H, W, D).

    Returns:
        The cleaned labels, same shape, dtype and device.
    """
    array = labels.detach().cpu().numpy()
    cleaned = np.zeros_like(array)
    structure = np.ones((3, 3, 3), dtype=bool)
    for b in range(array.shape[0]):
        volume = array[b, 0]
        for value in np.unique(volume):
            if value == 0:
                continue
            components, count = ndimage.label(volume == value, structure=structure)
            if count == 0:
                continue
            sizes = np.bincount(components.ravel())[1:]
            cleaned[b, 0][components == int(np.argmax(sizes)) + 1] = value
    return torch.from_numpy(cleaned).to(device=labels.device, dtype=labels.dtype)
