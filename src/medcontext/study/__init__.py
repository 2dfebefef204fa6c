"""Experiments made of many runs: the few-shot study on real MRI and its report.

Sits above the engine and the evaluation: a study is a list of run settings; the runner trains
and evaluates each (skipping finished runs, resuming interrupted ones) and the report
aggregates the runs' ``eval/metrics.csv`` and ``metrics.jsonl``.
"""

from .plan import StudyRun, hippocampus_plan, load_test_split
from .report import collect_runs, write_report
from .runner import run_study

__all__ = ["StudyRun", "hippocampus_plan", "load_test_split", "run_study", "collect_runs", "write_report"]
