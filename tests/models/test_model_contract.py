"""Contract tests run for every registered model: a new registration gets them for free."""

import io

import pytest
import torch

from medcontext import MedContext
from medcontext.method import find_token_adapter, tube_mask, upsample_mask
from medcontext.models import create_model, get_model_spec, list_models

OUT_CHANNELS = 3


@pytest.fixture(scope="module", params=list_models())
def built(request):
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


def test_deep_supervision_heads_when_present(built):
    _, mc, images, labels, _ = built
    with torch.no_grad():
        output = mc.network(images)
    if not isinstance(output, (list, tuple)):
        pytest.skip(f"{type(mc.network).__name__} returns a single output at these options")
    assert output[0].shape[2:] == images.shape[2:]
    assert all(o.shape[1] == OUT_CHANNELS for o in output)
    assert torch.isfinite(mc.losses(images, labels).total)
    assert not isinstance(mc.predict(images), (list, tuple))


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
