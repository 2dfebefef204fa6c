"""Trained runs in formats other tools run: a MONAI Bundle (:mod:`medcontext.export.bundle`)."""

from medcontext.export.bundle import BundleExport, BundleExportError, export_bundle

__all__ = ["BundleExport", "BundleExportError", "export_bundle"]
