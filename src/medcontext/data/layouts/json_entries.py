"""The JSON files of the MSD and datalist layouts: case entries, label tables, channel names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medcontext.data.dataset_spec import CaseRecord, DatasetError
from medcontext.data.nifti_names import CHANNEL_SUFFIX, case_id_from_path

__all__ = ["read_json", "parse_labels", "channel_names_from", "case_from_entry"]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def parse_labels(raw: Any, where: str) -> dict[int, str]:
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


def channel_names_from(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{where}: 'modality' must be an object like {{'0': 'MRI'}}, got {raw!r}")
    try:
        return [str(raw[k]) for k in sorted(raw, key=int)]
    except ValueError as err:
        raise DatasetError(f"{where}: 'modality' keys must be channel numbers, got {list(raw)}") from err


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


def case_from_entry(entry: Any, base: Path, where: str, *, need_label: bool, alt_base: Path | None = None) -> CaseRecord:
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
    case_id = str(entry.get("case_id") or entry.get("id") or _strip_channel(case_id_from_path(images[0], lenient=True), len(images)))
    return CaseRecord(case_id=case_id, images=images, label=label)


def _strip_channel(case_id: str, n_files: int) -> str:
    """``case_0000`` -> ``case`` when a case lists several per-channel files."""
    if n_files > 1:
        m = CHANNEL_SUFFIX.match(case_id)
        if m:
            return m.group(1)
    return case_id
