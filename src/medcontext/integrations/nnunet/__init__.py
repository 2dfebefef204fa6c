"""MedContext as an nnU-Net v2 trainer: ``nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerMedContext``.

Sits on :mod:`medcontext.method`, beside the engine. Modules:

* :mod:`.settings`: the MedContext settings and the trainer names that encode them (pure Python).
* :mod:`.trainer`: ``nnUNetTrainerMedContext`` (needs ``pip install "medcontext[nnunet]"``).
* :mod:`.discovery`: how nnU-Net finds the trainer (``nnUNet_extTrainer`` or nnU-Net's folder).
* :mod:`.export`: a plain nnU-Net model folder from a MedContext one (student or teacher).

Importing this package does not import nnunetv2; ``.trainer`` does.
"""

from .discovery import ext_trainer_folder, install_trainer, remove_trainer
from .export import export_plain_model
from .settings import BASE_TRAINER_NAME, MedContextSettings, parse_trainer_name, trainer_name

__all__ = [
    "BASE_TRAINER_NAME",
    "MedContextSettings",
    "parse_trainer_name",
    "trainer_name",
    "ext_trainer_folder",
    "install_trainer",
    "remove_trainer",
    "export_plain_model",
]
