"""The smaller guards of issue 26: a negative seed and `--stop-after 0` named before any work,
`--model-size` and `--model-preset` that disagree refused, a non-UTF-8 case_metadata.csv named,
dotted `--set` keys reaching into mapping settings at any depth."""

from __future__ import annotations

import pytest

import medcontext.engine.planning.run_planner as run_planner
from medcontext.cli import main
from medcontext.data.grouping import GroupRuleError, case_groups
from medcontext.engine.config import load_config


def test_a_negative_seed_and_stop_after_0_are_named_before_planning(phantom_dir, train_argv, tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setattr(run_planner, "plan_run", lambda *a, **k: pytest.fail("planned before the check"))
    argv = train_argv(phantom_dir, tmp_path / "run", steps=2)
    argv[argv.index("--seed") + 1] = "-1"
    assert main(argv) == 2
    assert "train.seed must be an int >= 0" in capsys.readouterr().err
    assert main(train_argv(phantom_dir, tmp_path / "run", "--stop-after", "0", steps=2)) == 2
    assert "--stop-after (stop_after) must be a number of steps >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_model_size_and_model_preset_that_disagree_are_refused(capsys):
    assert main(["train", "--model-size", "tiny", "--model-preset", "paper", "--print-config"]) == 2
    assert "--model-size tiny and --model-preset paper both choose the network's size" in capsys.readouterr().err
    assert main(["train", "--model-size", "tiny", "--model-preset", "tiny", "--print-config"]) == 0


def test_a_non_utf8_case_metadata_file_is_named(tmp_path):
    (tmp_path / "case_metadata.csv").write_bytes("case_id,patient\na_1,Müller\n".encode("latin-1"))
    with pytest.raises(GroupRuleError, match=f"{tmp_path / 'case_metadata.csv'} is not UTF-8 text"):
        case_groups(["a_1"], "metadata:patient", tmp_path)
    (tmp_path / "case_metadata.csv").write_bytes("\ufeffcase_id,patient\na_1,Müller\n".encode("utf-8"))  # Excel's BOM
    assert case_groups(["a_1"], "metadata:patient", tmp_path) == {"a_1": "Müller"}


def test_dotted_set_keys_reach_every_level_of_mapping_settings():
    cfg = load_config(None, ["data.preprocess.target_spacing=[2, 2, 5]", "model.name=nnformer",
                             "model.options.preset=small", "data.preprocess.orientation=LPS"])
    assert cfg.data.preprocess == {"target_spacing": [2, 2, 5], "orientation": "LPS"}
    assert cfg.model.options == {"size": "small", "preset": "small"}  # the other options are kept
    cfg.set("model.options.extra.depth", 3)
    assert cfg.model.options["extra"] == {"depth": 3}
    with pytest.raises(Exception, match="unknown configuration key 'optim.lr.x'"):
        load_config(None, ["optim.lr.x=1"])  # only mapping settings have deeper keys
