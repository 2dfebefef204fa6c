"""The folders layout: ``images/`` + ``labels/`` (``imagesTr``/``labelsTr``, BTCV's ``img``/``label``).

Images and labels are matched by case id; nnU-Net channel suffixes group channels; BTCV's
``img0001`` / ``label0001`` are matched by their number; ``imagesTs/`` holds unlabelled
cases. A folder without an images folder may hold BraTS subject folders (:mod:`.brats`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from medcontext.data.dataset_spec import CaseRecord, DatasetError, format_problems
from medcontext.data.layouts.brats import read_brats_subjects
from medcontext.data.nifti_names import CHANNEL_SUFFIX, TRAILING_NUMBER, case_id_from_path, is_nifti_file

__all__ = ["read_folders", "image_cases"]


def _group_channels(
    files: list[Path], label_ids: set[str], use_suffix: bool | None = None
) -> tuple[dict[str, list[Path]], bool]:
    """Case id -> image files; nnU-Net ``_0000`` suffixes group channels of one case.

    Suffixes are channel numbers when every file has one and (given labels) the stripped
    names match the label files at least as well as the full names; ``use_suffix`` forces
    the choice (unlabelled folders follow the labelled one). Returns the groups and the choice.
    """
    stems = {f: case_id_from_path(f) for f in files}
    matches = {f: CHANNEL_SUFFIX.match(s) for f, s in stems.items()}
    if use_suffix is None:
        use_suffix = bool(files) and all(matches.values())
    else:
        use_suffix = use_suffix and all(matches.values())
    if use_suffix and label_ids:
        stripped = {m.group(1) for m in matches.values() if m}
        plain = set(stems.values())
        use_suffix = len(stripped & label_ids) >= len(plain & label_ids)
    groups: dict[str, list[tuple[int, Path]]] = {}
    for f in files:
        m = matches[f]
        if use_suffix and m:
            groups.setdefault(m.group(1), []).append((int(m.group(2)), f))
        else:
            groups.setdefault(stems[f], []).append((0, f))
    out: dict[str, list[Path]] = {}
    for cid, items in groups.items():
        items.sort()
        idx = [i for i, _ in items]
        if use_suffix and idx != list(range(len(idx))):
            raise DatasetError(
                f"case {cid}: channel files {[f.name for _, f in items]} must be numbered _0000, _0001, ... without gaps"
            )
        if not use_suffix and len(items) > 1:
            raise DatasetError(f"case {cid}: several image files {[str(f) for _, f in items]}")
        out[cid] = [f for _, f in items]
    return out, use_suffix


def image_cases(files: list[Path]) -> dict[str, list[Path]]:
    """Case id -> image files of unlabelled NIfTI files (nnU-Net ``_0000`` suffixes group channels)."""
    return _group_channels(sorted(files), set())[0]


def _match_labels(image_ids: Iterable[str], label_files: dict[str, Path]) -> dict[str, Path]:
    """Image case id -> label file, by equal id or (BTCV ``img0001``/``label0001``) by number."""
    out: dict[str, Path] = {}
    by_number: dict[int, list[str]] = {}
    for lid in label_files:
        m = TRAILING_NUMBER.match(lid)
        if m:
            by_number.setdefault(int(m.group(2)), []).append(lid)
    for cid in image_ids:
        if cid in label_files:
            out[cid] = label_files[cid]
            continue
        m = TRAILING_NUMBER.match(cid)
        if m and len(by_number.get(int(m.group(2)), [])) == 1:
            lid = by_number[int(m.group(2))][0]
            if lid not in image_ids:
                out[cid] = label_files[lid]
    return out


def read_folders(
    root: Path,
    image_dirs: Sequence[str] = ("images", "imagesTr", "img"),
    label_dirs: Sequence[str] = ("labels", "labelsTr", "label"),
) -> dict[str, Any]:
    img_dir = next((root / d for d in image_dirs if (root / d).is_dir()), None)
    if img_dir is None:
        brats = read_brats_subjects(root)
        if brats is not None:
            return brats
        raise DatasetError(
            f"{root}: no dataset found: expected dataset.json (MSD), a datalist .json, an images folder "
            f"({' or '.join(d + '/' for d in image_dirs)}) with a labels folder "
            f"({' or '.join(d + '/' for d in label_dirs)}), or BraTS subject folders"
        )
    lbl_dir = next((root / d for d in label_dirs if (root / d).is_dir()), None)
    if lbl_dir is None:
        raise DatasetError(
            f"{root}: found {img_dir.name}/ but no labels folder ({' or '.join(d + '/' for d in label_dirs)})"
        )
    image_files = sorted(f for f in img_dir.iterdir() if is_nifti_file(f))
    if not image_files:
        raise DatasetError(f"{img_dir}: no NIfTI files (.nii or .nii.gz)")
    label_files = {case_id_from_path(f): f for f in sorted(lbl_dir.iterdir()) if is_nifti_file(f)}
    groups, suffixed = _group_channels(image_files, set(label_files))
    matched = _match_labels(list(groups), label_files)
    problems = []
    for cid in groups:
        if cid not in matched:
            problems.append(f"case {cid}: no label file in {lbl_dir} (expected {lbl_dir / (cid + '.nii.gz')})")
    used = {p for p in matched.values()}
    for lid, lf in label_files.items():
        if lf not in used:
            problems.append(f"label {lf}: no image for case {lid} in {img_dir}")
    if problems:
        raise DatasetError(format_problems(f"images and labels of {root} do not match", problems), problems)
    cases = [CaseRecord(cid, files, matched[cid]) for cid, files in groups.items()]
    unlabeled: list[CaseRecord] = []
    ts_dir = root / "imagesTs"
    if ts_dir.is_dir():
        ts_files = sorted(f for f in ts_dir.iterdir() if is_nifti_file(f))
        if ts_files:
            for cid, files in _group_channels(ts_files, set(), use_suffix=suffixed)[0].items():
                unlabeled.append(CaseRecord(cid, files, None))
    return {
        "root": root,
        "layout": "folders",
        "name": root.name,
        "cases": cases,
        "unlabeled": unlabeled,
        "labels": None,
        "channel_names": None,
        "official_train": None,
        "official_test": None,
        "task": root.name,
    }
