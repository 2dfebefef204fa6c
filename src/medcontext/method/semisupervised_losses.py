"""Loss terms on unlabelled crops, for label maps (softmax) and for binary regions (sigmoid).

Softmax outputs (one class per voxel, labels (B, 1, H, W, D)):

* :func:`softmax_mse`: Mean Teacher's consistency, the mean squared error of two softmax outputs.
* :func:`confident_pseudo_labels` and :func:`pseudo_label_loss`: the teacher's argmax as the
  target, weighted per crop by the fraction ``q`` of voxels whose teacher probability exceeds a
  threshold (MIC / DAFormer: ``q * CE`` over every voxel, not a mask of the confident ones).
* :func:`region_dice_ce`: soft Dice + cross-entropy restricted to a voxel region (BCP's loss on
  the labelled and the pasted part of a copy-paste mix); :func:`split_region_dice_ce` gives the
  two terms of a mix (a region and its complement) from one softmax and one cross-entropy.
* :func:`largest_component`: BCP's clean-up of the pseudo-labels.

Sigmoid outputs (region tasks such as BraTS WT/TC/ET: one binary problem per output channel,
targets (B, R, H, W, D)), the same terms with a sigmoid per channel:

* :func:`sigmoid_mse`: the mean squared error of the two outputs' sigmoid probabilities.
* :func:`confident_sigmoid_pseudo_labels` and :func:`sigmoid_pseudo_label_loss`: per channel the
  target is teacher probability > 0.5, a (voxel, region) pair is confident when
  ``max(p, 1 - p)`` exceeds the threshold, ``q`` is the confident share of the pairs of a crop and
  the loss ``q * BCE``.
* :func:`region_dice_bce`: sigmoid soft Dice + binary cross-entropy restricted to a voxel region
  (:class:`~medcontext.method.losses.RegionLoss` over the counted voxels);
  :func:`split_region_dice_bce` the two terms of a mix at once.
* :func:`largest_component_per_channel`: the largest connected component of every region channel.

:func:`unlabeled_losses` gives the set of one output mode, so that a step is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks import one_hot
from scipy import ndimage

__all__ = [
    "softmax_mse",
    "confident_pseudo_labels",
    "pseudo_label_loss",
    "region_dice_ce",
    "split_region_dice_ce",
    "largest_component",
    "sigmoid_mse",
    "confident_sigmoid_pseudo_labels",
    "sigmoid_pseudo_label_loss",
    "region_dice_bce",
    "split_region_dice_bce",
    "largest_component_per_channel",
    "UnlabeledLosses",
    "unlabeled_losses",
]

_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connected


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
    # MONAI's one_hot fills channels first (2 ms for 2 x 4 x 48^3 on the CPU, against 6 ms for
    # F.one_hot, which writes channels last and is then moved)
    targets = one_hot(labels.long(), num_classes, dim=1)
    dice = _region_dice(probabilities * targets, probabilities + targets, region, smooth)
    ce = F.cross_entropy(logits, labels[:, 0].long(), reduction="none").unsqueeze(1)
    ce = (ce * region).sum() / (region.sum() + 1e-16)
    return dice + ce


def _split_regions(region: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inside, region, complement)`` of a binary voxel region (B or 1, 1, H, W, D) expanded to
    ``like``'s batch and voxels: bool, float, float."""
    inside = region.bool().expand(like.shape[0], 1, *like.shape[2:])
    counted = inside.float()
    return inside, counted, 1.0 - counted


def _region_dice(product: torch.Tensor, total: torch.Tensor, region: torch.Tensor, smooth: float) -> torch.Tensor:
    """``mean_{b,c}(1 - (2 sum(r pt) + s) / (sum(r (p + t)) + s))`` from ``pt`` and ``p + t`` (B, C, ...)."""
    intersection = (region * product).flatten(2).sum(dim=2)
    union = (region * total).flatten(2).sum(dim=2)
    return 1.0 - ((2.0 * intersection + smooth) / (union + smooth)).mean()


def split_region_dice_ce(
    logits: torch.Tensor, labels: torch.Tensor, other_labels: torch.Tensor, region: torch.Tensor, smooth: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(region_dice_ce(logits, labels, region), region_dice_ce(logits, other_labels, 1 - region))``
    from one softmax, one one-hot and one cross-entropy: the two terms of a copy-paste mix, whose
    labelled part and pasted part are a region and its complement.

    Args:
        logits: (B, K, H, W, D).
        labels: int (B, 1, H, W, D), the targets inside ``region``.
        other_labels: int (B, 1, H, W, D), the targets outside it.
        region: binary (B or 1, 1, H, W, D), 1 = inside (float or bool).
        smooth: Dice smoothing (BCP: 1e-5).
    """
    logits = logits.float()
    inside, counted, complement = _split_regions(region, logits)
    targets = torch.where(inside, labels, other_labels).long()
    probabilities = torch.softmax(logits, dim=1)
    encoded = one_hot(targets, logits.shape[1], dim=1)
    product, total = probabilities * encoded, probabilities + encoded
    ce = F.cross_entropy(logits, targets[:, 0], reduction="none").unsqueeze(1)
    return tuple(  # type: ignore[return-value]
        _region_dice(product, total, part, smooth) + (ce * part).sum() / (part.sum() + 1e-16)
        for part in (counted, complement)
    )


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean volume (all False for an empty one)."""
    components, count = ndimage.label(mask, structure=_CONNECTIVITY)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(components.ravel())[1:]
    return components == int(np.argmax(sizes)) + 1


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
    for b in range(array.shape[0]):
        volume = array[b, 0]
        for value in np.unique(volume):
            if value == 0:
                continue
            cleaned[b, 0][_largest_blob(volume == value)] = value
    return torch.from_numpy(cleaned).to(device=labels.device, dtype=labels.dtype)


# ---------------------------------------------------------------- sigmoid outputs (binary regions)
def _check_same_shape(name: str, first: torch.Tensor, second: torch.Tensor) -> None:
    if first.shape != second.shape:
        raise ValueError(
            f"{name} needs one target channel per output channel (equal shapes), got {tuple(first.shape)} "
            f"and {tuple(second.shape)}"
        )


def sigmoid_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``mean((sigmoid(student) - sigmoid(teacher))^2)`` over batch, regions and voxels (float32).

    Mean Teacher's consistency for region outputs: every channel is its own probability.

    Args:
        student_logits: (B, R, H, W, D); teacher_logits: the same shape (a constant target).
    """
    _check_same_shape("sigmoid_mse", student_logits, teacher_logits)
    student = torch.sigmoid(student_logits.float())
    teacher = torch.sigmoid(teacher_logits.detach().float())
    return (student - teacher).pow(2).mean()


def confident_sigmoid_pseudo_labels(teacher_logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's regions (probability > 0.5 per channel) and, per crop, its confident share.

    A (voxel, region) pair is confident when ``max(p, 1 - p)`` exceeds ``threshold``, with ``p``
    the teacher's sigmoid probability of the region; ``q`` counts the pairs, every region channel
    of every voxel.

    Args:
        teacher_logits: (B, R, H, W, D).
        threshold: the confidence threshold (MIC: 0.968).

    Returns:
        ``(targets, q)``: float32 binary targets (B, R, H, W, D) and float32 ``q`` (B,) in [0, 1].
    """
    probabilities = torch.sigmoid(teacher_logits.detach().float())
    targets = (probabilities > 0.5).float()
    confidence = torch.maximum(probabilities, 1.0 - probabilities)
    q = (confidence > threshold).float().flatten(1).mean(dim=1)
    return targets, q


def sigmoid_pseudo_label_loss(student_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_b(weights_b * mean_{regions, voxels} BCE(student_b, targets_b))`` (BCE with logits).

    Args:
        student_logits: (B, R, H, W, D).
        targets: binary (B, R, H, W, D), any numeric dtype.
        weights: (B,) per-crop weights (MIC: the share of confident (voxel, region) pairs).
    """
    _check_same_shape("sigmoid_pseudo_label_loss", student_logits, targets)
    bce = F.binary_cross_entropy_with_logits(student_logits.float(), targets.float(), reduction="none")
    return (weights.detach().float() * bce.flatten(1).mean(dim=1)).mean()


def region_dice_bce(logits: torch.Tensor, targets: torch.Tensor, region: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Sigmoid soft Dice + binary cross-entropy over the voxels of ``region`` only.

    The sigmoid analogue of :func:`region_dice_ce`:
    ``Dice = mean_{b,r}(1 - (2 sum(m p t) + s) / (sum(m (p + t)) + s))`` with ``p`` the sigmoid of
    region channel ``r``, ``t`` its binary target, ``m`` the voxel region, ``s`` the smoothing;
    ``BCE = sum(m * bce) / sum(m)`` over every counted (voxel, region) pair of all crops. With every
    voxel counted it equals :class:`~medcontext.method.losses.RegionLoss`.

    Args:
        logits: (B, R, H, W, D).
        targets: binary (B, R, H, W, D), any numeric dtype.
        region: (B or 1, 1, H, W, D), 1 = counted, 0 = ignored (float or bool).
        smooth: Dice smoothing (BCP and MONAI: 1e-5).
    """
    _check_same_shape("region_dice_bce", logits, targets)
    logits, targets = logits.float(), targets.float()
    region = region.float().expand(logits.shape[0], 1, *logits.shape[2:])
    probabilities = torch.sigmoid(logits)
    dice = _region_dice(probabilities * targets, probabilities + targets, region, smooth)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    bce = (bce * region).sum() / (region.sum() * logits.shape[1] + 1e-16)
    return dice + bce


def split_region_dice_bce(
    logits: torch.Tensor, targets: torch.Tensor, other_targets: torch.Tensor, region: torch.Tensor, smooth: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(region_dice_bce(logits, targets, region), region_dice_bce(logits, other_targets, 1 - region))``
    from one sigmoid and one binary cross-entropy (:func:`split_region_dice_ce` for binary regions).

    Args:
        logits: (B, R, H, W, D).
        targets, other_targets: binary (B, R, H, W, D), the targets inside and outside ``region``.
        region: binary (B or 1, 1, H, W, D), 1 = inside (float or bool).
        smooth: Dice smoothing.
    """
    _check_same_shape("split_region_dice_bce", logits, targets)
    _check_same_shape("split_region_dice_bce", logits, other_targets)
    logits = logits.float()
    inside, counted, complement = _split_regions(region, logits)
    combined = torch.where(inside, targets.float(), other_targets.float())
    probabilities = torch.sigmoid(logits)
    product, total = probabilities * combined, probabilities + combined
    bce = F.binary_cross_entropy_with_logits(logits, combined, reduction="none")
    return tuple(  # type: ignore[return-value]
        _region_dice(product, total, part, smooth) + (bce * part).sum() / (part.sum() * logits.shape[1] + 1e-16)
        for part in (counted, complement)
    )


def largest_component_per_channel(targets: torch.Tensor) -> torch.Tensor:
    """Keep only the largest 26-connected component of every region channel of every crop.

    BCP's ``LargestCC`` for binary regions: each channel's foreground is cleaned on its own (a
    voxel removed from one region may stay in another). Runs on the CPU (scipy).

    Args:
        targets: binary (B, R, H, W, D), any numeric dtype.

    Returns:
        The cleaned targets, same shape, dtype and device.
    """
    array = targets.detach().cpu().numpy() != 0
    cleaned = np.zeros(array.shape, dtype=bool)
    for b in range(array.shape[0]):
        for r in range(array.shape[1]):
            cleaned[b, r] = _largest_blob(array[b, r])
    return torch.from_numpy(cleaned).to(device=targets.device, dtype=targets.dtype)


# ---------------------------------------------------------------- one set per output mode
def _argmax_labels(teacher_logits: torch.Tensor) -> torch.Tensor:
    # max(...).indices, not argmax: the same first-maximum index, and on the CPU argmax over the
    # channel dimension (not the innermost) was 8x slower (30 ms against 4 ms for 2 x 4 x 48^3)
    return teacher_logits.max(dim=1, keepdim=True).indices


def _regions_above_half(teacher_logits: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(teacher_logits.detach().float()) > 0.5).float()


@dataclass(frozen=True)
class UnlabeledLosses:
    """The unlabelled-crop losses of one output mode (:func:`unlabeled_losses`).

    Attributes:
        consistency_mse: Mean Teacher's ``(student_logits, teacher_logits) -> scalar``.
        confident_pseudo_labels: ``(teacher_logits, threshold) -> (targets, q)`` (MIC).
        pseudo_label_loss: ``(student_logits, targets, q) -> scalar`` (MIC).
        hard_pseudo_labels: ``teacher_logits -> targets`` (BCP: argmax, or probability > 0.5 per region).
        largest_component: BCP's clean-up of the hard pseudo-labels.
        region_loss: ``(logits, targets, voxel region) -> scalar`` (BCP's restricted Dice + CE / BCE).
        split_region_loss: ``(logits, targets inside, targets outside, binary region) -> (inside
            term, outside term)``: ``region_loss`` on a region and on its complement at once.
    """

    consistency_mse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    confident_pseudo_labels: Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
    pseudo_label_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    hard_pseudo_labels: Callable[[torch.Tensor], torch.Tensor]
    largest_component: Callable[[torch.Tensor], torch.Tensor]
    region_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    split_region_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                                tuple[torch.Tensor, torch.Tensor]]


_BY_OUTPUT_MODE = {
    "softmax": UnlabeledLosses(softmax_mse, confident_pseudo_labels, pseudo_label_loss, _argmax_labels,
                               largest_component, region_dice_ce, split_region_dice_ce),
    "sigmoid": UnlabeledLosses(sigmoid_mse, confident_sigmoid_pseudo_labels, sigmoid_pseudo_label_loss,
                               _regions_above_half, largest_component_per_channel, region_dice_bce,
                               split_region_dice_bce),
}


def unlabeled_losses(output_mode: str) -> UnlabeledLosses:
    """The unlabelled-crop losses of ``output_mode``: ``"softmax"`` (label maps, targets (B, 1, ...)
    class indices) or ``"sigmoid"`` (binary regions, targets (B, R, ...))."""
    if output_mode not in _BY_OUTPUT_MODE:
        raise ValueError(f"output_mode must be 'softmax' or 'sigmoid', got {output_mode!r}")
    return _BY_OUTPUT_MODE[output_mode]
