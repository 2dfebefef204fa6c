"""Token-space masking through a :class:`~medcontext.method.adapters.TokenAdapter`.

During the masked pass a forward hook on the adapter's embedding module replaces the tokens
under masked cells by a learnable embedding vector, before position embeddings are added. The
network's input in that pass is the input-space-masked volume, so modules that read the raw
input (UNETR's and SwinUNETR's ``encoder1`` skip) see no clean voxel inside a masked tube. The
hook exists only inside :meth:`TokenMasker.applied`; outside it the network is untouched.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from .adapters import TokenAdapter
from .masking import InputMasker, grid_shape, upsample_mask

__all__ = ["TokenMasker"]


class TokenMasker(nn.Module):
    """Learnable token-space mask embedding plus the input-space token for raw-input paths.

    Args:
        network: the student network (used only to read its dimensions from the adapter).
        adapter: where the network's patch tokens are.
        cell_size: voxels per mask cell; a multiple of the adapter's token patch on every axis.
    """

    def __init__(self, network: nn.Module, adapter: TokenAdapter, cell_size: Sequence[int]):
        super().__init__()
        self.adapter = adapter
        self.token_patch = tuple(int(p) for p in adapter.token_patch(network))
        cell = tuple(int(c) for c in cell_size)
        if len(cell) != 3 or any(c % p for c, p in zip(cell, self.token_patch)):
            raise ValueError(
                f"token-space mask cell {cell} must be a multiple of the network's token patch "
                f"{self.token_patch} on every axis"
            )
        self.cell_size = cell
        self.tokens_per_cell = tuple(c // p for c, p in zip(cell, self.token_patch))
        self.mask_token = nn.Parameter(torch.zeros(int(adapter.embed_dim(network))))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.input = InputMasker(int(adapter.in_channels(network)), cell)

    def grid(self, spatial: Sequence[int]) -> tuple[int, int, int]:
        """Mask grid for an image of spatial size ``(H, W, D)``."""
        return grid_shape(spatial, self.cell_size)

    def _replace_tokens(self, tokens: torch.Tensor, mask: torch.Tensor, token_grid: tuple[int, int, int]) -> torch.Tensor:
        token_mask = upsample_mask(mask.to(tokens.device), self.tokens_per_cell, token_grid)
        if self.adapter.layout == "channels_first":
            if tuple(tokens.shape[2:]) != token_grid or tokens.shape[0] != token_mask.shape[0]:
                raise ValueError(
                    f"embedding output {tuple(tokens.shape)} does not match the expected token grid "
                    f"{token_grid} for a batch of {token_mask.shape[0]}"
                )
            embedding = self.mask_token.to(tokens.dtype).view(1, -1, 1, 1, 1)
            return torch.where(token_mask.unsqueeze(1), embedding, tokens)
        flat_mask = token_mask.flatten(1)
        if tuple(tokens.shape[:2]) != tuple(flat_mask.shape):
            raise ValueError(f"embedding output {tuple(tokens.shape)} does not hold {flat_mask.shape[1]} tokens")
        embedding = self.mask_token.to(tokens.dtype).view(1, 1, -1)
        return torch.where(flat_mask.unsqueeze(-1), embedding, tokens)

    @contextlib.contextmanager
    def applied(self, network: nn.Module, mask: torch.Tensor, spatial: Sequence[int]) -> Iterator[None]:
        """Within the block, ``network``'s patch tokens under ``mask`` (B, *grid) are replaced
        for an input of spatial size ``spatial`` (H, W, D)."""
        module = self.adapter.embedding_module(network)
        token_grid = grid_shape(spatial, self.token_patch)

        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            return self._replace_tokens(output, mask, token_grid)

        handle = module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def forward(self, network: nn.Module, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Network output on the masked view of ``images`` (B, C, H, W, D) for ``mask``."""
        masked_images = self.input(images, mask)
        with self.applied(network, mask, images.shape[2:]):
            return network(masked_images)
