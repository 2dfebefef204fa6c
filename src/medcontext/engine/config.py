"""The training configuration: every hyperparameter of a run in one typed, saved object.

A :class:`TrainConfig` is built in three layers, later ones winning:

1. the dataclass defaults below (small, CPU friendly);
2. a YAML file (``--config FILE``), a nested mapping with the same section names;
3. dotted overrides (``--set optim.lr=3e-4``), values parsed as YAML scalars.

The resolved object is saved as ``config.yaml`` in the run folder and travels inside every
checkpoint, so a run can always be rebuilt, resumed or used for prediction without the
command line that started it. Unknown keys are errors that suggest the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from medcontext.data.atomic import write_text_atomic

__all__ = [
    "DataConfig",
    "ModelConfig",
    "MethodConfig",
    "OptimConfig",
    "TrainingConfig",
    "EvalConfig",
    "TrainConfig",
    "ConfigError",
    "resolve_batch_scaling",
    "lr_scale_factor",
    "load_config",
    "parse_override",
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
        num_samples: random crops drawn from each training volume per step.
        pos: relative weight of crops centred on foreground (``RandCropByPosNegLabel``).
        neg: relative weight of crops centred on background.
        num_workers: data loader worker processes (0 = load in the main process).
        cache_dir: folder for a persistent cache of preprocessed volumes (``None`` = memory).
        preprocess: overrides for ``PreprocessConfig.from_spec`` (e.g. ``target_spacing``,
            ``ct_window``).
    """

    path: str | None = None
    preset: str = "auto"
    train_cases: int | None = None
    train_case_ids: list[str] | None = None
    val_cases: int = 1
    test_cases: int | float | list[str] | None = 0.2
    use_official_test: bool = True
    split_seed: int | None = None
    num_samples: int = 2
    pos: float = 1.0
    neg: float = 1.0
    num_workers: int = 0
    cache_dir: str | None = None
    preprocess: dict = field(default_factory=dict)


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
            supported else fp16, fp32 on CPU).
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
        memory_budget_gb: GiB one training step may use on the device, for the plan (the crop
            is fitted to it, a crop that does not fit is refused); ``None`` = 90% of the GPU's
            memory, or 80% of the CPU memory available at start.
    """

    steps: int = 200
    batch_size: int = 1
    effective_batch_size: int | None = None
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    checkpoint_every: int = 50
    log_every: int = 1
    deterministic: bool = False
    tensorboard: bool = True
    dist_timeout_min: float = 60.0
    retain_cpu_memory: bool = False
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
        """Check value ranges that do not need the dataset; returns ``self``."""
        checks = [
            (self.train.steps >= 1, "train.steps must be >= 1"),
            (self.train.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
            (self.train.log_every >= 1, "train.log_every must be >= 1"),
            (self.train.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision must be auto, fp32, bf16 or fp16"),
            (self.data.num_samples >= 1, "data.num_samples must be >= 1"),
            (self.data.num_workers >= 0, "data.num_workers must be >= 0"),
            (self.data.val_cases >= 0, "data.val_cases must be >= 0"),
            (self.data.train_cases is None or self.data.train_cases >= 1, "data.train_cases must be >= 1 or null"),
            (self.optim.name in ("adamw", "sgd"), "optim.name must be adamw or sgd"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.optim.schedule in ("warmup_cosine", "poly", "constant"), "optim.schedule must be warmup_cosine, poly or constant"),
            (0 <= self.optim.warmup_steps < self.train.steps, "optim.warmup_steps must be in [0, train.steps)"),
            (self.optim.grad_clip is None or self.optim.grad_clip >= 0, "optim.grad_clip must be >= 0 or null"),
            (len(self.optim.betas) == 2, "optim.betas must have two values"),
            (self.optim.lr_scaling in LR_SCALING, "optim.lr_scaling must be none, linear or sqrt"),
            (self.optim.base_batch_size >= 1, "optim.base_batch_size must be >= 1"),
            (self.train.effective_batch_size is None or self.train.effective_batch_size >= 1,
             "train.effective_batch_size must be >= 1 or null"),
            (self.train.dist_timeout_min > 0, "train.dist_timeout_min must be > 0"),
            (self.train.memory_budget_gb is None or self.train.memory_budget_gb > 0,
             "train.memory_budget_gb must be > 0 or null"),
            (self.eval.every >= 0, "eval.every must be >= 0"),
            (0 <= self.eval.overlap < 1, "eval.overlap must be in [0, 1)"),
            (self.eval.mode in ("gaussian", "constant"), "eval.mode must be gaussian or constant"),
            (self.eval.use in ("student", "teacher"), "eval.use must be student or teacher"),
            (self.eval.sw_batch_size >= 1, "eval.sw_batch_size must be >= 1"),
            (0 <= self.method.mask_ratio <= 1, "method.mask_ratio must be in [0, 1]"),
            (self.method.beta >= 0, "method.beta must be >= 0"),
            (0 <= self.method.momentum <= 1, "method.momentum must be in [0, 1]"),
        ]
        if self.model.roi is not None:
            checks.append((len(self.model.roi) == 3 and all(r >= 1 for r in self.model.roi), "model.roi must be 3 positive ints"))
        if isinstance(self.data.test_cases, float):
            checks.append((0 < self.data.test_cases < 1, "data.test_cases as a fraction must be in (0, 1)"))
        elif isinstance(self.data.test_cases, int):
            checks.append((self.data.test_cases >= 0, "data.test_cases must be >= 0"))
        bad = [msg for ok, msg in checks if not ok]
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


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping from ``path`` with errors that name the file."""
    path = Path(path)
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
            ``eval``; ``None`` skips it.
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


LR_SCALING = ("none", "linear", "sqrt")


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
