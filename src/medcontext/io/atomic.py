"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one.

Every output (checkpoints, configs, splits, metrics tables, NIfTI predictions, download
markers) goes through here: write to a temp file in the destination folder, flush and fsync
it, then ``os.replace`` it over the destination (atomic within one file system). It sits below
every other layer and imports nothing of medcontext, so every layer (data, evaluation, engine,
the workflows, the CLI, the nnU-Net integration) writes through this one module.

Written files get the permissions any other program's output gets (``0o666`` minus the
user's umask): the temp file is created with ``os.open(..., 0o666)``, not ``mkstemp``'s
private ``0o600``, so colleagues who share a folder can read predictions and reports.

Temp files are named ``.<name>.<pid>.<token>.tmp<suffix>`` (the writer's process id, then a
random token). A process killed during a write (``kill -9``, an out-of-memory kill) leaves
its temp file behind; :func:`remove_stale_temporaries` deletes such leftovers of processes
that no longer run (a training run calls it when it starts or resumes).

A full disk (``ENOSPC``, or a full quota) during a write raises :class:`DiskFullError`,
which names the file, the bytes written and free, and the space the file needs; the
destination keeps its previous content and the partial temp file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from pathlib import Path
from typing import IO, Any, Callable, Iterator

__all__ = [
    "DiskFullError",
    "atomic_path",
    "atomic_write",
    "write_text_atomic",
    "remove_stale_temporaries",
    "is_disk_full",
]

_FILE_MODE = 0o666  # the kernel subtracts the umask, as for any file created with open()
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
# ".<name>.<pid>.<token>.tmp<suffix>" (this module) or ".<name>.<8 chars>.tmp<suffix>" (mkstemp,
# the naming of releases before the process id was added)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)\.[0-9a-f]{12}|[a-z0-9_]{8})\.tmp(?:\..+)?$")


class DiskFullError(OSError):
    """A file could not be written because its file system (or quota) is full.

    Attributes:
        path: the destination that was not written (it keeps its previous content).
        written: bytes of the new content written before the failure.
        needed: bytes the complete file needs, when known (else ``None``).
        free: bytes free on the destination's file system after the failure.
    """

    def __init__(self, path: Path, written: int, needed: int | None, free: int | None, reason: str):
        self.path, self.written, self.needed, self.free = Path(path), int(written), needed, free
        if needed is not None:
            need = f"it needs about {_megabytes(needed)}"
        else:
            need = f"it needs more than the {_megabytes(written)} written before the failure"
        free_text = f"{_megabytes(free)} free" if free is not None else "free space unknown"
        kept = (
            f"{self.path} keeps its previous content" if self.path.exists() else f"{self.path} was not created"
        )
        super().__init__(
            errno.ENOSPC,
            f"cannot write {self.path}: no space left on its file system ({reason}); {need} "
            f"({free_text} in {self.path.parent}, and the new file is written beside the old one before "
            f"replacing it). {kept}; free some space (or choose another output folder) and retry",
        )

    def __str__(self) -> str:  # OSError's default prefixes "[Errno 28]"
        return str(self.args[1])

    def __reduce__(self):  # picklable (e.g. gathered from another process of a distributed run)
        return _rebuild_disk_full_error, (self.path, self.written, self.needed, self.free, str(self))


def _rebuild_disk_full_error(path: Path, written: int, needed: int | None, free: int | None, message: str):
    err = DiskFullError.__new__(DiskFullError)
    OSError.__init__(err, errno.ENOSPC, message)
    err.path, err.written, err.needed, err.free = path, written, needed, free
    return err


def _megabytes(size: int | None) -> str:
    return f"{(size or 0) / 1e6:.1f} MB"


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` or an exception it was raised from is an ``ENOSPC``/``EDQUOT`` ``OSError``.

    Libraries wrap the operating system's error (``torch.save`` raises a ``RuntimeError``
    whose ``__context__`` is the ``OSError``), so the whole chain is searched.
    """
    return _disk_full_cause(err) is not None


def _disk_full_cause(err: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL:
            return current
        current = current.__cause__ or current.__context__
    return None


def _free_bytes(folder: Path) -> int | None:
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs on this platform
        return None
    return stats.f_bavail * stats.f_frsize


def _create_temp(path: Path, suffix: str) -> Path:
    """Create an empty temp file beside ``path`` with the umask's permissions; return its path."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), _FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {path}: 100 names were taken")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", *, expected_size: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; move it onto ``path`` when the block succeeds.

    Args:
        path: the destination.
        suffix: end of the temp file name (e.g. ``".nii.gz"`` so writers pick the format).
        expected_size: bytes the complete file needs, for the :class:`DiskFullError` message.

    On an exception the temp file is removed and ``path`` is left as it was; a full disk
    raises :class:`DiskFullError` (from the original error).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        cause = _disk_full_cause(err) if isinstance(err, Exception) and not isinstance(err, DiskFullError) else None
        if cause is not None:
            reason = os.strerror(cause.errno)
            raise DiskFullError(path, written, expected_size, _free_bytes(path.parent), reason) from err
        raise
    _fsync_dir(path.parent)


def atomic_write(
    path: str | os.PathLike, writer: Callable[[IO[bytes]], Any], *, expected_size: int | None = None
) -> Path:
    """Call ``writer(handle)`` on a binary temp file beside ``path``, fsync it, move it into place.

    Args:
        path: the destination.
        writer: writes the content to the open binary handle.
        expected_size: bytes the complete file needs, for the :class:`DiskFullError` message.

    If ``writer`` raises (or the process dies), ``path`` keeps its previous content.

    Raises:
        DiskFullError: the file system (or quota) is full; names ``path`` and the space needed.
    """
    with atomic_path(path, expected_size=expected_size) as tmp:
        with open(tmp, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda handle: handle.write(data), expected_size=len(data))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing while it cleans up; an equal id is a reused one
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's process) or we cannot tell: keep its file
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[tuple[Path, int]]:
    """Delete temp files of interrupted atomic writes in ``folder`` (not its sub-folders).

    Only names of this module's pattern are touched (``.<name>.<pid>.<token>.tmp...``, and the
    ``.<name>.<8 chars>.tmp...`` of older releases); a temp file whose writing process still
    runs on this machine is kept.

    Returns:
        ``(path, size in bytes)`` of every file removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_file() or entry.is_symlink():
            continue
        pid = match.group("pid")
        if pid is not None and _process_alive(int(pid)):
            continue
        try:
            size = entry.stat().st_size
            entry.unlink()
        except FileNotFoundError:
            continue
        removed.append((entry, size))
    return removed


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
