"""The GPU check: what a few minutes on one GPU must measure, ready before the GPU comes.

On one GPU, in under 8 minutes (a time budget that skips what would not fit and says so):

1. Full optimizer steps (losses, backward, AdamW, EMA update) at the paper's 96^3 crop, bf16
   autocast, for UNETR, SwinUNETR, nnFormer and unet3d at their paper sizes: the baseline and
   MedContext with two separate student passes and with one concatenated pass; steps/s and peak
   GPU memory of each; the MedContext/baseline ratio against the cost bound 7/3 = 2.33 (two
   student forward/backward passes and one teacher forward against one forward/backward).
2. The same with ``torch.compile`` (student and teacher networks compiled; compile time reported
   apart from the step time), after every eager measurement, as long as the budget lasts.
3. A real-data smoke run: ``medcontext train`` for 200 steps on MSD Task04_Hippocampus
   (unet3d, MedContext, bf16) with its validation Dice (raw and post-processed).

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out`` (default ``$OUT``, else
``gpu_check_out``). ``--tiny`` runs every code path in seconds on a CPU (tiny networks, 32^3 or
64^3 crops, fp32, one timed step, ``torch.compile`` with the ``eager`` backend, a phantom dataset
instead of Hippocampus): the test suite runs it so that the script cannot rot.

    bash benchmarks/gpu_check.sh                      # on the GPU machine
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check_tiny
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from medcontext import MedContext
from medcontext.io.atomic import write_text_atomic
from medcontext.models import create_model

COST_BOUND = 7 / 3  # SPEC 3: (2 x (1 + 2) + 1) / (1 + 2) forward units
SETUPS = (("baseline", "baseline", "separate"), ("separate", "medcontext", "separate"), ("concat", "medcontext", "concat"))
PAPER_MODELS = {  # the paper's sizes; nnFormer's brain-tumour preset (isotropic 4^3 patches) at 96^3
    "unetr": {"size": "paper"},
    "swin_unetr": {"size": "paper"},
    "nnformer": {"preset": "tumor"},
    "unet3d": {"size": "paper"},
}
TINY_MODELS = {  # what the models' contract tests build (the registry's test options)
    "unetr": {"size": "tiny"},
    "swin_unetr": {"size": "tiny"},
    "nnformer": {"preset": "small", "embed_dim": 8, "num_heads": (1, 1, 2, 2), "depths": (2, 2, 2, 2)},
    "unet3d": {"size": "tiny"},
}


@dataclass
class Settings:
    """What one check measures. ``budget_s``: wall-clock budget of the whole check."""

    roi: int = 96
    batch: int = 2
    classes: int = 3
    warmup: int = 3
    steps: int = 10
    models: dict = field(default_factory=lambda: dict(PAPER_MODELS))
    compile_backend: str = "inductor"
    budget_s: float = 450.0
    smoke_steps: int = 200
    smoke_data: str | None = None
    tiny: bool = False
    precision: str = "bf16"  # autocast dtype of the steps: bf16, or fp32 (no autocast)
    model_roi: dict = field(default_factory=dict)  # a model's own crop side where it needs another one



def tiny_settings() -> Settings:
    """Every code path in seconds on a CPU."""
    return Settings(roi=32, batch=1, warmup=1, steps=1, models=dict(TINY_MODELS), compile_backend="eager",
                    budget_s=240.0, smoke_steps=2, tiny=True, model_roi={"swin_unetr": 64},
                    precision="fp32")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(name: str, options: dict, variant: str, passes: str, roi: tuple[int, int, int], classes: int,
           device: torch.device, compile_backend: str | None) -> tuple[MedContext, torch.optim.Optimizer]:
    torch.manual_seed(0)
    network = create_model(name, 1, classes, roi, **options)
    mc = MedContext(network, variant=variant, total_steps=10_000, roi_size=roi, student_passes=passes, seed=0).to(device)
    if compile_backend is not None:  # after MedContext built its teacher (a copy), each network on its own
        mc.network.compile(backend=compile_backend)
        if mc.teacher is not None:
            mc.teacher.compile(backend=compile_backend)
    return mc, torch.optim.AdamW(mc.parameters(), lr=1e-4)


def _step(mc: MedContext, optimizer, images, labels, step: int, device: torch.device, precision: str) -> float:
    """Seconds of one full optimizer step (under bf16 autocast unless ``precision`` is fp32)."""
    _sync(device)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        losses = mc.losses(images, labels)
    losses.total.backward()
    optimizer.step()
    mc.update_teacher(step)
    _sync(device)
    return time.perf_counter() - start


def time_setup(name: str, setup: str, compiled: bool, settings: Settings, device: torch.device) -> dict:
    """Median step time, steps/s and peak memory of one model, setup and compile mode."""
    variant, passes = {label: (v, p) for label, v, p in SETUPS}[setup]
    roi = (settings.model_roi.get(name, settings.roi),) * 3
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(settings.batch, 1, *roi, generator=gen).to(device)
    labels = torch.randint(0, settings.classes, (settings.batch, 1, *roi), generator=gen).to(device)
    row = {"model": name, "setup": setup, "compile": compiled, "roi": roi[0]}
    mc = optimizer = None
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        mc, optimizer = _build(name, settings.models[name], variant, passes, roi, settings.classes, device,
                               settings.compile_backend if compiled else None)
        first = _step(mc, optimizer, images, labels, 0, device, settings.precision)  # with compile: mostly compiling
        for step in range(1, settings.warmup):
            _step(mc, optimizer, images, labels, step, device, settings.precision)
        times = [_step(mc, optimizer, images, labels, settings.warmup + i, device, settings.precision)
                 for i in range(settings.steps)]
        median = statistics.median(times)
        row.update(s_per_step=median, steps_per_s=1.0 / median, first_step_s=first,
                   peak_gb=torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None)
    except Exception as err:  # noqa: BLE001 - recorded (out of memory, a compile failure) and the check goes on
        row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    finally:
        mc = optimizer = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def bench_steps(settings: Settings, device: torch.device, deadline: float, log=print) -> list[dict]:
    """Eager rows for every model first, then compiled ones while the budget lasts."""
    rows = []
    for compiled in (False, True):
        for name in settings.models:
            for setup, _, _ in SETUPS:
                if time.perf_counter() > deadline:
                    rows.append({"model": name, "setup": setup, "compile": compiled, "skipped": "time budget"})
                    continue
                row = time_setup(name, setup, compiled, settings, device)
                log(json.dumps(row))
                rows.append(row)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """MedContext/baseline per model and compile mode, for each student-pass form."""
    timed = {(r["model"], r["compile"], r["setup"]): r["s_per_step"] for r in rows if "s_per_step" in r}
    out = []
    for model, compiled in dict.fromkeys((r["model"], r["compile"]) for r in rows):
        base = timed.get((model, compiled, "baseline"))
        if base is None:
            continue
        entry = {"model": model, "compile": compiled}
        for setup in ("separate", "concat"):
            if (model, compiled, setup) in timed:
                ratio = timed[(model, compiled, setup)] / base
                entry[setup] = ratio
                entry[f"{setup}_vs_bound"] = ratio / COST_BOUND
        out.append(entry)
    return out


def _phantom(root: Path) -> Path:
    from medcontext.data import generate_phantom

    return generate_phantom(root / "Phantom", num_cases=5, shape=(32, 32, 32), seed=0)


def smoke_run(settings: Settings, out: Path, deadline: float, log=print) -> dict:
    """``medcontext train`` on real data (Hippocampus; the tiny mode a phantom) and its validation Dice."""
    from medcontext.cli import main as cli

    if time.perf_counter() > deadline:
        return {"skipped": "time budget"}
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    data = Path(settings.smoke_data) if settings.smoke_data else None
    if settings.tiny:
        data = _phantom(work)
        extra = ["--model-size", "tiny", "--roi", "16", "16", "16", "--set", "data.num_samples=1",
                 "--set", "data.val_cases=1", "--set", "data.test_cases=1", "--set", "train.precision=fp32"]
    elif data is None or not (data / "dataset.json").is_file():
        return {"skipped": f"no Hippocampus dataset at {data} (pass --data DIR with dataset.json)"}
    else:
        extra = ["--train-cases", "10", "--set", "train.precision=bf16", "--set", "data.cache_dir=" + str(work / "cache")]
    run_dir = work / "run"
    argv = ["train", "--data", str(data), "--model", "unet3d", "--variant", "medcontext", "--seed", "0",
            "--steps", str(settings.smoke_steps), "--out", str(run_dir), "--no-progress",
            "--set", f"eval.every={max(1, settings.smoke_steps // 2)}", "--set", "train.tensorboard=false", *extra]
    log("smoke run: medcontext " + " ".join(argv))
    start = time.perf_counter()
    code = cli(argv)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run_dir / "metrics.jsonl").is_file() else []
    val = [r for r in records if r.get("kind") == "val"]
    steps = [r for r in records if r.get("kind") == "train"]
    result = {"command": "medcontext " + " ".join(argv), "exit_code": code, "seconds": seconds,
              "steps": len(steps), "validations": [{"step": r["step"], "mean_dice": r["mean_dice"],
                                                    "postprocessed_mean_dice": r.get("postprocessed_mean_dice")}
                                                   for r in val]}
    if val:
        result["best_val_mean_dice"] = max(r["mean_dice"] for r in val)
    return result


def machine() -> dict:
    """What ran the check."""
    info = {"torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
            "cpu": platform.processor() or platform.machine(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=props.total_memory / 1e9, gpu_count=torch.cuda.device_count())
    return info


def _fmt(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    """The summary as markdown tables."""
    s = result["settings"]
    lines = [f"# GPU check ({'tiny CPU mode' if s['tiny'] else 'paper sizes'})", "",
             f"Machine: {json.dumps(result['machine'])}", "",
             f"Steps at {s['roi']}^3, batch {s['batch']}, {s['classes']} classes, {s['precision']}, median of "
             f"{s['steps']} steps after {s['warmup']} warm-up; compile backend `{s['compile_backend']}`; "
             f"wall time {result['seconds']:.0f} s (budget {s['budget_s']:.0f} s).", "",
             "| model | crop | setup | compile | s/step | steps/s | peak GB | first step s | note |",
             "|---|---:|---|---|---:|---:|---:|---:|---|"]
    for r in result["steps"]:
        note = r.get("error") or r.get("skipped") or ""
        lines.append(f"| {r['model']} | {r.get('roi', s['roi'])}^3 | {r['setup']} | {'on' if r['compile'] else 'off'} | {_fmt(r.get('s_per_step'))} "
                     f"| {_fmt(r.get('steps_per_s'), 2)} | {_fmt(r.get('peak_gb'), 2)} | {_fmt(r.get('first_step_s'), 1)} "
                     f"| {note} |")
    lines += ["", f"MedContext / baseline step time (bound {COST_BOUND:.2f}):", "",
              "| model | compile | 2 separate passes | concatenated | separate / bound | concat / bound |",
              "|---|---|---:|---:|---:|---:|"]
    for r in result["ratios"]:
        lines.append(f"| {r['model']} | {'on' if r['compile'] else 'off'} | {_fmt(r.get('separate'), 2)} | "
                     f"{_fmt(r.get('concat'), 2)} | {_fmt(r.get('separate_vs_bound'), 2)} | "
                     f"{_fmt(r.get('concat_vs_bound'), 2)} |")
    smoke = result["smoke"]
    lines += ["", "Smoke run: " + (smoke.get("skipped") or (
        f"exit {smoke['exit_code']}, {smoke['steps']} steps in {smoke['seconds']:.0f} s, validations "
        + ", ".join(f"step {v['step']}: mean Dice {v['mean_dice']:.4f} (post-processed "
                    f"{_fmt(v['postprocessed_mean_dice'], 4)})" for v in smoke["validations"])
        + f"; `{smoke['command']}`")), ""]
    return "\n".join(lines)


def run_check(settings: Settings, out: Path, device: torch.device, log=print) -> dict:
    """Run every part within ``settings.budget_s`` and write ``gpu_check.json`` / ``.md`` into ``out``."""
    start = time.perf_counter()
    deadline = start + settings.budget_s
    out.mkdir(parents=True, exist_ok=True)
    # the smoke run is reserved its share: the step tables stop early enough to leave it time
    smoke_share = 0.15 if settings.tiny else 0.35
    rows = bench_steps(settings, device, deadline - smoke_share * settings.budget_s, log)
    smoke = smoke_run(settings, out, deadline, log)
    result = {"settings": asdict(settings), "machine": machine(), "device": str(device), "steps": rows,
              "ratios": ratios(rows), "cost_bound": COST_BOUND, "smoke": smoke,
              "seconds": time.perf_counter() - start}
    write_text_atomic(out / "gpu_check.json", json.dumps(result, indent=2, default=str) + "\n")
    write_text_atomic(out / "gpu_check.md", markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="output folder (default $OUT)")
    parser.add_argument("--tiny", action="store_true", help="tiny CPU mode: every code path in seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=None, help="MSD Task04_Hippocampus folder for the smoke run")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default 450)")
    parser.add_argument("--models", nargs="+", choices=list(PAPER_MODELS), default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 10)")
    args = parser.parse_args(argv)
    settings = tiny_settings() if args.tiny else Settings()
    if args.models:
        settings.models = {m: settings.models[m] for m in args.models}
    if args.budget is not None:
        settings.budget_s = args.budget
    if args.steps is not None:
        settings.steps = args.steps
    settings.smoke_data = args.data
    if args.tiny and args.device == "cpu":
        torch.set_num_threads(1)  # tiny steps: more threads only wait for each other (and for other jobs)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible (torch.cuda.is_available() is False); --tiny runs on a CPU")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result = run_check(settings, Path(args.out), device, log=lambda line: print(line, flush=True))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
