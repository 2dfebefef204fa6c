"""nnU-Net imports this file by its bare name when ``nnUNet_extTrainer`` lists this folder (or
when ``medcontext nnunet install-trainer`` copied it into nnU-Net's trainer folder): it only
re-exports the MedContext trainers from their real module, so the classes keep one identity.
``__getattr__`` answers the named variants (``nnUNetTrainerMedContext_ratio60`` ...)."""

try:
    from medcontext.integrations.nnunet.trainer import __getattr__, nnUNetTrainerMedContext  # noqa: F401
except ModuleNotFoundError as err:
    # medcontext (or a version with this integration) was uninstalled but this copy stayed in
    # nnU-Net's folder: offer no trainer instead of breaking every nnU-Net trainer lookup.
    if (err.name or "").split(".")[0] != "medcontext":
        raise
