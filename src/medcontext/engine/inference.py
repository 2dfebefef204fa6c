"""Whole-volume inference: sliding window over a preprocessed volume, logits to label values.

Data enters as a preprocessed image ``(B, C, H, W, D)`` and leaves as logits
``(B, K, H, W, D)``, probabilities, or an integer label map ``(H, W, D)`` holding the
dataset's label VALUES (not channel indices):

- softmax outputs: ``argmax`` over channels, channel ``k`` mapped to ``channel_labels[k]``;
- sigmoid region outputs (BraTS WT/TC/ET): each region above 0.5 is painted with its own
  label value, larger regions first, so the enhancing-tumour label wins where ET is on, else
  the tumour-core label, else the whole-tumour (edema) label.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from medcontext.engine.host.precision import Precision
from medcontext.method.losses import first_head

__all__ = ["sliding_window_logits", "region_paint_order", "logits_to_labels", "logits_to_probabilities"]


def sliding_window_logits(
    network: nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    precision: Precision | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Sliding-window logits of ``image`` (B, C, H, W, D), float32 on the CPU.

    Windows of ``roi_size`` overlap by ``overlap`` and are blended with Gaussian weights
    (``mode="gaussian"``); volumes smaller than the window are padded by MONAI.
    """
    from monai.inferers import sliding_window_inference

    device = device or next(network.parameters()).device
    was_training = network.training
    network.eval()

    def predictor(window: torch.Tensor) -> torch.Tensor:
        return first_head(network(window))

    try:
        with torch.no_grad(), (precision.autocast() if precision is not None else torch.autocast("cpu", enabled=False)):
            logits = sliding_window_inference(
                image.to(device),
                roi_size=tuple(int(r) for r in roi_size),
                sw_batch_size=sw_batch_size,
                predictor=predictor,
                overlap=overlap,
                mode=mode,
                sw_device=device,
                device=torch.device("cpu"),
            )
    finally:
        network.train(was_training)
    if hasattr(logits, "as_tensor"):
        logits = logits.as_tensor()
    return logits.float()


def region_paint_order(regions: Mapping[str, Sequence[int]]) -> list[tuple[int, int]]:
    """``(channel, label value)`` pairs to paint sigmoid regions, largest region first.

    Region ``i`` (sorted by number of label values, descending) is painted with the smallest
    label value it has that the next smaller region does not; for BraTS 2021
    ``{WT: [1, 2, 4], TC: [1, 4], ET: [4]}`` this gives WT -> 2, TC -> 1, ET -> 4.
    """
    items = [(channel, tuple(values)) for channel, values in enumerate(regions.values())]
    if not items:
        raise ValueError("regions is empty")
    ordered = sorted(items, key=lambda cv: -len(cv[1]))
    order = []
    for i, (channel, values) in enumerate(ordered):
        smaller = set(ordered[i + 1][1]) if i + 1 < len(ordered) else set()
        own = sorted(set(values) - smaller)
        order.append((channel, own[0] if own else max(values)))
    return order


def logits_to_probabilities(logits: torch.Tensor, output_mode: str) -> torch.Tensor:
    """Softmax over channels or per-channel sigmoid of ``logits`` (..., K, H, W, D)."""
    if output_mode == "softmax":
        return torch.softmax(logits, dim=-4)
    if output_mode == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"output_mode must be softmax or sigmoid, got {output_mode!r}")


def logits_to_labels(
    logits: torch.Tensor,
    output_mode: str,
    *,
    channel_labels: Sequence[int] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
) -> np.ndarray:
    """An integer label map (H, W, D) of label values from logits (K, H, W, D).

    Args:
        logits: one case's logits, channels first.
        output_mode: ``softmax`` or ``sigmoid``.
        channel_labels: softmax only: label value of each channel (default ``0..K-1``).
        regions: sigmoid only: region name -> label values, in channel order.
    """
    if logits.ndim != 4:
        raise ValueError(f"expected logits (K, H, W, D), got shape {tuple(logits.shape)}")
    if output_mode == "softmax":
        # max(...).indices: the same first-maximum index as argmax, 5x faster on the CPU over dim 0
        index = logits.max(dim=0).indices.numpy()
        if channel_labels is None:
            return index.astype(np.int16 if logits.shape[0] < 32768 else np.int32)
        lut = np.asarray(channel_labels, dtype=np.int32)
        if len(lut) != logits.shape[0]:
            raise ValueError(f"channel_labels has {len(lut)} values for {logits.shape[0]} output channels")
        return lut[index].astype(np.int16)
    if output_mode == "sigmoid":
        if regions is None or len(regions) != logits.shape[0]:
            raise ValueError(f"sigmoid outputs need one region per channel; got {logits.shape[0]} channels, regions={regions}")
        on = (logits > 0).numpy()  # sigmoid(x) > 0.5  <=>  x > 0
        out = np.zeros(logits.shape[1:], dtype=np.int16)
        for channel, value in region_paint_order(regions):
            out[on[channel]] = value
        return out
    raise ValueError(f"output_mode must be softmax or sigmoid, got {output_mode!r}")


def regions_to_labels(regions_on: np.ndarray, regions: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Paint a boolean region stack (R, H, W, D) into label values (as :func:`logits_to_labels`)."""
    out = np.zeros(regions_on.shape[1:], dtype=np.int16)
    for channel, value in region_paint_order(regions):
        out[regions_on[channel] > 0.5] = value
    return out
