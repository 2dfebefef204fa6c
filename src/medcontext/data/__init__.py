"""Data layer: datasets on disk, transforms, splits, the phantom generator and MSD downloads.

Imports only point down: this package uses neither the engine nor the CLI. The typical flow:

>>> spec = load_dataset("Task04_Hippocampus")              # what the cases are
>>> summary = validate_dataset(spec)                        # every file sound?
>>> split = split_for_spec(spec, train_cases=5, val_cases=2, test_cases=0.2, seed=0)
>>> cfg = PreprocessConfig.from_spec(spec)
>>> train = make_train_dataset(spec, split.train, cfg, roi_size=(32, 32, 32))
"""

from medcontext.data.datasets import (
    PRESETS,
    SYNAPSE_CT_WINDOWS,
    CaseRecord,
    CaseSummary,
    DatasetError,
    DatasetSpec,
    DatasetSummary,
    case_id_from_path,
    load_dataset,
    validate_dataset,
)
from medcontext.data.download import MSD_TASKS, DownloadError, MSDTask, download_task, resolve_task
from medcontext.data.phantom import LOOKALIKE_PAIRS, PHANTOM_STRUCTURES, generate_phantom
from medcontext.data.preprocessing import (
    CaseDataset,
    PreprocessConfig,
    Restorer,
    load_for_inference,
    make_eval_dataset,
    make_train_dataset,
    preprocess_transforms,
    save_nifti,
    train_transforms,
)
from medcontext.data.splits import Split, make_split, split_for_spec

__all__ = [
    "PRESETS",
    "SYNAPSE_CT_WINDOWS",
    "CaseRecord",
    "CaseSummary",
    "DatasetError",
    "DatasetSpec",
    "DatasetSummary",
    "case_id_from_path",
    "load_dataset",
    "validate_dataset",
    "MSD_TASKS",
    "MSDTask",
    "DownloadError",
    "download_task",
    "resolve_task",
    "LOOKALIKE_PAIRS",
    "PHANTOM_STRUCTURES",
    "generate_phantom",
    "CaseDataset",
    "PreprocessConfig",
    "Restorer",
    "load_for_inference",
    "make_eval_dataset",
    "make_train_dataset",
    "preprocess_transforms",
    "save_nifti",
    "train_transforms",
    "Split",
    "make_split",
    "split_for_spec",
]
