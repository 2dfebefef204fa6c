"""Sigmoid region tasks are scored per region channel, not through the painted label map."""

import nibabel as nib
import numpy as np
import pytest
import torch

from medcontext.data.presets import PRESETS
from medcontext.engine.inference import logits_to_labels
from medcontext.evaluation import (
    dice_score,
    evaluate_region_folder,
    label_masks,
    region_channel_masks,
)

REGIONS = dict(PRESETS["brats17"].regions)  # MSD Task01: WT {1,2,3}, TC {2,3}, ET {3}


def _case():
    """Truth: a WT box holding a TC box holding an ET box. Prediction: WT and TC right, and an
    ET channel that is also on in 8 voxels where WT and TC are off."""
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[1:7, 1:7, 1:7] = 1
    truth[2:6, 2:6, 2:6] = 2
    truth[3:5, 3:5, 3:5] = 3
    masks = label_masks(truth, REGIONS)
    on = np.stack([masks["WT"], masks["TC"], masks["ET"]]).astype(np.uint8)
    on[2, 6:8, 6:8, 6:8] = 1  # ET without WT/TC: impossible in a painted map
    return truth, on


def test_each_region_is_read_from_its_own_channel():
    truth, on = _case()
    pred = region_channel_masks(on, REGIONS, {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]})
    truth_masks = label_masks(truth, REGIONS)
    assert dice_score(pred["WT"], truth_masks["WT"]) == 1.0 and dice_score(pred["TC"], truth_masks["TC"]) == 1.0
    assert dice_score(pred["ET"], truth_masks["ET"]) == pytest.approx(2 * 8 / (16 + 8))
    # the painted label map would have charged the stray ET voxels to WT and TC as well
    painted = logits_to_labels(torch.tensor(on * 2.0 - 1.0), "sigmoid", regions=REGIONS)
    assert dice_score(label_masks(painted, REGIONS)["WT"], truth_masks["WT"]) < 1.0
    with pytest.raises(ValueError, match="none of the regions"):
        region_channel_masks(on, REGIONS, {"X": [1, 3]})


def test_evaluate_region_folder_scores_channels_with_spacing(tmp_path):
    truth, on = _case()
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    nib.save(nib.Nifti1Image(np.moveaxis(on, 0, -1), affine), str(tmp_path / "pred" / "c1.nii.gz"))
    nib.save(nib.Nifti1Image(truth, affine), str(tmp_path / "ref" / "c1.nii.gz"))
    table = evaluate_region_folder(tmp_path / "pred", tmp_path / "ref", REGIONS, REGIONS, progress=False)
    rows = {r.class_name: r for r in table.rows}
    assert list(rows) == ["WT", "TC", "ET"]
    assert rows["WT"].dice == 1.0 and rows["TC"].dice == 1.0 and rows["WT"].hd95 == 0.0
    assert rows["ET"].dice == pytest.approx(2 / 3)
    assert rows["ET"].hd95 > 0
    bad = np.moveaxis(on[:2], 0, -1)
    nib.save(nib.Nifti1Image(bad, affine), str(tmp_path / "pred" / "c1.nii.gz"))
    with pytest.raises(ValueError, match="one channel per region"):
        evaluate_region_folder(tmp_path / "pred", tmp_path / "ref", REGIONS, REGIONS, progress=False)
