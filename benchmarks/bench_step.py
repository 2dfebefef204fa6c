"""Step time of baseline vs MedContext training steps, per model (the cost bound of docs/method.md).

A MedContext step runs two student forward/backward passes and one teacher forward: 7 units
against 3 for a baseline step (ratio bound 2.33). The script times full optimizer steps
(losses, backward, AdamW step, EMA update) of ``baseline`` and ``medcontext`` with both
student-pass forms, interleaving the three so that machine noise hits all alike, and prints a
markdown table of medians, with the memory each step page-faulted in (GB, minor faults x
page size). The allocator matters on the CPU (medcontext.engine.host.cpu_memory): run it as is
(glibc malloc), under ``LD_PRELOAD=.../libtcmalloc.so.4``, or with ``--retain-memory``.

    python benchmarks/bench_step.py --models unetr swin_unetr unet3d nnformer --roi 64 --batch 2
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import torch

from medcontext import MedContext
from medcontext.engine.host.cpu_memory import describe_cpu_allocator, retain_freed_cpu_memory
from medcontext.models import create_model

PAGE_BYTES = resource.getpagesize()

SMALL_OPTIONS = {
    "unetr": {"size": "small"},
    "swin_unetr": {"size": "small"},
    "unet3d": {"size": "small"},
    "nnformer": {"preset": "small"},
}


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _step(mc: MedContext, optimizer, images, labels, step: int) -> tuple[float, float]:
    """Seconds and GB page-faulted in by one full optimizer step."""
    faults = _minor_faults()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    mc.losses(images, labels).total.backward()
    optimizer.step()
    mc.update_teacher(step)
    return time.perf_counter() - start, (_minor_faults() - faults) * PAGE_BYTES / 1e9


def bench_model(name: str, roi: int, batch: int, repeats: int, warmup: int, classes: int) -> dict:
    roi_size = (roi, roi, roi)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, *roi_size, generator=gen)
    labels = torch.randint(0, classes, (batch, 1, *roi_size), generator=gen)
    setups = {}
    for label, variant, passes in [
        ("baseline", "baseline", "separate"),
        ("separate", "medcontext", "separate"),
        ("concat", "medcontext", "concat"),
    ]:
        torch.manual_seed(0)
        network = create_model(name, 1, classes, roi_size, **SMALL_OPTIONS[name])
        mc = MedContext(network, variant=variant, total_steps=10_000, roi_size=roi_size, student_passes=passes, seed=0)
        setups[label] = (mc, torch.optim.AdamW(mc.parameters(), lr=1e-4))
    times = {label: [] for label in setups}
    faulted = {label: [] for label in setups}
    for step in range(warmup + repeats):
        for label, (mc, optimizer) in setups.items():
            elapsed, gigabytes = _step(mc, optimizer, images, labels, step)
            if step >= warmup:
                times[label].append(elapsed)
                faulted[label].append(gigabytes)
    medians = {label: statistics.median(values) for label, values in times.items()}
    faults = {f"{label}_gb": statistics.median(values) for label, values in faulted.items()}
    params = sum(p.numel() for p in setups["baseline"][0].network.parameters())
    return {"name": name, "params": params, **medians, **faults}


def bench_parts(name: str, roi: int, batch: int, repeats: int, classes: int) -> dict:
    """Seconds of the parts of one MedContext step, timed in one process (median of repeats)."""
    roi_size = (roi, roi, roi)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, *roi_size, generator=gen)
    labels = torch.randint(0, classes, (batch, 1, *roi_size), generator=gen)
    torch.manual_seed(0)
    network = create_model(name, 1, classes, roi_size, **SMALL_OPTIONS[name])
    mc = MedContext(network, total_steps=10_000, roi_size=roi_size, student_passes="separate", seed=0)
    mask = mc.draw_mask(batch, roi_size)

    def teacher_forward():
        with torch.no_grad():
            mc.teacher(images)

    mask_tokens = [p for n, p in mc.named_parameters() if "mask_token" in n]

    def masked_frozen_token():
        # the same pass without training the mask token: no gradient flows back to the input
        for token in mask_tokens:
            token.requires_grad_(False)
        try:
            mc.criterion(mc.student_masked(images, mask), labels).backward()
        finally:
            for token in mask_tokens:
                token.requires_grad_(True)

    parts = {
        "student forward+backward": lambda: mc.criterion(network(images), labels).backward(),
        "masked forward+backward": lambda: mc.criterion(mc.student_masked(images, mask), labels).backward(),
        "same, mask token frozen": masked_frozen_token,
        "teacher forward": teacher_forward,
        "MedContext losses+backward": lambda: mc.losses(images, labels, mask).total.backward(),
    }
    times = {label: [] for label in parts}
    for _ in range(repeats + 1):
        for label, fn in parts.items():
            mc.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values[1:]) for label, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SMALL_OPTIONS), choices=list(SMALL_OPTIONS))
    parser.add_argument("--roi", type=int, default=64, help="cubic crop side in voxels (default 64)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per setting (default 5)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--parts", action="store_true", help="time the parts of a MedContext step instead")
    parser.add_argument(
        "--retain-memory", action="store_true",
        help="make glibc malloc keep freed memory, as training does with train.retain_cpu_memory=true",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.retain_memory and not retain_freed_cpu_memory():
        parser.error("--retain-memory needs glibc malloc (Linux)")
    if args.parts:
        for name in args.models:
            parts = bench_parts(name, args.roi, args.batch, args.repeats, args.classes)
            print(f"{name}: " + ", ".join(f"{k} {v:.3f} s" for k, v in parts.items()), flush=True)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"roi {args.roi}^3, batch {args.batch}, median of {args.repeats} steps after {args.warmup} warm-up, "
        f"allocator: {describe_cpu_allocator()[0]}\n"
    )
    print(
        "| model (CPU size) | params | baseline s/step | MedContext 2 passes | ratio | MedContext concat | ratio "
        "| GB faulted/step: baseline, 2 passes, concat |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in args.models:
        r = bench_model(name, args.roi, args.batch, args.repeats, args.warmup, args.classes)
        print(
            f"| {name} | {r['params'] / 1e6:.2f}M | {r['baseline']:.3f} | {r['separate']:.3f} | "
            f"{r['separate'] / r['baseline']:.2f} | {r['concat']:.3f} | {r['concat'] / r['baseline']:.2f} | "
            f"{r['baseline_gb']:.2f}, {r['separate_gb']:.2f}, {r['concat_gb']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
