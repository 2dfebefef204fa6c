"""Logits to label maps: softmax argmax, sigmoid regions painted in nesting order."""

from __future__ import annotations

import numpy as np
import torch

from medcontext.engine.inference import logits_to_labels, region_paint_order, regions_to_labels


def test_brats_regions_paint_et_over_tc_over_wt():
    brats21 = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    assert region_paint_order(brats21) == [(0, 2), (1, 1), (2, 4)]
    msd = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert region_paint_order(msd) == [(0, 1), (1, 2), (2, 3)]
    # voxel 0: WT only -> edema 2; voxel 1: WT+TC -> necrosis 1; voxel 2: all -> ET 4; voxel 3: none
    on = np.array([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0]], dtype=np.float32).reshape(3, 4, 1, 1)
    assert regions_to_labels(on, brats21).ravel().tolist() == [2, 1, 4, 0]
    logits = torch.from_numpy(np.where(on > 0, 3.0, -3.0))
    assert logits_to_labels(logits, "sigmoid", regions=brats21).ravel().tolist() == [2, 1, 4, 0]


def test_softmax_labels_are_argmax_channels():
    logits = torch.zeros(3, 2, 1, 1)
    logits[2, 0], logits[1, 1] = 5.0, 5.0
    assert logits_to_labels(logits, "softmax").ravel().tolist() == [2, 1]
    assert logits_to_labels(logits, "softmax", channel_labels=[0, 4, 7]).ravel().tolist() == [7, 4]
