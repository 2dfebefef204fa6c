"""Experiments made of many runs: the few-shot studies on real MRI (Hippocampus, ACDC) and their report.

Sits above the engine and the evaluation: a study is a list of run settings; the runner trains
and evaluates each (skipping finished runs, resuming interrupted ones) and the report
aggregates the runs' ``eval/metrics.csv`` and ``metrics.jsonl``.
"""

from .definitions import STUDIES, PretrainStage, Study, StudyRun, acdc_plan, hippocampus_plan, load_test_split
from .comparison_report import collect_runs, write_report
from .execution import run_study

__all__ = ["STUDIES", "Study", "StudyRun", "PretrainStage", "acdc_plan", "hippocampus_plan", "load_test_split", "run_study", "collect_runs", "write_report"]
