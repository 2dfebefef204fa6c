"""The adapter hook: how a network tells MedContext where its patch tokens are.

A model that wants token-space masking registers a :class:`TokenAdapter` for its class with
:func:`register_token_adapter`. The adapter only *describes* the network (which module emits
the patch tokens, their layout, the token patch size); the method core installs a temporary
forward hook on that module during the masked pass and replaces the masked tokens with a
learnable embedding. Nothing in the network is forked or edited, and outside the masked pass
the network runs unchanged.

This is the whole contract between ``medcontext.models`` and ``medcontext.method``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from torch import nn

__all__ = ["TokenAdapter", "register_token_adapter", "find_token_adapter", "registered_token_adapters"]

TokenLayout = Literal["channels_first", "sequence"]


@dataclass(frozen=True)
class TokenAdapter:
    """Where a network's patch tokens are, for token-space masking.

    Attributes:
        embedding_module: returns the submodule whose output holds the patch tokens, right
            after the patch-embedding projection and before any position embedding is added.
        token_patch: voxels per token along each spatial axis, e.g. ``(16, 16, 16)``.
        embed_dim: returns the channel width of a token for a given network.
        in_channels: returns the number of image channels the network reads.
        layout: ``"channels_first"`` when the module returns ``(B, E, gx, gy, gz)``;
            ``"sequence"`` when it returns ``(B, gx*gy*gz, E)`` in C order of the grid.
        default_mask_cell: voxels per mask cell when the user sets none (a multiple of the
            token patch); ``None`` means 16 voxels per axis rounded up to the token patch.
    """

    embedding_module: Callable[[nn.Module], nn.Module]
    token_patch: Callable[[nn.Module], tuple[int, int, int]]
    embed_dim: Callable[[nn.Module], int]
    in_channels: Callable[[nn.Module], int]
    layout: TokenLayout = "channels_first"
    default_mask_cell: Callable[[nn.Module], tuple[int, int, int]] | None = None


_TOKEN_ADAPTERS: dict[type, TokenAdapter] = {}


def register_token_adapter(network_type: type, adapter: TokenAdapter) -> None:
    """Declare how to mask tokens of every network of ``network_type`` (subclasses included)."""
    if not isinstance(network_type, type) or not issubclass(network_type, nn.Module):
        raise TypeError(f"network_type must be an nn.Module subclass, got {network_type!r}")
    _TOKEN_ADAPTERS[network_type] = adapter


def find_token_adapter(network: nn.Module) -> TokenAdapter | None:
    """The adapter registered for ``network``'s class (or its nearest base class), or None."""
    for cls in type(network).__mro__:
        if cls in _TOKEN_ADAPTERS:
            return _TOKEN_ADAPTERS[cls]
    return None


def registered_token_adapters() -> dict[type, TokenAdapter]:
    """A copy of the adapter table, for introspection and tests."""
    return dict(_TOKEN_ADAPTERS)
