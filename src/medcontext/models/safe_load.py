"""Reading weight files without running code from them.

``torch.load`` unpickles: a file can name any Python callable and have it called while it is
read, so a crafted ``.pt`` executes code with the user's rights. Every file medcontext reads
(``--init-checkpoint``, its own ``last.pt``/``best.pt`` on ``--resume``, ``predict --run``,
``evaluate --run``, the study and the demo) goes through :func:`load_weights_file`, which uses
``torch.load(weights_only=True)``: tensors, numbers, strings, lists, tuples and dicts only.

A file that needs more (a checkpoint written by another framework that pickled its own
classes) is refused with :class:`UntrustedFileError`, which names the file and the Python
objects it would construct. Whoever trusts the file's origin can opt in per call
(``trust=True``, CLI ``--trust-checkpoint``), which loads it with full pickle.

Checkpoints written by medcontext before format version 2 stored numpy's random state as a
numpy array; only the three numpy names such an array needs are allowed in addition
(``numpy.ndarray``, its ``_reconstruct`` and ``numpy.dtype``; they build arrays, never call
other code). Readers of other frameworks' checkpoints pass the types those store as
``allowed_globals`` (nnU-Net v2's logger keeps numpy scalars: :func:`numpy_value_globals`), so
that every checkpoint format medcontext reads goes through this one loader.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["UntrustedFileError", "UnreadableFileError", "load_weights_file", "numpy_value_globals", "TRUST_HINT"]

TRUST_HINT = "--trust-checkpoint (API: trust=True)"


class UntrustedFileError(ValueError):
    """A weights file holds Python objects that a weights-only load refuses."""

    def __init__(self, path: Path, names: list[str], trust_hint: str = TRUST_HINT):
        self.path, self.names = path, list(names)
        shown = ", ".join(self.names[:8]) + (f", ... ({len(self.names) - 8} more)" if len(self.names) > 8 else "")
        super().__init__(
            f"{path} was not loaded: it holds Python objects that a weights-only load refuses ({shown or 'unknown'}). "
            "Unpickling them could run code from the file, so medcontext reads weights with "
            f"torch.load(weights_only=True). If you trust where this file comes from, pass {trust_hint} to load it "
            "with full pickle; otherwise re-save its tensors as a plain state dict "
            "(torch.save(model.state_dict(), ...))."
        )


class UnreadableFileError(ValueError):
    """A weights file is missing, truncated or not a PyTorch file."""


def _legacy_numpy_globals() -> list:
    import numpy as np

    try:
        reconstruct = np._core.multiarray._reconstruct  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        reconstruct = np.core.multiarray._reconstruct
    return [np.ndarray, np.dtype, reconstruct, type(np.dtype(np.uint32))]


def numpy_value_globals() -> list:
    """The numpy names that pickled numpy values need: arrays, scalars (``np.float64(0.5)``) and
    every dtype class. They construct values from bytes and never call other code."""
    import numpy as np

    try:
        multiarray = np._core.multiarray  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        multiarray = np.core.multiarray
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtypes]


def _unsafe_globals(path: Path) -> list[str]:
    """The global names a weights-only load of ``path`` would refuse (read without executing)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) format or unreadable: the caller reports the load error
        return []


def load_weights_file(path: str | os.PathLike, *, trust: bool = False, map_location: Any = "cpu",
                      allowed_globals: Sequence[Any] = (), trust_hint: str = TRUST_HINT) -> Any:
    """``torch.load`` of ``path`` that cannot run code from the file unless ``trust`` is set.

    Args:
        path: a file written by ``torch.save``.
        trust: load with full pickle (``weights_only=False``); only for files whose origin
            the caller trusts: a crafted file then runs arbitrary code.
        map_location: where tensors go (``torch.load``'s argument).
        allowed_globals: further classes and functions the weights-only load may construct
            (value types only, e.g. :func:`numpy_value_globals`).
        trust_hint: how the refusal names the opt-in (``--trust-checkpoint`` by default).

    Returns:
        The unpickled object (usually a dict of tensors and plain values).

    Raises:
        UnreadableFileError: the file does not exist, is truncated or is not a PyTorch file.
        UntrustedFileError: without ``trust``, the file holds objects a weights-only load
            refuses (names them and the opt-in).
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(f"{path} does not exist")
    try:
        if trust:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals([*_legacy_numpy_globals(), *allowed_globals]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust and "Weights only load failed" in str(err):
            allowed = {f"{g.__module__}.{g.__qualname__}" for g in allowed_globals}
            names = [n for n in _unsafe_globals(path) if n not in allowed] or sorted(
                set(re.findall(r"GLOBAL ([\w.]+)", str(err))))
            if names:
                raise UntrustedFileError(path, names, trust_hint) from None
            raise UnreadableFileError(f"{path} cannot be read: it is not a PyTorch file, or it is truncated") from None
        raise UnreadableFileError(f"{path} cannot be read ({type(err).__name__}: {_first_line(err)}); it may be truncated") from err
    except Exception as err:  # torch raises many types for corrupt files
        raise UnreadableFileError(f"{path} cannot be read ({type(err).__name__}: {_first_line(err)}); it may be truncated") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
