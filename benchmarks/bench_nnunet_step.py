#!/usr/bin/env python
"""Time and memory of one training iteration: nnU-Net's nnUNetTrainer vs nnUNetTrainerMedContext.

Both trainers are built from the same preprocessed nnU-Net dataset (its plans: network, patch,
batch size) and run ``train_step`` on batches from nnU-Net's own data loader. Each trainer runs in
its own process so that the memory high-water marks do not mix: on CUDA the peak of
``torch.cuda.max_memory_allocated`` over the timed steps, on the CPU the growth of the process's
peak resident memory (``ru_maxrss``) from before the first step to the end.

    nnUNet_preprocessed=... nnUNet_results=/tmp/bench_results nnUNet_n_proc_DA=0 \
        python benchmarks/bench_nnunet_step.py --dataset 504 --device cpu --warmup 2 --steps 5

Needs ``pip install "medcontext[nnunet]"``; nnU-Net's trainer writes a log folder under
``nnUNet_results``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _measure(args) -> dict:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from medcontext.integrations.nnunet.trainer import nnUNetTrainerMedContext

    torch.manual_seed(0)
    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(args.dataset))
    plans = load_json(join(folder, "nnUNetPlans.json"))
    plans["continue_training"] = False
    cls = nnUNetTrainer if args.worker == "nnUNetTrainer" else nnUNetTrainerMedContext
    device = torch.device(args.device)
    trainer = cls(plans, args.configuration, args.fold, load_json(join(folder, "dataset.json")), device=device)
    trainer.initialize()
    trainer.dataloader_train, _ = trainer.get_dataloaders()
    trainer.network.train()
    batches = [next(trainer.dataloader_train) for _ in range(args.warmup + args.steps)]
    if isinstance(trainer, nnUNetTrainerMedContext):
        trainer.medcontext.teacher.load_state_dict(trainer.network.state_dict())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu_times = [], []
    for i, batch in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize()
            if i == args.warmup:
                torch.cuda.reset_peak_memory_stats()
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    result = {
        "trainer": args.worker,
        "patch": list(trainer.configuration_manager.patch_size),
        "batch": trainer.batch_size,
        "parameters_m": sum(p.numel() for p in trainer.network.parameters()) / 1e6,
        "median_s": statistics.median(times),
        "times_s": times,
        "median_cpu_s": statistics.median(cpu_times),  # all threads of the process; robust to a shared machine
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["rss_growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="nnU-Net dataset id or name (preprocessed)")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--fold", default=0, type=int)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_measure(args)))
        return 0
    rows = []
    for trainer in ("nnUNetTrainer", "nnUNetTrainerMedContext"):
        command = [sys.executable, __file__, *sys.argv[1:], "--worker", trainer]
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    memory = "peak_mib" if "peak_mib" in rows[0] else "rss_growth_mib"
    print(f"dataset {args.dataset} {args.configuration}, patch {rows[0]['patch']}, batch {rows[0]['batch']}, "
          f"{rows[0]['parameters_m']:.1f}M parameters, device {args.device}, {rows[0]['threads']} threads, "
          f"{args.steps} timed steps after {args.warmup}")
    print(f"| trainer | median s/iteration (wall) | median CPU s/iteration | {memory} |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['trainer']} | {row['median_s']:.3f} | {row['median_cpu_s']:.3f} | {row[memory]:.0f} |")
    print(f"ratio MedContext / nnU-Net: wall time {rows[1]['median_s'] / rows[0]['median_s']:.2f}x, "
          f"CPU time {rows[1]['median_cpu_s'] / rows[0]['median_cpu_s']:.2f}x, "
          f"memory {rows[1][memory] / max(rows[0][memory], 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
