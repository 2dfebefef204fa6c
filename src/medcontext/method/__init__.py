"""The MedContext method core: masking, EMA teacher, losses and the training-step wrapper.

Architecture-agnostic: imports nothing from data loading or the training engine, so a user's own
training loop can use it directly.
"""

from .adapters import TokenAdapter, find_token_adapter, register_token_adapter
from .losses import RegionLoss, SegmentationLoss, consistency_loss, deep_supervision_weights
from .masking import InputMasker, default_cell_size, tube_mask, upsample_mask
from .medcontext import VARIANTS, LossBreakdown, MedContext, TeacherOutOfSyncWarning
from .schedules import cosine_schedule, mean_teacher_momentum, momentum_at, sigmoid_rampup
from .copy_paste import CopyPaste, box_mask, copy_paste
from .semisupervised_losses import confident_pseudo_labels, pseudo_label_loss, region_dice_ce, softmax_mse
from .semisupervised_settings import SEMI_SUPERVISED_VARIANTS, SemiSupervision, semi_supervision
from .teacher import ema_update, make_teacher, unwrap_model
from .token_masking import TokenMasker

__all__ = [
    "MedContext",
    "LossBreakdown",
    "VARIANTS",
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
    "SEMI_SUPERVISED_VARIANTS",
    "SemiSupervision",
    "semi_supervision",
    "sigmoid_rampup",
    "mean_teacher_momentum",
    "box_mask",
    "copy_paste",
    "CopyPaste",
    "softmax_mse",
    "confident_pseudo_labels",
    "pseudo_label_loss",
    "region_dice_ce",
]
