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

The semi-supervised variants also train on a batch of unlabelled crops ``U`` (images only); their
entry carries an :class:`UnlabeledStep` that lists the passes of a step with one unlabelled crop
per labelled crop, each ``"student ..."`` (3 units) or ``"teacher ..."`` (1 unit):

==================== ============================================================== ===== =====
variant              passes                                                          units ratio
==================== ============================================================== ===== =====
medcontext_semi_cl   student X, X_M, U_M; teacher X, U                                 11  3.67
medcontext_semi      the same (the pseudo-labels need no extra pass)                   11  3.67
mean_teacher         student X, U; teacher U + noise                                    7  2.33
bcp                  student on the two copy-paste mixes; teacher U                     7  2.33
medcontext_bcp       student on the two mixes and their masked views; teacher U        13  4.33
==================== ============================================================== ===== =====

* ``medcontext_semi_cl``: MedContext's labelled step (``sup + msl + beta * cl``) plus, on the
  unlabelled crops, the same consistency ``L_c(F_s(U_M), F_t(U))`` (relative squared error of the
  logits) between the masked student and the EMA teacher on the clean crop.
* ``medcontext_semi``: also the teacher's confident predictions on ``U`` as targets of the
  masked student, weighted by the fraction of confident voxels as MIC (Hoyer et al., CVPR 2023)
  weighs its masked-image pseudo-label loss: ``q * CE(F_s(U_M), argmax F_t(U))`` with ``q`` the
  share of voxels whose teacher probability exceeds ``confidence`` (MIC: 0.968).
* ``mean_teacher``: Tarvainen & Valpola's Mean Teacher as SSL4MIS's 3D script runs it: the teacher
  sees ``U`` plus Gaussian noise (sd 0.1, clipped to +-0.2), the loss is the mean squared error of
  the two softmax outputs, weighted by a sigmoid ramp-up over the whole run; the teacher's EMA
  momentum is 0.99 after a true average over the first steps (``min(1 - 1/(k+1), 0.99)``).
* ``bcp``: bidirectional copy-paste (Bai et al., CVPR 2023), as its 3D (LA) code: a random box of
  2/3 of the crop per axis; one mix has the labelled crop outside the box and the unlabelled one
  inside, the other the reverse; targets are the labels and the teacher's pseudo-labels (argmax,
  largest connected component per class); voxels with pseudo-labels weigh 0.5, labelled 1. A
  labelled-only first phase (BCP's pre-training, 2000 of its 17000 LA iterations) copy-pastes
  labelled crops into each other while the teacher copies the student, so the self-training
  phase starts with a teacher equal to the pre-trained student as in BCP.
* ``medcontext_bcp``: ``bcp`` plus MedContext's masked view of each mix, trained on the same
  targets (the masked-view supervised term ``msl`` of the copy-pasted images).

Every variant also takes sigmoid region outputs (``output_mode="sigmoid"``, BraTS): the same terms
per region channel, with sigmoid probabilities for the softmax ones (Mean Teacher's MSE), binary
cross-entropy for the cross-entropy, targets at probability > 0.5 per region and the confident
share counted over (voxel, region) pairs (``medcontext_semi``), sigmoid Dice + BCE and the largest
component per region channel (BCP).

Every weight is a field of :class:`SemiSupervision`; :func:`semi_supervision` gives a variant's
defaults with overrides. The steps are :mod:`medcontext.method.semisupervised`, which lists the
differences from the published code.

Pure Python: imports neither torch nor anything else of medcontext.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

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
    "SemiSupervision",
    "UnlabeledStep",
    "semi_supervision",
    "semi_supervised_variants",
    "pass_cost",
]

FORWARD_UNITS = 1
"""Cost of one forward pass of the network (the unit)."""
BACKWARD_UNITS = 2
"""Cost of one backward pass, in forward passes."""


@dataclass(frozen=True)
class SemiSupervision:
    """Weights and settings of the unlabelled terms of a semi-supervised variant.

    Attributes:
        consistency_weight: weight of the consistency term on the unlabelled crops.
        pseudo_weight: weight of the pseudo-label term.
        rampup: fraction of the run over which the two weights ramp up by
            ``exp(-5 (1 - t)^2)`` (:func:`~medcontext.method.schedules.sigmoid_rampup`); 0 = none.
        confidence: teacher probability above which a voxel counts as confident (MIC: 0.968);
            for sigmoid region outputs, a (voxel, region) pair with ``max(p, 1 - p)`` above it.
        momentum: the teacher's EMA momentum (its schedule is the variant's).
        noise_std: sd of the Gaussian noise added to the teacher's input (Mean Teacher).
        noise_clip: the noise is clipped to ``[-noise_clip, noise_clip]``.
        box_ratio: copy-paste box side as a fraction of the crop side, per axis (BCP: 2/3).
        pretrain: fraction of the run trained on labelled crops only (BCP's pre-training).
        largest_component: keep only the largest connected component of every pseudo-label
            class of a crop (BCP's post-processing of the teacher's argmax), or of every region
            channel for sigmoid region outputs.
    """

    consistency_weight: float = 0.0
    pseudo_weight: float = 0.0
    rampup: float = 0.0
    confidence: float = 0.968
    momentum: float = 0.996
    noise_std: float = 0.0
    noise_clip: float = 0.0
    box_ratio: float = 2.0 / 3.0
    pretrain: float = 0.0
    largest_component: bool = False

    def __post_init__(self) -> None:
        for name in ("consistency_weight", "pseudo_weight", "noise_std", "noise_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("rampup", "confidence", "momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.pretrain < 1.0:
            raise ValueError(f"pretrain must be a fraction of the run in [0, 1), got {self.pretrain}")
        if not 0.0 < self.box_ratio < 1.0:
            raise ValueError(f"box_ratio must be in (0, 1) (a fraction of the crop side), got {self.box_ratio}")


def pass_cost(passes: Sequence[str]) -> int:
    """Units of a list of passes named ``"student ..."`` (forward + backward) or ``"teacher ..."``."""
    units = 0
    for name in passes:
        kind = name.split(" ", 1)[0]
        if kind == "student":
            units += FORWARD_UNITS + BACKWARD_UNITS
        elif kind == "teacher":
            units += FORWARD_UNITS
        else:
            raise ValueError(f"a pass is 'student ...' or 'teacher ...', got {name!r}")
    return units


@dataclass(frozen=True)
class UnlabeledStep:
    """What a semi-supervised variant does with the unlabelled crops ``U`` of a step.

    Attributes:
        crops: ``"masked"`` (the masked student on ``U_M`` against the teacher on ``U``),
            ``"noisy_teacher"`` (the clean student against the teacher on ``U`` + noise) or
            ``"copy_paste"`` (labelled and unlabelled crops pasted into each other).
        consistency: ``"relative"`` (the relative squared error of the logits),
            ``"probability_mse"`` (the mean squared error of the probabilities: softmax, or sigmoid
            per channel for region outputs) or ``None``.
        pseudo_labels: ``"confidence"`` (MIC's weighting), ``"argmax"`` (BCP) or ``None``.
        masked_mixes: also train the masked view of each copy-paste mix.
        teacher_schedule: ``"cosine"`` (the paper's 0.996 -> 1), ``"mean_teacher"``
            (``min(1 - 1/(k+1), m)``) or ``"constant_after_pretrain"`` (0, then ``m``).
        passes: the passes of one step with one unlabelled crop per labelled crop.
        defaults: the variant's :class:`SemiSupervision`.
    """

    crops: Literal["masked", "noisy_teacher", "copy_paste"]
    consistency: Literal["relative", "probability_mse"] | None
    pseudo_labels: Literal["confidence", "argmax"] | None
    masked_mixes: bool
    teacher_schedule: Literal["cosine", "mean_teacher", "constant_after_pretrain"]
    passes: tuple[str, ...]
    defaults: SemiSupervision

    def __post_init__(self) -> None:
        pass_cost(self.passes)

    @property
    def terms(self) -> tuple[str, ...]:
        """The unlabelled loss terms: ``"cl_unlabeled"`` and/or ``"pseudo"``."""
        return (("cl_unlabeled",) if self.consistency else ()) + (("pseudo",) if self.pseudo_labels else ())


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
            (``nnUNetTrainerMedContext_noTeacher``); ``""`` for the default variant, which needs none,
            and for the semi-supervised ones (the nnU-Net trainer has no unlabelled data).
        unlabeled: for a semi-supervised variant, what it does with the unlabelled crops (and
            the passes it makes); ``None`` for the labelled-only variants.
    """

    name: str
    masked_pass: bool
    msl: bool
    cl: bool
    teacher: bool
    summary: str
    nnunet_token: str
    unlabeled: UnlabeledStep | None = None

    def __post_init__(self) -> None:
        if (self.msl or self.cl) and not self.masked_pass:
            raise ValueError(f"variant {self.name!r}: the msl and cl terms need the masked pass")
        if self.cl and not self.teacher:
            raise ValueError(f"variant {self.name!r}: the consistency term needs the teacher")
        if self.unlabeled is not None and not self.teacher:
            raise ValueError(f"variant {self.name!r}: the unlabelled terms need the teacher")

    @property
    def loss_terms(self) -> tuple[str, ...]:
        """The loss terms of a step: ``"sup"`` always, then ``"msl"`` and ``"cl"`` where used."""
        return ("sup",) + (("msl",) if self.msl else ()) + (("cl",) if self.cl else ())

    @property
    def student_passes(self) -> int:
        """Student forward (and backward) passes per step: 2 with the masked view, else 1 (a
        semi-supervised variant: its listed student passes, one unlabelled crop per labelled)."""
        if self.unlabeled is not None:
            return sum(p.startswith("student") for p in self.unlabeled.passes)
        return 2 if self.masked_pass else 1

    @property
    def teacher_forwards(self) -> int:
        """Teacher forward passes per step (no backward): 1 when the consistency term needs it
        (a semi-supervised variant: its listed teacher passes)."""
        if self.unlabeled is not None:
            return sum(p.startswith("teacher") for p in self.unlabeled.passes)
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


_MEDCONTEXT_SEMI_PASSES = ("student X", "student X_M", "teacher X", "student U_M", "teacher U")
_BCP_DEFAULTS = SemiSupervision(pseudo_weight=0.5, momentum=0.99, box_ratio=2.0 / 3.0, pretrain=2000 / 17000,
                                largest_component=True)

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
        # semi-supervised: labelled crops X, Y and unlabelled crops U (the table of the module docstring)
        Variant("medcontext_semi_cl", masked_pass=True, msl=True, cl=True, teacher=True, nnunet_token="",
                summary="medcontext on X plus the consistency of the masked student on unlabelled crops",
                unlabeled=UnlabeledStep(
                    crops="masked", consistency="relative", pseudo_labels=None, masked_mixes=False,
                    teacher_schedule="cosine", passes=_MEDCONTEXT_SEMI_PASSES,
                    defaults=SemiSupervision(consistency_weight=0.5, rampup=0.25))),
        Variant("medcontext_semi", masked_pass=True, msl=True, cl=True, teacher=True, nnunet_token="",
                summary="medcontext_semi_cl plus the teacher's confident predictions as the masked student's targets",
                unlabeled=UnlabeledStep(
                    crops="masked", consistency="relative", pseudo_labels="confidence", masked_mixes=False,
                    teacher_schedule="cosine", passes=_MEDCONTEXT_SEMI_PASSES,
                    defaults=SemiSupervision(consistency_weight=0.5, pseudo_weight=1.0, rampup=0.25))),
        Variant("mean_teacher", masked_pass=False, msl=False, cl=False, teacher=True, nnunet_token="",
                summary="Mean Teacher (SSL4MIS 3D): softmax MSE to the EMA teacher on noisy unlabelled crops",
                unlabeled=UnlabeledStep(
                    crops="noisy_teacher", consistency="probability_mse", pseudo_labels=None, masked_mixes=False,
                    teacher_schedule="mean_teacher", passes=("student X", "student U", "teacher U+noise"),
                    # SSL4MIS: 0.5 * (Dice + CE) + 0.1 * MSE; the supervised loss here is Dice + CE: 0.2
                    defaults=SemiSupervision(consistency_weight=0.2, rampup=1.0, momentum=0.99, noise_std=0.1,
                                             noise_clip=0.2))),
        Variant("bcp", masked_pass=False, msl=False, cl=False, teacher=True, nnunet_token="",
                summary="bidirectional copy-paste (BCP) of labelled and unlabelled crops, teacher pseudo-labels",
                unlabeled=UnlabeledStep(
                    crops="copy_paste", consistency=None, pseudo_labels="argmax", masked_mixes=False,
                    teacher_schedule="constant_after_pretrain", passes=("student mix X|U", "student mix U|X", "teacher U"),
                    defaults=_BCP_DEFAULTS)),
        Variant("medcontext_bcp", masked_pass=True, msl=True, cl=False, teacher=True, nnunet_token="",
                summary="bcp plus the masked view of both copy-paste mixes with the same targets",
                unlabeled=UnlabeledStep(
                    crops="copy_paste", consistency=None, pseudo_labels="argmax", masked_mixes=True,
                    teacher_schedule="constant_after_pretrain",
                    passes=("student mix X|U", "student mix U|X", "student mix X|U masked", "student mix U|X masked",
                            "teacher U"),
                    defaults=_BCP_DEFAULTS)),
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


def semi_supervised_variants() -> list[str]:
    """The names of the variants that train on unlabelled crops too."""
    return [name for name, v in VARIANTS.items() if v.unlabeled is not None]


def semi_supervision(variant: str, **overrides) -> SemiSupervision:
    """The unlabelled-term settings of a semi-supervised ``variant`` with ``overrides``
    (field names of :class:`SemiSupervision`).

    Raises:
        ValueError: an unknown or labelled-only variant, or an unknown field (with the closest name).
    """
    semi = semi_supervised_variants()
    check_choice("semi-supervised variant", variant, semi)
    fields = {f.name for f in dataclasses.fields(SemiSupervision)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        guess = closest(unknown[0], sorted(fields))
        hint = f" Did you mean {guess!r}?" if guess else ""
        raise ValueError(f"unknown semi-supervised setting {unknown[0]!r}.{hint}")
    return dataclasses.replace(VARIANTS[variant].unlabeled.defaults, **overrides)


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
