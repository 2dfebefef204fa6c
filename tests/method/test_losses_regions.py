"""Region loss (sigmoid Dice + per-channel BCE) and nnU-Net's deep-supervision weights."""

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from medcontext.method import RegionLoss, SegmentationLoss, deep_supervision_weights


def _hand_region_loss(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Dice per sample and channel on sigmoid probabilities (MONAI's 1e-5 smoothing), plus the
    mean binary cross-entropy, written out with Python floats."""
    b, r = logits.shape[:2]
    dice_terms, bce_terms = [], []
    for i in range(b):
        for c in range(r):
            x = logits[i, c].flatten().tolist()
            t = targets[i, c].flatten().tolist()
            p = [1 / (1 + math.exp(-v)) for v in x]
            inter, ps, ts = sum(a * g for a, g in zip(p, t)), sum(p), sum(t)
            dice_terms.append(1 - (2 * inter + 1e-5) / (ps + ts + 1e-5))
            bce_terms.extend(-(g * math.log(a) + (1 - g) * math.log(1 - a)) for a, g in zip(p, t))
    return sum(dice_terms) / len(dice_terms) + sum(bce_terms) / len(bce_terms)


@pytest.fixture
def nested():
    """Two samples, 3 nested regions (WT >= TC >= ET) on a 2x2x2 grid, and logits."""
    gen = torch.Generator().manual_seed(0)
    wt = torch.tensor([[1, 1], [1, 0]] * 2, dtype=torch.float32).view(2, 2, 2)
    tc = torch.tensor([[1, 1], [0, 0]] * 2, dtype=torch.float32).view(2, 2, 2)
    et = torch.tensor([[1, 0], [0, 0]] * 2, dtype=torch.float32).view(2, 2, 2)
    targets = torch.stack([torch.stack([wt, tc, et])] * 2)  # (2, 3, 2, 2, 2)
    logits = torch.randn(2, 3, 2, 2, 2, generator=gen) * 2
    return logits, targets


def test_region_loss_equals_the_hand_computed_value(nested):
    logits, targets = nested
    assert RegionLoss()(logits, targets).item() == pytest.approx(_hand_region_loss(logits, targets), rel=1e-5)
    assert SegmentationLoss("sigmoid")(logits, targets).item() == pytest.approx(_hand_region_loss(logits, targets), rel=1e-5)


def test_monai_dicece_sigmoid_is_not_per_channel_bce(nested):
    """The reason for RegionLoss: with several channels MONAI's CE part is a softmax CE."""
    logits, targets = nested
    monai = DiceCELoss(sigmoid=True)(logits, targets).item()
    assert monai != pytest.approx(_hand_region_loss(logits, targets), rel=1e-3)
    # a perfect, confident nested prediction: per-channel BCE is ~0, the softmax CE is not
    confident = (targets * 2 - 1) * 20
    assert RegionLoss()(confident, targets).item() < 1e-3
    assert DiceCELoss(sigmoid=True)(confident, targets).item() > 0.5


def test_deep_supervision_weights_match_nnunet():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(2) == [1.0, 0.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert deep_supervision_weights(5) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    with pytest.raises(ValueError):
        deep_supervision_weights(0)


def test_the_zero_weight_head_gets_a_zero_gradient_not_none():
    full = torch.randn(1, 2, 8, 8, 8, requires_grad=True)
    half = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    lowest = torch.randn(1, 2, 2, 2, 2, requires_grad=True)
    labels = torch.randint(0, 2, (1, 1, 8, 8, 8))
    loss = SegmentationLoss("softmax")([full, half, lowest], labels)
    loss.backward()
    assert lowest.grad is not None and torch.count_nonzero(lowest.grad) == 0
    assert torch.count_nonzero(half.grad) > 0
    weights = deep_supervision_weights(3)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    down = F.interpolate(labels.float(), size=(4, 4, 4), mode="nearest").long()
    expected = weights[0] * dice_ce(full, labels) + weights[1] * dice_ce(half, down)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
