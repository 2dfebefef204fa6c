"""Reading nnU-Net v2 checkpoints (``checkpoint_final.pth``, ``checkpoint_best.pth``) without running code.

nnU-Net's own trainer reads them with ``torch.load(weights_only=False)``: a crafted file then
executes code. What its ``save_checkpoint`` stores is plain data: ``network_weights``,
``optimizer_state`` and ``grad_scaler_state`` (tensors, numbers), ``logging`` (lists of numpy
scalars and floats from ``nnUNetLogger``), ``_best_ema`` (a numpy scalar), ``current_epoch``,
``init_args`` (plans and dataset dicts, strings, ints, a ``torch.device``), ``trainer_name`` and
``inference_allowed_mirroring_axes`` (a tuple); the MedContext trainer adds its ``"medcontext"``
entry (settings, teacher weights, mask token). So the file is read weights-only
(:func:`medcontext.models.safe_load.load_weights_file`) with the numpy value types as the only
allowed additions (:data:`NNUNET_ALLOWED_GLOBALS`). A file that needs more is refused with a
message naming the objects and the opt-in: ``--trust-checkpoint`` for ``medcontext nnunet export``,
the environment variable ``MEDCONTEXT_TRUST_CHECKPOINT=1`` for the trainer (``nnUNetv2_train --c``
takes no medcontext flags).
"""

from __future__ import annotations

import os
from typing import Any

from medcontext.models.safe_load import TRUST_HINT, load_weights_file, numpy_value_globals

__all__ = ["NNUNET_ALLOWED_GLOBALS", "TRUST_ENV", "read_nnunet_checkpoint", "trust_from_environment"]

#: What a weights-only load of an nnU-Net v2 checkpoint may construct besides tensors and builtins.
NNUNET_ALLOWED_GLOBALS = tuple(numpy_value_globals())
#: The trainer's opt-in to full pickle (nnU-Net's command line has no place for a flag).
TRUST_ENV = "MEDCONTEXT_TRUST_CHECKPOINT"


def trust_from_environment() -> bool:
    """Whether ``MEDCONTEXT_TRUST_CHECKPOINT`` asks for full-pickle loads (``1``, ``true``, ``yes``)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def read_nnunet_checkpoint(path: str | os.PathLike, *, trust: bool = False, map_location: Any = "cpu",
                           trust_hint: str = TRUST_HINT) -> dict:
    """An nnU-Net v2 checkpoint as a dict, read weights-only unless ``trust``.

    Args:
        path: the ``.pth`` file.
        trust: full pickle (only for files whose origin you trust: a crafted file runs code).
        map_location: where tensors go.
        trust_hint: how a refusal names the opt-in.

    Raises:
        UntrustedFileError: the file holds other objects (names them and the opt-in).
        UnreadableFileError: missing, truncated or not a PyTorch file; or not a dict.
    """
    from medcontext.models.safe_load import UnreadableFileError

    checkpoint = load_weights_file(path, trust=trust, map_location=map_location,
                                   allowed_globals=NNUNET_ALLOWED_GLOBALS, trust_hint=trust_hint)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise UnreadableFileError(f"{path} is not an nnU-Net checkpoint (no 'network_weights' entry)")
    return checkpoint
