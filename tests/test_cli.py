"""The command line: help texts with defaults, one-paragraph errors, data commands, module entry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medcontext.cli import build_parser, main


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["train"], ["--data", "--model", "--variant", "--train-cases", "--seed", "--steps", "--out", "--roi", "--config",
                     "--set", "--resume", "--model-preset", "--model-size", "--data-preset", "--init-checkpoint", "--init-prefix-map", "--init-skip-mismatch",
                     "(default: [])"]),
        (["predict"], ["--run", "--input", "--output", "--use", "--probabilities", "--checkpoint", "(default: best)",
                       "(default: student)"]),
        (["evaluate"], ["--run", "--data", "--split", "(default: test)"]),
        (["demo"], ["--quick", "--out", "(default: medcontext-demo)", "(default: 2)", "--semi", "medcontext_semi",
                    "11 units per step against 7 for medcontext and 3 for the baseline", "2.1x"]),
        (["data", "check"], ["DIR", "--data-preset", "(default: auto)"]),
        (["data", "phantom"], ["--out", "(default: 12)"]),
        (["data", "download"], ["TASK", "--out"]),
    ],
)
def test_every_command_documents_its_options_and_defaults(capsys, argv, fragments):
    text = _help(capsys, *argv)
    for fragment in fragments:
        assert fragment in text, fragment


def test_top_level_help_lists_commands(capsys):
    text = _help(capsys)
    for command in ("train", "evaluate", "predict", "demo", "data"):
        assert command in text
    assert build_parser().prog == "medcontext"


def test_demo_semi_is_opt_in_and_reaches_run_demo(monkeypatch):
    from medcontext import demo

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda out, **kwargs: calls.append((out, kwargs)))
    assert main(["demo", "--quick", "--out", "d", "--no-progress"]) == 0
    assert main(["demo", "--semi", "--steps", "3", "--out", "d"]) == 0
    assert [kwargs["semi"] for _, kwargs in calls] == [False, True]
    assert calls[1] == ("d", {"quick": False, "steps": 3, "train_cases": 2, "seed": 0, "semi": True, "progress": True})
    assert build_parser().parse_args(["demo"]).semi is False


def test_errors_are_one_paragraph_without_traceback(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "missing" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 2  # the message + the --debug hint

    assert main(["train", "--out", str(tmp_path / "run"), "--set", "optim.learnig_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.learnig_rate" in err and "optim.lr" in err


def test_debug_shows_the_traceback(tmp_path):
    from medcontext.data import DatasetError

    with pytest.raises((DatasetError, FileNotFoundError, ValueError)):
        main(["--debug", "train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])


def test_print_config_resolves_flags_file_and_overrides(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  lr: 0.01\ntrain:\n  steps: 9\n")
    assert main(["train", "--out", str(tmp_path / "r"), "--config", str(config), "--steps", "11",
                 "--set", "optim.lr=0.02", "--roi", "8", "16", "24", "--print-config"]) == 0
    import yaml

    text = capsys.readouterr().out
    cfg = yaml.safe_load(text.split("# valid keys")[0])
    assert cfg["train"]["steps"] == 11 and cfg["optim"]["lr"] == 0.02 and cfg["model"]["roi"] == [8, 16, 24]
    assert not (tmp_path / "r").exists()


def test_data_phantom_then_check(tmp_path, capsys):
    assert main(["data", "phantom", "--out", str(tmp_path / "ph"), "--cases", "2", "--shape", "16", "16", "16"]) == 0
    assert main(["data", "check", str(tmp_path / "ph")]) == 0
    out = capsys.readouterr().out
    assert "phantom_000" in out and "phantom_001" in out
    (tmp_path / "ph" / "labelsTr" / "phantom_001.nii.gz").write_bytes(b"garbage")
    assert main(["data", "check", str(tmp_path / "ph")]) == 2
    assert "phantom_001" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "medcontext", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("medcontext ")


@pytest.mark.parametrize(
    "old, new, value, expected",
    [
        ("--size", "--model-size", "tiny", "size: tiny"),
        ("--preset", "--model-preset", "small", "size: small"),
        ("--data-preset", "--data-preset", "generic", "preset: generic"),
    ],
)
def test_renamed_train_options_keep_their_old_spelling_with_a_notice(tmp_path, capsys, old, new, value, expected):
    outputs = {}
    for flag in (old, new):
        assert main(["train", "--model", "unet3d", flag, value, "--print-config"]) == 0
        outputs[flag] = capsys.readouterr()
        assert expected in outputs[flag].out
    assert outputs[old].out == outputs[new].out  # the same settings either way
    assert outputs[new].err == ""
    if old != new:
        assert outputs[old].err == f"medcontext: {old} is deprecated, use {new} (same meaning)\n"
    help_text = _help(capsys, "train")
    assert new in help_text and f"{old} " not in help_text.replace(new, "")  # only the new name is documented


def test_data_check_preset_is_called_data_preset(tmp_path, capsys):
    assert main(["data", "phantom", "--out", str(tmp_path / "ph"), "--cases", "2", "--shape", "16", "16", "16"]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "ph"), "--data-preset", "synapes"]) == 2
    new = capsys.readouterr()
    assert "unknown dataset preset 'synapes' (did you mean 'synapse'?)" in new.err
    assert main(["data", "check", str(tmp_path / "ph"), "--preset", "synapes"]) == 2
    old = capsys.readouterr()
    assert old.err == "medcontext: --preset is deprecated, use --data-preset (same meaning)\n" + new.err
    assert main(["data", "check", str(tmp_path / "ph"), "--data-preset", "msd", "--rows", "1"]) == 0
    assert "preset msd" in capsys.readouterr().out
