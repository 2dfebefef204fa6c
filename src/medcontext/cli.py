"""The ``medcontext`` command line: train, pretrain, evaluate, predict, demo, experiment, report, data, nnunet.

Every command is a thin layer over a library function (``medcontext.engine.train``,
``medcontext.run_scoring.evaluate_run``, ``predict_run``, ``medcontext.demo.run_demo``, ``medcontext.data``).
Expected failures (bad configuration, dataset problems, missing files) end with exit code 2
and a one-paragraph message; ``--debug`` shows the traceback instead. A command stopped by
SIGINT/SIGTERM exits with 130/143 (a training run after saving ``last.pt``; the demo and a
study without evaluating or reporting unfinished training) and says how to continue.
``train``, ``pretrain``, ``demo`` and ``experiment`` re-execute themselves once with tcmalloc preloaded where
it is installed (:mod:`medcontext.engine.host.tcmalloc`; ``MEDCONTEXT_TCMALLOC=0`` turns it off).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import textwrap
from pathlib import Path
from typing import Iterable, Sequence

from medcontext.method.settings import VARIANTS

__all__ = ["main", "build_parser"]

EXIT_ERROR = 2


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")


class _RenamedOption(argparse.Action):
    """The old spelling of a renamed option: it still works and prints a one-line deprecation notice."""

    def __init__(self, option_strings, dest, new_name: str, **kwargs):
        self.new_name = new_name
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"medcontext: {option_string} is deprecated, use {self.new_name} (same meaning)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_renamed(parser: argparse.ArgumentParser, old: str, new: str, dest: str) -> None:
    """Accept ``old`` as a deprecated spelling of ``new`` (hidden from ``--help``)."""
    parser.add_argument(old, dest=dest, action=_RenamedOption, new_name=new, default=argparse.SUPPRESS)


def _or_list(names: Iterable[str]) -> str:
    """``"a, b or c"``."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``medcontext`` (all sub-commands)."""
    from medcontext import __version__

    parser = argparse.ArgumentParser(
        prog="medcontext",
        formatter_class=_Formatter,
        description="MedContext: train 3D medical segmentation networks with masked-view self-distillation.",
        epilog="Start with `medcontext demo --quick`. Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"medcontext {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train_parser(sub)
    _add_pretrain_parser(sub)
    _add_evaluate_parser(sub)
    _add_predict_parser(sub)
    _add_demo_parser(sub)
    _add_experiment_parser(sub)
    _add_report_parser(sub)
    _add_data_parser(sub)
    from medcontext.export import command as export_command

    export_command.add_parser(sub, _Formatter)
    from medcontext.integrations.nnunet import command as nnunet_command

    nnunet_command.add_parser(sub, _Formatter)
    return parser


def _add_trust_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load checkpoint files with full pickle instead of weights only: a crafted file can run code, "
                        "so only for files you trust")


def _add_train_parser(sub) -> None:
    train = sub.add_parser(
        "train", formatter_class=_Formatter, help="train a network (baseline or MedContext)",
        description=textwrap.dedent("""\
            Train a segmentation network. Settings come from the defaults, then --config FILE, then the
            options below, then --set KEY=VALUE (later wins). The resolved settings are saved as
            RUN_DIR/config.yaml; `--print-config` shows them and every valid key without training.
            Example:
              medcontext train --data Task04_Hippocampus --model unet3d --variant medcontext \\
                  --train-cases 5 --seed 0 --steps 300 --roi 32 48 32 --out runs/hippo_k5"""),
    )
    _add_common(train)
    train.add_argument("--out", metavar="RUN_DIR", help="run folder (checkpoints, logs, split); required to train")
    train.add_argument("--data", metavar="DATASET_DIR", help="dataset folder (MSD layout, datalist JSON, folders)")
    train.add_argument("--unlabeled", nargs="+", metavar="SOURCE",
                       help="unlabelled volumes for a semi-supervised --variant: a folder of images (any layout --data "
                            "reads, or NIfTI files; labels ignored), 'pool' (the training cases the split leaves over, "
                            "used without their labels) or 'imagesTs' (the dataset's images without labels); several "
                            "combine (data.unlabeled; data.unlabeled_batch_size: crops per step)")
    train.add_argument("--config", metavar="FILE", help="YAML configuration: a file or a shipped name (configs/, e.g. cpu_phantom)")
    train.add_argument("--model", help="network name: unetr, swin_unetr, unet3d, nnformer, pcrlv2 (model.name)")
    train.add_argument("--model-size", dest="model_size", metavar="SIZE",
                       help="network size: paper, small or tiny (model.options.size)")
    _add_renamed(train, "--size", "--model-size", "model_size")
    train.add_argument("--variant", help=f"{_or_list(VARIANTS)} (method.variant)")
    train.add_argument("--train-cases", type=int, metavar="K", help="number of training cases drawn by seed (data.train_cases)")
    train.add_argument("--seed", type=int, help="seed of weights, split, data order, augmentation and masks (train.seed)")
    train.add_argument("--steps", type=int, metavar="N", help="optimizer steps of the run (train.steps)")
    train.add_argument("--time-budget", metavar="DURATION",
                       help="wall-clock budget, e.g. 2h, 90m, 1h30m (train.time_budget): the plan's spacing and crop "
                            "fit --steps into it; without --steps the steps are chosen to fill it")
    train.add_argument("--roi", type=int, nargs=3, metavar=("X", "Y", "Z"), help="training crop in voxels (model.roi)")
    train.add_argument("--model-preset", dest="model_preset", metavar="PRESET",
                       help="network preset: nnformer synapse|acdc|tumor|small (model.options.preset); "
                            "for the other models the same as --model-size")
    _add_renamed(train, "--preset", "--model-preset", "model_preset")
    train.add_argument("--data-preset", help="dataset preset: auto, msd, generic, synapse, acdc, brats21, brats17 (data.preset)")
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N (train.device)")
    train.add_argument("--precision", help="auto, fp32, bf16, fp16 (train.precision)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any setting, e.g. --set optim.lr=3e-4 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    train.add_argument("--stop-after", type=int, metavar="N",
                       help="stop after N steps of this invocation with a checkpoint (continue with --resume)")
    train.add_argument("--init-checkpoint", metavar="PATH", help="initialise the student from these weights")
    train.add_argument("--init-prefix-map", action="append", default=[], metavar="OLD=NEW",
                       help="rename key prefixes of --init-checkpoint, e.g. module.= or encoder.=swinViT. (repeatable)")
    train.add_argument("--init-skip-mismatch", action="store_true",
                       help="skip --init-checkpoint tensors whose shape differs instead of failing")
    _add_trust_checkpoint(train)
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved configuration and every valid --set key, then exit")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in batch jobs)")


def _add_pretrain_parser(sub) -> None:
    pretrain = sub.add_parser(
        "pretrain", formatter_class=_Formatter,
        help="self-supervised pretraining on unlabelled volumes (masked volume modelling)",
        description=textwrap.dedent("""\
            Pretrain a registered network without labels: masked cubes (or tubes) of random crops are
            reconstructed by the network, L1 on the masked voxels (SimMIM style). Label files are never
            opened. RUN_DIR/pretrained.pt then starts a supervised run:
              medcontext pretrain --data Task04_Hippocampus --unlabeled pool --train-cases 5 --seed 0 \\
                  --model unet3d --roi 32 48 32 --steps 2000 --out runs/pretrain
              medcontext train --data Task04_Hippocampus --train-cases 5 --seed 0 --model unet3d \\
                  --roi 32 48 32 --init-checkpoint runs/pretrain/pretrained.pt --out runs/finetune
            With --resume, unset options keep the run's saved values."""),
    )
    _add_common(pretrain)
    add = pretrain.add_argument
    add("--out", metavar="RUN_DIR", required=True, help="run folder (pretrained.pt, last.pt, metrics, loss curve)")
    add("--data", metavar="DATASET_DIR", help="dataset whose preprocessing, channels and split apply (labels not read)")
    add("--config", metavar="FILE", help="a `train` configuration (file or shipped name): its dataset, split, "
        "preprocessing, network, crop and seed, so that pool is what that run leaves unlabelled")
    add("--data-preset", help="dataset preset (default auto)")
    add("--unlabeled", action="append", metavar="SOURCE",
        help="volumes: pool (cases a --train-cases split leaves over), imagesTs, or a folder (repeatable)")
    add("--train-cases", type=int, metavar="K", help="for pool: the k-shot split of the train runs to come")
    add("--val-cases", type=int, metavar="N", help="for pool: validation cases of that split (default 1)")
    add("--test-cases", type=float, metavar="N", help="for pool: test cases of that split, a count or a fraction (default 0.2)")
    add("--split-seed", type=int, help="for pool: seed of that split (default --seed)")
    add("--test-split", metavar="JSON",
        help='the fixed test case ids of the runs to come, {"test": [...]}, or a shipped split name (e.g. acdc_test): '
             "these cases and their patients are never pretrained on, from any source (instead of --test-cases)")
    add("--model", help="network name (default unet3d)")
    add("--model-size", metavar="SIZE", help="network size: paper, small or tiny (default small)")
    add("--roi", type=int, nargs=3, metavar=("X", "Y", "Z"), help="crop in voxels (default: the dataset preset's)")
    add("--mask-ratio", type=float, help="fraction of cells masked (default 0.6)")
    add("--mask-cell", type=int, nargs="+", metavar="N", help="voxels per mask cell: 1 or 3 sizes (default 16, smaller for small crops)")
    add("--mask-shape", choices=["cube", "tube"], help="cube: random 3D cells; tube: through every slice (default cube)")
    add("--mask-space", choices=["auto", "token", "input"], help="where masked cells are replaced (default auto)")
    add("--steps", type=int, metavar="N", help="optimizer steps (default 1000)")
    add("--batch-size", type=int, metavar="B", help="crops per step (default 2)")
    add("--lr", type=float, help="AdamW peak learning rate (default 1e-3)")
    add("--weight-decay", type=float, help="AdamW weight decay (default 0.05)")
    add("--warmup-steps", type=int, metavar="N", help="linear warmup steps (default 10%% of the steps, at most 100)")
    add("--seed", type=int, help="seed of weights, crops and masks (default 0)")
    add("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    add("--save-every", type=int, metavar="N", help="steps between checkpoints (default 100)")
    add("--cache-dir", help="persistent cache of preprocessed volumes (default: memory)")
    add("--no-tensorboard", action="store_true", help="no TensorBoard events")
    add("--resume", action="store_true", help="continue the run in --out from its last.pt")
    add("--stop-after", type=int, metavar="N", help="stop after N steps of this invocation with a checkpoint")
    _add_trust_checkpoint(pretrain)
    add("--no-progress", action="store_true", help="no progress bar")


def _add_evaluate_parser(sub) -> None:
    evaluate = sub.add_parser(
        "evaluate", formatter_class=_Formatter, help="evaluate a run on its held-out cases",
        description="Predict the run's test (or val) cases and compute Dice and HD95 at the labels' original "
                    "geometry; writes RUN_DIR/eval/metrics.csv and summary.md.",
    )
    _add_common(evaluate)
    evaluate.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder from `medcontext train`")
    evaluate.add_argument("--data", metavar="DATASET_DIR", help="dataset folder, if it moved since training")
    evaluate.add_argument("--split", default="test", choices=["test", "val", "all"], help="which cases of split.json")
    evaluate.add_argument("--use", default="student", choices=["student", "teacher"], help="which weights")
    evaluate.add_argument("--checkpoint", default="best", help="best, last or a checkpoint path")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    _add_trust_checkpoint(evaluate)
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_predict_parser(sub) -> None:
    predict = sub.add_parser(
        "predict", formatter_class=_Formatter, help="segment NIfTI files with a trained run",
        description="Write <case>.nii.gz label maps with exactly the input's shape and affine.",
    )
    _add_common(predict)
    predict.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder from `medcontext train`")
    predict.add_argument("--input", required=True, metavar="FILE_OR_DIR", help="a NIfTI file or a folder of them")
    predict.add_argument("--output", required=True, metavar="DIR", help="output folder")
    predict.add_argument("--use", default="student", choices=["student", "teacher"], help="which weights")
    predict.add_argument("--checkpoint", default="best", help="best (falls back to last), last or a path")
    predict.add_argument("--probabilities", action="store_true", help="also write <case>_probabilities.nii.gz")
    predict.add_argument("--no-postprocessing", action="store_true",
                         help="write the raw masks: skip the run's postprocessing.json (largest connected components "
                              "chosen on validation)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    _add_trust_checkpoint(predict)


def _add_demo_parser(sub) -> None:
    from medcontext.demo import BUDGETS, SEMI_VARIANT, UNLABELED_DIR, VARIANTS, semi_cost_ratio
    from medcontext.method.settings import get_variant

    units = {v: get_variant(v).cost_units for v in (*VARIANTS, SEMI_VARIANT)}
    demo = sub.add_parser(
        "demo", formatter_class=_Formatter, help="baseline vs MedContext on a synthetic phantom (CPU)",
        description="Generate a phantom dataset, train a baseline and MedContext few-shot with the same budget "
                    "and seed, evaluate both on held-out cases; prints a table, writes overlay.png and curves.png. "
                    f"--semi adds a semi-supervised arm ({SEMI_VARIANT}) on unlabelled phantoms.",
    )
    _add_common(demo)
    demo.add_argument("--out", default="medcontext-demo", metavar="DIR", help="output folder")
    demo.add_argument("--quick", action="store_true", help="a smaller budget (about 2 minutes on 2 idle CPU cores)")
    demo.add_argument("--steps", type=int, help="training steps per run (overrides the budget)")
    demo.add_argument("--train-cases", type=int, default=2, metavar="K", help="training cases (few-shot)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data, weights, split and masks")
    demo.add_argument(
        "--semi", action="store_true",
        help=f"also train {SEMI_VARIANT} (MedContext plus consistency and confident pseudo-labels on unlabelled "
             f"crops) on {BUDGETS['full'].unlabeled_cases} more phantoms written as images only (OUT/{UNLABELED_DIR}/), "
             "with the same seed, split, crops, steps and schedule, and add it to the table and figures. Its run costs "
             f"{units[SEMI_VARIANT]} units per step against {units['medcontext']} for medcontext and "
             f"{units['baseline']} for the baseline: about {semi_cost_ratio():.1f}x the default demo's training "
             "(an estimated 11 minutes on the 2-core AVX2-only CPU where the default demo took 5; BENCHMARKS.md, "
             "Demo). On a demo folder that ran without --semi, only the new arm trains")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_experiment_parser(sub) -> None:
    from medcontext.study.definitions import STUDIES

    width = max(len(name) for name in STUDIES)
    studies = "\n".join(f"  {name:<{width}} {textwrap.fill(st.description, 88, subsequent_indent=' ' * (width + 3))}"
                         for name, st in STUDIES.items())
    experiment = sub.add_parser(
        "experiment", formatter_class=_Formatter, help="run a multi-run study (resumable) and write its report",
        description=(
            "Run every training run of a study, skipping finished runs and resuming interrupted ones, then\n"
            "write the study report (tables, paired differences with bootstrap intervals, plots). The same\n"
            "command started again (another terminal) works beside it: each process takes the next run no\n"
            "other process holds, and the trainings share the cores.\nStudies:\n"
            + studies
        ),
    )
    _add_common(experiment)
    experiment.add_argument("study", choices=sorted(STUDIES), help="which study")
    experiment.add_argument("--data", metavar="DATASET_DIR",
                            help="the study's dataset folder (Task04_Hippocampus, Task_ACDC); required unless --status")
    experiment.add_argument("--out", required=True, metavar="DIR", help="study folder (one sub-folder per run)")
    experiment.add_argument("--test-split", metavar="JSON",
                            help='fixed test case ids, {"test": [...]}, never trained or selected on '
                                 "or a shipped split name (default: the study's own, shipped with the package)")
    experiment.add_argument("--only", nargs="+", metavar="PATTERN",
                            help="run only the groups or runs matching these shell patterns "
                                 "(e.g. unet3d_k5, 'acdc_unet3d_k5/*_s0')")
    experiment.add_argument("--max-runs", type=int, metavar="N", help="stop after N newly finished runs")
    experiment.add_argument("--report", metavar="MD", help="report path (default: DIR/report/STUDY/report.md)")
    experiment.add_argument("--status", action="store_true",
                            help="train nothing: list each selected run's state (finished with its test Dice, "
                                 "interrupted at step N, not started), its step time, machine and hours left")
    _add_trust_checkpoint(experiment)
    experiment.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_report_parser(sub) -> None:
    report = sub.add_parser(
        "report", formatter_class=_Formatter, help="markdown report over evaluated runs",
        description="Aggregate evaluated run folders (config.yaml + eval/metrics.csv): per setting and method "
                    "mean/std over seeds of Dice and HD95, MedContext minus baseline per seed with 95% bootstrap "
                    "intervals over test cases and a verdict from a hierarchical bootstrap over seeds and cases, "
                    "validation Dice by step, training time, box plots, training curves and an overlay figure.",
    )
    _add_common(report)
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="evaluated run folders")
    report.add_argument("--out", default="report/report.md", metavar="MD", help="report file (figures beside it)")
    report.add_argument("--title", default="MedContext study", help="report title")
    report.add_argument("--also-against", nargs="+", default=[], metavar="METHOD",
                        help="also compare every method with these methods, paired per seed (labels as in the "
                             "report's tables, e.g. medcontext)")


def _add_data_parser(sub) -> None:
    data = sub.add_parser("data", formatter_class=_Formatter, help="check, generate or download datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    check = data_sub.add_parser("check", formatter_class=_Formatter, help="load every case and report problems")
    _add_common(check)
    check.add_argument("path", metavar="DIR", help="dataset folder or datalist JSON")
    check.add_argument("--data-preset", default="auto", metavar="PRESET", help="dataset preset")
    _add_renamed(check, "--preset", "--data-preset", "data_preset")
    check.add_argument("--rows", type=int, default=20, help="cases listed in the summary")
    phantom = data_sub.add_parser("phantom", formatter_class=_Formatter, help="write a synthetic dataset (MSD layout)")
    _add_common(phantom)
    phantom.add_argument("--out", required=True, metavar="DIR", help="dataset folder")
    phantom.add_argument("--cases", type=int, default=12, help="labelled cases")
    phantom.add_argument("--shape", type=int, nargs=3, default=[48, 48, 48], metavar=("X", "Y", "Z"), help="volume shape")
    phantom.add_argument("--seed", type=int, default=0, help="seed")
    phantom.add_argument("--test", type=int, default=0, help="extra unlabelled cases in imagesTs")
    download = data_sub.add_parser("download", formatter_class=_Formatter, help="download a Medical Segmentation Decathlon task")
    _add_common(download)
    download.add_argument("task", metavar="TASK", help="e.g. Task04_Hippocampus, Task04, hippocampus")
    download.add_argument("--out", required=True, metavar="DIR", help="folder receiving <task>/")
    download.add_argument("--base-url", help="mirror serving <task>.tar")


# ---------------------------------------------------------------------- commands
def _train_config(args: argparse.Namespace):
    from medcontext.engine.config import TrainConfig, load_config, parse_override, read_yaml

    base = None
    if args.resume and args.out and (Path(args.out) / "config.yaml").is_file():
        base = load_config(Path(args.out) / "config.yaml")
    flags = {
        "data.path": args.data,
        "data.preset": args.data_preset,
        "data.train_cases": args.train_cases,
        "model.name": args.model,
        "model.roi": list(args.roi) if args.roi else None,
        "method.variant": args.variant,
        "train.seed": args.seed,
        "train.steps": args.steps,
        "train.time_budget": args.time_budget,
        "train.steps_from_budget": True if args.time_budget is not None and args.steps is None else None,
        "train.device": args.device,
        "train.precision": args.precision,
        "model.init_checkpoint": args.init_checkpoint,
    }
    overrides: dict = {k: v for k, v in flags.items() if v is not None}
    if args.data is not None:
        overrides["data.path"] = str(Path(args.data).resolve())
    if args.unlabeled:
        from medcontext.data.unlabeled import LISTED, POOL

        sources = [item if item in (POOL, LISTED) else str(Path(item).resolve()) for item in args.unlabeled]
        overrides["data.unlabeled"] = sources[0] if len(sources) == 1 else sources
    if args.init_prefix_map:
        mapping = {}
        for item in args.init_prefix_map:
            if "=" not in item:
                raise ValueError(f"--init-prefix-map {item!r}: expected OLD=NEW, e.g. module.= or encoder.=swinViT.")
            old, new = item.split("=", 1)
            mapping[old] = new
        overrides["model.init_prefix_map"] = mapping
    if args.init_skip_mismatch:
        overrides["model.init_skip_mismatch"] = True
    cfg = TrainConfig.from_dict(base.to_dict()) if base is not None else TrainConfig()
    if args.config:
        cfg.update(read_yaml(_config_file(args.config)), source=str(args.config))
    if args.model_size is not None and args.model_preset is not None and args.model_size != args.model_preset:
        raise ValueError(f"--model-size {args.model_size} and --model-preset {args.model_preset} both choose the "
                         "network's size; give one of them")
    if args.model_size is not None:
        cfg.model.options = {**cfg.model.options, "size": args.model_size}
    if args.model_preset is not None:
        model_name = args.model or cfg.model.name
        key = "preset" if model_name == "nnformer" else "size"
        cfg.model.options = {**{k: v for k, v in cfg.model.options.items() if k != "size"}, key: args.model_preset}
    for key, value in overrides.items():
        cfg.set(key, value, source=f"--{key.split('.')[-1].replace('_', '-')}")
    for item in args.overrides:
        key, value = parse_override(item)
        cfg.set(key, value, source=f"--set {key}")
    return cfg.validate()


def _config_file(name: str) -> Path:
    """``--config`` as given, or the name of a shipped config (``cpu_phantom``), found in the
    installed package or the checkout, never relative to the current directory."""
    from medcontext.shipped import find_config

    return find_config(name)


def _cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from medcontext.engine import TrainConfig, train

    if not args.out and not args.print_config:
        raise ValueError("--out RUN_DIR is required: the folder that receives checkpoints, logs and the split")
    cfg = _train_config(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        print("# valid keys: " + ", ".join(TrainConfig.keys()))
        return 0
    result = train(cfg, args.out, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress,
                   trust_checkpoint=args.trust_checkpoint)
    if result.rank != 0:  # under torchrun only rank 0 reports
        return result.exit_code if result.stopped_by in ("SIGINT", "SIGTERM") else 0
    timing = result.timing
    share = timing.get("data_share")
    if timing.get("steps"):
        print(
            f"steps {result.start_step} -> {result.step} of {result.total_steps}: {timing['step_time']:.3f} s/step, "
            f"data wait {100 * share:.1f}% of step time"
        )
    if result.best_metric is not None:
        print(f"best validation mean Dice {result.best_metric:.4f} at step {result.best_step}")
    if result.stopped_by in ("SIGINT", "SIGTERM"):
        if result.finished:  # the signal arrived during the last step
            print(f"{result.stopped_by} arrived during the last step; the run is complete: {Path(args.out) / 'last.pt'}",
                  file=sys.stderr)
        else:
            print(f"stopped by {result.stopped_by} after step {result.step}; continue with --resume", file=sys.stderr)
        return result.exit_code
    if result.stopped_by == "stop_after":
        print(f"stopped after step {result.step} (--stop-after); continue with --resume")
    else:
        print(f"run finished: {Path(args.out) / 'last.pt'}")
    return 0


def _pretrain_config(args: argparse.Namespace):
    from medcontext.engine.config import TrainConfig
    from medcontext.engine.pretraining import PretrainConfig

    saved = Path(args.out) / "config.json"
    if args.resume and saved.is_file():
        cfg = PretrainConfig.read(saved)
    elif args.config:
        from medcontext.engine.config import load_config

        cfg = PretrainConfig.from_train_config(load_config(_config_file(args.config)))
    else:
        cfg = PretrainConfig()
    section = TrainConfig(data=cfg.data)  # the data flags are `train`'s data.* keys, typed and checked as there
    for key, value in _pretrain_data_flags(args).items():
        section.set(f"data.{key}", value, source=f"--{key.replace('_', '-')}")
    flags = {
        "model": args.model, "roi": list(args.roi) if args.roi else None,
        "mask_ratio": args.mask_ratio, "mask_shape": args.mask_shape, "mask_space": args.mask_space,
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps, "seed": args.seed, "device": args.device, "save_every": args.save_every,
    }
    if args.mask_cell is not None:
        if len(args.mask_cell) not in (1, 3):
            raise ValueError(f"--mask-cell takes 1 or 3 sizes, got {len(args.mask_cell)}")
        flags["mask_cell"] = args.mask_cell[0] if len(args.mask_cell) == 1 else list(args.mask_cell)
    base = {**cfg.to_dict(), **{k: v for k, v in flags.items() if v is not None}}
    if args.model_size is not None:
        base["model_options"] = {**base.get("model_options", {}), "size": args.model_size}
    if args.no_tensorboard:
        base["tensorboard"] = False
    return PretrainConfig.from_dict(base, source="medcontext pretrain")


def _pretrain_data_flags(args: argparse.Namespace) -> dict:
    """The ``data.*`` settings the options of ``medcontext pretrain`` give (unset ones left out)."""
    from medcontext.data.unlabeled import LISTED, POOL

    test_cases = args.test_cases
    if test_cases is not None and float(test_cases).is_integer():
        test_cases = int(test_cases)
    flags = {"path": str(Path(args.data).resolve()) if args.data else None, "preset": args.data_preset,
             "train_cases": args.train_cases, "val_cases": args.val_cases, "test_cases": test_cases,
             "split_seed": args.split_seed, "cache_dir": args.cache_dir}
    if args.unlabeled:  # folders resolved, as `train --unlabeled` does: a resume from elsewhere finds them
        flags["unlabeled"] = [item if item in (POOL, LISTED) else str(Path(item).resolve()) for item in args.unlabeled]
    if args.test_split:
        from medcontext.shipped import find_split
        from medcontext.study.definitions import load_test_split

        if test_cases is not None:
            raise ValueError("--test-split and --test-cases both choose the test cases; give one of them")
        flags["test_cases"] = load_test_split(find_split(args.test_split))
        flags["use_official_test"] = False  # the given list, as `medcontext experiment` uses its split
    return {k: v for k, v in flags.items() if v is not None}


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from medcontext.engine.pretraining import pretrain

    result = pretrain(_pretrain_config(args), args.out, resume=args.resume, stop_after=args.stop_after,
                      progress=not args.no_progress, trust_checkpoint=args.trust_checkpoint)
    loss = f", last loss {result.loss:.4f}" if result.loss is not None else ""
    if result.stopped_by in ("SIGINT", "SIGTERM") and not result.finished:
        print(f"stopped by {result.stopped_by} after step {result.step}{loss}; continue with --resume", file=sys.stderr)
        return result.exit_code
    if result.stopped_by == "stop_after":
        print(f"stopped after step {result.step} (--stop-after){loss}; continue with --resume")
    else:
        print(f"pretraining finished at step {result.step}{loss}: start a run from it with "
              f"`medcontext train --init-checkpoint {result.weights}`")
    return result.exit_code if result.stopped_by in ("SIGINT", "SIGTERM") else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medcontext.run_scoring import evaluate_run

    evaluate_run(args.run, data=args.data, split=args.split, use=args.use, checkpoint=args.checkpoint,
                 device=args.device, progress=not args.no_progress, trust_checkpoint=args.trust_checkpoint)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from medcontext.engine.predict import predict_run

    predict_run(args.run, args.input, args.output, checkpoint=args.checkpoint, use=args.use,
                probabilities=args.probabilities, device=args.device, trust_checkpoint=args.trust_checkpoint,
                postprocess=not args.no_postprocessing)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medcontext.demo import run_demo

    run_demo(args.out, quick=args.quick, steps=args.steps, train_cases=args.train_cases, seed=args.seed,
             semi=args.semi, progress=not args.no_progress)
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from medcontext.shipped import find_split
    from medcontext.study import STUDIES, StudyRun, collect_runs, load_test_split, run_study, write_report
    from medcontext.study.execution import DONE_MARKER, LAST_STEP_EVAL, format_status, study_status

    study = STUDIES[args.study]
    plan = study.plan()
    runs = [r for r in plan if not args.only or any(fnmatch.fnmatch(r.group, p) or fnmatch.fnmatch(r.name, p)
                                                     for p in args.only)]
    if not runs:
        groups = sorted({r.group for r in plan})
        raise ValueError(f"--only {args.only} selects no run of study {args.study!r}; its groups are {groups}")
    def notes() -> str:  # read when printed: the runs this call finishes change them
        return "\n".join(study.notes(Path(args.out))) if study.notes else ""

    if args.status:
        lines = notes()
        print(format_status(study_status(runs, args.out)) + (f"\n\n{lines}" if lines else ""))
        return 0
    if not args.data:
        raise ValueError("medcontext experiment needs --data DATASET_DIR to train (only --status works without it)")
    test_ids = load_test_split(find_split(args.test_split or study.test_split))
    run_study(runs, args.data, args.out, test_ids, max_runs=args.max_runs, progress=not args.no_progress,
              trust_checkpoint=args.trust_checkpoint, last_step=study.last_step)
    trained = [r for r in plan if isinstance(r, StudyRun)]  # not the pretraining stages
    finished = [Path(args.out) / r.name for r in trained if (Path(args.out) / r.name / DONE_MARKER).is_file()]
    if finished:
        # one folder per study: several studies share a study folder (acdc_semi and acdc_pretrain reuse acdc's runs)
        out = Path(args.report) if args.report else Path(args.out) / "report" / study.name / "report.md"
        preamble = notes()
        write_report(collect_runs(finished), out, title=study.title, preamble=preamble, also_against=study.also_against)
        print(f"wrote {out} ({len(finished)} of {len(trained)} runs)")
        last = [run for run in finished if (run / LAST_STEP_EVAL / "metrics.csv").is_file()] if study.last_step else []
        if last:  # its own folder: the figures beside a report have fixed names
            out_last = out.parent / "last_step" / out.name
            write_report(collect_runs(last, eval_name=LAST_STEP_EVAL), out_last, title=f"{study.title}, last step",
                         preamble=preamble, also_against=study.also_against)
            print(f"wrote {out_last} ({len(last)} runs at their last step)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from medcontext.study import collect_runs, write_report

    runs = collect_runs(args.runs)
    methods = {r.method for r in runs}
    unknown = sorted(set(args.also_against) - methods)
    if unknown:
        raise ValueError(f"--also-against {', '.join(unknown)}: no such method among the runs "
                         f"(methods: {', '.join(sorted(methods))})")
    out = write_report(runs, args.out, title=args.title, also_against=args.also_against)
    print(f"wrote {out}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from medcontext import data

    if args.data_command == "check":
        spec = data.load_dataset(args.path, preset=args.data_preset)
        summary = data.validate_dataset(spec)
        print(summary.format(max_rows=args.rows))
        from medcontext.data.input_checks import dataset_warnings

        for warning in dataset_warnings(summary):
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    if args.data_command == "phantom":
        out = data.generate_phantom(args.out, num_cases=args.cases, shape=tuple(args.shape), seed=args.seed,
                                    num_test=args.test)
        print(f"wrote a phantom dataset with {args.cases} labelled cases to {out}")
        return 0
    if args.data_command == "download":
        kwargs = {"base_url": args.base_url} if args.base_url else {}
        out = data.download_task(args.task, args.out, **kwargs)
        print(f"downloaded to {out}")
        return 0
    raise ValueError(f"unknown data command {args.data_command!r}")


def _cmd_nnunet(args: argparse.Namespace) -> int:
    from medcontext.integrations.nnunet import command

    return command.run(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from medcontext.export import command as export_command

    return export_command.run(args)


_COMMANDS = {
    "train": _cmd_train,
    "pretrain": _cmd_pretrain,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
    "demo": _cmd_demo,
    "experiment": _cmd_experiment,
    "report": _cmd_report,
    "data": _cmd_data,
    "nnunet": _cmd_nnunet,
    "export": _cmd_export,
}


_TRAINING_COMMANDS = ("train", "pretrain", "demo", "experiment")


def _expected_errors() -> tuple[type[BaseException], ...]:
    from medcontext.data import DatasetError
    from medcontext.io.atomic import DiskFullError
    from medcontext.io.run_lock import RunFolderError
    from medcontext.engine.checkpoint import CheckpointError
    from medcontext.engine.host.distributed import DistributedError
    from medcontext.engine.predict import PredictionFailedError
    from medcontext.engine.trainer import NonFiniteLossError
    from medcontext.models.pretrained import PretrainedLoadError

    errors: list[type[BaseException]] = [DatasetError, CheckpointError, DistributedError, NonFiniteLossError, PretrainedLoadError,
                                         ValueError, FileNotFoundError, NotADirectoryError, PermissionError, DiskFullError,
                                         PredictionFailedError, RunFolderError]
    try:
        from medcontext.data import DownloadError

        errors.append(DownloadError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _one_paragraph(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:  # keep listed problems readable but inside one paragraph
        return lines[0] + " " + " ".join(f"[{line.lstrip('-* ')}]" for line in lines[1:])
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``python -m medcontext`` exits with it)."""
    from medcontext.engine.host.signals import RunInterrupted, StopOnSignal

    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    if argv is None and args.command in _TRAINING_COMMANDS and not getattr(args, "print_config", False):
        from medcontext.engine.host.tcmalloc import reexec_with_tcmalloc

        reexec_with_tcmalloc()  # returns only when it does not re-execute
    try:
        with StopOnSignal():
            return _COMMANDS[args.command](args)
    except RunInterrupted as err:
        print(f"medcontext {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("medcontext: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or not isinstance(err, _expected_errors()):
            raise
        print(f"medcontext {args.command}: error: {_one_paragraph(err)}", file=sys.stderr)
        if not debug:
            print("(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
