"""What is evaluated: named classes or regions, each the union of some label values.

A *class map* is a plain ``dict[str, tuple[int, ...]]`` from a name to the label values it
unites. A softmax network's classes map to one value each (``{"spleen": (1,)}``); BraTS's
sigmoid region outputs unite several (``{"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}``).
:func:`label_masks` turns an integer label map into one boolean mask per name.

Data enters as an integer label map ``(H, W, D)`` and leaves as boolean masks of the same
shape; nothing here reads files. The class maps of known datasets are not listed here: they
follow from the dataset's preset (:data:`medcontext.data.presets.PRESETS`, labels, regions and
evaluated classes), which the pipeline turns into a class map for validation and evaluation.
"""

from __future__ import annotations

import numbers
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "ClassMap",
    "validate_classes",
    "label_masks",
    "region_channel_masks",
]

ClassMap = Mapping[str, Sequence[int]]
"""A name -> label values mapping, e.g. ``{"WT": [1, 2, 4]}``."""


def validate_classes(classes: ClassMap) -> dict[str, tuple[int, ...]]:
    """Check a class map and return it as ``dict[str, tuple[int, ...]]``.

    Args:
        classes: name -> label values, e.g. ``{"spleen": [1]}`` or ``{"WT": [1, 2, 4]}``.

    Returns:
        A new dict with the same order, values as tuples of Python ints.

    Raises:
        TypeError: when ``classes`` is not a mapping or a label value is not an integer.
        ValueError: when it is empty, a name is empty, a class has no label values, repeats
            one, or uses the background label 0.
    """
    if not isinstance(classes, Mapping):
        raise TypeError(
            f"classes must be a mapping name -> label values such as {{'spleen': [1]}}, got {type(classes).__name__}"
        )
    if not classes:
        raise ValueError("classes is empty: give at least one class, e.g. {'spleen': [1]}")
    out: dict[str, tuple[int, ...]] = {}
    for name, values in classes.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class names must be non-empty strings, got {name!r}")
        if isinstance(values, (numbers.Integral, np.integer)) and not isinstance(values, bool):
            raise TypeError(f"class {name!r}: label values must be a list such as [{int(values)}], got {values!r}")
        try:
            seq = list(values)
        except TypeError as err:
            raise TypeError(f"class {name!r}: label values must be a list of integers, got {values!r}") from err
        if not seq:
            raise ValueError(f"class {name!r} has no label values; give at least one, e.g. [1]")
        ints = []
        for value in seq:
            if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
                raise TypeError(f"class {name!r}: label value {value!r} is not an integer")
            ints.append(int(value))
        if len(set(ints)) != len(ints):
            raise ValueError(f"class {name!r} repeats a label value: {ints}")
        if 0 in ints:
            raise ValueError(f"class {name!r} includes label 0, which is background; evaluate foreground labels only")
        out[name] = tuple(ints)
    return out


def label_masks(labels: np.ndarray, classes: ClassMap) -> dict[str, np.ndarray]:
    """Boolean masks of each class or region in an integer label map.

    Args:
        labels: integer label map of any shape, usually ``(H, W, D)``. Bool arrays count as
            labels 0/1; float arrays are refused (round them first, see
            :func:`medcontext.evaluation.folder.as_label_map`).
        classes: name -> label values (see :func:`validate_classes`).

    Returns:
        name -> boolean mask with the shape of ``labels``, in the order of ``classes``.

    Raises:
        TypeError: when ``labels`` is not an integer or bool array.
    """
    labels = np.asarray(labels)
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"labels must be an integer label map, got dtype {labels.dtype}; "
            "round a float map with np.rint(...).astype(np.int64) after checking it holds whole numbers"
        )
    masks: dict[str, np.ndarray] = {}
    for name, values in validate_classes(classes).items():
        if len(values) == 1:
            masks[name] = labels == values[0]
        else:
            masks[name] = np.isin(labels, values)
    return masks


def region_channel_masks(
    regions_on: np.ndarray, regions: Mapping[str, Sequence[int]], classes: ClassMap
) -> dict[str, np.ndarray]:
    """Boolean masks of evaluated regions, each read from its own sigmoid output channel.

    A painted label map (:func:`medcontext.engine.inference.logits_to_labels`) cannot say that
    a voxel is enhancing tumour but not whole tumour; scoring the painted map would count it
    for WT and TC. Region tasks are therefore scored per channel.

    Args:
        regions_on: ``(R, H, W, D)`` bool (or 0/1) region channels, in the order of ``regions``.
        regions: region name -> label values, in output-channel order (e.g. BraTS WT, TC, ET).
        classes: the evaluated regions, name -> label values (each equal to one region's).

    Returns:
        name -> ``(H, W, D)`` boolean mask, in the order of ``classes``.

    Raises:
        ValueError: the channel count differs from ``regions``, or a class matches no region.
    """
    regions_on = np.asarray(regions_on)
    region_values = [tuple(int(v) for v in values) for values in regions.values()]
    if regions_on.shape[0] != len(region_values):
        raise ValueError(f"{regions_on.shape[0]} region channels but {len(region_values)} regions {list(regions)}")
    masks: dict[str, np.ndarray] = {}
    for name, values in validate_classes(classes).items():
        matches = [c for c, rv in enumerate(region_values) if set(rv) == set(values)]
        if not matches:
            raise ValueError(f"class {name!r} with label values {list(values)} is none of the regions {dict(regions)}")
        masks[name] = regions_on[matches[0]] > 0
    return masks
