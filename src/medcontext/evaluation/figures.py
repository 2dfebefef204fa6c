"""The figures of the reports: training curves and label overlays, drawn with matplotlib (Agg).

One home for what the demo (``overlay.png``, ``curves.png``) and the study report
(``training_curves.png``, ``validation_curves.png``, ``dice_boxplots.png``, ``overlay.png``)
draw alike: the pyplot backend, the smoothing of loss curves, the overlay panels and the
atomic PNG writing. Data enters as numpy arrays and plain numbers (the callers read the run
folders); PNG files leave. matplotlib is imported when a figure is drawn, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from medcontext.io.atomic import atomic_write

__all__ = ["SMOOTHING_WINDOW", "pyplot", "smooth", "slice_with_most_labels", "draw_overlays", "save_png"]

SMOOTHING_WINDOW = 10
"""Steps averaged by :func:`smooth` (loss curves are labelled "moving average of 10 steps")."""


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values: Sequence[float], window: int = SMOOTHING_WINDOW) -> np.ndarray:
    """Trailing moving average of ``window`` values, same length as ``values``.

    Point ``i`` is the mean of values ``max(0, i - window + 1) .. i``: the first ``window - 1``
    points average the values logged so far (nothing is padded or invented). Fewer than
    ``window`` values are returned unchanged; a NaN spreads to the points whose window holds it.
    """
    values = np.asarray(values, dtype=float)
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def slice_with_most_labels(labels: np.ndarray) -> int:
    """Index along the last axis of the slice ``(H, W, D)[:, :, z]`` with the most labelled voxels."""
    return int(np.argmax((np.asarray(labels) > 0).sum(axis=(0, 1))))


def draw_overlays(
    axes,
    image: np.ndarray,
    panels: Sequence[tuple[str, np.ndarray | None]],
    z: int,
    *,
    cmap,
    vmin: float,
    vmax: float,
    alpha: float | None = None,
    title_size: float | None = None,
) -> None:
    """Draw axial slice ``z`` of ``image`` in grey on each axis, with a panel's labels over it.

    Args:
        axes: one matplotlib axis per panel.
        image: ``(H, W, D)`` intensities.
        panels: ``(title, labels)`` per axis; ``labels`` is an ``(H, W, D)`` integer map whose
            non-zero voxels are coloured, or ``None`` for the image alone.
        z: the slice index along the last axis.
        cmap, vmin, vmax, alpha: colouring of the labels (``alpha=None``: the colormap's own).
        title_size: font size of the panel titles (``None``: matplotlib's default).
    """
    for ax, (title, labels) in zip(axes, panels):
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
        if labels is not None:
            ax.imshow(np.ma.masked_equal(labels[:, :, z].T, 0), cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha,
                      origin="lower", interpolation="nearest")
        if title_size is None:
            ax.set_title(title)
        else:
            ax.set_title(title, fontsize=title_size)
        ax.axis("off")


def save_png(fig, path: str | Path, *, dpi: int) -> Path:
    """Write ``fig`` as PNG atomically (:func:`medcontext.io.atomic.atomic_write`) and close it."""
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))
    pyplot().close(fig)
    return Path(path)
