"""Datasets on disk: where the cases are, what their labels mean, and whether the files are sound.

:func:`load_dataset` turns a folder (or a datalist JSON) into a :class:`DatasetSpec`: the list
of cases (one or more NIfTI images per case, plus a label) and everything the rest of the
package needs to know about them (channels, modality, label names, sigmoid regions, evaluated
classes, the paper's spacing / window / crop and official splits; see
:mod:`medcontext.data.presets`). It looks at file names, ``dataset.json`` and, where nothing
else says how many channels there are, one image header; only a dataset without any label
table (plain folders or a datalist, no preset) has its label maps read to list the values.

:func:`validate_dataset` then loads every case once and reports every problem at once
(unreadable files, shape/affine/channel mismatches, unknown or non-integer label values,
NaN/Inf intensities), or returns a :class:`DatasetSummary` with shapes, spacings,
orientations and label volumes (what ``medcontext data check`` prints).

Layouts read by :func:`load_dataset`:

* **MSD**: ``dataset.json`` + ``imagesTr/`` + ``labelsTr/`` (+ ``imagesTs/``), any task,
  4D multi-channel images included. Channel names come from ``modality``; CT when every
  channel is called ``CT``, else MRI. nnU-Net v2 ``dataset.json`` files (``channel_names``,
  name -> value ``labels``) are read too; their cases are found by scanning the folders.
* **Datalist**: a MONAI-style JSON ``{"training": [{"image": ..., "label": ...}],
  "validation": [...], "test": [...]}`` with paths relative to the JSON's folder (or to the
  dataset root given as ``path`` when the JSON is passed as ``datalist``). ``image`` may be a
  list of per-channel files. ``training`` and ``validation`` entries are the labelled cases
  (the sections become ``official_train`` / ``official_test`` unless a preset has its own).
* **Folders**: ``images/`` + ``labels/`` (also ``imagesTr``/``labelsTr`` or BTCV's
  ``img``/``label``), matched by case id (file name without ``.nii``/``.nii.gz``).
  nnU-Net channel suffixes (``case_0000.nii.gz``, ``case_0001.nii.gz``) group channels;
  BTCV's ``img0001`` / ``label0001`` are matched by their number. ``imagesTs/`` holds
  unlabelled cases. The BraTS 2021 release layout (one folder per subject with
  ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair`` and ``*_seg``) is read as well.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np

from medcontext.data.grouping import GroupRuleError, case_groups, check_group_rule
from medcontext.data.presets import DEFAULT_CT_WINDOW, MSD_CT_WINDOWS, PRESETS, SYNAPSE_CT_WINDOWS, Preset

__all__ = [
    "DatasetError",
    "CaseRecord",
    "DatasetSpec",
    "CaseSummary",
    "DatasetSummary",
    "PRESETS",
    "SYNAPSE_CT_WINDOWS",
    "load_dataset",
    "validate_dataset",
    "case_id_from_path",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
AFFINE_RTOL = 1e-3


class DatasetError(ValueError):
    """A dataset on disk is missing files or holds inconsistent data.

    The message names the case id, the file and what is wrong (all problems at once when
    several were found); ``problems`` holds them one per entry.
    """

    def __init__(self, message: str, problems: Sequence[str] | None = None):
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems else [message]


# ----------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------


@dataclass
class CaseRecord:
    """One case: its image file(s) and its label file.

    Attributes:
        case_id: identifier unique within the dataset, e.g. ``"hippocampus_001"``.
        images: one NIfTI per channel (in channel order), or a single 3D/4D NIfTI
            (a 4D file holds the channels on its last axis).
        label: the label map (3D, integer values), or ``None`` for an unlabelled case.
    """

    case_id: str
    images: list[Path]
    label: Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.images, (str, Path)):
            self.images = [self.images]
        self.images = [Path(p) for p in self.images]
        if not self.images:
            raise DatasetError(f"case {self.case_id}: no image files given")
        if self.label is not None:
            self.label = Path(self.label)

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        """JSON-serialisable form; paths under ``root`` are stored relative to it."""
        return {
            "case_id": self.case_id,
            "images": [_rel(p, root) for p in self.images],
            "label": None if self.label is None else _rel(self.label, root),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], root: Path | None = None) -> "CaseRecord":
        """Inverse of :meth:`to_dict` (relative paths are resolved against ``root``)."""
        label = data.get("label")
        return cls(
            case_id=str(data["case_id"]),
            images=[_abs(p, root) for p in data["images"]],
            label=None if label is None else _abs(label, root),
        )


@dataclass
class DatasetSpec:
    """A dataset: its cases and what its labels, channels and conventions are.

    Attributes:
        root: dataset folder.
        name: human-readable name (``dataset.json`` ``name`` or the folder name).
        preset: the preset that filled in the conventions (``msd``, ``synapse``, ``acdc``,
            ``brats21``, ``brats17`` or ``generic``).
        cases: labelled cases, sorted by case id.
        unlabeled: cases without labels (e.g. MSD ``imagesTs``).
        channel_names: one name per image channel, e.g. ``["FLAIR", "T1w", "t1gd", "T2w"]``.
        modality: ``"CT"`` or ``"MRI"``.
        labels: label value -> name, background ``0`` included.
        output_mode: ``"softmax"`` (one channel per label) or ``"sigmoid"`` (one channel per
            region of ``regions``).
        regions: sigmoid region name -> label values it unites, e.g.
            ``{"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}``; ``None`` for softmax.
        eval_classes: softmax: label values that are evaluated (Synapse: 8 of 13 organs);
            sigmoid: region indices ``0..R-1``.
        eval_class_names: names of ``eval_classes``, same order.
        target_spacing: voxel spacing in mm to resample to, ``None`` keeps each case's own.
        ct_window: CT intensity window in HU mapped to ``[0, 1]``; ``None`` for MRI.
        default_roi: training crop in voxels, ``None`` leaves the choice to the caller.
        official_train: case ids of the published training split, when there is one.
        official_test: case ids of the published test split, when there is one.
        few_shot: case ids of the published few-shot training subset, when there is one.
        normalization: ``"ct"`` | ``"zscore"`` | ``"zscore_nonzero"``; ``None`` picks by
            modality (CT window for CT, z-score over all voxels for MRI).
        crop_foreground: crop every volume to the bounding box of its nonzero voxels
            (skull-stripped brain MRI).
        layout: where the case list came from (``msd``, ``nnunet``, ``datalist``,
            ``folders``, ``brats_subjects``; ``msd_folders``: a Decathlon ``dataset.json``
            without its ``training`` list, cases read from ``imagesTr``/``labelsTr`` by name).
        group_by: the group rule (:mod:`medcontext.data.grouping`), ``None`` = no grouping.
        groups: case id -> group key of every labelled case under ``group_by`` (``None``
            without a rule); splits keep a group on one side.
    """

    root: Path
    name: str
    preset: str
    cases: list[CaseRecord]
    unlabeled: list[CaseRecord] = field(default_factory=list)
    channel_names: list[str] = field(default_factory=lambda: ["image"])
    modality: str = "MRI"
    labels: dict[int, str] = field(default_factory=lambda: {0: "background"})
    output_mode: str = "softmax"
    regions: dict[str, list[int]] | None = None
    eval_classes: list[int] = field(default_factory=list)
    eval_class_names: list[str] = field(default_factory=list)
    target_spacing: tuple[float, float, float] | None = None
    ct_window: tuple[float, float] | None = None
    default_roi: tuple[int, int, int] | None = None
    official_train: list[str] | None = None
    official_test: list[str] | None = None
    few_shot: list[str] | None = None
    normalization: str | None = None
    crop_foreground: bool = False
    layout: str = "unknown"
    group_by: str | None = None
    groups: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.labels = {int(k): str(v) for k, v in self.labels.items()}
        if self.target_spacing is not None:
            self.target_spacing = tuple(float(s) for s in self.target_spacing)  # type: ignore[assignment]
        if self.ct_window is not None:
            self.ct_window = tuple(float(w) for w in self.ct_window)  # type: ignore[assignment]
        if self.default_roi is not None:
            self.default_roi = tuple(int(r) for r in self.default_roi)  # type: ignore[assignment]
        if self.regions is not None:
            self.regions = {str(k): [int(v) for v in vs] for k, vs in self.regions.items()}
        if self.groups is not None:
            self.groups = {str(k): str(v) for k, v in self.groups.items()}
        self.check()

    # -- derived ---------------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        """Number of image channels the network reads."""
        return len(self.channel_names)

    @property
    def num_outputs(self) -> int:
        """Network output channels: labels incl. background (softmax) or regions (sigmoid)."""
        if self.output_mode == "sigmoid":
            return len(self.regions or {})
        return len(self.labels)

    @property
    def case_ids(self) -> list[str]:
        """Ids of the labelled cases, in order."""
        return [c.case_id for c in self.cases]

    def get_case(self, case_id: str) -> CaseRecord:
        """The labelled or unlabelled case called ``case_id``.

        Raises:
            DatasetError: no such case (the message suggests the closest ids).
        """
        for case in (*self.cases, *self.unlabeled):
            if case.case_id == case_id:
                return case
        all_ids = [c.case_id for c in (*self.cases, *self.unlabeled)]
        close = difflib.get_close_matches(case_id, all_ids, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DatasetError(f"dataset {self.name!r} ({self.root}) has no case {case_id!r}{hint}")

    def select(self, case_ids: Iterable[str | CaseRecord]) -> list[CaseRecord]:
        """Records for ``case_ids`` (records pass through unchanged), in the given order."""
        return [c if isinstance(c, CaseRecord) else self.get_case(str(c)) for c in case_ids]

    # -- consistency -----------------------------------------------------------------
    def check(self) -> None:
        """Check the spec's own consistency (not the files).

        Raises:
            DatasetError: duplicate case ids, unknown output mode or modality, softmax labels
                that are not ``0..K-1``, regions or evaluated classes naming unknown labels.
        """
        where = f"dataset {self.name!r} ({self.root})"
        ids = [c.case_id for c in (*self.cases, *self.unlabeled)]
        dupes = sorted(k for k, n in Counter(ids).items() if n > 1)
        if dupes:
            raise DatasetError(f"{where}: duplicate case ids {dupes}; case ids must be unique")
        if self.output_mode not in ("softmax", "sigmoid"):
            raise DatasetError(f"{where}: output_mode must be 'softmax' or 'sigmoid', got {self.output_mode!r}")
        if self.modality not in ("CT", "MRI"):
            raise DatasetError(f"{where}: modality must be 'CT' or 'MRI', got {self.modality!r}")
        if self.normalization not in (None, "ct", "zscore", "zscore_nonzero"):
            raise DatasetError(
                f"{where}: normalization must be 'ct', 'zscore', 'zscore_nonzero' or None, "
                f"got {self.normalization!r}"
            )
        if 0 not in self.labels:
            raise DatasetError(f"{where}: labels must include 0 (background), got {self.labels}")
        if not self.channel_names:
            raise DatasetError(f"{where}: no channel names")
        if self.output_mode == "softmax":
            values = sorted(self.labels)
            if values != list(range(len(values))):
                raise DatasetError(
                    f"{where}: softmax output needs consecutive label values 0..K-1, got {values}; "
                    "relabel the maps or use region (sigmoid) outputs"
                )
            bad = [c for c in self.eval_classes if c not in self.labels or c == 0]
            if bad:
                raise DatasetError(f"{where}: eval_classes {bad} are not foreground labels of {self.labels}")
        else:
            if not self.regions:
                raise DatasetError(f"{where}: sigmoid output needs regions, e.g. {{'WT': [1, 2, 4]}}")
            for name, values in self.regions.items():
                bad = [v for v in values if v not in self.labels or v == 0]
                if bad or not values:
                    raise DatasetError(f"{where}: region {name!r} names label values {bad or values} not in {self.labels}")
            bad = [c for c in self.eval_classes if not 0 <= c < len(self.regions)]
            if bad:
                raise DatasetError(f"{where}: eval_classes {bad} are not region indices 0..{len(self.regions) - 1}")
        if len(self.eval_class_names) != len(self.eval_classes):
            raise DatasetError(f"{where}: {len(self.eval_classes)} eval_classes but {len(self.eval_class_names)} names")
        if self.groups is not None:
            ungrouped = [c.case_id for c in self.cases if c.case_id not in self.groups]
            if ungrouped:
                raise DatasetError(f"{where}: cases without a group key under {self.group_by!r}: {ungrouped[:5]}")

    @property
    def source_note(self) -> str:
        """A sentence on where the cases came from when that may surprise (else ``""``)."""
        if self.layout == "msd_folders":
            return (
                f"{self.root / 'dataset.json'} has no 'training' list: the {len(self.cases)} labelled case(s) were "
                "read from imagesTr/ and labelsTr/ by file name"
            )
        return ""

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (case paths relative to ``root`` where possible)."""
        return {
            "root": str(self.root),
            "name": self.name,
            "preset": self.preset,
            "layout": self.layout,
            "cases": [c.to_dict(self.root) for c in self.cases],
            "unlabeled": [c.to_dict(self.root) for c in self.unlabeled],
            "channel_names": list(self.channel_names),
            "modality": self.modality,
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "output_mode": self.output_mode,
            "regions": None if self.regions is None else {k: list(v) for k, v in self.regions.items()},
            "eval_classes": list(self.eval_classes),
            "eval_class_names": list(self.eval_class_names),
            "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
            "ct_window": None if self.ct_window is None else list(self.ct_window),
            "default_roi": None if self.default_roi is None else list(self.default_roi),
            "official_train": _opt_list(self.official_train),
            "official_test": _opt_list(self.official_test),
            "few_shot": _opt_list(self.few_shot),
            "normalization": self.normalization,
            "crop_foreground": self.crop_foreground,
            "group_by": self.group_by,
            "groups": None if self.groups is None else dict(self.groups),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DatasetSpec":
        """Inverse of :meth:`to_dict`.

        Raises:
            DatasetError: a required key is missing or a value is inconsistent.
        """
        missing = [k for k in ("root", "name", "preset", "cases") if k not in data]
        if missing:
            raise DatasetError(f"dataset description lacks keys {missing}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(f"dataset description has unknown keys {unknown}; known: {sorted(known)}")
        root = Path(data["root"])
        kwargs = dict(data)
        kwargs["root"] = root
        kwargs["cases"] = [CaseRecord.from_dict(c, root) for c in data["cases"]]
        kwargs["unlabeled"] = [CaseRecord.from_dict(c, root) for c in data.get("unlabeled", [])]
        return cls(**kwargs)


def _opt_list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


def _rel(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return str(path)


def _abs(path: str | Path, root: Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or root is None else root / p


# ----------------------------------------------------------------------------------------
# load_dataset
# ----------------------------------------------------------------------------------------


def case_id_from_path(path: str | Path) -> str:
    """File name without ``.nii.gz`` / ``.nii``, e.g. ``imagesTr/la_003.nii.gz -> la_003``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith(NIFTI_SUFFIXES) and not path.name.startswith(".")


def load_dataset(
    path: str | Path,
    preset: str = "auto",
    datalist: str | Path | None = None,
    *,
    ct_window: tuple[float, float] | str | None = None,
    group_by: str | None = None,
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
        chosen = hint or ("msd" if source["layout"] in _MSD_LAYOUTS else "generic")
    if chosen == "msd" and source["layout"] not in _MSD_LAYOUTS:
        raise DatasetError(f"preset 'msd' needs a dataset.json in {source['root']}; none found")
    return _build_spec(source, PRESETS[chosen], ct_window, group_by)


def _read_source(path: Path, datalist: str | Path | None) -> dict[str, Any]:
    """Case lists plus whatever metadata the files hold, before any preset is applied."""
    if datalist is not None:
        root = path if path.is_dir() else path.parent
        dl = Path(datalist).expanduser()
        if not dl.is_absolute():
            dl = root / dl if (root / dl).exists() else dl
        if not dl.is_file():
            raise DatasetError(f"datalist {dl} does not exist")
        return _read_datalist(dl, base_dir=root)
    if path.is_file():
        if path.suffix != ".json":
            raise DatasetError(f"{path}: expected a dataset folder or a .json datalist")
        meta = _read_json(path)
        if path.name == "dataset.json" and ("modality" in meta or "channel_names" in meta):
            return _read_msd(path.parent)
        return _read_datalist(path, base_dir=path.parent)
    if (path / "dataset.json").is_file():
        return _read_msd(path)
    return _read_folders(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _parse_labels(raw: Any, where: str) -> dict[int, str]:
    """MSD ``{"0": "background"}`` or nnU-Net v2 ``{"background": 0}`` label tables."""
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{where}: 'labels' must be a non-empty object, got {raw!r}")
    values = list(raw.values())
    if any(isinstance(v, (list, tuple)) for v in values):
        raise DatasetError(
            f"{where}: region-based nnU-Net labels are not read; use preset 'brats17'/'brats21' "
            "or list plain label values"
        )
    try:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):  # nnU-Net v2: name -> value
            out = {int(v): str(k) for k, v in raw.items()}
        else:
            out = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{where}: label keys must be integers, got {list(raw)}") from err
    return out


def _channel_names_from(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{where}: 'modality' must be an object like {{'0': 'MRI'}}, got {raw!r}")
    try:
        return [str(raw[k]) for k in sorted(raw, key=int)]
    except ValueError as err:
        raise DatasetError(f"{where}: 'modality' keys must be channel numbers, got {list(raw)}") from err


def _modality_of(channel_names: Sequence[str]) -> str:
    return "CT" if channel_names and all(n.strip().upper() == "CT" for n in channel_names) else "MRI"


def _resolve_file(entry: Any, base: Path, where: str, alt_base: Path | None = None) -> Path:
    if not isinstance(entry, str) or not entry:
        raise DatasetError(f"{where}: expected a file path string, got {entry!r}")
    p = Path(entry).expanduser()
    if p.is_absolute():
        return p
    cand = base / p
    if not cand.exists() and alt_base is not None and (alt_base / p).exists():
        return alt_base / p
    return cand


_MSD_LAYOUTS = ("msd", "nnunet", "msd_folders")


def _read_msd(root: Path) -> dict[str, Any]:
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path)
    where = str(meta_path)
    is_nnunet = "channel_names" in meta and "modality" not in meta
    if "labels" not in meta:
        raise DatasetError(f"{where}: missing key 'labels' (label value -> name)")
    labels = _parse_labels(meta["labels"], where)
    if is_nnunet:
        channel_names = _channel_names_from(meta["channel_names"], where)
    elif "modality" in meta:
        channel_names = _channel_names_from(meta["modality"], where)
    else:
        raise DatasetError(f"{where}: missing key 'modality' (channel number -> name)")

    if "training" in meta and not is_nnunet:
        entries = meta["training"]
        if not isinstance(entries, list):
            raise DatasetError(f"{where}: 'training' must be a list of {{image, label}} objects")
        cases = []
        for i, entry in enumerate(entries):
            cases.append(_case_from_entry(entry, root, f"{where} training[{i}]", need_label=True))
        unlabeled = []
        for i, entry in enumerate(meta.get("test", []) or []):
            unlabeled.append(_case_from_entry(entry, root, f"{where} test[{i}]", need_label=False))
        layout = "msd"
    else:
        folders = _read_folders(root, image_dirs=("imagesTr",), label_dirs=("labelsTr",))
        cases, unlabeled = folders["cases"], folders["unlabeled"]
        layout = "nnunet" if is_nnunet else "msd_folders"

    hint = None
    if root.name.startswith("Task01_BrainTumour") or str(meta.get("name", "")).upper() == "BRATS":
        hint = "brats17"
    elif str(meta.get("name", "")).upper() == "ACDC":
        hint = "acdc"
    return {
        "root": root,
        "layout": layout,
        "name": str(meta.get("name") or root.name),
        "cases": cases,
        "unlabeled": unlabeled,
        "labels": labels,
        "channel_names": channel_names,
        "official_train": None,
        "official_test": None,
        "task": root.name,
        "resolved_preset_hint": hint,
    }


def _case_from_entry(entry: Any, base: Path, where: str, *, need_label: bool, alt_base: Path | None = None) -> CaseRecord:
    """A case from a datalist/MSD entry: ``{"image": str|list, "label": str}`` or ``"path"``."""
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict) or "image" not in entry:
        raise DatasetError(f"{where}: expected an object with an 'image' key, got {entry!r}")
    raw_images = entry["image"]
    raw_images = raw_images if isinstance(raw_images, list) else [raw_images]
    if not raw_images:
        raise DatasetError(f"{where}: empty 'image' list")
    images = [_resolve_file(p, base, where, alt_base) for p in raw_images]
    label = None
    if entry.get("label") is not None:
        label = _resolve_file(entry["label"], base, where, alt_base)
    elif need_label:
        raise DatasetError(f"{where}: labelled entry has no 'label'")
    case_id = str(entry.get("case_id") or entry.get("id") or _strip_channel(case_id_from_path(images[0]), len(images)))
    return CaseRecord(case_id=case_id, images=images, label=label)


def _strip_channel(case_id: str, n_files: int) -> str:
    """``case_0000`` -> ``case`` when a case lists several per-channel files."""
    if n_files > 1:
        m = _CHANNEL_SUFFIX.match(case_id)
        if m:
            return m.group(1)
    return case_id


def _read_datalist(path: Path, base_dir: Path) -> dict[str, Any]:
    meta = _read_json(path)
    where = str(path)
    if "training" not in meta:
        raise DatasetError(f"{where}: missing key 'training' (a list of {{image, label}} objects)")
    sections: dict[str, list[CaseRecord]] = {}
    for section in ("training", "validation"):
        entries = meta.get(section) or []
        if not isinstance(entries, list):
            raise DatasetError(f"{where}: '{section}' must be a list of {{image, label}} objects")
        sections[section] = [
            _case_from_entry(e, base_dir, f"{where} {section}[{i}]", need_label=True, alt_base=path.parent)
            for i, e in enumerate(entries)
        ]
    unlabeled = [
        _case_from_entry(e, base_dir, f"{where} test[{i}]", need_label=False, alt_base=path.parent)
        for i, e in enumerate(meta.get("test") or [])
    ]
    labels = _parse_labels(meta["labels"], where) if "labels" in meta else None
    channel_names = _channel_names_from(meta["modality"], where) if "modality" in meta else None
    has_val = bool(sections["validation"])
    return {
        "root": base_dir,
        "layout": "datalist",
        "name": str(meta.get("name") or path.stem),
        "cases": sections["training"] + sections["validation"],
        "unlabeled": unlabeled,
        "labels": labels,
        "channel_names": channel_names,
        "official_train": [c.case_id for c in sections["training"]] if has_val else None,
        "official_test": [c.case_id for c in sections["validation"]] if has_val else None,
        "task": path.stem,
    }


_CHANNEL_SUFFIX = re.compile(r"^(.*)_(\d{4})$")
_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")
_BRATS_SUFFIXES = ("t1", "t1ce", "t2", "flair")


def _group_channels(
    files: list[Path], label_ids: set[str], use_suffix: bool | None = None
) -> tuple[dict[str, list[Path]], bool]:
    """Case id -> image files; nnU-Net ``_0000`` suffixes group channels of one case.

    Suffixes are channel numbers when every file has one and (given labels) the stripped
    names match the label files at least as well as the full names; ``use_suffix`` forces
    the choice (unlabelled folders follow the labelled one). Returns the groups and the choice.
    """
    stems = {f: case_id_from_path(f) for f in files}
    matches = {f: _CHANNEL_SUFFIX.match(s) for f, s in stems.items()}
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


def _match_labels(image_ids: Iterable[str], label_files: dict[str, Path]) -> dict[str, Path]:
    """Image case id -> label file, by equal id or (BTCV ``img0001``/``label0001``) by number."""
    out: dict[str, Path] = {}
    by_number: dict[int, list[str]] = {}
    for lid in label_files:
        m = _TRAILING_NUMBER.match(lid)
        if m:
            by_number.setdefault(int(m.group(2)), []).append(lid)
    for cid in image_ids:
        if cid in label_files:
            out[cid] = label_files[cid]
            continue
        m = _TRAILING_NUMBER.match(cid)
        if m and len(by_number.get(int(m.group(2)), [])) == 1:
            lid = by_number[int(m.group(2))][0]
            if lid not in image_ids:
                out[cid] = label_files[lid]
    return out


def _read_folders(
    root: Path,
    image_dirs: Sequence[str] = ("images", "imagesTr", "img"),
    label_dirs: Sequence[str] = ("labels", "labelsTr", "label"),
) -> dict[str, Any]:
    img_dir = next((root / d for d in image_dirs if (root / d).is_dir()), None)
    if img_dir is None:
        brats = _read_brats_subjects(root)
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
    image_files = sorted(f for f in img_dir.iterdir() if _is_nifti(f))
    if not image_files:
        raise DatasetError(f"{img_dir}: no NIfTI files (.nii or .nii.gz)")
    label_files = {case_id_from_path(f): f for f in sorted(lbl_dir.iterdir()) if _is_nifti(f)}
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
        raise DatasetError(_format_problems(f"images and labels of {root} do not match", problems), problems)
    cases = [CaseRecord(cid, files, matched[cid]) for cid, files in groups.items()]
    unlabeled: list[CaseRecord] = []
    ts_dir = root / "imagesTs"
    if ts_dir.is_dir():
        ts_files = sorted(f for f in ts_dir.iterdir() if _is_nifti(f))
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


def _read_brats_subjects(root: Path) -> dict[str, Any] | None:
    """BraTS 2021 release: ``<id>/<id>_{t1,t1ce,t2,flair}.nii.gz`` and ``<id>/<id>_seg.nii.gz``."""
    subjects = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    cases, problems = [], []
    for d in subjects:
        seg = _find_nifti(d, f"{d.name}_seg")
        if seg is None and not any(_find_nifti(d, f"{d.name}_{s}") for s in _BRATS_SUFFIXES):
            continue
        images = [_find_nifti(d, f"{d.name}_{s}") for s in _BRATS_SUFFIXES]
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
        raise DatasetError(_format_problems(f"BraTS subject folders in {root} are incomplete", problems), problems)
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


def _find_nifti(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        p = folder / (stem + suffix)
        if p.is_file():
            return p
    return None


def _build_spec(
    source: dict[str, Any], preset: Preset, ct_window: tuple[float, float] | str | None, group_by: str | None = None
) -> DatasetSpec:
    root: Path = source["root"]
    cases: list[CaseRecord] = sorted(source["cases"], key=lambda c: c.case_id)
    unlabeled: list[CaseRecord] = sorted(source["unlabeled"], key=lambda c: c.case_id)
    if not cases:
        raise DatasetError(f"dataset at {root} has no labelled cases")
    _check_files_exist(cases + unlabeled, root)

    labels = dict(preset.labels) if preset.labels is not None else source["labels"]
    if labels is None:
        labels = _labels_from_files(cases)
    channel_names = list(source["channel_names"] or preset.channel_names or [])
    if not channel_names:
        n = _count_channels(cases[0])
        channel_names = ["image"] if n == 1 else [f"channel{i}" for i in range(n)]
    if preset.channel_names is not None and len(preset.channel_names) != len(channel_names):
        raise DatasetError(
            f"preset {preset.name!r} expects {len(preset.channel_names)} channels {list(preset.channel_names)} "
            f"but the dataset at {root} names {len(channel_names)}: {channel_names}"
        )
    modality = preset.modality or _modality_of(channel_names)

    if preset.output_mode == "sigmoid":
        regions = {k: list(v) for k, v in (preset.regions or {}).items()}
        eval_classes = list(preset.eval_classes or range(len(regions)))
        eval_names = [list(regions)[i] for i in eval_classes]
    else:
        regions = None
        eval_classes = list(preset.eval_classes) if preset.eval_classes is not None else sorted(k for k in labels if k != 0)
        eval_names = [labels[c] for c in eval_classes]

    window: tuple[float, float] | None = None
    if modality == "CT":
        window = preset.ct_window or MSD_CT_WINDOWS.get(source.get("task", ""), DEFAULT_CT_WINDOW)
    if ct_window is not None:
        if isinstance(ct_window, str):
            if ct_window not in SYNAPSE_CT_WINDOWS:
                raise DatasetError(f"unknown CT window name {ct_window!r}; choose one of {list(SYNAPSE_CT_WINDOWS)}")
            window = SYNAPSE_CT_WINDOWS[ct_window]
        else:
            lo, hi = (float(v) for v in ct_window)
            if not lo < hi:
                raise DatasetError(f"CT window must be (low, high) with low < high, got {ct_window}")
            window = (lo, hi)

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


def _map_official(official: Sequence[str] | None, ids: set[str]) -> list[str] | None:
    """Map published ids (``img0005``) onto this dataset's ids by number (``case0005``)."""
    if official is None:
        return None
    by_number: dict[int, list[str]] = {}
    for cid in ids:
        m = _TRAILING_NUMBER.match(cid)
        if m:
            by_number.setdefault(int(m.group(2)), []).append(cid)
    out = []
    for oid in official:
        if oid in ids:
            out.append(oid)
            continue
        m = _TRAILING_NUMBER.match(oid)
        found = by_number.get(int(m.group(2)), []) if m else []
        out.append(found[0] if len(found) == 1 else oid)
    return out


def _check_files_exist(cases: Sequence[CaseRecord], root: Path) -> None:
    problems = []
    for case in cases:
        for p in case.images:
            if not p.is_file():
                problems.append(f"case {case.case_id}: image file {p} does not exist")
        if case.label is not None and not case.label.is_file():
            problems.append(f"case {case.case_id}: label file {case.label} does not exist")
    if problems:
        raise DatasetError(_format_problems(f"dataset at {root} lists missing files", problems), problems)


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


def _format_problems(title: str, problems: Sequence[str]) -> str:
    return f"{title} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n" + "\n".join(
        f"  - {p}" for p in problems
    )


# ----------------------------------------------------------------------------------------
# validate_dataset
# ----------------------------------------------------------------------------------------


@dataclass
class CaseSummary:
    """What one case holds.

    Attributes:
        case_id: the case.
        shape: spatial shape ``(H, W, D)`` in voxels.
        channels: image channels found.
        spacing: voxel size in mm, from the header zooms.
        orientation: axis codes, e.g. ``"RAS"``.
        label_voxels: label value -> voxel count (``{}`` for unlabelled cases).
        label_ml: label value -> volume in millilitres.
        intensity_range: ``(min, max)`` over all image channels.
    """

    case_id: str
    shape: tuple[int, int, int]
    channels: int
    spacing: tuple[float, float, float]
    orientation: str
    label_voxels: dict[int, int]
    label_ml: dict[int, float]
    intensity_range: tuple[float, float]
    labelled: bool = True


@dataclass
class DatasetSummary:
    """Result of :func:`validate_dataset`: one :class:`CaseSummary` per case."""

    spec: DatasetSpec
    cases: list[CaseSummary]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "name": self.spec.name,
            "root": str(self.spec.root),
            "cases": [
                {
                    "case_id": c.case_id,
                    "shape": list(c.shape),
                    "channels": c.channels,
                    "spacing": list(c.spacing),
                    "orientation": c.orientation,
                    "label_voxels": {str(k): v for k, v in c.label_voxels.items()},
                    "label_ml": {str(k): v for k, v in c.label_ml.items()},
                    "intensity_range": list(c.intensity_range),
                    "labelled": c.labelled,
                }
                for c in self.cases
            ],
        }

    def format(self, max_rows: int | None = None) -> str:
        """A readable report: dataset facts, one row per case, per-label statistics.

        Args:
            max_rows: print at most this many case rows (``None`` = all).
        """
        spec = self.spec
        labelled = [c for c in self.cases if c.labelled]
        lines = [
            f"dataset   {spec.name}  ({spec.root})",
            f"layout    {spec.layout}, preset {spec.preset}" + (f"\nnote      {spec.source_note}" if spec.source_note else ""),
            f"cases     {len(labelled)} labelled, {len(self.cases) - len(labelled)} unlabelled",
            f"channels  {spec.num_channels}: {', '.join(spec.channel_names)} ({spec.modality})",
            "labels    " + ", ".join(f"{k}={v}" for k, v in sorted(spec.labels.items())),
            f"outputs   {spec.num_outputs} ({spec.output_mode}"
            + (", regions " + ", ".join(f"{k}={v}" for k, v in spec.regions.items()) if spec.regions else "")
            + ")",
            "evaluated " + ", ".join(f"{c}:{n}" for c, n in zip(spec.eval_classes, spec.eval_class_names)),
        ]
        if self.cases:
            shapes = np.array([c.shape for c in self.cases])
            spacings = np.array([c.spacing for c in self.cases])
            lines += [
                f"shape     median {_fmt_tuple(np.median(shapes, 0), '{:.0f}')}, "
                f"min {_fmt_tuple(shapes.min(0), '{:d}')}, max {_fmt_tuple(shapes.max(0), '{:d}')}",
                f"spacing   median {_fmt_tuple(np.median(spacings, 0), '{:.3g}')} mm, "
                f"min {_fmt_tuple(spacings.min(0), '{:.3g}')}, max {_fmt_tuple(spacings.max(0), '{:.3g}')}",
                "orient.   " + ", ".join(f"{k} x{n}" for k, n in Counter(c.orientation for c in self.cases).most_common()),
            ]
        fg = [k for k in sorted(spec.labels) if k != 0]
        header = ["case", "shape", "spacing (mm)", "orient", "intensity"] + [f"{k}:{spec.labels[k][:10]} ml" for k in fg]
        rows = []
        for c in self.cases[: max_rows if max_rows is not None else len(self.cases)]:
            rows.append(
                [
                    c.case_id + ("" if c.labelled else " *"),
                    "x".join(str(s) for s in c.shape) + (f" x{c.channels}ch" if c.channels > 1 else ""),
                    "x".join(f"{s:.3g}" for s in c.spacing),
                    c.orientation,
                    f"{c.intensity_range[0]:.4g}..{c.intensity_range[1]:.4g}",
                ]
                + [(f"{c.label_ml.get(k, 0.0):.2f}" if c.labelled else "-") for k in fg]
            )
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        lines.append("")
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in rows]
        if max_rows is not None and len(self.cases) > max_rows:
            lines.append(f"... {len(self.cases) - max_rows} more cases")
        if any(not c.labelled for c in self.cases):
            lines.append("(* unlabelled)")
        if labelled:
            lines.append("")
            lines.append("label statistics over labelled cases:")
            for k in fg:
                vols = [c.label_ml.get(k, 0.0) for c in labelled]
                present = sum(1 for c in labelled if c.label_voxels.get(k, 0) > 0)
                lines.append(
                    f"  {k} {spec.labels[k]}: in {present}/{len(labelled)} cases, "
                    f"volume mean {np.mean(vols):.2f} ml (min {np.min(vols):.2f}, max {np.max(vols):.2f})"
                )
        return "\n".join(lines)


def _fmt_tuple(values: Iterable[Any], fmt: str) -> str:
    return "x".join(fmt.format(int(v) if fmt == "{:d}" else float(v)) for v in values)


def _affine_close(a: np.ndarray, b: np.ndarray) -> bool:
    scale = max(1.0, float(np.abs(a[:3, :3]).max()))
    return bool(np.allclose(a, b, rtol=AFFINE_RTOL, atol=AFFINE_RTOL * scale))


def _read_nifti(case_id: str, path: Path, what: str, problems: list[str]) -> Any | None:
    if not path.is_file():
        problems.append(f"case {case_id}: {what} file {path} does not exist")
        return None
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt files
        kind = "truncated or corrupt" if isinstance(err, (EOFError, zlib.error, OSError)) else "unreadable"
        problems.append(f"case {case_id}: {what} file {path} is {kind}: {type(err).__name__}: {err}")
        return None
    return img, data


def _check_case(spec: DatasetSpec, case: CaseRecord, labelled: bool) -> tuple[CaseSummary | None, list[str]]:
    problems: list[str] = []
    cid = case.case_id
    loaded = [_read_nifti(cid, p, "image", problems) for p in case.images]
    if any(x is None for x in loaded):
        return None, problems
    ref_img, _ = loaded[0]
    ref_shape = tuple(int(s) for s in ref_img.shape[:3])
    channels = 0
    lo, hi = math.inf, -math.inf
    for path, (img, data) in zip(case.images, loaded):
        if data.ndim == 4:
            channels += data.shape[3]
        elif data.ndim == 3:
            channels += 1
        else:
            problems.append(f"case {cid}: image {path} has {data.ndim} dimensions {data.shape}; expected 3D or 4D")
            continue
        if tuple(data.shape[:3]) != ref_shape:
            problems.append(f"case {cid}: image {path} has shape {data.shape[:3]} but {case.images[0].name} has {ref_shape}")
        elif not _affine_close(img.affine, ref_img.affine):
            problems.append(f"case {cid}: image {path} has a different affine than {case.images[0].name}")
        if data.dtype.kind == "f":
            bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            if bad:
                problems.append(f"case {cid}: image {path} has {bad} NaN/Inf voxels")
            finite = data[np.isfinite(data)] if bad else data
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        elif data.size:
            lo, hi = min(lo, float(data.min())), max(hi, float(data.max()))
    if channels != spec.num_channels:
        files = ", ".join(str(p) for p in case.images)
        problems.append(
            f"case {cid}: image {files} has {channels} channel(s) but the dataset has {spec.num_channels} "
            f"({', '.join(spec.channel_names)})"
        )
    zooms = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
    orientation = "".join(nib.aff2axcodes(ref_img.affine))
    counts: dict[int, int] = {}
    if labelled and case.label is not None:
        got = _read_nifti(cid, case.label, "label", problems)
        if got is not None:
            limg, ldata = got
            if ldata.ndim == 4 and ldata.shape[3] == 1:
                ldata = ldata[..., 0]
            if ldata.ndim != 3:
                problems.append(f"case {cid}: label {case.label} has shape {ldata.shape}; expected a 3D label map")
            else:
                if tuple(ldata.shape) != ref_shape:
                    problems.append(
                        f"case {cid}: label {case.label} has shape {tuple(ldata.shape)} but image "
                        f"{case.images[0]} has {ref_shape}"
                    )
                elif not _affine_close(limg.affine, ref_img.affine):
                    problems.append(
                        f"case {cid}: label {case.label} affine differs from image {case.images[0]} "
                        f"(max difference {np.abs(limg.affine - ref_img.affine).max():.3g})"
                    )
                values, n = np.unique(ldata, return_counts=True)
                if ldata.dtype.kind == "f":
                    if not np.all(np.isfinite(values)):
                        problems.append(f"case {cid}: label {case.label} has NaN/Inf values")
                        values, n = values[np.isfinite(values)], n[np.isfinite(values)]
                    frac = values[values != np.round(values)]
                    if frac.size:
                        problems.append(
                            f"case {cid}: label {case.label} has non-integer values {frac[:5].tolist()}; "
                            "labels must be whole numbers"
                        )
                counts = {int(round(float(v))): int(c) for v, c in zip(values, n) if float(v) == round(float(v))}
                unknown = sorted(v for v in counts if v not in spec.labels)
                if unknown:
                    problems.append(
                        f"case {cid}: label {case.label} has values {unknown} not in the dataset's labels "
                        f"{sorted(spec.labels)}"
                    )
    elif labelled:
        problems.append(f"case {cid}: no label file")
    if problems:
        return None, problems
    voxel_ml = float(np.prod(zooms)) / 1000.0
    summary = CaseSummary(
        case_id=cid,
        shape=ref_shape,  # type: ignore[arg-type]
        channels=channels,
        spacing=zooms,  # type: ignore[arg-type]
        orientation=orientation,
        label_voxels=counts,
        label_ml={k: v * voxel_ml for k, v in counts.items()},
        intensity_range=(lo, hi) if lo <= hi else (math.nan, math.nan),
        labelled=labelled,
    )
    return summary, problems


def validate_dataset(spec: DatasetSpec, *, progress: bool = True, include_unlabeled: bool = True) -> DatasetSummary:
    """Load every case once and check it; report every problem at once.

    Checks: files exist and decode; image channels agree in shape and affine; the channel
    count equals ``spec.num_channels``; labels are 3D, have the image's shape and affine
    (relative tolerance 1e-3), hold whole numbers and only values of ``spec.labels``;
    images have no NaN/Inf. Nothing is written.

    Args:
        spec: the dataset, from :func:`load_dataset`.
        progress: show a tqdm bar.
        include_unlabeled: check the unlabelled cases' images too.

    Returns:
        Per-case shapes, spacings (mm, from the header zooms), orientation codes, label
        voxel counts and volumes (ml); print it with :meth:`DatasetSummary.format`.

    Raises:
        DatasetError: listing every problem found, each naming the case and the file.
    """
    from tqdm.auto import tqdm

    todo = [(c, True) for c in spec.cases] + ([(c, False) for c in spec.unlabeled] if include_unlabeled else [])
    summaries: list[CaseSummary] = []
    problems: list[str] = []
    for case, labelled in tqdm(todo, desc=f"checking {spec.name}", unit="case", disable=not progress, leave=False):
        summary, found = _check_case(spec, case, labelled)
        problems.extend(found)
        if summary is not None:
            summaries.append(summary)
    if problems:
        bad_cases = len({p.split(":")[0] for p in problems})
        raise DatasetError(
            _format_problems(f"dataset {spec.name!r} ({spec.root}) failed its check in {bad_cases} case(s)", problems),
            problems,
        )
    return DatasetSummary(spec=spec, cases=summaries)
