"""Cost and margin of the bf16 layer check that runs before a reduced-precision run trains.

For each registered model at a crop: the seconds :func:`reduced_precision_errors` takes, the
layers it checks, and the largest difference it finds per quantity (output, input gradient,
weight gradient) as a share of the fp32 tensor's range. ``--unfixed`` also checks each network
with its patch-cutting convolutions put back to plain ``Conv3d`` (without
``medcontext.models.patchify``), to see whether this machine's oneDNN gets them wrong.

    python benchmarks/bench_precision_check.py --threads 1 --roi 80 80 16 --unfixed
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from medcontext.engine.host.precision import Precision, cpu_bf16_support
from medcontext.engine.host.precision_check import CHECKED_LAYERS, DEFAULT_TOLERANCE, reduced_precision_errors
from medcontext.models import create_model
from medcontext.models.patchify import PatchConv3d


def _unfix(network: nn.Module) -> int:
    """Turn every :class:`PatchConv3d` back into a plain ``Conv3d`` (same parameters); returns how many."""
    swapped = 0
    for module in network.modules():
        if type(module) is PatchConv3d:
            module.__class__ = nn.Conv3d
            swapped += 1
    return swapped


def _row(model: str, roi: tuple[int, ...], network: nn.Module, shape: tuple[int, ...], precision: Precision,
         label: str) -> str:
    layers = sum(isinstance(m, CHECKED_LAYERS) for m in network.modules())
    start = time.perf_counter()
    every = reduced_precision_errors(network, shape, precision, tolerance=0.0)
    seconds = time.perf_counter() - start
    worst = {q: max((e.error for e in every if e.quantity == q), default=0.0)
             for q in ("output", "input gradient", "weight gradient")}
    wrong = sorted({e.layer for e in every if e.error > DEFAULT_TOLERANCE})
    return (f"| {model} {label} | {'x'.join(map(str, roi))} | {layers} | {seconds:.1f} | "
            + " | ".join(f"{v:.2%}" for v in worst.values()) + f" | {', '.join(wrong) or 'none'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["unet3d", "unetr"], help="registered models (default unet3d unetr)")
    parser.add_argument("--size", default="small", help="model.options size (default small)")
    parser.add_argument("--roi", type=int, nargs=3, default=[80, 80, 16], help="crop H W D (default 80 80 16, the ACDC study)")
    parser.add_argument("--channels", type=int, default=1, help="input channels (default 1)")
    parser.add_argument("--batch", type=int, default=2, help="crops per step (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--unfixed", action="store_true", help="also check with plain Conv3d patch embeddings")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    roi = tuple(args.roi)
    shape = (args.batch, args.channels, *roi)
    precision = Precision("bf16", torch.device("cpu"))
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), native bf16: {cpu_bf16_support().native}, input {shape}")
    print("| model | crop | layers | check s | worst output | worst input grad | worst weight grad | "
          f"over {DEFAULT_TOLERANCE:.0%} |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name in args.models:
        torch.manual_seed(0)
        network = create_model(name, args.channels, 4, roi, size=args.size)
        print(_row(name, roi, network, shape, precision, args.size), flush=True)
        if args.unfixed and _unfix(network):
            print(_row(name, roi, network, shape, precision, f"{args.size}, plain Conv3d embedding"), flush=True)


if __name__ == "__main__":
    main()
