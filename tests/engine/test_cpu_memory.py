"""The CPU allocator: detection of a preloaded malloc, the glibc hint, and retained memory."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from medcontext.engine.cpu_memory import preloaded_allocator

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="retain_freed_cpu_memory acts on glibc malloc only (Linux)",
)

# Allocates, touches and frees a 128 MB tensor (32768 pages) four times after two warm-up
# rounds; prints the minor page faults of those four rounds.
_SCRIPT = """
import resource, sys, torch
from medcontext.engine.cpu_memory import retain_freed_cpu_memory
from medcontext.engine.cpu_memory import describe_cpu_allocator
if sys.argv[1] == "retain":
    assert retain_freed_cpu_memory() and retain_freed_cpu_memory()
print(describe_cpu_allocator())
def round_trip():
    x = torch.ones(32 * 1024 * 1024)
    del x
round_trip()
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    round_trip()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(mode: str) -> tuple[str, int]:
    """(describe_cpu_allocator() as printed, minor faults of the four rounds) in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True, env=env)
    lines = done.stdout.strip().splitlines()
    return lines[-2], int(lines[-1])


@glibc_only
def test_freed_memory_is_reused_without_page_faults():
    pages_per_round = 128 * 1024 * 1024 // 4096
    described, faults = _run("system")
    assert faults >= 4 * pages_per_round * 0.9  # glibc default: fresh mmap pages every round
    assert "('glibc malloc', " in described and "tcmalloc" in described  # the hint names the fix
    described, faults = _run("retain")
    assert faults < pages_per_round * 0.1  # retained: the warm-up rounds' pages are reused
    assert described == "('glibc malloc, freed memory retained (train.retain_cpu_memory)', None)"


def test_preloaded_allocator_is_read_from_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert preloaded_allocator(str(maps)) is None
    maps.write_text(maps.read_text() + "7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libtcmalloc.so.4.5.10\n")
    assert preloaded_allocator(str(maps)) == "tcmalloc"
    assert preloaded_allocator(str(tmp_path / "missing")) is None
