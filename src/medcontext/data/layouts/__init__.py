"""The dataset layouts :func:`~medcontext.data.loading.load_dataset` reads, one module each.

Every reader returns the same ``source`` dict (``root``, ``layout``, ``name``, ``cases``,
``unlabeled``, ``labels``, ``channel_names``, ``official_train``, ``official_test``,
``task``) before any preset is applied:

* **MSD** (:mod:`.msd`): ``dataset.json`` + ``imagesTr/`` + ``labelsTr/`` (+ ``imagesTs/``), any task,
  4D multi-channel images included. Channel names come from ``modality``; CT when every
  channel is called ``CT``, else MRI. nnU-Net v2 ``dataset.json`` files (``channel_names``,
  name -> value ``labels``) are read too; their cases are found by scanning the folders.
* **Datalist** (:mod:`.datalist`): a MONAI-style JSON ``{"training": [{"image": ..., "label": ...}],
  "validation": [...], "test": [...]}`` with paths relative to the JSON's folder (or to the
  dataset root given as ``path`` when the JSON is passed as ``datalist``). ``image`` may be a
  list of per-channel files. ``training`` and ``validation`` entries are the labelled cases
  (the sections become ``official_train`` / ``official_test`` unless a preset has its own).
* **Folders** (:mod:`.folders`): ``images/`` + ``labels/`` (also ``imagesTr``/``labelsTr`` or BTCV's
  ``img``/``label``), matched by case id (file name without ``.nii``/``.nii.gz``).
  nnU-Net channel suffixes (``case_0000.nii.gz``, ``case_0001.nii.gz``) group channels;
  BTCV's ``img0001`` / ``label0001`` are matched by their number. ``imagesTs/`` holds
  unlabelled cases.
* **BraTS subjects** (:mod:`.brats`): the BraTS 2021 release layout (one folder per subject with
  ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair`` and ``*_seg``).

:mod:`.json_entries` reads the JSON files the first two share (entries, label tables,
channel names).
"""

from medcontext.data.layouts.brats import read_brats_subjects
from medcontext.data.layouts.datalist import read_datalist
from medcontext.data.layouts.folders import read_folders
from medcontext.data.layouts.json_entries import read_json
from medcontext.data.layouts.msd import MSD_LAYOUTS, read_msd

__all__ = ["MSD_LAYOUTS", "read_brats_subjects", "read_datalist", "read_folders", "read_json", "read_msd"]
