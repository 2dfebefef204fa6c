"""The report figures' shared pieces: the smoothing of loss curves, the overlay slice, PNG files."""

import numpy as np
import pytest

from medcontext.evaluation import figures


def test_smooth_is_a_trailing_moving_average_without_padding():
    values = np.arange(1.0, 13.0)  # 1 .. 12
    smoothed = figures.smooth(values, window=4)
    # the first three points average what was logged so far, then windows of 4
    np.testing.assert_allclose(smoothed, [1.0, 1.5, 2.0, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 10.5])
    assert figures.smooth([3.0, 1.0], window=4).tolist() == [3.0, 1.0]  # shorter than the window: unchanged
    assert len(figures.smooth(np.ones(25))) == 25 and figures.SMOOTHING_WINDOW == 10


def test_slice_with_most_labels():
    labels = np.zeros((4, 4, 5), np.int16)
    labels[:2, :2, 1] = 1
    labels[:, :3, 3] = 2
    assert figures.slice_with_most_labels(labels) == 3


def test_overlays_are_saved_as_png_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    image = np.random.default_rng(0).random((8, 8, 3))
    labels = np.zeros((8, 8, 3), np.int16)
    labels[2:5, 2:5, 1] = 1
    plt = figures.pyplot()
    fig, axes = plt.subplots(1, 2)
    figures.draw_overlays(axes, image, [("image", None), ("truth", labels)], 1, cmap="tab10", vmin=0, vmax=9,
                          alpha=0.55, title_size=9)
    assert [ax.get_title() for ax in axes] == ["image", "truth"]
    assert len(axes[0].images) == 1 and len(axes[1].images) == 2
    path = figures.save_png(fig, tmp_path / "overlay.png", dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.png"]  # no temporary file left
    assert not plt.fignum_exists(fig.number)
