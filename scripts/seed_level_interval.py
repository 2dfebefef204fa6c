"""Seed-level verdict from per-seed paired differences alone (no per-case values needed).

The study report decides "better"/"worse" with a hierarchical bootstrap over seeds and test
cases (``medcontext.evaluation.statistics.hierarchical_bootstrap``). For results whose per-case values
were not kept (the first Hippocampus study), this applies the same bootstrap to the per-seed
mean differences, one value per seed: it resamples seeds only, so its interval is slightly
narrower than the hierarchical one would be.

    python scripts/seed_level_interval.py -3.97 -0.34 -1.42      # Dice points, one per seed
"""

from __future__ import annotations

import argparse

import numpy as np

from medcontext.evaluation.statistics import hierarchical_bootstrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("differences", nargs="+", type=float, help="per-seed mean differences (e.g. Dice points)")
    args = parser.parse_args()
    mean, low, high = hierarchical_bootstrap([np.array([d]) for d in args.differences])
    verdict = "better" if low > 0 else "worse" if high < 0 else "no measurable difference"
    print(f"mean {mean:+.2f}, 95% interval over seeds [{low:+.2f}, {high:+.2f}]: {verdict}")


if __name__ == "__main__":
    main()
