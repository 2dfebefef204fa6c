"""Post-processing: largest connected components, chosen on validation cases as nnU-Net does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medcontext.evaluation import label_masks
from medcontext.evaluation.postprocessing import (
    POSTPROCESSING_FILE,
    PostProcessing,
    candidate_dice,
    choose_postprocessing,
    keep_largest_component,
    read_postprocessing,
    write_postprocessing,
)

CLASSES = {"a": (1,), "b": (2,)}


def _two_organs() -> np.ndarray:
    """Two touching organs, labels 1 and 2, in a 24^3 volume."""
    truth = np.zeros((24, 24, 24), np.int16)
    truth[4:12, 4:12, 4:12] = 1
    truth[12:18, 4:12, 4:12] = 2
    return truth


def test_a_stray_island_is_removed_and_the_organ_kept():
    truth = _two_organs()
    pred = truth.copy()
    pred[20:23, 18:21, 18:21] = 1  # a stray island of label 1, far from the organs
    out = keep_largest_component(pred, [1], independent=True)
    np.testing.assert_array_equal(out, truth)
    assert pred[21, 19, 19] == 1  # the input is untouched
    # the whole-foreground step keeps both labels of the one connected object
    np.testing.assert_array_equal(keep_largest_component(pred, [1, 2], independent=False), truth)


def test_the_decision_is_made_per_class_on_validation_cases():
    cases = []
    for shift in (0, 1):
        truth = _two_organs()
        truth[2:4, 20:23, 20:23] = 2  # class b truly has a second, small part
        pred = np.roll(truth, shift, axis=0)
        pred[20:23, 18:21, 18 - shift:21] = 1  # class a: a stray island in every case
        truth_masks = label_masks(truth, CLASSES)
        cases.append(candidate_dice(pred, truth_masks, CLASSES, foreground_labels=[1, 2]))
    decision = choose_postprocessing(cases, CLASSES, foreground_labels=[1, 2], step=7)
    # the island of a goes; b keeps its real second part, and so does the whole foreground
    assert decision.largest_component_labels == (1,)
    assert decision.foreground_largest_component is False
    raw, post = decision.metrics["validation_dice_raw"], decision.metrics["validation_dice_postprocessed"]
    assert post["a"] > raw["a"] and post["b"] == raw["b"] and post["mean"] > raw["mean"]
    assert decision.metrics["validation_cases"] == 2 and decision.metrics["step"] == 7
    assert decision.metrics["largest_component_classes"] == ["a"]


def test_the_whole_foreground_step_is_chosen_when_every_class_gains():
    truth = _two_organs()
    pred = truth.copy()
    pred[19:22, 18:20, 18:21] = 1  # one island holding both labels, far from the organs
    pred[19:22, 20:22, 18:21] = 2
    decision = choose_postprocessing([candidate_dice(pred, label_masks(truth, CLASSES), CLASSES,
                                                     foreground_labels=[1, 2])], CLASSES, foreground_labels=[1, 2])
    assert decision.foreground_largest_component is True
    assert decision.foreground_labels == (1, 2)
    out = decision.apply(pred)
    assert not out[19:22, 18:22, 18:21].any() and (out[4:12, 4:12, 4:12] == 1).all()


def test_nothing_is_chosen_when_nothing_improves():
    truth = _two_organs()
    decision = choose_postprocessing([candidate_dice(truth, label_masks(truth, CLASSES), CLASSES,
                                                     foreground_labels=[1, 2])], CLASSES, foreground_labels=[1, 2])
    assert not decision.changes_anything
    assert "none" in decision.describe()


def test_region_channels_are_post_processed_each_on_its_own_channel():
    regions = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
    classes = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
    truth = np.zeros((24, 24, 24), np.int16)
    truth[4:14, 4:14, 4:14] = 1
    truth[6:12, 6:12, 6:12] = 2
    truth[8:10, 8:10, 8:10] = 3
    on = np.stack([np.isin(truth, v) for v in regions.values()]).astype(np.uint8)
    pred = on.copy()
    pred[1, 18:21, 18:21, 18:21] = 1  # a stray tumour-core island outside the whole tumour
    truth_masks = label_masks(truth, classes)
    decision = choose_postprocessing(
        [candidate_dice(pred, truth_masks, classes, foreground_labels=[0, 1, 2], target="regions", regions=regions)],
        classes, foreground_labels=[0, 1, 2], target="regions", regions=regions,
    )
    assert decision.target == "regions"
    assert decision.foreground_largest_component is True  # the union's largest component excludes the island
    np.testing.assert_array_equal(decision.apply(pred), on)
    # per-channel step alone: the TC channel (index 1)
    np.testing.assert_array_equal(keep_largest_component(pred, [1], independent=True, target="regions"), on)


def test_the_file_round_trips_in_the_agreed_format(tmp_path):
    decision = PostProcessing(True, (1, 3), (1, 2, 3), "labels", {"validation_cases": 4})
    path = write_postprocessing(tmp_path, decision)
    assert path.name == POSTPROCESSING_FILE
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["chosen_on"] == "validation"
    assert data["foreground_largest_component"] is True and data["largest_component_labels"] == [1, 3]
    assert data["validation_cases"] == 4
    assert read_postprocessing(tmp_path) == decision
    assert read_postprocessing(tmp_path / "elsewhere") is None


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read"),
    ('{"version": 2}', "unsupported post-processing version"),
    ('{"version": 1, "foreground_largest_component": "yes", "largest_component_labels": []}', "true or false"),
    ('{"version": 1, "foreground_largest_component": false}', "malformed"),
])
def test_a_bad_file_is_named(tmp_path, content, message):
    (tmp_path / POSTPROCESSING_FILE).write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        read_postprocessing(tmp_path)
    assert str(tmp_path / POSTPROCESSING_FILE) in str(err.value)
