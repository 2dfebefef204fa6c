"""evaluate_folder on NIfTI files: pairing, header checks, spacing from the reference header."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcontext.evaluation import (
    as_label_map,
    case_id_from_path,
    evaluate_case,
    evaluate_folder,
    header_spacing,
    pair_cases,
)

SPACING = (0.8, 0.8, 5.0)
CLASSES = {"a": [1], "b": [2]}


def affine(spacing=SPACING, origin=(10.0, -4.0, 2.0)) -> np.ndarray:
    out = np.diag([*spacing, 1.0])
    out[:3, 3] = origin
    return out


def save(path: Path, data: np.ndarray, aff: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine(SPACING) if aff is None else aff), str(path))
    return path


def label_volume(seed: int, shape=(14, 12, 8)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.uint8)
    x, y, z = (int(v) for v in rng.integers(2, 5, size=3))
    out[x : x + 6, y : y + 5, z : z + 3] = 1
    out[x + 3 : x + 6, y : y + 5, z : z + 3] = 2
    return out


@pytest.fixture
def folders(tmp_path):
    truth_dir, pred_dir = tmp_path / "labels", tmp_path / "preds"
    cases = {}
    for k, cid in enumerate(["case_002", "case_001", "case_003"]):
        truth = label_volume(k)
        pred = np.roll(truth, k, axis=2)  # a shift along the 5 mm axis
        save(truth_dir / f"{cid}.nii.gz", truth)
        save(pred_dir / f"{cid}.nii.gz", pred)
        cases[cid] = (pred, truth)
    save(truth_dir / "case_999.nii.gz", label_volume(9))  # a reference without prediction: ignored
    (pred_dir / "._case_001.nii.gz").write_bytes(b"macOS resource fork, not an image")
    (pred_dir / "notes.txt").write_text("not an image")
    return pred_dir, truth_dir, cases


def test_evaluate_folder_matches_evaluate_case_with_header_spacing(folders):
    pred_dir, truth_dir, cases = folders
    table = evaluate_folder(pred_dir, truth_dir, CLASSES, progress=False)
    assert table.case_ids == ["case_001", "case_002", "case_003"]
    assert table.class_names == ["a", "b"]
    expected = []
    for cid in sorted(cases):
        pred, truth = cases[cid]
        expected += evaluate_case(pred, truth, SPACING, CLASSES, cid)
    got = table.rows
    assert [(r.case_id, r.class_name) for r in got] == [(r.case_id, r.class_name) for r in expected]
    for r, e in zip(got, expected):
        assert r.dice == pytest.approx(e.dice) and r.hd95 == pytest.approx(e.hd95)
    # the shift along z is measured with the 5 mm header spacing, not with 1 mm voxels
    shifted = [r for r in got if r.case_id == "case_001" and r.class_name == "a"][0]
    assert shifted.hd95 == pytest.approx(5.0)


def test_mapping_selects_cases_and_requires_predictions(folders, tmp_path):
    pred_dir, truth_dir, _ = folders
    table = evaluate_folder(pred_dir, {"case_003": truth_dir / "case_003.nii.gz"}, CLASSES, progress=False)
    assert table.case_ids == ["case_003"]
    with pytest.raises(ValueError, match=r"no prediction.*case_999"):
        pair_cases(pred_dir, {"case_999": truth_dir / "case_999.nii.gz"})
    with pytest.raises(FileNotFoundError, match="nothere"):
        pair_cases(pred_dir, {"case_001": tmp_path / "nothere.nii.gz"})


def test_prediction_without_reference_is_an_error(folders):
    pred_dir, truth_dir, _ = folders
    save(pred_dir / "case_777.nii.gz", label_volume(1))
    with pytest.raises(ValueError, match=r"no reference.*case_777"):
        evaluate_folder(pred_dir, truth_dir, CLASSES, progress=False)


def test_shape_mismatch_names_both_files(folders):
    pred_dir, truth_dir, _ = folders
    save(pred_dir / "case_002.nii.gz", np.zeros((14, 12, 9), np.uint8))
    with pytest.raises(ValueError, match=r"case_002.*preds/case_002\.nii\.gz.*\(14, 12, 9\).*labels/case_002\.nii\.gz"):
        evaluate_folder(pred_dir, truth_dir, CLASSES, progress=False)


def test_affine_mismatch_names_both_files(folders):
    pred_dir, truth_dir, cases = folders
    save(pred_dir / "case_001.nii.gz", cases["case_001"][0], affine(origin=(10.0, -4.0, 7.0)))
    with pytest.raises(ValueError, match=r"preds/case_001\.nii\.gz and reference .*labels/case_001\.nii\.gz.*affines"):
        evaluate_folder(pred_dir, truth_dir, CLASSES, progress=False)
    # a tiny float difference is tolerated
    save(pred_dir / "case_001.nii.gz", cases["case_001"][0], affine(origin=(10.0, -4.0, 2.0 + 1e-5)))
    assert len(evaluate_folder(pred_dir, truth_dir, CLASSES, progress=False)) == 6


def test_pred_suffix_and_float_labels(tmp_path):
    truth = label_volume(4)
    save(tmp_path / "gt" / "x_01.nii.gz", truth.astype(np.float32))  # labels stored as float32
    save(tmp_path / "out" / "x_01_seg.nii.gz", truth.astype(np.int16))
    save(tmp_path / "out" / "x_01_prob.nii.gz", np.full(truth.shape, 0.5, np.float32))  # other suffix: ignored
    table = evaluate_folder(tmp_path / "out", tmp_path / "gt", CLASSES, pred_suffix="_seg", progress=False)
    assert [(r.case_id, r.dice, r.hd95) for r in table.rows] == [("x_01", 1.0, 0.0), ("x_01", 1.0, 0.0)]


def test_probability_map_is_refused(tmp_path):
    truth = label_volume(4)
    save(tmp_path / "gt" / "x.nii.gz", truth)
    save(tmp_path / "out" / "x.nii.gz", truth * np.float32(0.4))
    with pytest.raises(ValueError, match=r"out/x\.nii\.gz.*non-integer"):
        evaluate_folder(tmp_path / "out", tmp_path / "gt", CLASSES, progress=False)


def test_helpers():
    assert case_id_from_path("/a/b/hippocampus_001.nii.gz") == "hippocampus_001"
    assert case_id_from_path("p/x_pred.nii", "_pred") == "x"
    with pytest.raises(ValueError, match="NIfTI"):
        case_id_from_path("x.mha")
    with pytest.raises(ValueError, match="suffix"):
        case_id_from_path("x.nii.gz", "_pred")
    assert as_label_map(np.zeros((3, 4, 5, 1), np.float32)).shape == (3, 4, 5)
    assert as_label_map(np.array([[[1.0, 2.0]]])).dtype == np.int64
    with pytest.raises(ValueError, match="3D"):
        as_label_map(np.zeros((3, 4, 5, 2)))
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), affine((0.5, 0.7, 3.0)))
    assert header_spacing(img) == pytest.approx((0.5, 0.7, 3.0))
    img.header.set_xyzt_units("micron")
    assert header_spacing(img) == pytest.approx((0.0005, 0.0007, 0.003))


def test_missing_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="prediction folder"):
        pair_cases(tmp_path / "nope", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no prediction files"):
        pair_cases(tmp_path / "empty", tmp_path)


@pytest.mark.slow
def test_real_hippocampus_and_spleen_agree_with_monai(tmp_path, require_data, monai_dice, monai_hd95):
    data = require_data("Task04_Hippocampus", "labelsTr").parent
    require_data("fixtures", "spleen_ct_label.nii.gz")
    from scipy import ndimage

    truth_files = sorted((data / "Task04_Hippocampus" / "labelsTr").glob("hippocampus_*.nii.gz"))[:4]
    for k, path in enumerate(truth_files):
        img = nib.load(path)
        pred = np.roll(np.asanyarray(img.dataobj), k + 1, axis=k % 3)
        nib.save(nib.Nifti1Image(pred, img.affine, img.header), str(tmp_path / path.name))
    spleen = data / "fixtures" / "spleen_ct_label.nii.gz"
    img = nib.load(spleen)
    spleen_truth = np.asanyarray(img.dataobj) > 0
    spleen_pred = ndimage.binary_erosion(np.roll(spleen_truth, 2, axis=0), iterations=2)
    nib.save(nib.Nifti1Image(spleen_pred.astype(np.uint8), img.affine, img.header), str(tmp_path / "spleen.nii.gz"))

    mapping = {p.name[: -len(".nii.gz")]: p for p in truth_files}
    table = evaluate_folder(tmp_path, mapping, {"Anterior": [1], "Posterior": [2]}, progress=False)
    assert len(table) == 8
    for row in table.rows:
        truth_img = nib.load(mapping[row.case_id])
        values = {"Anterior": 1, "Posterior": 2}[row.class_name]
        t = np.asanyarray(truth_img.dataobj) == values
        p = np.asanyarray(nib.load(tmp_path / f"{row.case_id}.nii.gz").dataobj) == values
        spacing = truth_img.header.get_zooms()[:3]
        assert row.dice == pytest.approx(monai_dice(p, t), abs=1e-6)
        assert row.hd95 == pytest.approx(monai_hd95(p, t, spacing), rel=1e-5)

    table = evaluate_folder(tmp_path, {"spleen": spleen}, {"spleen": [1]}, progress=False)
    (row,) = table.rows
    assert header_spacing(img) == pytest.approx((0.794922, 0.794922, 5.0), rel=1e-5)
    assert row.hd95 == pytest.approx(monai_hd95(spleen_pred, spleen_truth, header_spacing(img)), rel=1e-5)
    assert 0.5 < row.dice < 1.0 and not math.isnan(row.hd95)
