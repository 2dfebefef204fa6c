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


BROKEN_DATASETS_FOUND_BY = "validate_dataset"  # the catalogue's entries with a case_problem (conftest.py)


def test_each_problem_is_named_and_nothing_is_written(tmp_path, helpers, broken_dataset):
    root = _good(tmp_path / "ds", helpers)
    spec = load_dataset(root)
    broken_dataset.break_it(root, helpers)
    before = helpers.snapshot(root)
    with pytest.raises(DatasetError) as err:
        validate_dataset(spec, progress=False)
    msg = str(err.value)
    assert broken_dataset.case_problem in msg and broken_dataset.problem in msg, msg
    assert str(root) in msg  # the file is named with its path
    assert "case_000" not in msg and "case_002" not in msg  # healthy cases are not blamed
    assert helpers.snapshot(root) == before


def test_all_problems_are_listed_at_once(tmp_path, helpers):
    root = _good(tmp_path / "ds", helpers)
    spec = load_dataset(root)
    image, _ = helpers.blob_case(seed=1)
    image[1, 2, 3], image[2, 2, 3] = np.nan, np.inf  # the catalogue's nan_inf
    helpers.write_nifti(root / "imagesTr" / "case_001.nii.gz", image)
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
