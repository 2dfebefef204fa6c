"""Conventions of the datasets in the paper (paper Appendix B) and of generic MSD tasks.

A :class:`Preset` fills in what the files cannot say: label names, which classes are
evaluated, sigmoid regions, the CT window, the resampling grid and crop of the paper's
setting, and published splits. :func:`~medcontext.data.load_dataset` applies one to the case
list it reads; ``None`` fields are taken from the files (``dataset.json``, the label maps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

__all__ = ["Preset", "PRESETS", "SYNAPSE_CT_WINDOWS", "MSD_CT_WINDOWS", "DEFAULT_CT_WINDOW"]

#: The two CT windows of the Synapse setting (paper Appendix B): the UNETR/SwinUNETR code's window
#: (default) and the window the paper's text states.
SYNAPSE_CT_WINDOWS: dict[str, tuple[float, float]] = {"code": (-175.0, 250.0), "paper": (-1000.0, 1000.0)}

_BTCV_LABELS = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic veins",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
_SYNAPSE_TRAIN = [5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40]
_SYNAPSE_TEST = [1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38]
_SYNAPSE_FEW_SHOT = [6, 7, 9, 10, 21]


@dataclass(frozen=True)
class Preset:
    """Conventions of a known dataset (paper Appendix B); ``None`` fields come from the files."""

    name: str
    description: str
    labels: Mapping[int, str] | None = None
    channel_names: tuple[str, ...] | None = None
    modality: str | None = None
    output_mode: str = "softmax"
    regions: Mapping[str, tuple[int, ...]] | None = None
    eval_classes: tuple[int, ...] | None = None
    target_spacing: tuple[float, float, float] | None = None
    ct_window: tuple[float, float] | None = None
    default_roi: tuple[int, int, int] | None = None
    official_train: tuple[str, ...] | None = None
    official_test: tuple[str, ...] | None = None
    few_shot: tuple[str, ...] | None = None
    normalization: str | None = None
    crop_foreground: bool = False
    group_by: str | None = None


PRESETS: dict[str, Preset] = {
    "msd": Preset(
        name="msd",
        description="any Medical Segmentation Decathlon task, everything from its dataset.json",
    ),
    "generic": Preset(
        name="generic",
        description="a datalist or plain folders; labels from the JSON or the label files",
    ),
    "synapse": Preset(
        name="synapse",
        description="Synapse/BTCV abdominal CT, 13 organs, 8 evaluated, 18/12 split, 5-shot list",
        labels=_BTCV_LABELS,
        channel_names=("CT",),
        modality="CT",
        eval_classes=(1, 2, 3, 4, 6, 7, 8, 11),
        target_spacing=(1.5, 1.5, 2.0),
        ct_window=SYNAPSE_CT_WINDOWS["code"],
        default_roi=(96, 96, 96),
        official_train=tuple(f"img{n:04d}" for n in _SYNAPSE_TRAIN),
        official_test=tuple(f"img{n:04d}" for n in _SYNAPSE_TEST),
        few_shot=tuple(f"img{n:04d}" for n in _SYNAPSE_FEW_SHOT),
        normalization="ct",
    ),
    # ACDC (paper Appendix B): short-axis cine MRI, 5-10 mm between slices (12% of patients 5 mm, the rest
    # 10 mm), 0.7-1.9 mm in-plane (median 1.48), 6-21 slices, hearts about 105 x 98 x 80 mm
    # (median foreground extent; at most 152 x 138 x 110 mm).
    # - Spacing 1.5 x 1.5 x 5.0 mm: in-plane near the median (nothing is thrown away on the
    #   typical case); through-plane the finest slice spacing that is common (nnU-Net's rule for
    #   anisotropic data: the 10th percentile, 5 mm here), so the 5 mm patients keep every slice and
    #   the 10 mm ones are interpolated only 2x. Resampling to 2 mm (as for CT) would invent 80% of
    #   the slices of most patients and multiply the voxels by 5 (the old preset: 96^3 crops,
    #   58.5 s per CPU step).
    # - No fixed crop: the planner fits it to the model and the device (in-plane wide enough for
    #   the heart and its neighbours, all 16 slices of a typical heart through-plane).
    # - Tubes run along the slice axis, the last axis in RAS (the default ``depth_axis=-1``): a
    #   masked in-plane position is hidden on every slice, so the network must infer it from the
    #   neighbouring structures of the same slices, not from the slice above.
    # - Both frames (ED, ES) of a patient stay on one side of every split (group rule below).
    "acdc": Preset(
        name="acdc",
        description="ACDC cardiac cine MRI, RV/MYO/LV, z-score, 1.5x1.5x5 mm, split by patient",
        labels={0: "background", 1: "RV", 2: "MYO", 3: "LV"},
        channel_names=("cine-MRI",),
        modality="MRI",
        eval_classes=(1, 2, 3),
        target_spacing=(1.5, 1.5, 5.0),
        normalization="zscore",
        group_by=r"regex:(patient\d+)",
    ),
    "brats21": Preset(
        name="brats21",
        description="BraTS 2021, 4 MRI channels, sigmoid regions WT/TC/ET from labels 1/2/4",
        labels={0: "background", 1: "necrotic tumour core", 2: "peritumoral edema", 4: "enhancing tumour"},
        channel_names=("T1", "T1Gd", "T2", "FLAIR"),
        modality="MRI",
        output_mode="sigmoid",
        regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
        eval_classes=(0, 1, 2),
        default_roi=(96, 96, 96),
        normalization="zscore_nonzero",
        crop_foreground=True,
    ),
    "brats17": Preset(
        name="brats17",
        description="BraTS 2017 as MSD Task01_BrainTumour, sigmoid regions WT/TC/ET from labels 1/2/3",
        labels={0: "background", 1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
        channel_names=("FLAIR", "T1w", "t1gd", "T2w"),
        modality="MRI",
        output_mode="sigmoid",
        regions={"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
        eval_classes=(0, 1, 2),
        default_roi=(96, 96, 96),
        normalization="zscore_nonzero",
        crop_foreground=True,
    ),
}

#: CT window per MSD CT task when the ``msd`` preset reads one (soft-tissue by default).
MSD_CT_WINDOWS: dict[str, tuple[float, float]] = {"Task06_Lung": (-1000.0, 1000.0)}
DEFAULT_CT_WINDOW: tuple[float, float] = (-175.0, 250.0)
