"""The way back: predictions in preprocessed space onto the original file's voxel grid.

:class:`Restorer` (from :func:`load_for_inference` or :meth:`Restorer.from_image`) maps a
prediction in preprocessed space back onto the original file's voxel grid. It does so by
resampling through the two affines (preprocessed voxel -> world mm -> original voxel),
which undoes reorientation, resampling and cropping in one step; labels use nearest
neighbour, probabilities linear interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage

from medcontext.data.dataset_spec import CaseRecord
from medcontext.data.nifti_io import as_numpy, save_nifti
from medcontext.data.preprocess_config import PreprocessConfig
from medcontext.data.transforms import preprocess_transforms

__all__ = ["Restorer", "load_for_inference"]


@dataclass
class Restorer:
    """Maps arrays in preprocessed space back onto the original file's voxel grid.

    Attributes:
        preprocessed_affine: ``(4, 4)`` preprocessed voxel -> world mm.
        preprocessed_shape: preprocessed spatial shape ``(H, W, D)``.
        original_affine: ``(4, 4)`` affine of the original file.
        original_shape: spatial shape of the original file.
        output_mode: ``"softmax"`` or ``"sigmoid"`` (sets the fill of probability channels
            outside the preprocessed field of view: background 1 for softmax, else 0).
        header: the original NIfTI header, reused by :meth:`save`.
    """

    preprocessed_affine: np.ndarray
    preprocessed_shape: tuple[int, int, int]
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    output_mode: str = "softmax"
    header: Any = None

    @property
    def affine(self) -> np.ndarray:
        """The original file's affine (what restored arrays are saved with)."""
        return self.original_affine

    @property
    def shape(self) -> tuple[int, int, int]:
        """The original file's spatial shape."""
        return self.original_shape

    @classmethod
    def from_image(cls, image: MetaTensor, output_mode: str = "softmax", header: Any = None) -> "Restorer":
        """From a preprocessed ``MetaTensor`` ``(C, H, W, D)`` (e.g. an eval dataset item)."""
        if not isinstance(image, MetaTensor):
            raise TypeError("Restorer.from_image needs the preprocessed MetaTensor (it carries the affines)")
        meta = image.meta
        if "original_affine" not in meta or "spatial_shape" not in meta:
            raise ValueError("the image's metadata lacks 'original_affine'/'spatial_shape'; was it loaded by LoadImaged?")
        shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).reshape(-1)[:3])
        return cls(
            preprocessed_affine=as_numpy(image.affine).astype(np.float64),
            preprocessed_shape=tuple(int(s) for s in image.shape[1:4]),  # type: ignore[arg-type]
            original_affine=as_numpy(meta["original_affine"]).astype(np.float64),
            original_shape=shape,  # type: ignore[arg-type]
            output_mode=output_mode,
            header=header,
        )

    def __call__(self, volume: np.ndarray | torch.Tensor, *, is_label: bool | None = None) -> np.ndarray:
        """Resample ``volume`` onto the original grid.

        Args:
            volume: labels ``(H, W, D)`` (integer or bool; ``(1, H, W, D)`` is squeezed) or
                probabilities/masks ``(K, H, W, D)`` in preprocessed space.
            is_label: nearest-neighbour (True) or linear (False) sampling; default: nearest
                for integer/bool arrays, linear for floats.

        Returns:
            ``(*original_shape)`` or ``(K, *original_shape)``, the input's dtype (labels) or
            float32 (probabilities).
        """
        arr = as_numpy(volume)
        if is_label is None:
            is_label = arr.dtype.kind in "biu"
        if arr.ndim == 4 and arr.shape[0] == 1 and is_label:
            arr = arr[0]
        if arr.ndim == 3:
            channels, squeeze = arr[None], True
        elif arr.ndim == 4:
            channels, squeeze = arr, False
        else:
            raise ValueError(f"expected (H, W, D) or (K, H, W, D), got shape {arr.shape}")
        if tuple(channels.shape[1:]) != tuple(self.preprocessed_shape):
            raise ValueError(
                f"volume has spatial shape {tuple(channels.shape[1:])} but the preprocessed image was "
                f"{tuple(self.preprocessed_shape)}"
            )
        out_dtype = arr.dtype if is_label else np.float32
        matrix = np.linalg.inv(self.preprocessed_affine) @ self.original_affine  # original voxel -> preprocessed voxel
        fills = [0.0] * channels.shape[0]
        if not is_label and self.output_mode == "softmax" and channels.shape[0] > 1:
            fills[0] = 1.0  # outside the preprocessed field of view is background
        exact = _index_map(matrix)
        outs = []
        for c in range(channels.shape[0]):
            if exact is not None:
                outs.append(_gather(channels[c], exact, self.original_shape, fills[c]))
            else:
                outs.append(_resample(channels[c], matrix, self.original_shape, order=0 if is_label else 1, fill=fills[c]))
        out = np.stack(outs).astype(out_dtype, copy=False)
        return out[0] if squeeze else out

    def save(self, volume: np.ndarray | torch.Tensor, path: str | Path, dtype: Any = None, *,
             is_label: bool | None = None) -> Path:
        """Restore ``volume`` and write it as NIfTI with the original affine (atomically).

        Channel-first ``(K, ...)`` results are written as ``(H, W, D, K)``.
        """
        restored = self(volume, is_label=is_label)
        if restored.ndim == 4:
            restored = np.moveaxis(restored, 0, -1)
        return save_nifti(restored, self.original_affine, path, dtype=dtype, header=self.header)


def _index_map(matrix: np.ndarray, tol: float = 1e-4) -> list[tuple[int, int, int]] | None:
    """(source axis, sign, offset) per original axis when ``matrix`` only permutes/flips/shifts."""
    lin, off = matrix[:3, :3], matrix[:3, 3]
    if not np.allclose(np.abs(lin), np.round(np.abs(lin)), atol=tol) or not np.allclose(off, np.round(off), atol=tol):
        return None
    rounded = np.round(lin).astype(int)
    if not (np.abs(rounded).sum(axis=0) == 1).all() or not (np.abs(rounded).sum(axis=1) == 1).all():
        return None
    out = []
    for a in range(3):
        b = int(np.flatnonzero(rounded[:, a])[0])
        out.append((b, int(rounded[b, a]), int(round(off[b]))))
    return out


def _gather(src: np.ndarray, index_map: list[tuple[int, int, int]], shape: Sequence[int], fill: float) -> np.ndarray:
    perm = [b for b, _, _ in index_map]
    moved = np.transpose(src, perm)
    idx, valid = [], []
    for a, (b, sign, offset) in enumerate(index_map):
        i = sign * np.arange(shape[a]) + offset
        ok = (i >= 0) & (i < src.shape[b])
        idx.append(i[ok])
        valid.append(ok)
    out = np.full(tuple(shape), fill, dtype=src.dtype)
    out[np.ix_(*valid)] = moved[np.ix_(*idx)]
    return out


def _resample(src: np.ndarray, matrix: np.ndarray, shape: Sequence[int], order: int, fill: float) -> np.ndarray:
    # Pad one edge voxel on every side: original voxels up to one preprocessed voxel beyond the
    # preprocessed grid (the last partial voxel after resampling) take the edge value, farther
    # ones the fill value.
    padded = np.pad(src.astype(np.float32 if order else src.dtype, copy=False), 1, mode="edge")
    return ndimage.affine_transform(
        padded, matrix[:3, :3], offset=matrix[:3, 3] + 1.0, output_shape=tuple(shape),
        order=order, mode="constant", cval=fill, prefilter=False,
    )


def load_for_inference(cfg: PreprocessConfig, image_paths: str | Path | Sequence[str | Path] | CaseRecord
                       ) -> tuple[torch.Tensor, Restorer]:
    """Preprocess one case for prediction.

    Args:
        cfg: preprocessing settings (as saved with the run).
        image_paths: the case's image file(s) (one per channel, or one 3D/4D file), or a
            :class:`CaseRecord`.

    Returns:
        ``(image, restore)``: the network input ``(C, H, W, D)`` float32 and a
        :class:`Restorer` mapping predictions back to the original file's grid and affine.

    Raises:
        FileNotFoundError: an image file does not exist.
    """
    if isinstance(image_paths, CaseRecord):
        paths = list(image_paths.images)
    elif isinstance(image_paths, (str, Path)):
        paths = [Path(image_paths)]
    else:
        paths = [Path(p) for p in image_paths]
    if not paths:
        raise ValueError("load_for_inference needs at least one image file")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"image file {p} does not exist")
    header_img = nib.load(str(paths[0]))
    data = {"image": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]}
    image = preprocess_transforms(cfg, with_label=False)(data)["image"]
    restorer = Restorer(
        preprocessed_affine=as_numpy(image.affine).astype(np.float64),
        preprocessed_shape=tuple(int(s) for s in image.shape[1:4]),  # type: ignore[arg-type]
        original_affine=np.asarray(header_img.affine, dtype=np.float64),
        original_shape=tuple(int(s) for s in header_img.shape[:3]),  # type: ignore[arg-type]
        output_mode=cfg.output_mode,
        header=header_img.header,
    )
    return image.as_tensor().to(torch.float32), restorer
