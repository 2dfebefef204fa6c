"""The CPU allocator: detection of a preloaded malloc, the glibc hint, and retained memory."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from medcontext.engine.host.cpu_memory import preloaded_allocator

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="retain_freed_cpu_memory acts on glibc malloc only (Linux)",
)


def _huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


# with transparent huge pages always on, one fault maps 2 MB, so counting faults measures nothing
four_kb_faults = pytest.mark.skipif(_huge_pages_always(), reason="transparent huge pages are 'always' on here")

# Allocates, touches and frees a 128 MB tensor (32768 pages) in five rounds after two warm-up
# rounds; prints the allocator description, then the minor page faults of each round.
_SCRIPT = """
import resource, sys, torch
from medcontext.engine.host.cpu_memory import describe_cpu_allocator, retain_freed_cpu_memory
if sys.argv[1] == "retain":
    assert retain_freed_cpu_memory() and retain_freed_cpu_memory()
print(describe_cpu_allocator())
def round_trip():
    x = torch.ones(32 * 1024 * 1024)
    del x
round_trip()
round_trip()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    round_trip()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(" ".join(map(str, faults)))
"""


def _run(mode: str) -> tuple[str, list[int]]:
    """(describe_cpu_allocator() as printed, minor faults per round) in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True, env=env)
    lines = done.stdout.strip().splitlines()
    return lines[-2], [int(f) for f in lines[-1].split()]


@glibc_only
@four_kb_faults
def test_freed_memory_is_reused_without_page_faults():
    pages_per_round = 128 * 1024 * 1024 // 4096
    described, faults = _run("system")
    assert min(faults) >= pages_per_round * 0.9  # glibc default: fresh mmap pages in every round
    assert "('glibc malloc', " in described and "tcmalloc" in described  # the hint names the fix
    described, faults = _run("retain")
    # retained: the rounds reuse freed heap pages (a round may still grow the heap once when a small
    # allocation has split the freed block, so the median round is the measure)
    assert sorted(faults)[2] < pages_per_round * 0.1
    assert described == "('glibc malloc, freed memory retained (train.retain_cpu_memory)', None)"


def test_preloaded_allocator_is_read_from_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert preloaded_allocator(str(maps)) is None
    maps.write_text(maps.read_text() + "7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libtcmalloc.so.4.5.10\n")
    assert preloaded_allocator(str(maps)) == "tcmalloc"
    assert preloaded_allocator(str(tmp_path / "missing")) is None
