"""A run folder: starting, resuming and reloading a training run.

``train(cfg, run_dir)`` validates the dataset, draws the split, builds the network and the
MedContext wrapper from the config and hands them to the :class:`Trainer`. Everything needed
to use the run later is written into ``run_dir`` before the first step:

========================  =====================================================
``config.yaml``           the resolved :class:`TrainConfig`
``split.json``            the train / val / test case ids actually used (+ unlabelled ones)
``unlabeled.json``        semi-supervised runs: the unlabelled volumes' files and sources
``dataset.json``          the dataset description (cases, labels, regions, ...)
``preprocess.json``       the :class:`~medcontext.data.PreprocessConfig`
``plan.json``             the plan: spacing, crop, batch, mask cell, memory and time
                          estimates, each value with its source and reason
``data_fingerprint.json`` per case: files, shape, spacing, label voxels (``--resume``
                          refuses a dataset that differs)
``.medcontext.lock``      while a process writes the folder: its PID, host and start
``metrics.jsonl``         one JSON record per step, per validation and per start or resume (the machine)
``tensorboard/``          TensorBoard event files
``last.pt``, ``best.pt``  checkpoints (best by validation mean Dice)
``eval/``                 ``medcontext evaluate`` output
========================  =====================================================

:func:`load_run` and :func:`load_model` read it back for prediction and evaluation without
the dataset or the command line that started it.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from medcontext.io.atomic import remove_stale_temporaries, write_text_atomic
from medcontext.io.run_lock import RunFolderLock
from medcontext.engine.builder import build_medcontext, build_network, class_map, resolve_roi
from medcontext.engine.checkpoint import CheckpointError, load_model_state, read_checkpoint
from medcontext.engine.config import ConfigError, TrainConfig, load_config, resolve_batch_scaling, save_config
from medcontext.engine.host.cpu_threads import CpuShare
from medcontext.engine.host.distributed import World, init_distributed
from medcontext.engine.preflight import check_run_settings
from medcontext.engine.resume import check_resume_settings
from medcontext.engine.host.precision import Precision, resolve_precision
from medcontext.engine.host.precision_check import fall_back_if_wrong, reduced_precision_errors
from medcontext.engine.trainer import TrainResult, Trainer, ValidationCase, run_device
from medcontext.engine.unlabeled_data import (
    check_unlabeled_settings, prepare_split, read_unlabeled, save_unlabeled, unlabeled_batch_size, unlabeled_line,
    unlabeled_sources,
)

__all__ = [
    "RunInfo",
    "seed_everything",
    "train",
    "load_run",
    "load_model",
    "checkpoint_path",
]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass
class RunInfo:
    """What a run folder says about itself (see the module docstring)."""

    run_dir: Path
    cfg: TrainConfig
    spec: object  # medcontext.data.DatasetSpec
    preprocess: object  # medcontext.data.PreprocessConfig
    split: object  # medcontext.data.Split
    roi: tuple[int, int, int]

    @property
    def classes(self) -> dict[str, tuple[int, ...]]:
        return class_map(self.spec)


def _write_json(path: Path, data: Mapping) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _validation_cases(spec, case_ids: Sequence[str], preprocess) -> list[ValidationCase]:
    from medcontext.data import make_eval_dataset

    from medcontext.engine.inference import regions_to_labels

    if not case_ids:
        return []
    dataset = make_eval_dataset(spec, list(case_ids), preprocess, cache=False)
    cases = []
    for i in range(len(dataset)):
        item = dataset[i]
        image = item["image"]
        affine = np.asarray(image.affine, dtype=np.float64)
        spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        label = item["label"]
        label = label.as_tensor() if hasattr(label, "as_tensor") else label
        if spec.output_mode == "sigmoid":
            label_map = regions_to_labels(label.numpy(), spec.regions)
        else:
            label_map = label[0].numpy().astype(np.int16)
        cases.append(ValidationCase(str(item["case_id"]), image.as_tensor().float(), label_map, spacing))
    return cases


def _remove_stale_temporaries(run_dir: Path, echo: Callable[[str], None]) -> None:
    """Delete temp files that a killed process left in ``run_dir`` while writing a checkpoint or log."""
    removed = remove_stale_temporaries(run_dir)
    if removed:
        listing = ", ".join(f"{path.name} ({size / 1e6:.1f} MB)" for path, size in removed)
        echo(f"removed {len(removed)} temporary file(s) of interrupted writes from {run_dir}: {listing}")


def _check_run_dir(run_dir: Path, resume: bool, world: World | None = None) -> None:
    if resume:
        if not (run_dir / "last.pt").is_file():
            if world is not None and not world.is_main:
                raise CheckpointError(
                    f"--resume: rank {world.rank} cannot see {run_dir / 'last.pt'}; with several nodes the run folder "
                    "must be on a filesystem that every node mounts at the same path"
                )
            raise CheckpointError(f"--resume: {run_dir / 'last.pt'} does not exist; start the run without --resume")
        return
    if (run_dir / "last.pt").exists():
        raise ConfigError(
            f"{run_dir} already holds a run (last.pt); continue it with --resume or choose a new --out folder"
        )


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    trainer_class: type[Trainer] = Trainer,
    network_hook: Callable[[nn.Module], nn.Module] | None = None,
    world: World | None = None,
    trust_checkpoint: bool = False,
) -> TrainResult:
    """Train (or resume) a run in ``run_dir`` as ``cfg`` says.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every process calls this: it
    joins the process group (:func:`~medcontext.engine.host.distributed.init_distributed`), rank 0
    checks the dataset, draws the split and writes the run folder while the others wait for
    its result, each rank loads its share of the validation cases, and the
    :class:`Trainer` trains with DistributedDataParallel. Only rank 0 prints and writes.

    Args:
        cfg: the configuration; ``data.path`` must name the dataset.
        run_dir: the run folder (created). Multi-node runs need it on a shared filesystem.
        resume: continue from ``run_dir/last.pt``; ``cfg`` must equal the saved config
            except for settings that do not change the result (paths, workers, device).
        stop_after: stop after this many steps of this call (with a checkpoint).
        progress: show progress bars (rank 0 only).
        echo: where to print status lines (rank 0 only).
        trainer_class: a :class:`Trainer` subclass (custom hooks).
        network_hook: called on the freshly built student network, returns the network
            to use (e.g. to wrap it for tests or debugging).
        world: an existing process group's facts; ``None`` reads the torchrun environment
            (and leaves the group it created at the end).
        trust_checkpoint: read ``model.init_checkpoint`` and, with ``resume``, ``last.pt``
            with full pickle instead of ``weights_only=True``: only for files you trust (a
            crafted file runs code). CLI ``--trust-checkpoint``.

    Returns:
        The :class:`TrainResult`.

    Raises:
        ConfigError, DatasetError, CheckpointError, NonFiniteLossError,
        DistributedError (another process of the group failed).
    """
    run_dir = Path(run_dir)
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise ConfigError(f"--stop-after (stop_after) must be a number of steps >= 1, got {stop_after!r}")
    cfg = TrainConfig.from_dict(cfg.to_dict()).validate()
    check_unlabeled_settings(cfg)
    owned = world is None
    if world is None:
        world = init_distributed(cfg.train.device, timeout_min=cfg.train.dist_timeout_min)
    cpu_share = CpuShare(cfg.train.threads).__enter__()  # threads: this process's share of the cores
    # one writer per run folder: rank 0 holds its lock until the run ends (refuses a second writer)
    lock = RunFolderLock(run_dir, "medcontext train --resume" if resume else "medcontext train") if world.is_main else None
    try:
        if lock is not None:
            lock.acquire()
        return _train(
            cfg, run_dir, world, resume=resume, stop_after=stop_after, progress=progress and world.is_main,
            echo=echo if world.is_main else _silent, trainer_class=trainer_class, network_hook=network_hook,
            trust_checkpoint=trust_checkpoint, cpu_share=cpu_share,
        )
    except BaseException as err:
        explained = world.explain_failure(err)
        if explained is err:
            raise
        raise explained from err
    finally:
        if lock is not None:
            lock.release()
        cpu_share.__exit__(None, None, None)
        if owned:
            world.close()


def _silent(_line: str) -> None:
    """``echo`` of the ranks that do not print."""


def _train(cfg: TrainConfig, run_dir: Path, world: World, *, resume: bool, stop_after: int | None, progress: bool,
           echo: Callable[[str], None], trainer_class: type[Trainer],
           network_hook: Callable[[nn.Module], nn.Module] | None, trust_checkpoint: bool = False,
           cpu_share: CpuShare | None = None) -> TrainResult:
    """The steps of a run: settings, plan, preflight, precision check, run folder, model, data, training."""
    from medcontext.data import PreprocessConfig

    _check_run_dir(run_dir, resume, world)
    spec = _load_spec(cfg)
    explicit_roi = cfg.model.roi is not None
    if explicit_roi:  # the planner builds networks with an explicit crop: check it first, with named errors
        _preflight(cfg, spec, tuple(int(r) for r in cfg.model.roi))
    # every case checked (fresh start and resume alike) before the planner reads the headers
    from medcontext.data.unlabeled import POOL

    pool = POOL in unlabeled_sources(cfg)
    fingerprint = world.main_first(
        lambda: _check_data(spec, run_dir, resume=resume, pool=pool, progress=progress, echo=echo),
        "checking the dataset")
    plan = _plan(cfg, spec, run_dir, world, resume=resume, echo=echo)
    roi = tuple(int(r) for r in cfg.model.roi)
    if resume:
        check_resume_settings(load_config(run_dir / "config.yaml"), cfg, saved_world_size=1,
                              source="the run's config.yaml")
    if not explicit_roi:  # the planned crop: checked once it is known (an explicit one was checked above)
        _preflight(cfg, spec, roi)
    precision = _checked_precision(cfg, spec, roi, world, network_hook=network_hook, echo=echo)
    preprocess = PreprocessConfig.from_spec(spec, **cfg.data.preprocess)
    split = world.main_first(
        lambda: _prepare_run_folder(cfg, spec, plan, preprocess, run_dir, fingerprint, resume=resume,
                                    progress=progress, echo=echo),
        "writing the run folder",
    )
    echo(f"split: {len(split.train)} train, {len(split.val)} val, {len(split.test)} test cases -> {run_dir / 'split.json'}")

    mc = _build_model(cfg, spec, roi, resume=resume, trust_checkpoint=trust_checkpoint, network_hook=network_hook,
                      echo=echo)
    train_data, val_cases = _prepare_data(cfg, spec, split, preprocess, roi, world, progress=progress)
    extra = _unlabeled_data(cfg, run_dir, preprocess, roi, progress=progress, echo=echo)
    trainer = trainer_class(
        mc, cfg, run_dir, train_data, val_cases,
        classes=class_map(spec),
        output_mode=spec.output_mode,
        roi_size=roi,
        regions=spec.regions,
        world=world,
        progress=progress,
        checkpoint_extra={
            "name": cfg.model.name, "options": dict(cfg.model.options), "in_channels": spec.num_channels,
            "out_channels": spec.num_outputs, "roi": list(roi), "output_mode": spec.output_mode,
            "variant": cfg.method.variant,
        },
        val_sharded=True,
        precision=precision,
        **extra,
    )
    _echo_setup(trainer, cfg, roi, cpu_share, echo)
    trainer.cpu_share = cpu_share
    return trainer.fit(resume=resume, stop_after=stop_after, trust_checkpoint=trust_checkpoint)


def _load_spec(cfg: TrainConfig):
    """The dataset description of ``data.path``; writes its resolved path and preset into ``cfg``."""
    from medcontext.data import load_dataset

    if not cfg.data.path:
        raise ConfigError("no dataset: pass --data DATASET_DIR (or set data.path in the config)")
    from medcontext.data.unlabeled import POOL

    spec = load_dataset(cfg.data.path, preset=cfg.data.preset, group_by=cfg.data.group_by,
                        missing_labels_ok=POOL in unlabeled_sources(cfg))
    cfg.data.path = str(Path(cfg.data.path).resolve())
    cfg.data.preset = spec.preset
    return spec


def _preflight(cfg: TrainConfig, spec, roi: tuple[int, ...]) -> None:
    """Every setting checked before the dataset is read and before the run folder is written."""
    from medcontext.data import PreprocessConfig

    check_run_settings(
        cfg, in_channels=spec.num_channels, out_channels=spec.num_outputs, output_mode=spec.output_mode, roi=roi,
        preprocess=lambda: PreprocessConfig.from_spec(spec, **cfg.data.preprocess),
    )


def _plan(cfg: TrainConfig, spec, run_dir: Path, world: World, *, resume: bool, echo: Callable[[str], None]):
    """Plan the run (rank 0 first), print the plan and write its crop, spacing and batch into ``cfg``."""
    from medcontext.engine.planning.run_planner import apply_plan, plan_run, read_plan

    previous = read_plan(run_dir) if resume else None
    plan = world.main_first(lambda: plan_run(cfg, spec, previous=previous), "planning the run")
    echo(plan.format())
    apply_plan(cfg, plan)
    resolve_batch_scaling(cfg, world.world_size)
    return plan


def _check_data(spec, run_dir: Path, *, resume: bool, pool: bool, progress: bool, echo: Callable[[str], None]) -> dict:
    """Rank 0: every case through the input checks of ``data check`` (``pool``: the cases with a
    label file); a resumed run's dataset must be the one it started on (its fingerprint, else its
    split's cases). Returns the fingerprint."""
    from medcontext.data import DatasetError, Split
    from medcontext.data.input_checks import FINGERPRINT_FILE, check_training_data, compare_fingerprints, data_fingerprint

    echo(f"checking dataset {spec.name!r} ({len(spec.cases)} labelled cases) in {spec.root} ...")
    if spec.source_note:
        echo(f"note: {spec.source_note}")
    # a semi-supervised pool's cases have no label file: the cases with labels are what is checked
    checked = spec if not pool else dataclasses.replace(
        spec, cases=[c for c in spec.cases if c.label is not None and Path(c.label).is_file()])
    summary = check_training_data(checked, progress=progress)
    echo(f"dataset OK: {len(summary.cases)} cases, {spec.num_channels} channel(s), {spec.num_outputs} outputs ({spec.output_mode})")
    fingerprint = data_fingerprint(summary)
    saved = run_dir / FINGERPRINT_FILE
    if resume and saved.is_file():
        compare_fingerprints(json.loads(saved.read_text(encoding="utf-8")), fingerprint, source=str(saved))
    elif resume and (run_dir / "split.json").is_file():  # a run from before fingerprints: its cases must be there
        split = Split.load(run_dir / "split.json")
        missing = [cid for cid in (*split.train, *split.val, *split.test) if cid not in fingerprint["cases"]]
        if missing:
            raise DatasetError(f"the dataset {spec.root} lacks {len(missing)} case(s) of the run's split "
                               f"{run_dir / 'split.json'}: {', '.join(missing[:10])}; resume with the run's own dataset")
    return fingerprint


def _prepare_run_folder(cfg: TrainConfig, spec, plan, preprocess, run_dir: Path, fingerprint: dict, *, resume: bool,
                        progress: bool, echo: Callable[[str], None]):
    """Rank 0: draw the split (refusing all-empty training labels) and write the run folder's description."""
    from medcontext.data import Split
    from medcontext.data.input_checks import FINGERPRINT_FILE, check_training_labels
    from medcontext.engine.planning.run_planner import PLAN_FILE

    _remove_stale_temporaries(run_dir, echo)
    if resume:
        split = Split.load(run_dir / "split.json")
    else:
        if unlabeled_sources(cfg):  # semi-supervised: the split's cases and the unlabelled volumes checked
            split, unlabeled = prepare_split(cfg, spec, lambda: _draw_split(cfg, spec), progress=progress, echo=echo)
        else:
            split, unlabeled = _draw_split(cfg, spec), None
        check_training_labels(fingerprint, split.train)
        run_dir.mkdir(parents=True, exist_ok=True)
        split.save(run_dir / "split.json")
        if unlabeled is not None:
            save_unlabeled(run_dir, unlabeled)
    _write_json(run_dir / FINGERPRINT_FILE, fingerprint)
    save_config(cfg, run_dir / "config.yaml")
    _write_json(run_dir / "dataset.json", spec.to_dict())
    _write_json(run_dir / "preprocess.json", preprocess.to_dict())
    _write_json(run_dir / PLAN_FILE, plan.to_dict())
    return split


def _draw_split(cfg: TrainConfig, spec):
    """A new run's split of the (checked) dataset."""
    from medcontext.data import split_for_spec

    return split_for_spec(spec, **cfg.data.split_settings(cfg.train.seed))


def _build_model(cfg: TrainConfig, spec, roi: tuple[int, ...], *, resume: bool, trust_checkpoint: bool,
                 network_hook: Callable[[nn.Module], nn.Module] | None, echo: Callable[[str], None]) -> nn.Module:
    """Seed, build the student (initial weights unless resuming, then the hook) and wrap it as ``cfg.method`` says."""
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    network = build_network(cfg, spec.num_channels, spec.num_outputs, roi)
    if cfg.model.init_checkpoint and not resume:
        from medcontext.models.pretrained import load_pretrained

        report = load_pretrained(
            network, cfg.model.init_checkpoint, prefix_map=cfg.model.init_prefix_map or None,
            skip_mismatch=cfg.model.init_skip_mismatch, trust=trust_checkpoint,
        )
        echo(report.format())
    if network_hook is not None:
        network = network_hook(network)
    return build_medcontext(cfg, network, roi, spec.output_mode)


def _checked_precision(cfg: TrainConfig, spec, roi: tuple[int, ...], world: World, *,
                       network_hook: Callable[[nn.Module], nn.Module] | None, echo: Callable[[str], None]) -> Precision:
    """``train.precision`` resolved for this process's device and, when reduced, checked layer by
    layer against fp32 at the training input's shape, on a network built for the check alone
    (before any data is read; ``auto`` falls back to fp32, an explicit bf16/fp16 that is wrong
    here raises). All processes agree. The run's own network is built later, from its seed."""
    device = run_device(cfg.train.device, world)
    precision = resolve_precision(cfg.train.precision, device)
    if precision.dtype is None or not cfg.train.precision_check:
        return precision
    echo(f"checking {precision.name} against fp32, layer by layer, at the training input's shape "
         "(train.precision_check)")
    network = build_network(cfg, spec.num_channels, spec.num_outputs, roi)
    if network_hook is not None:
        network = network_hook(network)
    shape = (cfg.train.batch_size * cfg.data.num_samples, spec.num_channels, *roi)
    errors = reduced_precision_errors(network.to(device), shape, precision)
    del network
    if world.is_distributed:
        errors = [error for rank_errors in world.all_gather_object(errors) for error in rank_errors]
    return fall_back_if_wrong(precision, errors, requested=cfg.train.precision)


def _prepare_data(cfg: TrainConfig, spec, split, preprocess, roi: tuple[int, ...], world: World, *, progress: bool):
    """The training crops and this rank's share of the validation volumes."""
    from medcontext.data import make_train_dataset

    train_data = make_train_dataset(
        spec, split.train, preprocess, roi,
        num_samples=cfg.data.num_samples, pos=cfg.data.pos, neg=cfg.data.neg,
        cache_dir=cfg.data.cache_dir, seed=cfg.train.seed, progress=progress,
    )
    val_ids = split.val[: cfg.eval.max_val_cases] if cfg.eval.max_val_cases is not None else split.val
    # each rank loads only the cases it validates (rank r: cases r, r + N, ...)
    val_cases = _validation_cases(spec, val_ids[world.rank :: world.world_size], preprocess)
    return train_data, val_cases


def _unlabeled_data(cfg: TrainConfig, run_dir: Path, preprocess, roi: tuple[int, ...], *, progress: bool,
                    echo: Callable[[str], None]) -> dict:
    """``{"unlabeled_dataset": crops}`` for a run with unlabelled volumes (from ``unlabeled.json``), else ``{}``."""
    from medcontext.data.unlabeled import make_unlabeled_dataset

    chosen = read_unlabeled(run_dir)
    if chosen is None:
        return {}
    echo(f"{unlabeled_line(chosen)}; {unlabeled_batch_size(cfg)} unlabelled crop(s) per step")
    crops = make_unlabeled_dataset(chosen.cases, preprocess, roi, cache_dir=cfg.data.cache_dir, seed=cfg.train.seed,
                                   progress=progress)
    return {"unlabeled_dataset": crops}


def _echo_setup(trainer: Trainer, cfg: TrainConfig, roi: tuple[int, ...], cpu_share: CpuShare | None,
                echo: Callable[[str], None]) -> None:
    """Print what the run trains, where, at what scale and precision (threads and allocator on the CPU)."""
    echo(
        f"training {cfg.model.name} ({cfg.method.variant}) for {cfg.train.steps} steps on {trainer.device} "
        f"({trainer.precision.name}), crop {roi}, batch {cfg.train.batch_size}x{cfg.data.num_samples} crops"
    )
    echo(f"scale: {trainer.scaling_summary()}")
    echo(f"precision: {trainer.precision.describe()}")
    if trainer.precision.warning:
        echo(f"warning: {trainer.precision.warning}")
    if trainer.device.type == "cpu":
        from medcontext.engine.host.tcmalloc import allocator_line

        if cpu_share is not None:
            echo(f"threads: {cpu_share.threads} ({cpu_share.reason}; adjusted when other runs start or end)"
                 if not cpu_share.fixed else f"threads: {cpu_share.threads} ({cpu_share.reason})")
        echo(f"memory allocator: {allocator_line()}")


def load_run(run_dir: str | Path, data: str | Path | None = None) -> RunInfo:
    """Read a run folder's description; ``data`` re-locates a dataset that moved.

    Raises:
        ConfigError: the folder is not a run folder (names the missing file).
    """
    from medcontext.data import DatasetSpec, PreprocessConfig, Split, load_dataset

    run_dir = Path(run_dir)
    needed = ["config.yaml", "dataset.json", "preprocess.json", "split.json"]
    missing = [n for n in needed if not (run_dir / n).is_file()]
    if missing:
        raise ConfigError(
            f"{run_dir} is not a medcontext run folder (missing {', '.join(missing)}); "
            "pass the --out folder of `medcontext train`"
        )
    cfg = load_config(run_dir / "config.yaml")
    if data is not None:
        from medcontext.data.unlabeled import POOL

        spec = load_dataset(data, preset=cfg.data.preset, group_by=cfg.data.group_by,
                            missing_labels_ok=POOL in unlabeled_sources(cfg))
    else:
        spec = DatasetSpec.from_dict(json.loads((run_dir / "dataset.json").read_text()))
    preprocess = PreprocessConfig.from_dict(json.loads((run_dir / "preprocess.json").read_text()))
    split = Split.load(run_dir / "split.json")
    roi = tuple(int(r) for r in cfg.model.roi) if cfg.model.roi else resolve_roi(cfg, spec)
    return RunInfo(run_dir, cfg, spec, preprocess, split, roi)  # type: ignore[arg-type]


def checkpoint_path(run_dir: str | Path, checkpoint: str = "best") -> Path:
    """``best``/``last`` -> the file (``best`` falls back to ``last`` when the run had no
    validation); any other value is taken as a path."""
    run_dir = Path(run_dir)
    if checkpoint == "best":
        best = run_dir / "best.pt"
        return best if best.is_file() else run_dir / "last.pt"
    if checkpoint == "last":
        return run_dir / "last.pt"
    return Path(checkpoint)


def load_model(run: RunInfo, checkpoint: str = "best", device: torch.device | str = "cpu", *,
               trust: bool = False) -> tuple[nn.Module, dict]:
    """The run's MedContext module with the checkpoint's weights (strict), in eval mode.

    The checkpoint is read weights-only (a crafted file cannot run code) unless ``trust``.

    Returns:
        ``(mc, checkpoint_dict_without_tensors)`` where the dict holds ``step``, ``best``,
        ``model_info`` and ``path``.
    """
    path = checkpoint_path(run.run_dir, checkpoint)
    data = read_checkpoint(path, map_location="cpu", trust=trust)
    cfg = TrainConfig.from_dict(data["config"], source=f"{path} config")
    network = build_network(cfg, run.spec.num_channels, run.spec.num_outputs, run.roi)
    mc = build_medcontext(cfg, network, run.roi, run.spec.output_mode)
    load_model_state(mc, data["model"], source=str(path))
    mc.to(device).eval()
    info = {"path": path, "step": data.get("step"), "best": data.get("best"), "model_info": data.get("model_info")}
    return mc, info
