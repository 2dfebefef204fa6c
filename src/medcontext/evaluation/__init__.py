"""Evaluation of segmentations: Dice and HD95 per case and class, their summary and reports.

* :mod:`~medcontext.evaluation.classes`: which classes/regions are evaluated, and their masks.
* :mod:`~medcontext.evaluation.metrics`: pure numpy metrics (``dice_score``, ``hd95``,
  ``evaluate_case``) with explicit empty-mask conventions.
* :mod:`~medcontext.evaluation.report`: the ``MetricTable`` accumulator and CSV/markdown/text output.
* :mod:`~medcontext.evaluation.folder`: a folder of NIfTI predictions against reference labels.
"""

from .classes import (
    ACDC_CLASSES,
    BRATS21_REGIONS,
    BRATS_MSD_REGIONS,
    SYNAPSE_ORGANS,
    ClassMap,
    classes_from_dataset_labels,
    label_masks,
    region_channel_masks,
    validate_classes,
)
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
from .report import (
    ClassSummary,
    MetricTable,
    TableSummary,
    format_summary,
    read_csv,
    write_csv,
    write_markdown,
)

__all__ = [
    "ACDC_CLASSES",
    "BRATS21_REGIONS",
    "BRATS_MSD_REGIONS",
    "SYNAPSE_ORGANS",
    "ClassMap",
    "classes_from_dataset_labels",
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
]
