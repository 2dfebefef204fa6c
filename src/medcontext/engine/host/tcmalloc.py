"""tcmalloc for CPU training without typing ``LD_PRELOAD``: re-execute once with it preloaded.

CPU training steps are 1.4-2.6x faster with tcmalloc than with glibc's malloc
(:mod:`medcontext.engine.host.cpu_memory`, BENCHMARKS.md). An allocator can only replace malloc
when it is loaded before the program starts, so ``medcontext train``, ``demo`` and
``experiment`` call :func:`reexec_with_tcmalloc` first: where tcmalloc is installed and no
malloc replacement is loaded yet, the process replaces itself (``os.execve``, same process
id, same arguments) with ``LD_PRELOAD`` naming the library. This happens once at most: the
new process carries ``MEDCONTEXT_TCMALLOC_REEXEC=1`` and never re-executes again, even if the
dynamic loader refused the library.

``MEDCONTEXT_TCMALLOC`` controls it: unset or ``auto`` finds the library in the usual places,
``0``/``off``/``no``/``false`` turns the re-execution off, a path names the library to use.

Under ``torchrun`` every process of the group runs the same command with the same
environment, so every process on a node takes the same decision before the process group
exists (an ``execve`` keeps the process id torchrun watches). A run whose ``torchrun`` was
started with ``LD_PRELOAD`` already set re-executes nothing. The allocator changes speed and
memory, never results, so nodes with and without tcmalloc still train identically.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys
from pathlib import Path
from typing import Callable, Mapping, MutableMapping

from medcontext.engine.host.cpu_memory import describe_cpu_allocator, preloaded_allocator

__all__ = ["ENV_SETTING", "ENV_MARKER", "find_tcmalloc", "reexec_with_tcmalloc", "allocator_line", "INSTALL_HINT"]

ENV_SETTING = "MEDCONTEXT_TCMALLOC"
ENV_MARKER = "MEDCONTEXT_TCMALLOC_REEXEC"
_OFF = {"0", "off", "no", "false", "never"}
INSTALL_HINT = (
    "install tcmalloc for 1.4-2.6x faster CPU steps (Debian/Ubuntu: apt install libgoogle-perftools4; "
    "Fedora: dnf install gperftools-libs; conda: conda install gperftools); medcontext then uses it "
    "automatically (README: 'CPU speed')"
)
_SEARCH = (
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
    "/lib/x86_64-linux-gnu", "/lib64",
)
_NAMES = ("libtcmalloc.so.4", "libtcmalloc_minimal.so.4", "libtcmalloc.so", "libtcmalloc_minimal.so")

_hint_shown = False


def find_tcmalloc(search: tuple[str, ...] | None = None) -> Path | None:
    """The tcmalloc shared library to preload, or ``None`` where none is installed.

    Looks in the Python environment's ``lib`` (conda), the usual system library folders and
    the linker cache, preferring ``libtcmalloc.so.4`` over the minimal variant.
    """
    folders = [str(Path(sys.prefix) / "lib"), *(search if search is not None else _SEARCH)]
    for name in _NAMES:
        for folder in folders:
            candidate = Path(folder) / name
            if candidate.is_file():
                return candidate
    if search is None:
        found = ctypes.util.find_library("tcmalloc")
        if found:
            for folder in folders:
                matches = glob.glob(str(Path(folder) / f"{found}*"))
                if matches:
                    return Path(matches[0])
    return None


def _setting(environ: Mapping[str, str]) -> str:
    return environ.get(ENV_SETTING, "auto").strip() or "auto"


def reexec_with_tcmalloc(
    argv: list[str] | None = None,
    environ: MutableMapping[str, str] | None = None,
    *,
    execve: Callable[[str, list[str], Mapping[str, str]], object] = os.execve,
    library: Path | None = None,
) -> str:
    """Replace this process with the same command under ``LD_PRELOAD=<tcmalloc>``, once.

    Call it before any work (it returns only when it does not re-execute).

    Args:
        argv: the command line to run again (default ``sys.orig_argv``: the interpreter's
            own arguments, e.g. ``python -m medcontext train ...``).
        environ: the environment (default ``os.environ``).
        execve: the function that replaces the process (tests pass a recorder).
        library: the library to preload (default: ``MEDCONTEXT_TCMALLOC`` or :func:`find_tcmalloc`).

    Returns:
        Why it did not re-execute: ``"off"`` (``MEDCONTEXT_TCMALLOC=0``), ``"preloaded"`` (a
        malloc replacement is already loaded), ``"reexecuted"`` (this is the re-executed
        process), ``"missing"`` (no tcmalloc found), ``"unsupported"`` (not Linux) or
        ``"failed"`` (``execve`` raised; the command continues with glibc malloc).
    """
    environ = os.environ if environ is None else environ
    setting = _setting(environ)
    if setting.lower() in _OFF:
        return "off"
    if environ.get(ENV_MARKER):
        return "reexecuted"
    if not sys.platform.startswith("linux"):
        return "unsupported"
    if preloaded_allocator() is not None:
        return "preloaded"
    if library is None:
        library = Path(setting) if setting.lower() != "auto" else find_tcmalloc()
    if library is None or not Path(library).is_file():
        return "missing"
    argv = list(argv if argv is not None else getattr(sys, "orig_argv", sys.argv))
    env = dict(environ)
    previous = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{library}:{previous}" if previous else str(library)
    env[ENV_MARKER] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        execve(sys.executable, argv, env)
    except OSError:
        return "failed"
    return "reexecuted"  # only reached when a test's execve returns


def allocator_line(environ: Mapping[str, str] | None = None) -> str:
    """The allocator of this CPU process for the start of a run, e.g.
    ``tcmalloc (preloaded automatically; MEDCONTEXT_TCMALLOC=0 turns it off)``.

    Where no tcmalloc is installed, the first call in a process adds how to get it; later
    calls (the demo's second run, a study's next run) do not repeat it.
    """
    global _hint_shown
    environ = os.environ if environ is None else environ
    description, hint = describe_cpu_allocator()
    name = preloaded_allocator()
    if name is not None and environ.get(ENV_MARKER):
        return f"{name} (preloaded automatically; {ENV_SETTING}=0 turns it off)"
    if name is None and environ.get(ENV_MARKER):
        description += " (the re-execution with tcmalloc did not load it: check LD_PRELOAD)"
    if hint is None:
        return description
    if _hint_shown:
        return description
    _hint_shown = True
    if _setting(environ).lower() in _OFF:
        return f"{description} ({ENV_SETTING}=0); note: {hint}"
    if name is None and find_tcmalloc() is None:
        return f"{description}; note: {INSTALL_HINT}"
    return f"{description}; note: {hint}"
