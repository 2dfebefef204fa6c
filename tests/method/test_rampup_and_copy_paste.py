"""Ramp-up and teacher-momentum schedules of the semi-supervised variants (literal tables), BCP's
box masks and mixes, and the unlabelled-crop losses on tensors small enough to work out by hand."""

import math

import pytest
import torch

from medcontext.method import box_mask, confident_pseudo_labels, copy_paste, pseudo_label_loss, softmax_mse
from medcontext.method import region_dice_ce, sigmoid_rampup, mean_teacher_momentum, split_region_dice_bce, split_region_dice_ce
from medcontext.method.schedules import momentum_after_pretrain, pretrain_steps
from medcontext.method.semisupervised_losses import largest_component


@pytest.mark.parametrize(
    "step, total, rampup, expected",
    [
        (0, 100, 0.5, 0.006737947),  # exp(-5)
        (10, 100, 1.0, 0.017422375),  # t = 0.1: exp(-5 * 0.81)
        (25, 100, 0.5, 0.286504797),  # t = 0.5: exp(-1.25)
        (40, 100, 0.5, 0.818730753),  # t = 0.8: exp(-0.2)
        (50, 100, 0.5, 1.0),
        (99, 100, 0.5, 1.0),
        (0, 100, 0.0, 1.0),  # no ramp
        (150, 30000, 1.0, 0.007082524),  # t = 0.005: exp(-5 * 0.995^2); SSL4MIS holds exp(-5) to step 150
    ],
)
def test_sigmoid_rampup_table(step, total, rampup, expected):
    assert sigmoid_rampup(step, total, rampup) == pytest.approx(expected, rel=1e-7)


def test_rampup_and_momentum_inputs_are_checked():
    with pytest.raises(ValueError, match="step must be in"):
        sigmoid_rampup(100, 100, 0.5)
    with pytest.raises(ValueError, match="rampup"):
        sigmoid_rampup(0, 100, 1.5)
    with pytest.raises(ValueError, match="pretrain"):
        pretrain_steps(100, 1.0)
    with pytest.raises(ValueError, match="momentum base"):
        mean_teacher_momentum(3, 1.2)


def test_mean_teacher_momentum_table():
    # min(1 - 1/(k+1), 0.99): the true average of the students, then 0.99 from step 99 on
    assert [mean_teacher_momentum(k) for k in (0, 1, 3, 9, 98, 99, 5000)] == pytest.approx(
        [0.0, 0.5, 0.75, 0.9, 0.98989899, 0.99, 0.99]
    )


def test_bcp_momentum_copies_the_student_until_the_pretraining_phase_ends():
    assert pretrain_steps(17000, 2000 / 17000) == 2000
    assert [momentum_after_pretrain(k, 17000, 2000 / 17000) for k in (0, 1999, 2000, 16999)] == [0.0, 0.0, 0.99, 0.99]
    assert momentum_after_pretrain(0, 100, 0.0) == 0.99


def test_box_mask_size_and_every_placement():
    starts = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        box = box_mask((12, 9, 6), 2 / 3, gen)
        inside = box.nonzero()
        low, high = inside.min(0).values, inside.max(0).values
        assert (high - low + 1).tolist() == [8, 6, 4] and int(box.sum()) == 8 * 6 * 4
        starts.add(tuple(low.tolist()))
    # starts 0..4, 0..3, 0..2: 5 * 4 * 3 = 60 placements, the far edge included
    assert {s[0] for s in starts} == set(range(5)) and {s[1] for s in starts} == set(range(4))
    assert {s[2] for s in starts} == set(range(3))
    assert box_mask((3, 3, 3), 0.1).sum() == 1  # at least one voxel
    with pytest.raises(ValueError, match="box ratio"):
        box_mask((8, 8, 8), 1.0)


def test_copy_paste_mixes_and_targets():
    box = torch.zeros(2, 2, 2, dtype=torch.bool)
    box[0, 0, 0] = True
    x, u = torch.full((1, 1, 2, 2, 2), 1.0), torch.full((1, 1, 2, 2, 2), 2.0)
    mixes = copy_paste(x, u, box)
    assert mixes.mix_in[0, 0, 0, 0, 0] == 2 and int((mixes.mix_in == 1).sum()) == 7  # U pasted into X
    assert mixes.mix_out[0, 0, 0, 0, 0] == 1 and int((mixes.mix_out == 2).sum()) == 7  # X pasted into U
    labels, pseudo = torch.full((1, 1, 2, 2, 2), 3), torch.full((1, 1, 2, 2, 2), 5)
    target_in, target_out = mixes.targets(labels, pseudo)
    assert target_in[0, 0, 0, 0, 0] == 5 and int((target_in == 3).sum()) == 7
    assert target_out[0, 0, 0, 0, 0] == 3 and int((target_out == 5).sum()) == 7
    labeled_in, labeled_out = mixes.labeled_voxels()
    assert labeled_in.sum() == 7 and labeled_out.sum() == 1
    with pytest.raises(ValueError, match="as many unlabelled crops"):
        copy_paste(x, torch.cat([u, u]), box)


def test_softmax_mse_by_hand():
    student = torch.zeros(1, 2, 1, 1, 1)  # (0.5, 0.5)
    teacher = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1, 1)  # (0.75, 0.25)
    assert softmax_mse(student, teacher).item() == pytest.approx(0.0625)  # (0.25^2 + 0.25^2) / 2


def test_confident_pseudo_labels_and_their_loss_by_hand():
    teacher = torch.tensor([[math.log(99.0), 0.0], [0.0, 0.0], [0.0, math.log(99.0)], [0.0, 1.0]]).T
    teacher = teacher.reshape(1, 2, 4, 1, 1)  # voxels: 0.99 class 0, tie, 0.99 class 1, 0.73 class 1
    labels, q = confident_pseudo_labels(teacher, 0.968)
    assert labels.flatten().tolist() == [0, 0, 1, 1] and q.tolist() == [0.5]
    loss = pseudo_label_loss(torch.zeros(1, 2, 4, 1, 1), labels, q)
    assert loss.item() == pytest.approx(0.5 * math.log(2))  # q * CE of a uniform student


def test_region_dice_ce_by_hand():
    logits = torch.zeros(1, 2, 2, 1, 1)  # softmax 0.5 on both voxels
    labels = torch.tensor([1, 0]).view(1, 1, 2, 1, 1)
    region = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1)  # only voxel 0 (label 1) counts
    # Dice: class 0 (0 + s) / (0.5 + s) ~ 0, class 1 (2 * 0.5 + s) / (0.5 + 1 + s) = 2/3 -> 1 - 1/3
    expected = 1 - (1e-5 / (0.5 + 1e-5) + (1 + 1e-5) / (1.5 + 1e-5)) / 2 + math.log(2)
    assert region_dice_ce(logits, labels, region).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("output_mode", ["softmax", "sigmoid"])
def test_split_region_loss_is_the_two_region_losses_of_a_mix(output_mode):
    """BCP's two terms of one mixed crop (a box and its complement, each with its own targets) from
    one pass over the logits equal the two restricted losses, in value and in gradient."""
    from medcontext.method import region_dice_bce

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 4, 3, generator=gen, requires_grad=True)
    if output_mode == "softmax":
        inside_targets = torch.randint(0, 3, (2, 1, 5, 4, 3), generator=gen)
        outside_targets = torch.randint(0, 3, (2, 1, 5, 4, 3), generator=gen)
        single, split = region_dice_ce, split_region_dice_ce
    else:
        inside_targets = (torch.rand(2, 3, 5, 4, 3, generator=gen) > 0.5).float()
        outside_targets = (torch.rand(2, 3, 5, 4, 3, generator=gen) > 0.5).float()
        single, split = region_dice_bce, split_region_dice_bce
    box = box_mask((5, 4, 3), 2 / 3, gen).view(1, 1, 5, 4, 3).float()  # one box for the batch
    expected = (single(logits, inside_targets, box), single(logits, outside_targets, 1.0 - box))
    (expected_grad,) = torch.autograd.grad(expected[0] + 2 * expected[1], logits)
    inside, outside = split(logits, inside_targets, outside_targets, box.bool())
    (grad,) = torch.autograd.grad(inside + 2 * outside, logits)
    assert inside.item() == pytest.approx(expected[0].item(), rel=1e-6)
    assert outside.item() == pytest.approx(expected[1].item(), rel=1e-6)
    assert torch.allclose(grad, expected_grad, rtol=1e-5, atol=1e-8)


def test_largest_component_keeps_one_blob_per_class():
    labels = torch.zeros(1, 1, 8, 8, 1, dtype=torch.long)
    labels[0, 0, 0:3, 0:3] = 1  # 9 voxels of class 1
    labels[0, 0, 6, 6] = 1  # an isolated voxel of class 1
    labels[0, 0, 5:7, 0:2] = 2  # one blob of class 2
    cleaned = largest_component(labels)
    assert int((cleaned == 1).sum()) == 9 and cleaned[0, 0, 6, 6] == 0
    assert int((cleaned == 2).sum()) == 4 and cleaned.dtype == labels.dtype
