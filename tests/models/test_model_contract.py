"""Contract tests run for every registered model: a new registration gets them for free.

Every test gets its own freshly built model (same seed), so no test sees another's updates.
"""

import io

import pytest
import torch

from medcontext import MedContext
from medcontext.method import find_token_adapter, tube_mask, upsample_mask
from medcontext.models import create_model, get_model_spec, list_models

OUT_CHANNELS = 3


@pytest.fixture(params=list_models())
def built(request):
    """A fresh MedContext around the model's test network, with a batch and the mask cell."""
    spec = get_model_spec(request.param)
    torch.manual_seed(0)
    network = create_model(spec.name, 1, OUT_CHANNELS, spec.test_roi, **spec.test_options)
    # one mask cell = one token where the model has a token adapter, else a 1/4 of the ROI
    adapter = find_token_adapter(network)
    cell = tuple(adapter.token_patch(network)) if adapter else tuple(r // 4 for r in spec.test_roi)
    if adapter and min(r // c for r, c in zip(spec.test_roi, cell)) < 2:
        cell = tuple(r // 2 for r in spec.test_roi)
    mc = MedContext(network, total_steps=4, mask_cell=cell, seed=0, mask_ratio=0.5)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(1, 1, *spec.test_roi, generator=gen)
    labels = torch.randint(0, OUT_CHANNELS, (1, 1, *spec.test_roi), generator=gen)
    return spec, mc, images, labels, cell


def test_output_shape(built):
    spec, mc, images, _, _ = built
    assert mc.predict(images).shape == (1, OUT_CHANNELS, *spec.test_roi)


def test_training_step_reaches_every_parameter_and_mask_token(built):
    _, mc, images, labels, _ = built
    mc.zero_grad()
    plain = mc.network(images)
    sum(o.sum() for o in plain).backward() if isinstance(plain, list) else plain.sum().backward()
    # parameters a plain forward uses (MONAI's ViT blocks hold unused cross-attention norms)
    used = {n for n, p in mc.network.named_parameters() if p.grad is not None}
    mc.zero_grad(set_to_none=True)
    out = mc.losses(images, labels)
    assert all(torch.isfinite(t) for t in (out.total, out.sup, out.msl, out.cl))
    out.total.backward()
    tokens = {n: p for n, p in mc.named_parameters() if "mask_token" in n}
    assert tokens and all(p.grad is not None and p.grad.abs().sum() > 0 for p in tokens.values())
    no_grad = [n for n, p in mc.network.named_parameters() if n in used and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(p.grad is None for p in mc.teacher.parameters())


def test_masked_view_does_not_leak(built):
    spec, mc, images, _, cell = built
    mask = tube_mask(1, mc.mask_grid(spec.test_roi), 0.5, generator=torch.Generator().manual_seed(1))
    voxel_mask = upsample_mask(mask, cell, spec.test_roi).unsqueeze(1)
    noise = 3 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    mc.eval()
    try:
        with torch.no_grad():
            reference = mc.student_masked(images, mask)
            inside = mc.student_masked(torch.where(voxel_mask, images + noise, images), mask)
            outside = mc.student_masked(torch.where(voxel_mask, images, images + noise), mask)
            clean_again = mc.network(images)
            clean = mc.predict(images)
    finally:
        mc.train()
    torch.testing.assert_close(inside, reference, rtol=0, atol=1e-5)
    assert (outside - reference).abs().max() > 1e-4
    assert torch.equal(clean_again, clean)  # no hook stays behind


def test_ema_update_moves_teacher_towards_student(built):
    _, mc, images, labels, _ = built
    optimizer = torch.optim.SGD(mc.parameters(), lr=0.1)
    before = [p.clone() for p in mc.teacher.parameters()]
    optimizer.zero_grad()
    mc.losses(images, labels).total.backward()
    optimizer.step()
    momentum = mc.update_teacher(0)
    for old, new, student in zip(before, mc.teacher.parameters(), mc.network.parameters()):
        torch.testing.assert_close(new, momentum * old + (1 - momentum) * student.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list_models())
def test_deep_supervision_is_declared(name):
    """Every model says whether it has a deep-supervision mode, and why not when it has none."""
    declared = get_model_spec(name).deep_supervision
    assert declared is True or (isinstance(declared, str) and len(declared.split()) >= 5), (
        f"register {name!r} with deep_supervision=True (the builder takes deep_supervision: bool) "
        f"or a sentence saying why it has no such mode"
    )


@pytest.mark.parametrize("name", list_models())
def test_deep_supervision_heads_or_a_clear_refusal(name):
    spec = get_model_spec(name)
    options = {**spec.test_options, "deep_supervision": True}
    if spec.deep_supervision is not True:
        with pytest.raises(ValueError, match=f"{name!r} has no deep-supervision mode: ") as err:
            create_model(name, 1, OUT_CHANNELS, spec.test_roi, **options)
        assert spec.deep_supervision in str(err.value)
        create_model(name, 1, OUT_CHANNELS, spec.test_roi, **{**options, "deep_supervision": False})  # off: fine
        return
    torch.manual_seed(0)
    mc = MedContext(create_model(name, 1, OUT_CHANNELS, spec.test_roi, **options), total_steps=4, seed=0)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(1, 1, *spec.test_roi, generator=gen)
    labels = torch.randint(0, OUT_CHANNELS, (1, 1, *spec.test_roi), generator=gen)
    with torch.no_grad():
        heads = mc.network(images)
    assert isinstance(heads, list) and len(heads) >= 2
    shapes = [tuple(h.shape[2:]) for h in heads]
    assert shapes[0] == spec.test_roi and all(h.shape[:2] == (1, OUT_CHANNELS) for h in heads)
    # each head at its decoder stage's resolution (nnFormer) or upsampled to full resolution
    # (MONAI's DynUNet); never finer than the one before, and a head of its own
    for finer, coarser in zip(shapes, shapes[1:]):
        assert all(c <= f and f % c == 0 for f, c in zip(finer, coarser))
    assert all(not torch.equal(a, b) for a, b in zip(heads, heads[1:]) if a.shape == b.shape)
    out = mc.losses(images, labels)
    assert all(torch.isfinite(t) for t in (out.total, out.sup, out.msl, out.cl))
    prediction = mc.predict(images)  # eval mode: the full-resolution head only
    assert isinstance(prediction, torch.Tensor) and tuple(prediction.shape[2:]) == spec.test_roi
    mc.network.eval()
    with torch.no_grad():
        torch.testing.assert_close(mc.network(images), heads[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in list_models() if get_model_spec(n).deep_supervision is True])
def test_deep_supervision_off_gives_one_output_in_training(name):
    spec = get_model_spec(name)
    torch.manual_seed(0)
    network = create_model(name, 1, OUT_CHANNELS, spec.test_roi, **{**spec.test_options, "deep_supervision": False})
    output = network.train()(torch.randn(1, 1, *spec.test_roi))
    assert isinstance(output, torch.Tensor) and output.shape == (1, OUT_CHANNELS, *spec.test_roi)


def test_save_load_round_trip(built):
    spec, mc, images, _, cell = built
    buffer = io.BytesIO()
    torch.save(mc.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    fresh = MedContext(
        create_model(spec.name, 1, OUT_CHANNELS, spec.test_roi, **spec.test_options),
        total_steps=4,
        mask_cell=cell,
    )
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(fresh.predict(images), mc.predict(images), rtol=0, atol=0)
    torch.testing.assert_close(fresh.predict(images, use="teacher"), mc.predict(images, use="teacher"), rtol=0, atol=0)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="known models: .*unet3d") as err:
        create_model("unetrr", 1, 2, 32)
    assert "Did you mean 'unetr'" in str(err.value)


def test_roi_multiple_is_checked():
    with pytest.raises(ValueError, match="multiple of"):
        create_model("unetr", 1, 2, (40, 32, 32), size="tiny")


def test_the_contract_tests_run_over_the_registered_models():
    """Guard: an empty registry (a broken import) would make every parametrized test above vanish."""
    names = list_models()
    assert {"unet3d", "unetr", "swin_unetr", "nnformer"} <= set(names), names
    assert any(get_model_spec(n).deep_supervision is True for n in names), "no model tests deep supervision"
