"""The BraTS 2021 release layout: one folder per subject with ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair``, ``*_seg``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medcontext.data.dataset_spec import CaseRecord, DatasetError, format_problems
from medcontext.data.nifti_names import find_nifti

__all__ = ["read_brats_subjects"]

_BRATS_SUFFIXES = ("t1", "t1ce", "t2", "flair")


def read_brats_subjects(root: Path) -> dict[str, Any] | None:
    """BraTS 2021 release: ``<id>/<id>_{t1,t1ce,t2,flair}.nii.gz`` and ``<id>/<id>_seg.nii.gz``."""
    subjects = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    cases, problems = [], []
    for d in subjects:
        seg = find_nifti(d, f"{d.name}_seg")
        if seg is None and not any(find_nifti(d, f"{d.name}_{s}") for s in _BRATS_SUFFIXES):
            continue
        images = [find_nifti(d, f"{d.name}_{s}") for s in _BRATS_SUFFIXES]
        missing = [f"{d.name}_{s}.nii.gz" for s, p in zip(_BRATS_SUFFIXES, images) if p is None]
        if seg is None:
            missing.append(f"{d.name}_seg.nii.gz")
        if missing:
            problems.append(f"case {d.name}: missing {', '.join(missing)} in {d}")
            continue
        cases.append(CaseRecord(d.name, [p for p in images if p is not None], seg))
    if not cases and not problems:
        return None
    if problems:
        raise DatasetError(format_problems(f"BraTS subject folders in {root} are incomplete", problems), problems)
    return {
        "root": root,
        "layout": "brats_subjects",
        "name": root.name,
        "cases": cases,
        "unlabeled": [],
        "labels": None,
        "channel_names": ["T1", "T1Gd", "T2", "FLAIR"],
        "official_train": None,
        "official_test": None,
        "task": root.name,
    }
