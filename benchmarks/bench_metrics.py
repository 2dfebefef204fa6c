"""Time medcontext's Dice + HD95 against MONAI's metric functions on real label volumes.

Cases: the first ``--cases`` label maps of MSD Task04_Hippocampus (1 mm isotropic, classes
Anterior=1 and Posterior=2) and the spleen CT fixture (0.79 x 0.79 x 5.0 mm). Each
"prediction" is the reference label shifted by one to three voxels, eroded in every second
case, so the metrics have real work to do. Both sides get the same prebuilt boolean masks
(ours) / one-hot tensors (MONAI); each case is timed ``--repeats`` times and the best time kept,
and the table reports the median over cases. MONAI runs with one torch thread by default
(``--torch-threads``), like our single-threaded numpy/scipy code.

Run from the repository root:

    /work/venv/bin/python benchmarks/bench_metrics.py --cases 20

Prints a markdown table (milliseconds per case, all classes) and the largest absolute
difference between the two implementations.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy
import torch
from scipy import ndimage

import monai
from monai.metrics import compute_dice, compute_hausdorff_distance

from medcontext.evaluation import evaluate_masks, header_spacing, label_masks

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_prediction(truth: np.ndarray, k: int) -> np.ndarray:
    """A deterministic imperfect prediction: shift by 1-3 voxels in-plane, erode every second case."""
    pred = np.roll(truth, 1 + k % 3, axis=k % 2)
    if k % 2 == 1:
        pred = np.where(ndimage.binary_erosion(pred > 0), pred, 0).astype(truth.dtype)
    return pred


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run_case(pred: np.ndarray, truth: np.ndarray, spacing, classes, case_id: str, repeats: int):
    """Time both implementations on one case: (ours_s, monai_dice_s, monai_hd_s, our rows, MONAI Dice, MONAI HD95)."""
    pred_masks, truth_masks = label_masks(pred, classes), label_masks(truth, classes)
    names = list(classes)
    p = torch.from_numpy(np.stack([pred_masks[n] for n in names]))[None]  # (1, C, H, W, D) bool
    t = torch.from_numpy(np.stack([truth_masks[n] for n in names]))[None]
    p_f, t_f = p.float(), t.float()
    sp = [float(s) for s in spacing]

    def ours():
        return evaluate_masks(pred_masks, truth_masks, spacing, case_id)

    def monai_dice():
        return compute_dice(p_f, t_f, include_background=True, ignore_empty=False)[0].numpy()

    def monai_hd():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty-mask and deprecation warnings
            return compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=sp)[0].numpy()

    ours_s, rows = best_time(ours, repeats)
    dice_s, dice = best_time(monai_dice, repeats)
    hd_s, hd = best_time(monai_hd, repeats)
    return ours_s, dice_s, hd_s, rows, dice, hd


def bench(name: str, cases, classes, repeats: int) -> dict:
    ours_t, dice_t, hd_t, d_dice, d_hd, r_hd = [], [], [], [0.0], [0.0], [0.0]
    skipped = 0
    spacing_txt = ""
    for case_id, pred, truth, spacing in cases:
        spacing_txt = "x".join(f"{s:.2f}" for s in spacing)
        ours_s, dice_s, hd_s, rows, dice, hd = run_case(pred, truth, spacing, classes, case_id, repeats)
        ours_t.append(ours_s)
        dice_t.append(dice_s)
        hd_t.append(hd_s)
        for row, md, mh in zip(rows, dice, hd):
            d_dice.append(abs(row.dice - float(md)))
            if row.note:  # empty-mask conventions differ on purpose (ours: 0 / NaN; MONAI: NaN)
                skipped += 1
                continue
            d_hd.append(abs(row.hd95 - float(mh)))
            r_hd.append(abs(row.hd95 - float(mh)) / max(float(mh), 1e-12))
    return {
        "name": name,
        "cases": len(ours_t),
        "classes": len(classes),
        "spacing": spacing_txt,
        "ours_ms": 1e3 * float(np.median(ours_t)),
        "monai_dice_ms": 1e3 * float(np.median(dice_t)),
        "monai_hd_ms": 1e3 * float(np.median(hd_t)),
        "monai_ms": 1e3 * float(np.median(np.add(dice_t, hd_t))),
        "dice_diff": max(d_dice),
        "hd_diff": max(d_hd),
        "hd_rel": max(r_hd),
        "skipped": skipped,
    }


def hippocampus_cases(data: Path, n: int):
    files = sorted((data / "Task04_Hippocampus" / "labelsTr").glob("hippocampus_*.nii.gz"))[:n]
    if not files:
        raise FileNotFoundError(f"no hippocampus labels under {data / 'Task04_Hippocampus' / 'labelsTr'}")
    for k, path in enumerate(files):
        img = nib.load(path)
        truth = np.asanyarray(img.dataobj).astype(np.int16)
        yield path.name.split(".")[0], make_prediction(truth, k), truth, header_spacing(img, path)


def spleen_case(data: Path):
    path = data / "fixtures" / "spleen_ct_label.nii.gz"
    img = nib.load(path)
    truth = (np.asanyarray(img.dataobj) > 0).astype(np.int16)
    yield "spleen_2", make_prediction(truth, 1), truth, header_spacing(img, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--cases", type=int, default=20, help="number of hippocampus cases")
    parser.add_argument("--repeats", type=int, default=3, help="timings per case; the best is kept")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads for MONAI (default 1: ours is single-threaded numpy/scipy, and on a "
        "busy 2-core machine two torch threads made compute_dice about 100x slower)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    if not args.data.is_dir():
        parser.error(f"data folder {args.data} does not exist; pass --data")

    results = [
        bench(
            "Task04_Hippocampus",
            list(hippocampus_cases(args.data, args.cases)),
            {"Anterior": [1], "Posterior": [2]},
            args.repeats,
        ),
        bench("spleen CT fixture", list(spleen_case(args.data)), {"spleen": [1]}, max(args.repeats, 5)),
    ]
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), monai {monai.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    )
    print()
    print("Milliseconds per case (all classes), median over cases of the best of the repeats.")
    print()
    print(
        "| data | cases x classes | spacing (mm) | medcontext Dice+HD95 "
        "| MONAI compute_dice | MONAI compute_hausdorff_distance | MONAI both | speed-up "
        "| max abs diff Dice | max abs diff HD95 (mm) | max rel diff HD95 |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['name']} | {r['cases']} x {r['classes']} | {r['spacing']} | {r['ours_ms']:.2f} "
            f"| {r['monai_dice_ms']:.2f} "
            f"| {r['monai_hd_ms']:.2f} | {r['monai_ms']:.2f} "
            f"| {r['monai_ms'] / r['ours_ms']:.1f}x | {r['dice_diff']:.1e} | {r['hd_diff']:.1e} | {r['hd_rel']:.1e} |"
        )
    skipped = sum(r["skipped"] for r in results)
    print()
    print(f"HD95 rows with an empty mask (conventions differ on purpose, left out of the comparison): {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
