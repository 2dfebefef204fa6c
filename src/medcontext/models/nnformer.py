"""nnFormer: an interleaved convolution / volume-attention encoder-decoder for 3D segmentation.

Zhou et al., "nnFormer: Interleaved Transformer for Volumetric Segmentation" (arXiv 2109.03201),
written from the paper's description and the layer facts of the authors' public configuration.
Importing this module registers the model as ``"nnformer"`` and its token adapter for
MedContext's token-space masking.

Data flow, channels-first at every module boundary::

    x (B, C, H, W, D)
      -> patch_embed: conv embedding, two strided 3x3x3 convs (total stride = patch size)
         -> tokens (B, E, gx, gy, gz)                  <- MedContext replaces masked tokens here
      -> encoder stage 0..3: volume attention blocks (local windows, shifted in every second
         block; a window that covers the whole token grid is global attention, GV-MSA),
         a LayerNorm'd copy kept as the skip, then a strided 3x3x3 conv down-sampling (C -> 2C)
      -> decoder stage 2..0: transposed-conv up-sampling (2C -> C), one skip-attention block
         (query: up-sampled decoder tokens; keys/values: the encoder skip), then shifted-window
         self-attention blocks
      -> heads: transposed convs (kernel = stride = patch) back to voxels
    logits (B, K, H, W, D); in training with ``deep_supervision`` a list
    [full, 1/2, 1/4] (each at its own resolution, full resolution first).

Differences from the authors' code, on purpose: the relative-position index is the exact
3D one (theirs folds offsets with ad-hoc multipliers); tokens added by padding a grid up to a
multiple of the window are masked out of attention (theirs attend to zero tokens); the skip
attention normalises query and skip with two LayerNorms (theirs shares one); the decoder of
every preset mirrors the encoder's heads (their BraTS decoder doubles them); odd grid sizes
are handled generically (floor on the way down, matching sizes on the way up), which
reproduces their ACDC special cases.
"""

from __future__ import annotations

import difflib
from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import DropPath
from torch import nn

from medcontext.method.masking import as_triple
from medcontext.method.adapters import TokenAdapter, register_token_adapter
from medcontext.models.registry import register_model

__all__ = ["NnFormer", "PRESETS", "PRESET_ROI", "build_nnformer", "check_roi", "count_parameters"]

Triple = tuple[int, int, int]

#: Architecture presets, axes in MONAI's (H, W, D) order. nnFormer's own configs list axes as
#: (D, H, W); they are permuted here (Synapse crop 64x128x128 -> ours 128x128x64).
PRESETS: dict[str, dict] = {
    # CPU-sized: ~2M parameters, for 32^3..64^3 crops.
    "small": dict(
        patch_size=(2, 2, 2),
        embed_dim=24,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        window_size=(4, 4, 8, 4),
        down_strides=((2, 2, 2), (2, 2, 2), (2, 2, 2)),
        deep_supervision=True,
        drop_path_rate=0.0,
    ),
    # Synapse multi-organ CT (the 150.5M model of the nnFormer paper, also used by MedContext).
    "synapse": dict(
        patch_size=(4, 4, 2),
        embed_dim=192,
        depths=(2, 2, 2, 2),
        num_heads=(6, 12, 24, 48),
        window_size=(4, 4, 8, 4),
        down_strides=((2, 2, 2), (2, 2, 2), (2, 2, 2)),
        deep_supervision=True,
        drop_path_rate=0.2,
    ),
    # ACDC cardiac MRI: thick slices, so no depth striding in the embedding and the first
    # down-sampling; anisotropic windows (the two deepest cover their whole grid).
    "acdc": dict(
        patch_size=(4, 4, 1),
        embed_dim=96,
        depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24),
        window_size=((5, 5, 3), (5, 5, 3), (10, 10, 7), (5, 5, 3)),
        down_strides=((2, 2, 1), (2, 2, 2), (2, 2, 2)),
        deep_supervision=False,
        drop_path_rate=0.2,
    ),
    # Brain tumour (MSD Task01 / BraTS), isotropic.
    "tumor": dict(
        patch_size=(4, 4, 4),
        embed_dim=96,
        depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24),
        window_size=(4, 4, 8, 4),
        down_strides=((2, 2, 2), (2, 2, 2), (2, 2, 2)),
        deep_supervision=False,
        drop_path_rate=0.2,
    ),
}

#: The training crop each preset was designed for, (H, W, D) voxels.
PRESET_ROI: dict[str, Triple] = {
    "small": (64, 64, 64),
    "synapse": (128, 128, 64),
    "acdc": (160, 160, 14),
    "tumor": (128, 128, 128),
}

_MASKED = -1e4  # attention logit for excluded keys: exp() underflows to 0, no NaN in fp16


# ----------------------------------------------------------------------------- small layers


class LayerNorm3d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first volume ``(B, C, X, Y, Z)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class Mlp(nn.Sequential):
    """Token-wise feed-forward ``dim -> hidden -> dim`` with GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class ConvPatchEmbedding(nn.Module):
    """nnFormer's convolutional embedding: voxels to tokens.

    Two stages of (strided 3x3x3 conv, GELU, LN, 3x3x3 conv); GELU and LN follow every conv
    except the last, and a LayerNorm closes the embedding. The two strides multiply to the
    patch size per axis (4 -> 2*2, 2 -> 2*1, 1 -> 1*1), so small convolutions with
    overlapping receptive fields replace the single large-stride projection of a ViT.

    Args:
        in_channels: image channels C.
        embed_dim: token width E (the first stage has E // 2 channels).
        patch_size: voxels per token along each axis.

    Shapes:
        ``(B, C, H, W, D) -> (B, E, H/px, W/py, D/pz)``; every side must be a multiple of the patch.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: Triple) -> None:
        super().__init__()
        second = tuple(2 if p >= 4 and p % 2 == 0 else 1 for p in patch_size)
        first = tuple(p // s for p, s in zip(patch_size, second))
        mid = max(embed_dim // 2, 1)
        self.patch_size = tuple(patch_size)
        self.strides = (first, second)
        self.conv1 = nn.Conv3d(in_channels, mid, 3, stride=first, padding=1)
        self.norm1 = LayerNorm3d(mid)
        self.conv2 = nn.Conv3d(mid, mid, 3, padding=1)
        self.norm2 = LayerNorm3d(mid)
        self.conv3 = nn.Conv3d(mid, embed_dim, 3, stride=second, padding=1)
        self.norm3 = LayerNorm3d(embed_dim)
        self.conv4 = nn.Conv3d(embed_dim, embed_dim, 3, padding=1)
        self.norm = LayerNorm3d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(F.gelu(self.conv1(x)))
        x = self.norm2(F.gelu(self.conv2(x)))
        x = self.norm3(F.gelu(self.conv3(x)))
        return self.norm(self.conv4(x))


class DownSampling(nn.Module):
    """GELU, LayerNorm, then a strided conv that doubles the channels (the paper's down-sampling layer).

    Along a stride-2 axis the kernel is 3 and an odd size is floored (7 -> 3); along a stride-1
    axis the kernel is 1. Shapes: channels-last ``(B, X, Y, Z, C) -> (B, X', Y', Z', 2C)``.
    """

    def __init__(self, dim: int, stride: Triple) -> None:
        super().__init__()
        self.stride = tuple(stride)
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv3d(dim, 2 * dim, tuple(3 if s == 2 else 1 for s in stride), stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.gelu(x)).permute(0, 4, 1, 2, 3)
        pad: list[int] = []
        for size, s in zip(reversed(x.shape[2:]), reversed(self.stride)):
            p = 1 if s == 2 and size % 2 == 0 else 0
            pad += [p, p]
        return self.conv(F.pad(x, pad)).permute(0, 2, 3, 4, 1)


class UpSampling(nn.Module):
    """LayerNorm and a transposed conv (kernel = stride) that halves the channels.

    Shapes: channels-last ``(B, X, Y, Z, 2C) -> (B, *out_grid, C)``; ``out_grid`` is the
    matching encoder skip's grid (one voxel more than ``stride * X`` where the skip was odd).
    """

    def __init__(self, dim: int, stride: Triple) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.ConvTranspose3d(dim, dim // 2, tuple(stride), stride=tuple(stride))

    def forward(self, x: torch.Tensor, out_grid: Sequence[int]) -> torch.Tensor:
        x = self.norm(x).permute(0, 4, 1, 2, 3)
        return self.up(x, output_size=list(out_grid)).permute(0, 2, 3, 4, 1)


# ----------------------------------------------------------------------------- windows


def _partition(x: torch.Tensor, window: Triple) -> torch.Tensor:
    """``(B, X, Y, Z, C)`` (sides multiples of ``window``) -> ``(B, nW, wx*wy*wz, C)``."""
    b, gx, gy, gz, c = x.shape
    wx, wy, wz = window
    x = x.view(b, gx // wx, wx, gy // wy, wy, gz // wz, wz, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, wx * wy * wz, c)


def _merge(windows: torch.Tensor, window: Triple, grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`_partition`: ``(B, nW, N, C) -> (B, X, Y, Z, C)``."""
    b, _, _, c = windows.shape
    (wx, wy, wz), (gx, gy, gz) = window, grid
    x = windows.view(b, gx // wx, gy // wy, gz // wz, wx, wy, wz, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, gx, gy, gz, c)


def _padding(grid: Sequence[int], window: Triple) -> Triple:
    return tuple((-g) % w for g, w in zip(grid, window))  # type: ignore[return-value]


def _attention_mask(
    grid: Sequence[int], window: Triple, shift: Triple, device: torch.device
) -> torch.Tensor | None:
    """Additive mask ``(nW, N, N)`` for (shifted) window attention on a padded grid.

    A key is excluded when it is a padding token, or when (after the cyclic shift) it comes
    from a different region of the volume than the query. None when nothing is excluded.
    """
    pad = _padding(grid, window)
    if not any(pad) and not any(shift):
        return None
    padded = [g + p for g, p in zip(grid, pad)]
    region = torch.zeros(padded, dtype=torch.long, device=device)
    valid = torch.zeros(padded, dtype=torch.bool, device=device)
    valid[: grid[0], : grid[1], : grid[2]] = True
    for axis, (w, s) in enumerate(zip(window, shift)):
        if s == 0:
            continue
        index = torch.zeros(padded[axis], dtype=torch.long, device=device)
        index[padded[axis] - w : padded[axis] - s] = 1
        index[padded[axis] - s :] = 2
        shape = [1, 1, 1]
        shape[axis] = -1
        region = region * 3 + index.view(shape)
    if any(shift):
        valid = torch.roll(valid, shifts=[-s for s in shift], dims=(0, 1, 2))
    region_w = _partition(region[None, ..., None], window)[0, ..., 0]  # (nW, N)
    valid_w = _partition(valid[None, ..., None], window)[0, ..., 0]
    allowed = (region_w[:, :, None] == region_w[:, None, :]) & valid_w[:, None, :]
    return torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, _MASKED)


class WindowAttention(nn.Module):
    """Multi-head attention inside 3D windows with a learned relative position bias.

    Self-attention projects q, k and v from the same tokens. With ``skip_attention`` the
    queries are the (normalised) decoder tokens themselves and only keys and values are
    projected, from the encoder skip (the paper's skip attention).

    Args:
        dim: token width C.
        num_heads: attention heads (must divide ``dim``).
        window: window size (wx, wy, wz) in tokens.
        skip_attention: queries come from another tensor than keys/values.
        qkv_bias: bias in the q/k/v projections.

    Shapes:
        ``query (B, nW, N, C)``, ``source (B, nW, N, C)`` (None: same as query),
        ``mask (nW, N, N)`` or None -> ``(B, nW, N, C)``, ``N = wx*wy*wz``.
    """

    def __init__(
        self, dim: int, num_heads: int, window: Triple, skip_attention: bool = False, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = tuple(window)
        self.skip_attention = skip_attention
        if skip_attention:
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        wx, wy, wz = window
        self.relative_position_bias = nn.Parameter(torch.zeros((2 * wx - 1) * (2 * wy - 1) * (2 * wz - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias, std=0.02)
        coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij")).flatten(1)  # (3, N)
        rel = coords[:, :, None] - coords[:, None, :] + torch.tensor([wx - 1, wy - 1, wz - 1])[:, None, None]
        index = (rel[0] * (2 * wy - 1) + rel[1]) * (2 * wz - 1) + rel[2]
        self.register_buffer("relative_position_index", index, persistent=False)

    def forward(
        self, query: torch.Tensor, source: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, nw, n, c = query.shape
        h = self.num_heads
        if self.skip_attention:
            if source is None:
                raise ValueError("skip attention needs the encoder skip tokens as `source`")
            q = query.view(b, nw, n, h, c // h).transpose(2, 3)
            k, v = self.kv(source).view(b, nw, n, 2, h, c // h).permute(3, 0, 1, 4, 2, 5)
        else:
            q, k, v = self.qkv(query).view(b, nw, n, 3, h, c // h).permute(3, 0, 1, 4, 2, 5)
        bias = self.relative_position_bias[self.relative_position_index.view(-1)].view(n, n, h).permute(2, 0, 1)
        bias = bias.to(q.dtype)
        if mask is not None:
            bias = bias[None] + mask[:, None].to(q.dtype)  # (nW, h, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, nW, h, N, c/h)
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


class VolumeAttentionBlock(nn.Module):
    """Pre-norm transformer block on 3D token windows: LV-MSA, shifted LV-MSA, GV-MSA or skip attention.

    The window is fixed at construction; a grid that is not a multiple of it is padded, and the
    padding is masked out of attention. A window equal to the whole grid is global attention.

    Args:
        dim: token width C.
        num_heads: attention heads.
        window: window size in tokens.
        shift: cyclic shift per axis (0: regular windows; half the window: shifted windows).
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        drop_path: stochastic-depth probability of both residual branches.
        skip_attention: the first decoder block: queries from the up-sampled decoder tokens,
            keys/values from the encoder skip, residual = their sum.

    Shapes: channels-last ``(B, X, Y, Z, C)`` in and out (``skip`` the same shape).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Triple,
        shift: Triple = (0, 0, 0),
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        skip_attention: bool = False,
    ) -> None:
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(shift)
        self.skip_attention = skip_attention
        self.norm1 = nn.LayerNorm(dim)
        self.norm_skip = nn.LayerNorm(dim) if skip_attention else None
        self.attn = WindowAttention(dim, num_heads, self.window, skip_attention=skip_attention)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _to_windows(self, x: torch.Tensor) -> torch.Tensor:
        px, py, pz = _padding(x.shape[1:4], self.window)
        if px or py or pz:
            x = F.pad(x, (0, 0, 0, pz, 0, py, 0, px))
        if any(self.shift):
            x = torch.roll(x, shifts=[-s for s in self.shift], dims=(1, 2, 3))
        return _partition(x, self.window)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        grid = x.shape[1:4]
        mask = _attention_mask(grid, self.window, self.shift, x.device)
        if self.skip_attention:
            if skip is None or skip.shape != x.shape:
                raise ValueError(f"skip attention needs an encoder skip of shape {tuple(x.shape)}, got "
                                 f"{None if skip is None else tuple(skip.shape)}")
            shortcut = x + skip
            out = self.attn(self._to_windows(self.norm1(x)), self._to_windows(self.norm_skip(skip)), mask)
        else:
            shortcut = x
            out = self.attn(self._to_windows(self.norm1(x)), None, mask)
        padded = [g + p for g, p in zip(grid, _padding(grid, self.window))]
        out = _merge(out, self.window, padded)
        if any(self.shift):
            out = torch.roll(out, shifts=list(self.shift), dims=(1, 2, 3))
        out = out[:, : grid[0], : grid[1], : grid[2]]
        x = shortcut + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x)))


# ----------------------------------------------------------------------------- stages


def _stage_window(window: Triple, grid: Sequence[int]) -> tuple[Triple, Triple]:
    """Window clamped to the grid, and the shift of shifted blocks (0 along axes the window covers)."""
    w = tuple(min(wi, gi) for wi, gi in zip(window, grid))
    shift = tuple(wi // 2 if gi > wi else 0 for wi, gi in zip(w, grid))
    return w, shift  # type: ignore[return-value]


class EncoderStage(nn.Module):
    """Volume attention blocks (regular, then shifted windows, alternating), the skip's
    LayerNorm, and the down-sampling conv (None at the bottleneck)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: Triple, grid: Sequence[int],
                 mlp_ratio: float, drop_paths: Sequence[float], down_stride: Triple | None) -> None:
        super().__init__()
        window, shift = _stage_window(window, grid)
        self.blocks = nn.ModuleList(
            VolumeAttentionBlock(dim, num_heads, window, shift if i % 2 else (0, 0, 0), mlp_ratio, drop_paths[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.downsample = DownSampling(dim, down_stride) if down_stride is not None else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, X, Y, Z, C) -> (skip (B, X, Y, Z, C), down (B, X', Y', Z', 2C) or None)``."""
        for block in self.blocks:
            x = block(x)
        return self.norm(x), (self.downsample(x) if self.downsample is not None else None)


class DecoderStage(nn.Module):
    """Up-sampling, one skip-attention block, then shifted-window self-attention blocks."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: Triple, grid: Sequence[int],
                 mlp_ratio: float, drop_paths: Sequence[float], up_stride: Triple) -> None:
        super().__init__()
        window, shift = _stage_window(window, grid)
        self.upsample = UpSampling(2 * dim, up_stride)
        no_shift = (0, 0, 0)
        blocks = [VolumeAttentionBlock(dim, num_heads, window, no_shift, mlp_ratio, drop_paths[0], skip_attention=True)]
        blocks += [VolumeAttentionBlock(dim, num_heads, window, shift, mlp_ratio, drop_paths[i])
                   for i in range(1, depth)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x (B, X', Y', Z', 2C)``, ``skip (B, X, Y, Z, C)`` -> ``(B, X, Y, Z, C)``."""
        x = self.blocks[0](self.upsample(x, skip.shape[1:4]), skip)
        for block in self.blocks[1:]:
            x = block(x)
        return x


# ----------------------------------------------------------------------------- network


def _per_stage(value, count: int, name: str) -> list[Triple]:
    """One (x, y, z) triple per stage from an int, one triple (when ``count != 3``) or ``count`` entries."""
    if isinstance(value, int):
        return [as_triple(value, name)] * count
    value = list(value)
    if count != 3 and len(value) == 3 and all(isinstance(v, int) for v in value):
        return [as_triple(value, name)] * count
    if len(value) != count:
        raise ValueError(f"{name} needs {count} entries (one per stage, each an int or 3 ints), got {value!r}")
    return [as_triple(v, name) for v in value]


def _token_grids(roi: Triple, patch: Triple, down_strides: Sequence[Triple]) -> list[Triple]:
    grids = [tuple(r // p for r, p in zip(roi, patch))]
    for stride in down_strides:
        grids.append(tuple(g // s for g, s in zip(grids[-1], stride)))
    return grids  # type: ignore[return-value]


class NnFormer(nn.Module):
    """nnFormer segmentation network (Zhou et al., 2021).

    Args:
        in_channels: image channels C.
        out_channels: output channels K (classes incl. background, or sigmoid regions).
        roi_size: the training crop (H, W, D) in voxels; fixes the stage windows (a window
            larger than its stage grid is clamped to it and becomes global attention).
            Other input sizes work if every side is a multiple of the patch.
        patch_size: voxels per token (the embedding's total stride).
        embed_dim: token width E of stage 0; stage i has ``E * 2**i`` channels.
        depths: blocks per encoder stage (4 stages); the decoder mirrors stages 0-2.
        num_heads: attention heads per stage.
        window_size: window per stage, each an int or (wx, wy, wz) tokens.
        down_strides: stride of the 3 down-samplings: an int, or 3 entries each an int or
            (sx, sy, sz); 1 or 2 per axis (an odd grid side is floored, 7 -> 3).
        mlp_ratio: MLP width relative to the token width.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
        deep_supervision: build the 1/2 and 1/4 heads; in training mode ``forward`` then
            returns ``[full, half, quarter]`` logits; in eval mode always the full tensor.

    Shapes:
        ``(B, C, H, W, D) -> (B, K, H, W, D)`` (or the deep-supervision list).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        roi_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = (2, 2, 2),
        embed_dim: int = 24,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        window_size=(4, 4, 8, 4),
        down_strides=((2, 2, 2), (2, 2, 2), (2, 2, 2)),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        roi = as_triple(roi_size, "roi_size")
        patch = as_triple(patch_size, "patch_size")
        depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
        if len(depths) != 4 or len(num_heads) != 4 or min(depths) < 1:
            raise ValueError(f"depths and num_heads need 4 entries (one per stage, depths >= 1), "
                             f"got {depths}, {num_heads}")
        windows = _per_stage(window_size, 4, "window_size")
        strides = _per_stage(down_strides, 3, "down_strides")
        if in_channels < 1 or out_channels < 1 or embed_dim < 2:
            raise ValueError(f"need in_channels, out_channels >= 1 and embed_dim >= 2, "
                             f"got {in_channels}, {out_channels}, {embed_dim}")
        if any(s not in (1, 2) for st in strides for s in st):
            raise ValueError(f"down_strides entries must be 1 or 2 per axis, got {strides}")
        if min(patch) < 1 or min(w for win in windows for w in win) < 1:
            raise ValueError(f"patch_size and window_size must be >= 1, got {patch}, {windows}")
        dims = [embed_dim * 2**i for i in range(4)]
        bad = [(d, h) for d, h in zip(dims, num_heads) if h < 1 or d % h]
        if bad:
            raise ValueError(f"num_heads must divide the stage widths {dims}, got num_heads={num_heads}; "
                             f"e.g. num_heads={[max(1, d // 32) for d in dims]}")
        check_roi(roi, patch, strides)

        self.in_channels, self.out_channels = in_channels, out_channels
        self.roi_size, self.patch_size, self.embed_dim = roi, patch, embed_dim
        self.down_strides = tuple(strides)
        self.deep_supervision = bool(deep_supervision)
        grids = _token_grids(roi, patch, strides)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        offsets = [sum(depths[:i]) for i in range(4)]

        self.patch_embed = ConvPatchEmbedding(in_channels, embed_dim, patch)
        self.encoder = nn.ModuleList(
            EncoderStage(dims[i], depths[i], num_heads[i], windows[i], grids[i], mlp_ratio,
                         rates[offsets[i]: offsets[i] + depths[i]], strides[i] if i < 3 else None)
            for i in range(4)
        )
        # decoder[i] rebuilds encoder level i (i = 2, 1, 0 in forward order)
        self.decoder = nn.ModuleList(
            DecoderStage(dims[i], depths[i], num_heads[i], windows[i], grids[i], mlp_ratio,
                         rates[offsets[i]: offsets[i] + depths[i]], strides[i])
            for i in range(3)
        )
        levels = 3 if self.deep_supervision else 1
        self.heads = nn.ModuleList(
            nn.ConvTranspose3d(dims[i], out_channels, patch, stride=patch) for i in range(levels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, K, H, W, D)``; in training with deep supervision ``[full, 1/2, 1/4]``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"nnFormer expects (B, {self.in_channels}, H, W, D), got {tuple(x.shape)}")
        check_roi(x.shape[2:], self.patch_size, self.down_strides, what="input size")
        tokens = self.patch_embed(x).permute(0, 2, 3, 4, 1)  # (B, gx, gy, gz, E)
        skips = []
        for stage in self.encoder:
            skip, tokens = stage(tokens)
            skips.append(skip)
        y = skips[3]
        outputs = []
        for level in (2, 1, 0):
            y = self.decoder[level](y, skips[level])
            outputs.append(y)
        outputs.reverse()  # level 0 (full resolution) first
        if self.training and self.deep_supervision:
            return [head(out.permute(0, 4, 1, 2, 3)) for head, out in zip(self.heads, outputs)]
        return self.heads[0](outputs[0].permute(0, 4, 1, 2, 3))


def check_roi(roi: Sequence[int], patch: Triple, down_strides: Sequence[Triple], what: str = "roi_size") -> None:
    """Raise a ValueError naming the fix when ``roi`` does not fit the patch and down-sampling."""
    roi = tuple(int(r) for r in roi)
    if any(r % p for r, p in zip(roi, patch)):
        fix = tuple(max(p, (r // p) * p) for r, p in zip(roi, patch))
        raise ValueError(f"nnFormer needs every ROI side to be a multiple of the patch size {patch} "
                         f"(voxels per token); got {what}={roi}; choose e.g. {fix} or another patch_size")
    halvings = [sum(1 for st in down_strides if st[a] == 2) for a in range(3)]
    minimum = tuple(p * 2**h for p, h in zip(patch, halvings))
    if any(r < m for r, m in zip(roi, minimum)):
        raise ValueError(f"{what}={roi} is too small for patch_size={patch} and {halvings} down-samplings per "
                         f"axis (strides {list(down_strides)}): each side needs at least {minimum} voxels; "
                         f"use a larger ROI, a smaller patch_size, or stride 1 along the short axis")


# ----------------------------------------------------------------------------- registry


_OPTIONS = ("patch_size", "embed_dim", "depths", "num_heads", "window_size", "down_strides",
            "mlp_ratio", "drop_path_rate", "deep_supervision")


def _roi_rule(options) -> tuple[Triple, Triple]:
    """Crop planning: sides a multiple of ``patch * 2^halvings`` (whole windows at every
    stage), at least that much; the builder itself accepts any multiple of the patch above
    the minimum of :func:`check_roi`."""
    preset = options.get("preset") or {"paper": "synapse"}.get(options.get("size"), "small")
    config = {**PRESETS.get(preset, PRESETS["small"]), **{k: v for k, v in options.items() if k in _OPTIONS}}
    patch = as_triple(config["patch_size"], "patch_size")
    strides = _per_stage(config["down_strides"], 3, "down_strides")
    halvings = [sum(1 for st in strides if st[a] == 2) for a in range(3)]
    multiple = tuple(p * 2**h for p, h in zip(patch, halvings))
    return multiple, multiple  # type: ignore[return-value]


@register_model(
    "nnformer",
    description="nnFormer (Zhou et al.): conv embedding, interleaved local/global volume attention, "
                "skip attention, deep supervision; presets small|synapse|acdc|tumor",
    roi_multiple=1,  # preset-dependent (the patch size); checked precisely by the builder
    test_options=dict(preset="small", embed_dim=8, num_heads=(1, 1, 2, 2), depths=(2, 2, 2, 2)),
    test_roi=(32, 32, 32),
    roi_rule=_roi_rule,
    deep_supervision=True,
)
def build_nnformer(
    in_channels: int,
    out_channels: int,
    roi_size: Sequence[int] | int,
    preset: str | None = None,
    size: str | None = None,
    **options,
) -> NnFormer:
    """Build :class:`NnFormer` from a preset (see :data:`PRESETS`); ``options`` override its values.

    ``size`` is the registry-wide size vocabulary of the other models: ``"paper"`` means the
    Synapse preset, ``"small"`` and ``"tiny"`` the CPU preset; an explicit ``preset`` wins.

    Raises:
        ValueError: unknown preset or option (with the closest valid name), or an ROI that does
            not fit the patch size and down-sampling.
    """
    if preset is None:
        sizes = {"paper": "synapse", "small": "small", "tiny": "small", None: "small"}
        if size not in sizes:
            raise ValueError(f"unknown nnFormer size {size!r}; choose paper, small or tiny (or a preset: {', '.join(PRESETS)})")
        preset = sizes[size]
    if preset not in PRESETS:
        close = difflib.get_close_matches(str(preset), list(PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown nnFormer preset {preset!r}; choose one of {', '.join(PRESETS)}.{hint}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], _OPTIONS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown nnFormer option(s) {unknown}; valid options: {', '.join(_OPTIONS)}.{hint}")
    config = {**PRESETS[preset], **options}
    try:
        return NnFormer(in_channels, out_channels, roi_size, **config)
    except ValueError as err:
        raise ValueError(f"nnFormer preset {preset!r} with options {options}: {err}") from err


def count_parameters(preset: str, in_channels: int = 1, out_channels: int = 14,
                     roi_size: Sequence[int] | int | None = None, **options) -> int:
    """Number of parameters of a preset, built on the meta device (no memory, ~0.1 s).

    Args:
        preset: a key of :data:`PRESETS`.
        in_channels: image channels.
        out_channels: output channels (the nnFormer Synapse model has 14).
        roi_size: defaults to the preset's crop (:data:`PRESET_ROI`).
        **options: overrides, as for :func:`build_nnformer`.
    """
    roi = PRESET_ROI.get(preset, (64, 64, 64)) if roi_size is None else roi_size
    with torch.device("meta"):
        model = build_nnformer(in_channels, out_channels, roi, preset=preset, **options)
    return sum(p.numel() for p in model.parameters())


register_token_adapter(
    NnFormer,
    TokenAdapter(
        embedding_module=lambda net: net.patch_embed,
        token_patch=lambda net: net.patch_size,
        embed_dim=lambda net: net.embed_dim,
        in_channels=lambda net: net.in_channels,
        layout="channels_first",
        # docs/method.md: one mask cell per embedding patch, as the nnFormer authors' masking did
        default_mask_cell=lambda net: net.patch_size,
    ),
)

