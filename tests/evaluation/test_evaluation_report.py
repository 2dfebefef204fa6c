"""MetricTable accumulation and summary, CSV round trip, markdown and terminal reports."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from medcontext.evaluation import (
    CaseMetric,
    MetricTable,
    evaluate_case,
    format_summary,
    read_csv,
    write_csv,
    write_markdown,
)
from medcontext.evaluation.metric_table import CSV_COLUMNS

NAN = math.nan


def sample_table() -> MetricTable:
    table = MetricTable()
    table.add(
        [
            CaseMetric("c1", "liver", 0.90, 4.0, 100, 110),
            CaseMetric("c1", "pancreas", 0.50, 12.5, 20, 30),
        ]
    )
    table.add(CaseMetric("c2", "liver", 0.80, 6.0, 90, 100))
    table.add(CaseMetric("c2", "pancreas", 0.0, NAN, 0, 25, "prediction empty"))
    table.add(
        [
            CaseMetric("c3", "liver", 0.70, 11.0, 80, 100),
            CaseMetric("c3", "pancreas", 0.30, 20.0, 10, 40),
            CaseMetric("c4", "liver", 1.0, 0.0, 0, 0, "both empty"),
            CaseMetric("c4", "pancreas", 0.0, NAN, 5, 0, "truth empty"),
        ]
    )
    return table


def test_summary_matches_numpy_and_never_averages_nan_as_zero():
    table = sample_table()
    s = table.summary()
    assert s.n_cases == 4 and len(table) == 8
    assert table.class_names == ["liver", "pancreas"] and table.case_ids == ["c1", "c2", "c3", "c4"]

    liver = s.by_class("liver")
    dice = np.array([0.9, 0.8, 0.7, 1.0])
    hd = np.array([4.0, 6.0, 11.0, 0.0])
    assert liver.n_cases == 4 and liver.hd95_missing == 0 and liver.n_both_empty == 1
    assert liver.dice_mean == pytest.approx(dice.mean()) and liver.dice_std == pytest.approx(dice.std())
    assert liver.dice_median == pytest.approx(np.median(dice))
    assert liver.hd95_mean == pytest.approx(hd.mean()) and liver.hd95_std == pytest.approx(hd.std())
    assert liver.hd95_median == pytest.approx(np.median(hd))

    pancreas = s.by_class("pancreas")
    finite = np.array([12.5, 20.0])
    assert pancreas.hd95_missing == 2
    assert (pancreas.n_pred_empty, pancreas.n_truth_empty, pancreas.n_both_empty) == (1, 1, 0)
    assert pancreas.hd95_mean == pytest.approx(finite.mean())  # 16.25, not (12.5 + 20) / 4
    assert pancreas.hd95_std == pytest.approx(finite.std())
    assert pancreas.hd95_median == pytest.approx(np.median(finite))
    assert pancreas.dice_mean == pytest.approx(np.mean([0.5, 0.0, 0.3, 0.0]))  # empty-mask Dice 0 counts

    assert s.mean_dice == pytest.approx((dice.mean() + pancreas.dice_mean) / 2)
    assert s.mean_hd95 == pytest.approx((hd.mean() + finite.mean()) / 2)
    assert s.hd95_missing == 2
    with pytest.raises(KeyError, match="liver"):
        s.by_class("spleen")


def test_class_with_only_missing_hd95_is_excluded_from_the_mean():
    table = MetricTable(
        [
            CaseMetric("c1", "a", 0.8, 3.0, 10, 10),
            CaseMetric("c1", "b", 0.0, NAN, 0, 5, "prediction empty"),
        ]
    )
    s = table.summary()
    assert math.isnan(s.by_class("b").hd95_mean) and s.by_class("b").hd95_missing == 1
    assert s.mean_hd95 == pytest.approx(3.0)
    assert s.mean_dice == pytest.approx(0.4)


def test_add_validates_all_rows_before_adding_any():
    table = MetricTable([CaseMetric("c1", "a", 0.5, 1.0, 1, 1)])
    with pytest.raises(ValueError, match="already in the table"):
        table.add([CaseMetric("c2", "a", 0.5, 1.0, 1, 1), CaseMetric("c1", "a", 0.6, 1.0, 1, 1)])
    with pytest.raises(ValueError, match="Dice"):
        table.add([CaseMetric("c3", "a", 0.5, 1.0, 1, 1), CaseMetric("c4", "a", 1.5, 1.0, 1, 1)])
    with pytest.raises(ValueError, match="HD95"):
        table.add(CaseMetric("c5", "a", 0.5, math.inf, 1, 1))
    with pytest.raises(TypeError, match="CaseMetric"):
        table.add([("c6", "a", 0.5)])
    assert [r.case_id for r in table.rows] == ["c1"]
    table.reset()
    with pytest.raises(ValueError, match="empty"):
        table.summary()


def test_table_accumulates_evaluate_case_output():
    truth = np.zeros((10, 10, 10), int)
    truth[2:6, 2:6, 2:6] = 1
    table = MetricTable()
    for k in range(3):
        table.add(evaluate_case(np.roll(truth, k, axis=0), truth, (1.0, 1.0, 1.0), {"a": [1]}, f"c{k}"))
    s = table.summary().by_class("a")
    assert s.n_cases == 3
    assert s.dice_mean == pytest.approx(np.mean([1.0, 2 * 48 / 128, 2 * 32 / 128]))


def test_csv_round_trip_is_exact_and_missing_is_empty_cell(tmp_path):
    table = sample_table()
    table.add(CaseMetric("c,5 \"quoted\"", "liver", 1 / 3, 2 / 7, 3, 4))
    path = write_csv(table, tmp_path / "sub" / "metrics.csv")
    assert path == tmp_path / "sub" / "metrics.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert lines[4] == "c2,pancreas,0.0,,0,25,prediction empty"
    back = read_csv(path).rows
    assert len(back) == len(table.rows)
    for a, b in zip(table.rows, back):
        assert (a.case_id, a.class_name, a.dice, a.pred_voxels, a.truth_voxels, a.note) == (
            b.case_id,
            b.class_name,
            b.dice,
            b.pred_voxels,
            b.truth_voxels,
            b.note,
        )
        assert a.hd95 == b.hd95 or (math.isnan(a.hd95) and math.isnan(b.hd95))
    assert os.listdir(tmp_path / "sub") == ["metrics.csv"]  # no temporary file left behind


def test_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "metrics.csv"
    target.mkdir()  # os.replace onto a folder fails
    with pytest.raises(OSError):
        write_csv(sample_table(), target)
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv"] and target.is_dir()


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_reports_get_the_umask_permissions(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        paths = [write_csv(sample_table(), tmp_path / "metrics.csv"),
                 write_markdown(sample_table(), tmp_path / "summary.md")]
    finally:
        os.umask(old)
    assert [os.stat(p).st_mode & 0o777 for p in paths] == [expected, expected]
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv", "summary.md"]


def test_read_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("case,dice\nc1,0.5\n")
    with pytest.raises(ValueError, match="expected the header"):
        read_csv(bad)
    bad.write_text(",".join(CSV_COLUMNS) + "\nc1,a,zero,,1,1,\n")
    with pytest.raises(ValueError, match="line 2"):
        read_csv(bad)


def test_markdown_reports_missing_counts_and_conventions(tmp_path):
    path = write_markdown(sample_table(), tmp_path / "report.md", title="Synapse test")
    text = path.read_text()
    assert text.startswith("# Synapse test\n")
    assert "| liver | 4 | 0.8500 ± 0.1118 | 0.8500 | 5.25 ± 3.96 | 5.00 | 0 |" in text
    assert "| pancreas | 4 | 0.2000 ± 0.2121 | 0.1500 | 16.25 ± 3.75 | 16.25 | 2 |" in text
    assert "| **Mean over classes** | 4 | 0.5250 |  | 10.75 |  | 2 |" in text
    assert "Both prediction and truth empty: Dice 1, HD95 0 (1 rows)" in text
    assert "Exactly one empty: Dice 0, HD95 missing (1 rows with the prediction empty, 1 with the truth empty)" in text
    assert "never averaged as 0" in text
    assert "larger of the two directed" in text


def test_markdown_states_union_convention(tmp_path):
    table = MetricTable([CaseMetric("c1", "a", 0.8, 3.0, 10, 10)], hd95_combine="union")
    text = write_markdown(table, tmp_path / "r.md").read_text()
    assert "pooled" in text and "larger of the two directed" not in text
    with pytest.raises(ValueError, match="hd95_combine"):
        MetricTable(hd95_combine="mean")


def test_format_summary_lines():
    text = format_summary(sample_table())
    lines = text.splitlines()
    liver = next(line for line in lines if line.startswith("liver"))
    pancreas = next(line for line in lines if line.startswith("pancreas"))
    mean = next(line for line in lines if line.startswith("mean"))
    assert "0.8500±0.1118" in liver and "5.25±3.96" in liver and liver.split()[-1] == "0"
    assert "16.25±3.75" in pancreas and pancreas.split()[-1] == "2"
    assert "0.5250" in mean and "10.75" in mean and mean.split()[-1] == "2"
    assert "not averaged" in text
