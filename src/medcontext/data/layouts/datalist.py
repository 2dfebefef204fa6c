"""The datalist layout: a MONAI-style JSON ``{"training": [...], "validation": [...], "test": [...]}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medcontext.data.dataset_spec import CaseRecord, DatasetError
from medcontext.data.layouts.json_entries import case_from_entry, channel_names_from, parse_labels, read_json

__all__ = ["read_datalist"]


def read_datalist(path: Path, base_dir: Path) -> dict[str, Any]:
    meta = read_json(path)
    where = str(path)
    if "training" not in meta:
        raise DatasetError(f"{where}: missing key 'training' (a list of {{image, label}} objects)")
    sections: dict[str, list[CaseRecord]] = {}
    for section in ("training", "validation"):
        entries = meta.get(section) or []
        if not isinstance(entries, list):
            raise DatasetError(f"{where}: '{section}' must be a list of {{image, label}} objects")
        sections[section] = [
            case_from_entry(e, base_dir, f"{where} {section}[{i}]", need_label=True, alt_base=path.parent)
            for i, e in enumerate(entries)
        ]
    unlabeled = [
        case_from_entry(e, base_dir, f"{where} test[{i}]", need_label=False, alt_base=path.parent)
        for i, e in enumerate(meta.get("test") or [])
    ]
    labels = parse_labels(meta["labels"], where) if "labels" in meta else None
    channel_names = channel_names_from(meta["modality"], where) if "modality" in meta else None
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
