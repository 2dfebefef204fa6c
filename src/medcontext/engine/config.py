"""The training configuration: every hyperparameter of a run in one typed, saved object.

A :class:`TrainConfig` is built in three layers, later ones winning:

1. the dataclass defaults below (small, CPU friendly);
2. a YAML file (``--config FILE``), a nested mapping with the same section names; its
   ``base:`` key names files it builds on (see :func:`read_yaml`);
3. dotted overrides (``--set optim.lr=3e-4``), values parsed as YAML scalars.

The resolved object is saved as ``config.yaml`` in the run folder and travels inside every
checkpoint, so a run can always be rebuilt, resumed or used for prediction without the
command line that started it. Unknown keys are errors that suggest the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from medcontext.io.atomic import write_text_atomic

__all__ = [
    "DataConfig",
    "ModelConfig",
    "MethodConfig",
    "OptimConfig",
    "TrainingConfig",
    "EvalConfig",
    "TrainConfig",
    "ConfigError",
    "Check",
    "CHECKS",
    "resolve_batch_scaling",
    "lr_scale_factor",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_config",
]


class ConfigError(ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


@dataclass
class DataConfig:
    """Which data, how it is split and sampled.

    Attributes:
        path: dataset folder (MSD layout or a supported preset layout).
        preset: dataset preset for ``medcontext.data.load_dataset`` (``"auto"`` detects it).
        train_cases: number of training cases K drawn by ``split_seed`` from the non-test
            cases (few-shot); ``None`` uses every remaining case.
        train_case_ids: explicit training case ids (overrides ``train_cases``), e.g. the
            paper's 5-shot list.
        val_cases: number of validation cases held out of the non-test cases (0 = none).
        test_cases: held-out test cases when the dataset has no official test list: an int
            (number of cases), a float in (0, 1) (fraction) or a list of case ids (a fixed
            test split, e.g. a study's). Ignored when the preset has an
            official test list and ``use_official_test`` is true.
        use_official_test: use the preset's official test list (Synapse, ACDC, BraTS).
        split_seed: seed of the case split; ``None`` uses ``train.seed``.
        group_by: which cases belong together in a split (``"regex:PATTERN"`` on the case id,
            ``"metadata:COLUMN"`` of ``case_metadata.csv``, ``"none"``); ``None`` uses the
            preset's rule (ACDC: the patient). A group never has cases on two sides, and k
            training cases come from k different groups.
        num_samples: random crops drawn from each training volume per step.
        pos: relative weight of crops centred on foreground (``RandCropByPosNegLabel``).
        neg: relative weight of crops centred on background.
        num_workers: data loader worker processes (0 = load in the main process).
        cache_dir: folder for a persistent cache of preprocessed volumes (``None`` = memory).
        preprocess: overrides for ``PreprocessConfig.from_spec`` (e.g. ``target_spacing``,
            ``ct_window``).
        unlabeled: unlabelled volumes for a semi-supervised ``method.variant`` (CLI
            ``--unlabeled``): ``pool`` (the cases the split leaves over, labels never read),
            ``imagesTs`` (the images the dataset lists without labels), a folder or JSON in any
            layout ``data.path`` reads (labels ignored), or a list of them
            (:mod:`medcontext.data.unlabeled`); ``null``: none.
        unlabeled_batch_size: unlabelled crops per step per process; ``null`` = as many as
            labelled crops (``train.batch_size x data.num_samples``).
    """

    path: str | None = None
    preset: str = "auto"
    train_cases: int | None = None
    train_case_ids: list[str] | None = None
    val_cases: int = 1
    test_cases: int | float | list[str] | None = 0.2
    use_official_test: bool = True
    split_seed: int | None = None
    group_by: str | None = None
    num_samples: int = 2
    pos: float = 1.0
    neg: float = 1.0
    num_workers: int = 0
    cache_dir: str | None = None
    preprocess: dict = field(default_factory=dict)
    unlabeled: str | list[str] | None = None
    unlabeled_batch_size: int | None = None


@dataclass
class ModelConfig:
    """The network.

    Attributes:
        name: registry name (``medcontext.models.list_models()``).
        options: builder options, e.g. ``{size: small}``.
        roi: training crop ``[H, W, D]`` in voxels; ``None`` uses the dataset preset's
            default crop. Also the sliding-window size at validation and prediction.
        init_checkpoint: weights to initialise the student from (``--init-checkpoint``).
        init_prefix_map: key prefix renames applied to ``init_checkpoint``, ``{old: new}``.
        init_skip_mismatch: skip tensors whose shape differs instead of failing.
    """

    name: str = "unet3d"
    options: dict = field(default_factory=lambda: {"size": "small"})
    roi: list[int] | None = None
    init_checkpoint: str | None = None
    init_prefix_map: dict = field(default_factory=dict)
    init_skip_mismatch: bool = False


@dataclass
class MethodConfig:
    """MedContext settings (SPEC 1 and 2); ``variant: baseline`` trains without it.

    Attributes:
        variant: ``baseline`` | ``medcontext`` | ``no_teacher`` | ``msl_only`` | ``cl_only``.
        mask_ratio: fraction of in-plane mask positions replaced by the mask token.
        beta: weight of the consistency loss.
        momentum: teacher EMA momentum at step 0 (cosine to 1.0 at the last step).
        momentum_horizon: instead of ``momentum``, the EMA time constant as a fraction of
            ``train.steps`` (e.g. 0.05: the teacher averages over the last 5% of the run);
            ``null`` = the paper's fixed ``momentum``.
        mask_space: ``auto`` | ``token`` | ``input``.
        depth_axis: spatial axis along which masks are repeated (tube masking).
        mask_cell: voxels per mask cell (int or ``[x, y, z]``); ``None`` = SPEC 2 defaults.
        mask_mode: ``exact`` (``round(ratio * N)`` cells) or ``bernoulli``.
        student_passes: ``auto`` | ``separate`` | ``concat``.
    """

    variant: str = "medcontext"
    mask_ratio: float = 0.4
    beta: float = 0.5
    momentum: float = 0.996
    momentum_horizon: float | None = None
    mask_space: str = "auto"
    depth_axis: int = -1
    mask_cell: int | list[int] | None = None
    mask_mode: str = "exact"
    student_passes: str = "auto"


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (a pure function of the global step).

    Attributes:
        name: ``adamw`` or ``sgd`` (SGD uses ``momentum`` and Nesterov, as nnU-Net).
        lr: base learning rate.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        betas: AdamW betas.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        schedule: ``warmup_cosine`` | ``poly`` | ``constant``.
        warmup_steps: linear warmup steps (``warmup_cosine`` and ``constant``).
        final_lr: learning rate at the last step (``warmup_cosine``).
        poly_power: exponent of the ``poly`` schedule.
        grad_clip: clip the global gradient norm to this value; ``None`` or 0 disables it.
        lr_scaling: how ``lr`` (and ``final_lr``) follow the effective batch size:
            ``none`` (use them as given), ``linear`` (times ``effective / base_batch_size``)
            or ``sqrt`` (times its square root). See :func:`lr_scale_factor`.
        base_batch_size: the effective batch size (crops per optimizer step over all
            processes) at which ``lr`` was tuned; the reference of ``lr_scaling``.
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.99
    nesterov: bool = True
    schedule: str = "warmup_cosine"
    warmup_steps: int = 0
    final_lr: float = 0.0
    poly_power: float = 0.9
    grad_clip: float | None = 12.0
    lr_scaling: str = "none"
    base_batch_size: int = 2


@dataclass
class TrainingConfig:
    """The loop.

    Attributes:
        steps: optimizer steps of the whole run (the schedules' ``total_steps``).
        batch_size: volumes per step PER PROCESS; each gives ``data.num_samples`` crops.
        effective_batch_size: crops per optimizer step over all processes,
            ``batch_size x data.num_samples x world size``. ``None`` (default) is filled in
            at start and saved; a set value is checked, so that launching a run with another
            number of processes than planned is an error, not a silent change of the
            optimisation (see :func:`resolve_batch_scaling`).
        seed: seeds weights, data order, augmentation and masks.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (``auto``: bf16 on CUDA when
            supported else fp16; on CPU bf16 only where the CPU runs it natively, else fp32;
            see :mod:`medcontext.engine.precision`).
        precision_check: before training in bf16/fp16, compare every convolution and linear
            layer with fp32 at the training input's shape (seconds; see
            :mod:`medcontext.engine.precision_check`). A wrong layer makes ``auto`` fall back
            to fp32 and an explicit ``bf16``/``fp16`` an error.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        checkpoint_every: write ``last.pt`` every this many steps (and at the end).
        log_every: update the progress bar and TensorBoard every this many steps
            (``metrics.jsonl`` gets every step).
        deterministic: ask PyTorch for deterministic kernels (slower on GPU).
        tensorboard: write TensorBoard event files to ``RUN_DIR/tensorboard``.
        dist_timeout_min: multi-process runs: minutes a collective waits for the slowest
            process before the run fails (data caching at start can be slow).
        retain_cpu_memory: CPU runs: make glibc malloc keep and reuse freed memory instead of
            page-faulting it in again every step: faster steps, but the peak memory can
            double (see :mod:`medcontext.engine.cpu_memory`; a preloaded tcmalloc is the
            better fix). Changes speed and memory, not results.
        threads: CPU threads of the process; ``None`` = ``OMP_NUM_THREADS`` if set, else the
            physical cores divided by the run's processes on the node
            (:mod:`medcontext.engine.cpu_threads`). Changes speed; a count that changes mid-run
            (another run starts or ends) also changes float rounding: set it for bit-exact resumes.
        memory_budget_gb: GiB one training step may use on the device, for the plan (the crop
            is fitted to it, a crop that does not fit is refused); ``None`` = 90% of the GPU's
            memory, or 80% of the CPU memory available at start.
    """

    steps: int = 200
    batch_size: int = 1
    effective_batch_size: int | None = None
    seed: int = 0
    precision: str = "auto"
    precision_check: bool = True
    device: str = "auto"
    checkpoint_every: int = 50
    log_every: int = 1
    deterministic: bool = False
    tensorboard: bool = True
    dist_timeout_min: float = 60.0
    retain_cpu_memory: bool = False
    threads: int | None = None
    memory_budget_gb: float | None = None


@dataclass
class EvalConfig:
    """Validation during training and inference settings.

    Attributes:
        every: validate every this many steps (0 = only after the last step).
        overlap: sliding-window overlap.
        mode: sliding-window blending, ``gaussian`` or ``constant``.
        sw_batch_size: windows per forward pass.
        use: weights for validation and prediction, ``student`` or ``teacher``.
        max_val_cases: validate on at most this many validation cases (``None`` = all).
    """

    every: int = 50
    overlap: float = 0.5
    mode: str = "gaussian"
    sw_batch_size: int = 1
    use: str = "student"
    max_val_cases: int | None = None


@dataclass
class TrainConfig:
    """A complete, resolved run configuration (saved as ``config.yaml``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict:
        """A plain nested dict (YAML/JSON/pickle friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build from a nested mapping; unknown keys and wrong types raise :class:`ConfigError`."""
        cfg = cls()
        cfg.update(data, source=source)
        return cfg

    def update(self, data: Mapping[str, Any], *, source: str = "config") -> "TrainConfig":
        """Apply a nested mapping on top of this config, in place; returns ``self``."""
        if data is None:
            return self
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
        for key, value in _flatten(data):
            self.set(key, value, source=source)
        return self

    # ------------------------------------------------------------------ dotted access
    def get(self, key: str) -> Any:
        """The value at a dotted key, e.g. ``"optim.lr"``."""
        section, name = self._split_key(key, source="get")
        return getattr(getattr(self, section), name)

    def set(self, key: str, value: Any, *, source: str = "--set") -> None:
        """Set a dotted key, checking the key exists and the value has the field's type."""
        section, name = self._split_key(key, source=source)
        section_obj = getattr(self, section)
        field_type = _field_types(type(section_obj))[name]
        try:
            coerced = _coerce(value, field_type)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"{source}: {key}={value!r} has the wrong type ({err}); expected {_type_name(field_type)}"
            ) from err
        setattr(section_obj, name, coerced)

    @classmethod
    def keys(cls) -> list[str]:
        """Every valid dotted key, e.g. ``["data.path", ..., "eval.use"]``."""
        out = []
        for section in dataclasses.fields(cls):
            for f in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
                out.append(f"{section.name}.{f.name}")
        return out

    def _split_key(self, key: str, *, source: str) -> tuple[str, str]:
        parts = key.split(".")
        if len(parts) == 2 and parts[0] in _SECTIONS and parts[1] in _field_types(_SECTIONS[parts[0]]):
            return parts[0], parts[1]
        # dict-valued fields accept deeper keys via the mapping itself, never dotted paths
        valid = self.keys()
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
        if not close:
            tail = key.split(".")[-1]
            close = [k for k in valid if k.endswith("." + tail)] or difflib.get_close_matches(
                tail, [k.split(".")[1] for k in valid], n=3
            )
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"{source}: unknown configuration key {key!r}.{hint} Valid keys are "
            f"<section>.<name> with sections {', '.join(_SECTIONS)}; `medcontext train --print-config` lists all."
        )

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        """Check every value against :data:`CHECKS` (no dataset needed); returns ``self``.

        Raises:
            ConfigError: listing every failed check as ``<section>.<name> must be ..., got ...``.
        """
        bad = [check.problem(self) for check in CHECKS]
        bad = [problem for problem in bad if problem]
        if bad:
            raise ConfigError("invalid configuration: " + "; ".join(bad) + ".")
        return self

    def diff(self, other: "TrainConfig") -> dict[str, tuple[Any, Any]]:
        """Dotted keys whose values differ: ``{key: (self_value, other_value)}``."""
        mine, theirs = dict(_flatten(self.to_dict())), dict(_flatten(other.to_dict()))
        return {k: (mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)}


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
        close = difflib.get_close_matches(value, list(choices), n=1) if isinstance(value, str) and choices else []
        return text + (f" (did you mean {close[0]!r}?)" if close else "")


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
    from medcontext.method import VARIANTS

    return list(VARIANTS)


def _has_teacher(variant: str) -> bool:
    from medcontext.method import VARIANTS

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
    Check("data.split_seed", "an int or null", lambda v, c: v is None or _int(v, -(2**63))),
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
    Check.one_of("method.mask_space", ("auto", "token", "input")),
    Check("method.depth_axis", "a spatial axis in [-3, 2]", lambda v, c: _int(v, -3) and v <= 2),
    Check("method.mask_cell", "a positive int, 3 positive ints or null", lambda v, c: v is None or _cell(v)),
    Check.one_of("method.mask_mode", ("exact", "bernoulli")),
    Check.one_of("method.student_passes", ("auto", "separate", "concat")),
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
    Check("train.seed", "an int", lambda v, c: _int(v, -(2**63))),
    Check.one_of("train.precision", PRECISIONS),
    Check("train.device", "auto, cpu, cuda, cuda:N or mps", lambda v, c: bool(_DEVICE.match(v))),
    Check("train.checkpoint_every", ">= 1", lambda v, c: _int(v, 1)),
    Check("train.log_every", ">= 1", lambda v, c: _int(v, 1)),
    Check("train.dist_timeout_min", "a finite number > 0", lambda v, c: _number(v, 0, low_open=True)),
    Check("train.threads", ">= 1 or null (automatic)", lambda v, c: v is None or _int(v, 1)),
    Check("train.memory_budget_gb", "a finite number > 0 or null (automatic)",
          lambda v, c: v is None or _number(v, 0, low_open=True)),
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


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "optim": OptimConfig,
    "train": TrainingConfig,
    "eval": EvalConfig,
}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """Yield ``(section.name, value)``; dict-valued fields (options, preprocess) stay whole."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not prefix and isinstance(value, Mapping):
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise TypeError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise TypeError("null is not allowed")
        errors = []
        # try exact-type matches first so that 3 stays an int in `int | float`
        ordered = sorted((o for o in options if o is not type(None)), key=lambda o: not _exact(value, o))
        for option in ordered:
            try:
                return _coerce(value, option)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise TypeError("; ".join(errors))
    if origin is list:
        (item_type,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (list, tuple)):
            return [_coerce(v, item_type) for v in value]
        raise TypeError(f"expected a list, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise TypeError(f"expected a mapping, got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(f"expected a string, got {value!r}")
    raise TypeError(f"unsupported field type {tp!r}")


def _exact(value: Any, option: Any) -> bool:
    base = typing.get_origin(option) or option
    if base is float:
        return isinstance(value, float)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base) if isinstance(base, type) else False


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``"section.key=value"``; the value is read as a YAML scalar/flow value.

    Examples: ``optim.lr=3e-4`` -> 0.0003, ``model.roi=[32,48,32]``, ``data.train_cases=null``.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({err})") from err
    # YAML 1.1 reads '1e-4' (no dot) as a string; accept it as a number
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key, value


BASE_KEY = "base"


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a configuration file from ``path``, with the files it builds on merged in.

    A file may start with ``base: FILE`` or ``base: [FILE, ...]``, paths relative to the file
    itself. The bases are read first (each may have bases of its own), in the order listed,
    then the file's own settings; a later value wins over an earlier one for the same
    ``section.key`` (a mapping-valued setting such as ``model.options`` is replaced whole).
    ``--set`` overrides are applied after all of them. The result has no ``base`` key.

    Raises:
        ConfigError: a missing file, invalid YAML, a cycle of bases, or an unknown key or a
            wrong type, each naming the file it is in.
    """
    return _read_with_bases(Path(path), ())


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(resolved):], resolved))
        raise ConfigError(f"config file {path}: its bases form a cycle ({cycle})")
    own = _read_one(path)
    bases = own.pop(BASE_KEY, None)
    TrainConfig().update(own, source=f"config file {path}")  # unknown keys and wrong types, named here
    if bases is None:
        return own
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b.strip() for b in bases):
        raise ConfigError(f"config file {path}: {BASE_KEY} must be a file path or a list of them, got {bases!r}")
    merged: dict = {}
    for base in bases:
        target = Path(os.path.normpath(path.parent / base))
        if not target.is_file():
            raise ConfigError(f"config file {path}: its base {base!r} does not exist (looked for {target})")
        _merge_into(merged, _read_with_bases(target, (*chain, resolved)))
    return _merge_into(merged, own)


def _merge_into(merged: dict, later: Mapping[str, Any]) -> dict:
    """Section by section, ``later``'s keys over ``merged``'s; returns ``merged``."""
    for section, values in later.items():
        if isinstance(values, Mapping) and isinstance(merged.get(section), Mapping):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = dict(values) if isinstance(values, Mapping) else values
    return merged


def _read_one(path: Path) -> dict:
    """One YAML file as a mapping, with errors that name the file."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return _fix_yaml_numbers(data)


def _fix_yaml_numbers(data: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; turn such strings into floats."""
    if isinstance(data, dict):
        return {k: _fix_yaml_numbers(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_fix_yaml_numbers(v) for v in data]
    if isinstance(data, str):
        try:
            return float(data) if any(c in data for c in "eE") and data[:1] in "+-.0123456789" else data
        except ValueError:
            return data
    return data


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults (or ``base``), then the YAML file at ``path``, then ``overrides``.

    Args:
        path: a YAML file with sections ``data``, ``model``, ``method``, ``optim``, ``train``,
            ``eval`` (and ``base``, see :func:`read_yaml`); ``None`` skips it.
        overrides: ``["optim.lr=3e-4", ...]`` strings or a ``{dotted_key: value}`` mapping.
        base: start from this config instead of the defaults (not modified).

    Returns:
        The validated :class:`TrainConfig`.

    Raises:
        ConfigError: unknown key, wrong type, or out-of-range value.
    """
    cfg = TrainConfig.from_dict(base.to_dict()) if base is not None else TrainConfig()
    if path is not None:
        cfg.update(read_yaml(path), source=str(path))
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        cfg.set(key, value, source=f"--set {key}")
    return cfg.validate()


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    text = "# medcontext resolved training configuration\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    write_text_atomic(path, text)
    return path



def resolve_batch_scaling(cfg: TrainConfig, world_size: int) -> TrainConfig:
    """Fill in (or check) ``train.effective_batch_size`` for a run of ``world_size`` processes.

    The effective batch is ``train.batch_size x data.num_samples x world_size`` crops per
    optimizer step: every process draws its own ``batch_size`` volumes and the gradients are
    averaged over processes. Modifies ``cfg`` in place and returns it.

    Raises:
        ConfigError: ``train.effective_batch_size`` is set and differs from that product.
    """
    per_process = cfg.train.batch_size * cfg.data.num_samples
    derived = per_process * int(world_size)
    if cfg.train.effective_batch_size is None:
        cfg.train.effective_batch_size = derived
    elif cfg.train.effective_batch_size != derived:
        wanted = cfg.train.effective_batch_size
        fits = f"; launch {wanted // per_process} processes" if wanted % per_process == 0 else ""
        raise ConfigError(
            f"train.effective_batch_size={wanted} but this launch gives {derived} crops per step "
            f"(train.batch_size={cfg.train.batch_size} x data.num_samples={cfg.data.num_samples} x {world_size} "
            f"process(es)){fits}, change train.batch_size, or set train.effective_batch_size=null to accept {derived}"
        )
    return cfg


def lr_scale_factor(cfg: TrainConfig) -> float:
    """The factor applied to ``optim.lr`` and ``optim.final_lr`` (``optim.lr_scaling``).

    ``none``: 1; ``linear``: ``effective / base`` (Goyal et al. 2017, with warmup);
    ``sqrt``: ``sqrt(effective / base)`` (common for Adam-type optimizers), where
    ``effective = train.effective_batch_size`` (resolved, see :func:`resolve_batch_scaling`)
    and ``base = optim.base_batch_size``.
    """
    if cfg.optim.lr_scaling == "none":
        return 1.0
    if cfg.train.effective_batch_size is None:
        raise ConfigError("train.effective_batch_size is not resolved yet; call resolve_batch_scaling(cfg, world_size)")
    ratio = cfg.train.effective_batch_size / cfg.optim.base_batch_size
    if cfg.optim.lr_scaling == "linear":
        return float(ratio)
    if cfg.optim.lr_scaling == "sqrt":
        return float(ratio) ** 0.5
    raise ConfigError(f"optim.lr_scaling must be one of {', '.join(LR_SCALING)}, got {cfg.optim.lr_scaling!r}")
