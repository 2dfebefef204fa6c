"""Semi-supervised variants on region tasks (``output_mode="sigmoid"``, BraTS-like binary regions
(B, R, H, W, D)): each sigmoid loss against a value worked out by hand, the confident pseudo-labels
and their share ``q``, the largest component per region channel, copy-paste of region targets, and
every variant's step.

The step-level cases use a 1x1x1 convolution with logits ``(x, -x)`` read as two region channels:
zero crops give sigmoid 0.5 on both, a crop of constant ``L = ln 99`` gives (0.99, 0.01). The
labelled crops are zeros with region 0 everywhere and region 1 nowhere.
"""

import math

import pytest
import torch

from medcontext import MedContext
from medcontext.method import (
    RegionLoss,
    VARIANTS,
    confident_sigmoid_pseudo_labels,
    copy_paste,
    region_dice_bce,
    semi_supervised_variants,
    semi_supervision,
    sigmoid_mse,
    sigmoid_pseudo_label_loss,
)
from medcontext.method.medcontext import TeacherOutOfSyncWarning
from medcontext.method.semisupervised_losses import largest_component_per_channel, unlabeled_losses

SEMI = semi_supervised_variants()
L = math.log(99)  # sigmoid(L) = 0.99, sigmoid(-L) = 0.01
S = 1e-5  # Dice smoothing (MONAI's and BCP's)


def _dice(p: float, t: float, n: int) -> float:
    """Soft Dice loss of one channel with constant probability ``p`` and target ``t`` on ``n`` voxels."""
    return 1 - (2 * p * t * n + S) / ((p + t) * n + S)


# zero logits against region 0 everywhere, region 1 nowhere, 64 voxels: Dice + BCE = 2/3 + ln 2 (about)
SUP = (_dice(0.5, 1, 64) + _dice(0.5, 0, 64)) / 2 + math.log(2)


def _crops():
    """Labelled zeros with regions (1, 0), unlabelled crop constant L; one crop each, 4^3 voxels."""
    images = torch.zeros(1, 1, 4, 4, 4)
    regions = torch.stack([torch.ones(4, 4, 4), torch.zeros(4, 4, 4)]).unsqueeze(0)
    return images, regions, torch.full((1, 1, 4, 4, 4), L)


# ---------------------------------------------------------------- the losses on tiny tensors
def test_sigmoid_mse_by_hand():
    student = torch.zeros(1, 2, 2, 1, 1)  # sigmoid 0.5 everywhere
    teacher = torch.tensor([[math.log(3.0), 0.0], [-math.log(3.0), math.log(9.0)]]).view(1, 2, 2, 1, 1)
    # teacher probabilities 0.75, 0.5 | 0.25, 0.9: (0.25^2 + 0 + 0.25^2 + 0.4^2) / 4
    assert sigmoid_mse(student, teacher).item() == pytest.approx(0.07125, rel=1e-6)
    with pytest.raises(ValueError, match="equal shapes"):
        sigmoid_mse(student, teacher[:, :1])


def test_confident_sigmoid_pseudo_labels_q_and_their_loss_by_hand():
    # crop 0, region 0: p 0.99 (target 1, confident), 0.5 (target 0: not above 0.5; not confident)
    #         region 1: p 0.01 (target 0, confident), 0.73 (target 1, not confident) -> q = 2/4
    # crop 1: p 0.99995, 0.00005 | 0.99995, 0.9933: every pair confident -> q = 1
    teacher = torch.tensor([[[L, 0.0], [-L, 1.0]], [[10.0, -10.0], [10.0, 5.0]]]).view(2, 2, 2, 1, 1)
    targets, q = confident_sigmoid_pseudo_labels(teacher, 0.968)
    assert targets.dtype == torch.float32 and targets.shape == teacher.shape
    assert targets.flatten(1).tolist() == [[1, 0, 0, 1], [1, 0, 1, 1]]
    assert q.tolist() == [0.5, 1.0]
    # student probability 0.75 everywhere: BCE ln(4/3) against 1, ln 4 against 0
    student = torch.full((2, 2, 2, 1, 1), math.log(3.0))
    crop0 = (2 * math.log(4 / 3) + 2 * math.log(4)) / 4
    crop1 = (3 * math.log(4 / 3) + math.log(4)) / 4
    loss = sigmoid_pseudo_label_loss(student, targets, q)
    assert loss.item() == pytest.approx((0.5 * crop0 + 1.0 * crop1) / 2, rel=1e-6)


def test_region_dice_bce_by_hand():
    # voxel 0 counts, voxel 1 (wildly wrong: logit 5 against 0, -5 against 1) is ignored
    logits = torch.tensor([[math.log(3.0), 5.0], [-math.log(3.0), -5.0]]).view(1, 2, 2, 1, 1)
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(1, 2, 2, 1, 1)
    region = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1)
    # region 0: p 0.75, t 1 -> (1.5 + s) / (1.75 + s); region 1: p 0.25, t 1 -> (0.5 + s) / (1.25 + s)
    dice = 1 - ((1.5 + S) / (1.75 + S) + (0.5 + S) / (1.25 + S)) / 2
    bce = (math.log(4 / 3) + math.log(4)) / 2  # mean over the two counted (voxel, region) pairs
    assert region_dice_bce(logits, targets, region).item() == pytest.approx(dice + bce, rel=1e-6)
    with pytest.raises(ValueError, match="one target channel per output channel"):
        region_dice_bce(logits, targets[:, :1], region)


def test_region_dice_bce_over_every_voxel_is_the_region_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4, generator=gen)
    targets = (torch.rand(2, 3, 4, 4, 4, generator=gen) > 0.5).float()
    everywhere = torch.ones(1, 1, 4, 4, 4, dtype=torch.bool)  # one region for the batch, bool
    assert region_dice_bce(logits, targets, everywhere).item() == pytest.approx(RegionLoss()(logits, targets).item(), rel=1e-6)


def test_largest_component_per_channel_cleans_each_region_on_its_own():
    targets = torch.zeros(1, 3, 8, 8, 1)
    targets[0, 0, 0:3, 0:3] = 1  # 9 voxels
    targets[0, 0, 3, 3] = 1  # a diagonal neighbour: the same 26-connected component
    targets[0, 0, 6, 6] = 1  # an island of region 0
    targets[0, 1, 5:8, 5:8] = 1  # region 1's largest blob holds region 0's island
    targets[0, 1, 0, 0:2] = 1  # and an island of its own
    cleaned = largest_component_per_channel(targets)
    assert cleaned.dtype == targets.dtype and cleaned.shape == targets.shape
    assert int(cleaned[0, 0].sum()) == 10 and cleaned[0, 0, 6, 6] == 0 and cleaned[0, 0, 3, 3] == 1
    assert int(cleaned[0, 1].sum()) == 9 and cleaned[0, 1, 6, 6] == 1 and cleaned[0, 1, 0, 0] == 0
    assert int(cleaned[0, 2].sum()) == 0  # an empty region stays empty


def test_copy_paste_targets_move_every_region_channel_of_a_voxel():
    box = torch.zeros(2, 2, 2, dtype=torch.bool)
    box[0, 0, 0] = True
    x, u = torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2)
    mixes = copy_paste(x, u, box)
    labels = torch.stack([torch.ones(2, 2, 2), torch.zeros(2, 2, 2)]).unsqueeze(0)  # regions (1, 0)
    pseudo = 1.0 - labels  # regions (0, 1)
    target_in, target_out = mixes.targets(labels, pseudo)
    assert target_in.shape == target_out.shape == (1, 2, 2, 2, 2)
    assert target_in[0, :, 0, 0, 0].tolist() == [0, 1] and int(target_in[0, 0].sum()) == 7
    assert target_out[0, :, 0, 0, 0].tolist() == [1, 0] and int(target_out[0, 1].sum()) == 7


def test_unlabeled_losses_by_output_mode():
    assert unlabeled_losses("sigmoid").consistency_mse is sigmoid_mse
    assert unlabeled_losses("sigmoid").region_loss is region_dice_bce
    with pytest.raises(ValueError, match="'softmax' or 'sigmoid'"):
        unlabeled_losses("softmx")


# ---------------------------------------------------------------- the steps, by hand
def test_medcontext_semi_on_regions_by_hand(helpers):
    # as the softmax case: half the tubes of U_M masked (logits 0), the teacher sees U: (L, -L).
    # cl_unlabeled = 0.5; pseudo targets (1, 0) everywhere, every pair confident (0.99): q = 1,
    # BCE = (-ln 0.99 + ln 2) / 2 per channel (unmasked / masked halves) = 0.351599
    images, regions, unlabeled = _crops()
    mc = MedContext(helpers.SignNet(), variant="medcontext_semi", total_steps=100, mask_cell=2, seed=0, output_mode="sigmoid")
    out = mc.losses(images, regions, unlabeled=unlabeled, step=25)
    assert out.sup.item() == pytest.approx(SUP, rel=1e-6) and out.msl.item() == pytest.approx(SUP, rel=1e-6)
    assert out.cl.item() == pytest.approx(0.0, abs=1e-9)
    assert out.cl_unlabeled.item() == pytest.approx(0.5, rel=1e-6)
    assert out.pseudo.item() == pytest.approx(0.3515987582, rel=1e-5)
    assert out.confident.item() == 1.0 and out.ramp.item() == 1.0
    assert out.total.item() == pytest.approx(2 * SUP + 0.5 * 0.5 + 0.3515987582, rel=1e-6)


def test_mean_teacher_on_regions_by_hand(helpers):
    # teacher zeroed: sigmoid 0.5 on both channels; student on U: (0.99, 0.01): MSE = 0.49^2
    images, regions, unlabeled = _crops()
    mc = MedContext(helpers.SignNet(), variant="mean_teacher", total_steps=100, output_mode="sigmoid",
                    semi=semi_supervision("mean_teacher", noise_std=0.0))
    with torch.no_grad():
        mc.teacher.conv.weight.zero_()
    with pytest.warns(TeacherOutOfSyncWarning):
        out = mc.losses(images, regions, unlabeled=unlabeled, step=50)
    assert out.cl_unlabeled.item() == pytest.approx(0.2401, rel=1e-5)
    assert out.sup.item() == pytest.approx(SUP, rel=1e-6)
    assert out.total.item() == pytest.approx(SUP + 0.2865047969 * 0.2 * 0.2401, rel=1e-6)


def test_bcp_on_regions_by_hand(helpers):
    # box 2^3 of the 4^3 crop; the teacher's regions of U: (1, 0) everywhere (one component).
    # mix X|U: zeros outside (56 labelled voxels, p 0.5), U inside (8 pseudo-labelled, p 0.99 / 0.01);
    # mix U|X: the reverse (8 labelled, 56 pseudo-labelled).
    images, regions, unlabeled = _crops()
    mc = MedContext(helpers.SignNet(), variant="bcp", total_steps=100, seed=0, output_mode="sigmoid",
                    semi=semi_supervision("bcp", box_ratio=0.5))
    out = mc.losses(images, regions, unlabeled=unlabeled, step=50)
    ln2, bce_u = math.log(2), -math.log(0.99)
    sup = sum((_dice(0.5, 1, n) + _dice(0.5, 0, n)) / 2 + ln2 for n in (56, 8))
    pseudo = sum((_dice(0.99, 1, n) + _dice(0.01, 0, n)) / 2 + bce_u for n in (8, 56))
    assert out.sup.item() == pytest.approx(sup, rel=1e-6)
    assert out.pseudo.item() == pytest.approx(pseudo, rel=1e-5)
    assert out.total.item() == pytest.approx(sup + 0.5 * pseudo, rel=1e-5)
    assert out.msl.item() == 0 and out.cl.item() == 0 and out.cl_unlabeled.item() == 0


# ---------------------------------------------------------------- every variant, one step
def _region_batch():
    """Two 16^3 crops with nested regions (WT contains TC contains ET, as BraTS), unlabelled crops."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 1, 16, 16, 16, generator=gen)
    labels = torch.randint(0, 4, (2, 1, 16, 16, 16), generator=gen)
    regions = torch.cat([labels >= 1, labels >= 2, labels == 3], dim=1).float()
    return images, regions, torch.randn(2, 1, 16, 16, 16, generator=gen)


@pytest.mark.parametrize("variant, step", [(v, 9) for v in SEMI] + [("bcp", 0), ("medcontext_bcp", 0)])
def test_every_variant_trains_on_regions(make_net, variant, step):
    """Step 9 of 10 (after BCP's labelled-only first step) and BCP's copy-paste pre-training (step 0)."""
    # a confidence of 0.5 keeps MIC's pseudo-label term alive on an untrained network
    semi = semi_supervision(variant, confidence=0.5)
    mc = MedContext(make_net(out_channels=3), variant=variant, total_steps=10, mask_cell=4, seed=0,
                    output_mode="sigmoid", semi=semi)
    images, regions, unlabeled = _region_batch()
    out = mc.losses(images, regions, unlabeled=unlabeled, step=step)
    assert all(math.isfinite(v) for v in out.as_floats().values()), out.as_floats()
    live = VARIANTS[variant].unlabeled.terms if step == 9 else ()
    assert all(getattr(out, term).item() > 0 for term in live), out.as_floats()
    out.total.backward()
    assert all(p.grad is None for p in mc.teacher.parameters())
    grads = {n: p.grad for n, p in mc.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert grads["network.head.weight"].abs().sum() > 0
    tokens = [g for n, g in grads.items() if "mask_token" in n]
    assert bool(tokens) == VARIANTS[variant].masked_pass
    if step == 9:
        assert all(t.abs().sum() > 0 for t in tokens)


@pytest.mark.parametrize("variant", SEMI)
def test_the_unlabelled_terms_on_regions_reach_the_student(make_net, variant):
    semi = semi_supervision(variant, confidence=0.5)
    mc = MedContext(make_net(out_channels=3), variant=variant, total_steps=10, mask_cell=4, seed=0,
                    output_mode="sigmoid", semi=semi)
    images, regions, unlabeled = _region_batch()
    out = mc.losses(images, regions, unlabeled=unlabeled, step=9)
    sum(getattr(out, term) for term in VARIANTS[variant].unlabeled.terms).backward()
    assert mc.network.head.weight.grad.abs().sum() > 0
