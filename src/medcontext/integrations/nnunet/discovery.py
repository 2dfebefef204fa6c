"""How nnU-Net finds ``nnUNetTrainerMedContext``.

nnU-Net v2 resolves ``-tr NAME`` (training) and a checkpoint's trainer name (prediction) by
importing every module of its own trainer folder, then of each folder listed in the environment
variable ``nnUNet_extTrainer`` (``os.pathsep``-separated), and asking ``hasattr(module, NAME)``.
Modules of an external folder are imported under their bare file names and removed from
``sys.modules`` afterwards, so the folder this package ships holds one uniquely named file that
re-exports the trainer from :mod:`.trainer`. Two ways to use it:

* ``export nnUNet_extTrainer="$(medcontext nnunet trainer-path)"`` (nothing is written), or
* ``medcontext nnunet install-trainer``: copies that one file into nnU-Net's own trainer folder,
  which nnU-Net searches first. Needed where nnU-Net's search of its own folder fails before
  reaching ``nnUNet_extTrainer``: it imports its Primus trainers, hence ``timm`` and
  ``torchvision``, and a torchvision wheel that does not match the installed torch (a CUDA
  wheel beside a CPU-only torch) fails to import.

This module imports nnunetv2 only to locate its folder.
"""

from __future__ import annotations

from pathlib import Path

from medcontext.io.atomic import atomic_write

__all__ = ["SHIM_NAME", "ext_trainer_folder", "nnunet_trainer_folder", "install_trainer", "remove_trainer"]

SHIM_NAME = "medcontext_nnunet_trainers.py"


def ext_trainer_folder() -> Path:
    """The folder to list in ``nnUNet_extTrainer`` (holds only :data:`SHIM_NAME`)."""
    return Path(__file__).resolve().parent / "ext_trainer"


def nnunet_trainer_folder() -> Path:
    """nnU-Net's own trainer folder, ``nnunetv2/training/nnUNetTrainer``."""
    try:
        import nnunetv2
    except ImportError as err:
        raise FileNotFoundError('nnU-Net v2 is not installed: pip install "medcontext[nnunet]"') from err
    return Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"


def install_trainer(folder: Path | None = None) -> Path:
    """Copy :data:`SHIM_NAME` into nnU-Net's trainer folder (or ``folder``); returns the file
    written. Idempotent; written atomically (:func:`medcontext.io.atomic.atomic_write`)."""
    folder = Path(folder) if folder is not None else nnunet_trainer_folder()
    if not folder.is_dir():
        raise NotADirectoryError(f"nnU-Net trainer folder {folder} does not exist")
    target = folder / SHIM_NAME
    source = ext_trainer_folder() / SHIM_NAME
    try:
        atomic_write(target, lambda handle: handle.write(source.read_bytes()))
    except PermissionError as err:
        raise PermissionError(
            f"cannot write {target}: {err.strerror}; use nnUNet_extTrainer instead "
            '(export nnUNet_extTrainer="$(medcontext nnunet trainer-path)")'
        ) from err
    return target


def remove_trainer(folder: Path | None = None) -> Path | None:
    """Remove the file :func:`install_trainer` wrote; returns it, or ``None`` if it was absent."""
    folder = Path(folder) if folder is not None else nnunet_trainer_folder()
    target = folder / SHIM_NAME
    if not target.exists():
        return None
    target.unlink()
    return target
