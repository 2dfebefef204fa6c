"""The value checks of a :class:`~medcontext.engine.config.TrainConfig`: one :class:`Check` row per setting.

:meth:`TrainConfig.validate` applies :data:`CHECKS` (no dataset needed); each failed row reads
"``<section>.<name>`` must be ..., got ..." and suggests the closest valid choice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from medcontext.method.settings import MASK_MODES, MASK_SPACES, STUDENT_PASSES, VARIANTS, closest

if TYPE_CHECKING:
    from .schema import TrainConfig

__all__ = ["Check", "CHECKS", "LR_SCALING", "PRECISIONS"]


@dataclass(frozen=True)
class Check:
    """One row of :data:`CHECKS`: the setting ``key`` must satisfy ``ok``.

    Attributes:
        key: the full dotted key, e.g. ``"optim.lr"`` (named in the error message).
        requirement: what a valid value is, completing "``key`` must be ..." (or a function
            returning it, for lists only known at run time such as the registered models).
        ok: ``(value, cfg) -> bool``; ``cfg`` is the whole :class:`TrainConfig`, for rules that
            relate two settings. A predicate that raises (a value of a wrong type set from
            Python) counts as failed.
        choices: the valid strings, when the setting is a choice: a misspelled value gets
            the closest one suggested (or a function returning them).
    """

    key: str
    requirement: str | Callable[[], str]
    ok: Callable[[Any, "TrainConfig"], bool]
    choices: Sequence[str] | Callable[[], Sequence[str]] = ()

    @classmethod
    def one_of(cls, key: str, choices: Sequence[str] | Callable[[], Sequence[str]]) -> "Check":
        """A choice among fixed strings, e.g. ``Check.one_of("eval.mode", ("gaussian", "constant"))``."""
        listed = choices if callable(choices) else (lambda: choices)
        return cls(key, lambda: _listing(listed()), lambda v, c: v in listed(), choices)

    def problem(self, cfg: "TrainConfig") -> str | None:
        """``None`` when the value passes, else ``"<key> must be <requirement>, got <value>"``."""
        value = cfg.get(self.key)
        try:
            passed = bool(self.ok(value, cfg))
        except (TypeError, ValueError, AttributeError):
            passed = False
        if passed:
            return None
        requirement = self.requirement() if callable(self.requirement) else self.requirement
        text = f"{self.key} must be {requirement}, got {value!r}"
        choices = self.choices() if callable(self.choices) else self.choices
        guess = closest(value, choices) if isinstance(value, str) and choices else None
        return text + (f" (did you mean {guess!r}?)" if guess else "")


def _listing(options: Sequence[str]) -> str:
    """``"a, b or c"``."""
    options = list(options)
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def _number(value: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False) -> bool:
    """A finite real number (not a bool) inside the given bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


def _int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _ids(value: Any, *, empty: bool = False) -> bool:
    """A list of distinct, non-empty case ids (an empty list only with ``empty``)."""
    if not isinstance(value, list) or not (value or empty):
        return False
    return all(isinstance(v, str) and v for v in value) and len(set(value)) == len(value)


def _text_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() != "")


def _str_keys(value: Any, str_values: bool = False) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and (isinstance(x, str) or not str_values) for k, x in value.items())


def _cell(value: Any) -> bool:
    return _int(value, 1) or (isinstance(value, list) and len(value) == 3 and all(_int(x, 1) for x in value))


def _variants() -> list[str]:
    return list(VARIANTS)


def _has_teacher(variant: str) -> bool:
    return variant in VARIANTS and VARIANTS[variant].teacher


def _models() -> list[str]:
    from medcontext.models import list_models

    return list_models()


LR_SCALING = ("none", "linear", "sqrt")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

def _group_rule(value: Any) -> bool:
    from medcontext.data.grouping import GroupRuleError, check_group_rule

    try:
        check_group_rule(value)
    except GroupRuleError:
        return False
    return True


CHECKS: list[Check] = [
    # data
    Check("data.path", "a dataset folder or null", lambda v, c: _text_or_none(v)),
    Check("data.preset", "a dataset preset name", lambda v, c: isinstance(v, str) and v.strip() != ""),
    Check("data.train_cases", ">= 1 or null", lambda v, c: v is None or _int(v, 1)),
    Check("data.train_case_ids", "a non-empty list of distinct case ids or null", lambda v, c: v is None or _ids(v)),
    Check("data.val_cases", ">= 0", lambda v, c: _int(v, 0)),
    Check("data.test_cases", "an int >= 0, a fraction in (0, 1), a list of distinct case ids or null",
          lambda v, c: v is None or _int(v, 0) or _number(v, 0, 1, low_open=True, high_open=True) or _ids(v, empty=True)),
    Check("data.split_seed", "an int >= 0 or null", lambda v, c: v is None or _int(v, 0)),
    Check("data.group_by", "'regex:PATTERN' (a valid regular expression), 'metadata:COLUMN', 'none' or null",
          lambda v, c: v is None or _group_rule(v)),
    Check("data.num_samples", ">= 1", lambda v, c: _int(v, 1)),
    Check("data.pos", "a finite number >= 0 (data.pos + data.neg > 0)",
          lambda v, c: _number(v, 0) and v + c.data.neg > 0),
    Check("data.neg", "a finite number >= 0", lambda v, c: _number(v, 0)),
    Check("data.num_workers", ">= 0", lambda v, c: _int(v, 0)),
    Check("data.cache_dir", "a folder path or null", lambda v, c: _text_or_none(v)),
    Check("data.preprocess", "a mapping of preprocessing settings", lambda v, c: isinstance(v, dict)),
    Check("data.unlabeled", "pool, imagesTs, a folder or file path, a list of them, or null",
          lambda v, c: v is None or _text_or_none(v) or (isinstance(v, list) and all(_text_or_none(x) and x for x in v))),
    Check("data.unlabeled_batch_size", ">= 1 or null (as many as labelled crops)", lambda v, c: v is None or _int(v, 1)),
    # model
    Check.one_of("model.name", _models),
    Check("model.options", "a mapping of option names to values", lambda v, c: _str_keys(v)),
    Check("model.roi", "3 positive ints or null", lambda v, c: v is None or (len(v) == 3 and all(_int(r, 1) for r in v))),
    Check("model.init_checkpoint", "a file path or null", lambda v, c: _text_or_none(v)),
    Check("model.init_prefix_map", "a mapping of key prefixes {old: new}", lambda v, c: _str_keys(v, str_values=True)),
    # method
    Check.one_of("method.variant", _variants),
    Check("method.mask_ratio", "in [0, 1]", lambda v, c: _number(v, 0, 1)),
    Check("method.beta", "a finite number >= 0", lambda v, c: _number(v, 0)),
    Check("method.momentum", "in [0, 1]", lambda v, c: _number(v, 0, 1)),
    Check("method.momentum_horizon", "in (0, 1] (a fraction of train.steps) or null",
          lambda v, c: v is None or _number(v, 0, 1, low_open=True)),
    Check.one_of("method.mask_space", MASK_SPACES),
    Check("method.depth_axis", "a spatial axis in [-3, 2]", lambda v, c: _int(v, -3) and v <= 2),
    Check("method.mask_cell", "a positive int, 3 positive ints or null", lambda v, c: v is None or _cell(v)),
    Check.one_of("method.mask_mode", MASK_MODES),
    Check.one_of("method.student_passes", STUDENT_PASSES),
    # optim
    Check.one_of("optim.name", ("adamw", "sgd")),
    Check("optim.lr", "a finite number > 0", lambda v, c: _number(v, 0, low_open=True)),
    Check("optim.weight_decay", "a finite number >= 0", lambda v, c: _number(v, 0)),
    Check("optim.betas", "two numbers in [0, 1), e.g. [0.9, 0.999]",
          lambda v, c: len(v) == 2 and all(_number(b, 0, 1, high_open=True) for b in v)),
    Check("optim.momentum", "in [0, 1) (and > 0 for SGD with optim.nesterov=true)",
          lambda v, c: _number(v, 0, 1, high_open=True) and not (c.optim.name == "sgd" and c.optim.nesterov and v == 0)),
    Check.one_of("optim.schedule", ("warmup_cosine", "poly", "constant")),
    Check("optim.warmup_steps", "in [0, train.steps)", lambda v, c: _int(v, 0) and v < c.train.steps),
    Check("optim.final_lr", "a finite number >= 0 (the learning rate at the last step)", lambda v, c: _number(v, 0)),
    Check("optim.poly_power", "a finite number >= 0", lambda v, c: _number(v, 0)),
    Check("optim.grad_clip", "a finite number >= 0 or null (0 or null: no clipping)",
          lambda v, c: v is None or _number(v, 0)),
    Check.one_of("optim.lr_scaling", LR_SCALING),
    Check("optim.base_batch_size", ">= 1", lambda v, c: _int(v, 1)),
    # train
    Check("train.steps", ">= 1", lambda v, c: _int(v, 1)),
    Check("train.batch_size", ">= 1", lambda v, c: _int(v, 1)),
    Check("train.effective_batch_size", ">= 1 or null", lambda v, c: v is None or _int(v, 1)),
    Check("train.seed", "an int >= 0 (numpy and the split draw from non-negative seeds)", lambda v, c: _int(v, 0)),
    Check.one_of("train.precision", PRECISIONS),
    Check("train.device", "auto, cpu, cuda, cuda:N or mps", lambda v, c: bool(_DEVICE.match(v))),
    Check("train.checkpoint_every", ">= 1", lambda v, c: _int(v, 1)),
    Check("train.log_every", ">= 1", lambda v, c: _int(v, 1)),
    Check("train.dist_timeout_min", "a finite number > 0", lambda v, c: _number(v, 0, low_open=True)),
    Check("train.threads", ">= 1 or null (automatic)", lambda v, c: v is None or _int(v, 1)),
    Check("train.memory_budget_gb", "a finite number > 0 or null (automatic)",
          lambda v, c: v is None or _number(v, 0, low_open=True)),
    Check("train.time_budget", "a duration such as 2h, 90m, 1h30m or a number of seconds > 0, or null",
          lambda v, c: v is None or _duration(v)),
    Check("train.max_step_s", "auto, a number of seconds > 0, or null (no step-time bound)",
          lambda v, c: v is None or v == "auto" or (not isinstance(v, str) and _number(v, 0, low_open=True))),
    # eval
    Check("eval.every", ">= 0 (0: only after the last step)", lambda v, c: _int(v, 0)),
    Check("eval.overlap", "in [0, 1)", lambda v, c: _number(v, 0, 1, high_open=True)),
    Check.one_of("eval.mode", ("gaussian", "constant")),
    Check("eval.sw_batch_size", ">= 1", lambda v, c: _int(v, 1)),
    Check("eval.use", "student, or teacher with a method.variant that keeps a teacher (not baseline or no_teacher)",
          lambda v, c: v == "student" or (v == "teacher" and _has_teacher(c.method.variant))),
    Check("eval.max_val_cases", ">= 1 or null (data.val_cases=0 trains without validation)",
          lambda v, c: v is None or _int(v, 1)),
]
"""The rules :meth:`TrainConfig.validate` applies, one row per setting (a new setting gets a row).

Booleans need no row (their type is checked when they are set). Checks that need the dataset or
the network (does the model accept ``model.options``, does ``model.roi`` fit it) run in
:func:`medcontext.engine.preflight.check_run_settings` before any data is loaded.
"""


def _duration(value) -> bool:
    from medcontext.engine.planning.time_fit import parse_duration

    try:
        parse_duration(value)
    except ValueError:
        return False
    return True
