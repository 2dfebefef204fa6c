"""Reading a dataset: a folder or datalist JSON -> a :class:`~medcontext.data.dataset_spec.DatasetSpec`.

:func:`load_dataset` reads the case list with the reader of its layout
(:mod:`medcontext.data.layouts`), then fills in the conventions from a preset
(:mod:`medcontext.data.presets`). It looks at file names, ``dataset.json`` and, where nothing
else says how many channels there are, one image header; only a dataset without any label
table (plain folders or a datalist, no preset) has its label maps read to list the values.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from medcontext.data.dataset_spec import CaseRecord, DatasetError, DatasetSpec, format_problems
from medcontext.data.grouping import GroupRuleError, case_groups, check_group_rule
from medcontext.data.layouts import MSD_LAYOUTS, read_datalist, read_folders, read_json, read_msd
from medcontext.data.nifti_names import TRAILING_NUMBER
from medcontext.data.presets import DEFAULT_CT_WINDOW, MSD_CT_WINDOWS, PRESETS, SYNAPSE_CT_WINDOWS, Preset

__all__ = ["load_dataset"]


def load_dataset(
    path: str | Path,
    preset: str = "auto",
    datalist: str | Path | None = None,
    *,
    ct_window: tuple[float, float] | str | None = None,
    group_by: str | None = None,
    missing_labels_ok: bool = False,
) -> DatasetSpec:
    """Read a dataset's case list and conventions.

    Only file names, JSON files and headers are read, except when neither a preset nor the
    JSON names the labels: then the label maps are read once to list their values.

    Args:
        path: dataset folder (MSD layout, ``images/`` + ``labels/`` folders, BraTS subject
            folders) or a datalist / ``dataset.json`` file.
        preset: ``"auto"``, ``"msd"``, ``"synapse"``, ``"acdc"``, ``"brats21"``,
            ``"brats17"`` or ``"generic"``. ``"auto"`` is ``msd`` when ``dataset.json``
            exists (``brats17`` for an MSD Task01_BrainTumour folder, ``acdc`` when its
            ``name`` is ``ACDC``), else ``generic``.
        datalist: a MONAI-style datalist JSON; relative entries are resolved against
            ``path`` (then the JSON's own folder). Relative ``datalist`` paths are looked up
            under ``path`` first.
        ct_window: override the CT window, as ``(low, high)`` in HU or a name of
            :data:`SYNAPSE_CT_WINDOWS` (``"code"`` = [-175, 250], ``"paper"`` = [-1000, 1000]).
        group_by: override the preset's group rule (``"regex:PATTERN"``,
            ``"metadata:COLUMN"`` or ``"none"``; :mod:`medcontext.data.grouping`).
        missing_labels_ok: a listed label file may be absent (``data.unlabeled: pool``: the
            cases the split leaves over are used without labels; the run checks the labels of
            the cases it trains, validates and tests on). A table-less dataset then lists its
            label values from the files that exist.

    Returns:
        The dataset description with sorted, labelled ``cases``.

    Raises:
        DatasetError: missing folder, file or ``dataset.json`` key (named in the message),
            unknown preset, unmatched images/labels, no labelled cases.
    """
    path = Path(path).expanduser()
    if preset not in ("auto", *PRESETS):
        close = difflib.get_close_matches(str(preset), ["auto", *PRESETS], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DatasetError(f"unknown dataset preset {preset!r}{hint}; choose one of {['auto', *PRESETS]}")
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist")

    source = _read_source(path, datalist)
    hint = source.pop("resolved_preset_hint", None)
    chosen = preset
    if preset == "auto":
        chosen = hint or ("msd" if source["layout"] in MSD_LAYOUTS else "generic")
    if chosen == "msd" and source["layout"] not in MSD_LAYOUTS:
        raise DatasetError(f"preset 'msd' needs a dataset.json in {source['root']}; none found")
    return _build_spec(source, PRESETS[chosen], ct_window, group_by, missing_labels_ok)


def _read_source(path: Path, datalist: str | Path | None) -> dict[str, Any]:
    """Case lists plus whatever metadata the files hold, before any preset is applied."""
    if datalist is not None:
        root = path if path.is_dir() else path.parent
        dl = Path(datalist).expanduser()
        if not dl.is_absolute():
            dl = root / dl if (root / dl).exists() else dl
        if not dl.is_file():
            raise DatasetError(f"datalist {dl} does not exist")
        return read_datalist(dl, base_dir=root)
    if path.is_file():
        if path.suffix != ".json":
            raise DatasetError(f"{path}: expected a dataset folder or a .json datalist")
        meta = read_json(path)
        if path.name == "dataset.json" and ("modality" in meta or "channel_names" in meta):
            return read_msd(path.parent)
        return read_datalist(path, base_dir=path.parent)
    if (path / "dataset.json").is_file():
        return read_msd(path)
    return read_folders(path)


def _modality_of(channel_names: Sequence[str]) -> str:
    return "CT" if channel_names and all(n.strip().upper() == "CT" for n in channel_names) else "MRI"


def _build_spec(
    source: dict[str, Any], preset: Preset, ct_window: tuple[float, float] | str | None, group_by: str | None = None,
    missing_labels_ok: bool = False,
) -> DatasetSpec:
    root: Path = source["root"]
    cases: list[CaseRecord] = sorted(source["cases"], key=lambda c: c.case_id)
    unlabeled: list[CaseRecord] = sorted(source["unlabeled"], key=lambda c: c.case_id)
    if not cases:
        raise DatasetError(f"dataset at {root} has no labelled cases")
    _check_files_exist(cases + unlabeled, root, labels=not missing_labels_ok)

    labels = dict(preset.labels) if preset.labels is not None else source["labels"]
    if labels is None:
        labels = _labels_from_files([c for c in cases if not missing_labels_ok or (c.label and c.label.is_file())])
    channel_names = _channel_names(source, preset, cases[0], root)
    modality = preset.modality or _modality_of(channel_names)
    regions, eval_classes, eval_names = _evaluated_classes(preset, labels)
    window = _ct_window(modality, preset, source.get("task", ""), ct_window)
    ids = {c.case_id for c in cases}
    official_train = _map_official(preset.official_train, ids) or source.get("official_train")
    official_test = _map_official(preset.official_test, ids) or source.get("official_test")
    few_shot = _map_official(preset.few_shot, ids)
    rule = group_by if group_by is not None else preset.group_by
    try:
        rule = check_group_rule(rule)
        groups = case_groups([c.case_id for c in cases], rule, root)
    except GroupRuleError as err:
        raise DatasetError(f"dataset at {root}: {err}") from err

    return DatasetSpec(
        root=root,
        name=source["name"],
        preset=preset.name,
        cases=cases,
        unlabeled=unlabeled,
        channel_names=channel_names,
        modality=modality,
        labels=labels,
        output_mode=preset.output_mode,
        regions=regions,
        eval_classes=eval_classes,
        eval_class_names=eval_names,
        target_spacing=preset.target_spacing,
        ct_window=window,
        default_roi=preset.default_roi,
        official_train=official_train,
        official_test=official_test,
        few_shot=few_shot,
        normalization=preset.normalization,
        crop_foreground=preset.crop_foreground,
        layout=source["layout"],
        group_by=rule,
        groups=groups,
    )


def _channel_names(source: dict[str, Any], preset: Preset, first: CaseRecord, root: Path) -> list[str]:
    """The dataset's channel names (read, or the preset's, or counted in the first image)."""
    channel_names = list(source["channel_names"] or preset.channel_names or [])
    if not channel_names:
        n = _count_channels(first)
        channel_names = ["image"] if n == 1 else [f"channel{i}" for i in range(n)]
    if preset.channel_names is not None and len(preset.channel_names) != len(channel_names):
        raise DatasetError(
            f"preset {preset.name!r} expects {len(preset.channel_names)} channels {list(preset.channel_names)} "
            f"but the dataset at {root} names {len(channel_names)}: {channel_names}"
        )
    return channel_names


def _evaluated_classes(preset: Preset, labels: dict) -> tuple[dict[str, list[int]] | None, list[int], list[str]]:
    """``(regions or None, evaluated classes, their names)``: sigmoid regions or softmax labels."""
    if preset.output_mode == "sigmoid":
        regions = {k: list(v) for k, v in (preset.regions or {}).items()}
        eval_classes = list(preset.eval_classes or range(len(regions)))
        return regions, eval_classes, [list(regions)[i] for i in eval_classes]
    eval_classes = list(preset.eval_classes) if preset.eval_classes is not None else sorted(k for k in labels if k != 0)
    return None, eval_classes, [labels[c] for c in eval_classes]


def _ct_window(modality: str, preset: Preset, task: str,
               ct_window: tuple[float, float] | str | None) -> tuple[float, float] | None:
    """The intensity window of a CT dataset (the preset's or the MSD task's), or the one asked for."""
    window: tuple[float, float] | None = None
    if modality == "CT":
        window = preset.ct_window or MSD_CT_WINDOWS.get(task, DEFAULT_CT_WINDOW)
    if ct_window is None:
        return window
    if isinstance(ct_window, str):
        if ct_window not in SYNAPSE_CT_WINDOWS:
            raise DatasetError(f"unknown CT window name {ct_window!r}; choose one of {list(SYNAPSE_CT_WINDOWS)}")
        return SYNAPSE_CT_WINDOWS[ct_window]
    lo, hi = (float(v) for v in ct_window)
    if not lo < hi:
        raise DatasetError(f"CT window must be (low, high) with low < high, got {ct_window}")
    return (lo, hi)


def _map_official(official: Sequence[str] | None, ids: set[str]) -> list[str] | None:
    """Map published ids (``img0005``) onto this dataset's ids by number (``case0005``)."""
    if official is None:
        return None
    by_number: dict[int, list[str]] = {}
    for cid in ids:
        m = TRAILING_NUMBER.match(cid)
        if m:
            by_number.setdefault(int(m.group(2)), []).append(cid)
    out = []
    for oid in official:
        if oid in ids:
            out.append(oid)
            continue
        m = TRAILING_NUMBER.match(oid)
        found = by_number.get(int(m.group(2)), []) if m else []
        out.append(found[0] if len(found) == 1 else oid)
    return out


def _check_files_exist(cases: Sequence[CaseRecord], root: Path, labels: bool = True) -> None:
    problems = []
    for case in cases:
        for p in case.images:
            if not p.is_file():
                problems.append(f"case {case.case_id}: image file {p} does not exist")
        if labels and case.label is not None and not case.label.is_file():
            problems.append(f"case {case.case_id}: label file {case.label} does not exist")
    if problems:
        raise DatasetError(format_problems(f"dataset at {root} lists missing files", problems), problems)


def _count_channels(case: CaseRecord) -> int:
    if len(case.images) > 1:
        return len(case.images)
    shape = _load_header(case.case_id, case.images[0]).shape
    return int(shape[3]) if len(shape) == 4 else 1


def _load_header(case_id: str, path: Path) -> Any:
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises many types for corrupt files
        raise DatasetError(f"case {case_id}: cannot read {path}: {err}") from err


def _labels_from_files(cases: Sequence[CaseRecord]) -> dict[int, str]:
    """Label table from the union of the values in every label file (no table given)."""
    values: set[int] = set()
    for case in cases:
        assert case.label is not None
        data = np.asanyarray(_load_header(case.case_id, case.label).dataobj)
        uniq = np.unique(data)
        if not np.all(np.isfinite(uniq)) or not np.all(uniq == np.round(uniq)) or (uniq < 0).any():
            raise DatasetError(f"case {case.case_id}: label {case.label} holds non-integer or negative values {uniq[:10]}")
        values.update(int(v) for v in uniq)
    values.add(0)
    return {v: ("background" if v == 0 else f"label{v}") for v in sorted(values)}
