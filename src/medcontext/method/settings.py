"""The method's settings in one place: its variants, their cost, the defaults, one validator.

Every part of the package that needs to know what a variant does reads it here: the
:class:`~medcontext.method.MedContext` wrapper (which passes and loss terms to run), the engine's
config checks (valid ``method.variant`` values, which variants keep a teacher), the planner
(memory and time per step), the nnU-Net trainer names and command, the CLI help and the study
report's labels. Adding a variant is one :class:`Variant` entry in :data:`VARIANTS` (or
:func:`register_variant` from outside the package).

The cost model (docs/method.md): a forward pass of the student is 1 unit, its backward 2. A
step runs the student once on the image X (3 units) and, for variants with a masked view, once
more on the masked image X_M (3 units); the teacher's forward on X (1 unit, no backward) runs
when the consistency term needs it. MedContext's step is therefore 7 units against the
baseline's 3.

Pure Python: imports neither torch nor anything else of medcontext.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = [
    "Variant",
    "VARIANTS",
    "register_variant",
    "get_variant",
    "closest",
    "check_choice",
    "MethodDefaults",
    "DEFAULTS",
    "MASK_SPACES",
    "MASK_MODES",
    "STUDENT_PASSES",
    "OUTPUT_MODES",
    "FORWARD_UNITS",
    "BACKWARD_UNITS",
]

FORWARD_UNITS = 1
"""Cost of one forward pass of the network (the unit)."""
BACKWARD_UNITS = 2
"""Cost of one backward pass, in forward passes."""


@dataclass(frozen=True)
class Variant:
    """What one method variant runs in a training step.

    Attributes:
        name: the value of ``method.variant`` (``MedContext(variant=...)``).
        masked_pass: the student also runs on the masked image X_M (a second student graph).
        msl: the masked-student loss: the supervised loss on the student's output for X_M.
        cl: the consistency loss between the student on X_M and the teacher on X (weight ``beta``).
        teacher: an EMA teacher is kept (selectable at inference with ``eval.use=teacher``).
        summary: one line for help texts and docs/method.md.
        nnunet_token: the token of this variant in nnU-Net trainer names
            (``nnUNetTrainerMedContext_noTeacher``); ``""`` for the default variant, which needs none.
    """

    name: str
    masked_pass: bool
    msl: bool
    cl: bool
    teacher: bool
    summary: str
    nnunet_token: str

    def __post_init__(self) -> None:
        if (self.msl or self.cl) and not self.masked_pass:
            raise ValueError(f"variant {self.name!r}: the msl and cl terms need the masked pass")
        if self.cl and not self.teacher:
            raise ValueError(f"variant {self.name!r}: the consistency term needs the teacher")

    @property
    def loss_terms(self) -> tuple[str, ...]:
        """The loss terms of a step: ``"sup"`` always, then ``"msl"`` and ``"cl"`` where used."""
        return ("sup",) + (("msl",) if self.msl else ()) + (("cl",) if self.cl else ())

    @property
    def student_passes(self) -> int:
        """Student forward (and backward) passes per step: 2 with the masked view, else 1."""
        return 2 if self.masked_pass else 1

    @property
    def teacher_forwards(self) -> int:
        """Teacher forward passes per step (no backward): 1 when the consistency term needs it."""
        return 1 if self.cl else 0

    @property
    def cost_units(self) -> int:
        """Forward-pass units of one step: student passes x (forward + backward) + teacher forwards."""
        return self.student_passes * (FORWARD_UNITS + BACKWARD_UNITS) + self.teacher_forwards * FORWARD_UNITS

    @property
    def uses_mask_ratio(self) -> bool:
        """``mask_ratio`` and the mask settings matter (there is a masked view)."""
        return self.masked_pass

    @property
    def uses_momentum(self) -> bool:
        """``momentum`` / ``momentum_horizon`` matter (there is a teacher)."""
        return self.teacher

    @property
    def uses_beta(self) -> bool:
        """``beta`` matters (there is a consistency term)."""
        return self.cl


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("baseline", masked_pass=False, msl=False, cl=False, teacher=False, nnunet_token="baseline",
                summary="supervised loss on X only: no mask, no teacher"),
        Variant("medcontext", masked_pass=True, msl=True, cl=True, teacher=True, nnunet_token="",
                summary="supervised loss on X and X_M plus beta x consistency with the EMA teacher"),
        Variant("no_teacher", masked_pass=True, msl=True, cl=False, teacher=False, nnunet_token="noTeacher",
                summary="supervised loss on X and X_M, no teacher"),
        Variant("msl_only", masked_pass=True, msl=True, cl=False, teacher=True, nnunet_token="mslOnly",
                summary="supervised loss on X and X_M; the teacher is kept (for inference) but not used in the loss"),
        Variant("cl_only", masked_pass=True, msl=False, cl=True, teacher=True, nnunet_token="clOnly",
                summary="supervised loss on X plus beta x consistency with the EMA teacher, no loss on X_M"),
    )
}
"""Every variant by name, the default (``medcontext``) included."""


def register_variant(variant: Variant) -> Variant:
    """Add a variant to :data:`VARIANTS` (every reader of the table sees it); returns it.

    Raises:
        ValueError: the name or its nnU-Net token is taken.
    """
    if variant.name in VARIANTS:
        raise ValueError(f"variant {variant.name!r} exists already")
    if variant.nnunet_token and any(v.nnunet_token == variant.nnunet_token for v in VARIANTS.values()):
        raise ValueError(f"variant {variant.name!r}: the nnU-Net token {variant.nnunet_token!r} is taken")
    VARIANTS[variant.name] = variant
    return variant


def closest(value: object, options: Iterable[str]) -> str | None:
    """The option closest to a misspelled ``value`` (difflib's ratio >= 0.6), or ``None``."""
    close = difflib.get_close_matches(str(value), list(options), n=1)
    return close[0] if close else None


def check_choice(name: str, value: object, options: Sequence[str], *, source: str = "") -> str:
    """``value`` when it is one of ``options``; else a ``ValueError`` naming the closest one.

    Args:
        name: the setting, as the caller's user knows it (``"variant"``, ``"method.mask_mode"``).
        value: the value given.
        options: the valid values.
        source: what the value came from, put in front of the message (``"trainer name ..."``).
    """
    if value in options:
        return value  # type: ignore[return-value]
    guess = closest(value, options)
    hint = f" Did you mean {guess!r}?" if guess else ""
    where = f"{source}: " if source else ""
    raise ValueError(f"{where}{name} must be one of {', '.join(map(repr, options))}, got {value!r}.{hint}")


def get_variant(name: object, *, source: str = "") -> Variant:
    """The :class:`Variant` called ``name``; an unknown name is a ``ValueError`` with a suggestion."""
    return VARIANTS[check_choice("variant", name, list(VARIANTS), source=source)]


MASK_SPACES = ("auto", "token", "input")
"""Where the mask is applied: after the patch embedding (token), on voxels (input), or token where possible."""
MASK_MODES = ("exact", "bernoulli")
"""``exact``: round(ratio x N) positions masked; ``bernoulli``: each position with probability ratio."""
STUDENT_PASSES = ("auto", "separate", "concat")
"""How the clean and masked views run: two forwards, one forward over both, or chosen by device."""
OUTPUT_MODES = ("softmax", "sigmoid")
"""Label maps (one class per voxel) or independent regions (BraTS)."""


@dataclass(frozen=True)
class MethodDefaults:
    """The paper's settings, used wherever a setting is not given.

    Attributes:
        variant: the full method.
        mask_ratio: fraction of the in-plane mask positions masked.
        beta: weight of the consistency loss.
        momentum: EMA momentum of the teacher at step 0 (cosine to 1 at the last step).
        momentum_horizon: ``None``: the momentum above, not a time constant relative to the run.
        mask_space: token space where the network has an adapter, else input space.
        depth_axis: the mask tubes run along the last spatial axis (axial slices in RAS).
        mask_mode: exactly round(ratio x N) positions masked.
        student_passes: chosen by device (concat on CUDA when allowed).
    """

    variant: str = "medcontext"
    mask_ratio: float = 0.4
    beta: float = 0.5
    momentum: float = 0.996
    momentum_horizon: float | None = None
    mask_space: str = "auto"
    depth_axis: int = -1
    mask_mode: str = "exact"
    student_passes: str = "auto"


DEFAULTS = MethodDefaults()
"""The defaults every reader uses (``MedContext``, ``method.*`` of the config, nnU-Net names)."""
