"""The semi-supervised ACDC study: its plan resolves to valid run settings (no training), its runner
evaluates every run at the validation-chosen checkpoint and at the last step."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from medcontext.engine import load_config
from medcontext.engine.unlabeled_data import check_unlabeled_settings
from medcontext.study import STUDIES, acdc_plan
from medcontext.study.semi_supervised_plan import ACDC_SEMI_GROUP, LABELLED_ARMS, SEMI_ARMS, acdc_semi_plan


def test_the_pilot_plan_resolves_to_valid_configs_and_reuses_the_acdc_studys_labelled_runs():
    runs = acdc_semi_plan()  # the 3000-step pilot's plan (the budget rule's input)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 3 * (len(LABELLED_ARMS) + len(SEMI_ARMS)) == 21
    # the pilot first: seed 0's labelled arms, then every semi-supervised arm of seed 0
    assert names[:7] == ["acdc_unet3d_k5/baseline_s0", "acdc_unet3d_k5/medcontext_s0",
                         *(f"{ACDC_SEMI_GROUP}/{v}_s0" for v in SEMI_ARMS)]
    acdc = {r.name: r.settings("D", ["t1"]) for r in acdc_plan()}
    for run in runs:
        settings = run.settings("D", ["t1"])
        cfg = load_config(None, settings)  # every key known, every value valid
        check_unlabeled_settings(cfg)  # semi-supervised arms have unlabelled data, labelled ones none
        assert cfg.train.steps == 3000 and cfg.model.name == "unet3d" and cfg.data.test_cases == ["t1"]
        if run.variant in LABELLED_ARMS:
            assert settings == acdc[run.name] and cfg.data.unlabeled is None  # the ACDC study's own run
        else:
            assert cfg.data.unlabeled == "pool" and cfg.data.unlabeled_batch_size is None
            labelled = acdc[f"acdc_unet3d_k5/baseline_s{run.seed}"]
            differing = {k for k in settings if settings[k] != labelled.get(k)}
            assert differing == {"method.variant", "data.unlabeled"}  # same split, seed, crops, optimizer, budget


def test_the_study_trains_every_arm_at_the_budget_the_pilot_decided():
    from medcontext.study.semi_supervised_plan import ACDC_SEMI_BUDGET

    study = STUDIES["acdc_semi"]
    assert ACDC_SEMI_BUDGET == 6000 and study.test_split == STUDIES["acdc"].test_split and study.last_step
    runs = study.plan()
    assert [r.name for r in runs] == [r.name for r in acdc_semi_plan(steps=6000)]
    assert {r.group for r in runs} == {ACDC_SEMI_GROUP} and len(runs) == 21
    assert all(load_config(None, r.settings("D", [])).train.steps == 6000 for r in runs)


def test_another_budget_gives_every_arm_that_budget_in_the_semi_supervised_group():
    runs = acdc_semi_plan(seeds=(0,), steps=6000)
    assert {r.group for r in runs} == {ACDC_SEMI_GROUP}
    assert [r.name for r in runs][:2] == [f"{ACDC_SEMI_GROUP}/baseline_6000steps_s0", f"{ACDC_SEMI_GROUP}/medcontext_6000steps_s0"]
    assert all(load_config(None, r.settings("D", [])).train.steps == 6000 for r in runs)


def test_the_pool_of_the_real_acdc_data_is_every_other_patient_both_frames(require_data):
    from medcontext.data import load_dataset
    from medcontext.data.unlabeled import select_unlabeled
    from medcontext.shipped import find_split
    from medcontext.study import load_test_split

    root = require_data("Task_ACDC", "dataset.json")
    spec = load_dataset(root, preset="acdc")
    test = load_test_split(find_split("acdc_test"))
    from medcontext.data import split_for_spec

    for seed in (0, 1, 2):
        split = split_for_spec(spec, train_cases=5, val_cases=10, test_cases=test, use_official_test=False, seed=seed)
        with_pool, chosen = select_unlabeled(spec, split, "pool")
        patients = {spec.groups[c] for c in chosen.case_ids}
        used = {spec.groups[c] for c in [*split.train, *split.val, *split.test]}
        assert not patients & used and len(patients | used) == len({*spec.groups.values()})
        assert len(chosen.cases) == 2 * len(patients)  # both frames of every unlabelled patient
        assert len(patients) == 50 and len(chosen.cases) == 100  # 80 patients: 20 test, 5 validation, 5 labelled
        assert with_pool.unlabeled == chosen.case_ids


def test_the_runner_evaluates_at_the_chosen_checkpoint_and_at_the_last_step(tmp_path, monkeypatch):
    from medcontext.study import execution

    calls = []

    def fake_evaluate(run_dir, **kw):
        calls.append((run_dir.name, kw.get("checkpoint", "best"), kw.get("out_name", "eval")))
        (run_dir / kw.get("out_name", "eval")).mkdir(parents=True, exist_ok=True)
        (run_dir / kw.get("out_name", "eval") / "metrics.csv").write_text("x")
        dice = 0.6 if kw.get("checkpoint") == "last" else 0.7
        return SimpleNamespace(table=SimpleNamespace(summary=lambda: SimpleNamespace(mean_dice=dice)))

    finished = SimpleNamespace(finished=True, step=3000, total_steps=3000, stopped_by="", best_step=1250)
    monkeypatch.setattr(execution, "train", lambda cfg, run_dir, **kw: finished)
    monkeypatch.setattr(execution, "load_config", lambda *a, **kw: None)
    monkeypatch.setattr(execution, "evaluate_run", fake_evaluate)
    plan = acdc_semi_plan(seeds=(0,))[:2]
    out = tmp_path / "study"
    reused = out / plan[0].name  # a run the ACDC study finished before last-step evaluations existed
    reused.mkdir(parents=True)
    (reused / execution.DONE_MARKER).write_text(json.dumps({"run": plan[0].name, "test_mean_dice": 0.5}))
    (reused / "last.pt").write_text("checkpoint")
    records = execution.run_study(plan, tmp_path, out, ["t"], progress=False, echo=lambda _: None, last_step=True)
    assert calls == [("baseline_s0", "last", "eval_last"), ("medcontext_s0", "best", "eval"),
                     ("medcontext_s0", "last", "eval_last")]
    assert records[0]["test_mean_dice"] == 0.7 and records[0]["test_mean_dice_last"] == 0.6
    assert json.loads((reused / execution.DONE_MARKER).read_text())["test_mean_dice_last"] == 0.6
    calls.clear()
    execution.run_study(plan, tmp_path, out, ["t"], progress=False, echo=lambda _: None, last_step=True)
    assert calls == []  # nothing is evaluated twice


def _curve(middle: float, late: float) -> dict[int, float]:
    """Validation mean Dice (fractions) every 250 steps: ``middle`` at steps 1500-2000, ``late`` at 2500-3000."""
    curve = {step: 0.3 for step in range(250, 3001, 250)}
    curve.update({1500: middle - 0.01, 1750: middle, 2000: middle + 0.01, 2500: late, 2750: late - 0.02, 3000: late + 0.02})
    return curve


def test_the_budget_rule_reads_the_late_and_middle_validation_windows():
    from medcontext.study.semi_supervised_plan import decide_budget, validation_growth

    assert validation_growth(_curve(0.70, 0.71)) == pytest.approx(1.0)
    assert validation_growth({1500: 0.5}) is None  # a run still training has no g yet
    flat = {arm: _curve(0.70, 0.705) for arm in SEMI_ARMS}
    decision = decide_budget(flat)
    assert decision.steps == 3000 and not decision.missing
    assert decision.growth_points["bcp"] == pytest.approx(0.5)
    # exactly 1.0 point is not "still improving"; just above it doubles every arm's budget
    assert decide_budget({**flat, "bcp": _curve(0.70, 0.71)}).steps == 3000
    assert decide_budget({**flat, "bcp": _curve(0.70, 0.7102)}).steps == 6000
    # one arm above the limit decides before the others finish; level arms wait for the rest
    partial = {"mean_teacher": _curve(0.60, 0.65)}
    assert decide_budget(partial).steps == 6000 and len(decide_budget(partial).missing) == 4
    waiting = decide_budget({"mean_teacher": _curve(0.60, 0.60)})
    assert waiting.steps is None and "bcp" in waiting.missing


def test_the_best_combination_prefers_the_cheaper_then_the_simpler_arm_within_half_a_point():
    from medcontext.study.semi_supervised_plan import choose_combination

    # medcontext_bcp costs 4 student passes + a teacher pass (13 units) against 11 for the other two
    assert choose_combination({"medcontext_semi_cl": 0.700, "medcontext_semi": 0.702, "medcontext_bcp": 0.720}) == "medcontext_bcp"
    assert choose_combination({"medcontext_semi_cl": 0.700, "medcontext_semi": 0.690, "medcontext_bcp": 0.704}) == "medcontext_semi_cl"
    # equal cost: the one without the pseudo-label term wins a tie, the higher one wins beyond it
    assert choose_combination({"medcontext_semi_cl": 0.700, "medcontext_semi": 0.704, "medcontext_bcp": 0.60}) == "medcontext_semi_cl"
    assert choose_combination({"medcontext_semi_cl": 0.700, "medcontext_semi": 0.706, "medcontext_bcp": 0.60}) == "medcontext_semi"
    with pytest.raises(ValueError, match="medcontext_bcp"):
        choose_combination({"medcontext_semi_cl": 0.7, "medcontext_semi": 0.7})


def test_status_prints_the_budget_rule_on_the_pilot_runs_found(tmp_path, capsys):
    from medcontext.cli import main
    from medcontext.study.semi_supervised_plan import pilot_lines

    for arm in SEMI_ARMS:
        run_dir = tmp_path / ACDC_SEMI_GROUP / f"{arm}_s0"
        run_dir.mkdir(parents=True)
        late = 0.75 if arm == "medcontext_semi" else 0.70
        records = [{"kind": "val", "step": s, "mean_dice": d} for s, d in _curve(0.70, late).items()]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = "\n".join(pilot_lines(tmp_path))
    assert "| medcontext_semi | 12 | +5.00 | 77.0 |" in lines and "**6000 steps**" in lines
    assert "waiting for medcontext_semi_cl_6000steps_s0" in lines
    assert main(["experiment", "acdc_semi", "--out", str(tmp_path), "--status", "--only", "*_s0"]) == 0
    assert "budget: **6000 steps** for every arm" in capsys.readouterr().out
    # rule 5 at the decided budget: the seed-0 runs at 6000 steps, last validation at step 6000
    for arm, best in (("medcontext_semi_cl", 0.70), ("medcontext_semi", 0.702), ("medcontext_bcp", 0.69)):
        run_dir = tmp_path / ACDC_SEMI_GROUP / f"{arm}_6000steps_s0"
        run_dir.mkdir(parents=True)
        records = [{"kind": "val", "step": 3000, "mean_dice": best}, {"kind": "val", "step": 6000, "mean_dice": 0.6}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert "(rule 5, seed 0 at 6000 steps): **medcontext_semi_cl**" in "\n".join(pilot_lines(tmp_path))


def test_the_field_table_puts_finished_arms_beside_the_published_figures(tmp_path):
    """Published rows always; an arm's row holds the mean over its finished seeds at the study's
    budget (checkpoint chosen on validation, and the last step); the pilot's records are not read."""
    from medcontext.study.semi_supervised_plan import PUBLISHED_ACDC, acdc_semi_notes, field_lines

    for seed, (chosen, last) in enumerate([(0.80, 0.78), (0.70, 0.74)]):
        run_dir = tmp_path / ACDC_SEMI_GROUP / f"mean_teacher_6000steps_s{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "study_done.json").write_text(json.dumps(
            {"variant": "mean_teacher", "seed": seed, "test_mean_dice": chosen, "test_mean_dice_last": last}))
    pilot = tmp_path / ACDC_SEMI_GROUP / "bcp_s0"  # a 3000-step pilot run: not part of the table
    pilot.mkdir(parents=True)
    (pilot / "study_done.json").write_text(json.dumps({"variant": "bcp", "seed": 0, "test_mean_dice": 0.99}))
    text = "\n".join(field_lines(tmp_path))
    assert all(f"| {row.method} | {row.labelled} | {row.mean_dice} |" in text for row in PUBLISHED_ACDC)
    assert "| `mean_teacher` (ours, 2 seeds) | 5 | 75.0 (last step 76.0) |" in text
    assert "| `bcp` (ours) | 5 | not run yet |" in text and "99.0" not in text
    assert text in "\n".join(acdc_semi_notes(tmp_path))
