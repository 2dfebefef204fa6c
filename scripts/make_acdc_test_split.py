"""Draw the fixed ACDC test split of the study (20 patients = 40 volumes, both frames each).

Stratified by the ACDC pathology group (NOR, MINF, DCM, HCM, RV: 4 patients of each), drawn once
with a seeded generator from ``case_metadata.csv`` of the ``Task_ACDC`` folder and written to
``benchmarks/splits/acdc_test.json``. Never train or select on these cases.

    python scripts/make_acdc_test_split.py ../shared/data/Task_ACDC
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

SEED = 2026
PER_GROUP = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the Task_ACDC folder (with case_metadata.csv)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "benchmarks/splits/acdc_test.json")
    args = parser.parse_args()
    rows = list(csv.DictReader((args.data / "case_metadata.csv").open(newline="")))
    by_group: dict[str, set[str]] = {}
    for row in rows:
        by_group.setdefault(row["group"], set()).add(row["patient"])
    rng = np.random.default_rng(SEED)
    patients: list[str] = []
    for group in sorted(by_group):
        pool = sorted(by_group[group])
        patients += [pool[i] for i in sorted(rng.choice(len(pool), size=PER_GROUP, replace=False))]
    test = sorted(row["case_id"] for row in rows if row["patient"] in set(patients))
    record = {
        "description": (
            f"fixed ACDC test split: {len(patients)} patients ({PER_GROUP} per pathology group), both frames each; "
            f"drawn by scripts/make_acdc_test_split.py (seed {SEED}); never train or select on these cases"
        ),
        "patients": sorted(patients),
        "test": test,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.out}: {len(patients)} patients, {len(test)} volumes")


if __name__ == "__main__":
    main()
