"""The semi-supervised variants of the method and their defaults (torch-free).

Each variant trains on a batch of labelled crops ``X, Y`` and a batch of unlabelled crops ``U``
(images only: no label of ``U`` is ever read). What it runs, with one unlabelled crop per
labelled crop, in SPEC 3's units (a forward 1, a backward 2: a student pass with its backward
costs 3, a teacher forward 1; a baseline step costs 3):

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
  unlabelled crops, the same consistency ``L_c(F_s(U_M), F_t(U))`` (SPEC 1.4: relative squared
  error of the logits) between the masked student and the EMA teacher on the clean crop.
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

Every weight is a field of :class:`SemiSupervision`; :func:`semi_supervision` gives a
variant's defaults with overrides. Deviations from the published code are listed in
:mod:`medcontext.method.semisupervised`.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Literal

__all__ = ["SemiSupervision", "SemiVariant", "SEMI_SUPERVISED_VARIANTS", "semi_supervision", "pass_cost"]

STUDENT_PASS_UNITS = 3  # forward 1 + backward 2 (SPEC 3)
TEACHER_PASS_UNITS = 1  # forward only, no gradient
BASELINE_UNITS = 3


@dataclass(frozen=True)
class SemiSupervision:
    """Weights and settings of the unlabelled terms of a semi-supervised variant.

    Attributes:
        consistency_weight: weight of the consistency term on the unlabelled crops.
        pseudo_weight: weight of the pseudo-label term.
        rampup: fraction of the run over which the two weights ramp up by
            ``exp(-5 (1 - t)^2)`` (:func:`~medcontext.method.schedules.sigmoid_rampup`); 0 = none.
        confidence: teacher probability above which a voxel counts as confident (MIC).
        momentum: the teacher's EMA momentum (its schedule is the variant's).
        noise_std: sd of the Gaussian noise added to the teacher's input (Mean Teacher).
        noise_clip: the noise is clipped to ``[-noise_clip, noise_clip]``.
        box_ratio: copy-paste box side as a fraction of the crop side, per axis (BCP: 2/3).
        pretrain: fraction of the run trained on labelled crops only (BCP's pre-training).
        largest_component: keep only the largest connected component of every pseudo-label
            class of a crop (BCP's post-processing of the teacher's argmax).
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
        for name in ("rampup", "confidence", "momentum", "pretrain"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.box_ratio < 1.0:
            raise ValueError(f"box_ratio must be in (0, 1) (a fraction of the crop side), got {self.box_ratio}")


TeacherSchedule = Literal["cosine", "mean_teacher", "constant_after_pretrain"]


@dataclass(frozen=True)
class SemiVariant:
    """One semi-supervised variant: what it computes, the passes it makes, its defaults.

    Attributes:
        labeled: ``"medcontext"`` (the labelled crops get MedContext's step) or ``"copy_paste"``
            (they are copy-pasted with the unlabelled ones) or ``"supervised"``.
        unlabeled: ``"masked"`` (masked student against the teacher on the clean crop),
            ``"noisy_teacher"`` (clean student against the teacher on a noisy crop) or
            ``"copy_paste"``.
        consistency: ``"relative"`` (SPEC's ``L_c`` on logits), ``"softmax_mse"`` or ``None``.
        pseudo_labels: ``"confidence"`` (MIC's weighting), ``"argmax"`` (BCP) or ``None``.
        masked_mixes: also train the masked view of each copy-paste mix (``medcontext_bcp``).
        teacher_schedule: the teacher momentum's schedule (:mod:`medcontext.method.schedules`).
        passes: the passes of one step with one unlabelled crop per labelled crop, each
            ``"student ..."`` (forward + backward) or ``"teacher ..."`` (forward).
        defaults: the variant's :class:`SemiSupervision`.
    """

    labeled: Literal["medcontext", "copy_paste", "supervised"]
    unlabeled: Literal["masked", "noisy_teacher", "copy_paste"]
    consistency: Literal["relative", "softmax_mse"] | None
    pseudo_labels: Literal["confidence", "argmax"] | None
    masked_mixes: bool
    teacher_schedule: TeacherSchedule
    passes: tuple[str, ...]
    defaults: SemiSupervision

    @property
    def cost_units(self) -> int:
        """SPEC 3 units of one step (student pass 3, teacher forward 1)."""
        return pass_cost(self.passes)

    @property
    def cost_ratio(self) -> float:
        """The bound on the step time as a multiple of a baseline step."""
        return self.cost_units / BASELINE_UNITS

    @property
    def needs_mask(self) -> bool:
        """Whether the variant has a masked view (so a mask token)."""
        return self.labeled == "medcontext" or self.masked_mixes


def pass_cost(passes: tuple[str, ...]) -> int:
    """SPEC 3 units of a list of passes named ``"student ..."`` or ``"teacher ..."``."""
    units = 0
    for name in passes:
        kind = name.split(" ", 1)[0]
        if kind == "student":
            units += STUDENT_PASS_UNITS
        elif kind == "teacher":
            units += TEACHER_PASS_UNITS
        else:
            raise ValueError(f"a pass is 'student ...' or 'teacher ...', got {name!r}")
    return units


_MEDCONTEXT_PASSES = ("student X", "student X_M", "teacher X", "student U_M", "teacher U")

SEMI_SUPERVISED_VARIANTS: dict[str, SemiVariant] = {
    "medcontext_semi_cl": SemiVariant(
        labeled="medcontext", unlabeled="masked", consistency="relative", pseudo_labels=None,
        masked_mixes=False, teacher_schedule="cosine", passes=_MEDCONTEXT_PASSES,
        defaults=SemiSupervision(consistency_weight=0.5, rampup=0.25),
    ),
    "medcontext_semi": SemiVariant(
        labeled="medcontext", unlabeled="masked", consistency="relative", pseudo_labels="confidence",
        masked_mixes=False, teacher_schedule="cosine", passes=_MEDCONTEXT_PASSES,
        defaults=SemiSupervision(consistency_weight=0.5, pseudo_weight=1.0, rampup=0.25),
    ),
    "mean_teacher": SemiVariant(
        labeled="supervised", unlabeled="noisy_teacher", consistency="softmax_mse", pseudo_labels=None,
        masked_mixes=False, teacher_schedule="mean_teacher", passes=("student X", "student U", "teacher U+noise"),
        # SSL4MIS: 0.5 * (Dice + CE) + 0.1 * MSE; ours is Dice + CE, so 0.2 keeps the ratio
        defaults=SemiSupervision(consistency_weight=0.2, rampup=1.0, momentum=0.99, noise_std=0.1, noise_clip=0.2),
    ),
    "bcp": SemiVariant(
        labeled="copy_paste", unlabeled="copy_paste", consistency=None, pseudo_labels="argmax",
        masked_mixes=False, teacher_schedule="constant_after_pretrain",
        passes=("student mix L|U", "student mix U|L", "teacher U"),
        defaults=SemiSupervision(
            pseudo_weight=0.5, momentum=0.99, box_ratio=2.0 / 3.0, pretrain=2000 / 17000, largest_component=True
        ),
    ),
    "medcontext_bcp": SemiVariant(
        labeled="copy_paste", unlabeled="copy_paste", consistency=None, pseudo_labels="argmax",
        masked_mixes=True, teacher_schedule="constant_after_pretrain",
        passes=("student mix L|U", "student mix U|L", "student mix L|U masked", "student mix U|L masked", "teacher U"),
        defaults=SemiSupervision(
            pseudo_weight=0.5, momentum=0.99, box_ratio=2.0 / 3.0, pretrain=2000 / 17000, largest_component=True
        ),
    ),
}


def semi_supervision(variant: str, **overrides) -> SemiSupervision:
    """The defaults of ``variant`` with ``overrides`` (field names of :class:`SemiSupervision`).

    Raises:
        ValueError: an unknown variant or field (with the closest name).
    """
    if variant not in SEMI_SUPERVISED_VARIANTS:
        close = difflib.get_close_matches(variant, list(SEMI_SUPERVISED_VARIANTS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{variant!r} is not a semi-supervised variant; choose one of "
            f"{', '.join(map(repr, SEMI_SUPERVISED_VARIANTS))}.{hint}"
        )
    fields = {f.name for f in dataclasses.fields(SemiSupervision)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(fields), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown semi-supervised setting {unknown[0]!r}.{hint}")
    return dataclasses.replace(SEMI_SUPERVISED_VARIANTS[variant].defaults, **overrides)
