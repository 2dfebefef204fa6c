"""MedContext settings of an nnU-Net trainer, and the trainer names that encode them.

nnU-Net selects a trainer by class name (``-tr NAME``) and builds it with a fixed constructor
signature, so settings travel in the name, the way nnU-Net's own ``nnUNetTrainer_250epochs``
does. ``nnUNetTrainerMedContext`` is the paper's defaults; each ``_token`` after it changes one
setting::

    nnUNetTrainerMedContext_ratio60_beta1_noTeacher_cell8_5epochs_10iters

========================  ==================================================================
token                     setting
========================  ==================================================================
``baseline``              variant: nnU-Net's own step (no mask, no teacher)
``noTeacher``             variant: supervised loss on X and X_M, no consistency term
``mslOnly`` / ``clOnly``  variants of the paper's Table 8
``ratio<P>``              mask ratio in percent (``ratio40`` = 0.4, the default)
``beta<X>``               consistency weight, ``p`` for the decimal point (``beta0p5``)
``m<X>``                  EMA momentum at step 0 (``m0p996``), cosine to 1 at the last step
``cell<N>``               mask cell of N voxels per axis, or ``cell<A>x<B>x<C>``
``<N>epochs``             nnU-Net's number of epochs (default 1000)
``<N>iters``              training iterations per epoch (default 250)
``<N>valiters``           validation iterations per epoch (default 50)
========================  ==================================================================

The variant tokens are those of :data:`medcontext.method.settings.VARIANTS`, the defaults its
``DEFAULTS``. This module is pure Python: it imports neither torch nor nnunetv2.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from medcontext.method.settings import DEFAULTS, VARIANTS, check_choice

__all__ = ["BASE_TRAINER_NAME", "MedContextSettings", "parse_trainer_name", "trainer_name"]

BASE_TRAINER_NAME = "nnUNetTrainerMedContext"



def nnunet_variants() -> list[str]:
    """The variants an nnU-Net trainer can run: the labelled-only ones (nnU-Net's data loader
    brings no unlabelled crops for the semi-supervised variants)."""
    return [name for name, v in VARIANTS.items() if v.unlabeled is None]


def _variant_tokens() -> dict[str, str]:
    """``{trainer-name token: variant}`` of every variant but the default (which needs no token)."""
    return {v.nnunet_token: v.name for v in VARIANTS.values() if v.nnunet_token}


def _token_help() -> str:
    return (
        f"tokens: {' | '.join(_variant_tokens())} | ratio<percent> | beta<X> | m<X> | cell<N> | cell<A>x<B>x<C> "
        "| <N>epochs | <N>iters | <N>valiters (X with 'p' as the decimal point, e.g. beta0p5)"
    )

_NUMBER = r"(\d+(?:p\d+)?)"


@dataclass(frozen=True)
class MedContextSettings:
    """What a MedContext nnU-Net trainer does besides nnU-Net's own step.

    Attributes:
        variant: a name of :data:`medcontext.method.settings.VARIANTS` (``"medcontext"``,
            ``"baseline"``, ``"no_teacher"``, ``"msl_only"``, ``"cl_only"``, ...).
        mask_ratio: fraction of the in-plane mask positions masked, in [0, 1] (paper: 0.4).
        beta: weight of the consistency loss, >= 0 (default 0.5).
        momentum: EMA momentum at step 0, in [0, 1]; cosine schedule to 1.0 at the last step.
        mask_cell: voxels per mask cell along (z, y, x) of nnU-Net's patch; ``None`` = 16 per
            axis, halved while the patch holds fewer than 4 cells along that axis.
        num_epochs: nnU-Net epochs; ``None`` keeps nnU-Net's 1000.
        iterations_per_epoch: training iterations per epoch; ``None`` keeps nnU-Net's 250.
        val_iterations_per_epoch: validation iterations per epoch; ``None`` keeps nnU-Net's 50.
    """

    variant: str = DEFAULTS.variant
    mask_ratio: float = DEFAULTS.mask_ratio
    beta: float = DEFAULTS.beta
    momentum: float = DEFAULTS.momentum
    mask_cell: tuple[int, int, int] | None = None
    num_epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None

    def validate(self, source: str = "MedContext settings") -> "MedContextSettings":
        """Raise ``ValueError`` naming ``source`` and the bad value; returns ``self``."""
        check_choice("variant", self.variant, nnunet_variants(), source=source)
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"{source}: mask_ratio must be in [0, 1], got {self.mask_ratio}")
        if self.beta < 0:
            raise ValueError(f"{source}: beta must be >= 0, got {self.beta}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"{source}: momentum must be in [0, 1], got {self.momentum}")
        if self.mask_cell is not None and (len(self.mask_cell) != 3 or min(self.mask_cell) < 1):
            raise ValueError(f"{source}: mask_cell must be 3 positive voxel counts, got {self.mask_cell}")
        for name in ("num_epochs", "iterations_per_epoch", "val_iterations_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{source}: {name} must be >= 1, got {value}")
        return self

    def as_dict(self) -> dict:
        """Plain types only (lists, floats, ints, str, None): for logs and checkpoints."""
        out = asdict(self)
        out["mask_cell"] = list(self.mask_cell) if self.mask_cell is not None else None
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "MedContextSettings":
        """Inverse of :meth:`as_dict`; unknown keys are an error naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MedContext settings {unknown}; known: {sorted(known)}")
        values = dict(values)
        if values.get("mask_cell") is not None:
            values["mask_cell"] = tuple(int(v) for v in values["mask_cell"])
        return cls(**values).validate()


def _number(text: str) -> float:
    return float(text.replace("p", "."))


def _format_number(value: float) -> str:
    text = f"{value:.6g}"
    if "e" in text:
        raise ValueError(f"{value} cannot be written in a trainer name; use a class attribute instead")
    return text.replace(".", "p")


def parse_trainer_name(name: str) -> MedContextSettings:
    """Settings encoded in a trainer name (see the module docstring).

    Raises:
        ValueError: the name does not start with ``nnUNetTrainerMedContext``, a token is
            unknown or repeated, or a value is out of range; the message lists the tokens.
    """
    if name != BASE_TRAINER_NAME and not name.startswith(BASE_TRAINER_NAME + "_"):
        raise ValueError(f"trainer name {name!r} does not start with {BASE_TRAINER_NAME!r}")
    tokens = name[len(BASE_TRAINER_NAME) + 1:].split("_") if name != BASE_TRAINER_NAME else []
    values: dict = {}

    def put(key: str, value, token: str) -> None:
        if key in values:
            raise ValueError(f"trainer name {name!r}: {key} is set twice (at {token!r})")
        values[key] = value

    patterns = [
        (re.compile(r"ratio(\d+)"), "mask_ratio", lambda m: int(m.group(1)) / 100.0),
        (re.compile(r"beta" + _NUMBER), "beta", lambda m: _number(m.group(1))),
        (re.compile(r"m" + _NUMBER), "momentum", lambda m: _number(m.group(1))),
        (re.compile(r"cell(\d+)"), "mask_cell", lambda m: (int(m.group(1)),) * 3),
        (re.compile(r"cell(\d+)x(\d+)x(\d+)"), "mask_cell", lambda m: tuple(int(g) for g in m.groups())),
        (re.compile(r"(\d+)epochs"), "num_epochs", lambda m: int(m.group(1))),
        (re.compile(r"(\d+)iters"), "iterations_per_epoch", lambda m: int(m.group(1))),
        (re.compile(r"(\d+)valiters"), "val_iterations_per_epoch", lambda m: int(m.group(1))),
    ]
    for token in tokens:
        if token in _variant_tokens():
            put("variant", _variant_tokens()[token], token)
            continue
        for pattern, key, convert in patterns:
            match = pattern.fullmatch(token)
            if match:
                put(key, convert(match), token)
                break
        else:
            raise ValueError(f"trainer name {name!r}: unknown token {token!r}; {_token_help()}")
    return MedContextSettings(**values).validate(source=f"trainer name {name!r}")


def trainer_name(settings: MedContextSettings) -> str:
    """The canonical trainer name of ``settings`` (defaults are left out);
    ``parse_trainer_name(trainer_name(s)) == s``."""
    settings.validate()
    default = MedContextSettings()
    tokens = []
    if settings.variant != default.variant:
        tokens.append(VARIANTS[settings.variant].nnunet_token)
    if settings.mask_ratio != default.mask_ratio:
        percent = settings.mask_ratio * 100
        if abs(percent - round(percent)) > 1e-9:
            raise ValueError(f"mask_ratio {settings.mask_ratio} is not a whole percent; use a class attribute instead")
        tokens.append(f"ratio{round(percent)}")
    if settings.beta != default.beta:
        tokens.append(f"beta{_format_number(settings.beta)}")
    if settings.momentum != default.momentum:
        tokens.append(f"m{_format_number(settings.momentum)}")
    if settings.mask_cell is not None:
        cell = settings.mask_cell
        tokens.append(f"cell{cell[0]}" if len(set(cell)) == 1 else "cell" + "x".join(map(str, cell)))
    if settings.num_epochs is not None:
        tokens.append(f"{settings.num_epochs}epochs")
    if settings.iterations_per_epoch is not None:
        tokens.append(f"{settings.iterations_per_epoch}iters")
    if settings.val_iterations_per_epoch is not None:
        tokens.append(f"{settings.val_iterations_per_epoch}valiters")
    return "_".join([BASE_TRAINER_NAME, *tokens])

