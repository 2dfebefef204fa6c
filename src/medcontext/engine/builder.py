"""Building a run's pieces from its config: the network, the MedContext wrapper, the class map.

Every path of the engine that needs a network builds it here: training
(:func:`~medcontext.engine.run_folder.train`), the plan (:mod:`~medcontext.engine.planning.run_planner`),
the settings check before any data is read (:mod:`~medcontext.engine.preflight`) and prediction
(:func:`~medcontext.engine.run_folder.load_model`). The network comes from the model registry
(``model.*``), the wrapper from ``method.*`` (with the defaults of
:data:`medcontext.method.settings.DEFAULTS`), the crop from ``model.roi`` or the dataset preset.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from medcontext.engine.config import ConfigError, TrainConfig

__all__ = ["class_map", "resolve_roi", "build_network", "build_medcontext", "network_factory"]


def class_map(spec) -> dict[str, tuple[int, ...]]:
    """Evaluated classes of a dataset as ``name -> label values``.

    Softmax datasets: one label value per class (Synapse: 8 of 13 organs). Sigmoid region
    datasets: each evaluated region unites its label values (BraTS WT/TC/ET).
    """
    names = list(spec.eval_class_names)
    if spec.output_mode == "sigmoid":
        region_names = list(spec.regions)
        return {names[i]: tuple(spec.regions[region_names[c]]) for i, c in enumerate(spec.eval_classes)}
    return {names[i]: (int(c),) for i, c in enumerate(spec.eval_classes)}


def resolve_roi(cfg: TrainConfig, spec) -> tuple[int, int, int]:
    """The training crop: ``model.roi``, else the dataset preset's default crop."""
    roi = cfg.model.roi if cfg.model.roi is not None else spec.default_roi
    if roi is None:
        raise ConfigError(
            f"no training crop for dataset {spec.name!r} (its preset {spec.preset!r} has no default): "
            "pass --roi X Y Z or set model.roi, e.g. --roi 32 48 32"
        )
    return tuple(int(r) for r in roi)  # type: ignore[return-value]


def build_network(cfg: TrainConfig, in_channels: int, out_channels: int, roi: Sequence[int]) -> nn.Module:
    """The student network from the model registry."""
    from medcontext.models import create_model

    return create_model(cfg.model.name, in_channels, out_channels, tuple(roi), **cfg.model.options)


def build_medcontext(cfg: TrainConfig, network: nn.Module, roi: Sequence[int], output_mode: str) -> nn.Module:
    """The MedContext wrapper configured by ``cfg.method`` (``variant: baseline`` included)."""
    from medcontext.method import MedContext

    m = cfg.method
    return MedContext(
        network,
        variant=m.variant,
        mask_ratio=m.mask_ratio,
        beta=m.beta,
        momentum=m.momentum,
        momentum_horizon=m.momentum_horizon,
        total_steps=cfg.train.steps,
        mask_space=m.mask_space,
        depth_axis=m.depth_axis,
        mask_cell=m.mask_cell,
        roi_size=tuple(roi),
        mask_mode=m.mask_mode,
        output_mode=output_mode,
        student_passes=m.student_passes,
        seed=cfg.train.seed,
    )


def network_factory(cfg: TrainConfig, spec, roi: Sequence[int] | None = None) -> Callable[..., nn.Module]:
    """``build(crop=roi) -> network``: :func:`build_network` for the dataset ``spec``'s channels.

    The planner calls it with each crop it tries; preflight with the run's crop.
    """
    def build(crop: Sequence[int] | None = None) -> nn.Module:
        chosen = crop if crop is not None else roi
        if chosen is None:
            raise ValueError("network_factory: no crop given and none bound")
        return build_network(cfg, spec.num_channels, spec.num_outputs, chosen)

    return build
