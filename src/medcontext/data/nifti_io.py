"""Writing NIfTI files: arrays (or tensors) with an affine, atomically.

File names and case ids are :mod:`medcontext.data.nifti_names`; reading goes through MONAI's
``LoadImaged`` (:mod:`medcontext.data.transforms`) or nibabel directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from medcontext.data.nifti_names import nifti_suffix
from medcontext.io.atomic import atomic_path

__all__ = ["save_nifti", "as_numpy"]


def as_numpy(x: Any) -> np.ndarray:
    """The data of an array, tensor or ``MetaTensor`` as a NumPy array (on the CPU)."""
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def save_nifti(array: np.ndarray | torch.Tensor, affine: np.ndarray, path: str | Path, dtype: Any = None,
               header: Any = None) -> Path:
    """Write ``array`` as NIfTI (``.nii`` or ``.nii.gz``) atomically.

    The file appears complete or not at all: it is written to a temp file in the same folder
    and moved into place with ``os.replace``.

    Args:
        array: data in file axis order, ``(H, W, D)`` or ``(H, W, D, K)``.
        affine: ``(4, 4)`` voxel -> world mm (written to both qform and sform).
        path: destination.
        dtype: stored data type (default: the array's).
        header: a header to start from (e.g. the original image's); its scaling is reset.
    """
    path = Path(path)
    suffix = nifti_suffix(path.name)
    if suffix is None:
        raise ValueError(f"{path}: NIfTI file names end in .nii or .nii.gz")
    data = as_numpy(array)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if dtype is None and data.dtype == np.int64:
        data = data.astype(np.int32) if np.abs(data).max(initial=0) > 32767 else data.astype(np.int16)
    affine = np.asarray(affine, dtype=np.float64)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(data, affine, header=hdr)
    img.header.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    img.set_sform(affine, code=1)
    try:
        img.set_qform(affine, code=1)
    except Exception:  # a sheared affine has no qform
        img.set_qform(None, code=0)
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return path
