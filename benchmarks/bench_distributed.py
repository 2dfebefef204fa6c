"""Data-parallel scaling: 1 vs N processes on the same total batch (time per step, communication).

For each process count the script launches ``torchrun --nproc_per_node N`` on this file. Every
process builds the same network and times real :meth:`Trainer.train_step` calls (forward of
MedContext, loss gather, backward with the DDP gradient all-reduce, AdamW, EMA) plus the
per-step stop agreement, exactly what :meth:`Trainer.fit` runs. Interleaved with those steps,
each process also times the same step on a private, un-wrapped copy (no communication at all,
but the same number of processes competing for the machine). Then

    communication share = 1 - (step time without communication) / (step time with DDP)

is the part of a step spent waiting for other ranks: the exposed all-reduce plus the two small
per-step collectives. A step's time is the slowest rank's. The total batch is split evenly,
and the CPU threads are split evenly between the processes (``--cores``).

    python benchmarks/bench_distributed.py --processes 1 2 --model unet3d --size small --roi 32 --batch 2
    python benchmarks/bench_distributed.py --device cuda --processes 1 2 4 8   # one GPU per process (NCCL)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from medcontext.engine.host.machine import cpu_model_name


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer(cfg, roi, classes, world, run_dir):
    from medcontext.engine.run_folder import build_medcontext, build_network
    from medcontext.engine.trainer import Trainer

    torch.manual_seed(0)
    network = build_network(cfg, 1, classes, roi)
    mc = build_medcontext(cfg, network, roi, "softmax")
    return Trainer(mc, cfg, run_dir, None, [], classes={"fg": (1,)}, output_mode="softmax", roi_size=roi,
                   world=world, progress=False)


def worker(args: argparse.Namespace) -> None:
    """One process of a torchrun launch: time DDP and communication-free steps, rank 0 prints JSON."""
    from medcontext.engine.config import load_config
    from medcontext.engine.host.distributed import World, init_distributed

    world = init_distributed(args.device)
    torch.set_num_threads(args.threads)
    per_rank = args.batch // world.world_size
    roi = (args.roi,) * 3
    cfg = load_config(None, [
        f"model.name={args.model}", f"model.options={{size: {args.model_size}}}", f"model.roi={list(roi)}",
        f"train.batch_size={per_rank}", "data.num_samples=1", "train.steps=100000", f"train.device={args.device}",
        "train.precision=fp32", "train.tensorboard=false", f"method.variant={args.variant}",
    ])
    classes = 3
    with tempfile.TemporaryDirectory() as run_dir:
        ddp = _trainer(cfg, roi, classes, world, run_dir)
        local = _trainer(cfg, roi, classes, World(), run_dir) if world.is_distributed else None
        gen = torch.Generator().manual_seed(1 + world.rank)
        batch = {
            "image": torch.randn(per_rank, 1, *roi, generator=gen),
            "label": torch.randint(0, classes, (per_rank, 1, *roi), generator=gen),
        }
        times: dict[str, list[float]] = {"ddp": [], "local": []}
        for step in range(args.warmup + args.repeats):
            for mode, trainer in (("ddp", ddp), ("local", local)):
                if trainer is None:
                    continue
                world.barrier()
                start = time.perf_counter()
                trainer.train_step(batch, step)
                if trainer is ddp:
                    world.max_int(0)  # the stop agreement that fit() runs after every step
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize(trainer.device)
                elapsed = time.perf_counter() - start
                slowest = float(world.gather_floats([elapsed]).max())
                if step >= args.warmup:
                    times[mode].append(slowest)
    if world.is_main:
        device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_model_name()
        print("RESULT " + json.dumps({
            "processes": world.world_size, "backend": world.backend or "-", "threads": args.threads,
            "per_rank": per_rank, "ddp": statistics.median(times["ddp"]),
            "local": statistics.median(times["local"]) if times["local"] else None, "device": device,
        }), flush=True)
    world.close()


def launch(args: argparse.Namespace, processes: int) -> dict:
    threads = max(1, args.cores // processes) if args.device == "cpu" else args.threads or 4
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, "--worker",
        "--threads", str(threads), "--device", args.device, "--model", args.model, "--model-size", args.model_size,
        "--roi", str(args.roi), "--batch", str(args.batch), "--variant", args.variant,
        "--warmup", str(args.warmup), "--repeats", str(args.repeats),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{processes} process(es) failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU threads shared by the processes")
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="unet3d")
    parser.add_argument("--model-size", "--size", dest="model_size", default="small",
                        help="model size preset, as `medcontext train --model-size` (--size: the old name)")
    parser.add_argument("--roi", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2, help="total crops per step (split over processes)")
    parser.add_argument("--variant", default="medcontext")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    bad = [n for n in args.processes if args.batch % n]
    if bad:
        raise SystemExit(f"--batch {args.batch} cannot be split evenly over {bad} processes")
    rows = [launch(args, n) for n in args.processes]
    base = rows[0]["ddp"]
    print(f"{args.model} ({args.model_size}), {args.variant}, crop {args.roi}^3, total batch {args.batch}, "
          f"device {rows[0]['device']}, torch {torch.__version__}, {args.cores} cores\n")
    print("| processes | backend | threads/process | batch/process | s/step | s/step without communication "
          "| communication share | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        local = row["local"]
        share = f"{100 * max(0.0, 1 - local / row['ddp']):.0f}%" if local else "0% (no DDP)"
        print(f"| {row['processes']} | {row['backend']} | {row['threads']} | {row['per_rank']} | {row['ddp']:.3f} | "
              f"{'-' if local is None else f'{local:.3f}'} | {share} | {base / row['ddp']:.2f}x |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
