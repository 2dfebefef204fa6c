"""Bidirectional copy-paste of labelled and unlabelled crops (BCP, Bai et al., CVPR 2023).

A random 3D box covers ``box_ratio`` of the crop side on every axis (BCP's 3D code: 2/3, so
8/27 = 30% of the voxels). The two mixes of a labelled crop ``X`` and an unlabelled crop ``U``:

* ``X|U`` (``mix_in``): ``X`` outside the box, ``U`` pasted inside;
* ``U|X`` (``mix_out``): ``U`` outside the box, ``X`` pasted inside;

and their targets: the labels ``Y`` where the voxel comes from ``X``, the teacher's pseudo-labels
of ``U`` where it comes from ``U``. One box serves the whole batch, as in BCP. Targets are label
maps (B, 1, H, W, D) or binary regions (B, R, H, W, D): a voxel's R region channels move together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["box_mask", "CopyPaste", "copy_paste"]


def box_mask(spatial: Sequence[int], ratio: float = 2.0 / 3.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random box of ``int(ratio * side)`` voxels per axis, True inside.

    The box's first voxel is drawn uniformly from ``0 .. side - size`` on every axis (inclusive,
    so every placement inside the crop is possible; BCP's ``randint(0, side - size)`` never
    touches the far edge).

    Args:
        spatial: crop size ``(H, W, D)``.
        ratio: box side as a fraction of the crop side, in (0, 1).
        generator: optional seeded CPU generator.

    Returns:
        Bool tensor ``(H, W, D)`` on the CPU.
    """
    spatial = tuple(int(s) for s in spatial)
    if len(spatial) != 3 or min(spatial) < 1:
        raise ValueError(f"spatial must be 3 positive sizes, got {spatial}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"box ratio must be in (0, 1), got {ratio}")
    mask = torch.zeros(spatial, dtype=torch.bool)
    index = []
    for side in spatial:
        size = max(1, int(side * ratio))
        start = int(torch.randint(0, side - size + 1, (1,), generator=generator))
        index.append(slice(start, start + size))
    mask[tuple(index)] = True
    return mask


@dataclass
class CopyPaste:
    """The two mixes of one batch and where their voxels come from.

    Attributes:
        mix_in: ``X`` outside the box, ``U`` inside (B, C, H, W, D).
        mix_out: ``U`` outside the box, ``X`` inside (B, C, H, W, D).
        box: (1, 1, H, W, D) bool, True inside the box.
    """

    mix_in: torch.Tensor
    mix_out: torch.Tensor
    box: torch.Tensor

    def targets(self, labels: torch.Tensor, pseudo_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets of ``mix_in`` and ``mix_out``: ``labels`` where the voxel comes from the labelled
        crop, ``pseudo_labels`` where it comes from the unlabelled one.

        Both are label maps (B, 1, H, W, D) or binary regions (B, R, H, W, D) (every channel of a
        voxel from the same crop); the targets have their shape.
        """
        return torch.where(self.box, pseudo_labels, labels), torch.where(self.box, labels, pseudo_labels)

    def labeled_voxels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float (1, 1, H, W, D) maps, 1 where ``mix_in`` / ``mix_out`` show the labelled crop."""
        inside = self.box.float()
        return 1.0 - inside, inside


def copy_paste(labeled: torch.Tensor, unlabeled: torch.Tensor, box: torch.Tensor) -> CopyPaste:
    """Both mixes of ``labeled`` and ``unlabeled`` (B, C, H, W, D) for ``box`` (H, W, D)."""
    if labeled.shape != unlabeled.shape:
        raise ValueError(
            f"copy-paste needs labelled and unlabelled crops of one shape, got {tuple(labeled.shape)} "
            f"and {tuple(unlabeled.shape)} (give as many unlabelled crops as labelled ones, of the same size)"
        )
    if tuple(box.shape) != tuple(labeled.shape[2:]):
        raise ValueError(f"box {tuple(box.shape)} does not match the crops {tuple(labeled.shape[2:])}")
    inside = box.to(labeled.device).view(1, 1, *box.shape)
    return CopyPaste(
        mix_in=torch.where(inside, unlabeled, labeled), mix_out=torch.where(inside, labeled, unlabeled), box=inside
    )
