"""How NIfTI files are named: extensions, case ids, channel suffixes and case numbers.

The one place that knows these naming conventions; the dataset layouts
(:mod:`medcontext.data.layouts`) and the folder evaluation
(:mod:`medcontext.evaluation.folder`), the NIfTI writer (:mod:`medcontext.data.nifti_io`) and
prediction's input folders (:mod:`medcontext.engine.predict`) read names through it.

* A NIfTI file ends in ``.nii.gz`` or ``.nii`` (:data:`NIFTI_SUFFIXES`); its case id is the
  name without that extension and without an optional suffix such as ``_pred``
  (:func:`case_id_from_path`).
* nnU-Net numbers the channel files of a case ``case_0000``, ``case_0001``, ...
  (:data:`CHANNEL_SUFFIX`).
* BTCV names images and labels ``img0001`` / ``label0001``: cases are matched by their
  trailing number (:data:`TRAILING_NUMBER`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "NIFTI_SUFFIXES",
    "CHANNEL_SUFFIX",
    "TRAILING_NUMBER",
    "nifti_suffix",
    "split_channel",
    "case_id_from_path",
    "is_nifti_file",
    "find_nifti",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: ``case_0000`` -> (``case``, ``0000``): nnU-Net's channel number before the extension.
CHANNEL_SUFFIX = re.compile(r"^(.*)_(\d{4})$")
#: ``img0001`` -> (``img``, ``0001``): the number that matches BTCV images, labels and published ids.
TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")


def nifti_suffix(name: str) -> str | None:
    """The NIfTI extension a file name ends in (``".nii.gz"`` or ``".nii"``), or ``None``.

    A name that is only the extension (``".nii.gz"``) has none: there is no case id before it.
    """
    for ext in NIFTI_SUFFIXES:
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    return None


def split_channel(stem: str) -> tuple[str, int | None]:
    """``"case_0001" -> ("case", 1)``: nnU-Net's channel number; ``(stem, None)`` without one."""
    match = CHANNEL_SUFFIX.match(stem)
    if match is None or not match.group(1):
        return stem, None
    return match.group(1), int(match.group(2))


def case_id_from_path(path: str | os.PathLike, suffix: str = "", *, lenient: bool = False) -> str:
    """Case id of a NIfTI file: its name without ``.nii.gz``/``.nii`` and without ``suffix``.

    Examples: ``imagesTr/la_003.nii.gz -> la_003``;
    ``case_id_from_path("out/hippocampus_001_pred.nii.gz", "_pred") == "hippocampus_001"``.

    Args:
        path: the file.
        suffix: text between the case id and the extension (e.g. ``"_pred"``), removed too.
        lenient: a name without a NIfTI extension loses its last extension instead of being
            an error (``x.mha -> x``; datalist entries may name other formats).

    Raises:
        ValueError: when the name has no NIfTI extension (unless ``lenient``) or does not end
            with ``suffix``.
    """
    name = Path(path).name
    ext = nifti_suffix(name)
    if ext is not None:
        stem = name[: -len(ext)]
    else:
        if not lenient:
            raise ValueError(f"{path}: not a NIfTI file (expected a name ending in .nii.gz or .nii)")
        stem = Path(name).stem
    if suffix:
        if not stem.endswith(suffix) or stem == suffix:
            raise ValueError(
                f"{path}: the name does not end with the prediction suffix {suffix!r} before the extension"
            )
        stem = stem[: -len(suffix)]
    return stem


def is_nifti_file(path: Path) -> bool:
    """A visible file whose name ends in ``.nii.gz`` or ``.nii``."""
    return path.is_file() and path.name.endswith(NIFTI_SUFFIXES) and not path.name.startswith(".")


def find_nifti(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists first; ``None`` if neither."""
    for suffix in NIFTI_SUFFIXES:
        p = folder / (stem + suffix)
        if p.is_file():
            return p
    return None
