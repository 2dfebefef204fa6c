"""Planning a training run from a dataset fingerprint: crop, batch, memory, time (and the spacing).

The fingerprint and the spacing rule live in :mod:`medcontext.data.fingerprint`; this module
plans the rest on top of them.

nnU-Net-style: what the configuration and the dataset preset leave open is derived from the
dataset's fingerprint (every labelled case's shape and spacing, read from the image headers),
the model's crop rules (:func:`~medcontext.models.registry.roi_requirements`) and a memory
budget for the device. Explicit settings always win, then the preset's, then the plan's:

- **spacing**: the preset's or ``data.preprocess.spacing``; else no resampling when every case
  shares one spacing; else the median spacing, with nnU-Net's rule for thick slices (a slice
  axis more than 3x coarser than the others, with more than 3x fewer voxels, gets the 10th
  percentile of its spacings instead of the median);
- **crop** (``model.roi``): the preset's default or the setting; else the median shape after
  resampling rounded up to the model's size multiple (and the mask cell), at most
  :data:`MAX_CROP_VOXELS`, shrunk along the axis largest relative to the median shape until
  the estimated training memory fits the budget;
- **batch**: ``train.batch_size x data.num_samples`` crops as configured (nnU-Net's 3D batch
  of 2 by default); the crop shrinks to fit it, and a batch that does not fit the budget even
  at the smallest crop is refused;
- **mask cell**: what the MedContext wrapper will use for that crop (docs/method.md), reported, with
  the crop kept a multiple of it.

Memory is estimated without allocating: the network runs once on PyTorch's ``meta`` device and
the tensors autograd saves for the backward pass are summed (fp32), then multiplied by the
passes of the variant (MedContext keeps two student graphs), plus weights, gradients, optimizer
state and the teacher. Time per step is measured: one forward and backward of the real network
on a single crop, scaled by the crops per step and the variant's cost (docs/method.md: 7 units per
MedContext step, 3 per baseline step; :attr:`medcontext.method.settings.Variant.cost_units`).

Data enters as a :class:`~medcontext.data.DatasetSpec` and settings; it leaves as a
:class:`TrainingPlan` (printable with reasons, saved as ``plan.json`` in the run folder).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from medcontext.data.fingerprint import (
    ANISOTROPY_THRESHOLD,
    DatasetFingerprint,
    Spacing,
    format_axes as _fmt,
    plan_spacing,
    thick_slice_axis,
)
from medcontext.method.settings import get_variant

__all__ = [
    "DatasetFingerprint",
    "MemoryEstimate",
    "PlanError",
    "TrainingPlan",
    "MAX_CROP_VOXELS",
    "ANISOTROPY_THRESHOLD",
    "plan_spacing",
    "thick_slice_axis",
    "estimate_memory",
    "build_on_meta",
    "measure_step_time",
    "measure_window_time",
    "sliding_window_count",
    "ValidationEstimate",
    "validation_estimate",
    "validation_runs",
    "memory_budget",
    "plan_training",
    "add_time_estimate",
    "plan_validation",
    "set_steps",
    "variant_cost",
    "PlannedValue",
]

Triple = tuple[int, int, int]

MAX_CROP_VOXELS = 128**3
"""Largest planned crop (voxels): nnU-Net's usual 3D full-resolution crop volume."""

#: optimizer state tensors per parameter
_OPTIMIZER_STATES = {"adamw": 2, "sgd": 1}


class PlanError(ValueError):
    """The run does not fit the device (the message gives the numbers and the fixes)."""


def variant_cost(variant: str) -> tuple[int, int, bool]:
    """``(forward units per step, student graphs alive, has a teacher)`` of a method variant.

    Read from :data:`medcontext.method.settings.VARIANTS` (the cost model of docs/method.md:
    a forward 1 unit, a backward 2).
    """
    settings = get_variant(variant)
    return settings.cost_units, settings.student_passes, settings.teacher


# ---------------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one training step, in bytes.

    Attributes:
        parameters: number of student parameters.
        weights_bytes: student weights, gradients, optimizer state, teacher (fp32).
        activations_bytes: tensors saved for the backward pass, all student graphs of a step.
        total_bytes: their sum.
    """

    parameters: int
    weights_bytes: int
    activations_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activations_bytes


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """The network on the meta device (no memory): built there, or built on the CPU and moved."""
    try:
        with torch.device("meta"):
            return build()
    except (RuntimeError, NotImplementedError):  # e.g. .item() on a meta tensor at construction
        return build().to("meta")


def _saved_bytes(network: nn.Module, in_channels: int, roi: Sequence[int], crops: int) -> int:
    """Bytes autograd saves for the backward pass of one training forward (fp32, meta device)."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    x = torch.zeros(crops, in_channels, *roi, device="meta")
    network.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = network(x)
    heads = out if isinstance(out, (list, tuple)) else [out]
    return total + sum(h.numel() * h.element_size() for h in heads)


def estimate_memory(
    build: Callable[[Sequence[int]], nn.Module],
    in_channels: int,
    roi: Sequence[int],
    crops: int,
    *,
    variant: str = "medcontext",
    optimizer: str = "adamw",
) -> MemoryEstimate:
    """Estimated peak training memory of ``crops`` crops of ``roi`` voxels per step.

    Args:
        build: ``roi -> network`` (the student; built on the meta device, no memory used).
        in_channels: image channels.
        roi: crop ``(H, W, D)``.
        crops: crops per optimizer step on this device.
        variant: the method variant (how many student graphs, whether a teacher exists).
        optimizer: ``adamw`` (2 state tensors per parameter) or ``sgd`` (1).
    """
    _units, graphs, teacher = variant_cost(variant)
    network = build_on_meta(lambda: build(tuple(roi)))
    parameters = sum(p.numel() for p in network.parameters())
    copies = 2 + _OPTIMIZER_STATES.get(optimizer, 2) + (1 if teacher else 0)  # weights, grads, states, teacher
    activations = graphs * _saved_bytes(network, in_channels, roi, crops)
    return MemoryEstimate(parameters, 4 * parameters * copies, activations)


def memory_budget(device: torch.device, fraction: float | None = None) -> tuple[int, str]:
    """Memory a run may plan for on ``device``, and where the number comes from.

    CUDA: ``fraction`` (default 0.9) of the GPU's total memory. CPU: ``fraction`` (default
    0.8) of the memory available now (``MemAvailable``, or the cgroup limit when lower).
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        share = 0.9 if fraction is None else fraction
        return int(total * share), f"{share:.0%} of {total / 2**30:.1f} GiB on {torch.cuda.get_device_name(index)}"
    available, source = _cpu_available_bytes()
    share = 0.8 if fraction is None else fraction
    return int(available * share), f"{share:.0%} of {available / 2**30:.1f} GiB {source}"


def _cpu_available_bytes() -> tuple[int, str]:
    available, source = None, "available CPU memory"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit() and (available is None or int(limit) < available):
            available, source = int(limit), "cgroup memory limit"
    except OSError:
        pass
    if available is None:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        available, source = int(pages * page_size), "physical CPU memory"
    return available, source


# ---------------------------------------------------------------------------------- time
def _fastest(run: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` timed calls of ``run`` after one untimed warm-up
    call (a CUDA device is synchronised around each)."""

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once()
    return min(once() for _ in range(max(1, repeats)))


def _autocast_or_off(autocast: Callable[[], ContextManager] | None, device: torch.device) -> ContextManager:
    return autocast() if autocast is not None else torch.autocast(device.type, enabled=False)


def measure_step_time(
    network: nn.Module,
    in_channels: int,
    roi: Sequence[int],
    device: torch.device,
    *,
    crops: int = 1,
    repeats: int = 2,
    autocast: Callable[[], ContextManager] | None = None,
) -> float:
    """Seconds of one forward and backward of ``network`` on a batch of ``crops`` crops.

    One untimed warm-up pass, then the fastest of ``repeats`` timed passes; the network's
    gradients are cleared after.
    """
    network = network.to(device).train()
    x = torch.randn(crops, in_channels, *roi, device=device)

    def forward_backward() -> None:
        with _autocast_or_off(autocast, device):
            out = network(x)
        heads = out if isinstance(out, (list, tuple)) else [out]
        sum(h.float().square().mean() for h in heads).backward()

    elapsed = _fastest(forward_backward, device, repeats)
    network.zero_grad(set_to_none=True)
    return elapsed


def measure_window_time(
    network: nn.Module,
    in_channels: int,
    roi: Sequence[int],
    device: torch.device,
    *,
    windows: int = 1,
    repeats: int = 2,
    autocast: Callable[[], ContextManager] | None = None,
) -> float:
    """Seconds of one inference forward (eval mode, no gradients) of a batch of ``windows``
    sliding windows of ``roi``: the unit of validation's cost. One untimed warm-up pass, then
    the fastest of ``repeats``; the network's mode is restored."""
    was_training = network.training
    network = network.to(device).eval()
    x = torch.randn(windows, in_channels, *roi, device=device)

    def forward() -> None:
        with torch.no_grad(), _autocast_or_off(autocast, device):
            network(x)

    try:
        return _fastest(forward, device, repeats)
    finally:
        network.train(was_training)


def sliding_window_count(shape: Sequence[float], roi: Sequence[int], overlap: float) -> int:
    """Windows MONAI's ``sliding_window_inference`` runs over a volume of ``shape`` voxels:
    per axis one window if the axis fits in the crop, else ``ceil((size - roi) / interval) + 1``
    with ``interval = max(1, int(roi * (1 - overlap)))``."""
    count = 1
    for size, side in zip(shape, roi):
        size = int(round(float(size)))
        if size > side:
            interval = max(1, int(side * (1 - overlap)))
            count *= math.ceil((size - side) / interval) + 1
    return count


def validation_runs(steps: int, every: int) -> int:
    """Validations of a run of ``steps`` steps validated every ``every`` steps and after the
    last one (``every`` 0: only after the last)."""
    if every <= 0:
        return 1
    return steps // every + (1 if steps % every else 0)


@dataclass(frozen=True)
class ValidationEstimate:
    """What validation adds to a run's time.

    Attributes:
        forward_s: seconds of one inference forward of ``sw_batch_size`` windows (measured).
        windows_per_case: mean sliding windows per case of the dataset at the plan's spacing.
        sw_batch_size: windows per forward.
        cases: validation cases per validation.
        every: validate every this many steps (0: after the last step only).
    """

    forward_s: float
    windows_per_case: float
    sw_batch_size: int
    cases: int
    every: int

    @property
    def one_s(self) -> float:
        """Seconds of one validation (every case's windows; the Dice and post-processing
        candidates are small next to them)."""
        return self.cases * math.ceil(self.windows_per_case / self.sw_batch_size) * self.forward_s

    def total_s(self, steps: int) -> float:
        """Seconds of every validation of a run of ``steps`` steps."""
        return validation_runs(steps, self.every) * self.one_s if self.cases else 0.0


def validation_estimate(
    fingerprint: DatasetFingerprint, spacing: Sequence[float] | None, roi: Sequence[int], *, forward_s: float,
    overlap: float, sw_batch_size: int, cases: int, every: int,
) -> ValidationEstimate:
    """The :class:`ValidationEstimate` of validating ``cases`` cases with windows of ``roi`` at
    ``spacing`` (``None``: as stored), from one measured forward of ``sw_batch_size`` windows;
    the windows per case are the mean over the dataset's cases (the validation cases are drawn
    later)."""
    shapes = fingerprint.resampled_shapes(spacing)
    windows = float(np.mean([sliding_window_count(shape, roi, overlap) for shape in shapes]))
    return ValidationEstimate(float(forward_s), windows, int(sw_batch_size), int(cases), int(every))


# ---------------------------------------------------------------------------------- the plan
@dataclass
class PlannedValue:
    """One value of the plan: what it is, who set it (``setting``, ``preset`` or ``plan``), why."""

    value: Any
    source: str
    reason: str


@dataclass
class TrainingPlan:
    """The plan of a run (``plan.json``): every value with its source and reason, the
    fingerprint summary and the estimates."""

    spacing: PlannedValue
    roi: PlannedValue
    batch: PlannedValue
    mask_cell: PlannedValue
    fingerprint: dict[str, Any]
    memory: dict[str, Any]
    time: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # the step-time fit (medcontext.engine.planning.time_fit): bound, reason, chosen steps
    time_fit: dict[str, Any] = field(default_factory=dict)
    # the memory-driven (nnU-Net-style) plan when the time fit chose another one
    unconstrained: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingPlan":
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        for key in ("spacing", "roi", "batch", "mask_cell"):
            values[key] = PlannedValue(**values[key])
        return cls(**values)

    def format(self) -> str:
        """The plan as printed before training: one line per value with its reason."""

        def show(value: Any, unit: str = "") -> str:
            if value is None:
                return "each case's own"
            if isinstance(value, (list, tuple)):
                return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + unit
            return f"{value}{unit}"

        mem = self.memory
        lines = [
            f"plan ({self.fingerprint.get('cases')} cases, median {show([round(v, 1) for v in self.fingerprint['median_shape']])} "
            f"voxels at {show([round(v, 3) for v in self.fingerprint['median_spacing']])} mm):",
            f"  spacing   {show(self.spacing.value, ' mm'):<22} [{self.spacing.source}] {self.spacing.reason}",
            f"  crop      {show(self.roi.value):<22} [{self.roi.source}] {self.roi.reason}",
            f"  batch     {show(self.batch.value, ' crops'):<22} [{self.batch.source}] {self.batch.reason}",
            f"  mask cell {show(self.mask_cell.value):<22} [{self.mask_cell.source}] {self.mask_cell.reason}",
            f"  memory    {mem['total_gib']:.2f} GiB estimated peak ({mem['activations_gib']:.2f} GiB activations, "
            f"{mem['weights_gib']:.2f} GiB weights/gradients/optimizer/teacher of {mem['parameters'] / 1e6:.2f}M "
            f"parameters); budget {mem['budget_gib']:.1f} GiB ({mem['budget_source']})",
        ]
        if self.time:
            t = self.time
            steps_s = t["step_s"] * t["steps"]
            lines.append(
                f"  time      {t['step_s']:.3g} s/step estimated ({t['batch_s']:.3g} s measured for one forward+backward "
                f"of {t['crops']} crops, x {t['units']}/3 for the variant), {t['steps']} steps ~ {_duration(steps_s)}"
            )
            validation = plan_validation(self)
            if validation is not None and validation.cases:
                runs = validation_runs(t["steps"], validation.every)
                lines.append(
                    f"  validation {runs} x {validation.one_s:.3g} s ({validation.cases} cases x "
                    f"{validation.windows_per_case:.3g} windows, {validation.forward_s:.3g} s per forward of "
                    f"{validation.sw_batch_size}) ~ {_duration(t.get('validation_total_s', 0.0))}; "
                    f"run ~ {_duration(t['total_s'])}"
                )
        fit = self.time_fit
        if fit:
            lines.append(f"  time fit  [{fit.get('bound_reason')}] {fit.get('reason')}")
            if fit.get("steps") is not None:
                lines.append(f"  steps     {fit['steps']:<22} [plan] {fit.get('steps_reason')}")
        if self.unconstrained is not None:
            u = self.unconstrained
            lines.append(
                f"  memory-driven plan (not used): spacing {show(u['spacing']['value'], ' mm')}, crop "
                f"{show(u['roi']['value'])}, {u['time'].get('step_s', float('nan')):.3g} s/step"
            )
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _spacing_plan(fingerprint: DatasetFingerprint, spacing: Sequence[float] | None,
                  source: str | None) -> tuple[tuple[float, ...] | None, "PlannedValue"]:
    """The spacing to resample to: fixed by ``source`` (a setting, the preset), or planned (``source`` None)."""
    if source is None:
        value, reason = plan_spacing(fingerprint)
        return value, PlannedValue(None if value is None else list(value), "plan", reason)
    value = None if spacing is None else tuple(float(s) for s in spacing)
    return value, PlannedValue(None if value is None else list(value), source, f"fixed by the {source}")


def _crop_step_and_floor(multiple: Sequence[int], minimum: Sequence[int],
                         token_cell: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """``(step, floor)``: every planned crop side is a multiple of ``step`` and at least ``floor``."""
    step = [int(m) for m in multiple]
    if token_cell is not None:
        step = [_lcm(s, int(c)) for s, c in zip(step, token_cell)]
    floor = [max(int(lo), s) for lo, s in zip(minimum, step)]
    return step, [_round_up(f, s) for f, s in zip(floor, step)]


def _fixed_crop(roi: Sequence[int], roi_source: str, memory_of: Callable[[Sequence[int]], MemoryEstimate], crops: int,
                budget: tuple[int, str]) -> tuple[tuple[int, ...], MemoryEstimate, "PlannedValue"]:
    """A crop a setting or the preset fixed, refused when it does not fit the budget."""
    budget_bytes, budget_source = budget
    crop = tuple(int(r) for r in roi)
    estimate = memory_of(crop)
    if estimate.total_bytes > budget_bytes:
        raise PlanError(
            f"the {roi_source}'s crop {_fmt(crop)} with {crops} crops per step needs about "
            f"{estimate.total_bytes / 2**30:.2f} GiB (estimated peak), more than the memory budget "
            f"{budget_bytes / 2**30:.2f} GiB ({budget_source}); use a smaller --roi (or drop it to let the planner "
            "choose), fewer crops per step (train.batch_size, data.num_samples), a smaller model, or set "
            "train.memory_budget_gb if the budget is wrong"
        )
    return crop, estimate, PlannedValue(list(crop), roi_source, f"fixed by the {roi_source}")


def _planned_crop(median: Sequence[float], step: list[int], floor: list[int],
                  memory_of: Callable[[Sequence[int]], MemoryEstimate], crops: int, budget: tuple[int, str],
                  max_crop_voxels: int) -> tuple[tuple[int, ...], MemoryEstimate, "PlannedValue"]:
    """The median shape rounded up to ``step``, capped at ``max_crop_voxels``, shrunk until it fits the budget."""
    budget_bytes, budget_source = budget
    crop_list = [max(f, _round_up(m, s)) for m, s, f in zip(median, step, floor)]
    bound = "the median shape rounded up to multiples of " + _fmt(step)
    while math.prod(crop_list) > max_crop_voxels and _shrink(crop_list, median, step, floor):
        bound = f"capped at {max_crop_voxels} voxels (nnU-Net's usual 3D crop volume)"
    estimate, estimate_crop = memory_of(crop_list), list(crop_list)
    while estimate.total_bytes > budget_bytes:
        if not _shrink(crop_list, median, step, floor):
            raise PlanError(
                f"even the smallest crop {_fmt(crop_list)} for this model needs about "
                f"{estimate.total_bytes / 2**30:.2f} GiB with {crops} crops per step (estimated peak), more than "
                f"the memory budget {budget_bytes / 2**30:.2f} GiB ({budget_source}); use fewer crops per step "
                "(train.batch_size, data.num_samples), a smaller model (--model-size), or another device"
            )
        # activations grow about linearly with the voxels: jump close, then estimate exactly
        measured_voxels, before = math.prod(estimate_crop), estimate
        while (before.weights_bytes + before.activations_bytes * math.prod(crop_list) / measured_voxels
               > budget_bytes) and _shrink(crop_list, median, step, floor):
            pass
        estimate, estimate_crop = memory_of(crop_list), list(crop_list)
        bound = f"shrunk to fit the memory budget ({budget_bytes / 2**30:.1f} GiB)"
    crop = tuple(crop_list)
    reason = f"{bound} (median {_fmt([round(m, 1) for m in median])} voxels after resampling)"
    return crop, estimate, PlannedValue(list(crop), "plan", reason)


def _round_down_to_cells(crop: Sequence[int], cell: Sequence[int], step: Sequence[int], floor: Sequence[int],
                         mask_cell_for: Callable[[Sequence[int]], tuple]) -> tuple[int, ...] | None:
    """A planned crop rounded down to whole mask cells (and ``step``), if that keeps it above
    ``floor`` with the same cell; else ``None``."""
    adjusted = [c if c % m == 0 else (c // _lcm(s, m)) * _lcm(s, m) for c, m, s in zip(crop, cell, step)]
    if all(a >= f for a, f in zip(adjusted, floor)) and mask_cell_for(adjusted)[0] == cell:
        return tuple(adjusted)
    return None


def plan_training(
    fingerprint: DatasetFingerprint,
    *,
    build: Callable[[Sequence[int]], nn.Module],
    in_channels: int,
    multiple: Sequence[int],
    minimum: Sequence[int],
    mask_cell_for: Callable[[Sequence[int]], tuple[Triple | None, str]],
    crops: int,
    batch_reason: str,
    variant: str = "medcontext",
    optimizer: str = "adamw",
    budget_bytes: int,
    budget_source: str,
    roi: Sequence[int] | None = None,
    roi_source: str = "setting",
    spacing: Sequence[float] | None = None,
    spacing_source: str | None = None,
    token_cell: Sequence[int] | None = None,
    max_crop_voxels: int = MAX_CROP_VOXELS,
) -> TrainingPlan:
    """Plan what is missing and estimate the memory of the result (no timing; see
    :func:`add_time_estimate`).

    Args:
        fingerprint: the dataset's shapes and spacings.
        build: ``roi -> student network`` (called on the meta device).
        in_channels: image channels.
        multiple: every crop side a multiple of this (the model's size multiple).
        minimum: every crop side at least this.
        mask_cell_for: ``roi -> (mask cell or None, reason)``: what the MedContext wrapper uses.
        crops: crops per optimizer step on one device.
        batch_reason: why that many crops (printed).
        variant: method variant (graphs kept, teacher).
        optimizer: ``adamw`` or ``sgd``.
        budget_bytes: memory the step may use; budget_source: where that number comes from.
        roi: a crop fixed by a setting or preset (``roi_source`` says which); ``None`` plans it.
        spacing: a spacing fixed by a setting or preset (``spacing_source``); planned when
            ``spacing_source`` is ``None``.
        token_cell: a mask cell known before the crop (token space or set): planned crops are
            multiples of it.
        max_crop_voxels: the largest planned crop volume.

    Raises:
        PlanError: the estimated memory exceeds the budget even at the smallest crop, or the
            fixed crop does not fit (the message gives both numbers and the fixes).
    """
    spacing_value, spacing_plan = _spacing_plan(fingerprint, spacing, spacing_source)
    median = fingerprint.resampled_median_shape(spacing_value)

    def memory_of(candidate: Sequence[int]) -> MemoryEstimate:
        return estimate_memory(build, in_channels, candidate, crops, variant=variant, optimizer=optimizer)

    step, floor = _crop_step_and_floor(multiple, minimum, token_cell)
    budget = (budget_bytes, budget_source)
    if roi is not None:
        crop, estimate, roi_plan = _fixed_crop(roi, roi_source, memory_of, crops, budget)
    else:
        crop, estimate, roi_plan = _planned_crop(median, step, floor, memory_of, crops, budget, max_crop_voxels)
    cell, cell_reason = mask_cell_for(crop)
    if roi is None and cell is not None and any(c % int(m) for c, m in zip(crop, cell)):
        adjusted = _round_down_to_cells(crop, cell, step, floor, mask_cell_for)
        if adjusted is not None:
            crop = adjusted
            roi_plan = PlannedValue(list(crop), "plan", roi_plan.reason + f"; rounded down to whole mask cells {_fmt(cell)}")
            estimate = memory_of(crop)
    if cell is not None and any(c % int(m) for c, m in zip(crop, cell)):
        cell_reason += f"; the crop {_fmt(crop)} is not a multiple of it: the last cell along an axis is partial"
    cell_plan = PlannedValue(None if cell is None else list(cell), "method", cell_reason)
    memory = {
        "parameters": estimate.parameters,
        "weights_gib": estimate.weights_bytes / 2**30,
        "activations_gib": estimate.activations_bytes / 2**30,
        "total_gib": estimate.total_bytes / 2**30,
        "budget_gib": budget_bytes / 2**30,
        "budget_source": budget_source,
    }
    return TrainingPlan(
        spacing=spacing_plan,
        roi=roi_plan,
        batch=PlannedValue(crops, "setting", batch_reason),
        mask_cell=cell_plan,
        fingerprint=fingerprint.to_dict(),
        memory=memory,
    )


def _shrink(crop: list[int], median: Sequence[float], step: Sequence[int], floor: Sequence[int]) -> bool:
    """Shrink the axis largest relative to the median shape by one step (nnU-Net's rule);
    False when every axis is at its floor."""
    candidates = [a for a in range(3) if crop[a] - step[a] >= floor[a]]
    if not candidates:
        return False
    axis = max(candidates, key=lambda a: (crop[a] / max(median[a], 1.0), crop[a]))
    crop[axis] -= step[axis]
    return True


def add_time_estimate(
    plan: TrainingPlan, batch_seconds: float, *, crops: int, variant: str, steps: int,
    validation: ValidationEstimate | None = None, warn_after_s: float = 24 * 3600,
) -> TrainingPlan:
    """Add the time estimate from a measured forward+backward of one batch of ``crops``
    crops, plus ``validation``'s time when given; warns (in the plan) when the run would take
    longer than ``warn_after_s``."""
    units, _graphs, _teacher = variant_cost(variant)
    step_s = batch_seconds * units / 3
    plan.time = {"batch_s": batch_seconds, "crops": crops, "units": units, "step_s": step_s, "steps": steps}
    if validation is not None:
        plan.time["validation"] = asdict(validation) | {"one_s": validation.one_s}
    set_steps(plan, steps)
    total = plan.time["total_s"]
    if total > warn_after_s:
        plan.warnings.append(
            f"{steps} steps at about {step_s:.3g} s/step take about {_duration(total)} on this device; "
            "consider a GPU, fewer steps (--steps), a smaller crop (--roi) or a smaller model (--model-size)"
        )
    return plan


def plan_validation(plan: TrainingPlan) -> ValidationEstimate | None:
    """The :class:`ValidationEstimate` stored in ``plan.time`` (``None``: none)."""
    stored = (plan.time or {}).get("validation")
    if not stored:
        return None
    return ValidationEstimate(**{k: v for k, v in stored.items() if k != "one_s"})


def set_steps(plan: TrainingPlan, steps: int) -> TrainingPlan:
    """Set the plan's steps and its estimated total time: steps plus every validation."""
    validation = plan_validation(plan)
    validation_s = validation.total_s(steps) if validation is not None else 0.0
    plan.time = {**plan.time, "steps": steps, "validation_total_s": validation_s,
                 "total_s": steps * plan.time["step_s"] + validation_s}
    return plan
