"""The one home of NIfTI naming: extensions, case ids, channel numbers."""

import pytest

from medcontext.data.nifti_io import save_nifti
from medcontext.data.nifti_names import case_id_from_path, nifti_suffix, split_channel


@pytest.mark.parametrize("name, suffix", [("a.nii.gz", ".nii.gz"), ("a.nii", ".nii"), ("a.gz", None),
                                          (".nii.gz", None), ("a.nii.gz.bak", None), ("x.mha", None)])
def test_nifti_suffix(name, suffix):
    assert nifti_suffix(name) == suffix


@pytest.mark.parametrize("stem, expected", [("case_0001", ("case", 1)), ("a_0000_0002", ("a_0000", 2)),
                                            ("case_001", ("case_001", None)), ("_0000", ("_0000", None)),
                                            ("case", ("case", None))])
def test_split_channel(stem, expected):
    assert split_channel(stem) == expected


def test_case_ids_and_the_writer_use_the_same_rule(tmp_path):
    assert case_id_from_path("imagesTr/la_003.nii.gz") == "la_003"
    assert case_id_from_path("p/x_pred.nii", "_pred") == "x"
    with pytest.raises(ValueError, match="not a NIfTI file"):
        case_id_from_path("x.mha")
    with pytest.raises(ValueError, match="NIfTI file names end in .nii or .nii.gz"):
        save_nifti([[[0]]], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], tmp_path / "x.nii.gz.tmp")
    written = save_nifti([[[0]]], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], tmp_path / "x.nii")
    assert written.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["x.nii"]
