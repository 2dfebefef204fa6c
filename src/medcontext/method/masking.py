"""Tube masking (paper section 3.2, docs/method.md).

A mask is a boolean tensor over a 3D grid of cells, ``True`` = masked. It is drawn over the 2D
grid of the two in-plane axes and repeated along the depth axis, so a masked position stays
masked on every slice. :class:`InputMasker` replaces masked voxel cubes of the image by a
learnable cube; token-space masking lives in :mod:`medcontext.method.token_masking`.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

__all__ = ["tube_mask", "upsample_mask", "grid_shape", "as_triple", "InputMasker", "default_cell_size"]

MaskMode = Literal["exact", "bernoulli"]


def as_triple(value: int | Sequence[int], name: str = "size") -> tuple[int, int, int]:
    """``(v, v, v)`` for an int, else the 3 sizes of a sequence (H, W, D); anything else raises."""
    if isinstance(value, int):
        return (value, value, value)
    triple = tuple(int(v) for v in value)
    if len(triple) != 3:
        raise ValueError(f"{name} must be an int or 3 sizes (H, W, D), got {value!r}")
    return triple  # type: ignore[return-value]


def _spatial_axis(depth_axis: int, ndim: int = 3) -> int:
    if not -ndim <= depth_axis < ndim:
        raise ValueError(f"depth_axis must be a spatial axis in [-{ndim}, {ndim - 1}], got {depth_axis}")
    return depth_axis % ndim


def checked_mask_request(batch: int, grid: Sequence[int], ratio: float) -> tuple[int, int, int]:
    """``grid`` as three ints, after checking a mask request (batch >= 1, 3 positive sizes, ratio in [0, 1])."""
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be 3 positive sizes, got {grid}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return grid


def tube_mask(
    batch: int,
    grid: Sequence[int],
    ratio: float,
    depth_axis: int = -1,
    mode: MaskMode = "exact",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one tube mask per sample.

    Args:
        batch: number of samples B.
        grid: 3D grid shape ``(gx, gy, gz)`` in mask cells.
        ratio: fraction of in-plane positions to mask, in [0, 1].
        depth_axis: spatial axis the tubes run along (default: the last, axial slices in RAS).
        mode: ``"exact"`` masks exactly ``round(ratio * N)`` of the N in-plane positions;
            ``"bernoulli"`` masks each position independently with probability ``ratio``.
        generator: optional seeded CPU generator for reproducible masks.

    Returns:
        Bool tensor ``(B, gx, gy, gz)`` on the CPU, True = masked, constant along ``depth_axis``.
    """
    grid = checked_mask_request(batch, grid, ratio)
    axis = _spatial_axis(depth_axis)
    plane = [g for i, g in enumerate(grid) if i != axis]
    n_plane = plane[0] * plane[1]
    if mode == "exact":
        n_masked = int(round(ratio * n_plane))
        order = torch.rand(batch, n_plane, generator=generator).argsort(dim=1)
        flat = torch.zeros(batch, n_plane, dtype=torch.bool)
        flat.scatter_(1, order[:, :n_masked], True)
    elif mode == "bernoulli":
        flat = torch.rand(batch, n_plane, generator=generator) < ratio
    else:
        raise ValueError(f"mask mode must be 'exact' or 'bernoulli', got {mode!r}")
    mask2d = flat.view(batch, *plane).unsqueeze(axis + 1)
    return mask2d.expand(batch, *grid).contiguous()


def grid_shape(spatial: Sequence[int], cell: Sequence[int]) -> tuple[int, int, int]:
    """Number of cells per axis covering ``spatial`` voxels (the last cell may be partial)."""
    return tuple(-(-int(s) // int(c)) for s, c in zip(spatial, cell))  # type: ignore[return-value]


def upsample_mask(mask: torch.Tensor, factor: Sequence[int], size: Sequence[int] | None = None) -> torch.Tensor:
    """Repeat each cell of ``mask`` (B, gx, gy, gz) ``factor`` times per axis, cropped to ``size``."""
    out = mask
    for axis, f in enumerate(factor, start=1):
        if f != 1:
            out = out.repeat_interleave(int(f), dim=axis)
    if size is not None:
        out = out[:, : size[0], : size[1], : size[2]]
    return out


def default_cell_size(roi_size: Sequence[int] | None, preferred: int = 16, min_cells: int = 4) -> tuple[int, int, int]:
    """Input-space cell size: ``preferred`` voxels per axis, halved on an axis (down to 2)
    while the ROI would hold fewer than ``min_cells`` cells along it (docs/method.md: smaller when the
    ROI is small)."""
    if roi_size is None:
        return (preferred,) * 3  # type: ignore[return-value]
    cells = []
    for side in roi_size:
        cell = preferred
        while cell > 2 and side / cell < min_cells:
            cell //= 2
        cells.append(cell)
    return tuple(cells)  # type: ignore[return-value]


class InputMasker(nn.Module):
    """Replaces masked voxel cubes by a learnable cube (paper Eq. 1 in input space).

    Args:
        in_channels: image channels C.
        cell_size: voxels per mask cell ``(Px, Py, Pz)``; the token has shape (C, Px, Py, Pz).
    """

    def __init__(self, in_channels: int, cell_size: Sequence[int]):
        super().__init__()
        cell = tuple(int(c) for c in cell_size)
        if len(cell) != 3 or min(cell) < 1:
            raise ValueError(f"cell_size must be 3 positive sizes, got {cell_size}")
        self.cell_size = cell
        self.mask_token = nn.Parameter(torch.zeros(in_channels, *cell))

    def grid(self, spatial: Sequence[int]) -> tuple[int, int, int]:
        """Mask grid for an image of spatial size ``(H, W, D)``."""
        return grid_shape(spatial, self.cell_size)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked view ``X_M`` (B, C, H, W, D) of ``images`` for ``mask`` (B, gx, gy, gz)."""
        spatial = images.shape[2:]
        expected = self.grid(spatial)
        if tuple(mask.shape[1:]) != expected or mask.shape[0] != images.shape[0]:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match images {tuple(images.shape)} with "
                f"cell size {self.cell_size}: expected {(images.shape[0], *expected)}"
            )
        voxel_mask = upsample_mask(mask.to(images.device), self.cell_size, spatial).unsqueeze(1)
        token = self.mask_token.to(images.dtype).repeat(1, *expected)[:, : spatial[0], : spatial[1], : spatial[2]]
        return torch.where(voxel_mask, token.unsqueeze(0), images)
