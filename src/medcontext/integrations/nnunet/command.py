"""``medcontext nnunet ...``: locate, install and export the nnU-Net v2 trainer.

* ``trainer-path``: prints the folder for ``nnUNet_extTrainer``
  (``export nnUNet_extTrainer="$(medcontext nnunet trainer-path)"``).
* ``install-trainer [--remove]``: puts (or removes) the trainer's one re-export file in
  nnU-Net's own trainer folder.
* ``trainer-name``: the trainer name for a set of MedContext settings.
* ``export MODEL_FOLDER OUT``: a plain nnU-Net model folder (student or teacher weights).
"""

from __future__ import annotations

import argparse

from medcontext.method.settings import DEFAULTS, VARIANTS

__all__ = ["add_parser", "run"]


def add_parser(sub, formatter) -> None:
    """Register ``nnunet`` and its sub-commands on the ``medcontext`` sub-parsers ``sub``."""
    nnunet = sub.add_parser("nnunet", formatter_class=formatter, help="the nnU-Net v2 trainer: locate, install, name, export",
                            description=__doc__.split("\n\n", 1)[1])
    nsub = nnunet.add_subparsers(dest="nnunet_command", metavar="NNUNET_COMMAND", required=True)
    nsub.add_parser("trainer-path", formatter_class=formatter, help="print the folder for nnUNet_extTrainer")
    install = nsub.add_parser("install-trainer", formatter_class=formatter,
                              help="put the trainer file into nnU-Net's own trainer folder")
    install.add_argument("--remove", action="store_true", help="remove it instead")
    name = nsub.add_parser("trainer-name", formatter_class=formatter, help="trainer name for MedContext settings")
    name.add_argument("--variant", default=DEFAULTS.variant,
                      choices=[n for n, v in VARIANTS.items() if v.unlabeled is None])  # labelled-only
    name.add_argument("--mask-ratio", type=float, default=DEFAULTS.mask_ratio, help="fraction of in-plane positions masked")
    name.add_argument("--beta", type=float, default=DEFAULTS.beta, help="consistency-loss weight")
    name.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="EMA momentum at step 0")
    name.add_argument("--mask-cell", type=int, nargs="+", metavar="N", help="voxels per mask cell (1 or 3 values, z y x)")
    name.add_argument("--epochs", type=int, help="nnU-Net epochs (default 1000)")
    name.add_argument("--iterations", type=int, help="training iterations per epoch (default 250)")
    name.add_argument("--val-iterations", type=int, help="validation iterations per epoch (default 50)")
    export = nsub.add_parser("export", formatter_class=formatter, help="plain nnU-Net model folder (student or teacher)")
    export.add_argument("model_folder", metavar="MODEL_FOLDER",
                        help="nnUNet_results/DatasetXXX/nnUNetTrainerMedContext...__PLANS__CONFIGURATION")
    export.add_argument("output", metavar="OUT", help="new model folder for nnUNetv2_predict_from_modelfolder")
    export.add_argument("--use", choices=["student", "teacher"], default="student", help="weights to export")
    export.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file of each fold")
    export.add_argument("--folds", nargs="+", help="folds to export (default: all fold_* folders)")
    export.add_argument("--trust-checkpoint", action="store_true",
                        help="read the checkpoints with full pickle instead of weights only: a crafted file can run "
                             "code, so only for files you trust")
    for parser in (nnunet, *nsub.choices.values()):
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors")


def run(args: argparse.Namespace) -> int:
    """Run ``medcontext nnunet <command>``; returns the exit code."""
    from . import discovery, export, settings

    command = args.nnunet_command
    if command == "trainer-path":
        print(discovery.ext_trainer_folder())
    elif command == "install-trainer":
        if args.remove:
            removed = discovery.remove_trainer()
            print(f"removed {removed}" if removed else "nothing to remove")
        else:
            print(f"wrote {discovery.install_trainer()}")
    elif command == "trainer-name":
        cell = None
        if args.mask_cell is not None:
            if len(args.mask_cell) not in (1, 3):
                raise ValueError(f"--mask-cell takes 1 or 3 values, got {len(args.mask_cell)}")
            cell = tuple(args.mask_cell) * (3 // len(args.mask_cell))
        chosen = settings.MedContextSettings(
            variant=args.variant, mask_ratio=args.mask_ratio, beta=args.beta, momentum=args.momentum, mask_cell=cell,
            num_epochs=args.epochs, iterations_per_epoch=args.iterations, val_iterations_per_epoch=args.val_iterations,
        )
        print(settings.trainer_name(chosen.validate(source="medcontext nnunet trainer-name")))
    elif command == "export":
        written = export.export_plain_model(args.model_folder, args.output, use=args.use,
                                            checkpoint_name=args.checkpoint, folds=args.folds,
                                            trust=args.trust_checkpoint)
        for path in written:
            print(f"wrote {path}")
        print(f"predict with: nnUNetv2_predict_from_modelfolder -i INPUT -o OUTPUT -m {args.output}")
    return 0
