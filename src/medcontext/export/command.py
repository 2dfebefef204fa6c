"""``medcontext export``: its arguments and what it runs (the CLI only wires it in)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub, formatter_class) -> None:
    """Add the ``export`` sub-command to the CLI's sub-parsers."""
    export = sub.add_parser(
        "export", formatter_class=formatter_class, help="write a trained run as a MONAI Bundle",
        description="Write a MONAI Bundle (configs/metadata.json, configs/inference.json, models/model.pt, "
                    "docs/README.md) with the run's preprocessing, sliding window, network and post-processing; "
                    "`python -m monai.bundle run --config_file configs/inference.json --bundle_root OUT "
                    "--dataset_dir IN --output_dir MASKS` then segments a folder of NIfTI files with MONAI alone.",
    )
    export.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors")
    export.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder from `medcontext train`")
    export.add_argument("--bundle", required=True, metavar="OUT", help="bundle folder to create (must not exist)")
    export.add_argument("--torchscript", action="store_true",
                        help="also write models/model.ts and run it from inference.json: the bundle then needs neither "
                             "medcontext nor the network's Python class (scripted, else traced on one window)")
    export.add_argument("--use", default="student", choices=["student", "teacher"], help="which weights")
    export.add_argument("--checkpoint", default="best", help="best (falls back to last), last or a path")
    export.add_argument("--trust-checkpoint", action="store_true",
                        help="load the checkpoint with full pickle instead of weights only (only for files you trust)")


def run(args: argparse.Namespace) -> int:
    """Run ``medcontext export`` with parsed ``args``; returns the exit code."""
    from medcontext.export.bundle import export_bundle

    export_bundle(args.run, args.bundle, checkpoint=args.checkpoint, use=args.use, torchscript=args.torchscript,
                  trust_checkpoint=args.trust_checkpoint)
    return 0
