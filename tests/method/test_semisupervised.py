"""Semi-supervised variants: each loss against a value worked out by hand, the passes each makes,
the teacher kept out of the gradient, unlabelled crops used as images only.

The hand-checked cases use a 1x1x1 convolution with logits ``(x, -x)``: zero crops give softmax
0.5 everywhere, a crop of constant ``a = ln(99) / 2`` gives (0.99, 0.01). With labels all class 1
on N voxels and zero logits, Dice + CE is ``1 - (0 + 2/3) / 2 + ln 2 = 2/3 + ln 2 = 1.35981``
(MONAI's smoothing 1e-5 changes the 6th digit).
"""

import math

import pytest
import torch

from medcontext import MedContext
from medcontext.method import VARIANTS, semi_supervised_variants, semi_supervision
from medcontext.method.medcontext import TeacherOutOfSyncWarning
from medcontext.method.settings import pass_cost

SEMI = semi_supervised_variants()

A = math.log(99) / 2  # softmax((A, -A)) = (0.99, 0.01)
SUP = 1.3598136736  # Dice + CE of zero logits against labels all 1 (2/3 + ln 2)


def _crops():
    """Labelled zeros with labels all 1, unlabelled crop constant A; one crop each, 4^3 voxels."""
    images = torch.zeros(1, 1, 4, 4, 4)
    labels = torch.ones(1, 1, 4, 4, 4, dtype=torch.long)
    unlabeled = torch.full((1, 1, 4, 4, 4), A)
    return images, labels, unlabeled


def test_medcontext_semi_loss_by_hand(helpers):
    # masked student on U_M: half the tubes masked (grid 2x2x2, 2 of 4 in-plane positions), the
    # masked voxels become the zero token -> logits 0; the teacher (a copy) sees U: (A, -A).
    # cl_unlabeled = masked share of sum (F_s - F_t)^2 / sum F_t^2 = 0.5
    # pseudo: all voxels confident (0.99 > 0.968): q = 1, target class 0,
    #         CE = (-ln 0.99 + ln 2) / 2 = 0.351599 (unmasked / masked halves)
    # labelled zeros: sup = msl = SUP, cl = 0 (student and teacher logits both 0)
    # step 25 of 100 ends the ramp (rampup 0.25): total = 2 SUP + 0.5 * 0.5 + 1.0 * 0.351599
    images, labels, unlabeled = _crops()
    mc = MedContext(helpers.SignNet(), variant="medcontext_semi", total_steps=100, mask_cell=2, seed=0)
    out = mc.losses(images, labels, unlabeled=unlabeled, step=25)
    assert out.sup.item() == pytest.approx(SUP, rel=1e-6) and out.msl.item() == pytest.approx(SUP, rel=1e-6)
    assert out.cl.item() == pytest.approx(0.0, abs=1e-9)
    assert out.cl_unlabeled.item() == pytest.approx(0.5, rel=1e-6)
    assert out.pseudo.item() == pytest.approx(0.3515987582, rel=1e-6)
    assert out.confident.item() == 1.0 and out.ramp.item() == 1.0
    assert out.total.item() == pytest.approx(3.3212261054, rel=1e-6)
    cl_only = MedContext(helpers.SignNet(), variant="medcontext_semi_cl", total_steps=100, mask_cell=2, seed=0)
    out = cl_only.losses(images, labels, unlabeled=unlabeled, step=25)
    assert out.pseudo.item() == 0.0 and out.confident is None
    assert out.total.item() == pytest.approx(2.9696273472, rel=1e-6)  # 2 SUP + 0.5 * 0.5


def test_medcontext_semi_ramp_scales_only_the_unlabelled_terms(helpers):
    images, labels, unlabeled = _crops()
    mc = MedContext(helpers.SignNet(), variant="medcontext_semi", total_steps=100, mask_cell=2, seed=0)
    out = mc.losses(images, labels, unlabeled=unlabeled, step=0)
    # step 0: ramp exp(-5) = 0.0067379
    assert out.ramp.item() == pytest.approx(0.006737947, rel=1e-6)
    assert out.total.item() == pytest.approx(2 * SUP + 0.006737947 * (0.25 + 0.3515987582), rel=1e-6)


def test_confidence_weight_is_the_share_of_confident_voxels(helpers):
    # teacher on half the voxels at 0.99 (confident), half at 0.5: q = 0.5; target class 0 everywhere
    # (argmax of a tie is class 0); student logits 0 everywhere after masking with mask_ratio 0
    images, labels, _ = _crops()
    unlabeled = torch.zeros(1, 1, 4, 4, 4)
    unlabeled[..., :2] = A
    mc = MedContext(helpers.SignNet(), variant="medcontext_semi", total_steps=100, mask_cell=2, mask_ratio=0.0, seed=0)
    out = mc.losses(images, labels, unlabeled=unlabeled, step=99)
    assert out.confident.item() == 0.5
    # CE: -ln 0.99 on the A half, ln 2 on the zero half, mean 0.351599, times q = 0.5
    assert out.pseudo.item() == pytest.approx(0.5 * 0.3515987582, rel=1e-6)
    assert out.cl_unlabeled.item() == pytest.approx(0.0, abs=1e-9)  # nothing masked: student = teacher


def test_mean_teacher_loss_by_hand(helpers):
    # teacher zeroed: softmax 0.5; student on U: (0.99, 0.01); MSE = 0.49^2 = 0.2401
    # step 50 of 100, ramp over the whole run: exp(-5 * 0.5^2) = 0.2865048
    # total = SUP + 0.2865048 * 0.2 * 0.2401
    images, labels, unlabeled = _crops()
    mc = MedContext(
        helpers.SignNet(), variant="mean_teacher", total_steps=100, semi=semi_supervision("mean_teacher", noise_std=0.0)
    )
    with torch.no_grad():
        mc.teacher.conv.weight.zero_()
    with pytest.warns(TeacherOutOfSyncWarning):
        out = mc.losses(images, labels, unlabeled=unlabeled, step=50)
    assert out.cl_unlabeled.item() == pytest.approx(0.2401, rel=1e-6)
    assert out.ramp.item() == pytest.approx(0.2865047969, rel=1e-6)
    assert out.total.item() == pytest.approx(1.3735716340, rel=1e-6)
    assert out.msl.item() == 0 and out.cl.item() == 0


def test_mean_teacher_noise_reaches_the_teacher_only_and_is_clipped(helpers):
    torch.manual_seed(0)
    mc = MedContext(helpers.SignNet(), variant="mean_teacher", total_steps=10, seed=0)
    seen = {"student": [], "teacher": []}
    mc.network.register_forward_hook(lambda m, args, out: seen["student"].append(args[0].clone()))
    mc.teacher.register_forward_hook(lambda m, args, out: seen["teacher"].append(args[0].clone()))
    images = torch.zeros(1, 1, 16, 16, 16)
    unlabeled = torch.randn(1, 1, 16, 16, 16)
    mc.losses(images, torch.zeros_like(images, dtype=torch.long), unlabeled=unlabeled, step=0)
    assert len(seen["teacher"]) == 1
    noise = seen["teacher"][0] - unlabeled
    assert noise.abs().max() <= 0.2 + 1e-6 and noise.abs().max() > 0.15
    assert 0.07 < noise.std() < 0.1  # sd 0.1 clipped at 2 sd: 0.088
    student_inputs = torch.cat(seen["student"])
    assert any(torch.equal(x, unlabeled[0]) for x in student_inputs)  # the student sees the clean crop


def test_bcp_loss_by_hand(helpers):
    # box 2^3 of the 4^3 crop (box_ratio 0.5); teacher on U: class 0 at 0.99 everywhere.
    # mix X|U: zeros outside (56 voxels, labels 1), U inside (8, pseudo 0); mix U|X the reverse.
    # labelled voxels: 2/3 + ln 2 for each mix (the Dice of every region is 1 - (0 + 2/3) / 2)
    # pseudo voxels: Dice 1 - (2 * 0.99 / 1.99 + ~0) / 2 = 0.502513, CE -ln 0.99: 0.512563 per mix
    # total = sup + 0.5 * pseudo
    images, labels, unlabeled = _crops()
    mc = MedContext(helpers.SignNet(), variant="bcp", total_steps=100, seed=0, semi=semi_supervision("bcp", box_ratio=0.5))
    out = mc.losses(images, labels, unlabeled=unlabeled, step=50)
    assert out.sup.item() == pytest.approx(2.7196261072, rel=1e-6)
    assert out.pseudo.item() == pytest.approx(1.0250543749, rel=1e-5)
    assert out.total.item() == pytest.approx(3.2321532946, rel=1e-5)
    assert out.msl.item() == 0 and out.cl.item() == 0 and out.cl_unlabeled.item() == 0


def test_bcp_student_sees_both_mixes_of_one_box(helpers):
    unlabeled = torch.ones(1, 1, 12, 9, 6)
    images, labels = torch.zeros(1, 1, 12, 9, 6), torch.ones(1, 1, 12, 9, 6, dtype=torch.long)
    mc = MedContext(helpers.SignNet(), variant="bcp", total_steps=100, seed=0, student_passes="separate")
    seen = []
    mc.network.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    mc.losses(images, labels, unlabeled=unlabeled, step=50)
    assert len(seen) == 2
    mix_in, mix_out = seen[0][0, 0].bool(), seen[1][0, 0].bool()
    assert torch.equal(mix_in, ~mix_out)  # U inside the box of X|U, X inside the box of U|X
    inside = mix_in.nonzero()
    size = inside.max(0).values - inside.min(0).values + 1
    assert size.tolist() == [8, 6, 4] and int(mix_in.sum()) == 8 * 6 * 4  # one 2/3 box, no holes


def test_bcp_pretrain_phase_uses_labelled_crops_only_and_the_teacher_copies_the_student(helpers):
    torch.manual_seed(0)
    mc = MedContext(helpers.SignNet(), variant="bcp", total_steps=100, seed=0)
    teacher_calls = []
    mc.teacher.register_forward_hook(lambda *a: teacher_calls.append(1))
    images, labels, unlabeled = _crops()
    out = mc.losses(images, labels, unlabeled=unlabeled, step=11)  # round(100 * 2000 / 17000) = 12 steps
    assert teacher_calls == [] and out.pseudo.item() == 0
    assert out.total.item() == pytest.approx(SUP, rel=1e-6)  # batch of one: plain supervision
    assert mc.momentum_at(11) == 0.0 and mc.momentum_at(12) == 0.99
    mc.losses(images, labels, unlabeled=unlabeled, step=12)
    assert teacher_calls == [1]


def test_bcp_pretrain_copy_pastes_labelled_crops_into_each_other(helpers):
    torch.manual_seed(0)
    mc = MedContext(helpers.SignNet(), variant="bcp", total_steps=100, seed=0)
    seen = []
    mc.network.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    images = torch.stack([torch.zeros(1, 6, 6, 6), torch.ones(1, 6, 6, 6)])
    labels = torch.stack([torch.zeros(1, 6, 6, 6), torch.ones(1, 6, 6, 6)]).long()
    mc.losses(images, labels, unlabeled=torch.randn(2, 1, 6, 6, 6), step=0)
    (mixed,) = seen
    assert int(mixed[0].sum()) == 4**3 and int((1 - mixed[1]).sum()) == 4**3  # a 4^3 box of the partner


def _pass_counter(module, log, name):
    module.register_forward_hook(lambda m, args, out: log.append((name, args[0].shape[0])))


@pytest.mark.parametrize("variant", SEMI)
@pytest.mark.parametrize("passes", ["separate", "concat"])
def test_passes_match_the_declared_cost(tiny_net, variant, passes):
    declared = VARIANTS[variant].unlabeled.passes
    mc = MedContext(tiny_net, variant=variant, total_steps=10, mask_cell=4, seed=0, student_passes=passes)
    log = []
    _pass_counter(mc.network, log, "student")
    _pass_counter(mc.teacher, log, "teacher")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 1, 16, 16, 16, generator=gen)
    labels = torch.randint(0, 3, (2, 1, 16, 16, 16), generator=gen)
    mc.losses(images, labels, unlabeled=torch.randn(2, 1, 16, 16, 16, generator=gen), step=9)
    crops = {kind: sum(n for k, n in log if k == kind) for kind in ("student", "teacher")}
    assert crops["student"] == 2 * sum(p.startswith("student") for p in declared)
    assert crops["teacher"] == 2 * sum(p.startswith("teacher") for p in declared)
    calls = {kind: len([k for k, _ in log if k == kind]) for kind in ("student", "teacher")}
    if passes == "concat":  # every student crop in one forward, every teacher crop in another
        assert calls == {"student": 1, "teacher": 1}
    else:
        assert calls == {"student": VARIANTS[variant].student_passes, "teacher": VARIANTS[variant].teacher_forwards}


def test_declared_costs():
    units = {name: VARIANTS[name].cost_units for name in SEMI}
    assert units == {"medcontext_semi_cl": 11, "medcontext_semi": 11, "mean_teacher": 7, "bcp": 7, "medcontext_bcp": 13}
    assert VARIANTS["medcontext_semi"].cost_units / VARIANTS["baseline"].cost_units == pytest.approx(3.6667, abs=1e-4)
    assert VARIANTS["bcp"].unlabeled.terms == ("pseudo",) and VARIANTS["mean_teacher"].unlabeled.terms == ("cl_unlabeled",)
    assert pass_cost(("student X", "teacher X")) == 4
    with pytest.raises(ValueError, match="'student ...' or 'teacher ...'"):
        pass_cost(("critic X",))


@pytest.mark.parametrize("variant", SEMI)
def test_teacher_gets_no_gradient_and_the_student_and_mask_token_do(tiny_net, batch, variant):
    mc = MedContext(tiny_net, variant=variant, total_steps=10, mask_cell=4, seed=0)
    images, labels = batch
    out = mc.losses(images, labels, unlabeled=torch.randn_like(images), step=9)
    out.total.backward()
    assert all(p.grad is None and not p.requires_grad for p in mc.teacher.parameters())
    assert all(p.grad is not None for p in mc.network.parameters())
    tokens = [p for n, p in mc.named_parameters() if "mask_token" in n]
    assert bool(tokens) == VARIANTS[variant].masked_pass
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tokens)


@pytest.mark.parametrize("variant", SEMI)
def test_unlabelled_terms_do_not_depend_on_any_label(make_net, batch, variant):
    """The unlabelled crops come as images only; their terms do not change with the labels of
    the labelled crops either (the pseudo-labels come from the teacher)."""
    images, labels = batch
    unlabeled = torch.randn(images.shape, generator=torch.Generator().manual_seed(5))
    results = []
    for y in (labels, (labels + 1) % 3):
        mc = MedContext(make_net(), variant=variant, total_steps=10, mask_cell=4, seed=0)
        results.append(mc.losses(images, y, unlabeled=unlabeled, step=9))
    assert not torch.equal(results[0].sup, results[1].sup)
    assert torch.equal(results[0].cl_unlabeled, results[1].cl_unlabeled)
    assert torch.equal(results[0].pseudo, results[1].pseudo)


def test_labelled_only_variants_refuse_unlabelled_crops_and_keep_their_terms(tiny_net, batch):
    mc = MedContext(tiny_net, total_steps=10, mask_cell=4, seed=0)
    out = mc.losses(*batch)
    assert set(out.as_floats()) == {"total", "sup", "msl", "cl"} and out.cl_unlabeled is None
    assert mc.momentum_at(0) == pytest.approx(0.996)
    with pytest.raises(ValueError, match="labelled crops only"):
        mc.losses(*batch, unlabeled=batch[0], step=0)
    with pytest.raises(ValueError, match="semi= sets the unlabelled terms"):
        MedContext(tiny_net, total_steps=10, semi=semi_supervision("bcp"))


def test_semi_supervised_configuration_errors_are_clear(tiny_net, batch):
    mc = MedContext(tiny_net, variant="medcontext_semi", total_steps=10, mask_cell=4)
    with pytest.raises(ValueError, match="pass unlabeled="):
        mc.losses(*batch)
    with pytest.raises(ValueError, match="needs step="):
        mc.losses(*batch, unlabeled=batch[0])
    with pytest.raises(ValueError, match="step must be in"):
        mc.losses(*batch, unlabeled=batch[0], step=10)
    with pytest.raises(ValueError, match="channels"):
        mc.losses(*batch, unlabeled=torch.zeros(2, 2, 16, 16, 16), step=0)
    with pytest.raises(ValueError, match="got 'medcontext'"):
        semi_supervision("medcontext")
    with pytest.raises(ValueError, match="Did you mean 'mean_teacher'"):
        MedContext(tiny_net, variant="mean_teacer", total_steps=10)
    with pytest.raises(ValueError, match="Did you mean 'rampup'"):
        semi_supervision("medcontext_semi", ramp_up=0.5)
    with pytest.raises(ValueError, match="box_ratio"):
        semi_supervision("bcp", box_ratio=1.5)
    bcp = MedContext(tiny_net, variant="bcp", total_steps=10)
    with pytest.raises(ValueError, match="as many unlabelled crops as labelled"):
        bcp.losses(*batch, unlabeled=batch[0][:1], step=9)
    sigmoid = MedContext(tiny_net, variant="mean_teacher", total_steps=10, output_mode="sigmoid")
    with pytest.raises(ValueError, match="one binary target channel per region"):
        sigmoid.losses(*batch, unlabeled=batch[0], step=0)  # class labels (B, 1, ...) for 3 region outputs


def test_the_nnunet_trainer_takes_only_labelled_only_variants():
    from medcontext.integrations.nnunet.settings import MedContextSettings, nnunet_variants

    assert "medcontext" in nnunet_variants() and not set(SEMI) & set(nnunet_variants())
    with pytest.raises(ValueError, match="variant must be one of"):
        MedContextSettings(variant="bcp").validate()


def test_the_mask_token_of_medcontext_bcp_gets_a_zero_gradient_in_the_labelled_only_phase(tiny_net, batch):
    mc = MedContext(tiny_net, variant="medcontext_bcp", total_steps=100, mask_cell=4, seed=0)
    out = mc.losses(*batch, unlabeled=torch.randn_like(batch[0]), step=0)
    out.total.backward()
    (token,) = [p for n, p in mc.named_parameters() if "mask_token" in n]
    assert token.grad is not None and token.grad.abs().sum() == 0
    assert out.msl.item() == 0 and out.pseudo.item() == 0
