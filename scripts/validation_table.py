"""Validation Dice by training step of runs still in progress (no test evaluation needed).

Reads the ``"val"`` records of each run's ``metrics.jsonl`` (or a file of those records) and prints
a markdown table: one row per validated step, mean Dice and the per-class Dice of every run.

    python scripts/validation_table.py runs/acdc_study/acdc_unet3d_k5/baseline_s0 \\
        runs/acdc_study/acdc_unet3d_k5/medcontext_s0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def validation_records(path: Path) -> dict[int, dict]:
    """Step -> the validation record, from a run folder or a JSON-lines file."""
    path = path / "metrics.jsonl" if path.is_dir() else path
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {int(r["step"]): r for r in records if r.get("kind") == "val"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or files of validation records")
    parser.add_argument("--names", nargs="+", help="column names (default: the folder or file names)")
    args = parser.parse_args()
    names = args.names or [p.name for p in args.runs]
    curves = [validation_records(p) for p in args.runs]
    classes = list(next(iter(curves[0].values()))["dice"]) if curves[0] else []
    header = "| step | " + " | ".join(f"{n} mean Dice | {' / '.join(classes)}" for n in names) + " |"
    print(header)
    print("|---:|" + "---:|---|" * len(names))
    for step in sorted(set().union(*curves)):
        cells = []
        for curve in curves:
            record = curve.get(step)
            if record is None:
                cells += ["(not reached)", ""]
            else:
                cells += [f"{100 * record['mean_dice']:.1f}", " / ".join(f"{100 * record['dice'][k]:.1f}" for k in classes)]
        print(f"| {step} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
