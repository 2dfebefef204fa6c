import json
from pathlib import Path

import numpy as np
import pytest

from medcontext.study import STUDIES, acdc_plan, hippocampus_plan, load_test_split
from medcontext.study.comparison_report import (
    RunResult, _final_loss_lines, _method_label, _paired_lines, _time_lines, _validation_lines, run_compute_seconds,
    run_machine,
)


def _run(method, seed, dice_by_case):
    dice = {c: {"a": d, "b": d} for c, d in dice_by_case.items()}
    hd = {c: {"a": 1.0, "b": float("nan")} for c in dice_by_case}
    return RunResult(path=None, setting="s", method=method, seed=seed, classes=["a", "b"], dice=dice, hd95=hd)


def test_paired_lines_give_differences_per_seed_and_a_seed_level_verdict():
    cases = [f"c{i}" for i in range(30)]
    runs = []
    for seed in (0, 1):
        runs.append(_run("baseline", seed, {c: 0.5 for c in cases}))
        runs.append(_run("medcontext", seed, {c: 0.6 for c in cases}))
    text = "\n".join(_paired_lines(runs))
    assert "| medcontext | 0 | +10.00 | [+10.00, +10.00] over test cases | |" in text
    assert "| **medcontext** | all 2 | **+10.00** | **[+10.00, +10.00]** over seeds and cases | **better** |" in text
    # one seed better on every case, one worse: significant within each seed, no verdict across seeds
    runs = [_run("baseline", 0, {c: 0.5 for c in cases}), _run("medcontext", 0, {c: 0.6 for c in cases}),
            _run("baseline", 1, {c: 0.5 for c in cases}), _run("medcontext", 1, {c: 0.45 for c in cases})]
    assert "**no measurable difference**" in "\n".join(_paired_lines(runs))
    single = [_run("baseline", 0, {c: 0.5 for c in cases}), _run("medcontext", 0, {c: 0.6 for c in cases})]
    assert "one seed: no verdict" in "\n".join(_paired_lines(single))


def test_validation_table_averages_seeds_per_step():
    runs = []
    for seed, offset in ((0, 0.0), (1, 0.1)):
        run = _run("baseline", seed, {"c0": 0.5})
        run.val_log = [{"kind": "val", "step": s, "mean_dice": 0.1 * i + offset} for i, s in enumerate((250, 500, 750))]
        runs.append(run)
    peaked = _run("medcontext", 0, {"c0": 0.5})  # best validation at step 500, not at the end
    peaked.val_log = [{"kind": "val", "step": s, "mean_dice": d} for s, d in ((250, 0.2), (500, 0.4), (750, 0.3))]
    text = "\n".join(_validation_lines([*runs, peaked]))
    assert "| method | seeds | 250 | 500 | 750 | best |" in text
    assert "| baseline | 2 | 5.0 | 15.0 | 25.0 | 25.0 |" in text and "| medcontext | 1 | 20.0 | 40.0 | 30.0 | 40.0 |" in text
    assert _validation_lines([_run("baseline", 0, {"c0": 0.5})]) == []


def test_final_loss_table_averages_the_last_steps_per_seed():
    runs = []
    for seed, level in ((0, 1.0), (1, 3.0)):
        run = _run("medcontext", seed, {"c0": 0.5})
        # 100 logged steps: the first 50 at 9.0, the last 50 at `level` (sup), level / 2 (msl), 0 (cl)
        run.train_log = [
            {"step": step, "sup": 9.0 if step <= 50 else level, "msl": 9.0 if step <= 50 else level / 2, "cl": 0.0}
            for step in range(1, 101)
        ]
        runs.append(run)
    text = "\n".join(_final_loss_lines(runs))
    assert "per seed (s0 / s1)" in text
    assert "| medcontext | 1.00 / 3.00 | 0.50 / 1.50 | 0.00 / 0.00 |" in text
    assert _final_loss_lines([_run("baseline", 0, {"c0": 0.5})]) == []  # no training log, no table


def test_training_time_comes_from_the_logged_times_of_every_step_even_after_a_resume():
    base = _run("baseline", 0, {"c0": 0.5})
    # steps 1-10 at 1 s; a resume repeats steps 9-10 (the repeat, at 2 s, is the one that counts)
    base.train_log = [{"step": s, "step_time": 1.0} for s in range(1, 11)] + [{"step": s, "step_time": 2.0} for s in (9, 10)]
    base.val_log = [{"step": 5, "time": 30.0}, {"step": 10, "time": 50.0}, {"step": 10, "time": 60.0}]
    steps, validation, median = run_compute_seconds(base)
    assert steps == pytest.approx(10 * 1.2) and validation == 90.0 and median == 1.0
    ours = _run("medcontext", 0, {"c0": 0.5})
    ours.train_log = [{"step": s, "step_time": 2.5} for s in range(1, 11)]
    text = "\n".join(_time_lines([base, ours]))
    assert "medcontext 0 min of steps (2.50 s median step, 2.50x the baseline's step)" in text
    assert run_compute_seconds(_run("baseline", 1, {"c0": 0.5})) is None and _time_lines([_run("baseline", 1, {"c0": 0.5})]) == []


def test_training_time_is_grouped_by_machine_and_compared_only_within_one():
    amx, avx2 = "bf16 on Intel Xeon (AMX)", "fp32 on AMD EPYC (AVX2)"
    runs = []
    for method, machine, step_time in (("baseline", amx, 0.5), ("medcontext", amx, 1.0), ("no_teacher", avx2, 4.0)):
        run = _run(method, 0, {"c0": 0.5})
        run.train_log, run.machine = [{"step": s, "step_time": step_time} for s in range(1, 11)], machine
        runs.append(run)
    text = "\n".join(_time_lines(runs))
    assert f"medcontext 0 min of steps (1.00 s median step, 2.00x the baseline's step) + 0 min of validation [1 run, {amx}]" in text
    assert f"no_teacher 1 min of steps (4.00 s median step) + 0 min of validation [1 run, {avx2}]" in text  # no ratio
    assert "trained on different machines" in text
    one = "\n".join(_time_lines(runs[:2]))
    assert f"All runs: {amx}." in one and "[" not in one and "logged no machine" not in one
    for run in runs:
        run.machine = "machine not recorded"
    assert "3 run(s) logged no machine" in "\n".join(_time_lines(runs))


def test_run_machine_reads_the_start_records_of_a_log():
    start = {"kind": "start", "device": "cpu", "processor": "AMD EPYC", "isa": "AVX2", "precision": "fp32"}
    gpu = {"kind": "start", "device": "cuda", "processor": "NVIDIA H200", "isa": "AVX512", "precision": "bf16"}
    log = [{**start, "step": 0}, {"kind": "train", "step": 1}, {**start, "step": 250}, {**gpu, "step": 500}]
    assert run_machine(log) == "fp32 on AMD EPYC (AVX2), then bf16 on NVIDIA H200"
    assert run_machine([{"kind": "train", "step": 1}], "bf16") == "bf16, machine not recorded"
    assert run_machine([]) == "machine not recorded"


def test_plan_is_paired_and_within_budget():
    runs = hippocampus_plan()
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 62
    assert {r.overrides.get("method.beta") for r in runs if "beta" in r.ablation} == {0.1, 1.0}
    horizons = [r for r in runs if r.ablation.startswith("h")]
    assert sorted(r.name for r in horizons if r.seed == 0) == [
        "unet3d_k5/medcontext_h0.02_s0", "unet3d_k5/medcontext_h0.05_s0", "unet3d_k5/medcontext_h0.2_s0"]
    assert {r.settings("D", [])["method.momentum_horizon"] for r in horizons} == {0.02, 0.05, 0.2}
    for group in ("unet3d_k5", "unet3d_k20", "unetr_k5"):
        for seed in (0, 1, 2):
            for variant in ("baseline", "medcontext", "no_teacher"):
                assert f"{group}/{variant}_s{seed}" in names
    # all methods of a setting share every setting except the method section
    a, b = (r.settings("D", ["x"]) for r in runs[:2])
    assert {k for k in a if a[k] != b[k]} <= {"method.variant", "method.mask_ratio"}


def test_acdc_plan_is_paired_and_every_study_has_its_test_split():
    runs = acdc_plan()
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 21
    assert names[:2] == ["acdc_unet3d_k5/baseline_s0", "acdc_unet3d_k5/medcontext_s0"]  # the pilot first
    for model in ("unet3d", "unetr"):
        for seed in (0, 1, 2):
            for variant in ("baseline", "medcontext", "no_teacher"):
                assert f"acdc_{model}_k5/{variant}_s{seed}" in names
    a, b = (r.settings("D", ["x"]) for r in runs[:2])
    assert {k for k in a if a[k] != b[k]} == {"method.variant"}
    assert a["data.preset"] == "acdc" and a["model.roi"] == [80, 80, 16] and a["eval.every"] == 250
    horizon = [r for r in runs if r.ablation == "h0.05"]
    assert len(horizon) == 3 and all(r.settings("D", [])["method.momentum_horizon"] == 0.05 for r in horizon)
    from medcontext.shipped import find_split

    for study in STUDIES.values():
        assert load_test_split(find_split(study.test_split))


def test_fixed_test_split_file(tmp_path):
    from pathlib import Path

    split = Path(__file__).resolve().parents[2] / "benchmarks" / "splits" / "hippocampus_test.json"
    ids = load_test_split(split)
    assert len(ids) == len(set(ids)) == 50
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": []}))
    with pytest.raises(ValueError, match="'test' list"):
        load_test_split(bad)


def test_runner_does_not_evaluate_a_run_stopped_by_a_signal(tmp_path, monkeypatch):
    """A SIGTERM-stopped run must neither be evaluated nor marked done (it resumes next time)."""
    from types import SimpleNamespace

    from medcontext.engine.host.signals import RunInterrupted
    from medcontext.study import execution

    calls = []
    stopped = SimpleNamespace(finished=False, step=3, total_steps=300, stopped_by="SIGTERM")
    monkeypatch.setattr(execution, "train", lambda cfg, run_dir, **kw: stopped)
    monkeypatch.setattr(execution, "evaluate_run", lambda *a, **kw: calls.append(a))
    plan = hippocampus_plan()[:2]
    with pytest.raises(RunInterrupted, match="SIGTERM stopped the study run"):
        execution.run_study(plan, tmp_path, tmp_path / "study", ["x"], progress=False, echo=lambda _: None)
    assert calls == []
    assert not any((tmp_path / "study" / r.name / execution.DONE_MARKER).exists() for r in plan)


def test_method_labels_tell_ablations_apart():
    assert _method_label("medcontext", 0.4, 0.996) == "medcontext"
    assert _method_label("medcontext", 0.4, 0.996, horizon=0.05) == "medcontext (EMA horizon 0.05 of the run)"
    assert _method_label("medcontext", 0.6, 0.95) == "medcontext (ratio 0.6, momentum 0.95)"
    assert _method_label("baseline", 0.6, 0.95, 1.0, 0.05) == "baseline"


def test_report_writes_its_figures_beside_the_markdown(tmp_path):
    import nibabel as nib

    from medcontext.study.comparison_report import write_report

    data = tmp_path / "data"
    data.mkdir()
    cases = ["c0", "c1", "c2"]
    label = np.zeros((8, 8, 4), np.int16)
    label[2:6, 2:6, 1:3] = 1
    for c in cases:
        nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), str(data / f"{c}_img.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(data / f"{c}_lab.nii.gz"))
    runs = []
    for method, dice in (("baseline", 0.5), ("medcontext", 0.6)):
        run = _run(method, 0, {c: dice for c in cases})
        run.path = tmp_path / method
        (run.path / "eval" / "predictions").mkdir(parents=True)
        records = [{"case_id": c, "images": [f"{c}_img.nii.gz"], "label": f"{c}_lab.nii.gz"} for c in cases]
        (run.path / "dataset.json").write_text(json.dumps({"root": str(data), "cases": records}))
        for c in cases:
            nib.save(nib.Nifti1Image(label, np.eye(4)), str(run.path / "eval" / "predictions" / f"{c}.nii.gz"))
        run.train_log = [{"kind": "train", "step": s, "sup": 1.0 / (s + 1), "msl": 0.5, "cl": 0.1} for s in range(12)]
        run.val_log = [{"kind": "val", "step": s, "mean_dice": dice + s / 100} for s in (4, 8, 12)]
        runs.append(run)
    report = write_report(runs, tmp_path / "report" / "report.md")
    names = ["dice_boxplots.png", "training_curves.png", "validation_curves.png", "overlay.png"]
    assert sorted(p.name for p in report.parent.iterdir()) == sorted([*names, "report.md"])  # no temp files left
    text = report.read_text()
    for name in names:
        assert f"({name})" in text
        assert (report.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _evaluated_run(run, variant, seed, dices, horizon=None):
    """A run folder as training and evaluation leave it: config, metrics log, eval/metrics.csv."""
    from medcontext.engine.config import TrainConfig, save_config
    from medcontext.evaluation.metric_table import CaseMetric, MetricTable, write_csv

    cfg = TrainConfig()
    cfg.method.variant, cfg.method.momentum_horizon, cfg.train.seed = variant, horizon, seed
    save_config(cfg, run / "config.yaml")
    table = MetricTable()
    for i, dice in enumerate(dices):
        table.add(CaseMetric(f"c{i}", "a", dice, 2.0 + i, 10, 12))
    write_csv(table, run / "eval" / "metrics.csv")
    log = [{"kind": "train", "step": s, "sup": 1.0, "msl": 0.5, "cl": 0.1, "step_time": 0.2} for s in range(1, 31)]
    log += [{"kind": "val", "step": s, "mean_dice": 0.5 + s / 100} for s in (10, 20, 30)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return run


def test_a_run_reported_from_its_collected_records_matches_the_run_folder(tmp_path, helpers):
    """Run folders do not outlive a machine: the records that scripts/collect_study_records.py keeps in
    the repository (config, thinned log, test metrics) must give the same report rows."""
    from medcontext.study.comparison_report import collect_runs

    collect = helpers.collect_records_script()

    run = _evaluated_run(tmp_path / "runs" / "g" / "medcontext_h0.05_s1", "medcontext", 1, (0.7, 0.8, 0.9), 0.05)
    records = tmp_path / "records" / "g" / "medcontext_h0.05_s1"
    assert collect.collect_run(run, records, train_every=10)
    assert not (records / "eval").exists()
    with pytest.raises(FileNotFoundError, match="is not an evaluated run"):
        collect_runs([tmp_path / "records" / "g"])
    (from_run,), (from_records,) = collect_runs([run]), collect_runs([records])
    assert (from_records.method, from_records.seed) == (from_run.method, from_run.seed) == ("medcontext (EMA horizon 0.05 of the run)", 1)
    assert from_records.dice == from_run.dice and from_records.val_log == from_run.val_log
    assert [r["step"] for r in from_records.train_log] == [10, 20, 30]


def test_collected_study_log_keeps_the_runs_of_earlier_sittings(tmp_path, helpers):
    """Each sitting's study folder logs only the runs it finished: collecting must not drop the
    lines kept from earlier sittings, and a run finished again replaces its old line."""
    collect = helpers.collect_records_script()

    kept, sitting = tmp_path / "kept.jsonl", tmp_path / "study.jsonl"
    kept.write_text(json.dumps({"run": "g/baseline_s0", "seconds": 1}) + "\n" + json.dumps({"run": "g/x_s0", "seconds": 1}) + "\n")
    sitting.write_text(json.dumps({"run": "g/x_s0", "seconds": 2}) + "\n" + json.dumps({"run": "g/y_s0", "seconds": 3}) + "\n")
    collect.merge_study_log(sitting, kept)
    lines = [json.loads(line) for line in kept.read_text().splitlines()]
    assert lines == [{"run": "g/baseline_s0", "seconds": 1}, {"run": "g/x_s0", "seconds": 2}, {"run": "g/y_s0", "seconds": 3}]
    # --only: the other runs of a shared study folder stay out of the records
    only = tmp_path / "only.jsonl"
    collect.merge_study_log(sitting, only, ["g/y_*"])
    assert [json.loads(line)["run"] for line in only.read_text().splitlines()] == ["g/y_s0"]


def test_report_also_compares_with_another_method_per_seed(tmp_path, capsys):
    from medcontext.cli import main

    runs = []
    for seed in (0, 1):
        runs.append(_evaluated_run(tmp_path / f"baseline_s{seed}", "baseline", seed, (0.5, 0.5, 0.5)))
        runs.append(_evaluated_run(tmp_path / f"medcontext_s{seed}", "medcontext", seed, (0.4, 0.4, 0.4)))
        runs.append(_evaluated_run(tmp_path / f"h_s{seed}", "medcontext", seed, (0.6, 0.6, 0.6), 0.05))
    out = tmp_path / "report" / "report.md"
    assert main(["report", *map(str, runs), "--out", str(out), "--also-against", "medcontext"]) == 0
    text = out.read_text()
    assert "| method − baseline |" in text and "| method − medcontext |" in text
    assert "| **medcontext (EMA horizon 0.05 of the run)** | all 2 | **+20.00** |" in text  # against medcontext
    assert "| **medcontext (EMA horizon 0.05 of the run)** | all 2 | **+10.00** |" in text  # against the baseline
    assert main(["report", *map(str, runs), "--out", str(out), "--also-against", "momentum"]) != 0
    assert "--also-against momentum: no such method among the runs" in capsys.readouterr().err


def test_method_table_says_how_many_unlabelled_volumes_a_method_trained_on(tmp_path):
    from medcontext.study.comparison_report import _method_table, _unlabeled_count

    cases = {f"c{i}": 0.5 for i in range(3)}
    labelled = [_run("baseline", 0, cases)]
    assert "unlabelled" not in _method_table(labelled)[0]  # labelled-only reports keep their columns
    semi = [_run("mean_teacher", seed, cases) for seed in (0, 1)]
    semi[0].unlabeled, semi[1].unlabeled = 98, 100
    table = _method_table(labelled + semi)
    assert table[0].startswith("| method | seeds | unlabelled volumes | Dice a")
    assert table[1].count("---") == table[0].count("|") - 1
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[2] for line in table[2:]}
    assert rows == {"baseline": "0", "mean_teacher": "98-100"}
    (tmp_path / "split.json").write_text(json.dumps({"train": ["a"], "unlabeled": ["b", "c"]}))
    assert _unlabeled_count(tmp_path) == 2 and _unlabeled_count(tmp_path / "missing") == 0


def test_report_shows_raw_and_post_processed_scores_also_from_collected_records(tmp_path, capsys, helpers):
    from medcontext.cli import main
    from medcontext.evaluation.postprocessing import PostProcessing, write_postprocessing
    from medcontext.evaluation.metric_table import CaseMetric, MetricTable, write_csv

    collect = helpers.collect_records_script()
    runs = []
    for variant in ("baseline", "medcontext"):
        run = _evaluated_run(tmp_path / "runs" / "g" / f"{variant}_s0", variant, 0, (0.8, 0.8, 0.8))
        write_postprocessing(run, PostProcessing(True, (), (1,), "labels", {"validation_cases": 2}))
        raw = MetricTable()
        for i in range(3):
            raw.add(CaseMetric(f"c{i}", "a", 0.7, 40.0, 10, 12))  # before: lower Dice, islands far away
        write_csv(raw, run / "eval" / "raw" / "metrics.csv")
        records = tmp_path / "records" / "g" / run.name
        assert collect.collect_run(run, records, train_every=10)
        assert (records / "postprocessing.json").is_file() and (records / "test_metrics_raw.csv").is_file()
        runs.append(records)
    out = tmp_path / "report.md"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Post-processing (largest connected components" in text
    # raw -> post-processed: mean Dice 70.0 -> 80.0, mean HD95 40.00 -> 3.00 mm
    assert "| baseline | 1 | 1 | 1 | 70.0 ± 0.0 | 80.0 ± 0.0 | 40.00 ± 0.00 | 3.00 ± 0.00 |" in text


def test_last_step_evaluations_are_recorded_and_reported_apart_from_the_chosen_checkpoints(tmp_path, helpers):
    from medcontext.evaluation.metric_table import CaseMetric, MetricTable, write_csv
    from medcontext.study.comparison_report import collect_runs

    collect = helpers.collect_records_script()
    run = _evaluated_run(tmp_path / "runs" / "g" / "mean_teacher_s0", "baseline", 0, (0.8, 0.8, 0.8))
    last = MetricTable()
    for i in range(3):
        last.add(CaseMetric(f"c{i}", "a", 0.6, 5.0, 10, 12))
    write_csv(last, run / "eval_last" / "metrics.csv")
    (run / "split.json").write_text(json.dumps({"train": ["x"], "unlabeled": ["u1", "u2"]}))
    (run / "unlabeled.json").write_text("{}")
    records = tmp_path / "records" / "g" / run.name
    assert collect.collect_run(run, records, train_every=10)
    assert (records / "test_metrics_eval_last.csv").is_file() and (records / "unlabeled.json").is_file()
    for folder in (run, records):  # the run folder and its records read the same
        (best,), (at_last,) = collect_runs([folder]), collect_runs([folder], eval_name="eval_last")
        assert best.dice["c0"]["a"] == 0.8 and at_last.dice["c0"]["a"] == 0.6 and best.unlabeled == 2
    with pytest.raises(FileNotFoundError, match="eval_last"):  # never the chosen checkpoint's metrics instead
        collect_runs([_evaluated_run(tmp_path / "runs" / "g" / "baseline_s0", "baseline", 0, (0.5,))],
                     eval_name="eval_last")


def test_two_workers_share_a_study_each_run_trained_once(tmp_path, monkeypatch):
    """A run another process has claimed is skipped (and named), the others are trained; run
    again once the claim is gone, the skipped run is trained and the finished ones are not."""
    from types import SimpleNamespace

    from medcontext.io.run_lock import RunFolderLock
    from medcontext.study import execution

    trained, lines = [], []

    def fake_train(cfg, run_dir, **kw):
        trained.append(run_dir.name)
        return SimpleNamespace(finished=True, step=300, total_steps=300, stopped_by=None, best_step=300)

    summary = SimpleNamespace(mean_dice=0.5)
    monkeypatch.setattr(execution, "train", fake_train)
    monkeypatch.setattr(execution, "evaluate_run",
                        lambda *a, **kw: SimpleNamespace(table=SimpleNamespace(summary=lambda: summary)))
    plan = hippocampus_plan()[:3]
    study = tmp_path / "study"
    with RunFolderLock(study / plan[0].name, "medcontext experiment", name=execution.STUDY_CLAIM):
        records = execution.run_study(plan, tmp_path, study, ["x"], progress=False, echo=lines.append)
    assert [r["run"] for r in records] == [plan[1].name, plan[2].name]
    assert trained == [Path(plan[1].name).name, Path(plan[2].name).name]
    assert any("skipped" in line and "medcontext experiment" in line for line in lines)
    assert any("held by other processes" in line and plan[0].name in line for line in lines)
    assert not (study / plan[1].name / execution.STUDY_CLAIM).exists()  # a claim is let go when its run is done
    records = execution.run_study(plan, tmp_path, study, ["x"], progress=False, echo=lines.append)
    assert [r["run"] for r in records] == [plan[0].name] and len(trained) == 3


def test_each_study_writes_its_report_in_its_own_folder(tmp_path, monkeypatch):
    """Two studies sharing a study folder (acdc_pretrain reuses acdc's runs) must not overwrite
    each other's report: the default is DIR/report/STUDY/report.md."""
    from types import SimpleNamespace

    import medcontext.study as study_pkg
    from medcontext.cli import main
    from medcontext.study import execution

    monkeypatch.setattr(execution, "train", lambda cfg, run_dir, **kw: SimpleNamespace(
        finished=True, step=300, total_steps=300, stopped_by=None, best_step=300))
    monkeypatch.setattr(execution, "evaluate_run", lambda *a, **kw: SimpleNamespace(
        table=SimpleNamespace(summary=lambda: SimpleNamespace(mean_dice=0.5))))
    written = []
    monkeypatch.setattr(study_pkg, "collect_runs", lambda runs, **kw: list(runs))
    monkeypatch.setattr(study_pkg, "write_report", lambda runs, out, **kw: written.append(out))
    first = hippocampus_plan()[0]
    assert main(["experiment", "hippocampus", "--data", str(tmp_path), "--out", str(tmp_path / "study"),
                 "--only", first.name, "--test-split", "hippocampus_test"]) == 0
    assert written == [tmp_path / "study" / "report" / "hippocampus" / "report.md"]
