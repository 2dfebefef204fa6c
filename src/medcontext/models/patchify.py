"""Patch-embedding convolutions (kernel = stride) as one matrix product in CPU reduced precision.

A ``Conv3d`` whose kernel equals its stride cuts the input into non-overlapping patches and
applies one linear map to each: UNETR's 16^3 patch embedding, Swin UNETR's 2^3 one. Under CPU
bf16 autocast, PyTorch 2.13's oneDNN convolution computes some of these wrongly on CPUs with
AMX / AVX512-BF16 (measured on an Intel Xeon with AMX: UNETR small's embedding ``Conv3d(1, 192,
16, stride=16)`` on ``(2, 1, 80, 80, 16)`` crops is off by up to 73% of its output range at every
patch but the first column, and now and then returns NaN; UNETR base's ``Conv3d(4, 768, 16,
stride=16)`` on ``(2, 4, 96, 96, 96)`` by 101-112% (two draws of weights and inputs); the same shapes in fp32 and neighbouring shapes
in bf16 are right). The convolution trains on regardless, so the error shows only as a worse
network or, much later, a non-finite loss.

:class:`PatchConv3d` keeps the ``Conv3d`` parameters and state-dict keys and computes the same
sums as a patch matrix times the flattened kernel (``F.linear``, a GEMM that is right in bf16)
whenever the input runs on the CPU in reduced precision; elsewhere (fp32, CUDA) it is the plain
convolution, bit for bit. :func:`use_patch_matmul` swaps it in for every such convolution of a
network; :func:`~medcontext.models.create_model` does so for every registered model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchConv3d", "is_patch_conv", "use_patch_matmul", "patch_matmul"]

_REDUCED = (torch.bfloat16, torch.float16)


def is_patch_conv(module: nn.Module) -> bool:
    """True for a plain ``Conv3d`` that cuts non-overlapping patches: kernel = stride > 1, no
    padding, dilation 1, one group."""
    if type(module) is not nn.Conv3d:  # subclasses may change forward; PatchConv3d is already swapped
        return False
    kernel, stride = tuple(module.kernel_size), tuple(module.stride)
    padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    return (
        kernel == stride and max(kernel) > 1 and padding in ((0, 0, 0), "valid")
        and tuple(module.dilation) == (1, 1, 1) and module.groups == 1
    )


def patch_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv3d(x, weight, bias, stride=kernel)`` as a matrix product.

    Args:
        x: ``(B, C, H, W, D)``; trailing voxels that do not fill a patch are dropped, as the
            convolution drops them.
        weight: ``(E, C, kh, kw, kd)``.
        bias: ``(E,)`` or ``None``.

    Returns:
        ``(B, E, H // kh, W // kw, D // kd)``, contiguous.
    """
    batch, channels = x.shape[:2]
    embed = weight.shape[0]
    kh, kw, kd = weight.shape[2:]
    gh, gw, gd = x.shape[2] // kh, x.shape[3] // kw, x.shape[4] // kd
    x = x[:, :, : gh * kh, : gw * kw, : gd * kd]
    patches = (
        x.reshape(batch, channels, gh, kh, gw, kw, gd, kd)
        .permute(0, 2, 4, 6, 1, 3, 5, 7)
        .reshape(batch, gh * gw * gd, channels * kh * kw * kd)
    )
    out = F.linear(patches, weight.reshape(embed, -1), bias)  # (B, patches, E)
    return out.reshape(batch, gh, gw, gd, embed).permute(0, 4, 1, 2, 3).contiguous()


def _runs_in_reduced_precision(x: torch.Tensor) -> bool:
    if x.device.type != "cpu":
        return False
    if x.dtype in _REDUCED:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _REDUCED


class PatchConv3d(nn.Conv3d):
    """A kernel = stride ``Conv3d`` that runs as :func:`patch_matmul` on the CPU in bf16/fp16
    (see the module docstring for why) and as the plain convolution otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _runs_in_reduced_precision(x):
            return patch_matmul(x, self.weight, self.bias)
        return super().forward(x)


def use_patch_matmul(network: nn.Module) -> int:
    """Swap every patch-cutting ``Conv3d`` of ``network`` (:func:`is_patch_conv`) for a
    :class:`PatchConv3d` holding the same parameters (state-dict keys unchanged).

    Call it before an optimizer holds the parameters or hooks are registered on the
    convolutions. Returns the number swapped.
    """
    targets = [(name, module) for name, module in network.named_modules() if name and is_patch_conv(module)]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        swapped = PatchConv3d(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, bias=conv.bias is not None,
            device="meta",
        )
        swapped.weight = conv.weight
        swapped.bias = conv.bias
        setattr(parent, child, swapped)
    return len(targets)
