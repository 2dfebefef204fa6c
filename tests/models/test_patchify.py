"""Patch-embedding convolutions (kernel = stride) as a GEMM in CPU reduced precision."""

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNETR
from torch import nn

from medcontext.models import create_model, get_model_spec
from medcontext.models.patchify import PatchConv3d, is_patch_conv, patch_matmul, use_patch_matmul


def _bf16_reference(x, weight, bias):
    """The convolution's sums of bf16-rounded operands, accumulated in fp32: what a right bf16 kernel gives."""
    rounded = [t.detach().bfloat16().float() if t is not None else None for t in (x, weight, bias)]
    return F.conv3d(rounded[0], rounded[1], rounded[2], stride=weight.shape[2:])


@pytest.mark.parametrize("shape, kernel", [((2, 1, 32, 32, 16), 16), ((1, 3, 12, 10, 9), 4), ((2, 2, 8, 8, 8), (2, 4, 1))])
@pytest.mark.parametrize("with_bias", [True, False])
def test_patch_matmul_is_the_strided_convolution(shape, kernel, with_bias):
    kernel = (kernel,) * 3 if isinstance(kernel, int) else kernel
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(5, shape[1], *kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(5, generator=gen, dtype=torch.float64) if with_bias else None
    expected = F.conv3d(x, weight, bias, stride=kernel)  # (1, 3, 12, 10, 9) / 4: trailing voxels dropped
    got = patch_matmul(x, weight, bias)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# the shapes oneDNN's bf16 convolution got wrong on an AMX Xeon (PyTorch 2.13): UNETR small on the ACDC
# crop, UNETR base on a 4-channel BraTS crop
@pytest.mark.parametrize("x_shape, out_channels", [((2, 1, 80, 80, 16), 192), ((1, 4, 96, 96, 96), 768)])
def test_patch_conv_is_right_under_cpu_bf16_autocast(x_shape, out_channels):
    torch.manual_seed(0)
    conv = PatchConv3d(x_shape[1], out_channels, 16, stride=16)
    x = torch.rand(x_shape) * 3
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.dtype == torch.bfloat16
    reference = _bf16_reference(x, conv.weight, conv.bias)
    assert float((y.float() - reference).abs().max()) <= 0.01 * float(reference.abs().max())


def test_patch_conv_gradients_under_cpu_bf16_autocast_match_fp32():
    torch.manual_seed(0)
    conv = PatchConv3d(1, 32, 8, stride=8)
    plain = nn.Conv3d(1, 32, 8, stride=8)
    plain.load_state_dict(conv.state_dict())
    x = torch.rand(2, 1, 32, 32, 16)
    upstream = torch.randn(2, 32, 4, 4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (conv(x).float() * upstream).sum().backward()
    (plain(x) * upstream).sum().backward()
    for got, expected in [(conv.weight.grad, plain.weight.grad), (conv.bias.grad, plain.bias.grad)]:
        assert float((got - expected).abs().max()) <= 0.02 * float(expected.abs().max())


def test_patch_conv_is_the_plain_convolution_in_fp32():
    torch.manual_seed(0)
    conv = PatchConv3d(2, 8, 4, stride=4)
    x = torch.randn(1, 2, 16, 16, 8)
    assert torch.equal(conv(x), F.conv3d(x, conv.weight, conv.bias, stride=4))


@pytest.mark.parametrize(
    "conv, expected",
    [
        (nn.Conv3d(1, 4, 16, stride=16), True),
        (nn.Conv3d(1, 4, (2, 2, 1), stride=(2, 2, 1)), True),
        (nn.Conv3d(1, 4, 3, stride=2), False),  # overlapping
        (nn.Conv3d(1, 4, 2, stride=2, padding=1), False),
        (nn.Conv3d(4, 4, 2, stride=2, groups=2), False),
        (nn.Conv3d(1, 4, 1), False),  # a pointwise conv is no patch cutter
        (PatchConv3d(1, 4, 2, stride=2), False),  # already swapped
    ],
)
def test_is_patch_conv(conv, expected):
    assert is_patch_conv(conv) is expected


def test_use_patch_matmul_keeps_parameters_and_state_dict_keys():
    torch.manual_seed(0)
    network = UNETR(1, 3, (32, 32, 32), feature_size=8, hidden_size=48, mlp_dim=96, num_heads=2)
    keys = list(network.state_dict())
    embedding = network.vit.patch_embedding.patch_embeddings
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = network(x)
    assert use_patch_matmul(network) == 1
    swapped = network.vit.patch_embedding.patch_embeddings
    assert isinstance(swapped, PatchConv3d)
    assert swapped.weight is embedding.weight and swapped.bias is embedding.bias
    assert list(network.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(network(x), before)  # fp32: the plain convolution, bit for bit
    assert use_patch_matmul(network) == 0


@pytest.mark.parametrize("name, path", [("unetr", "vit.patch_embedding.patch_embeddings"),
                                        ("swin_unetr", "swinViT.patch_embed.proj")])
def test_registered_models_get_patch_convolutions(name, path):
    spec = get_model_spec(name)
    network = create_model(name, 1, 3, spec.test_roi, **spec.test_options)
    assert isinstance(network.get_submodule(path), PatchConv3d)
