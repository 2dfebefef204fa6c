"""Initialising a network from pretrained weights (``medcontext train --init-checkpoint``).

Accepted files:

- a medcontext training checkpoint (``last.pt``/``best.pt``): the student weights are used
  (keys ``network.*``; the teacher and mask tokens are ignored);
- a plain ``state_dict`` (``torch.save(net.state_dict())``);
- a dict that wraps one under ``"state_dict"``, ``"model"``, ``"model_state_dict"``,
  ``"network"`` or ``"net"`` (common for SSL and MONAI checkpoints).

Key prefixes can be renamed with ``prefix_map`` (``{"module.": ""}`` strips DDP's prefix,
``{"encoder.": "swinViT."}`` maps an encoder-only SSL checkpoint onto SwinUNETR). Weights
whose shapes differ are an error unless ``skip_mismatch`` is set; keys missing on either
side are reported, never silently ignored.

The file is read with ``torch.load(weights_only=True)`` (:mod:`medcontext.models.safe_load`):
a crafted file cannot run code. A file that pickled other Python objects is refused with a
message naming them, unless the caller trusts it (``trust=True``, ``--trust-checkpoint``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .safe_load import UnreadableFileError, load_weights_file

__all__ = ["LoadReport", "PretrainedLoadError", "load_pretrained", "extract_state_dict", "apply_prefix_map"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "network", "net")
_MEDCONTEXT_FORMAT = "medcontext-checkpoint"


class PretrainedLoadError(ValueError):
    """The pretrained weights cannot be loaded into the network."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        path: the file read.
        loaded: network keys that received a tensor.
        missing: network keys the file did not provide (left at their initialisation).
        unexpected: file keys (after prefix mapping) that the network does not have.
        mismatched: ``(key, file_shape, network_shape)`` skipped because of a shape mismatch.
    """

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    def format(self, limit: int = 10) -> str:
        """A short human-readable report (key names up to ``limit`` per group)."""

        def names(keys: list[str]) -> str:
            if not keys:
                return ""
            shown = ", ".join(keys[:limit])
            return f": {shown}" + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")

        lines = [
            f"pretrained weights from {self.path}: loaded {len(self.loaded)} tensors, "
            f"missing {len(self.missing)}, unexpected {len(self.unexpected)}, shape-mismatched {len(self.mismatched)}",
        ]
        if self.missing:
            lines.append(f"  missing (kept at initialisation){names(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored){names(self.unexpected)}")
        if self.mismatched:
            lines.append("  shape-mismatched (skipped)" + names([f"{k} {a} vs {b}" for k, a, b in self.mismatched]))
        return "\n".join(lines)


def extract_state_dict(obj: object, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The network weights inside a loaded checkpoint object (see the module docstring)."""
    if isinstance(obj, Mapping) and obj.get("format") == _MEDCONTEXT_FORMAT:
        model = obj.get("model", {})
        student = {k[len("network."):]: v for k, v in model.items() if k.startswith("network.")}
        if not student:
            raise PretrainedLoadError(f"{source}: medcontext checkpoint has no 'network.*' (student) weights")
        return student
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise PretrainedLoadError(
        f"{source}: no state dict found (expected tensors at the top level or under one of {', '.join(_WRAPPER_KEYS)})"
    )


def apply_prefix_map(state: Mapping[str, torch.Tensor], prefix_map: Mapping[str, str] | None) -> dict[str, torch.Tensor]:
    """Rename key prefixes: for each key the first matching ``old`` prefix becomes ``new``.

    Longer prefixes are tried first, so ``{"encoder.": "a.", "encoder.layer1.": "b."}`` maps
    ``encoder.layer1.w`` to ``b.w``.
    """
    if not prefix_map:
        return dict(state)
    ordered = sorted(prefix_map.items(), key=lambda kv: -len(kv[0]))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for old, new in ordered:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        if key in out:
            raise PretrainedLoadError(f"prefix map {dict(prefix_map)} maps two checkpoint keys onto {key!r}")
        out[key] = value
    return out


def _read_state(path: Path, *, trust: bool) -> dict[str, torch.Tensor]:
    """The state dict inside a pretrained checkpoint file (read weights-only unless ``trust``)."""
    if not path.is_file():
        raise PretrainedLoadError(f"pretrained checkpoint {path} does not exist")
    try:
        obj = load_weights_file(path, trust=trust, map_location="cpu")
    except UnreadableFileError as err:
        raise PretrainedLoadError(f"pretrained checkpoint {err}") from err
    return extract_state_dict(obj, source=str(path))


def _match_keys(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                report: "LoadReport") -> dict[str, torch.Tensor]:
    """The tensors of ``state`` that fit ``own`` by key and shape; the others go into ``report``
    (unexpected, mismatched; ``own``'s keys left without a tensor: missing)."""
    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    report.missing = sorted(k for k in own if k not in usable and k not in {m[0] for m in report.mismatched})
    report.unexpected.sort()
    return usable


def load_pretrained(
    network: nn.Module,
    path: str | os.PathLike,
    prefix_map: Mapping[str, str] | None = None,
    skip_mismatch: bool = False,
    *,
    trust: bool = False,
) -> LoadReport:
    """Copy pretrained weights from ``path`` into ``network`` (in place).

    Args:
        network: the network to initialise (the student, before MedContext wraps it, so that
            the teacher starts from the same weights).
        path: checkpoint file (see the module docstring for accepted layouts).
        prefix_map: ``{old_prefix: new_prefix}`` applied to the file's keys.
        skip_mismatch: skip tensors whose shape differs instead of raising.
        trust: read the file with full pickle (``weights_only=False``); only for files whose
            origin you trust (a crafted file runs code).

    Returns:
        A :class:`LoadReport` with loaded, missing, unexpected and mismatched keys.

    Raises:
        PretrainedLoadError: unreadable file, no matching key at all, or shape mismatches
            without ``skip_mismatch``.
        UntrustedFileError: without ``trust``, the file holds objects a weights-only load
            refuses.
    """
    path = Path(path)
    state = apply_prefix_map(_read_state(path, trust=trust), prefix_map)
    own = network.state_dict()
    report = LoadReport(path=str(path))
    usable = _match_keys(state, own, report)
    if report.mismatched and not skip_mismatch:
        listing = "; ".join(f"{k}: checkpoint {a} vs network {b}" for k, a, b in report.mismatched[:10])
        more = f" (+{len(report.mismatched) - 10} more)" if len(report.mismatched) > 10 else ""
        raise PretrainedLoadError(
            f"{path}: {len(report.mismatched)} tensors have a different shape than the network: {listing}{more}. "
            "Use a checkpoint of the same architecture and size, or pass --init-skip-mismatch to keep those "
            "layers at their initialisation (e.g. a different number of output classes)."
        )
    if not usable:
        sample_file = ", ".join(list(state)[:3])
        sample_net = ", ".join(list(own)[:3])
        raise PretrainedLoadError(
            f"{path}: no checkpoint key matches the network (checkpoint keys look like {sample_file}; network keys "
            f"look like {sample_net}). Map the prefixes with --init-prefix-map OLD=NEW (e.g. module.= to strip DDP's "
            "prefix)."
        )
    with torch.no_grad():
        for key, value in usable.items():
            own[key].copy_(value.to(dtype=own[key].dtype))
    report.loaded = sorted(usable)
    return report
