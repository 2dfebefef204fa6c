"""One writer per run folder: a second `train` (or `--resume`) on a folder in use is refused, naming the
holder, and leaves the first run's files intact; a lock left by kill -9 does not block the folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from medcontext.cli import main
from medcontext.engine.checkpoint import read_checkpoint
from medcontext.engine.config import load_config
from medcontext.io.run_lock import LOCK_NAME, read_holder


def _wait_for(predicate, process, seconds=240.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert process.poll() is None, f"the first training ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "the first training did not start writing its run folder"
        time.sleep(0.2)


def test_a_second_training_on_a_folder_in_use_is_refused_and_the_first_run_stays_intact(
        phantom_dir, train_argv, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "medcontext", *train_argv(phantom_dir, out, steps=100000)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MEDCONTEXT_TCMALLOC": "0"})
    try:
        records = ("config.yaml", "split.json", "dataset.json")
        # every record the first run writes at its start, not only the first of them (no race with its writes)
        _wait_for(lambda: all((out / name).is_file() for name in records) and (read_holder(out) or 0)
                  and read_holder(out).pid == first.pid, first)
        before = {name: (out / name).read_bytes() for name in records}
        for extra in ([], ["--resume"]):
            capsys.readouterr()
            second = train_argv(phantom_dir, out, *extra, "--set", "data.train_cases=1", steps=3)
            second[second.index("--seed") + 1] = "1"
            assert main(second) == 2
            err = capsys.readouterr().err
            assert f"{out} is in use: PID {first.pid} on host {socket.gethostname()} (medcontext train, since" in err, err
            assert "Traceback" not in err
        assert {name: (out / name).read_bytes() for name in before} == before
    finally:
        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=240)
    assert first.returncode == 143, first_err
    assert load_config(out / "config.yaml").train.seed == 0
    assert read_checkpoint(out / "last.pt")["config"]["train"]["seed"] == 0
    assert not (out / LOCK_NAME).exists()  # released on SIGTERM


def test_a_lock_left_by_a_killed_training_is_taken_over_with_a_warning(phantom_dir, train_argv, tmp_path, capsys,
                                                                       dead_pid):
    out = tmp_path / "run"
    assert main(train_argv(phantom_dir, out, "--stop-after", "1", steps=2)) == 0
    record = {"pid": dead_pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00Z",
              "command": "medcontext train"}
    (out / LOCK_NAME).write_text(json.dumps(record))  # what kill -9 of a training leaves
    capsys.readouterr()
    assert main(train_argv(phantom_dir, out, "--resume", steps=2)) == 0
    err = capsys.readouterr().err
    assert f"{out} had a stale lock of PID {dead_pid} on host {socket.gethostname()}" in err
    assert read_checkpoint(out / "last.pt")["step"] == 2 and not (out / LOCK_NAME).exists()


def test_the_lock_is_released_when_a_training_fails(phantom_dir, train_argv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(phantom_dir, out, "--set", "optim.lr=-1", steps=2)) == 2
    assert not out.exists()  # refused before anything was written: no lock file and no empty folder left
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    assert main(train_argv(phantom_dir, tmp_path / "file", steps=2)) == 2
    assert f"the run folder {tmp_path / 'file'} is an existing file, not a folder" in capsys.readouterr().err
