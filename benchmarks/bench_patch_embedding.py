"""Patch-embedding convolution (kernel = stride) as oneDNN's Conv3d and as a matrix product.

For each shape, in fp32 and in CPU bf16 autocast: the median forward+backward time of
``F.conv3d(x, w, b, stride=k)`` and of :func:`medcontext.models.patchify.patch_matmul`, and the
largest error of each against the same sums of bf16-rounded (fp32: exact) operands, as a share of
the output's range. Shapes: UNETR small on the ACDC crop, UNETR base on a 4-channel BraTS crop,
Swin UNETR's 2^3 embedding.

    python benchmarks/bench_patch_embedding.py --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from medcontext.engine.host.precision import cpu_bf16_support
from medcontext.models.patchify import patch_matmul

#: (input shape (B, C, H, W, D), output channels, kernel = stride)
SHAPES = [((2, 1, 80, 80, 16), 192, 16), ((2, 4, 96, 96, 96), 768, 16), ((2, 1, 64, 64, 64), 48, 2)]


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernel: int, bf16: bool) -> torch.Tensor:
    if bf16:
        x, weight, bias = (t.detach().bfloat16().float() for t in (x, weight, bias))
    with torch.no_grad():
        return F.conv3d(x.double(), weight.double(), bias.double(), stride=kernel).float()


def _time_and_error(fn, x, weight, bias, kernel, bf16, repeats) -> tuple[float, float]:
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        weight.grad = bias.grad = None
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fn(x, weight, bias, kernel)
        out.float().sum().backward()
        times.append(time.perf_counter() - start)
    reference = _reference(x, weight, bias, kernel, bf16)
    error = float((out.detach().float() - reference).abs().nan_to_num(float("inf")).max() / reference.abs().max())
    return statistics.median(times[1:]), error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per setting (default 5)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"native bf16: {cpu_bf16_support().native}")
    print("| input | conv | precision | oneDNN conv ms | error | patch_matmul ms | error |")
    print("|---|---|---|---:|---:|---:|---:|")
    conv = lambda x, w, b, k: F.conv3d(x, w, b, stride=k)  # noqa: E731
    matmul = lambda x, w, b, k: patch_matmul(x, w, b)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    for shape, out_channels, kernel in SHAPES:
        x = torch.rand(shape, generator=gen) * 3
        weight = (torch.randn(out_channels, shape[1], kernel, kernel, kernel, generator=gen) * 0.02).requires_grad_()
        bias = torch.zeros(out_channels, requires_grad=True)
        for precision in ("fp32", "bf16"):
            bf16 = precision == "bf16"
            t_conv, e_conv = _time_and_error(conv, x, weight, bias, kernel, bf16, args.repeats)
            t_mm, e_mm = _time_and_error(matmul, x, weight, bias, kernel, bf16, args.repeats)
            print(f"| {tuple(shape)} | {shape[1]}->{out_channels}, k=s={kernel} | {precision} | {t_conv * 1e3:.1f} | "
                  f"{e_conv:.2%} | {t_mm * 1e3:.1f} | {e_mm:.2%} |")


if __name__ == "__main__":
    main()
