"""The MedContext method core: masking, EMA teacher, losses and the training-step wrapper.

Architecture-agnostic: imports nothing from data loading or the training engine, so a user's own
training loop can use it directly. The variants and defaults live in :mod:`.settings` (pure Python).
"""

from .adapters import TokenAdapter, find_token_adapter, register_token_adapter
from .losses import RegionLoss, SegmentationLoss, consistency_loss, deep_supervision_weights
from .masking import InputMasker, default_cell_size, tube_mask, upsample_mask
from .medcontext import LossBreakdown, MedContext, TeacherOutOfSyncWarning
from .schedules import cosine_schedule, momentum_at
from .settings import DEFAULTS, VARIANTS, Variant, get_variant, register_variant
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
]
