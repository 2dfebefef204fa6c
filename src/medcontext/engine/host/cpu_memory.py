"""CPU memory allocation and training speed: which allocator runs, and keeping freed memory.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves every block above
its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages and unmaps them on ``free``,
and it trims the top of the heap back to the kernel. A training step allocates and frees the
same activation tensors every step, so every step page-faults its activation memory in
again and the kernel zeroes it. The cost grows with the memory a step keeps alive: a
MedContext step holds two student graphs and pays three to four times the baseline's page
faults (BENCHMARKS.md, "CPU memory allocator").

Two remedies, both changing speed and memory, never results:

* preload tcmalloc (``LD_PRELOAD=.../libtcmalloc.so.4``): keeps and reuses freed pages with
  little extra memory; the recommended setup for CPU training (:func:`preloaded_allocator`
  tells whether one is active);
* :func:`retain_freed_cpu_memory` (setting ``train.retain_cpu_memory``): asks glibc to serve
  large blocks from the heap and never to trim it. As fast, but glibc's heap fragments: the
  peak resident memory can double (SwinUNETR-small, four 64^3 crops: 17 GB against 8 GB).
"""

from __future__ import annotations

import ctypes
import platform
import sys

__all__ = ["preloaded_allocator", "describe_cpu_allocator", "retain_freed_cpu_memory"]

# shared-object name fragment -> allocator name, for allocators that replace malloc when preloaded
_ALLOCATORS = {"libtcmalloc": "tcmalloc", "libjemalloc": "jemalloc", "libmimalloc": "mimalloc"}

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER = -1  # M_TRIM_THRESHOLD = -1 disables trimming (mallopt(3)); a positive int caps at 2 GiB

_applied = False


def _uses_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def retain_freed_cpu_memory() -> bool:
    """Make glibc ``malloc`` keep and reuse freed memory (process-wide, idempotent).

    Sets ``M_MMAP_MAX=0`` (large blocks from the heap, not from fresh ``mmap`` pages) and
    ``M_TRIM_THRESHOLD=-1`` (freed heap memory is never returned to the kernel).
    The process's resident memory then stays at its peak instead of shrinking between steps.

    Returns:
        ``True`` when glibc accepted the settings (now or in an earlier call), ``False`` where
        they do not apply (not Linux/glibc, or glibc refused one of them).
    """
    global _applied
    if _applied:
        return True
    if not _uses_glibc():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER) == 1
    return _applied


def preloaded_allocator(maps_path: str = "/proc/self/maps") -> str | None:
    """Name of a malloc replacement mapped into this process (``tcmalloc``, ``jemalloc`` or
    ``mimalloc``), or ``None`` (the C library's own malloc, or not Linux)."""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as maps:
            text = maps.read()
    except OSError:
        return None
    for fragment, name in _ALLOCATORS.items():
        if fragment in text:
            return name
    return None


def describe_cpu_allocator() -> tuple[str, str | None]:
    """One-line description of the CPU allocator, and a hint when steps will page-fault.

    Returns:
        ``(description, hint)``; ``hint`` (how to get faster CPU steps) is ``None`` unless
        glibc malloc runs with its defaults or jemalloc with its default purging.
    """
    remedy = (
        "preload tcmalloc (LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4 on Debian/Ubuntu, package "
        "libgoogle-perftools4) or set train.retain_cpu_memory=true (more peak memory); README: 'CPU speed'"
    )
    name = preloaded_allocator()
    if name == "jemalloc":  # measured: with its default purging, as slow as glibc here
        return "jemalloc (preloaded)", f"jemalloc with its default settings was measured as slow as glibc; {remedy}"
    if name is not None:
        return f"{name} (preloaded)", None
    if _applied:
        return "glibc malloc, freed memory retained (train.retain_cpu_memory)", None
    if not _uses_glibc():
        return "the C library's malloc", None
    return "glibc malloc", (
        "with glibc's malloc every CPU step page-faults its activation memory again (measured 1.1-2.8x "
        f"slower steps at 64^3 crops); {remedy}"
    )
