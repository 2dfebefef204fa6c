"""Step time of the semi-supervised variants against the baseline, side by side, with their bounds.

Every variant's bound is its cost in units (a student pass with its backward 3, a teacher forward
1; ``medcontext.method.settings.VARIANTS[...].cost_units``) over the baseline's 3, with one
unlabelled crop per labelled crop: ``medcontext_semi`` 11/3 = 3.67, ``mean_teacher`` and ``bcp``
7/3 = 2.33, ``medcontext_bcp`` 13/3 = 4.33. The script times full optimizer steps (losses,
backward, AdamW step, EMA update) of the baseline and each variant with both pass forms
(``separate``: one forward per view; ``concat``: all student views in one forward, all teacher
views in another), interleaved so that machine noise hits all alike, and prints a markdown table
of medians and ratios to the baseline.

On a shared machine (load above the core count) wall-clock times mostly measure the waits of the
scheduler; ``--clock cpu`` with ``--threads 1`` times the CPU seconds this process spent
(``time.process_time``), which such waits do not inflate.

    python benchmarks/bench_semisup_step.py --model unet3d --roi 48 --batch 1 --repeats 7
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from medcontext import MedContext
from medcontext.engine.host.cpu_memory import describe_cpu_allocator
from medcontext.method import VARIANTS, semi_supervised_variants
from medcontext.models import create_model

SMALL_OPTIONS = {
    "unet3d": {"size": "small"},
    "unetr": {"size": "small"},
    "swin_unetr": {"size": "small"},
    "nnformer": {"preset": "small"},
}


def _setups(name: str, roi_size, classes: int, variants, forms) -> dict:
    setups = {}
    for label, variant, passes in [("baseline", "baseline", "separate")] + [
        (f"{v} {p}", v, p) for v in variants for p in forms
    ]:
        torch.manual_seed(0)
        network = create_model(name, 1, classes, roi_size, **SMALL_OPTIONS[name])
        mc = MedContext(network, variant=variant, total_steps=10_000, roi_size=roi_size, student_passes=passes, seed=0)
        setups[label] = (mc, torch.optim.AdamW(mc.parameters(), lr=1e-4))
    return setups


def _step(mc: MedContext, optimizer, images, labels, unlabeled, step: int, clock) -> float:
    """Seconds of one full optimizer step (step 5000 of 10000: past BCP's labelled-only phase
    and every ramp-up)."""
    start = clock()
    optimizer.zero_grad(set_to_none=True)
    extra = {"unlabeled": unlabeled, "step": step} if mc.semi is not None else {}
    mc.losses(images, labels, **extra).total.backward()
    optimizer.step()
    mc.update_teacher(step)
    return clock() - start


def bench(name: str, roi: int, batch: int, repeats: int, warmup: int, classes: int, variants, forms, clock) -> dict:
    """Median seconds per step of every setting, timed round-robin."""
    roi_size = (roi, roi, roi)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, *roi_size, generator=gen)
    labels = torch.randint(0, classes, (batch, 1, *roi_size), generator=gen)
    unlabeled = torch.randn(batch, 1, *roi_size, generator=gen)
    setups = _setups(name, roi_size, classes, variants, forms)
    times = {label: [] for label in setups}
    for repeat in range(warmup + repeats):
        for label, (mc, optimizer) in setups.items():
            elapsed = _step(mc, optimizer, images, labels, unlabeled, 5000, clock)
            if repeat >= warmup:
                times[label].append(elapsed)
    return {label: statistics.median(values) for label, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet3d", choices=list(SMALL_OPTIONS))
    parser.add_argument("--roi", type=int, default=48, help="cubic crop side in voxels (default 48)")
    parser.add_argument("--batch", type=int, default=1, help="labelled crops per step; as many unlabelled ones")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per setting (default 7)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--variants", nargs="+", default=["medcontext"] + semi_supervised_variants(),
                        choices=[v for v in VARIANTS if v != "baseline"])
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: perf_counter; cpu: this process's CPU seconds (use with --threads 1)")
    parser.add_argument("--passes", nargs="+", default=["separate", "concat"], choices=["separate", "concat"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, {args.model} (small), "
        f"roi {args.roi}^3, batch {args.batch} labelled + {args.batch} unlabelled, median of {args.repeats} steps "
        f"after {args.warmup} warm-up, {args.clock} clock, allocator: {describe_cpu_allocator()[0]}\n"
    )
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    medians = bench(args.model, args.roi, args.batch, args.repeats, args.warmup, args.classes, args.variants,
                    args.passes, clock)
    base = medians["baseline"]
    print("| variant | passes | s/step | ratio to baseline | bound (units / 3) | ratio / bound |")
    print("|---|---|---:|---:|---:|---:|")
    print(f"| baseline | - | {base:.3f} | 1.00 | 1.00 | 1.00 |")
    for label, seconds in medians.items():
        if label == "baseline":
            continue
        variant, passes = label.split(" ")
        bound = VARIANTS[variant].cost_units / VARIANTS["baseline"].cost_units
        ratio = seconds / base
        print(f"| {variant} | {passes} | {seconds:.3f} | {ratio:.2f} | {bound:.2f} | {ratio / bound:.2f} |", flush=True)


if __name__ == "__main__":
    main()
