"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one.

Every output (checkpoints, configs, splits, metrics tables, NIfTI predictions, download
markers) goes through here: write to a temp file in the destination folder, flush and fsync
it, then ``os.replace`` it over the destination (atomic within one file system). It lives in
the data layer, the lowest layer that writes files; the engine and the CLI import it from here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

__all__ = ["atomic_path", "atomic_write", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; move it onto ``path`` when the block succeeds.

    Args:
        path: the destination.
        suffix: end of the temp file name (e.g. ``".nii.gz"`` so writers pick the format).

    On an exception the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, writer: Callable[[IO[bytes]], None]) -> Path:
    """Call ``writer(handle)`` on a binary temp file beside ``path``, fsync it, move it into place.

    If ``writer`` raises (or the process dies), ``path`` keeps its previous content.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda handle: handle.write(data))


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (best effort; not supported on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
