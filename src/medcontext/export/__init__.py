"""Trained runs in formats other tools run: a MONAI Bundle (:mod:`medcontext.export.bundle`,
``medcontext export``; the settings translated in :mod:`medcontext.export.bundle_config`).

Nothing is imported here, so that the CLI's parser stays quick to build."""
