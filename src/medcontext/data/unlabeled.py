"""Unlabelled volumes for semi-supervised training: where they come from, which may be used, their crops.

A run's unlabelled volumes come from one or more *sources* (``data.unlabeled``, CLI
``--unlabeled``), combined in the order given:

- ``pool``: the labelled dataset's cases that the split left over after drawing the training,
  validation and test cases (few-shot studies: the k labelled cases are drawn, the rest of the
  training pool is used without its labels). Their label files are never opened; they may even
  be absent.
- ``imagesTs``: the images the dataset lists without labels (an MSD ``dataset.json``'s
  ``test`` list, an ``imagesTs/`` folder, a datalist's ``test`` section).
- a path: a folder in any layout ``--data`` reads (MSD, nnU-Net, ``images/`` [+ ``labels/``],
  BraTS subject folders), a dataset or datalist JSON, or a flat folder of NIfTI images; labels
  are absent or ignored (:func:`read_unlabeled_images`).

:func:`select_unlabeled` applies the rules every source obeys: a validation or test case, or
any case of their groups (the patient, under the dataset's group rule), is never unlabelled; a
group is either labelled or unlabelled (a training patient's other frames are not used); the
same image files listed twice are used once. It returns the split with its ``unlabeled`` list
(written to ``split.json``). :func:`check_unlabeled_images` runs the dataset checks of
``medcontext data check`` on the images, and :func:`make_unlabeled_dataset` draws random crops
(no label-balanced sampling) with the labelled cases' preprocessing and augmentation.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from monai.data import Dataset
from monai.transforms import Compose, EnsureTyped, RandSpatialCropd, SpatialPadd

from medcontext.data.case_datasets import cached_volumes
from medcontext.data.dataset_spec import CaseRecord, DatasetError, DatasetSpec, format_problems
from medcontext.data.grouping import GroupRuleError, case_groups
from medcontext.data.layouts import read_brats_subjects, read_json
from medcontext.data.layouts.folders import image_cases
from medcontext.data.layouts.json_entries import case_from_entry
from medcontext.data.nifti_names import is_nifti_file
from medcontext.data.preprocess_config import PreprocessConfig
from medcontext.data.splits import Split
from medcontext.data.transforms import Cloned, augmentation_transforms, parse_roi, preprocess_transforms

__all__ = [
    "POOL",
    "LISTED",
    "UnlabeledImages",
    "UnlabeledSet",
    "UnlabeledCrops",
    "parse_unlabeled_sources",
    "read_unlabeled_images",
    "select_unlabeled",
    "check_unlabeled_images",
    "make_unlabeled_dataset",
]

#: source keyword: the labelled cases the split left over (their labels are never read)
POOL = "pool"
#: source keyword: the images the dataset lists without labels (MSD ``test`` / ``imagesTs/``)
LISTED = "imagesTs"
_KEYWORDS = (POOL, LISTED)
#: image folders read from an unlabelled folder (labelled layouts' folders included)
_IMAGE_DIRS = ("images", "imagesTr", "img", "imagesTs")
#: JSON sections whose entries are read as unlabelled images
_JSON_SECTIONS = ("training", "validation", "test", "unlabeled", "unlabelled")

_HELD_OUT = "validation/test cases or cases of their groups"
_LABELLED = "labelled training cases or cases of their groups"
_TWICE = "image files an earlier source listed"


def parse_unlabeled_sources(value: str | Sequence[str] | None) -> list[str]:
    """``data.unlabeled`` as a list of sources (``None``, ``""`` and ``[]``: none), duplicates removed.

    Raises:
        DatasetError: an entry is not a non-empty string.
    """
    if value is None:
        return []
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    out: list[str] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)) or not str(item).strip():
            raise DatasetError(
                f"data.unlabeled entries must be {POOL!r}, {LISTED!r} or a folder/file path, got {item!r}"
            )
        text = str(item).strip()
        if text not in out:
            out.append(text)
    return out


@dataclass
class UnlabeledImages:
    """The images found in one unlabelled source path (labels dropped).

    Attributes:
        root: the folder the images were found in (where a ``case_metadata.csv`` is looked for).
        cases: one record per case, ``label`` always ``None``, sorted by case id.
        layout: how they were found (``msd``, ``datalist``, ``image_folders``, ``flat``,
            ``brats_subjects``).
    """

    root: Path
    cases: list[CaseRecord]
    layout: str


def read_unlabeled_images(path: str | Path) -> UnlabeledImages:
    """Every image of a folder or JSON file, without labels.

    Reads, in this order: a ``.json`` file (an MSD ``dataset.json`` or a datalist: every entry
    of ``training``, ``validation``, ``test`` and ``unlabeled``); a folder with ``dataset.json``
    listing ``training`` (MSD: its training and test images); a folder with image folders
    (``images/``, ``imagesTr/``, ``img/``, ``imagesTs/``: all of them, nnU-Net ``_0000``
    channel suffixes grouped); BraTS subject folders; else the NIfTI files of the folder itself.
    Label files and folders are ignored. Only file names and JSON are read.

    Raises:
        DatasetError: the path does not exist, holds no images, or lists an image file that
            does not exist (every problem named).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"unlabelled images: {path} does not exist")
    if path.is_file():
        if path.suffix != ".json":
            raise DatasetError(f"unlabelled images: {path} is a file but not a .json dataset or datalist; "
                               "pass a folder of images or a dataset.json")
        found = UnlabeledImages(path.parent, _cases_from_json(path, path.parent), "datalist")
    elif (path / "dataset.json").is_file() and "training" in read_json(path / "dataset.json"):
        found = UnlabeledImages(path, _cases_from_json(path / "dataset.json", path), "msd")
    else:
        found = _cases_from_folder(path)
    if not found.cases:
        raise DatasetError(
            f"unlabelled images: no NIfTI images (.nii/.nii.gz) found in {path} (looked for dataset.json, "
            f"{', '.join(d + '/' for d in _IMAGE_DIRS)}, BraTS subject folders and NIfTI files in the folder itself)"
        )
    _check_unique_ids(found.cases, path)
    missing = [f"case {c.case_id}: image file {p} does not exist" for c in found.cases for p in c.images if not p.is_file()]
    if missing:
        raise DatasetError(format_problems(f"unlabelled images in {path} list missing files", missing), missing)
    found.cases.sort(key=lambda c: c.case_id)
    return found


def _cases_from_json(path: Path, base: Path) -> list[CaseRecord]:
    """Every entry of the JSON's image sections, labels dropped."""
    meta = read_json(path)
    cases = []
    for section in _JSON_SECTIONS:
        entries = meta.get(section) or []
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: '{section}' must be a list of image entries")
        for i, entry in enumerate(entries):
            case = case_from_entry(entry, base, f"{path} {section}[{i}]", need_label=False, alt_base=path.parent)
            cases.append(CaseRecord(case.case_id, case.images, None))
    return cases


def _cases_from_folder(root: Path) -> UnlabeledImages:
    dirs = [root / d for d in _IMAGE_DIRS if (root / d).is_dir()]
    if dirs:
        files = [f for d in dirs for f in sorted(d.iterdir()) if is_nifti_file(f)]
        return UnlabeledImages(root, _records(image_cases(files)), "image_folders")
    brats = read_brats_subjects(root)
    if brats is not None:
        cases = [CaseRecord(c.case_id, c.images, None) for c in (*brats["cases"], *brats["unlabeled"])]
        return UnlabeledImages(root, cases, "brats_subjects")
    files = [f for f in sorted(root.iterdir()) if is_nifti_file(f)]
    return UnlabeledImages(root, _records(image_cases(files)), "flat")


def _records(groups: Mapping[str, list[Path]]) -> list[CaseRecord]:
    return [CaseRecord(cid, files, None) for cid, files in groups.items()]


def _check_unique_ids(cases: Sequence[CaseRecord], where: Path) -> None:
    seen: dict[str, CaseRecord] = {}
    for case in cases:
        other = seen.setdefault(case.case_id, case)
        if other is not case and _files(other) != _files(case):
            raise DatasetError(
                f"unlabelled images in {where}: two cases are called {case.case_id!r} ({other.images[0]} and "
                f"{case.images[0]}); case ids (file names without .nii/.nii.gz) must be unique"
            )


def _files(case: CaseRecord) -> tuple[str, ...]:
    return tuple(str(Path(p).resolve()) for p in case.images)


@dataclass
class UnlabeledSet:
    """The unlabelled volumes of a run and why others were left out (saved as ``unlabeled.json``).

    Attributes:
        cases: the volumes used, label ``None``, sorted by case id.
        sources: the sources as given (keywords or resolved paths).
        origin: case id -> the source it came from.
        excluded: reason -> case ids left out for it (validation/test, labelled, listed twice).
    """

    cases: list[CaseRecord]
    sources: list[str]
    origin: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, list[str]] = field(default_factory=dict)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def counts(self) -> dict[str, int]:
        """Volumes per source, in the order of :attr:`sources`."""
        return {s: sum(1 for c in self.cases if self.origin.get(c.case_id) == s) for s in self.sources}

    def describe(self) -> str:
        """One line: how many volumes from which source, and how many were left out why."""
        parts = ", ".join(f"{n} from {s}" for s, n in self.counts().items())
        text = f"{len(self.cases)} unlabelled volume(s) ({parts})"
        left = "; ".join(f"{len(ids)} left out as {why}" for why, ids in self.excluded.items() if ids)
        return text + (f"; {left}" if left else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "count": len(self.cases),
            "counts": self.counts(),
            "cases": [{"case_id": c.case_id, "images": [str(p) for p in c.images], "source": self.origin[c.case_id]}
                      for c in self.cases],
            "excluded": {why: list(ids) for why, ids in self.excluded.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UnlabeledSet":
        """Inverse of :meth:`to_dict`."""
        cases = [CaseRecord(str(c["case_id"]), [Path(p) for p in c["images"]], None) for c in data["cases"]]
        origin = {str(c["case_id"]): str(c["source"]) for c in data["cases"]}
        return cls(cases, [str(s) for s in data["sources"]], origin,
                   {str(k): [str(i) for i in v] for k, v in (data.get("excluded") or {}).items()})


def select_unlabeled(spec: DatasetSpec, split: Split, sources: str | Sequence[str] | None) -> tuple[Split, UnlabeledSet]:
    """The unlabelled volumes of ``sources`` that a run with ``split`` may use.

    Rules (module docstring): never a validation or test case or a case of their groups; never
    a labelled training case or a case of a training group; the same image files once. The
    group of an unlabelled case follows the dataset's group rule (``spec.group_by``; for a
    source folder, its own ``case_metadata.csv``).

    Args:
        spec: the labelled dataset.
        split: its split (train / val / test).
        sources: ``data.unlabeled`` (:func:`parse_unlabeled_sources`).

    Returns:
        ``(split with its unlabeled list and their groups, the UnlabeledSet)``.

    Raises:
        DatasetError: an unknown source, a source without images, a case id that names two
            different images, a case without a group under the group rule, or no unlabelled
            volume left after the rules.
    """
    names = parse_unlabeled_sources(sources)
    held_out = _Side(spec, split, [*split.val, *split.test])
    labelled = _Side(spec, split, split.train)
    by_id = {c.case_id: c for c in spec.cases}
    chosen: dict[str, CaseRecord] = {}
    chosen_files: set[tuple[str, ...]] = set()
    result = UnlabeledSet([], [], {}, {_HELD_OUT: [], _LABELLED: [], _TWICE: []})
    groups: dict[str, str] = dict(split.groups or {})
    for name in names:
        records, case_group, label = _read_source(spec, split, name)
        result.sources.append(label)
        for record in records:
            files = _files(record)
            group = case_group.get(record.case_id) if case_group else None
            if files in chosen_files:
                result.excluded[_TWICE].append(record.case_id)
            elif held_out.holds(record, files, group):
                result.excluded[_HELD_OUT].append(record.case_id)
            elif labelled.holds(record, files, group):
                result.excluded[_LABELLED].append(record.case_id)
            else:
                _check_new_id(record, files, by_id, chosen, label)
                chosen[record.case_id] = record
                chosen_files.add(files)
                result.origin[record.case_id] = label
                if group is not None:
                    groups[record.case_id] = group
    result.cases = [chosen[cid] for cid in sorted(chosen)]
    if not result.cases:
        raise DatasetError(f"no unlabelled volume left from data.unlabeled={names}: {result.describe()}")
    with_unlabeled = Split(split.train, split.val, split.test, groups=groups if split.groups is not None else None,
                           unlabeled=result.case_ids)
    return with_unlabeled, result


class _Side:
    """The cases of one side of a split (labelled training, or validation + test): ids, files, groups."""

    def __init__(self, spec: DatasetSpec, split: Split, case_ids: Sequence[str]):
        self.ids = set(case_ids)
        self.files = {_files(spec.get_case(cid)) for cid in case_ids}
        self.groups = {split.groups[cid] for cid in case_ids} if split.groups else set()

    def holds(self, record: CaseRecord, files: tuple[str, ...], group: str | None) -> bool:
        return record.case_id in self.ids or files in self.files or (group is not None and group in self.groups)


def _read_source(spec: DatasetSpec, split: Split, name: str) -> tuple[list[CaseRecord], dict[str, str] | None, str]:
    """The records of one source, their groups under the dataset's rule, and the source's label."""
    if name == POOL:
        used = {*split.train, *split.val, *split.test}
        records = [CaseRecord(c.case_id, c.images, None) for c in spec.cases if c.case_id not in used]
        return records, spec.groups, POOL
    if name == LISTED:
        records = [CaseRecord(c.case_id, c.images, None) for c in spec.unlabeled]
        if not records:
            raise DatasetError(
                f"data.unlabeled={LISTED!r}: the dataset at {spec.root} lists no images without labels (no "
                "dataset.json 'test' entries, no imagesTs/ folder); pass a folder of images or 'pool'"
            )
        return records, _groups(spec, records, spec.root, LISTED), LISTED
    path = Path(name).expanduser()
    if not path.exists():
        close = difflib.get_close_matches(name, _KEYWORDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DatasetError(
            f"data.unlabeled source {name!r} is neither {POOL!r}, {LISTED!r} nor an existing folder or file{hint}"
        )
    found = read_unlabeled_images(path)
    label = str(path.resolve())
    return found.cases, _groups(spec, found.cases, found.root, label), label


def _groups(spec: DatasetSpec, records: Sequence[CaseRecord], root: Path, label: str) -> dict[str, str] | None:
    try:
        return case_groups([r.case_id for r in records], spec.group_by, root)
    except GroupRuleError as err:
        raise DatasetError(
            f"unlabelled images of {label}: {err} (the group rule keeps a patient out of the unlabelled set when "
            "it is validated or tested on; give the images a case_metadata.csv or set data.group_by)"
        ) from err


def _check_new_id(record: CaseRecord, files: tuple[str, ...], by_id: Mapping[str, CaseRecord],
                  chosen: Mapping[str, CaseRecord], source: str) -> None:
    other = chosen.get(record.case_id) or by_id.get(record.case_id)
    if other is not None and _files(other) != files:
        raise DatasetError(
            f"unlabelled case {record.case_id!r} of {source} ({record.images[0]}) has the id of another case "
            f"({other.images[0]}); case ids must be unique across --data and --unlabeled: rename one of the files"
        )


def check_unlabeled_images(
    cases: Sequence[CaseRecord],
    channel_names: Sequence[str],
    *,
    name: str = "unlabelled volumes",
    progress: bool = False,
) -> None:
    """The checks of ``medcontext data check`` on unlabelled images (decode, 3D/4D, channel
    count, one grid per case, no NaN/Inf), every problem at once.

    Args:
        cases: the unlabelled records.
        channel_names: the channels the network reads (the labelled dataset's).
        name: what the error's title calls them.
        progress: show a bar.

    Raises:
        DatasetError: listing every problem, each naming the case and the file.
    """
    from medcontext.data.validation import validate_dataset

    if not cases:
        return
    root = Path(cases[0].images[0]).parent
    probe = DatasetSpec(root=root, name=name, preset="generic", cases=[],
                        unlabeled=[CaseRecord(c.case_id, c.images, None) for c in cases],
                        channel_names=list(channel_names))
    try:
        validate_dataset(probe, progress=progress)
    except DatasetError as err:
        bad = len({p.split(":")[0] for p in err.problems})
        raise DatasetError(format_problems(f"{name} failed their check in {bad} case(s)", err.problems),
                           err.problems) from err


class UnlabeledCrops(torch.utils.data.Dataset):
    """Random training crops of unlabelled volumes: item ``i`` is a fresh crop of volume ``i``.

    Items: ``{"image": (C, *roi) float32, "case_id": str}``. The crop's centre is uniform over
    the padded volume (no label-balanced sampling); the augmentation is the labelled crops'
    (:func:`~medcontext.data.transforms.augmentation_transforms`). Randomness comes from the
    transforms' generators: reseed them with ``transform.set_random_state(seed)`` (the
    engine's seeded draws do so before every item).

    Attributes:
        volumes: the MONAI dataset of preprocessed volumes (cached), whose transform ends in
            the random crop and augmentation.
    """

    def __init__(self, volumes: Dataset) -> None:
        self.volumes = volumes

    @property
    def transform(self) -> Compose:
        """The full transform; ``transform.set_random_state(seed)`` reseeds the crop and augmentation."""
        return self.volumes.transform  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.volumes)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} unlabelled volumes")
        crops = self.volumes[index]
        crop = crops[0] if isinstance(crops, list) else crops
        return {"image": crop["image"], "case_id": crop["case_id"]}


def unlabeled_train_transforms(cfg: PreprocessConfig, roi_size: Sequence[int]) -> Compose:
    """Files -> one augmented ``(C, *roi)`` crop: the labelled cases' preprocessing, a uniform
    random crop (volumes smaller than the crop are zero-padded first), their augmentation."""
    roi = parse_roi(roi_size)
    return Compose(
        list(preprocess_transforms(cfg, with_label=False).transforms)
        + [
            SpatialPadd("image", spatial_size=roi, mode="constant"),
            EnsureTyped("image", track_meta=False),
            RandSpatialCropd("image", roi_size=roi, random_size=False),
            Cloned("image"),
        ]
        + augmentation_transforms(cfg, roi, ["image"])
    )


def make_unlabeled_dataset(
    cases: Sequence[CaseRecord],
    cfg: PreprocessConfig,
    roi_size: Sequence[int],
    *,
    cache_dir: str | Path | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> UnlabeledCrops:
    """Random crops over unlabelled volumes (labels, if any, are never read).

    Args:
        cases: the unlabelled records (e.g. :attr:`UnlabeledSet.cases`).
        cfg: the labelled cases' preprocessing (:meth:`PreprocessConfig.from_spec`).
        roi_size: crop size in voxels.
        cache_dir: keep preprocessed volumes on disk here (a subfolder named by the
            settings' fingerprint) instead of in memory.
        cache_rate: fraction of volumes kept in memory (in-memory cache only).
        num_workers: threads that fill the in-memory cache (``None``: up to 4).
        seed: seeds the random crop and augmentation.
        progress: show a bar while caching.
    """
    if not cases:
        raise ValueError("make_unlabeled_dataset needs at least one case")
    data = []
    for case in cases:
        images = [str(p) for p in case.images]
        data.append({
            "case_id": case.case_id,
            "image": images[0] if len(images) == 1 else images,
            "stamp": [(Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in images],
        })
    transform = unlabeled_train_transforms(cfg, roi_size)
    transform.set_random_state(seed=seed)
    volumes = cached_volumes(data, transform, cfg, roi_size, "unlabeled", cache_dir=cache_dir, cache_rate=cache_rate,
                             num_workers=num_workers, progress=progress)
    return UnlabeledCrops(volumes)
