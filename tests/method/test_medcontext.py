import pytest
import torch

from medcontext import MedContext
from medcontext.method import tube_mask, upsample_mask
from medcontext.models import create_model


def _count_forwards(module):
    calls = {"n": 0}

    def hook(*_):
        calls["n"] += 1

    module.register_forward_hook(hook)
    return calls


def test_baseline_runs_the_student_once_and_has_no_teacher(tiny_net, batch):
    mc = MedContext(tiny_net, variant="baseline")
    student_calls = _count_forwards(mc.network)
    out = mc.losses(*batch)
    assert student_calls["n"] == 1
    assert mc.teacher is None and mc.masker is None
    assert out.msl.item() == 0 and out.cl.item() == 0 and torch.equal(out.total, out.sup)
    assert not any("mask_token" in n for n, _ in mc.named_parameters())


def test_medcontext_runs_student_twice_and_teacher_once(tiny_net, batch):
    mc = MedContext(tiny_net, total_steps=4, mask_cell=4, seed=0)
    student_calls, teacher_calls = _count_forwards(mc.network), _count_forwards(mc.teacher)
    out = mc.losses(*batch)
    assert (student_calls["n"], teacher_calls["n"]) == (2, 1)
    assert out.msl.item() > 0 and out.cl.item() > 0
    torch.testing.assert_close(out.total, out.sup + out.msl + 0.5 * out.cl)


@pytest.mark.parametrize(
    "variant, has_teacher, msl, cl, teacher_forwards",
    [
        ("no_teacher", False, True, False, 0),
        ("msl_only", True, True, False, 0),
        ("cl_only", True, False, True, 1),
    ],
)
def test_ablation_variants(tiny_net, batch, variant, has_teacher, msl, cl, teacher_forwards):
    mc = MedContext(tiny_net, variant=variant, total_steps=4, mask_cell=4, seed=0)
    assert (mc.teacher is not None) == has_teacher
    if has_teacher:
        calls = _count_forwards(mc.teacher)
    out = mc.losses(*batch)
    assert (out.msl.item() > 0) == msl and (out.cl.item() > 0) == cl
    if has_teacher:
        assert calls["n"] == teacher_forwards
    _assert_update_teacher_effect(mc, out.total, has_teacher)


def _assert_update_teacher_effect(mc, loss, has_teacher):
    """After an optimizer step, ``update_teacher`` moves every teacher tensor by the EMA rule
    ``m * teacher + (1 - m) * student``; without a teacher it returns None and changes nothing."""
    optimizer = torch.optim.SGD(mc.parameters(), lr=0.5)
    loss.backward()
    optimizer.step()
    student = {k: v.clone() for k, v in mc.network.state_dict().items()}
    if not has_teacher:
        assert mc.teacher is None and not any(k.startswith("teacher.") for k in mc.state_dict())
        assert mc.update_teacher(0) is None
        assert all(torch.equal(v, student[k]) for k, v in mc.network.state_dict().items())
        return
    before = {k: v.clone() for k, v in mc.teacher.state_dict().items()}
    assert any(not torch.equal(before[k], student[k]) for k in before)  # the step moved the student away
    momentum = mc.update_teacher(0)
    assert momentum == pytest.approx(mc.momentum_at(0)) and 0 < momentum < 1
    for key, value in mc.teacher.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, momentum * before[key] + (1 - momentum) * student[key])
    assert all(torch.equal(v, student[k]) for k, v in mc.network.state_dict().items())  # the student is untouched


def test_configuration_errors_are_clear(tiny_net, make_net):
    with pytest.raises(ValueError, match="Did you mean 'medcontext'"):
        MedContext(tiny_net, variant="medcontex", total_steps=3)
    with pytest.raises(ValueError, match="total_steps"):
        MedContext(tiny_net)
    with pytest.raises(ValueError, match="mask_space='token' needs a token adapter"):
        MedContext(tiny_net, total_steps=3, mask_space="token")
    with pytest.raises(ValueError, match="BatchNorm"):
        MedContext(make_net(batchnorm=True), total_steps=3, student_passes="concat")


def test_concat_refused_when_batchnorm_switches_to_training(make_net, batch):
    net = make_net(batchnorm=True).eval()
    mc = MedContext(net, total_steps=3, mask_cell=4, student_passes="concat")  # allowed: BN in eval mode
    mc.losses(*batch)
    mc.train()
    with pytest.raises(ValueError, match="BatchNorm in training mode"):
        mc.losses(*batch)
    auto = MedContext(make_net(batchnorm=True), total_steps=3, mask_cell=4)
    auto.losses(*batch)  # "auto" falls back to two passes


@pytest.mark.parametrize("name, roi, cell", [("unet3d", 16, 4), ("unetr", 32, 16)])
def test_concatenated_and_separate_passes_agree(name, roi, cell):
    torch.manual_seed(0)
    net = create_model(name, 1, 3, (roi,) * 3, size="tiny")
    separate = MedContext(net, total_steps=3, mask_cell=cell, student_passes="separate")
    joint = MedContext(net, total_steps=3, mask_cell=cell, student_passes="concat")
    joint.load_state_dict(separate.state_dict())
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 1, roi, roi, roi, generator=gen)
    labels = torch.randint(0, 3, (2, 1, roi, roi, roi), generator=gen)
    mask = tube_mask(2, separate.mask_grid((roi,) * 3), 0.5, generator=gen)
    a, b = separate.losses(images, labels, mask), joint.losses(images, labels, mask)
    for term in ("total", "sup", "msl", "cl"):
        torch.testing.assert_close(getattr(a, term), getattr(b, term), rtol=1e-4, atol=1e-5)


def _no_leak_setup(name, roi, cell):
    torch.manual_seed(0)
    net = create_model(name, 1, 2, (roi,) * 3, size="tiny")
    mc = MedContext(net, total_steps=3, mask_cell=cell, seed=0).eval()
    assert mc.mask_space == "token"
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(1, 1, roi, roi, roi, generator=gen)
    mask = tube_mask(1, mc.mask_grid((roi,) * 3), 0.5, generator=gen)
    voxel_mask = upsample_mask(mask, (cell,) * 3, (roi,) * 3).unsqueeze(1)
    return mc, images, mask, voxel_mask


@pytest.mark.parametrize("name, roi, cell", [("unetr", 32, 16), ("swin_unetr", 64, 16)])
def test_token_masking_does_not_leak_the_clean_image(name, roi, cell):
    mc, images, mask, voxel_mask = _no_leak_setup(name, roi, cell)
    noise = torch.randn_like(images) * 5
    with torch.no_grad():
        reference = mc.student_masked(images, mask)
        inside = mc.student_masked(torch.where(voxel_mask, images + noise, images), mask)
        outside = mc.student_masked(torch.where(voxel_mask, images, images + noise), mask)
    torch.testing.assert_close(inside, reference, rtol=0, atol=1e-5)
    assert (outside - reference).abs().max() > 1e-3


@pytest.mark.parametrize("name, roi, cell", [("unetr", 32, 16), ("swin_unetr", 64, 16)])
def test_adapter_hook_is_removed_and_empty_mask_is_identity(name, roi, cell):
    mc, images, mask, _ = _no_leak_setup(name, roi, cell)
    with torch.no_grad():
        original = mc.network(images)
        masked = mc.student_masked(images, mask)
        after = mc.network(images)
        empty = mc.student_masked(images, torch.zeros_like(mask))
    assert torch.equal(after, original)
    assert torch.equal(empty, original)
    assert not torch.allclose(masked, original)
    embedding = mc.masker.adapter.embedding_module(mc.network)
    assert not embedding._forward_hooks


def test_state_dict_round_trip_holds_the_teacher(tiny_net, batch, make_net):
    mc = MedContext(tiny_net, total_steps=5, mask_cell=4, seed=0)
    optimizer = torch.optim.SGD(mc.parameters(), lr=0.5)
    mc.losses(*batch).total.backward()
    optimizer.step()
    mc.update_teacher(0)
    state = mc.state_dict()
    assert any(k.startswith("teacher.") for k in state) and "masker.mask_token" in state
    fresh = MedContext(make_net(), total_steps=5, mask_cell=4)
    fresh.load_state_dict(state)
    for a, b in zip(mc.teacher.state_dict().values(), fresh.teacher.state_dict().values()):
        assert torch.equal(a, b)
    without_teacher = {k: v for k, v in state.items() if not k.startswith("teacher.")}
    with pytest.raises(RuntimeError, match="teacher"):
        fresh.load_state_dict(without_teacher)


def test_predict_uses_student_or_teacher_in_eval_mode(tiny_net, batch):
    mc = MedContext(tiny_net, total_steps=5, mask_cell=4)
    with torch.no_grad():
        mc.network.head.weight.add_(1.0)
    images, _ = batch
    student, teacher = mc.predict(images), mc.predict(images, use="teacher")
    assert student.shape == (2, 3, 16, 16, 16) and not torch.allclose(student, teacher)
    assert mc.network.training  # predict restores the mode
    with pytest.raises(ValueError, match="no teacher"):
        MedContext(tiny_net, variant="baseline").predict(images, use="teacher")


def test_deep_supervision_heads(batch):
    torch.manual_seed(0)
    net = create_model("unet3d", 1, 3, (16, 16, 16), size="tiny", deep_supervision=True)
    mc = MedContext(net, total_steps=3, mask_cell=4, seed=0)
    images, labels = batch
    assert isinstance(mc.network(images), list)
    out = mc.losses(images, labels)
    assert torch.isfinite(out.total) and out.cl.item() > 0
    assert mc.predict(images).shape == (2, 3, 16, 16, 16)


def _phantom(size=16):
    """One volume with 4 structures: two blobs of equal intensity told apart by side only."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    labels = torch.zeros(size, size, size, dtype=torch.long)
    centres = {1: (4, 5, 8), 2: (12, 5, 8), 3: (8, 11, 8)}
    for value, centre in centres.items():
        inside = ((grid - torch.tensor(centre).view(3, 1, 1, 1)) ** 2).sum(0) < 10
        labels[inside] = value
    intensity = torch.tensor([0.0, 1.0, 1.0, 2.0])[labels]
    images = intensity + 0.1 * torch.randn(size, size, size, generator=torch.Generator().manual_seed(0))
    return images[None, None], labels[None, None]


def test_medcontext_overfits_one_volume():
    """Fails if gradients, masks or the teacher are wired wrong: reach Dice >= 0.9."""
    torch.manual_seed(0)
    images, labels = _phantom()
    net = create_model("unet3d", 1, 4, (16, 16, 16), size="tiny")
    steps = 80
    mc = MedContext(net, total_steps=steps, mask_cell=(4, 4, 4), seed=0)
    optimizer = torch.optim.AdamW(mc.parameters(), lr=2e-2)
    dice = 0.0
    for step in range(steps):
        optimizer.zero_grad()
        out = mc.losses(images, labels)
        out.total.backward()
        optimizer.step()
        mc.update_teacher(step)
        if step % 5 == 4:
            pred = mc.predict(images).argmax(1)
            dice = sum(
                2 * ((pred == c) & (labels[:, 0] == c)).sum().item()
                / ((pred == c).sum().item() + (labels[:, 0] == c).sum().item())
                for c in (1, 2, 3)
            ) / 3
            if dice >= 0.9:
                break
    assert dice >= 0.9, f"Dice {dice:.3f} after {step + 1} steps"
    assert out.msl.item() > 0 and out.cl.item() > 0
