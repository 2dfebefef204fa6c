"""UNETR, SwinUNETR and an nnU-Net-like 3D U-Net from MONAI, with their token adapters.

Sizes: ``size="paper"`` (the MedContext paper's settings, default), ``"small"`` (CPU work) and
``"tiny"`` (tests). Any other keyword passes through to the MONAI constructor.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import UNETR, DynUNet, SwinUNETR
from torch import nn

from ..method.adapters import TokenAdapter, register_token_adapter
from .registry import register_model

__all__ = ["DeepSupervisedDynUNet", "UNET3D_SIZES", "UNETR_SIZES", "SWIN_UNETR_SIZES"]


def _size_options(table: dict[str, dict], size: str, model: str) -> dict:
    if size not in table:
        raise ValueError(f"unknown size {size!r} for {model}; choose one of {', '.join(table)}")
    return dict(table[size])


_NO_DEEP_SUPERVISION = (
    "MONAI's {model} has a single output head; its paper, MONAI's tutorials and the MedContext paper "
    "train it without deep supervision, and heads on its decoder stages would mean a fork of MONAI's forward"
)


UNETR_SIZES = {
    # UNETR paper / MedContext: ViT-B/16, feature size 16
    "paper": dict(hidden_size=768, mlp_dim=3072, num_heads=12, feature_size=16),
    "small": dict(hidden_size=192, mlp_dim=384, num_heads=4, feature_size=8),
    "tiny": dict(hidden_size=48, mlp_dim=96, num_heads=2, feature_size=4),
}


@register_model(
    "unetr",
    description="UNETR (Hatamizadeh et al. 2022): ViT encoder on 16^3 patches, CNN decoder (MONAI)",
    roi_multiple=16,
    test_options={"size": "tiny"},
    test_roi=(32, 32, 32),
    deep_supervision=_NO_DEEP_SUPERVISION.format(model="UNETR"),
)
def build_unetr(in_channels: int, out_channels: int, roi_size: Sequence[int], size: str = "paper", **options) -> nn.Module:
    """MONAI UNETR; ``roi_size`` sides must be multiples of 16 (the token patch)."""
    kwargs = _size_options(UNETR_SIZES, size, "unetr")
    kwargs.update(options)
    return UNETR(in_channels=in_channels, out_channels=out_channels, img_size=tuple(roi_size), **kwargs)


SWIN_UNETR_SIZES = {
    # SwinUNETR with feature size 48, as in the MedContext paper
    "paper": dict(feature_size=48),
    "small": dict(feature_size=12),
    "tiny": dict(feature_size=12, depths=(1, 1, 1, 1)),
}


@register_model(
    "swin_unetr",
    description="SwinUNETR (Hatamizadeh et al. 2022): Swin transformer encoder, CNN decoder (MONAI)",
    roi_multiple=32,
    test_options={"size": "tiny"},
    test_roi=(64, 64, 64),
    roi_rule=lambda options: ((32, 32, 32), (64, 64, 64)),
    deep_supervision=_NO_DEEP_SUPERVISION.format(model="SwinUNETR"),
)
def build_swin_unetr(
    in_channels: int, out_channels: int, roi_size: Sequence[int], size: str = "paper", **options
) -> nn.Module:
    """MONAI SwinUNETR; ``roi_size`` sides must be multiples of 32 and at least 64 (the
    bottleneck at 1/32 resolution needs more than one voxel for instance norm in training)."""
    if min(roi_size) < 64:
        raise ValueError(f"swin_unetr needs ROI sides >= 64 (multiples of 32), got {tuple(roi_size)}")
    kwargs = _size_options(SWIN_UNETR_SIZES, size, "swin_unetr")
    kwargs.update(options)
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, **kwargs)


class DeepSupervisedDynUNet(DynUNet):
    """DynUNet that returns deep-supervision heads as a list (full resolution first) in training.

    MONAI's DynUNet stacks the heads into one tensor (B, heads, K, ...); the list form is the
    convention of this package for networks with several outputs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = super().forward(x)
        if self.training and self.deep_supervision:
            return list(out.unbind(dim=1))
        return out


UNET3D_SIZES = {
    # nnU-Net's 3D full-resolution plan: 5 levels, 32 -> 320 filters
    "paper": dict(filters=(32, 64, 128, 256, 320)),
    "small": dict(filters=(16, 32, 64, 128)),
    "tiny": dict(filters=(8, 16, 32)),
}


def _unet3d_roi_rule(options) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Every side a multiple of ``2 ** (levels - 1)`` (the total stride), as the builder checks,
    and at least twice that: instance norm in training needs more than one bottleneck voxel."""
    kwargs = _size_options(UNET3D_SIZES, options.get("size", "paper"), "unet3d")
    levels = len(options.get("filters", kwargs["filters"]))
    multiple = 2 ** (levels - 1)
    return (multiple,) * 3, (2 * multiple,) * 3


@register_model(
    "unet3d",
    description="nnU-Net-like 3D U-Net (MONAI DynUNet: 3^3 convs, instance norm, leaky ReLU)",
    roi_multiple=1,
    test_options={"size": "tiny"},
    test_roi=(32, 32, 32),
    roi_rule=_unet3d_roi_rule,
    deep_supervision=True,
)
def build_unet3d(
    in_channels: int,
    out_channels: int,
    roi_size: Sequence[int],
    size: str = "paper",
    deep_supervision: bool = False,
    **options,
) -> nn.Module:
    """nnU-Net-like 3D U-Net: one level per filter entry, stride 2 between levels.

    Every ROI side must be a multiple of ``2 ** (levels - 1)``.
    """
    kwargs = _size_options(UNET3D_SIZES, size, "unet3d")
    kwargs.update(options)
    levels = len(kwargs["filters"])
    multiple = 2 ** (levels - 1)
    if any(side % multiple for side in roi_size):
        raise ValueError(
            f"unet3d with {levels} levels needs ROI sides that are multiples of {multiple}, got {tuple(roi_size)}"
        )
    kwargs.setdefault("kernel_size", [3] * levels)
    kwargs.setdefault("strides", [1] + [2] * (levels - 1))
    kwargs.setdefault("upsample_kernel_size", [2] * (levels - 1))
    if deep_supervision:
        kwargs.setdefault("deep_supr_num", max(1, levels - 2))
    return DeepSupervisedDynUNet(
        spatial_dims=3, in_channels=in_channels, out_channels=out_channels, deep_supervision=deep_supervision, **kwargs
    )


# ---------------------------------------------------------------------- token adapters
def _unetr_patch_conv(network: UNETR) -> nn.Conv3d:
    embedding = network.vit.patch_embedding
    conv = embedding.patch_embeddings
    if not isinstance(conv, nn.Conv3d):
        raise ValueError("token-space masking of UNETR needs proj_type='conv' (a Conv3d patch embedding)")
    return conv


register_token_adapter(
    UNETR,
    TokenAdapter(
        # the conv runs before the position embeddings are added (PatchEmbeddingBlock.forward)
        embedding_module=_unetr_patch_conv,
        token_patch=lambda net: tuple(_unetr_patch_conv(net).kernel_size),
        embed_dim=lambda net: _unetr_patch_conv(net).out_channels,
        in_channels=lambda net: _unetr_patch_conv(net).in_channels,
    ),
)

register_token_adapter(
    SwinUNETR,
    TokenAdapter(
        # PatchEmbed: conv (+ optional norm), output (B, E, gx, gy, gz); Swin has no absolute
        # position embedding, relative position bias is added inside attention
        embedding_module=lambda net: net.swinViT.patch_embed,
        token_patch=lambda net: tuple(net.swinViT.patch_embed.patch_size),
        embed_dim=lambda net: net.swinViT.patch_embed.proj.out_channels,
        in_channels=lambda net: net.swinViT.patch_embed.proj.in_channels,
    ),
)
