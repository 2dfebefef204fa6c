"""A dataset's description: its cases and what its labels, channels and conventions are.

:class:`DatasetSpec` is what :func:`~medcontext.data.loading.load_dataset` returns and what
the rest of the package reads (channels, modality, label names, sigmoid regions, evaluated
classes, the paper's spacing / window / crop and official splits); :class:`CaseRecord` is one
case's files. :class:`DatasetError` is the data layer's error for files and descriptions that
are missing or inconsistent; :func:`format_problems` lists several problems in one message.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["DatasetError", "CaseRecord", "DatasetSpec", "format_problems"]


class DatasetError(ValueError):
    """A dataset on disk is missing files or holds inconsistent data.

    The message names the case id, the file and what is wrong (all problems at once when
    several were found); ``problems`` holds them one per entry.
    """

    def __init__(self, message: str, problems: Sequence[str] | None = None):
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems else [message]


def format_problems(title: str, problems: Sequence[str]) -> str:
    """``title (N problems):`` and one indented ``- problem`` line each (a DatasetError's message)."""
    return f"{title} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n" + "\n".join(
        f"  - {p}" for p in problems
    )


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
