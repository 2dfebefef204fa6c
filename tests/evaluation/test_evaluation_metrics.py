"""Dice and HD95 against MONAI, hand-computed values and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medcontext.evaluation import (
    CaseMetric,
    dice_score,
    evaluate_case,
    evaluate_masks,
    hd95,
    label_masks,
    surface_distances,
    surface_voxels,
    validate_classes,
)

ANISO = (0.8, 0.8, 5.0)
BRATS21_REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}  # labels 1 necrosis, 2 edema, 4 enhancing


# ---------------------------------------------------------------- independent reference


def make_blob(rng: np.random.Generator, shape: tuple[int, int, int], fraction: float = 0.2) -> np.ndarray:
    """A random smooth blob (possibly several components, possibly touching the border)."""
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=float(rng.uniform(1.0, 2.5)))
    return noise > np.quantile(noise, 1.0 - fraction)


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one 6-neighbour outside the mask (outside the array = background)."""
    padded = np.pad(mask, 1)
    inner = (slice(1, -1),) * 3
    all_neighbours_in = np.ones_like(mask)
    for axis in range(3):
        for shift in (-1, 1):
            all_neighbours_in &= np.roll(padded, shift, axis=axis)[inner]
    return mask & ~all_neighbours_in


def brute_directed(src: np.ndarray, dst: np.ndarray, spacing) -> np.ndarray:
    """For every surface voxel of src (C order), the distance in mm to the nearest surface voxel of dst."""
    a = np.argwhere(brute_surface(src)) * np.asarray(spacing)
    b = np.argwhere(brute_surface(dst)) * np.asarray(spacing)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)


def brute_hd95(pred, truth, spacing, combine="max") -> float:
    d1, d2 = brute_directed(pred, truth, spacing), brute_directed(truth, pred, spacing)
    if combine == "union":
        return float(np.percentile(np.concatenate([d1, d2]), 95))
    return float(max(np.percentile(d1, 95), np.percentile(d2, 95)))


def random_pair(seed: int):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(10, 26, size=3))
    spacing = tuple(float(s) for s in rng.uniform(0.5, 4.0, size=3))
    return make_blob(rng, shape), make_blob(rng, shape, fraction=float(rng.uniform(0.1, 0.3))), spacing


# ---------------------------------------------------------------- Dice


def test_dice_empty_conventions():
    empty = np.zeros((6, 6, 6), bool)
    one = empty.copy()
    one[2, 3, 1] = True
    assert dice_score(empty, empty) == 1.0
    assert dice_score(one, empty) == 0.0
    assert dice_score(empty, one) == 0.0
    assert dice_score(one, one) == 1.0


def test_dice_hand_value():
    a = np.zeros((8, 8, 8), bool)
    b = a.copy()
    a[0:4, 0:2, 0:2] = True  # 16 voxels
    b[2:6, 0:2, 0:2] = True  # 16 voxels, 8 shared
    assert dice_score(a, b) == pytest.approx(2 * 8 / 32)


@pytest.mark.parametrize("seed", range(8))
def test_dice_matches_monai(seed, monai_dice):
    pred, truth, _ = random_pair(seed)
    assert dice_score(pred, truth) == pytest.approx(monai_dice(pred, truth), abs=1e-6)


def test_dice_accepts_01_integers_and_refuses_label_maps():
    a = np.zeros((4, 4, 4), np.uint8)
    a[1:3, 1:3, 1:3] = 1
    assert dice_score(a, a.astype(bool)) == 1.0
    with pytest.raises(ValueError, match="boolean"):
        dice_score(a * 2, a)
    with pytest.raises(ValueError, match="same shape"):
        dice_score(a, a[:3])


# ---------------------------------------------------------------- HD95: hand-computed values


def test_hd95_empty_conventions():
    empty = np.zeros((5, 5, 5), bool)
    one = empty.copy()
    one[2, 2, 2] = True
    assert hd95(empty, empty, ANISO) == 0.0
    assert math.isnan(hd95(one, empty, ANISO))
    assert math.isnan(hd95(empty, one, ANISO))


def test_hd95_single_voxels_anisotropic(monai_hd95):
    a = np.zeros((6, 6, 7), bool)
    b = a.copy()
    a[1, 1, 1] = True
    b[3, 2, 4] = True
    # offsets (2, 1, 3) voxels at (0.8, 0.8, 5.0) mm: sqrt(1.6^2 + 0.8^2 + 15^2) = sqrt(228.2)
    expected = math.sqrt(1.6**2 + 0.8**2 + 15.0**2)
    assert expected == pytest.approx(15.10629, abs=1e-5)
    assert hd95(a, b, ANISO) == pytest.approx(expected, rel=1e-12)
    assert hd95(a, b, ANISO) == pytest.approx(monai_hd95(a, b, ANISO), rel=1e-6)


def test_hd95_identical_masks_is_zero():
    rng = np.random.default_rng(3)
    m = make_blob(rng, (14, 15, 12))
    assert hd95(m, m, ANISO) == 0.0
    assert hd95(m, m, ANISO, combine="union") == 0.0


def _cube_pair(shift_axis: int):
    """A 3x3x3 cube and the same cube shifted by one voxel along ``shift_axis``."""
    a = np.zeros((7, 7, 7), bool)
    a[1:4, 1:4, 1:4] = True
    return a, np.roll(a, 1, axis=shift_axis)


def test_shifted_cube_hand_computed_distances(monai_hd95):
    # Cube A = x,y,z in {1,2,3}; B = A shifted by 1 along z (spacing 5 mm). Each surface has the 26
    # voxels other than its centre. Of A's surface: 9 voxels on the far face z=1 are 5 mm from
    # B's face z=2; A's voxel (2,2,3) is B's centre (not surface), its nearest B surface voxel is
    # one in-plane step away, 0.8 mm; the other 16 lie on B's surface (0 mm). Symmetric for B.
    a, b = _cube_pair(shift_axis=2)
    expected = np.sort([0.0] * 16 + [0.8] + [5.0] * 9)
    d_ab, d_ba = surface_distances(a, b, ANISO)
    np.testing.assert_allclose(np.sort(d_ab), expected, atol=1e-12)
    np.testing.assert_allclose(np.sort(d_ba), expected, atol=1e-12)
    # 95th percentile of the 26 sorted values: position 23.75, between two 5.0 values
    assert hd95(a, b, ANISO) == pytest.approx(5.0)
    assert hd95(a, b, ANISO, percentile=100) == pytest.approx(5.0)
    # 50th percentile: position 12.5, inside the zeros
    assert hd95(a, b, ANISO, percentile=50) == 0.0
    # 62nd percentile: position 15.5, halfway between the last 0 and 0.8
    assert hd95(a, b, ANISO, percentile=62) == pytest.approx(0.4)
    assert hd95(a, b, ANISO) == pytest.approx(monai_hd95(a, b, ANISO), rel=1e-6)


def test_shift_along_fine_axis_uses_fine_spacing():
    a, b = _cube_pair(shift_axis=0)
    # same geometry shifted along x: 9 voxels at 0.8 mm, 1 at min(0.8, 0.8, 5.0), 16 at 0
    assert hd95(a, b, ANISO) == pytest.approx(0.8)
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(1.0)


def test_shifted_plane_has_constant_distance():
    a = np.zeros((8, 8, 9), bool)
    b = a.copy()
    a[2:6, 1:7, 2] = True
    b[2:6, 1:7, 5] = True  # every voxel 3 slices away
    d_ab, d_ba = surface_distances(a, b, ANISO)
    np.testing.assert_allclose(d_ab, 15.0)
    np.testing.assert_allclose(d_ba, 15.0)
    assert hd95(a, b, ANISO) == pytest.approx(15.0)


# ---------------------------------------------------------------- HD95: references


@pytest.mark.parametrize("seed", range(12))
def test_hd95_matches_monai_on_random_blobs(seed, monai_hd95):
    pred, truth, spacing = random_pair(seed)
    ours = hd95(pred, truth, spacing)
    ref = monai_hd95(pred, truth, spacing)
    assert ours > 0
    assert ours == pytest.approx(ref, rel=1e-5)  # MONAI computes in float32


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("combine", ["max", "union"])
def test_hd95_matches_brute_force(seed, combine):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(s) for s in rng.integers(6, 11, size=3))
    spacing = tuple(float(s) for s in rng.uniform(0.5, 5.0, size=3))
    pred, truth = make_blob(rng, shape, 0.3), make_blob(rng, shape, 0.25)
    assert hd95(pred, truth, spacing, combine=combine) == pytest.approx(
        brute_hd95(pred, truth, spacing, combine), rel=1e-12, abs=1e-12
    )
    d_pt, d_tp = surface_distances(pred, truth, spacing)
    np.testing.assert_allclose(d_pt, brute_directed(pred, truth, spacing), rtol=1e-12)
    np.testing.assert_allclose(d_tp, brute_directed(truth, pred, spacing), rtol=1e-12)


def test_union_is_never_larger_than_max():
    for seed in range(5):
        pred, truth, spacing = random_pair(200 + seed)
        assert hd95(pred, truth, spacing, combine="union") <= hd95(pred, truth, spacing) + 1e-12


def test_surface_voxels_match_brute_force_and_border_is_surface():
    rng = np.random.default_rng(7)
    m = make_blob(rng, (9, 10, 11), 0.5)
    np.testing.assert_array_equal(surface_voxels(m), brute_surface(m))
    full = np.ones((4, 4, 4), bool)
    surf = surface_voxels(full)
    assert surf.sum() == 64 - 8  # only the 2x2x2 core is interior
    assert not surf[1:3, 1:3, 1:3].any()


def test_hd95_invariant_to_zero_padding_and_border_contact(monai_hd95):
    # Objects touching the array border: padding with background must not change anything
    # (outside the array counts as background), and the crop must not change the result.
    rng = np.random.default_rng(11)
    pred, truth = make_blob(rng, (12, 13, 10), 0.4), make_blob(rng, (12, 13, 10), 0.4)
    assert pred[0].any() or pred[-1].any() or pred[:, 0].any()  # the blobs do touch the border
    pad = ((5, 9), (0, 3), (7, 2))
    value = hd95(pred, truth, ANISO)
    assert hd95(np.pad(pred, pad), np.pad(truth, pad), ANISO) == pytest.approx(value, rel=1e-12)
    assert value == pytest.approx(monai_hd95(pred, truth, ANISO), rel=1e-5)


def test_hd95_scales_with_isotropic_spacing_and_swaps_symmetrically():
    pred, truth, _ = random_pair(42)
    base = hd95(pred, truth, (1.0, 1.0, 1.0))
    assert hd95(pred, truth, (2.5, 2.5, 2.5)) == pytest.approx(2.5 * base, rel=1e-12)
    assert hd95(truth, pred, ANISO) == pytest.approx(hd95(pred, truth, ANISO), rel=1e-12)


def test_hd95_input_errors():
    m = np.zeros((4, 4, 4), bool)
    m[1, 1, 1] = True
    with pytest.raises(ValueError, match="same shape"):
        hd95(m, m[:, :, :3], ANISO)
    with pytest.raises(ValueError, match="3 dimensions"):
        hd95(m, m, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        hd95(m, m, (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="percentile"):
        hd95(m, m, ANISO, percentile=101)
    with pytest.raises(ValueError, match="combine"):
        hd95(m, m, ANISO, combine="mean")
    with pytest.raises(ValueError, match="truth is empty"):
        surface_distances(m, np.zeros_like(m), ANISO)


# ---------------------------------------------------------------- classes and evaluate_case


def test_validate_classes_errors():
    assert validate_classes({"a": [np.int64(2)]}) == {"a": (2,)}
    with pytest.raises(ValueError, match="empty"):
        validate_classes({})
    with pytest.raises(TypeError, match=r"list such as \[1\]"):
        validate_classes({"spleen": 1})
    with pytest.raises(ValueError, match="background"):
        validate_classes({"x": [0, 1]})
    with pytest.raises(ValueError, match="repeats"):
        validate_classes({"x": [1, 1]})
    with pytest.raises(TypeError, match="not an integer"):
        validate_classes({"x": [1.5]})


def test_label_masks_regions():
    labels = np.array([[[0, 1, 2, 4, 3]]])
    masks = label_masks(labels, BRATS21_REGIONS)
    np.testing.assert_array_equal(masks["WT"][0, 0], [False, True, True, True, False])
    np.testing.assert_array_equal(masks["TC"][0, 0], [False, True, False, True, False])
    np.testing.assert_array_equal(masks["ET"][0, 0], [False, False, False, True, False])
    with pytest.raises(TypeError, match="integer label map"):
        label_masks(labels.astype(np.float32), BRATS21_REGIONS)


def test_evaluate_case_regions_and_notes():
    rng = np.random.default_rng(5)
    truth = rng.choice([0, 1, 2, 4], size=(12, 12, 12), p=[0.7, 0.1, 0.1, 0.1])
    pred = truth.copy()
    pred[:6][pred[:6] == 1] = 2  # necrosis called edema in half the volume: WT intact, TC/ET hurt
    classes = {**BRATS21_REGIONS, "absent": [7], "missed": [9]}
    truth[0, 0, 0] = 9  # one voxel of a label the prediction never has
    rows = evaluate_case(pred, truth, (1.0, 1.0, 2.0), classes, "brats_001")
    by = {r.class_name: r for r in rows}
    assert [r.class_name for r in rows] == list(classes)
    assert all(isinstance(r, CaseMetric) and r.case_id == "brats_001" for r in rows)
    for name in BRATS21_REGIONS:
        p, t = np.isin(pred, classes[name]), np.isin(truth, classes[name])
        assert by[name].dice == pytest.approx(dice_score(p, t))
        assert by[name].hd95 == pytest.approx(hd95(p, t, (1.0, 1.0, 2.0)))
        assert (by[name].pred_voxels, by[name].truth_voxels) == (int(p.sum()), int(t.sum()))
        assert by[name].note == ""
    assert by["TC"].dice < 1.0
    assert by["absent"] == CaseMetric("brats_001", "absent", 1.0, 0.0, 0, 0, "both empty")
    assert by["missed"].dice == 0.0 and math.isnan(by["missed"].hd95)
    assert by["missed"].note == "prediction empty" and by["missed"].truth_voxels == 1
    rows = evaluate_case(truth, pred, (1.0, 1.0, 2.0), {"missed": [9]}, "swap")
    assert rows[0].note == "truth empty" and math.isnan(rows[0].hd95)


def test_evaluate_case_shape_mismatch_names_case_and_shapes():
    with pytest.raises(ValueError, match=r"case 'c7'.*\(4, 4, 4\).*\(4, 4, 5\)"):
        evaluate_case(np.zeros((4, 4, 4), int), np.zeros((4, 4, 5), int), (1, 1, 1), {"a": [1]}, "c7")


def test_evaluate_masks_requires_same_names():
    m = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match="differ"):
        evaluate_masks({"WT": m}, {"WT": m, "ET": m}, (1, 1, 1), "c1")
    rows = evaluate_masks({"WT": m}, {"WT": m}, (1, 1, 1), "c1")
    assert rows[0].dice == 1.0 and rows[0].hd95 == 0.0
