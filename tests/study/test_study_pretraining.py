"""The pretraining study (``acdc_pretrain``): its plan resolves to the ACDC study's settings with one
pretraining stage per (model, seed); a tiny study on a phantom pretrains once, fine-tunes from the
pretrained weights, skips what is finished and counts the pretraining in the arms' cost."""

from __future__ import annotations

import json

import pytest
import torch

from medcontext.cli import build_parser, main
from medcontext.engine import load_config
from medcontext.study import STUDIES, PretrainStage, StudyRun, acdc_plan
from medcontext.study.pretraining_plan import ACDC_PRETRAIN_BUDGET, ALSO_AGAINST, pretraining_arms


def test_the_plan_has_a_stage_then_four_arms_per_model_and_seed_with_the_acdc_settings():
    study = STUDIES["acdc_pretrain"]
    plan = study.plan()
    stages = [item for item in plan if isinstance(item, PretrainStage)]
    runs = [item for item in plan if isinstance(item, StudyRun)]
    assert len(stages) == 6 and len(runs) == 24 and len({i.name for i in plan}) == 30
    assert study.test_split == STUDIES["acdc"].test_split and study.also_against == ALSO_AGAINST and study.last_step
    assert [i.name for i in plan[:5]] == ["acdc_unet3d_k5/pretrain_s0", "acdc_unet3d_k5/baseline_pretrained_s0",
                                          "acdc_unet3d_k5/medcontext_pretrained_s0", "acdc_unet3d_k5/medcontext_s0",
                                          "acdc_unet3d_k5/baseline_s0"]
    acdc = {r.name: r.settings("D", ["t1"]) for r in acdc_plan()}
    reused = [r for r in runs if r.name in acdc]
    assert len(reused) == 6 and all(r.model == "unet3d" and r.pretrain is None for r in reused)
    assert all(r.settings("D", ["t1"]) == acdc[r.name] for r in reused)  # the ACDC study's own runs
    assert {r.name for r in runs if r.model == "pcrlv2"} == {
        f"acdc_pcrlv2_k5/{arm}_s{seed}" for seed in (0, 1, 2)
        for arm in ("baseline_pretrained", "medcontext_pretrained", "medcontext", "baseline")}
    for run in runs:
        cfg = load_config(None, run.settings("D", ["t1"]))  # every key known, every value valid
        assert cfg.train.steps == 3000 and cfg.model.roi == [80, 80, 16] and cfg.model.options == {"size": "small"}
        scratch = StudyRun(run.group, run.model, 5, run.variant, run.seed, study="acdc")
        assert run.settings("D", ["t1"]) == scratch.settings("D", ["t1"])  # (a), (b) differ only by their weights
        assert (run.pretrain is not None) == (run.ablation == "pretrained")
        if run.pretrain is not None:
            assert run.pretrain.name == f"{run.group}/pretrain_s{run.seed}" and run.pretrain in stages


def test_a_stage_pretrains_on_the_pool_of_its_runs_split_at_the_fixed_budget():
    assert ACDC_PRETRAIN_BUDGET["steps"] == 3000 and ACDC_PRETRAIN_BUDGET["batch_size"] == 2
    assert (ACDC_PRETRAIN_BUDGET["mask_ratio"], ACDC_PRETRAIN_BUDGET["mask_shape"]) == (0.6, "cube")
    for stage in (s for s in STUDIES["acdc_pretrain"].plan() if isinstance(s, PretrainStage)):
        cfg = stage.config("D", ["t1", "t2"])
        train = load_config(None, stage.base.settings("D", ["t1", "t2"]))
        assert stage.base.variant == "baseline" and stage.base.pretrain is None and stage.steps == 3000
        # the fine-tuning's data section (split, preprocessing), with the pool as the volumes
        assert cfg.data.unlabeled == "pool" and cfg.data.split_settings(cfg.seed) == train.data.split_settings(stage.seed)
        assert cfg.data.preprocess == {"target_spacing": [2.0, 2.0, 5.0]} and cfg.data.test_cases == ["t1", "t2"]
        assert (cfg.model, cfg.model_options, cfg.roi, cfg.seed) == (stage.model, {"size": "small"}, [80, 80, 16],
                                                                     stage.seed)
        assert {k: getattr(cfg, k) for k in ACDC_PRETRAIN_BUDGET} == ACDC_PRETRAIN_BUDGET


def test_pcrlv2_small_takes_the_acdc_crop_in_pretraining_and_fine_tuning():
    from medcontext.engine.builder import build_medcontext, build_network
    from medcontext.engine.pretraining import _check_network

    stage = next(s for s in STUDIES["acdc_pretrain"].plan() if isinstance(s, PretrainStage) and s.model == "pcrlv2")
    _check_network(stage.config("D", ["t1"]), 1, (80, 80, 16))  # 16 slices: three poolings down to 2
    cfg = load_config(None, StudyRun("acdc_pcrlv2_k5", "pcrlv2", 5, "medcontext", 0, study="acdc").settings("D", ["t1"]))
    torch.manual_seed(0)
    model = build_medcontext(cfg, build_network(cfg, 1, 4, (80, 80, 16)), (80, 80, 16), "softmax")
    out = model(torch.randn(2, 1, 80, 80, 16), torch.randint(0, 4, (2, 1, 80, 80, 16)), step=0)
    assert torch.isfinite(out.total) and out.msl > 0 and out.cl > 0  # the masked pass and the teacher ran


def test_the_cli_lists_the_study_and_its_status_selects_stages(tmp_path, capsys):
    assert "acdc_pretrain" in build_parser()._subparsers._group_actions[0].choices["experiment"].format_help()
    assert main(["experiment", "acdc_pretrain", "--out", str(tmp_path), "--status", "--only", "acdc_pcrlv2_k5/*_s1"]) == 0
    out = capsys.readouterr().out
    assert "acdc_pcrlv2_k5/pretrain_s1" in out and "acdc_pcrlv2_k5/baseline_pretrained_s1" in out
    assert "0/3000" in out and "acdc_unet3d_k5" not in out and "0 of 5 runs finished" in out


def test_the_report_counts_the_pretraining_in_the_cost_of_every_arm_fine_tuned_from_it():
    from medcontext.study.comparison_report import RunResult, _cost_lines

    def run(method, pretrain_seconds, step_time):
        result = RunResult(path=None, setting="s", method=method, seed=0, classes=["a"], dice={"c": {"a": 0.5}},
                           hd95={"c": {"a": 1.0}}, pretrain_seconds=pretrain_seconds)
        result.train_log = [{"step": s, "step_time": step_time} for s in range(1, 61)]  # 60 steps
        result.val_log = [{"step": 60, "time": 30.0}]
        return result

    arms = [run("baseline", None, 1.0), run("baseline (pretrained)", 600.0, 1.0), run("medcontext (pretrained)", 600.0, 2.0)]
    text = "\n".join(_cost_lines(arms))
    assert "| baseline | 1 | 0.0 | 1.0 | 0.5 | 1.5 |" in text
    assert "| baseline (pretrained) | 1 | 10.0 | 1.0 | 0.5 | 11.5 |" in text  # 10 min of pretraining counted in
    assert "| medcontext (pretrained) | 1 | 10.0 | 2.0 | 0.5 | 12.5 |" in text  # and again in the other arm
    assert _cost_lines([arms[0]]) == []  # no table without pretrained runs


# ---------------------------------------------------------------------- a tiny study on a phantom
TINY = {"model.options": {"size": "tiny"}, "model.roi": [16, 16, 16], "train.steps": 2, "data.val_cases": 1,
        "data.num_samples": 1, "eval.every": 0, "optim.warmup_steps": 0, "train.precision": "fp32",
        "train.checkpoint_every": 1}
TINY_BUDGET = {"steps": 2, "batch_size": 1, "warmup_steps": 0, "save_every": 1, "tensorboard": False}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from medcontext.data import generate_phantom

    return generate_phantom(tmp_path_factory.mktemp("phantom") / "Phantom", num_cases=6, shape=(24, 24, 24), seed=0)


def test_a_tiny_study_pretrains_once_fine_tunes_from_it_and_counts_its_cost(tmp_path, phantom, monkeypatch, helpers):
    from medcontext.engine import pretraining
    from medcontext.study import collect_runs, run_study, write_report
    from medcontext.study import execution

    stage, arm_a, arm_b, _, arm_d = pretraining_arms(StudyRun("unet3d_k2", "unet3d", 2, "baseline", 0, overrides=TINY),
                                                     TINY_BUDGET)
    test_ids = ["phantom_004", "phantom_005"]
    out = tmp_path / "study"
    # a stage cut after its first step: the status says so, the study resumes it
    pretraining.pretrain(stage.config(str(phantom), test_ids), out / stage.name, stop_after=1, progress=False,
                         echo=lambda _: None)
    (status,) = execution.study_status([stage], out)
    assert (status.state, status.step, status.steps) == ("interrupted", 1, 2)

    pretrained_calls, first_weights = [], {}
    real_pretrain, real_train = pretraining.pretrain, execution.train

    def counted_pretrain(*args, **kwargs):
        pretrained_calls.append(args[1])
        return real_pretrain(*args, **kwargs)

    def train_recording_initial_weights(cfg, run_dir, **kwargs):
        def hook(network):  # called after --init-checkpoint is loaded, before the first step
            first_weights[run_dir.name] = {k: v.detach().clone() for k, v in network.state_dict().items()}
            return network
        return real_train(cfg, run_dir, network_hook=hook, **kwargs)

    monkeypatch.setattr(pretraining, "pretrain", counted_pretrain)
    monkeypatch.setattr(execution, "train", train_recording_initial_weights)
    # only the fine-tuning arms are selected (as `--only '*pretrained*'` would): the stage runs first, once
    records = run_study([arm_a, arm_b, arm_d], phantom, out, test_ids, progress=False, echo=lambda _: None)
    assert len(pretrained_calls) == 1 and [r["run"] for r in records] == [arm_a.name, arm_b.name, arm_d.name]
    logged = [json.loads(line)["run"] for line in (out / "study.jsonl").read_text().splitlines()]
    assert logged == [stage.name, arm_a.name, arm_b.name, arm_d.name]
    stage_record = json.loads((out / stage.name / execution.PRETRAIN_DONE).read_text())
    assert stage_record["resumed"] and stage_record["steps"] == 2 and stage_record["volumes"] == 1
    assert stage_record["compute_seconds"] > 0 and stage_record["wall_seconds"] > 0

    # both arms start from the stage's weights: every layer but the output layer
    saved = torch.load(out / stage.name / pretraining.PRETRAINED_FILE, weights_only=True)
    assert saved["left_out"] == ["output_block.conv.conv.bias", "output_block.conv.conv.weight"]
    for arm in (arm_a, arm_b):
        weights = first_weights[arm.name.split("/")[1]]
        assert set(weights) - set(saved["state_dict"]) == set(saved["left_out"])
        assert all(torch.equal(weights[k], v) for k, v in saved["state_dict"].items())
    scratch = first_weights[arm_d.name.split("/")[1]]
    assert not all(torch.equal(scratch[k], v) for k, v in saved["state_dict"].items())

    # the arms' records carry the stage's cost; a rerun trains and pretrains nothing
    for arm in (arm_a, arm_b):
        record = json.loads((out / arm.name / execution.DONE_MARKER).read_text())
        assert record["pretrain"] == stage.name and record["pretrain_compute_seconds"] == stage_record["compute_seconds"]
        assert load_config(out / arm.name / "config.yaml").model.init_checkpoint == str(
            out / stage.name / pretraining.PRETRAINED_FILE)
    assert "pretrain" not in json.loads((out / arm_d.name / execution.DONE_MARKER).read_text())
    first_weights.clear()
    assert run_study([stage, arm_a, arm_b, arm_d], phantom, out, test_ids, progress=False, echo=lambda _: None) == []
    assert len(pretrained_calls) == 1 and not first_weights
    assert [s.state for s in execution.study_status([stage, arm_a], out)] == ["finished", "finished"]
    # a stage killed after its last checkpoint, before its marker: the rerun finds no step left and marks it
    (out / stage.name / execution.PRETRAIN_DONE).unlink()
    (again,) = run_study([stage], phantom, out, test_ids, progress=False, echo=lambda _: None)
    assert len(pretrained_calls) == 2 and again["steps"] == 2 and again["final_loss"] == stage_record["final_loss"]
    assert again["wall_seconds"] > stage_record["wall_seconds"]  # summed over the calls

    # the report: each arm its own method, the pretraining counted in (a) and (b), compared per seed
    runs = collect_runs([out / arm.name for arm in (arm_a, arm_b, arm_d)])
    assert [(r.method, r.pretrain_seconds) for r in runs] == [
        ("baseline (pretrained)", stage_record["compute_seconds"]),
        ("medcontext (pretrained)", stage_record["compute_seconds"]), ("baseline", None)]
    # the records kept in the repository give the same methods and costs (the stage keeps its own)
    collect = helpers.collect_records_script()
    for item in (stage, arm_a):
        assert collect.collect_run(out / item.name, tmp_path / "records" / item.name, train_every=1)
    marker = out / stage.name / execution.PRETRAIN_DONE
    assert (tmp_path / "records" / stage.name / execution.PRETRAIN_DONE).read_text() == marker.read_text()
    assert not (tmp_path / "records" / stage.name / pretraining.PRETRAINED_FILE).exists()
    (from_records,) = collect_runs([tmp_path / "records" / arm_a.name])
    assert (from_records.method, from_records.pretrain_seconds) == (runs[0].method, runs[0].pretrain_seconds)
    text = write_report(runs, tmp_path / "report" / "report.md", also_against=ALSO_AGAINST).read_text()
    assert "Cost per method with its pretraining" in text and "| baseline (pretrained) | 1 |" in text
    assert "| method − baseline (pretrained) |" in text and "| method − baseline |" in text


def test_on_the_real_acdc_data_a_stage_pretrains_on_the_semi_supervised_studys_pool(require_data):
    """The stage's volumes are the pool the ``acdc_semi`` runs of its seed use: 50 patients, both frames,
    none of them validated, tested or labelled (no image is decoded here)."""
    from medcontext.data import load_dataset, split_for_spec
    from medcontext.data.unlabeled import select_unlabeled
    from medcontext.engine.pretraining_data import _unlabeled_set
    from medcontext.shipped import find_split
    from medcontext.study import load_test_split
    from medcontext.study.semi_supervised_plan import acdc_semi_plan

    root = require_data("Task_ACDC", "dataset.json")
    test = load_test_split(find_split("acdc_test"))
    stages = [s for s in STUDIES["acdc_pretrain"].plan() if isinstance(s, PretrainStage) and s.seed == 1]
    semi = next(r for r in acdc_semi_plan() if r.seed == 1 and r.variant == "mean_teacher")
    semi_cfg = load_config(None, semi.settings(str(root), test))
    spec = load_dataset(root, preset="acdc", missing_labels_ok=True)
    _, pool = select_unlabeled(spec, split_for_spec(spec, **semi_cfg.data.split_settings(1)), semi_cfg.data.unlabeled)
    for stage in stages:  # unet3d and pcrlv2: the same split, so the same pool
        lines = []
        chosen = _unlabeled_set(stage.config(str(root), test), spec, lines.append)
        assert chosen.case_ids == pool.case_ids and len(chosen.cases) == 100
        assert not chosen.excluded["validation/test cases or cases of their groups"]  # pool: never drawn from them
        assert not [line for line in lines if "own draw" in line]
