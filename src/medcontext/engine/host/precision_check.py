"""Does this machine compute the network's layers right in reduced precision? Checked, not assumed.

Fast bf16 on a CPU comes from oneDNN's kernels, and those can be wrong for a particular layer
and shape: PyTorch 2.13's bf16 ``Conv3d`` on an Intel Xeon with AMX computed UNETR's 16^3 patch
embedding on the ACDC crop off by 73% of its output range, and now and then as NaN, while fp32
was right (``medcontext.models.patchify`` works around that one; BENCHMARKS.md). A network
trains on through such an error: nothing fails, the result is just worse.

:func:`reduced_precision_errors` runs the network once in fp32 at the training crop's shape and,
for every convolution and linear layer, recomputes that layer alone from the same input under
the run's autocast, forward and backward, and compares: the output, the gradient of the input
and the gradient of the weight, each as the largest absolute difference in units of the fp32
tensor's range. Correct bf16 kernels stay below 1% (bf16 keeps 8 significant bits); the
wrong ones measured were at 68-112%. The default tolerance, 5%, lies between.
:func:`fall_back_if_wrong` turns the answer into the precision to train in: ``auto`` falls back
to fp32, an explicit bf16/fp16 is an error (``medcontext train`` checks before loading data;
``train.precision_check=false`` skips it).

The check runs in eval mode (batch-norm statistics are not updated) under a private random
generator (the global random state is untouched), one layer at a time (memory of one layer's
tensors on top of an inference pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from medcontext.engine.host.precision import Precision

__all__ = ["LayerPrecisionError", "reduced_precision_errors", "fall_back_if_wrong", "DEFAULT_TOLERANCE", "CHECKED_LAYERS"]

#: largest accepted difference, as a share of the fp32 tensor's range (see the module docstring)
DEFAULT_TOLERANCE = 0.05

#: the layer types the check compares (modules with a weight that autocast runs in reduced precision)
CHECKED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                  nn.Linear)


@dataclass(frozen=True)
class LayerPrecisionError:
    """One layer whose reduced-precision result differs from fp32 beyond the tolerance.

    Attributes:
        layer: the module's qualified name in the network, e.g. ``vit.patch_embedding.patch_embeddings``.
        description: the module's ``repr``, e.g. ``Conv3d(1, 192, kernel_size=(16, 16, 16), ...)``.
        input_shape: the shape the layer saw, ``(B, C, ...)``.
        quantity: ``output``, ``input gradient`` or ``weight gradient``.
        error: largest absolute difference / range of the fp32 tensor; ``inf`` for a
            non-finite value where fp32 is finite.
    """

    layer: str
    description: str
    input_shape: tuple[int, ...]
    quantity: str
    error: float

    def describe(self) -> str:
        """One line, e.g. ``vit.patch_embedding.patch_embeddings (Conv3d(...)) on (2, 1, 80, 80, 16): output off by 73%``."""
        size = "non-finite" if self.error == float("inf") else f"off by {self.error:.0%} of its range"
        return f"{self.layer} ({self.description}) on {self.input_shape}: {self.quantity} {size}"


def _relative_error(reduced: torch.Tensor, reference: torch.Tensor) -> float:
    """max |reduced - reference| / range(reference); ``inf`` if ``reduced`` is not finite where
    ``reference`` is; 0 for two all-zero tensors."""
    reduced, reference = reduced.detach().float(), reference.detach().float()
    if not torch.isfinite(reduced).all() and torch.isfinite(reference).all():
        return float("inf")
    difference = float((reduced - reference).abs().max()) if reference.numel() else 0.0
    scale = float(reference.max() - reference.min()) if reference.numel() else 0.0
    scale = max(scale, float(reference.abs().max()) if reference.numel() else 0.0)
    if scale == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return difference / scale


def _layer_results(module: nn.Module, x: torch.Tensor, output_grad: torch.Tensor, autocast) -> list[torch.Tensor]:
    """Output, input gradient and weight gradient of ``module`` alone (its ``forward``, no hooks)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with autocast:
            out = module.forward(x)
        grads = torch.autograd.grad(out.float(), [x, module.weight], grad_outputs=output_grad, allow_unused=True)
    return [out] + [g if g is not None else torch.zeros(()) for g in grads]


def reduced_precision_errors(
    network: nn.Module,
    input_shape: Sequence[int],
    precision: Precision,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> list[LayerPrecisionError]:
    """The layers of ``network`` that ``precision``'s autocast computes wrongly here.

    Args:
        network: the segmentation network, on ``precision.device``; left in the mode it was in.
        input_shape: a training input ``(B, C, H, W, D)`` (the crop shape matters: the wrong
            kernels measured were wrong for some shapes only).
        precision: the run's precision; fp32 has nothing to check and returns ``[]``.
        tolerance: largest accepted difference, a share of the fp32 tensor's range.
        seed: seeds the private generator of the random input and output gradients.

    Returns:
        One :class:`LayerPrecisionError` per wrong quantity, in the order the layers ran
        (empty when every layer is right).
    """
    if precision.dtype is None:
        return []
    device = precision.device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    names = {module: name for name, module in network.named_modules()}
    errors: list[LayerPrecisionError] = []

    def check(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if getattr(module, "weight", None) is None or not inputs or not torch.is_tensor(inputs[0]):
            return
        x = inputs[0]
        output_grad = torch.randn(output.shape, generator=generator).to(device)
        reference = _layer_results(module, x, output_grad, torch.autocast(device.type, enabled=False))
        reduced = _layer_results(module, x, output_grad, precision.autocast())
        for quantity, low, high in zip(("output", "input gradient", "weight gradient"), reduced, reference):
            error = _relative_error(low, high)
            if error > tolerance:
                errors.append(LayerPrecisionError(names.get(module, type(module).__name__), repr(module),
                                                  tuple(x.shape), quantity, error))

    layers = [m for m in network.modules() if isinstance(m, CHECKED_LAYERS)]
    handles = [m.register_forward_hook(check) for m in layers]
    was_training = network.training
    try:
        network.eval()
        images = torch.randn(tuple(input_shape), generator=generator).to(device)
        with torch.no_grad():
            network(images)
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return errors


def fall_back_if_wrong(precision: Precision, errors: Sequence[LayerPrecisionError], *, requested: str) -> Precision:
    """The precision to train in, given the wrong layers :func:`reduced_precision_errors` found.

    Args:
        precision: the resolved precision that was checked.
        errors: its wrong layers (from every process of a multi-process run).
        requested: the ``train.precision`` setting: ``auto`` falls back to fp32, an explicit
            reduced precision is an error.

    Returns:
        ``precision`` when ``errors`` is empty, else fp32 whose ``reason`` and ``warning`` name
        the worst layer.

    Raises:
        ValueError: ``requested`` is an explicit ``bf16``/``fp16`` and a layer is wrong.
    """
    if not errors:
        return precision
    worst = max(errors, key=lambda e: e.error)
    found = (f"{len(errors)} layer result(s) differ from fp32 by more than the tolerance here, "
             f"worst {worst.describe()}")
    if requested != "auto":
        raise ValueError(
            f"train.precision={requested}: PyTorch's {precision.name} kernels compute this network wrongly on this "
            f"machine: {found}. Use train.precision=auto (it falls back to fp32) or fp32"
        )
    return Precision(
        "fp32", precision.device, reason=f"auto: {precision.name} was checked and is wrong here, so fp32",
        warning=f"{precision.name} computes this network wrongly here ({found}); training in fp32 instead",
    )
