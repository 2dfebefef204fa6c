"""A run's settings as MONAI Bundle config: ``inference.json`` pieces and ``metadata.json``.

Everything here is plain JSON-ready data (``dict``/``list``), no files and no weights:

- :func:`network_definition`: the network as a ``_target_`` component. MONAI's own classes
  (``DynUNet`` for ``unet3d``, ``UNETR``, ``SwinUNETR``) where the registry builds one, so the
  bundle needs MONAI only; any other registered model (nnFormer, ...) through
  ``medcontext.models.create_model`` (the bundle then needs medcontext installed, or TorchScript).
- :func:`preprocessing_transforms`: the run's deterministic preprocessing, transform for
  transform as :func:`medcontext.data.transforms.preprocess_transforms` builds it.
- :func:`postprocessing_transforms`: logits -> label map (argmax, or sigmoid regions painted
  as :func:`medcontext.engine.inference.logits_to_labels` paints them), the run's largest-component
  post-processing (:class:`PostProcessingDecision`), back to each input's geometry
  (``Invertd``) and ``SaveImaged``.
- :func:`metadata`: ``metadata.json`` with the keys the bundle specification's schema requires.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from medcontext.data import PreprocessConfig
from medcontext.engine.inference import region_paint_order
from medcontext.evaluation.postprocessing import PostProcessing

__all__ = [
    "METADATA_SCHEMA_URL",
    "check_postprocessing",
    "network_definition",
    "needs_medcontext",
    "preprocessing_transforms",
    "postprocessing_transforms",
    "inference_config",
    "metadata",
]

# The MONAI model zoo's metadata schema (MONAI-extra-test-data release 0.8.1, the version the
# model zoo's bundles name); ``verify_metadata`` downloads it from here.
METADATA_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
_RAS_LABELS = [["L", "R"], ["P", "A"], ["I", "S"]]  # as medcontext.data.transforms reorients
_PURE_MONAI = ("unet3d", "unetr", "swin_unetr")


# ---------------------------------------------------------------------------------- network
def _jsonable(value: Any) -> Any:
    """Tuples to lists, recursively (what a JSON round trip gives)."""
    return json.loads(json.dumps(value))


def needs_medcontext(model_name: str) -> bool:
    """Whether the bundle's Python network definition imports medcontext (not a MONAI class)."""
    return model_name not in _PURE_MONAI


def network_definition(model_name: str, in_channels: int, out_channels: int, roi: Sequence[int],
                       options: Mapping[str, Any]) -> dict[str, Any]:
    """The run's network as a MONAI config component (without deep-supervision heads).

    Args:
        model_name: registry name (``cfg.model.name``).
        in_channels: image channels C.
        out_channels: output channels K.
        roi: the training crop (H, W, D) in voxels.
        options: ``cfg.model.options``.

    Returns:
        ``{"_target_": ..., **arguments}``; built by ``ConfigParser``, it takes the run's weights
        (less any deep-supervision heads) and gives the run's eval-mode logits.
    """
    from medcontext.models import get_model_spec

    options = dict(options)
    roi = [int(r) for r in roi]
    if model_name == "unet3d":
        from medcontext.models.monai_networks import UNET3D_SIZES

        kwargs = dict(UNET3D_SIZES[options.pop("size", "paper")])
        options.pop("deep_supervision", None)
        kwargs.update(options)
        levels = len(kwargs["filters"])
        kwargs.setdefault("kernel_size", [3] * levels)
        kwargs.setdefault("strides", [1] + [2] * (levels - 1))
        kwargs.setdefault("upsample_kernel_size", [2] * (levels - 1))
        kwargs.pop("deep_supr_num", None)
        definition = {"_target_": "monai.networks.nets.DynUNet", "spatial_dims": 3, "in_channels": in_channels,
                      "out_channels": out_channels, "deep_supervision": False, **kwargs}
    elif model_name == "unetr":
        from medcontext.models.monai_networks import UNETR_SIZES

        kwargs = dict(UNETR_SIZES[options.pop("size", "paper")])
        options.pop("deep_supervision", None)
        kwargs.update(options)
        definition = {"_target_": "monai.networks.nets.UNETR", "in_channels": in_channels,
                      "out_channels": out_channels, "img_size": roi, **kwargs}
    elif model_name == "swin_unetr":
        from medcontext.models.monai_networks import SWIN_UNETR_SIZES

        kwargs = dict(SWIN_UNETR_SIZES[options.pop("size", "paper")])
        options.pop("deep_supervision", None)
        kwargs.update(options)
        definition = {"_target_": "monai.networks.nets.SwinUNETR", "in_channels": in_channels,
                      "out_channels": out_channels, **kwargs}
    else:
        if get_model_spec(model_name).deep_supervision is True:
            options["deep_supervision"] = False  # the heads are training-only
        definition = {"_target_": "medcontext.models.create_model", "name": model_name, "in_channels": in_channels,
                      "out_channels": out_channels, "roi_size": roi, **options}
    return _jsonable(definition)


# ---------------------------------------------------------------------------- preprocessing
def preprocessing_transforms(cfg: PreprocessConfig) -> list[dict[str, Any]]:
    """The run's deterministic preprocessing of ``image`` as MONAI config components.

    The same steps, settings and order as :func:`medcontext.data.transforms.preprocess_transforms`
    with ``with_label=False``: load (nibabel), channel first, float32, reorient, resample
    (bilinear, border padding), CT window or z-score, foreground crop.
    """
    ts: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True, "reader": "NibabelReader"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": cfg.orientation, "labels": _RAS_LABELS},
    ]
    if cfg.spacing is not None:
        ts.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(cfg.spacing), "mode": "bilinear",
                   "padding_mode": "border"})
    # MONAI's default select_fn keeps voxels > 0, as medcontext's crop does
    crop = {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "allow_smaller": True}
    if cfg.normalization == "ct":
        assert cfg.ct_window is not None
        low, high = cfg.ct_window
        ts.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": low, "a_max": high,
                   "b_min": 0.0, "b_max": 1.0, "clip": True})
        if cfg.crop_foreground:
            ts.append(crop)
    else:
        if cfg.crop_foreground:
            ts.append(crop)
        if cfg.normalization in ("zscore", "zscore_nonzero"):
            ts.append({"_target_": "NormalizeIntensityd", "keys": "image",
                       "nonzero": cfg.normalization == "zscore_nonzero", "channel_wise": True})
    ts.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    return ts


# --------------------------------------------------------------------------- post-processing
def check_postprocessing(decision: PostProcessing, output_mode: str, labels: Sequence[int], num_regions: int,
                         source: str) -> None:
    """Refuse a decision that does not fit the run's outputs (another target, an unknown label).

    Args:
        decision: the run's ``postprocessing.json`` (:func:`medcontext.evaluation.postprocessing.read_postprocessing`).
        output_mode: ``softmax`` (labels are label values) or ``sigmoid`` (region channels).
        labels: the dataset's label values (incl. 0).
        num_regions: sigmoid outputs: the number of region channels.
        source: the file, for the message.

    Raises:
        ValueError: names the file, the field and the labels the run predicts.
    """
    target = "regions" if output_mode == "sigmoid" else "labels"
    if decision.target != target:
        raise ValueError(f"{source}: target is {decision.target!r} but the run's {output_mode} outputs need {target!r}")
    allowed = list(range(num_regions)) if target == "regions" else [v for v in sorted(labels) if v != 0]
    unknown = sorted(set(decision.largest_component_labels + decision.foreground_labels) - set(allowed))
    if unknown:
        kind = "region channels" if target == "regions" else "foreground label values"
        raise ValueError(f"{source}: labels {unknown} are not among the run's {kind} {allowed}")


def _keep_largest(labels: Sequence[int], *, independent: bool, onehot: bool) -> dict[str, Any]:
    return {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": list(labels),
            "is_onehot": onehot, "independent": independent}


def _paint_expression(regions: Mapping[str, Sequence[int]]) -> str:
    """A config expression painting 0/1 region channels (R, H, W, D) into label values (1, H, W, D),
    largest region first (:func:`medcontext.engine.inference.region_paint_order`)."""
    expression = "torch.zeros_like(x[0:1])"
    for channel, value in region_paint_order(regions):  # later ones painted over earlier ones
        expression = f"torch.where(x[{channel}:{channel + 1}] > 0, {float(value)}, {expression})"
    return f"$lambda x: {expression}"


def postprocessing_transforms(cfg: PreprocessConfig, decision: PostProcessing | None,
                              output_dtype: str) -> list[dict[str, Any]]:
    """Logits ``pred`` (K, H, W, D) -> a label map in each input's geometry, written as NIfTI.

    softmax: argmax (channel index, as ``medcontext predict`` writes it); sigmoid: logits > 0
    (sigmoid > 0.5) per region, then painted into label values. The largest-component decision
    is applied in the network's (preprocessed) space, as ``medcontext predict`` applies it,
    then ``Invertd`` undoes cropping, resampling and reorientation (nearest neighbour) and
    ``SaveImaged`` writes ``<output_dir>/<input name>_seg.nii.gz`` with the input's affine.
    """
    sigmoid = cfg.output_mode == "sigmoid"
    if sigmoid:
        ts: list[dict[str, Any]] = [{"_target_": "Lambdad", "keys": "pred", "func": "$lambda x: (x > 0).float()"}]
    else:
        ts = [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    if decision is not None:
        if decision.foreground_largest_component and decision.foreground_labels:
            ts.append(_keep_largest(decision.foreground_labels, independent=False, onehot=sigmoid))
        if decision.largest_component_labels:
            ts.append(_keep_largest(decision.largest_component_labels, independent=True, onehot=sigmoid))
    if sigmoid:
        assert cfg.regions is not None
        ts.append({"_target_": "Lambdad", "keys": "pred", "func": _paint_expression(cfg.regions)})
    ts += [
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": True, "to_tensor": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
         "output_ext": ".nii.gz", "output_dtype": f"$numpy.{output_dtype}", "resample": False,
         "separate_folder": False, "writer": "NibabelWriter", "print_log": False},
    ]
    return ts


# ------------------------------------------------------------------------------ inference.json
def inference_config(*, network_def: dict[str, Any] | str, preprocessing: list[dict[str, Any]],
                     postprocessing: list[dict[str, Any]], roi: Sequence[int], overlap: float, mode: str,
                     sw_batch_size: int, torchscript: bool) -> dict[str, Any]:
    """``configs/inference.json``: a folder of NIfTI files (``dataset_dir``) -> masks in ``output_dir``.

    ``torchscript``: the network is ``models/model.ts`` (weights inside, no Python class needed);
    otherwise ``network_def`` with ``models/model.pt`` loaded by ``CheckpointLoader``.
    """
    handlers: list[dict[str, Any]] = [] if torchscript else [
        {"_target_": "CheckpointLoader", "load_path": "$os.path.join(@bundle_root, 'models', 'model.pt')",
         "load_dict": {"model": "@network"}, "strict": True, "map_location": "@device"},
    ]
    handlers.append({"_target_": "StatsHandler", "iteration_log": False})
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "dataset_dir": "/workspace/data",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')) + "
                    "glob.glob(os.path.join(@dataset_dir, '*.nii')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(r) for r in roi],
                    "sw_batch_size": int(sw_batch_size), "overlap": float(overlap), "mode": mode},
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
        "handlers": handlers,
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


# ------------------------------------------------------------------------------ metadata.json
def metadata(*, version: str, description: str, task: str, authors: str, copyright_: str, data_source: str,
             modality: str, channel_names: Sequence[str], label_names: Mapping[int, str] | Sequence[str],
             output_mode: str, roi: Sequence[int], required_packages: Mapping[str, str],
             eval_metrics: Mapping[str, float], references: Sequence[str], intended_use: str) -> dict[str, Any]:
    """``configs/metadata.json``: every key the model zoo's schema requires, and the optional ones
    it describes (data source, classes, metrics, references, intended use).

    ``network_data_format`` describes one sliding window: ``image`` (C, *roi) float32 in, ``pred``
    (K, *roi) float32 logits out (softmax classes or sigmoid regions).
    """
    import monai
    import numpy
    import torch

    channel_def = {str(i): name for i, name in enumerate(label_names)} if not isinstance(label_names, Mapping) \
        else {str(k): v for k, v in label_names.items()}
    return {
        "schema": METADATA_SCHEMA_URL,
        "version": version,
        "changelog": {version: "exported by medcontext from a training run"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": dict(required_packages),
        "supported_apps": {},
        "name": task,
        "task": task,
        "description": description,
        "authors": authors,
        "copyright": copyright_,
        "data_source": data_source,
        "data_type": "nibabel",
        "image_classes": ", ".join(f"channel {i}: {name}" for i, name in enumerate(channel_names)),
        "label_classes": ", ".join(f"{k}: {v}" for k, v in channel_def.items()),
        "pred_classes": ", ".join(f"{k}: {v}" for k, v in channel_def.items()),
        "eval_metrics": dict(eval_metrics),
        "intended_use": intended_use,
        "references": list(references),
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield" if modality == "CT" else "magnitude", "modality": modality,
                "num_channels": len(channel_names), "spatial_shape": [int(r) for r in roi], "dtype": "float32",
                "value_range": [], "is_patch_data": True,
                "channel_def": {str(i): name for i, name in enumerate(channel_names)},
            }},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation" if output_mode == "softmax" else "multilabel",
                "num_channels": len(channel_def), "spatial_shape": [int(r) for r in roi], "dtype": "float32",
                "value_range": [], "is_patch_data": True, "channel_def": channel_def,
            }},
        },
    }
