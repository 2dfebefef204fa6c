"""Evaluation of segmentations: Dice and HD95 per case and class, their statistics and reports.

Pure metrics and tables, below the engine (whose validation scores with them) and importing
nothing of it. Evaluating a whole run folder (predict its held-out cases, then score them) is a
workflow above the engine: :mod:`medcontext.run_scoring`.

* :mod:`~medcontext.evaluation.classes`: which classes/regions are evaluated, and their masks.
* :mod:`~medcontext.evaluation.metrics`: pure numpy metrics (``dice_score``, ``hd95``,
  ``evaluate_case``) with explicit empty-mask conventions.
* :mod:`~medcontext.evaluation.statistics`: mean/std/median with missing values, bootstrap intervals.
* :mod:`~medcontext.evaluation.metric_table`: the ``MetricTable`` accumulator and CSV/markdown/text output.
* :mod:`~medcontext.evaluation.folder`: a folder of NIfTI predictions against reference labels.
* :mod:`~medcontext.evaluation.figures`: the report figures (matplotlib, imported when drawing).
"""

from .classes import ClassMap, label_masks, region_channel_masks, validate_classes
from .folder import as_label_map, case_id_from_path, evaluate_folder, evaluate_region_folder, header_spacing, pair_cases
from .metrics import (
    NOTE_BOTH_EMPTY,
    NOTE_PRED_EMPTY,
    NOTE_TRUTH_EMPTY,
    CaseMetric,
    dice_score,
    evaluate_case,
    evaluate_masks,
    hd95,
    surface_distances,
    surface_voxels,
)
from .metric_table import (
    ClassSummary,
    MetricTable,
    TableSummary,
    format_summary,
    read_csv,
    write_csv,
    write_markdown,
)
from .statistics import Summary, hierarchical_bootstrap, paired_bootstrap, summarize

__all__ = [
    "ClassMap",
    "label_masks",
    "region_channel_masks",
    "validate_classes",
    "as_label_map",
    "case_id_from_path",
    "evaluate_folder",
    "evaluate_region_folder",
    "header_spacing",
    "pair_cases",
    "NOTE_BOTH_EMPTY",
    "NOTE_PRED_EMPTY",
    "NOTE_TRUTH_EMPTY",
    "CaseMetric",
    "dice_score",
    "evaluate_case",
    "evaluate_masks",
    "hd95",
    "surface_distances",
    "surface_voxels",
    "ClassSummary",
    "MetricTable",
    "TableSummary",
    "format_summary",
    "read_csv",
    "write_csv",
    "write_markdown",
    "Summary",
    "summarize",
    "paired_bootstrap",
    "hierarchical_bootstrap",
]
