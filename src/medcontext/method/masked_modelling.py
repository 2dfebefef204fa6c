"""Masked volume modelling: the self-supervised pretext task of ``medcontext pretrain``.

SimMIM-style (Xie et al. 2022): cells of the input volume are masked, the network reconstructs
the whole volume, and the loss is the mean absolute error (L1) on the masked voxels only. The
network is any segmentation network built with as many output channels as the image has
channels: its own output layer (a 1x1x1 convolution in every registered model) is the light
reconstruction head, and everything below it is what the pretraining teaches. The target is the
preprocessed image itself (no per-patch normalisation).

Masks are drawn on a grid of cells, ``True`` = masked: ``"cube"`` masks exactly
``round(ratio * N)`` of the N cells of each sample, independently in 3D (SimMIM's and MAE's
random patches); ``"tube"`` masks in-plane positions through every slice
(:func:`~medcontext.method.masking.tube_mask`, MedContext's masks). Masked cells are replaced
as MedContext replaces them (:mod:`~medcontext.method.masking`,
:mod:`~medcontext.method.token_masking`): by a learnable token after the patch embedding where
the network has a token adapter (SimMIM's mask token; raw-input paths see the input-space
token), else by a learnable voxel cube in input space.

Why not MONAI's pieces: ``RandCoarseDropoutd`` drops a random number of holes of random size
that may overlap, so neither the masked fraction nor the masked set is known to the loss, and
it cannot put a token after a patch embedding; ``MaskedAutoEncoderViT`` / ``ViTAutoEnc`` are ViTs
of their own whose weights would need a key map onto UNETR's ``vit.*`` and leave UNETR's CNN
decoder untrained, while masking UNETR's own ViT here pretrains the network that is fine-tuned,
under its own key names.

Tensors in, loss out: nothing here knows data loading or the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .adapters import TokenAdapter, find_token_adapter
from .losses import first_head
from .masking import InputMasker, as_triple, checked_mask_request, default_cell_size, tube_mask, upsample_mask
from .teacher import unwrap_model
from .token_masking import TokenMasker

__all__ = ["MASK_SHAPES", "MaskedVolumeModelling", "PretextOutput", "cube_mask", "masked_l1"]

MASK_SHAPES = ("cube", "tube")


def cube_mask(
    batch: int, grid: Sequence[int], ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mask exactly ``round(ratio * N)`` of the ``N = gx * gy * gz`` cells of each sample.

    Args:
        batch: number of samples B.
        grid: 3D grid shape ``(gx, gy, gz)`` in mask cells.
        ratio: fraction of cells to mask, in [0, 1].
        generator: optional seeded CPU generator for reproducible masks.

    Returns:
        Bool tensor ``(B, gx, gy, gz)`` on the CPU, True = masked.
    """
    grid = checked_mask_request(batch, grid, ratio)
    cells = grid[0] * grid[1] * grid[2]
    order = torch.rand(batch, cells, generator=generator).argsort(dim=1)
    flat = torch.zeros(batch, cells, dtype=torch.bool)
    flat.scatter_(1, order[:, : int(round(ratio * cells))], True)
    return flat.view(batch, *grid)


def masked_l1(reconstruction: torch.Tensor, target: torch.Tensor, voxel_mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked voxels (every channel), a scalar.

    Args:
        reconstruction: network output ``(B, C, H, W, D)``.
        target: the unmasked images ``(B, C, H, W, D)``.
        voxel_mask: bool ``(B, 1, H, W, D)`` or ``(B, C, H, W, D)``, True = masked.

    Raises:
        ValueError: shapes differ, or no voxel is masked (the loss would be undefined).
    """
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"reconstruction {tuple(reconstruction.shape)} and target {tuple(target.shape)} differ: build the "
            "network with as many output channels as the image has channels"
        )
    weights = voxel_mask.to(reconstruction.dtype).expand_as(reconstruction)
    count = weights.sum()
    if count == 0:
        raise ValueError("masked_l1: no voxel is masked (mask ratio 0 or fewer cells than one)")
    return ((reconstruction - target).abs() * weights).sum() / count


@dataclass
class PretextOutput:
    """One pretext step: the loss, the reconstruction ``(B, C, H, W, D)`` and the voxel mask
    ``(B, 1, H, W, D)`` (bool, True = masked)."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    voxel_mask: torch.Tensor


class MaskedVolumeModelling(nn.Module):
    """Mask, reconstruct, L1 on the masked voxels (see the module docstring).

    Args:
        network: maps ``(B, C, H, W, D)`` to ``(B, C, H, W, D)`` (built with ``C`` output
            channels); a list of deep-supervision heads is read at its first (full) head.
        in_channels: image channels C.
        roi_size: training crop (H, W, D), for the default input-space cell size.
        mask_ratio: fraction of cells (``"cube"``) or in-plane positions (``"tube"``) masked.
        mask_cell: voxels per mask cell (int or triple); ``None``: 16 voxels (halved on an axis
            while the crop holds fewer than 4 cells) in input space, the token patch rounded up
            to 16 voxels in token space.
        mask_shape: ``"cube"`` or ``"tube"``.
        mask_space: ``"auto"`` (token space where the network has a token adapter),
            ``"token"`` or ``"input"``.
        depth_axis: the axis tubes run along (``"tube"`` only).
        seed: seeds the mask generator; ``None`` uses torch's global RNG.
        adapter: explicit token adapter, overriding the registered one.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        in_channels: int,
        roi_size: Sequence[int],
        mask_ratio: float = 0.6,
        mask_cell: int | Sequence[int] | None = None,
        mask_shape: str = "cube",
        mask_space: str = "auto",
        depth_axis: int = -1,
        seed: int | None = None,
        adapter: TokenAdapter | None = None,
    ):
        super().__init__()
        if mask_shape not in MASK_SHAPES:
            raise ValueError(f"mask_shape must be one of {', '.join(MASK_SHAPES)}, got {mask_shape!r}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1) for masked volume modelling, got {mask_ratio}")
        if mask_space not in ("auto", "token", "input"):
            raise ValueError(f"mask_space must be 'auto', 'token' or 'input', got {mask_space!r}")
        self.network = network
        self.mask_ratio = float(mask_ratio)
        self.mask_shape = mask_shape
        self.depth_axis = int(depth_axis)
        self.roi_size = as_triple(roi_size, "roi_size")
        self.mask_generator = torch.Generator().manual_seed(seed) if seed is not None else None
        adapter = adapter or find_token_adapter(unwrap_model(network))
        if mask_space == "token" and adapter is None:
            raise ValueError(f"mask_space='token' needs a token adapter for {type(network).__name__}; use 'input'")
        self.masker: InputMasker | TokenMasker
        if mask_space != "input" and adapter is not None:
            self.mask_space = "token"
            patch = adapter.token_patch(network)
            cell = as_triple(mask_cell, "mask_cell") if mask_cell is not None else tuple(-(-16 // p) * p for p in patch)
            self.masker = TokenMasker(network, adapter, cell)
        else:
            self.mask_space = "input"
            cell = as_triple(mask_cell, "mask_cell") if mask_cell is not None else default_cell_size(self.roi_size)
            self.masker = InputMasker(in_channels, cell)
        cells = self.masker.grid(self.roi_size)
        positions = cells[0] * cells[1] * cells[2] if mask_shape == "cube" else self._plane_positions(cells)
        if round(self.mask_ratio * positions) < 1:
            raise ValueError(
                f"mask ratio {mask_ratio} of {positions} {mask_shape} position(s) (cell {self.masker.cell_size} in a "
                f"crop of {self.roi_size}) masks nothing: raise the ratio or use a smaller mask cell"
            )

    def _plane_positions(self, grid: Sequence[int]) -> int:
        plane = [g for i, g in enumerate(grid) if i != self.depth_axis % 3]
        return plane[0] * plane[1]

    def draw_mask(self, batch: int, spatial: Sequence[int]) -> torch.Tensor:
        """A fresh mask ``(B, gx, gy, gz)`` (bool, CPU) for crops of ``spatial`` voxels."""
        grid = self.masker.grid(as_triple(spatial, "spatial"))
        if self.mask_shape == "cube":
            return cube_mask(batch, grid, self.mask_ratio, self.mask_generator)
        return tube_mask(batch, grid, self.mask_ratio, self.depth_axis, "exact", self.mask_generator)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> PretextOutput:
        """The pretext loss on ``images`` ``(B, C, H, W, D)``; ``mask`` ``(B, *grid)`` or a fresh draw."""
        spatial = tuple(images.shape[2:])
        if mask is None:
            mask = self.draw_mask(images.shape[0], spatial)
        mask = mask.to(device=images.device, dtype=torch.bool)
        if isinstance(self.masker, TokenMasker):
            output = self.masker(self.network, images, mask)
        else:
            output = self.network(self.masker(images, mask))
        reconstruction = first_head(output)
        voxel_mask = upsample_mask(mask, self.masker.cell_size, spatial).unsqueeze(1)
        return PretextOutput(masked_l1(reconstruction.float(), images.float(), voxel_mask), reconstruction, voxel_mask)
