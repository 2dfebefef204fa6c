"""A registry of segmentation networks built by name.

Builders are plain functions ``(in_channels, out_channels, roi_size, **options) -> nn.Module``
registered with :func:`register_model`. They know nothing about training or MedContext: the
only MedContext-specific piece a model may add is a :class:`~medcontext.method.adapters.TokenAdapter`
registered for its class.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from ..method.masking import as_triple
from .patchify import use_patch_matmul

__all__ = ["ModelSpec", "register_model", "create_model", "list_models", "get_model_spec", "roi_requirements"]

Builder = Callable[..., nn.Module]
Triple = tuple[int, int, int]
RoiRule = Callable[[Mapping[str, Any]], tuple[Triple, Triple]]


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    Attributes:
        name: registry name, e.g. ``"unetr"``.
        builder: ``(in_channels, out_channels, roi_size, **options) -> nn.Module``.
        description: one line for ``--help`` and error messages.
        roi_multiple: every ROI side must be a multiple of this (token patch or total stride).
        test_options: small options for CPU contract tests and ``--model-size tiny`` style use.
        roi_rule: ``options -> (multiple, minimum)`` per axis for options that change them
            (the number of U-Net levels, nnFormer's patch); ``None`` = ``roi_multiple`` for both.
        deep_supervision: ``True`` when the builder takes ``deep_supervision: bool``: in training
            mode the network then returns a list of logits, full resolution first, then one
            per deeper decoder stage (at that stage's resolution, or upsampled to the full
            one); in eval mode one full-resolution tensor. Otherwise a sentence saying why the
            architecture has no such mode: asking for it is an error that quotes it.
            ``None``: not declared (the contract tests fail until it is).
    """

    name: str
    builder: Builder
    description: str
    roi_multiple: int | tuple[int, int, int] = 1
    test_options: dict | None = None
    test_roi: tuple[int, int, int] = (32, 32, 32)
    roi_rule: RoiRule | None = None
    deep_supervision: bool | str | None = None


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    description: str,
    roi_multiple: int | tuple[int, int, int] = 1,
    test_options: dict | None = None,
    test_roi: tuple[int, int, int] = (32, 32, 32),
    roi_rule: RoiRule | None = None,
    deep_supervision: bool | str | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator that registers a model builder under ``name`` (arguments: :class:`ModelSpec`)."""
    if deep_supervision is False or (isinstance(deep_supervision, str) and not deep_supervision.strip()):
        raise ValueError(f"model {name!r}: deep_supervision must be True or a reason why the model has no such mode")

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(
            name, builder, description, roi_multiple, dict(test_options or {}), tuple(test_roi), roi_rule,
            deep_supervision,
        )
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for ``name``; an unknown name raises with the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}.{hint}") from None


def roi_requirements(name: str, options: Mapping[str, Any] | None = None) -> tuple[Triple, Triple]:
    """What a crop must satisfy for model ``name`` built with ``options``.

    Returns:
        ``(multiple, minimum)``: every side a multiple of ``multiple`` and at least ``minimum``
        voxels (per axis, (H, W, D)). Crop planning rounds to these; the builder still checks.
    """
    spec = get_model_spec(name)
    if spec.roi_rule is not None:
        multiple, minimum = spec.roi_rule(dict(options or {}))
        return as_triple(multiple, "multiple"), as_triple(minimum, "minimum")
    multiple = as_triple(spec.roi_multiple, "roi_multiple")
    return multiple, multiple


def create_model(
    name: str, in_channels: int, out_channels: int, roi_size: Sequence[int] | int, **options
) -> nn.Module:
    """Build a registered network.

    Args:
        name: registry name (see :func:`list_models`).
        in_channels: image channels C of the input ``(B, C, H, W, D)``.
        out_channels: output channels (classes incl. background, or sigmoid regions).
        roi_size: training crop ``(H, W, D)`` in voxels (an int means a cube).
        **options: architecture options; unknown ones pass through to the underlying network.

    Raises:
        ValueError: unknown model, an ROI the model cannot take, or ``deep_supervision=True``
            for a model without that mode (the message says why it has none).
    """
    spec = get_model_spec(name)
    if isinstance(spec.deep_supervision, str):
        if options.get("deep_supervision"):
            raise ValueError(f"model {name!r} has no deep-supervision mode: {spec.deep_supervision}")
        options.pop("deep_supervision", None)  # deep_supervision=False: what the model does anyway
    roi = as_triple(roi_size, "roi_size")
    multiple = as_triple(spec.roi_multiple, "roi_multiple")
    bad = [(r, m) for r, m in zip(roi, multiple) if r % m]
    if bad:
        raise ValueError(
            f"model {name!r} needs every ROI side to be a multiple of {multiple}, got roi_size={roi}; "
            f"choose e.g. {tuple(max(m, (r // m) * m) for r, m in zip(roi, multiple))}"
        )
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
    network = spec.builder(in_channels, out_channels, roi, **options)
    use_patch_matmul(network)  # kernel = stride convolutions: a GEMM in CPU bf16 (oneDNN computes some wrongly)
    return network
