"""The run-folder writer lock: one holder, named to a second one; stale locks taken over; bad folders named."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from medcontext.io import run_lock
from medcontext.io.run_lock import LOCK_NAME, RunFolderBusyError, RunFolderError, RunFolderLock, read_holder

_HOLD = """
import sys, time
from medcontext.io.run_lock import RunFolderLock
with RunFolderLock(sys.argv[1], "medcontext train"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_with_the_holders_pid_and_host(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusyError) as info:
            RunFolderLock(tmp_path / "run", "medcontext evaluate").acquire()
        message = str(info.value)
        assert f"PID {holder.pid} on host {socket.gethostname()} (medcontext train, since " in message
        assert "Only one process may write a run folder" in message
        assert info.value.holder.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # killed with -9: its lock file stays, but the lock is free; the next writer takes it over with a warning
    assert read_holder(tmp_path / "run").pid == holder.pid
    warnings = []
    with RunFolderLock(tmp_path / "run", "medcontext train --resume", warn=warnings.append) as lock:
        assert lock.took_over.pid == holder.pid
        assert read_holder(tmp_path / "run").pid == os.getpid()
    assert len(warnings) == 1 and f"stale lock of PID {holder.pid}" in warnings[0] and "taking it over" in warnings[0]
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path, dead_pid):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("x: 1\n")
    record = {"pid": dead_pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00Z", "command": "medcontext train"}
    (run / LOCK_NAME).write_text(json.dumps(record))
    warnings = []
    with RunFolderLock(run, warn=warnings.append):
        pass
    assert f"PID {dead_pid} on host {socket.gethostname()}" in warnings[0]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # only the lock file went


def test_without_flock_the_file_content_decides(tmp_path, dead_pid, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks here")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    run = tmp_path / "run"
    run.mkdir()
    alive = {"pid": os.getppid(), "host": socket.gethostname(), "started": "t", "command": "medcontext train"}
    (run / LOCK_NAME).write_text(json.dumps(alive))
    with pytest.raises(RunFolderBusyError, match=f"PID {os.getppid()} on host"):
        RunFolderLock(run).acquire()
    (run / LOCK_NAME).write_text(json.dumps({**alive, "pid": dead_pid}))
    with RunFolderLock(run, warn=lambda line: None) as lock:
        assert lock.took_over.pid == dead_pid


def test_a_lock_that_created_the_folder_removes_it_when_nothing_was_written(tmp_path):
    with RunFolderLock(tmp_path / "new" / "run"):
        assert (tmp_path / "new" / "run" / LOCK_NAME).is_file()
    assert not (tmp_path / "new" / "run").exists()
    with RunFolderLock(tmp_path / "kept"):
        (tmp_path / "kept" / "split.json").write_text("{}")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["split.json"]


def test_a_file_or_a_read_only_folder_is_named_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match=f"the run folder {tmp_path / 'file'} is an existing file"):
        RunFolderLock(tmp_path / "file").acquire()
    with pytest.raises(RunFolderError, match="a part of the path is an existing file"):
        RunFolderLock(tmp_path / "file" / "run").acquire()

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(run_lock, "open", read_only, raising=False)
    with pytest.raises(RunFolderError, match=f"the run folder {tmp_path / 'ro'} cannot be written: the file system is "
                                             "mounted read-only"):
        RunFolderLock(tmp_path / "ro").acquire()
