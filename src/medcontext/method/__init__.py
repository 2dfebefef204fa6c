"""The MedContext method core: masking, EMA teacher, losses and the training-step wrapper.

Architecture-agnostic: imports nothing from data loading or the training engine, so a user's own
training loop can use it directly. The variants and defaults live in :mod:`.settings` (pure Python).
"""

from .adapters import TokenAdapter, find_token_adapter, register_token_adapter
from .losses import RegionLoss, SegmentationLoss, consistency_loss, deep_supervision_weights
from .masking import InputMasker, default_cell_size, tube_mask, upsample_mask
from .medcontext import LossBreakdown, MedContext, TeacherOutOfSyncWarning
from .copy_paste import CopyPaste, box_mask, copy_paste
from .schedules import cosine_schedule, mean_teacher_momentum, momentum_at, sigmoid_rampup
from .semisupervised_losses import confident_pseudo_labels, pseudo_label_loss, region_dice_ce, softmax_mse
from .semisupervised_losses import split_region_dice_bce, split_region_dice_ce
from .semisupervised_losses import confident_sigmoid_pseudo_labels, region_dice_bce, sigmoid_mse, sigmoid_pseudo_label_loss
from .settings import DEFAULTS, VARIANTS, SemiSupervision, Variant, get_variant, register_variant
from .settings import semi_supervised_variants, semi_supervision
from .teacher import ema_update, make_teacher, unwrap_model
from .token_masking import TokenMasker

__all__ = [
    "MedContext",
    "LossBreakdown",
    "VARIANTS",
    "Variant",
    "DEFAULTS",
    "get_variant",
    "register_variant",
    "TeacherOutOfSyncWarning",
    "tube_mask",
    "upsample_mask",
    "default_cell_size",
    "InputMasker",
    "TokenMasker",
    "TokenAdapter",
    "register_token_adapter",
    "find_token_adapter",
    "SegmentationLoss",
    "RegionLoss",
    "consistency_loss",
    "deep_supervision_weights",
    "momentum_at",
    "cosine_schedule",
    "ema_update",
    "make_teacher",
    "unwrap_model",
    "SemiSupervision",
    "semi_supervision",
    "semi_supervised_variants",
    "sigmoid_rampup",
    "mean_teacher_momentum",
    "box_mask",
    "copy_paste",
    "CopyPaste",
    "softmax_mse",
    "confident_pseudo_labels",
    "pseudo_label_loss",
    "region_dice_ce",
    "split_region_dice_ce",
    "sigmoid_mse",
    "confident_sigmoid_pseudo_labels",
    "sigmoid_pseudo_label_loss",
    "region_dice_bce",
    "split_region_dice_bce",
]
