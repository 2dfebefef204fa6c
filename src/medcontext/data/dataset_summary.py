"""What :func:`~medcontext.data.validation.validate_dataset` found: one summary per case.

:class:`DatasetSummary` holds one :class:`CaseSummary` (shape, spacing, orientation, label
volumes, intensity range) per case and formats the report ``medcontext data check`` prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from medcontext.data.dataset_spec import DatasetSpec

__all__ = ["CaseSummary", "DatasetSummary"]


@dataclass
class CaseSummary:
    """What one case holds.

    Attributes:
        case_id: the case.
        shape: spatial shape ``(H, W, D)`` in voxels.
        channels: image channels found.
        spacing: voxel size in mm, from the header zooms.
        orientation: axis codes, e.g. ``"RAS"``.
        label_voxels: label value -> voxel count (``{}`` for unlabelled cases).
        label_ml: label value -> volume in millilitres.
        intensity_range: ``(min, max)`` over all image channels.
    """

    case_id: str
    shape: tuple[int, int, int]
    channels: int
    spacing: tuple[float, float, float]
    orientation: str
    label_voxels: dict[int, int]
    label_ml: dict[int, float]
    intensity_range: tuple[float, float]
    labelled: bool = True


@dataclass
class DatasetSummary:
    """Result of :func:`validate_dataset`: one :class:`CaseSummary` per case."""

    spec: DatasetSpec
    cases: list[CaseSummary]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "name": self.spec.name,
            "root": str(self.spec.root),
            "cases": [
                {
                    "case_id": c.case_id,
                    "shape": list(c.shape),
                    "channels": c.channels,
                    "spacing": list(c.spacing),
                    "orientation": c.orientation,
                    "label_voxels": {str(k): v for k, v in c.label_voxels.items()},
                    "label_ml": {str(k): v for k, v in c.label_ml.items()},
                    "intensity_range": list(c.intensity_range),
                    "labelled": c.labelled,
                }
                for c in self.cases
            ],
        }

    def format(self, max_rows: int | None = None) -> str:
        """A readable report: dataset facts, one row per case, per-label statistics.

        Args:
            max_rows: print at most this many case rows (``None`` = all).
        """
        spec = self.spec
        labelled = [c for c in self.cases if c.labelled]
        lines = [
            f"dataset   {spec.name}  ({spec.root})",
            f"layout    {spec.layout}, preset {spec.preset}" + (f"\nnote      {spec.source_note}" if spec.source_note else ""),
            f"cases     {len(labelled)} labelled, {len(self.cases) - len(labelled)} unlabelled",
            f"channels  {spec.num_channels}: {', '.join(spec.channel_names)} ({spec.modality})",
            "labels    " + ", ".join(f"{k}={v}" for k, v in sorted(spec.labels.items())),
            f"outputs   {spec.num_outputs} ({spec.output_mode}"
            + (", regions " + ", ".join(f"{k}={v}" for k, v in spec.regions.items()) if spec.regions else "")
            + ")",
            "evaluated " + ", ".join(f"{c}:{n}" for c, n in zip(spec.eval_classes, spec.eval_class_names)),
        ]
        if self.cases:
            shapes = np.array([c.shape for c in self.cases])
            spacings = np.array([c.spacing for c in self.cases])
            lines += [
                f"shape     median {_fmt_tuple(np.median(shapes, 0), '{:.0f}')}, "
                f"min {_fmt_tuple(shapes.min(0), '{:d}')}, max {_fmt_tuple(shapes.max(0), '{:d}')}",
                f"spacing   median {_fmt_tuple(np.median(spacings, 0), '{:.3g}')} mm, "
                f"min {_fmt_tuple(spacings.min(0), '{:.3g}')}, max {_fmt_tuple(spacings.max(0), '{:.3g}')}",
                "orient.   " + ", ".join(f"{k} x{n}" for k, n in Counter(c.orientation for c in self.cases).most_common()),
            ]
        fg = [k for k in sorted(spec.labels) if k != 0]
        header = ["case", "shape", "spacing (mm)", "orient", "intensity"] + [f"{k}:{spec.labels[k][:10]} ml" for k in fg]
        rows = []
        for c in self.cases[: max_rows if max_rows is not None else len(self.cases)]:
            rows.append(
                [
                    c.case_id + ("" if c.labelled else " *"),
                    "x".join(str(s) for s in c.shape) + (f" x{c.channels}ch" if c.channels > 1 else ""),
                    "x".join(f"{s:.3g}" for s in c.spacing),
                    c.orientation,
                    f"{c.intensity_range[0]:.4g}..{c.intensity_range[1]:.4g}",
                ]
                + [(f"{c.label_ml.get(k, 0.0):.2f}" if c.labelled else "-") for k in fg]
            )
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        lines.append("")
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in rows]
        if max_rows is not None and len(self.cases) > max_rows:
            lines.append(f"... {len(self.cases) - max_rows} more cases")
        if any(not c.labelled for c in self.cases):
            lines.append("(* unlabelled)")
        if labelled:
            lines.append("")
            lines.append("label statistics over labelled cases:")
            for k in fg:
                vols = [c.label_ml.get(k, 0.0) for c in labelled]
                present = sum(1 for c in labelled if c.label_voxels.get(k, 0) > 0)
                lines.append(
                    f"  {k} {spec.labels[k]}: in {present}/{len(labelled)} cases, "
                    f"volume mean {np.mean(vols):.2f} ml (min {np.min(vols):.2f}, max {np.max(vols):.2f})"
                )
        return "\n".join(lines)


def _fmt_tuple(values: Iterable[Any], fmt: str) -> str:
    return "x".join(fmt.format(int(v) if fmt == "{:d}" else float(v)) for v in values)
