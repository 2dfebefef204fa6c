"""The MSD layout: ``dataset.json`` + ``imagesTr/`` + ``labelsTr/`` (+ ``imagesTs/``), nnU-Net v2 too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medcontext.data.dataset_spec import DatasetError
from medcontext.data.layouts.folders import read_folders
from medcontext.data.layouts.json_entries import case_from_entry, channel_names_from, parse_labels, read_json

__all__ = ["MSD_LAYOUTS", "read_msd"]

MSD_LAYOUTS = ("msd", "nnunet", "msd_folders")


def read_msd(root: Path) -> dict[str, Any]:
    meta_path = root / "dataset.json"
    meta = read_json(meta_path)
    where = str(meta_path)
    is_nnunet = "channel_names" in meta and "modality" not in meta
    if "labels" not in meta:
        raise DatasetError(f"{where}: missing key 'labels' (label value -> name)")
    labels = parse_labels(meta["labels"], where)
    if is_nnunet:
        channel_names = channel_names_from(meta["channel_names"], where)
    elif "modality" in meta:
        channel_names = channel_names_from(meta["modality"], where)
    else:
        raise DatasetError(f"{where}: missing key 'modality' (channel number -> name)")

    if "training" in meta and not is_nnunet:
        entries = meta["training"]
        if not isinstance(entries, list):
            raise DatasetError(f"{where}: 'training' must be a list of {{image, label}} objects")
        cases = []
        for i, entry in enumerate(entries):
            cases.append(case_from_entry(entry, root, f"{where} training[{i}]", need_label=True))
        unlabeled = []
        for i, entry in enumerate(meta.get("test", []) or []):
            unlabeled.append(case_from_entry(entry, root, f"{where} test[{i}]", need_label=False))
        layout = "msd"
    else:
        folders = read_folders(root, image_dirs=("imagesTr",), label_dirs=("labelsTr",))
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
