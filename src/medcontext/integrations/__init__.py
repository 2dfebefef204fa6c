"""Integrations of MedContext into other training frameworks.

Each integration sits on :mod:`medcontext.method` (and :mod:`medcontext.models` where needed),
beside :mod:`medcontext.engine`, never on it: ``nnunet`` makes MedContext an nnU-Net v2 trainer.
"""
