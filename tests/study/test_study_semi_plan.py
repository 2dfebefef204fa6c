"""The semi-supervised ACDC study: its plan resolves to valid run settings (no training), its runner
evaluates every run at the validation-chosen checkpoint and at the last step."""

from __future__ import annotations

import json
from types import SimpleNamespace

from medcontext.engine import load_config
from medcontext.engine.unlabeled_data import check_unlabeled_settings
from medcontext.study import STUDIES, acdc_plan
from medcontext.study.semi_supervised_plan import ACDC_SEMI_GROUP, LABELLED_ARMS, SEMI_ARMS, acdc_semi_plan


def test_the_plan_resolves_to_valid_configs_and_reuses_the_acdc_studys_labelled_runs():
    study = STUDIES["acdc_semi"]
    runs = study.plan()
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 3 * (len(LABELLED_ARMS) + len(SEMI_ARMS)) == 21
    # the pilot first: seed 0's labelled arms, then every semi-supervised arm of seed 0
    assert names[:7] == ["acdc_unet3d_k5/baseline_s0", "acdc_unet3d_k5/medcontext_s0",
                         *(f"{ACDC_SEMI_GROUP}/{v}_s0" for v in SEMI_ARMS)]
    assert study.test_split == STUDIES["acdc"].test_split and study.last_step
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
