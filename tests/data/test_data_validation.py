"""validate_dataset: every kind of bad input is reported, named, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcontext.data import DatasetError, load_dataset, validate_dataset



def _good(root: Path, helpers) -> Path:
    return helpers.write_msd(root, n=3)


def _corrupt(root, helpers):
    (root / "imagesTr" / "case_001.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    return "case case_001: image file", "case_001.nii.gz is"


def _missing_after_load(root, helpers):
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    return "case case_001: label file", "does not exist"


def _shape(root, helpers):
    helpers.write_nifti(root / "labelsTr" / "case_001.nii.gz", np.zeros((12, 12, 11), np.uint8))
    return "case case_001: label", "has shape (12, 12, 11) but image"


def _affine(root, helpers):
    _, label = helpers.blob_case(seed=1)
    helpers.write_nifti(root / "labelsTr" / "case_001.nii.gz", label, np.diag([1.0, 1.0, 1.2, 1.0]))
    return "case case_001: label", "affine differs from image"


def _channels(root, helpers):
    image, _ = helpers.blob_case(seed=1)
    helpers.write_nifti(root / "imagesTr" / "case_001.nii.gz", np.stack([image, image], -1))
    return "case case_001: image", "has 2 channel(s) but the dataset has 1"


def _unknown_value(root, helpers):
    _, label = helpers.blob_case(seed=1)
    label[0, 0, 0] = 5
    helpers.write_nifti(root / "labelsTr" / "case_001.nii.gz", label)
    return "case case_001: label", "has values [5] not in the dataset's labels [0, 1, 2]"


def _nan(root, helpers):
    image, _ = helpers.blob_case(seed=1)
    image[1, 2, 3] = np.nan
    image[2, 2, 3] = np.inf
    helpers.write_nifti(root / "imagesTr" / "case_001.nii.gz", image)
    return "case case_001: image", "has 2 NaN/Inf voxels"


def _fraction(root, helpers):
    _, label = helpers.blob_case(seed=1)
    label = label.astype(np.float32)
    label[0, 0, 0] = 0.5
    helpers.write_nifti(root / "labelsTr" / "case_001.nii.gz", label)
    return "case case_001: label", "non-integer values [0.5]"


def _two_dim(root, helpers):
    helpers.write_nifti(root / "imagesTr" / "case_001.nii.gz", np.zeros((12, 12), np.float32))
    return "case case_001: image", "has 2 dimensions"


BAD_INPUTS = [_corrupt, _missing_after_load, _shape, _affine, _channels, _unknown_value, _nan, _fraction, _two_dim]


@pytest.mark.parametrize("break_it", BAD_INPUTS, ids=[f.__name__.strip("_") for f in BAD_INPUTS])
def test_each_problem_is_named_and_nothing_is_written(tmp_path, helpers, break_it):
    root = _good(tmp_path / "ds", helpers)
    spec = load_dataset(root)
    who, what = break_it(root, helpers)
    before = helpers.snapshot(root)
    with pytest.raises(DatasetError) as err:
        validate_dataset(spec, progress=False)
    msg = str(err.value)
    assert who in msg and what in msg, msg
    assert str(root) in msg  # the file is named with its path
    assert "case_000" not in msg and "case_002" not in msg  # healthy cases are not blamed
    assert helpers.snapshot(root) == before


def test_all_problems_are_listed_at_once(tmp_path, helpers):
    root = _good(tmp_path / "ds", helpers)
    spec = load_dataset(root)
    _nan(root, helpers)
    image, _ = helpers.blob_case(seed=2)
    helpers.write_nifti(root / "labelsTr" / "case_002.nii.gz", np.full((12, 12, 12), 9, np.uint8))
    with pytest.raises(DatasetError) as err:
        validate_dataset(spec, progress=False)
    assert len(err.value.problems) == 2
    assert "case_001" in err.value.problems[0] and "case_002" in err.value.problems[1]
    assert "2 case(s)" in str(err.value)


def test_summary_reports_geometry_and_volumes(tmp_path, helpers):
    root = tmp_path / "ds"
    image, label = helpers.blob_case()
    lps = np.diag([-2.0, -2.0, 3.0, 1.0])
    helpers.write_nifti(root / "images" / "x.nii.gz", image, lps)
    helpers.write_nifti(root / "labels" / "x.nii.gz", label, lps)
    helpers.write_nifti(root / "images" / "y.nii.gz", image)
    helpers.write_nifti(root / "labels" / "y.nii.gz", label)
    spec = load_dataset(root)
    before = helpers.snapshot(root)
    summary = validate_dataset(spec, progress=False)
    assert helpers.snapshot(root) == before
    x, y = summary.cases
    assert x.shape == (12, 12, 12) and x.spacing == (2.0, 2.0, 3.0) and x.orientation == "LPS"
    assert y.spacing == (1.0, 1.0, 1.0) and y.orientation == "RAS"
    assert x.label_voxels == {0: 12**3 - 64 - 80, 1: 64, 2: 80}
    assert x.label_ml[1] == pytest.approx(64 * 12 / 1000) and y.label_ml[2] == pytest.approx(0.08)
    assert x.intensity_range[1] == pytest.approx(float(image.max()))
    text = summary.format()
    assert "LPS x1" in text and "RAS x1" in text and "0.77" in text  # 64 voxels of 12 mm^3
    assert "label1: in 2/2 cases" in text
    assert json.loads(json.dumps(summary.to_dict()))["cases"][0]["orientation"] == "LPS"


def test_real_hippocampus_validates(require_data):
    hippocampus = require_data("Task04_Hippocampus", "dataset.json")
    spec = load_dataset(hippocampus)
    summary = validate_dataset(spec, progress=False)  # no timing assertion: tests run on any machine
    assert len(summary.cases) == 200
    assert {c.orientation for c in summary.cases} == {"RAS"}
    assert all(c.spacing == (1.0, 1.0, 1.0) for c in summary.cases)
    first = summary.cases[0]
    ref = nib.load(str(hippocampus / "labelsTr" / "hippocampus_001.nii.gz"))
    counts = np.bincount(np.asarray(ref.dataobj).astype(int).ravel())
    assert first.case_id == "hippocampus_001" and first.label_voxels == {k: int(v) for k, v in enumerate(counts)}
    assert "hippocampus_001" in summary.format()
