"""Copy the small records of a study's runs into the repository (run folders do not survive).

For every run folder under the study folder (``GROUP/RUN``) it copies ``config.yaml``,
``split.json``, ``plan.json``, ``postprocessing.json``, ``study_done.json`` (finished runs only), the
test metrics (``eval/metrics.csv``, ``eval/summary.md``, and ``eval/raw/metrics.csv`` when
post-processing changed the predictions; the same of ``eval_last/``, the last-step evaluation of
studies that have one, as ``test_metrics_eval_last*.csv``), ``unlabeled.json`` of semi-supervised
runs, and a thinned ``metrics.jsonl``: every validation
record, and one training record in ``--train-every`` (the loss curves; the full log is about
1 MB per run). Checkpoints and predictions stay behind. Unfinished runs are copied too, so
that their validation curves are kept; ``study_done.json`` tells them apart. A pretraining
stage's folder (``medcontext pretrain``: ``config.json``) keeps ``config.json``, ``volumes.json``,
``pretrain_done.json`` (finished stages), its summed wall-clock time, ``loss_curve.png`` and the
thinned log; ``pretrained.pt`` and ``last.pt`` stay behind (the fine-tuned runs' ``study_done.json``
repeat the stage's cost).

    python scripts/collect_study_records.py runs/acdc_study results/acdc
    python scripts/collect_study_records.py runs/acdc_study results/acdc_semi --only 'acdc_semi_unet3d_k5/*_6000steps_*'

``--only PATTERN`` (shell patterns on ``GROUP/RUN``) keeps the other runs of a shared study folder,
and their lines of ``study.jsonl``, out of the records.

``medcontext report`` reads such records folders like run folders (without the overlay figure).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
from pathlib import Path

from medcontext.io.atomic import write_text_atomic
from medcontext.study.comparison_report import recorded_metrics
from medcontext.study.execution import DONE_MARKER, LAST_STEP_EVAL, PRETRAIN_DONE, STAGE_WALL_TIME

RUN_FILES = ("config.yaml", "split.json", "unlabeled.json", "plan.json", "postprocessing.json", DONE_MARKER)
#: the small files of a pretraining stage (a `medcontext pretrain` folder)
STAGE_FILES = ("config.json", "volumes.json", PRETRAIN_DONE, STAGE_WALL_TIME, "loss_curve.png")
#: EVAL/NAME -> records name (``medcontext report`` reads the metrics under ``recorded_metrics(EVAL)``)
EVAL_FILES = {
    (evaluation, name): record
    for evaluation, summary in (("eval", "test_summary.md"), (LAST_STEP_EVAL, f"test_summary_{LAST_STEP_EVAL}.md"))
    for name, record in (("metrics.csv", recorded_metrics(evaluation)), ("summary.md", summary),
                         ("raw/metrics.csv", recorded_metrics(evaluation, raw=True)))
}


def thinned_log(lines: list[str], train_every: int) -> list[str]:
    """Every non-training record, and the training records of steps divisible by ``train_every``;
    for a step logged twice (a resumed run repeats the steps after its last checkpoint) the
    last record wins."""
    by_key: dict[tuple[str, int], str] = {}
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        kind, step = record.get("kind", ""), int(record.get("step", -1))
        if kind == "train" and step % train_every:
            continue
        by_key[(kind, step)] = line
    return [by_key[key] for key in sorted(by_key, key=lambda k: (k[1], k[0]))]


def collect_run(run: Path, target: Path, train_every: int) -> bool:
    """Copy one run's (or pretraining stage's) records; False when the folder is neither (no
    ``config.yaml``, no ``config.json``)."""
    stage = not (run / "config.yaml").is_file()
    if stage and not (run / "config.json").is_file():
        return False
    target.mkdir(parents=True, exist_ok=True)
    for name in STAGE_FILES if stage else RUN_FILES:
        if (run / name).is_file():
            shutil.copyfile(run / name, target / name)
    for (evaluation, name), record_name in EVAL_FILES.items():
        if not stage and (run / evaluation / name).is_file():
            shutil.copyfile(run / evaluation / name, target / record_name)
    log = run / "metrics.jsonl"
    if log.is_file():
        kept = thinned_log(log.read_text().splitlines(), train_every)
        (target / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    return True


def selected(name: str, patterns: list[str] | None) -> bool:
    """Whether the run ``GROUP/RUN`` matches one of ``patterns`` (``None``: every run)."""
    return not patterns or any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def merge_study_log(source: Path, target: Path, patterns: list[str] | None = None) -> None:
    """Merge the study's ``study.jsonl`` (one line per finished run) into the kept one: runs of
    earlier sittings stay, a run finished again replaces its old line; of the source, only the
    runs ``patterns`` select. Written atomically."""
    entries: dict[str, str] = {}
    for path in (target, source):
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip() and (path == target or selected(json.loads(line)["run"], patterns)):
                    entries[json.loads(line)["run"]] = line
    write_text_atomic(target, "".join(line + "\n" for line in entries.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="study folder (GROUP/RUN sub-folders)")
    parser.add_argument("target", type=Path, help="where the records go (same GROUP/RUN layout)")
    parser.add_argument("--train-every", type=int, default=10, help="keep one training record in N (default 10)")
    parser.add_argument("--only", nargs="+", metavar="PATTERN",
                        help="copy only the runs GROUP/RUN matching these shell patterns (default: every run)")
    args = parser.parse_args()
    copied = []
    for run in sorted(p for p in args.study.glob("*/*") if p.is_dir()):
        if not selected(f"{run.parent.name}/{run.name}", args.only):
            continue
        if collect_run(run, args.target / run.parent.name / run.name, args.train_every):
            done = "finished" if (run / DONE_MARKER).is_file() or (run / PRETRAIN_DONE).is_file() else "unfinished"
            copied.append(f"{run.parent.name}/{run.name} ({done})")
    if (args.study / "study.jsonl").is_file():
        merge_study_log(args.study / "study.jsonl", args.target / "study.jsonl", args.only)
    print(f"copied {len(copied)} run(s) to {args.target}:", *copied, sep="\n  ")


if __name__ == "__main__":
    main()
