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
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from medcontext.method.settings import DEFAULTS

__all__ = [
    "DataConfig",
    "ModelConfig",
    "MethodConfig",
    "OptimConfig",
    "TrainingConfig",
    "EvalConfig",
    "TrainConfig",
    "ConfigError",
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

    def split_settings(self, seed: int) -> dict[str, Any]:
        """The keyword arguments of :func:`medcontext.data.split_for_spec` that this section gives:
        the one place a split is read from the settings, so that ``train`` and ``pretrain`` with the
        same data settings draw the same split (and the same ``pool``).

        Args:
            seed: the run's seed (``train.seed``), the split's seed when ``split_seed`` is ``None``.
        """
        return {
            "train_cases": self.train_cases,
            "train_case_ids": self.train_case_ids,
            "val_cases": self.val_cases,
            "test_cases": self.test_cases,
            "use_official_test": self.use_official_test,
            "seed": self.split_seed if self.split_seed is not None else seed,
        }


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
    """MedContext settings (docs/method.md); ``variant: baseline`` trains without it.

    The defaults are :data:`medcontext.method.settings.DEFAULTS`.

    Attributes:
        variant: a name of :data:`medcontext.method.settings.VARIANTS` (``baseline``,
            ``medcontext``, ``no_teacher``, ``msl_only``, ``cl_only``, ...).
        mask_ratio: fraction of in-plane mask positions replaced by the mask token.
        beta: weight of the consistency loss.
        momentum: teacher EMA momentum at step 0 (cosine to 1.0 at the last step).
        momentum_horizon: instead of ``momentum``, the EMA time constant as a fraction of
            ``train.steps`` (e.g. 0.05: the teacher averages over the last 5% of the run);
            ``null`` = the paper's fixed ``momentum``.
        mask_space: ``auto`` | ``token`` | ``input``.
        depth_axis: spatial axis along which masks are repeated (tube masking).
        mask_cell: voxels per mask cell (int or ``[x, y, z]``); ``None`` = the defaults of
            docs/method.md (the model's token patch, or 16 voxels in input space).
        mask_mode: ``exact`` (``round(ratio * N)`` cells) or ``bernoulli``.
        student_passes: ``auto`` | ``separate`` | ``concat``.
    """

    variant: str = DEFAULTS.variant
    mask_ratio: float = DEFAULTS.mask_ratio
    beta: float = DEFAULTS.beta
    momentum: float = DEFAULTS.momentum
    momentum_horizon: float | None = DEFAULTS.momentum_horizon
    mask_space: str = DEFAULTS.mask_space
    depth_axis: int = DEFAULTS.depth_axis
    mask_cell: int | list[int] | None = None
    mask_mode: str = DEFAULTS.mask_mode
    student_passes: str = DEFAULTS.student_passes


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
            see :mod:`medcontext.engine.host.precision`).
        precision_check: before training in bf16/fp16, compare every convolution and linear
            layer with fp32 at the training input's shape (seconds; see
            :mod:`medcontext.engine.host.precision_check`). A wrong layer makes ``auto`` fall back
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
            double (see :mod:`medcontext.engine.host.cpu_memory`; a preloaded tcmalloc is the
            better fix). Changes speed and memory, not results.
        threads: CPU threads of the process; ``None`` = ``OMP_NUM_THREADS`` if set, else the
            physical cores divided by the run's processes on the node
            (:mod:`medcontext.engine.host.cpu_threads`). Changes speed; a count that changes mid-run
            (another run starts or ends) also changes float rounding: set it for bit-exact resumes.
        memory_budget_gb: GiB one training step may use on the device, for the plan (the crop
            is fitted to it, a crop that does not fit is refused); ``None`` = 90% of the GPU's
            memory, or 80% of the CPU memory available at start.
        time_budget: wall-clock budget of the run (``2h``, ``90m``, ``1h30m``, seconds); the plan's
            spacing and crop are fitted so that ``steps`` steps fit it
            (:mod:`medcontext.engine.planning.time_fit`). ``None``: no budget.
        steps_from_budget: with ``time_budget``: choose ``steps`` to fill it instead (what
            ``--time-budget`` without ``--steps`` sets).
        max_step_s: estimated seconds per step the plan keeps to without a budget: ``auto`` (2 s
            on a CPU, no bound on a GPU), a number, or ``None`` (memory-driven only).
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
    time_budget: str | float | None = None
    steps_from_budget: bool = False
    max_step_s: float | str | None = "auto"


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
        """Set a dotted key, checking the key exists and the value has the field's type.

        A key below a mapping-valued setting reaches into it at any depth and keeps its other
        entries: ``model.options.preset=small``, ``data.preprocess.target_spacing=[2, 2, 5]``.
        """
        parts = key.split(".")
        if len(parts) > 2 and parts[0] in _SECTIONS and _field_types(_SECTIONS[parts[0]]).get(parts[1]) is dict:
            mapping = getattr(getattr(self, parts[0]), parts[1])
            value = _with_nested(mapping, parts[2:], value)
            key = ".".join(parts[:2])
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
        from .checks import CHECKS

        bad = [check.problem(self) for check in CHECKS]
        bad = [problem for problem in bad if problem]
        if bad:
            raise ConfigError("invalid configuration: " + "; ".join(bad) + ".")
        return self

    def diff(self, other: "TrainConfig") -> dict[str, tuple[Any, Any]]:
        """Dotted keys whose values differ: ``{key: (self_value, other_value)}``."""
        mine, theirs = dict(_flatten(self.to_dict())), dict(_flatten(other.to_dict()))
        return {k: (mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)}




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


def _with_nested(mapping: Mapping[str, Any] | None, path: list[str], value: Any) -> dict:
    """A copy of ``mapping`` with ``value`` at the key path ``path`` (missing levels created)."""
    out = dict(mapping or {})
    head, rest = path[0], path[1:]
    out[head] = _with_nested(out.get(head) if isinstance(out.get(head), Mapping) else None, rest, value) if rest else value
    return out


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
