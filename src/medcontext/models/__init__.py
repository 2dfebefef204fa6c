"""Segmentation networks by name: ``create_model("unetr" | "swin_unetr" | "unet3d" | "nnformer" | "pcrlv2", ...)``."""

from . import monai_networks  # noqa: F401  (registers unetr, swin_unetr, unet3d)
from . import pcrlv2  # noqa: F401  (registers pcrlv2)
from .patchify import PatchConv3d, use_patch_matmul
from .registry import ModelSpec, create_model, get_model_spec, list_models, register_model

try:  # nnFormer lives in its own module
    from . import nnformer  # noqa: F401
except ImportError as err:  # pragma: no cover - only while the module is absent
    if "nnformer" not in str(err):
        raise

__all__ = ["create_model", "list_models", "get_model_spec", "register_model", "ModelSpec", "use_patch_matmul", "PatchConv3d"]
