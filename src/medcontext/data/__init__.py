"""Data layer: datasets on disk, transforms, splits, the phantom generator and MSD downloads.

Imports only point down: this package uses neither the engine nor the CLI. The typical flow:

>>> spec = load_dataset("Task04_Hippocampus")              # what the cases are
>>> summary = validate_dataset(spec)                        # every file sound?
>>> split = split_for_spec(spec, train_cases=5, val_cases=2, test_cases=0.2, seed=0)
>>> cfg = PreprocessConfig.from_spec(spec)
>>> train = make_train_dataset(spec, split.train, cfg, roi_size=(32, 32, 32))
"""

from medcontext.data.case_datasets import CaseDataset, make_eval_dataset, make_train_dataset
from medcontext.data.dataset_spec import CaseRecord, DatasetError, DatasetSpec
from medcontext.data.dataset_summary import CaseSummary, DatasetSummary
from medcontext.data.download import MSD_TASKS, DownloadError, MSDTask, download_task, resolve_task
from medcontext.data.loading import load_dataset
from medcontext.data.nifti_io import save_nifti
from medcontext.data.nifti_names import case_id_from_path
from medcontext.data.phantom import LOOKALIKE_PAIRS, PHANTOM_STRUCTURES, generate_phantom, generate_phantom_images
from medcontext.data.preprocess_config import PreprocessConfig
from medcontext.data.presets import PRESETS, SYNAPSE_CT_WINDOWS
from medcontext.data.restorer import Restorer, load_for_inference
from medcontext.data.splits import Split, make_split, split_for_spec
from medcontext.data.transforms import preprocess_transforms, train_transforms
from medcontext.data.validation import validate_dataset

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
    "generate_phantom_images",
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
