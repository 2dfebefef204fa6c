"""One writer per run folder: a lock file that names its holder.

A process that writes a run folder (``medcontext train``, ``train --resume``, ``evaluate``)
holds ``RUN_DIR/.medcontext.lock`` while it works. The file says who holds it (JSON: process
id, host, start time in UTC, the command), so that a second writer is refused with a message
naming the holder instead of silently mixing the two runs' files.

How it is taken, atomically: the file is opened (created if missing) and locked with
``fcntl.flock(LOCK_EX | LOCK_NB)``; the kernel gives the lock to one process only and releases
it when that process ends in any way, ``kill -9`` included. A lock file whose lock is free is
therefore stale (its writer died without cleaning up): it is taken over with a warning that
names the dead holder. On a file system without ``flock`` the file's content decides
instead: a holder on this host whose process id no longer runs is stale; any other holder
refuses. The holder deletes the file when it is done (exit, exception, SIGTERM handled by
the caller's ``finally``).

Opening the folder this way is also where file-system problems surface, before any work: a
``RUN_DIR`` that is an existing file, or a folder that cannot be written (a read-only mount,
missing permissions), raises :class:`RunFolderError` naming the path and the cause.

Under ``torchrun`` one process per run holds the lock (the engine takes it on rank 0).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["LOCK_NAME", "RunFolderError", "RunFolderBusyError", "LockHolder", "RunFolderLock", "read_holder",
           "check_writable_folder"]

LOCK_NAME = ".medcontext.lock"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunFolderError(RuntimeError):
    """A run folder that cannot be used: it is a file, or it cannot be written."""


class RunFolderBusyError(RunFolderError):
    """Another process holds the run folder's lock.

    Attributes:
        holder: the :class:`LockHolder` read from the lock file (``None`` if unreadable).
        folder: the folder whose lock is held (``None`` if not given).
    """

    def __init__(self, message: str, holder: "LockHolder | None", folder: Path | None = None):
        super().__init__(message)
        self.holder = holder
        self.folder = folder


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run folder: process id, host name, start time (UTC, ISO 8601) and command."""

    pid: int
    host: str
    started: str
    command: str

    def describe(self) -> str:
        """``"PID 123 on host h (medcontext train, since 2026-01-01T10:00:00Z)"``."""
        return f"PID {self.pid} on host {self.host} ({self.command}, since {self.started})"

    def is_dead_here(self) -> bool:
        """Whether the holder ran on this host and its process no longer exists."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, under another user
            return False
        return False


def read_holder(run_dir: str | os.PathLike, name: str = LOCK_NAME) -> LockHolder | None:
    """The holder written in ``run_dir``'s lock file ``name``; ``None`` when there is none or it is unreadable."""
    try:
        data = json.loads((Path(run_dir) / name).read_text(encoding="utf-8"))
        return LockHolder(int(data["pid"]), str(data["host"]), str(data["started"]), str(data["command"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _describe_os_error(err: OSError) -> str:
    if err.errno == errno.EROFS:
        return "the file system is mounted read-only"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return os.strerror(err.errno) if err.errno else str(err)


def check_writable_folder(folder: str | os.PathLike, what: str) -> Path:
    """Create ``folder`` (with parents) and prove a file can be written in it, before any work.

    Args:
        folder: the folder to write into.
        what: how the message calls it (``"--out"``, ``"the run folder"``, ``"--output"``).

    Returns:
        The folder as a :class:`~pathlib.Path`.

    Raises:
        RunFolderError: the path (or a parent) is an existing file, or the folder cannot be
            created or written (read-only mount, permissions); names the path and the cause.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{what} {folder} is an existing file, not a folder; choose a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunFolderError(f"{what} {folder}: a part of the path is an existing file, not a folder") from None
    except OSError as err:
        raise RunFolderError(f"{what} {folder} cannot be created: {_describe_os_error(err)}") from None
    probe = folder / f".medcontext-write-test.{os.getpid()}"
    try:
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as err:
        raise RunFolderError(f"{what} {folder} cannot be written: {_describe_os_error(err)}") from None
    return folder


class RunFolderLock:
    """Hold ``run_dir``'s writer lock (a context manager; re-entrant use is an error).

    Args:
        run_dir: the run folder (created when missing; removed again on release when this lock
            created it and nothing else was written).
        command: what the holder does, shown to a refused second writer (``"medcontext train"``).
        warn: where the warning about a taken-over stale lock goes (stderr by default).
        name: the lock file's name: :data:`LOCK_NAME` for the writer lock; another name is a
            separate lock of the same kind (a study worker's claim on a run, held around the
            writer locks of its training and evaluations).

    Raises (on entry):
        RunFolderBusyError: another live process holds the lock (names it).
        RunFolderError: the folder is a file or cannot be written.
    """

    def __init__(self, run_dir: str | os.PathLike, command: str = "medcontext", *,
                 warn: Callable[[str], None] | None = None, name: str = LOCK_NAME):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / name
        self.command = command
        self._warn = warn or (lambda line: print(line, file=sys.stderr))
        self._fd: int | None = None
        self._created_dir = False
        self.took_over: LockHolder | None = None

    def __enter__(self) -> "RunFolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (see the class docstring for what it raises)."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this process")
        self._created_dir = not self.run_dir.exists()
        check_writable_folder(self.run_dir, "the run folder")
        for _ in range(10):  # retry when the file was replaced between open and lock
            fd = self._open()
            try:
                if self._lock(fd) and self._same_file(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        else:  # pragma: no cover - only under a storm of concurrent takers
            raise RunFolderBusyError(f"{self.run_dir}: could not take the lock {self.path}",
                                     read_holder(self.run_dir, self.path.name), self.run_dir)
        self._fd = fd
        self._write_holder(fd)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunFolderError(f"the run folder {self.run_dir} cannot be written: {_describe_os_error(err)}") from None

    def _same_file(self, fd: int) -> bool:
        """The locked file is still the one at ``self.path`` (a releasing holder may have deleted it)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _lock(self, fd: int) -> bool:
        """Lock ``fd``; refuse when another live process holds it; note a stale holder taken over."""
        import fcntl

        previous = _holder_of(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy(previous or _holder_of(fd)) from None
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                raise
            # no flock here: the file's content decides (dead holder on this host = stale)
            if previous is not None and previous.pid != os.getpid() and not previous.is_dead_here():
                raise self._busy(previous) from None
        previous = _holder_of(fd)  # what the file says now that nobody else can write it
        if previous is not None and previous.pid != os.getpid():
            self.took_over = previous
        return True

    def _busy(self, holder: LockHolder | None) -> RunFolderBusyError:
        who = holder.describe() if holder is not None else "another process (its lock file is unreadable)"
        return RunFolderBusyError(
            f"{self.run_dir} is in use: {who} is writing it (lock file {self.path}). Only one process may write "
            "a run folder: wait for that one to finish or stop it, or choose another folder",
            holder, self.run_dir,
        )

    def _write_holder(self, fd: int) -> None:
        if self.took_over is not None:
            self._warn(f"warning: {self.run_dir} had a stale lock of {self.took_over.describe()}, which no longer "
                       "runs (killed?); taking it over")
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": self.command}
        data = (json.dumps(record) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def release(self) -> None:
        """Delete the lock file and let go of the lock (nothing happens when it is not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink()  # delete while holding the lock: a waiting taker re-checks the inode
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)  # closing releases the flock
        if self._created_dir:
            try:
                self.run_dir.rmdir()  # only when empty: a run that failed before writing anything
            except OSError:
                pass


def _holder_of(fd: int) -> LockHolder | None:
    try:
        size = os.fstat(fd).st_size
        data = json.loads(os.pread(fd, max(size, 1), 0).decode("utf-8")) if size else None
        return None if data is None else LockHolder(int(data["pid"]), str(data["host"]), str(data["started"]),
                                                    str(data["command"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
