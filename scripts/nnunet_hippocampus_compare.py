#!/usr/bin/env python
"""nnU-Net's default trainer vs nnUNetTrainerMedContext on Task04_Hippocampus, same fold, same budget.

Steps (each skipped when its output exists, so a stopped run resumes; training resumes with ``--c``):

1. an nnU-Net v2 raw dataset (symlinks, nothing copied) holding only the training and validation
   cases: k training cases and 5 validation cases drawn by ``--seed`` from the cases outside the
   fixed test split ``benchmarks/splits/hippocampus_test.json`` (50 cases, never trained or
   selected on, never seen by nnU-Net's planning);
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres``, and ``splits_final.json`` with that one fold 0;
3. ``nnUNetv2_train`` for each trainer, then ``nnUNetv2_predict`` of the test cases;
4. Dice and HD95 (mm) per test case and class with ``medcontext.evaluation.metrics``, written to
   ``WORK/comparison.json`` and ``WORK/comparison.md`` with the paired difference and a 95%
   bootstrap interval over test cases.

CPU budget (what RESULTS.md reports)::

    nice -n 10 python scripts/nnunet_hippocampus_compare.py --work /tmp/nnunet_hippo \
        --train-cases 10 --epochs 4 --iterations 10 --val-iterations 2 --device cpu --no-tta --processes 1

nnU-Net's full budget on a GPU (1000 epochs x 250 iterations, nnU-Net's own nnUNetTrainer)::

    python scripts/nnunet_hippocampus_compare.py --work /data/nnunet_hippo --train-cases 145 --full-budget

With ``--epochs``/``--iterations`` the default trainer is ``nnUNetTrainerMedContext_baseline_<budget>``:
nnUNetTrainer's step unchanged (tests/integrations/test_nnunet_trainer.py checks it equals
nnUNetTrainer.train_step), only the budget is set by the name; with ``--full-budget`` it is
``nnUNetTrainer`` itself. Needs ``pip install "medcontext[nnunet]"`` and the trainer discoverable
(``medcontext nnunet install-trainer`` or ``nnUNet_extTrainer``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASET_ID = 504
DATASET_NAME = f"Dataset{DATASET_ID}_HippocampusCompare"
CLASSES = {"anterior": [1], "posterior": [2]}


def _run(command: list[str], env: dict, log: Path) -> None:
    print("$", " ".join(command), flush=True)
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        result = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}; see {log}")


def _split(data: Path, train_cases: int, val_cases: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    test = json.loads((ROOT / "benchmarks" / "splits" / "hippocampus_test.json").read_text())["test"]
    ids = sorted(p.name[: -len(".nii.gz")] for p in (data / "labelsTr").glob("*.nii.gz"))
    missing = sorted(set(test) - set(ids))
    if missing:
        sys.exit(f"{data}: test cases {missing[:3]} are missing")
    pool = [i for i in ids if i not in set(test)]
    if train_cases + val_cases > len(pool):
        sys.exit(f"--train-cases {train_cases} + {val_cases} validation cases exceed the {len(pool)} non-test cases")
    chosen = np.random.default_rng(seed).choice(pool, train_cases + val_cases, replace=False).tolist()
    return sorted(chosen[:train_cases]), sorted(chosen[train_cases:]), test


def _link(source: Path, target: Path) -> None:
    if not target.exists():
        target.symlink_to(source.resolve())


def _raw_dataset(data: Path, raw: Path, cases: list[str]) -> None:
    folder = raw / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    for case in cases:
        _link(data / "imagesTr" / f"{case}.nii.gz", folder / "imagesTr" / f"{case}_0000.nii.gz")
        _link(data / "labelsTr" / f"{case}.nii.gz", folder / "labelsTr" / f"{case}.nii.gz")
    dataset = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
               "numTraining": len(cases), "file_ending": ".nii.gz", "name": "Task04_Hippocampus (medcontext comparison)"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))


def _score(pred_folder: Path, data: Path, test: list[str]) -> dict:
    import nibabel as nib

    from medcontext.evaluation.metrics import evaluate_case

    rows = {}
    for case in test:
        truth_image = nib.load(str(data / "labelsTr" / f"{case}.nii.gz"))
        truth = np.asarray(truth_image.dataobj).astype(np.int64)
        pred = np.asarray(nib.load(str(pred_folder / f"{case}.nii.gz")).dataobj).astype(np.int64)
        spacing = [float(s) for s in truth_image.header.get_zooms()[:3]]
        metrics = evaluate_case(pred, truth, spacing, CLASSES, case)
        rows[case] = {m.class_name: {"dice": m.dice, "hd95": m.hd95} for m in metrics}
    return rows


def _case_means(rows: dict, key: str) -> np.ndarray:
    return np.array([np.nanmean([rows[c][k][key] for k in CLASSES]) for c in sorted(rows)])


def _bootstrap(delta: np.ndarray, seed: int = 0, resamples: int = 5000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = [np.nanmean(delta[rng.integers(0, len(delta), len(delta))]) for _ in range(resamples)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Task04_Hippocampus"))
    parser.add_argument("--work", required=True, help="folder for nnUNet_raw/preprocessed/results and the report")
    parser.add_argument("--train-cases", type=int, default=10)
    parser.add_argument("--val-cases", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="draws the training and validation cases")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=10, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=2, help="validation iterations per epoch")
    parser.add_argument("--full-budget", action="store_true",
                        help="nnU-Net's own budget (1000 x 250): nnUNetTrainer vs nnUNetTrainerMedContext")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--no-tta", action="store_true", help="predict without mirroring (nnUNetv2_predict --disable_tta)")
    parser.add_argument("--processes", type=int, default=2, help="nnU-Net preprocessing / export processes")
    args = parser.parse_args(argv)

    data, work = Path(args.data).resolve(), Path(args.work).resolve()
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"), nnUNet_def_n_proc=str(args.processes))
    if args.device == "cpu":
        env["nnUNet_n_proc_DA"] = "0"  # no augmentation worker processes on a small CPU
    bin_dir = Path(sys.executable).parent
    log = work / "commands.log"
    work.mkdir(parents=True, exist_ok=True)

    train, val, test = _split(data, args.train_cases, args.val_cases, args.seed)
    _raw_dataset(data, work / "raw", train + val)
    preprocessed = work / "preprocessed" / DATASET_NAME
    if not (preprocessed / "nnUNetPlans.json").is_file():
        plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}  # planning needs >= 1
        _run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
              "-np", str(args.processes), "-npfp", str(args.processes), "--verify_dataset_integrity"], plan_env, log)
    (preprocessed / "splits_final.json").write_text(json.dumps([{"train": train, "val": val}], indent=1))

    if args.full_budget:
        trainers = {"nnunet": "nnUNetTrainer", "medcontext": "nnUNetTrainerMedContext"}
    else:
        budget = f"{args.epochs}epochs_{args.iterations}iters_{args.val_iterations}valiters"
        trainers = {"nnunet": f"nnUNetTrainerMedContext_baseline_{budget}", "medcontext": f"nnUNetTrainerMedContext_{budget}"}

    test_input = work / "test_images"
    test_input.mkdir(exist_ok=True)
    for case in test:
        _link(data / "imagesTr" / f"{case}.nii.gz", test_input / f"{case}_0000.nii.gz")

    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "train": train, "val": val,
              "test": test, "trainers": trainers, "seconds": {}, "scores": {}}
    for key, trainer in trainers.items():
        fold = work / "results" / DATASET_NAME / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
        if not (fold / "checkpoint_final.pth").is_file():
            start = time.time()
            resume = ["--c"] if any(fold.glob("checkpoint_*.pth")) else []
            _run([str(bin_dir / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", trainer,
                  "-device", args.device, *resume], env, log)
            seconds_file = fold / "train_seconds.txt"  # summed over resumed segments
            before = float(seconds_file.read_text()) if seconds_file.is_file() else 0.0
            seconds_file.write_text(f"{before + time.time() - start:.1f}\n")
        report["seconds"][key] = float((fold / "train_seconds.txt").read_text()) if (fold / "train_seconds.txt").is_file() else None
        predictions = work / "predictions" / key
        if not all((predictions / f"{c}.nii.gz").is_file() for c in test):
            _run([str(bin_dir / "nnUNetv2_predict"), "-i", str(test_input), "-o", str(predictions), "-d", str(DATASET_ID),
                  "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", args.device, "-npp", "1", "-nps", "1",
                  *(["--disable_tta"] if args.no_tta else [])], env, log)
        report["scores"][key] = _score(predictions, data, test)

    lines = [f"# nnU-Net vs nnUNetTrainerMedContext on Task04_Hippocampus", "",
             f"`{report['command']}`", "",
             f"{len(train)} training cases, {len(val)} validation cases, {len(test)} test cases (never trained or selected on).", "",
             "| trainer | name | Dice anterior | Dice posterior | mean Dice | mean HD95 (mm) | training (s) |",
             "|---|---|---|---|---|---|---|"]
    for key, trainer in trainers.items():
        rows = report["scores"][key]
        dice = {k: np.mean([rows[c][k]["dice"] for c in rows]) for k in CLASSES}
        lines.append(f"| {key} | `{trainer}` | {dice['anterior']:.4f} | {dice['posterior']:.4f} | "
                     f"{_case_means(rows, 'dice').mean():.4f} | {np.nanmean(_case_means(rows, 'hd95')):.2f} | "
                     f"{report['seconds'][key] if report['seconds'][key] is not None else 'n/a'} |")
    delta = _case_means(report["scores"]["medcontext"], "dice") - _case_means(report["scores"]["nnunet"], "dice")
    low, high = _bootstrap(delta)
    report["delta_mean_dice"] = {"mean": float(delta.mean()), "ci95": [low, high]}
    lines += ["", f"MedContext - nnU-Net, mean Dice per test case: {delta.mean():+.4f} "
                  f"(95% bootstrap interval over test cases [{low:+.4f}, {high:+.4f}])"]
    (work / "comparison.json").write_text(json.dumps(report, indent=1))
    (work / "comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
