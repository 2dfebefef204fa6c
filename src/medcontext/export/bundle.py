"""``medcontext export``: a trained run as a MONAI Bundle that runs with MONAI alone.

The bundle (``OUT/``)::

    configs/metadata.json    the bundle specification's keys (versions, task, network_data_format, ...)
    configs/inference.json   the run's preprocessing, sliding window, post-processing, outputs in
                             each input's geometry
    models/model.pt          the student's (or teacher's) weights, without deep-supervision heads
    models/model.ts          with ``torchscript``: the network as TorchScript (weights inside)
    docs/README.md           how the model was trained and how to run it
    LICENSE

Built with ``monai.bundle``: ``init_bundle`` lays out the folder, ``ckpt_export`` writes the
TorchScript model, ``verify_net_in_out`` checks the network against ``metadata.json``. Before
anything is written, the bundle's own network definition is built by MONAI's ``ConfigParser``,
given the run's weights and checked to give the run's logits. The bundle is assembled in a
temporary folder beside ``OUT`` and moved into place at the end, so ``OUT`` is complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from medcontext.engine.run_folder import RunInfo, load_model, load_run
from medcontext.evaluation.postprocessing import POSTPROCESSING_FILE, PostProcessing, read_postprocessing
from medcontext.export.bundle_config import (
    check_postprocessing,
    inference_config,
    metadata,
    needs_medcontext,
    network_definition,
    postprocessing_transforms,
    preprocessing_transforms,
)
from medcontext.method.losses import first_head

__all__ = ["BundleExportError", "BundleExport", "export_bundle", "bundle_network"]

_TS_TOLERANCE = 1e-5  # |TorchScript - eager| logits allowed at export (measured 0 on CPU fp32)


class BundleExportError(ValueError):
    """The run cannot be exported as asked (the message says why and what to do)."""


@dataclass
class BundleExport:
    """What :func:`export_bundle` wrote.

    Attributes:
        bundle_dir: the bundle folder.
        files: every file written, relative to ``bundle_dir``.
        torchscript: ``None``, or how ``models/model.ts`` was made (``scripted``, ``traced`` or
            ``traced, CPU only``).
        needs_medcontext: the Python network definition imports medcontext.
        postprocessing: the run's post-processing decision, if it has one.
    """

    bundle_dir: Path
    files: list[str]
    torchscript: str | None
    needs_medcontext: bool
    postprocessing: PostProcessing | None


def bundle_network(definition: dict[str, Any]) -> nn.Module:
    """The network a bundle's ``network_def`` builds, as MONAI's ``ConfigParser`` builds it."""
    from monai.bundle import ConfigParser

    return ConfigParser({"network_def": definition}).get_parsed_content("network_def")


def _transfer_weights(source: nn.Module, target: nn.Module, source_name: str) -> None:
    """Load ``source``'s weights into ``target`` (every key of ``target``, same shapes; extra
    source keys such as deep-supervision heads are left out)."""
    src = source.state_dict()
    dst = target.state_dict()
    missing = sorted(set(dst) - set(src))
    wrong = sorted(k for k in set(dst) & set(src) if tuple(dst[k].shape) != tuple(src[k].shape))
    if missing or wrong:
        raise BundleExportError(
            f"the bundle's network definition does not match the weights of {source_name}: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, different shapes {wrong[:5]}"
        )
    target.load_state_dict({k: src[k] for k in dst}, strict=True)


@torch.no_grad()
def _max_logit_difference(reference: nn.Module, other: nn.Module, shape: tuple[int, ...]) -> float:
    """max |reference - other| of eval-mode logits on one seeded random input of ``shape``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    reference.eval()
    other.eval()
    return float((first_head(reference(x)).float() - first_head(other(x)).float()).abs().max())


def _check_target(bundle_dir: Path) -> None:
    if bundle_dir.exists():
        raise BundleExportError(f"--bundle {bundle_dir} already exists; choose a new folder or remove it first")
    if not bundle_dir.parent.is_dir():
        raise BundleExportError(f"--bundle {bundle_dir}: its parent folder {bundle_dir.parent} does not exist")


def _label_names(run: RunInfo) -> dict[int, str]:
    """Output channel -> name: the labels (softmax) or the regions (sigmoid)."""
    spec = run.spec
    if spec.output_mode == "sigmoid":
        return dict(enumerate(spec.regions))
    return {i: spec.labels[v] for i, v in enumerate(sorted(spec.labels))}


def export_bundle(
    run_dir: str | Path,
    bundle_dir: str | Path,
    *,
    checkpoint: str = "best",
    use: str = "student",
    torchscript: bool = False,
    trust_checkpoint: bool = False,
    echo: Callable[[str], None] = print,
) -> BundleExport:
    """``medcontext export``: write the run as a MONAI Bundle into ``bundle_dir`` (a new folder).

    Args:
        run_dir: a run folder of ``medcontext train``.
        bundle_dir: the bundle folder to create (must not exist; its parent must).
        checkpoint: ``best`` (falls back to ``last``), ``last`` or a checkpoint path.
        use: ``student`` or ``teacher`` weights.
        torchscript: also write ``models/model.ts`` and let ``inference.json`` run it, so that the
            bundle needs neither medcontext nor the network's Python class.
        trust_checkpoint: read the checkpoint with full pickle (only for a file you trust).
        echo: where progress lines go.

    Raises:
        ConfigError: ``run_dir`` is not a run folder (names the missing files).
        CheckpointError: the checkpoint is missing or unreadable.
        BundleExportError: ``bundle_dir`` exists, the bundle's network does not reproduce the run's,
            or TorchScript export fails.
        ValueError: the run's ``postprocessing.json`` is invalid (names the file and field).
    """
    bundle_dir = Path(bundle_dir).absolute()
    _check_target(bundle_dir)
    run = load_run(run_dir)
    spec = run.spec
    labels = sorted(spec.labels)
    decision = read_postprocessing(run.run_dir)  # what `medcontext predict` applies
    if decision is not None:
        check_postprocessing(decision, spec.output_mode, labels, len(spec.regions or {}),
                             str(run.run_dir / POSTPROCESSING_FILE))
    mc, info = load_model(run, checkpoint, "cpu", trust=trust_checkpoint)
    source = mc.inference_network(use)
    definition = network_definition(run.cfg.model.name, spec.num_channels, spec.num_outputs, run.roi,
                                    run.cfg.model.options)
    network = bundle_network(definition)
    source_name = f"{info['path']} ({use})"
    _transfer_weights(source, network, source_name)
    window = (1, spec.num_channels, *run.roi)
    difference = _max_logit_difference(source, network, window)
    if difference > 0.0:
        raise BundleExportError(
            f"the bundle's network definition {definition['_target_']} does not reproduce {source_name}: "
            f"logits differ by up to {difference:.3g} on a test window"
        )
    echo(f"exporting {run.cfg.model.name} ({use} weights of {info['path']}, step {info['step']}) to {bundle_dir}")
    temporary = Path(tempfile.mkdtemp(prefix=f".{bundle_dir.name}.", suffix=".partial", dir=bundle_dir.parent))
    try:
        layout = temporary / "bundle"
        ts_mode = _write_bundle(layout, run, network, definition, decision, info, use, torchscript, echo)
        os.replace(layout, bundle_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    files = sorted(str(p.relative_to(bundle_dir)) for p in bundle_dir.rglob("*") if p.is_file())
    echo(f"bundle written: {bundle_dir} ({', '.join(files)})")
    return BundleExport(bundle_dir, files, ts_mode, needs_medcontext(run.cfg.model.name) and not ts_mode, decision)


def _write_bundle(layout: Path, run: RunInfo, network: nn.Module, definition: dict[str, Any],
                  decision: PostProcessing | None, info: dict, use: str, torchscript: bool,
                  echo: Callable[[str], None]) -> str | None:
    """Lay out the bundle in ``layout`` (init_bundle, then TorchScript and the checks); returns the
    TorchScript mode or ``None``."""
    from monai.bundle import init_bundle

    spec, cfg = run.spec, run.cfg
    output_dtype = "uint8" if max(spec.labels) < 256 else "int16"
    ts_definition = "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location=@device)"
    inference = inference_config(
        network_def=ts_definition if torchscript else definition,
        preprocessing=preprocessing_transforms(run.preprocess),
        postprocessing=postprocessing_transforms(run.preprocess, decision, output_dtype),
        roi=run.roi, overlap=cfg.eval.overlap, mode=cfg.eval.mode, sw_batch_size=cfg.eval.sw_batch_size,
        torchscript=torchscript,
    )
    meta = _metadata(run, info, use, torchscript)
    init_bundle(layout, network=network, metadata_str=meta, inference_str=inference)
    configs = layout / "configs"
    ts_mode = None
    if torchscript:
        ts_mode = _torchscript(layout, run, network, definition, inference)
        echo(f"models/model.ts: TorchScript ({ts_mode}), logits checked against the eager network")
    _quiet_monai(_verify_net_in_out, layout)
    readme = _bundle_readme(run, info, use, decision, ts_mode, definition)
    (layout / "docs" / "README.md").write_text(readme)
    (layout / "LICENSE").write_text(_license_text(run))
    return ts_mode


def _quiet_monai(function: Callable, *args: Any) -> Any:
    """``function(*args)`` with ``monai.bundle``'s INFO logging (argument summaries) silenced."""
    import logging

    loggers = [logging.getLogger(name) for name in ("monai.bundle", "monai.bundle.scripts")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        return function(*args)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _verify_net_in_out(layout: Path) -> None:
    """What ``python -m monai.bundle verify_net_in_out network_def ...`` checks: the network of
    ``inference.json`` takes ``metadata.json``'s input and gives its output channels and dtype."""
    from monai.bundle import verify_net_in_out

    configs = layout / "configs"
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), device="cpu", bundle_root=str(layout))


def _export_torchscript(layout: Path, network: nn.Module, definition: dict[str, Any], run: RunInfo,
                        modes: tuple[str, ...]) -> tuple[str, bool]:
    """``models/model.ts`` through ``monai.bundle.ckpt_export``, trying ``modes`` (``script``,
    ``trace``) in order; checked against the eager network on a window and on a batch of
    ``eval.sw_batch_size`` windows.

    Returns:
        ``(mode, cpu_only)``: the mode that worked, and whether the TorchScript code creates
        tensors on a fixed CPU device (tracing records ``device=x.device`` as a constant), so that
        it runs on the CPU only.
    """
    import warnings

    from monai.bundle import ckpt_export

    configs = layout / "configs"
    window = [1, run.spec.num_channels, *run.roi]
    errors = []
    for mode in modes:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer warnings
                ckpt_export(
                    net_id="network_def", filepath=str(layout / "models" / "model.ts"),
                    ckpt_file=str(layout / "models" / "model.pt"), meta_file=str(configs / "metadata.json"),
                    config_file=str(configs / "inference.json"), use_trace=mode == "trace", input_shape=window,
                    bundle_root=str(layout), network_def=definition,
                )
                scripted = torch.jit.load(str(layout / "models" / "model.ts"), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - scripting fails for many networks; then trace
            errors.append(f"{mode}: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
            continue
        batch = [max(1, run.cfg.eval.sw_batch_size), *window[1:]]
        difference = max(_max_logit_difference(network, scripted, tuple(window)),
                         _max_logit_difference(network, scripted, tuple(batch)))
        if difference <= _TS_TOLERANCE:
            codes = [module.code for _, module in scripted.named_modules() if hasattr(module, "code")]
            return mode, any('torch.device("cpu")' in code for code in codes)
        errors.append(f"{mode}: logits differ from the eager network by up to {difference:.3g}")
    raise BundleExportError(f"TorchScript export of {run.cfg.model.name} failed ({'; '.join(errors)}); "
                            "export without --torchscript")


def _torchscript(layout: Path, run: RunInfo, network: nn.Module, definition: dict[str, Any],
                 inference: dict[str, Any]) -> str:
    """Write ``models/model.ts``; returns how (``scripted``, ``traced``, ``traced, CPU only``).

    MONAI's networks are written to script (any batch and window size); other networks are
    traced. A TorchScript network that creates tensors on the CPU gets ``device: cpu`` in
    ``inference.json``; the config is settled before the export that embeds it in ``model.ts``
    (traced networks are first exported assuming CPU only, as tracing records ``x.device``).
    """
    modes = ("script", "trace") if not needs_medcontext(run.cfg.model.name) else ("trace",)
    auto_device = inference["device"]
    assumed_cpu = modes == ("trace",)

    def set_device(cpu_only: bool) -> None:
        inference["device"] = "$torch.device('cpu')" if cpu_only else auto_device
        (layout / "configs" / "inference.json").write_text(json.dumps(inference, indent=4))

    set_device(assumed_cpu)
    mode, cpu_only = _quiet_monai(_export_torchscript, layout, network, definition, run, modes)
    if cpu_only != assumed_cpu:
        set_device(cpu_only)
        _quiet_monai(_export_torchscript, layout, network, definition, run, (mode,))
    return {"script": "scripted", "trace": "traced"}[mode] + (", CPU only" if cpu_only else "")


def _metadata(run: RunInfo, info: dict, use: str, torchscript: bool) -> dict[str, Any]:
    import medcontext

    spec, cfg = run.spec, run.cfg
    required = {"nibabel": _version("nibabel"), "pytorch-ignite": _version("ignite")}
    if needs_medcontext(cfg.model.name) and not torchscript:
        required["medcontext"] = medcontext.__version__
    task = f"{spec.name} segmentation ({cfg.model.name}, MedContext {cfg.method.variant})"
    description = (
        f"{cfg.model.name} trained with medcontext {medcontext.__version__} ({cfg.method.variant} variant) on "
        f"{len(run.split.train)} training case(s) of {spec.name} for {cfg.train.steps} steps; {use} weights of "
        f"{Path(info['path']).name} (step {info['step']}). Input: {spec.num_channels}-channel {spec.modality} "
        f"NIfTI volumes; output: a label map in the input's geometry."
    )
    best = _best_dice(info)
    return metadata(
        version="0.1.0", description=description, task=task, authors="exported by medcontext from a training run",
        copyright_="the owner of the training run", data_source=f"{spec.name} ({spec.layout} layout)",
        modality=spec.modality, channel_names=spec.channel_names, label_names=_label_names(run),
        output_mode=spec.output_mode, roi=run.roi, required_packages=required,
        eval_metrics={"validation_mean_dice": best} if best is not None else {},
        references=["MedContext: learning contextual cues for volumetric medical segmentation (the method "
                    "this model was trained with)"],
        intended_use="Research only; not for clinical use.",
    )


def _best_dice(info: dict) -> float | None:
    """The checkpoint's best validation mean Dice (``None`` for a run without validation)."""
    best = info.get("best")
    value = best.get("metric") if isinstance(best, dict) else best
    return float(value) if isinstance(value, (int, float)) else None


def _version(module: str) -> str:
    import importlib

    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return "any"


def _license_text(run: RunInfo) -> str:
    return (
        "The bundle's configuration files were generated by medcontext (Apache License 2.0).\n"
        f"The weights in models/ were trained on the dataset {run.spec.name!r}; whoever shares them must make\n"
        "sure that the dataset's own terms (many medical datasets are for research only) allow it, and\n"
        "pass those terms on with the bundle.\n"
    )


def _bundle_readme(run: RunInfo, info: dict, use: str, decision: PostProcessing | None,
                   ts_mode: str | None, definition: dict[str, Any]) -> str:
    """docs/README.md: training, inputs/outputs, how to run, what the network needs."""
    import medcontext

    spec, cfg, pre = run.spec, run.cfg, run.preprocess
    if ts_mode:
        network_note = (f"`inference.json` runs `models/model.ts` (TorchScript, {ts_mode}): it needs MONAI and "
                        "PyTorch only. `models/model.pt` holds the same weights for the Python class "
                        f"`{definition['_target_']}`.")
        if "CPU only" in ts_mode:
            network_note += (" The traced network creates some tensors on the CPU, so `inference.json` runs it on "
                             "the CPU (`device`); to run on a GPU, export without `--torchscript` and install "
                             "medcontext.")
    elif needs_medcontext(cfg.model.name):
        network_note = (f"The network is built by `{definition['_target_']}`: install "
                        f"`medcontext=={medcontext.__version__}` (`pip install medcontext`) next to MONAI, or "
                        "export the run again with `medcontext export --torchscript` to need MONAI alone.")
    else:
        network_note = f"The network is MONAI's `{definition['_target_']}`: the bundle needs MONAI alone."
    labels = ", ".join(f"{k} {v}" for k, v in _label_names(run).items())
    post = decision.describe() if decision is not None else "none (the run has no postprocessing.json)"
    dice = _best_dice(info)
    return f"""# {spec.name} segmentation: {cfg.model.name} trained with MedContext

Exported by `medcontext export` (medcontext {medcontext.__version__}) from the run folder `{run.run_dir}`.

## Training
- network: `{cfg.model.name}` with options `{json.dumps(cfg.model.options)}`, crop {list(run.roi)}
- method: MedContext variant `{cfg.method.variant}`, {cfg.train.steps} steps, seed {cfg.train.seed}
- data: {len(run.split.train)} training and {len(run.split.val)} validation case(s) of `{spec.name}`
- weights: the {use} of `{Path(info['path']).name}` (step {info['step']}; validation mean Dice
  {f"{dice:.4f}" if dice is not None else "not measured (no validation cases)"})

## Inputs and outputs
- input: a folder of NIfTI files (`.nii.gz`, `.nii`), one per case, {spec.modality}, {spec.num_channels}
  channel(s) ({', '.join(spec.channel_names)}; several channels as one 4D file, channels last)
- preprocessing: orientation {pre.orientation}, spacing {list(pre.spacing) if pre.spacing else 'each file own'},
  normalisation {pre.normalization}{f' (window {list(pre.ct_window)})' if pre.ct_window else ''},
  foreground crop {'on' if pre.crop_foreground else 'off'}
- sliding window {list(run.roi)}, overlap {cfg.eval.overlap}, {cfg.eval.mode} blending
- output channels: {labels} ({spec.output_mode}); post-processing: {post}
- output: `<output_dir>/<input name>_seg.nii.gz`, a label map with the input's shape and affine

## Run
```bash
python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
    --bundle_root . --dataset_dir /path/to/nifti_folder --output_dir /path/to/masks
```
(from this folder; needs `pip install monai nibabel pytorch-ignite fire`). {network_note}

Research only; not for clinical use.
"""
