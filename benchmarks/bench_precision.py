"""One training step per model in fp32 and in bf16 autocast, and what precision ``auto`` picks.

Shows what emulated bf16 costs on a CPU without AVX512-BF16/AMX. Reproduce such a CPU on a
newer one by capping oneDNN (and ATen's own kernels) at AVX2:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_precision.py

Each step is a full optimizer step (losses, backward, AdamW, EMA update) of the ``--variant``
(default ``medcontext``), batch ``--batch`` crops, 3 classes; fp32 and bf16 steps alternate so that machine
noise hits both alike; the table has the median of ``--repeats`` steps after ``--warmup``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from medcontext import MedContext
from medcontext.engine.host.cpu_memory import describe_cpu_allocator
from medcontext.engine.host.precision import cpu_bf16_support, resolve_precision
from medcontext.models import create_model

#: each model's crop: the hippocampus study's for the CNN and UNETR, the smallest valid one else
DEFAULT_ROI = {"unet3d": (32, 48, 32), "unetr": (32, 48, 32), "swin_unetr": (64, 64, 64), "nnformer": (64, 64, 64)}

SMALL_OPTIONS = {
    "unet3d": {"size": "small"},
    "unetr": {"size": "small"},
    "swin_unetr": {"size": "small"},
    "nnformer": {"preset": "small"},
}


def _setup(name: str, roi: tuple[int, int, int], variant: str):
    torch.manual_seed(0)
    network = create_model(name, 1, 3, roi, **SMALL_OPTIONS[name])
    mc = MedContext(network, variant=variant, total_steps=1000, roi_size=roi, seed=0)
    optimizer = torch.optim.AdamW(mc.parameters(), lr=1e-4)
    return mc, optimizer


def _step(mc, optimizer, images, labels, step: int, dtype: torch.dtype | None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all threads of this process) of one optimizer step."""
    start, cpu = time.perf_counter(), time.process_time()
    optimizer.zero_grad(set_to_none=True)
    if dtype is None:
        losses = mc.losses(images, labels)
    else:
        with torch.autocast("cpu", dtype=dtype):
            losses = mc.losses(images, labels)
    losses.total.backward()
    optimizer.step()
    mc.update_teacher(step)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SMALL_OPTIONS), choices=list(SMALL_OPTIONS))
    parser.add_argument("--roi", type=int, nargs=3, default=None,
                        help="crop for every model (default: 32 48 32 for unet3d and unetr, 64^3 for the others)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=2, help="crops per step (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--variant", default="medcontext", choices=["medcontext", "baseline"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    support = cpu_bf16_support()
    auto = resolve_precision("auto", torch.device("cpu"))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}, "
        f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '(unset)')} "
        f"(ATen uses {torch.backends.cpu.get_cpu_capability()}), allocator: {describe_cpu_allocator()[0]}"
    )
    print(f"native bf16: {support.native} ({support.reason}); precision auto -> {auto.name}")
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    print(f"\n{args.variant} step, {args.batch} crops, median of {args.repeats} after {args.warmup} warm-up; "
          "wall seconds (CPU seconds of the process)\n")
    header = "| model | crop | " + " | ".join(f"{p} s/step" for p in args.precisions)
    print(header + (" | bf16 / fp32 (CPU) |" if len(args.precisions) == 2 else " |"))
    print("|---" * (len(args.precisions) + 2 + (len(args.precisions) == 2)) + "|")
    for name in args.models:
        roi = tuple(args.roi) if args.roi else DEFAULT_ROI[name]
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(args.batch, 1, *roi, generator=gen)
        labels = torch.randint(0, 3, (args.batch, 1, *roi), generator=gen)
        setups = {p: _setup(name, roi, args.variant) for p in args.precisions}
        times: dict[str, list[float]] = {p: [] for p in args.precisions}
        cpu: dict[str, list[float]] = {p: [] for p in args.precisions}
        for i in range(args.warmup + args.repeats):
            for p in args.precisions:
                seconds, cpu_seconds = _step(*setups[p], images, labels, i, dtypes[p])
                if i >= args.warmup:
                    times[p].append(seconds)
                    cpu[p].append(cpu_seconds)
        medians = {p: statistics.median(t) for p, t in times.items()}
        cpu_medians = {p: statistics.median(t) for p, t in cpu.items()}
        row = f"| {name} | {'x'.join(map(str, roi))} | " + " | ".join(
            f"{medians[p]:.2f} ({cpu_medians[p]:.2f})" for p in args.precisions)
        if len(args.precisions) == 2:
            row += f" | {medians['bf16'] / medians['fp32']:.1f} ({cpu_medians['bf16'] / cpu_medians['fp32']:.1f})"
        print(row + " |", flush=True)


if __name__ == "__main__":
    main()
