"""File output shared by every layer; imports nothing else of medcontext.

* :mod:`~medcontext.io.atomic`: atomic writes (temp file beside the destination, fsync,
  ``os.replace``), :class:`~medcontext.io.atomic.DiskFullError`, clean-up of leftovers.
"""
