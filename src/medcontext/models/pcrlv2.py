"""PCRLv2's 3D network: a U-Net-shaped encoder-decoder without skip connections.

Zhou et al., "A Unified Visual Information Preservation Framework for Self-supervised
Pre-training in Medical Image Analysis" (PCRLv2, IEEE TPAMI 2023), the network of Table 6 of
the MedContext paper. Written from the layer facts of the authors' published 3D definition
(``models/pcrlv2_model_3d.py`` of github.com/RL4M/PCRLv2, its ``SegmentationModel``); importing
this module registers it as ``"pcrlv2"``. It has no token embedding: MedContext masks it in
input space.

Data flow, with ``b`` the base width (32 in the published network)::

    x (B, C, H, W, D)
      -> down_tr64:  conv C -> b,    conv b -> 2b      (full resolution)
      -> max-pool 2, down_tr128: conv 2b -> 2b, conv 2b -> 4b
      -> max-pool 2, down_tr256: conv 4b -> 4b, conv 4b -> 8b
      -> max-pool 2, down_tr512: conv 8b -> 8b, conv 8b -> 16b   (1/8 resolution)
      -> up_tr256: transposed conv 16b -> 16b (k = s = 2), conv 16b -> 8b, conv 8b -> 8b
      -> up_tr128: transposed conv 8b -> 8b,               conv 8b -> 4b,  conv 4b -> 4b
      -> up_tr64:  transposed conv 4b -> 4b,               conv 4b -> 2b,  conv 2b -> 2b
      -> out_tr: 1x1x1 conv 2b -> K
    logits (B, K, H, W, D)

Every "conv" is a 3x3x3 convolution (padding 1, with bias), a normalisation and a ReLU. The
decoder reads only the stage below it: the published code builds the U-Net's concatenation with
the encoder's skip outputs but leaves it commented out, and so does this network.

Differences from the published code, on purpose: the output is logits (theirs applies a sigmoid
in ``out_tr``; our losses take logits); the pretext-task heads of its decoder stages (a
projector, predictor and one-channel mask head per stage, used only by PCRLv2's own
pretraining and never in its segmentation forward) are not built; the default normalisation is
group norm with 8 groups, what the published 3D segmentation fine-tuning uses
(``norm='gn'``; ``norm="batch"`` gives the pretraining network's BatchNorm), with fewer groups
when a small base width leaves fewer than 8 channels. Module names follow the published
state-dict keys (``down_tr64.ops.0.conv1.weight``, ``up_tr256.up_conv.weight``, ...), so the
released PCRLv2 weights load through ``--init-checkpoint`` without a prefix map.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .registry import register_model

__all__ = ["PCRLv2", "PCRLV2_SIZES", "PCRLV2_TOTAL_STRIDE", "NORMS"]

#: Base widths: ``"paper"`` is the published network (32 -> 512 channels, ~16.8M parameters
#: for one input channel); ``"small"`` for CPU work (8 -> 128 channels, 1.05M parameters for 1 in, 4
#: out: the size and step time of ``unet3d`` ``"small"``, so that an ACDC run of 3000 steps fits a
#: 2-core CPU sitting; 16 took 3.3x unet3d small's step, measured side by side); ``"medium"`` (16 ->
#: 256, 4.19M); ``"tiny"`` for tests.
PCRLV2_SIZES = {"paper": 32, "medium": 16, "small": 8, "tiny": 4}
#: Three max-poolings: every ROI side must be a multiple of 8.
PCRLV2_TOTAL_STRIDE = 8
NORMS = ("group", "batch", "instance")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(num_groups=math.gcd(8, channels), num_channels=channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.InstanceNorm3d(channels, affine=True)


class _ConvNormReLU(nn.Module):
    """3x3x3 convolution, normalisation, ReLU (the published ``LUConv``; attribute names kept)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = _norm(norm, out_channels)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn1(self.conv1(x)))


class _DownStage(nn.Module):
    """Two convolutions ``in -> mid -> out`` at one resolution (the published ``DownTransition``)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.ops = nn.Sequential(
            _ConvNormReLU(in_channels, mid_channels, norm), _ConvNormReLU(mid_channels, out_channels, norm)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x)


class _UpStage(nn.Module):
    """Transposed convolution (x2) then two convolutions ``in -> out -> out``, no skip input
    (the published ``UpTransition`` in its segmentation mode)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(in_channels, in_channels, kernel_size=2, stride=2)
        self.ops = nn.Sequential(
            _ConvNormReLU(in_channels, out_channels, norm), _ConvNormReLU(out_channels, out_channels, norm)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(self.up_conv(x))


class _OutputHead(nn.Module):
    """1x1x1 convolution to the output channels (the published ``OutputTransition``, no sigmoid)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.final_conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)


class PCRLv2(nn.Module):
    """PCRLv2's encoder-decoder (see the module docstring for the layers).

    Args:
        in_channels: image channels C.
        out_channels: output channels K (logits).
        base_channels: width of the first convolution (32 in the published network); stage
            ``i`` of the encoder ends with ``2 ** (i + 1) * base_channels`` channels.
        norm: ``"group"`` (8 groups, default), ``"batch"`` or ``"instance"``.

    Input ``(B, C, H, W, D)`` with every side a multiple of 8; output ``(B, K, H, W, D)``.
    """

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 32, norm: str = "group"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"pcrlv2: unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        if base_channels < 1:
            raise ValueError(f"pcrlv2: base_channels must be >= 1, got {base_channels}")
        b = int(base_channels)
        self.maxpool = nn.MaxPool3d(2)
        self.down_tr64 = _DownStage(in_channels, b, 2 * b, norm)
        self.down_tr128 = _DownStage(2 * b, 2 * b, 4 * b, norm)
        self.down_tr256 = _DownStage(4 * b, 4 * b, 8 * b, norm)
        self.down_tr512 = _DownStage(8 * b, 8 * b, 16 * b, norm)
        self.up_tr256 = _UpStage(16 * b, 8 * b, norm)
        self.up_tr128 = _UpStage(8 * b, 4 * b, norm)
        self.up_tr64 = _UpStage(4 * b, 2 * b, norm)
        self.out_tr = _OutputHead(2 * b, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(side % PCRLV2_TOTAL_STRIDE for side in x.shape[2:]):
            raise ValueError(
                f"pcrlv2 needs every spatial side to be a multiple of {PCRLV2_TOTAL_STRIDE}, got {tuple(x.shape[2:])}"
            )
        x = self.down_tr64(x)
        x = self.down_tr128(self.maxpool(x))
        x = self.down_tr256(self.maxpool(x))
        x = self.down_tr512(self.maxpool(x))
        return self.out_tr(self.up_tr64(self.up_tr128(self.up_tr256(x))))


def _pcrlv2_roi_rule(options) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Sides a multiple of 8 (three poolings) and at least 16: group/instance norm in training
    needs more than one voxel at the bottleneck."""
    stride = (PCRLV2_TOTAL_STRIDE,) * 3
    return stride, tuple(2 * s for s in stride)


@register_model(
    "pcrlv2",
    description="PCRLv2's 3D network (Zhou et al. 2023): 3D U-Net-style encoder 64-512 channels, "
                "decoder without skip connections",
    roi_multiple=PCRLV2_TOTAL_STRIDE,
    test_options={"size": "tiny"},
    test_roi=(32, 32, 32),
    roi_rule=_pcrlv2_roi_rule,
    deep_supervision=(
        "PCRLv2's segmentation network has one output head; the one-channel heads on its decoder "
        "stages serve only its own pretext task and are not used when it is fine-tuned"
    ),
)
def build_pcrlv2(
    in_channels: int,
    out_channels: int,
    roi_size: Sequence[int],
    size: str = "paper",
    base_channels: int | None = None,
    norm: str = "group",
) -> nn.Module:
    """PCRLv2's network; ``size`` picks the base width (:data:`PCRLV2_SIZES`), ``base_channels``
    overrides it. Every ``roi_size`` side must be a multiple of 8 and at least 16."""
    if size not in PCRLV2_SIZES:
        raise ValueError(f"unknown size {size!r} for pcrlv2; choose one of {', '.join(PCRLV2_SIZES)}")
    if any(side % PCRLV2_TOTAL_STRIDE or side < 2 * PCRLV2_TOTAL_STRIDE for side in roi_size):
        raise ValueError(
            f"pcrlv2 needs ROI sides that are multiples of {PCRLV2_TOTAL_STRIDE} and at least "
            f"{2 * PCRLV2_TOTAL_STRIDE}, got {tuple(roi_size)}"
        )
    base = PCRLV2_SIZES[size] if base_channels is None else int(base_channels)
    return PCRLv2(in_channels, out_channels, base_channels=base, norm=norm)
