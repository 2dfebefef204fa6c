"""tcmalloc without LD_PRELOAD (re-executed once, opt-out, no loop, same for every torchrun rank)
and the CPU thread count (physical cores, shared by the processes of a node)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medcontext.engine.host import cpu_threads, tcmalloc
from medcontext.engine.host.cpu_threads import choose_threads, physical_cores
from medcontext.engine.host.tcmalloc import ENV_MARKER, ENV_SETTING, find_tcmalloc, reexec_with_tcmalloc

SRC = str(Path(__file__).resolve().parents[2] / "src")
# the subprocesses import the two modules without the package's __init__ (which imports torch:
# seconds per process); they need nothing else
BARE_IMPORT = (
    "import sys, types; "
    + "".join(f"m = types.ModuleType('{name}'); m.__path__ = [{path!r}]; sys.modules['{name}'] = m; "
              for name, path in (("medcontext", f"{SRC}/medcontext"), ("medcontext.engine", f"{SRC}/medcontext/engine")))
    + "import medcontext.engine.host.tcmalloc; "
)


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, executable, argv, env):
        self.calls.append((executable, list(argv), dict(env)))


@pytest.fixture
def fake_lib(tmp_path, monkeypatch):
    monkeypatch.setattr(tcmalloc, "preloaded_allocator", lambda: None)
    lib = tmp_path / "libtcmalloc.so.4"
    lib.write_bytes(b"\x7fELF")
    return lib


def test_reexecutes_once_with_the_library_preloaded_and_the_same_arguments(fake_lib):
    execve = _Recorder()
    argv = [sys.executable, "-m", "medcontext", "train", "--out", "run dir"]
    reexec_with_tcmalloc(argv, {"LD_PRELOAD": "/opt/other.so", "PATH": "/bin"}, execve=execve, library=fake_lib)
    (executable, new_argv, env), = execve.calls
    assert executable == sys.executable and new_argv == argv
    assert env["LD_PRELOAD"] == f"{fake_lib}:/opt/other.so" and env[ENV_MARKER] == "1" and env["PATH"] == "/bin"
    # the re-executed process never does it again, even when the loader refused the library
    assert reexec_with_tcmalloc(argv, env, execve=execve, library=fake_lib) == "reexecuted"
    assert len(execve.calls) == 1


@pytest.mark.parametrize("value", ["0", "off", "false", "no"])
def test_opt_out_by_environment(fake_lib, value):
    execve = _Recorder()
    assert reexec_with_tcmalloc(["x"], {ENV_SETTING: value}, execve=execve, library=fake_lib) == "off"
    assert execve.calls == []


def test_nothing_to_do_when_an_allocator_is_preloaded_or_none_is_installed(fake_lib, monkeypatch, tmp_path):
    execve = _Recorder()
    assert reexec_with_tcmalloc(["x"], {ENV_SETTING: str(tmp_path / "absent.so")}, execve=execve) == "missing"
    monkeypatch.setattr(tcmalloc, "preloaded_allocator", lambda: "jemalloc")
    assert reexec_with_tcmalloc(["x"], {}, execve=execve, library=fake_lib) == "preloaded"
    assert execve.calls == []
    empty = tmp_path / "empty"
    empty.mkdir()
    in_env = find_tcmalloc(search=())  # the Python environment's own lib/ is searched first
    assert find_tcmalloc(search=(str(empty),)) == in_env
    assert find_tcmalloc(search=(str(fake_lib.parent),)) == (in_env or fake_lib)


def test_every_torchrun_rank_takes_the_same_decision(fake_lib):
    """Ranks differ only in RANK/LOCAL_RANK: each re-executes itself identically (same pid,
    before the process group exists), so no rank waits for one that did not."""
    runs = []
    for rank in ("0", "1"):
        execve = _Recorder()
        env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": "29500"}
        reexec_with_tcmalloc([sys.executable, "-u", "-m", "medcontext", "train"], env, execve=execve, library=fake_lib)
        (_, argv, new_env), = execve.calls
        runs.append((argv, {k: v for k, v in new_env.items() if k not in ("RANK", "LOCAL_RANK")}))
    assert runs[0] == runs[1]


def test_a_refused_library_does_not_loop(tmp_path):
    """A real re-execution with a file the dynamic loader cannot preload: one re-exec, then on."""
    bogus = tmp_path / "libtcmalloc_bogus.so"
    bogus.write_text("not a library")
    code = BARE_IMPORT + ("from medcontext.engine.host.tcmalloc import reexec_with_tcmalloc as r; print('start', flush=True); "
                          "print('result', r())")
    env = {**os.environ, "PYTHONPATH": SRC, ENV_SETTING: str(bogus)}
    env.pop(ENV_MARKER, None)
    env.pop("LD_PRELOAD", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["start", "start", "result", "reexecuted"]


@pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc is not installed (apt install libgoogle-perftools4)")
def test_a_process_runs_under_tcmalloc_after_the_reexecution_unless_opted_out():
    code = BARE_IMPORT + ("import os; from medcontext.engine.host.tcmalloc import reexec_with_tcmalloc as r; r(); "
                          "import medcontext.engine.host.cpu_memory as m; "
                          f"print(m.preloaded_allocator(), os.environ.get('{ENV_MARKER}'))")
    env = {**os.environ, "PYTHONPATH": SRC}
    for key in (ENV_MARKER, "LD_PRELOAD", ENV_SETTING):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["tcmalloc", "1"], done.stderr
    done = subprocess.run([sys.executable, "-c", code], env={**env, ENV_SETTING: "0"}, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == ["None", "None"], done.stderr


@pytest.mark.parametrize("argv, reexecutes", [(["train", "--out", "r"], True), (["demo", "--quick"], True),
                                              (["train", "--print-config"], False), (["data", "check", "x"], False)])
def test_the_cli_reexecutes_training_commands_only(monkeypatch, argv, reexecutes):
    from medcontext import cli

    calls = []
    monkeypatch.setattr(tcmalloc, "reexec_with_tcmalloc", lambda: calls.append(1) or "missing")
    monkeypatch.setattr(cli, "_COMMANDS", {name: (lambda args: 0) for name in cli._COMMANDS})
    monkeypatch.setattr(sys, "argv", ["medcontext", *argv])
    assert cli.main() == 0
    assert calls == ([1] if reexecutes else [])
    assert cli.main(argv) == 0 and len(calls) == (1 if reexecutes else 0)  # never when called as a function


def test_the_install_hint_is_given_once_per_process(monkeypatch):
    monkeypatch.setattr(tcmalloc, "_hint_shown", False)
    monkeypatch.setattr(tcmalloc, "preloaded_allocator", lambda: None)
    monkeypatch.setattr(tcmalloc, "find_tcmalloc", lambda: None)
    monkeypatch.setattr(tcmalloc, "describe_cpu_allocator", lambda: ("glibc malloc", "slow steps"))
    first, second = tcmalloc.allocator_line({}), tcmalloc.allocator_line({})
    assert "libgoogle-perftools4" in first and second == "glibc malloc"


CPUINFO = "\n\n".join(
    f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu % 2}\nflags\t\t: avx2" for cpu in range(4)
)  # 2 cores with 2 hyper-threads each


def test_physical_cores_count_cores_not_hyperthreads_and_obey_quotas(tmp_path, monkeypatch):
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    monkeypatch.setattr(cpu_threads, "_cpus_of_this_process", lambda: {0, 1, 2, 3})
    assert physical_cores(str(tmp_path / "cpuinfo"), str(tmp_path / "no-cgroup")) == 2
    monkeypatch.setattr(cpu_threads, "_cpus_of_this_process", lambda: {0})
    assert physical_cores(str(tmp_path / "cpuinfo"), str(tmp_path / "no-cgroup")) == 1
    monkeypatch.setattr(cpu_threads, "_cpus_of_this_process", lambda: {0, 1, 2, 3})
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert physical_cores(str(tmp_path / "cpuinfo"), str(tmp_path / "cpu.max")) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert physical_cores(str(tmp_path / "cpuinfo"), str(tmp_path / "cpu.max")) == 2


def test_processes_of_a_node_share_the_cores():
    assert choose_threads(None, {}, cores=8) == (8, "8 physical core(s)")
    assert choose_threads(None, {"LOCAL_WORLD_SIZE": "2"}, cores=2)[0] == 1  # 2 x 1 on 2 cores, not 2 x 2
    assert choose_threads(None, {"LOCAL_WORLD_SIZE": "4"}, cores=2)[0] == 1  # never 0
    assert choose_threads(None, {"LOCAL_WORLD_SIZE": "2"}, cores=16)[0] == 8
    assert choose_threads(None, {"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}, cores=16) == (3, "OMP_NUM_THREADS")
    assert choose_threads(5, {"OMP_NUM_THREADS": "3"}, cores=16) == (5, "train.threads")


def test_training_processes_on_one_machine_share_the_cores(tmp_path):
    """A second training process (here a stand-in with a live pid) halves the threads; when it
    ends they come back; files of dead processes are ignored and removed."""
    import torch

    from medcontext.engine.host.cpu_threads import CpuShare

    original = torch.get_num_threads()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with CpuShare(None, tmp_path, environ={}, cores=2) as share:
            assert share.threads == 2 and torch.get_num_threads() == 2
            assert (tmp_path / str(os.getpid())).is_file()
            (tmp_path / str(other.pid)).touch()
            assert share.refresh() == 1 and torch.get_num_threads() == 1  # 2 processes x 1 thread on 2 cores
            assert "shared by 2 training processes" in share.reason
            other.kill()
            other.wait()
            assert share.refresh() == 2 and not (tmp_path / str(other.pid)).exists()
            torch.set_num_threads(1)
        assert not (tmp_path / str(os.getpid())).exists()
        assert torch.get_num_threads() == original  # the caller's setting comes back
        (tmp_path / "12345678").touch()
        with CpuShare(3, tmp_path, environ={}, cores=2) as fixed:  # an explicit choice stays
            assert fixed.refresh() == 3 and fixed.fixed
    finally:
        other.kill()
        torch.set_num_threads(original)
