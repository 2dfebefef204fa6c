"""Atomic writes: umask permissions, full disks, stale temporaries of killed writers."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import medcontext.io.atomic as atomic
from medcontext.io.atomic import (
    DiskFullError,
    atomic_path,
    atomic_write,
    is_disk_full,
    remove_stale_temporaries,
    write_text_atomic,
)
from medcontext.engine.checkpoint import read_checkpoint, save_checkpoint


@pytest.fixture
def umask():
    """``umask(value)`` sets the process umask for the test; the old one is restored after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_umask_permissions(tmp_path, umask, mask, expected):
    umask(mask)
    text = write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
    binary = atomic_write(tmp_path / "last.pt", lambda handle: torch.save({"w": torch.zeros(3)}, handle))
    with atomic_path(tmp_path / "pred.nii.gz", suffix=".nii.gz") as tmp:
        with open(tmp, "wb") as handle:  # a library that opens the temp path itself (nibabel, matplotlib)
            handle.write(b"data")
    assert [_mode(p) for p in (text, binary, tmp_path / "pred.nii.gz")] == [expected] * 3


def test_rewriting_a_file_applies_the_current_umask(tmp_path, umask):
    umask(0o077)
    write_text_atomic(tmp_path / "split.json", "{}")
    umask(0o022)
    write_text_atomic(tmp_path / "split.json", "{}\n")
    assert _mode(tmp_path / "split.json") == 0o644


def test_disk_full_during_a_checkpoint_names_the_file_and_size_and_keeps_the_old_one(tmp_path, monkeypatch, full_disk):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(1000)})
    monkeypatch.setattr(atomic, "open", full_disk(2000), raising=False)
    with pytest.raises(DiskFullError) as info:
        save_checkpoint(path, {"step": 2, "w": torch.zeros(250_000)})
    monkeypatch.undo()
    err = info.value
    message = str(err)
    assert str(path) in message and "1.0 MB" in message and "keeps its previous content" in message
    assert err.errno == errno.ENOSPC and err.needed == 1_000_000 and err.written == 2000 and err.path == path
    assert is_disk_full(err.__cause__)  # torch's RuntimeError over the OSError
    assert read_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # the partial temporary file is gone


def test_disk_full_on_a_new_file_and_other_errors(tmp_path, monkeypatch):
    def full(handle):
        handle.write(b"x" * 10)
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with pytest.raises(DiskFullError, match="was not created") as info:
        atomic_write(tmp_path / "new.bin", full)
    assert "more than the 0.0 MB written" in str(info.value) and os.strerror(errno.EDQUOT) in str(info.value)
    assert not (tmp_path / "new.bin").exists() and os.listdir(tmp_path) == []
    copy = pickle.loads(pickle.dumps(info.value))  # errors cross process boundaries in distributed runs
    assert isinstance(copy, DiskFullError) and str(copy) == str(info.value) and copy.path == info.value.path

    def other(handle):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "new.bin", other)
    assert not isinstance(info.value, DiskFullError)


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("unshare") is None, reason="Linux unshare needed")
def test_a_really_full_tmpfs_keeps_the_last_checkpoint(tmp_path):
    """A 1 MB tmpfs in a private mount namespace (skipped where user namespaces are not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    script = textwrap.dedent(f"""
        import torch
        from medcontext.io.atomic import DiskFullError
        from medcontext.engine.checkpoint import read_checkpoint, save_checkpoint
        save_checkpoint({str(mount / 'last.pt')!r}, {{"step": 1, "w": torch.ones(1000)}})
        try:
            save_checkpoint({str(mount / 'last.pt')!r}, {{"step": 2, "w": torch.zeros(1_000_000)}})
        except DiskFullError as err:
            print("ERROR", err)
        print("STEP", read_checkpoint({str(mount / 'last.pt')!r})["step"])
        import os; print("FILES", sorted(os.listdir({str(mount)!r})))
    """)
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not allowed here: " + probe.stderr.decode().strip())
    command = f"mount -t tmpfs -o size=1m tmpfs {mount} && exec {sys.executable} -c \"$SCRIPT\""
    env = {**os.environ, "SCRIPT": script, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"ERROR cannot write {mount / 'last.pt'}: no space left" in out and "it needs about 4.0 MB" in out
    assert "STEP 1" in out and "FILES ['last.pt']" in out


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path, dead_pid):
    dead, alive = dead_pid, os.getppid()
    names = {
        f".last.pt.{dead}.0123456789ab.tmp": True,  # killed during a checkpoint write
        f".pred.nii.gz.{dead}.abcdefabcdef.tmp.nii.gz": True,
        ".split.json.k2j_8a0q.tmp": True,  # an older release's mkstemp name
        f".last.pt.{alive}.0123456789ab.tmp": False,  # a process that still runs
        "last.pt": False,
        "notes.tmp": False,
        ".hidden": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"12345")
    (tmp_path / f".sub.{dead}.0123456789ab.tmp").mkdir()  # folders are never touched
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p, _ in removed) == sorted(n for n, stale in names.items() if stale)
    assert all(size == 5 for _, size in removed)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([n for n, stale in names.items() if not stale] + [f".sub.{dead}.0123456789ab.tmp"])
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_own_temporary_names_are_recognised_by_the_clean_up(tmp_path):
    seen = []

    def writer(handle):
        seen.extend(p.name for p in tmp_path.iterdir())
        handle.write(b"x")

    atomic_write(tmp_path / "last.pt", writer)
    assert len(seen) == 1 and atomic._TEMP_NAME.match(seen[0])
    assert seen[0].startswith(f".last.pt.{os.getpid()}.")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    write_text_atomic(target, "old")

    def fail(handle):
        handle.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
