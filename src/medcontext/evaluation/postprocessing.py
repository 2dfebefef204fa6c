"""Post-processing as nnU-Net chooses it: keep the largest connected component where it helps.

A trained network often predicts a few stray islands far from the organ; one such island is
enough for an HD95 of centimetres. nnU-Net therefore decides on validation predictions,
after training, whether keeping only the largest connected component improves Dice, and
applies the decision to every later prediction. The same two steps here, in this order:

1. **Whole foreground**: keep the largest component of the union of all foreground labels
   (MONAI ``KeepLargestConnectedComponent(independent=False)``). Chosen when the mean Dice over
   the evaluated classes rises and no class gets worse (nnU-Net's rule).
2. **Per class**, on top of step 1's result: keep the largest component of that class alone
   (``independent=True``). Chosen for each class whose mean validation Dice rises.

Removing components of one class only turns its voxels into background, so the per-class
choices do not interact and are decided independently from per-case Dice.

Two kinds of prediction (``target``):

- ``"labels"`` (softmax outputs): an integer label map ``(H, W, D)``; the labels of the
  decision are label VALUES.
- ``"regions"`` (sigmoid outputs, BraTS WT/TC/ET): the binary region channels ``(R, H, W, D)``
  that evaluation scores; the labels of the decision are region CHANNEL indices (MONAI's
  ``is_onehot=True`` reading of ``applied_labels``), the foreground step unites the channels,
  and a per-region step works on that region's own channel. The painted label map is then
  painted from the post-processed channels.

Connectivity is MONAI's default, full connectivity (26 neighbours in 3D). The decision is
stored as ``postprocessing.json`` in the run folder (:data:`POSTPROCESSING_FILE`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medcontext.io.atomic import write_text_atomic

from .classes import ClassMap, label_masks, region_channel_masks, validate_classes
from .metrics import dice_score

__all__ = [
    "POSTPROCESSING_FILE",
    "PostProcessing",
    "keep_largest_component",
    "class_keys",
    "candidate_dice",
    "choose_postprocessing",
    "read_postprocessing",
    "write_postprocessing",
    "comparison_lines",
]

POSTPROCESSING_FILE = "postprocessing.json"
TARGETS = ("labels", "regions")
# the per-case candidates of candidate_dice, by name
RAW, FOREGROUND, CLASS, FOREGROUND_CLASS = "raw", "foreground", "class", "foreground+class"


def keep_largest_component(
    prediction: np.ndarray, labels: Sequence[int], *, independent: bool, target: str = "labels"
) -> np.ndarray:
    """MONAI's ``KeepLargestConnectedComponent`` on one prediction (a copy; the input is untouched).

    Args:
        prediction: ``(H, W, D)`` integer label map (``target="labels"``) or ``(R, H, W, D)``
            0/1 region channels (``target="regions"``).
        labels: label values (labels) or channel indices (regions) to analyse.
        independent: ``False``: one analysis of the union of ``labels`` (voxels outside its
            largest component become background); ``True``: each label on its own.
        target: ``labels`` or ``regions``.

    Returns:
        The post-processed prediction, same shape and dtype.
    """
    import torch
    from monai.transforms import KeepLargestConnectedComponent

    _check_target(target)
    if not len(labels):
        return np.array(prediction, copy=True)
    onehot = target == "regions"
    data = np.array(prediction, copy=True)
    stacked = data if onehot else data[None]
    transform = KeepLargestConnectedComponent(
        applied_labels=[int(v) for v in labels], is_onehot=onehot, independent=independent
    )
    out = transform(torch.from_numpy(np.ascontiguousarray(stacked)))
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    result = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return (result if onehot else result[0]).astype(data.dtype, copy=False)


@dataclass(frozen=True)
class PostProcessing:
    """A post-processing decision (see the module docstring).

    Attributes:
        foreground_largest_component: apply step 1 (largest component of the whole foreground).
        largest_component_labels: labels (values or region channels) of step 2, in order.
        foreground_labels: what step 1 unites: every foreground label value (labels) or
            every region channel (regions).
        target: ``labels`` or ``regions``.
        metrics: how the decision was reached (raw and post-processed validation Dice,
            number of cases, checkpoint step); stored, not used when applying.
    """

    foreground_largest_component: bool = False
    largest_component_labels: tuple[int, ...] = ()
    foreground_labels: tuple[int, ...] = ()
    target: str = "labels"
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def changes_anything(self) -> bool:
        """Whether applying it can change a prediction."""
        return self.foreground_largest_component or bool(self.largest_component_labels)

    def describe(self) -> str:
        """One line: what is applied."""
        what = "region channel" if self.target == "regions" else "label"
        parts = []
        if self.foreground_largest_component:
            parts.append("largest component of the whole foreground")
        if self.largest_component_labels:
            listed = ", ".join(str(v) for v in self.largest_component_labels)
            parts.append(f"largest component per {what} {listed}")
        return " then ".join(parts) if parts else "none (no largest-component step improved validation Dice)"

    def apply(self, prediction: np.ndarray) -> np.ndarray:
        """The decision applied to one prediction (``(H, W, D)`` labels or ``(R, H, W, D)`` regions)."""
        out = np.asarray(prediction)
        if self.foreground_largest_component:
            out = keep_largest_component(out, self.foreground_labels, independent=False, target=self.target)
        if self.largest_component_labels:
            out = keep_largest_component(out, self.largest_component_labels, independent=True, target=self.target)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ``postprocessing.json`` content (format version 1)."""
        return {
            "version": 1,
            "chosen_on": "validation",
            "target": self.target,
            "foreground_largest_component": bool(self.foreground_largest_component),
            "foreground_labels": [int(v) for v in self.foreground_labels],
            "largest_component_labels": [int(v) for v in self.largest_component_labels],
            "connectivity": "full (26 neighbours, MONAI's default)",
            **dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "postprocessing") -> PostProcessing:
        """Read :meth:`to_dict`'s format; ``source`` names the file in errors.

        Raises:
            ValueError: an unknown version or target, or a missing/ill-typed field.
        """
        if data.get("version") != 1:
            raise ValueError(f"{source}: unsupported post-processing version {data.get('version')!r} (expected 1)")
        target = data.get("target", "labels")
        if target not in TARGETS:
            raise ValueError(f"{source}: target must be one of {TARGETS}, got {target!r}")
        try:
            foreground = data["foreground_largest_component"]
            labels = tuple(int(v) for v in data["largest_component_labels"])
            foreground_labels = tuple(int(v) for v in data.get("foreground_labels", ()))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: malformed post-processing decision ({err!r})") from err
        if not isinstance(foreground, bool):
            raise ValueError(f"{source}: foreground_largest_component must be true or false, got {foreground!r}")
        if foreground and not foreground_labels:
            raise ValueError(f"{source}: foreground_largest_component is true but foreground_labels is empty")
        known = {"version", "chosen_on", "target", "foreground_largest_component", "foreground_labels",
                 "largest_component_labels", "connectivity"}
        metrics = {k: v for k, v in data.items() if k not in known}
        return cls(foreground, labels, foreground_labels, target, metrics)


def class_keys(
    classes: ClassMap, *, target: str = "labels", regions: Mapping[str, Sequence[int]] | None = None
) -> dict[str, int]:
    """The label each evaluated class is post-processed by: its label value (labels; classes
    of several values are left out) or the channel of the region it scores (regions)."""
    _check_target(target)
    classes = validate_classes(classes)
    if target == "labels":
        return {name: values[0] for name, values in classes.items() if len(values) == 1}
    if regions is None:
        raise ValueError("target='regions' needs the regions (name -> label values, in channel order)")
    channels = {tuple(sorted(int(v) for v in values)): i for i, values in enumerate(regions.values())}
    return {name: channels[tuple(sorted(values))] for name, values in classes.items() if tuple(sorted(values)) in channels}


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def _masks(prediction: np.ndarray, classes: ClassMap, target: str, regions) -> dict[str, np.ndarray]:
    return region_channel_masks(prediction, regions, classes) if target == "regions" else label_masks(prediction, classes)


def candidate_dice(
    prediction: np.ndarray,
    truth_masks: Mapping[str, np.ndarray],
    classes: ClassMap,
    *,
    foreground_labels: Sequence[int],
    target: str = "labels",
    regions: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, dict[str, float]]:
    """Dice per class of one validation case under every candidate post-processing.

    Args:
        prediction: ``(H, W, D)`` label map or ``(R, H, W, D)`` region channels.
        truth_masks: class name -> boolean reference mask ``(H, W, D)``.
        classes: evaluated classes, name -> label values.
        foreground_labels: what the whole-foreground step unites (label values or channels).
        target: ``labels`` or ``regions``.
        regions: region name -> label values in channel order (``regions`` only).

    Returns:
        ``{"raw", "foreground", "class", "foreground+class"} -> class -> Dice``: the raw
        prediction, the whole-foreground step, each class's own step on the raw prediction,
        and each class's own step after the whole-foreground step.
    """
    keys = class_keys(classes, target=target, regions=regions)
    foreground = keep_largest_component(prediction, foreground_labels, independent=False, target=target)
    out: dict[str, dict[str, float]] = {}
    for name, source in ((RAW, prediction), (FOREGROUND, foreground)):
        masks = _masks(source, classes, target, regions)
        out[name] = {c: dice_score(masks[c], truth_masks[c]) for c in classes}
    for name, source in ((CLASS, prediction), (FOREGROUND_CLASS, foreground)):
        out[name] = {}
        for c, key in keys.items():
            mask = _masks(keep_largest_component(source, [key], independent=True, target=target), classes, target, regions)
            out[name][c] = dice_score(mask[c], truth_masks[c])
    return out


def _means(cases: Sequence[Mapping[str, Mapping[str, float]]], candidate: str, names: Sequence[str]) -> dict[str, float]:
    return {c: float(np.mean([case[candidate][c] for case in cases])) for c in names}


def choose_postprocessing(
    cases: Sequence[Mapping[str, Mapping[str, float]]],
    classes: ClassMap,
    *,
    foreground_labels: Sequence[int],
    target: str = "labels",
    regions: Mapping[str, Sequence[int]] | None = None,
    step: int | None = None,
) -> PostProcessing:
    """nnU-Net's choice from the :func:`candidate_dice` of every validation case.

    Step 1 is chosen when the mean Dice over classes rises and no class's mean Dice falls;
    step 2 for each class whose mean Dice rises over step 1's result (strictly, so a tie keeps
    the prediction as it is).

    Raises:
        ValueError: no validation case.
    """
    if not cases:
        raise ValueError("choosing a post-processing needs at least one validation case")
    names = list(validate_classes(classes))
    keys = class_keys(classes, target=target, regions=regions)
    raw = _means(cases, RAW, names)
    fg = _means(cases, FOREGROUND, names)
    use_fg = float(np.mean(list(fg.values()))) > float(np.mean(list(raw.values()))) and all(
        fg[c] >= raw[c] for c in names
    )
    base = fg if use_fg else raw
    own = _means(cases, FOREGROUND_CLASS if use_fg else CLASS, list(keys))
    chosen = [c for c in keys if own[c] > base[c]]
    final = {c: own[c] if c in chosen else base[c] for c in names}
    metrics = {
        "step": step,
        "validation_cases": len(cases),
        "validation_dice_raw": {"mean": float(np.mean(list(raw.values()))), **raw},
        "validation_dice_postprocessed": {"mean": float(np.mean(list(final.values()))), **final},
        "validation_dice_foreground_step": {"mean": float(np.mean(list(fg.values()))), **fg},
        "largest_component_classes": chosen,
    }
    return PostProcessing(use_fg, tuple(keys[c] for c in chosen), tuple(int(v) for v in foreground_labels), target,
                          metrics)


def read_postprocessing(run_dir: str | Path) -> PostProcessing | None:
    """The run folder's decision, or ``None`` when it has none (a run without validation cases,
    or one trained before post-processing existed).

    Raises:
        ValueError: the file exists but is not a valid decision (names the file).
    """
    path = Path(run_dir) / POSTPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the post-processing decision ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return PostProcessing.from_dict(data, source=str(path))


def write_postprocessing(run_dir: str | Path, decision: PostProcessing) -> Path:
    """Write ``postprocessing.json`` into ``run_dir`` atomically; returns the path."""
    path = Path(run_dir) / POSTPROCESSING_FILE
    write_text_atomic(path, json.dumps(decision.to_dict(), indent=2) + "\n")
    return path


def _mm(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.2f}"


def comparison_lines(raw_table, post_table, decision: PostProcessing | None, *, markdown: bool = True) -> list[str]:
    """Raw against post-processed scores of the same cases, per class and on average.

    Args:
        raw_table: :class:`~medcontext.evaluation.metric_table.MetricTable` of the raw predictions.
        post_table: the same cases after post-processing (``None`` when nothing was applied).
        decision: the run's decision, or ``None`` (the run has none).
        markdown: a markdown section (``## Post-processing``) or plain text lines.
    """
    if decision is None:
        return ["Post-processing: none (the run has no postprocessing.json: it had no validation cases or was "
                "trained before post-processing was chosen); the scores are of the raw predictions."]
    chosen = decision.metrics.get("validation_cases")
    head = (f"Post-processing (chosen on {chosen} validation case(s)): {decision.describe()}."
            if chosen else f"Post-processing: {decision.describe()}.")
    if post_table is None:
        return [head, "Nothing is applied, so the raw and post-processed scores are the same."]
    raw, post = raw_table.summary(), post_table.summary()
    rows = [(c.class_name, c.dice_mean, post.by_class(c.class_name).dice_mean, c.hd95_mean,
             post.by_class(c.class_name).hd95_mean, c.hd95_missing, post.by_class(c.class_name).hd95_missing)
            for c in raw.classes]
    rows.append(("mean", raw.mean_dice, post.mean_dice, raw.mean_hd95, post.mean_hd95, raw.hd95_missing,
                 post.hd95_missing))
    if markdown:
        lines = ["## Post-processing", "", head, "",
                 "| Class | Dice raw | Dice post-processed | HD95 raw (mm) | HD95 post-processed (mm) | HD95 missing raw / post |",
                 "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {n} | {a:.4f} | {b:.4f} | {_mm(c)} | {_mm(d)} | {e} / {f} |" for n, a, b, c, d, e, f in rows]
        return lines + [""]
    width = max(12, *(len(r[0]) for r in rows))
    lines = [head, f"{'class':<{width}} {'Dice raw':>9} {'post':>9}  {'HD95 raw':>9} {'post':>9}"]
    lines += [f"{n:<{width}} {a:>9.4f} {b:>9.4f}  {_mm(c):>9} {_mm(d):>9}" for n, a, b, c, d, _, _ in rows]
    return lines
