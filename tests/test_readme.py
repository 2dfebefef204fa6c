"""The README stays true: CI runs its test command, the plug-in example runs, every ``medcontext`` command runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quick_start_has_two_commands_and_ci_runs_the_test_command():
    commands = _quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "medcontext demo" in commands[0]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci, "the README's test command must be the command .ci/run runs"


def test_plugin_example_trains_and_reports_all_loss_terms():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plugin_loop.py"), "--steps", "3", "--roi", "32", "--hidden", "48"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("step")]
    assert len(lines) == 3
    first = dict(re.findall(r"(total|sup|msl|cl) ([0-9.]+)", lines[0]))
    assert set(first) == {"total", "sup", "msl", "cl"} and float(first["cl"]) > 0
    assert abs(float(first["total"]) - (float(first["sup"]) + float(first["msl"]) + 0.5 * float(first["cl"]))) < 1e-3


# ---------------------------------------------------------------------- every README command
_COMMAND_GROUPS = ("data", "nnunet")  # commands whose sub-commands are a second word


def _readme_commands() -> list[str]:
    """Every ``medcontext`` command of the README: the lines of its bash blocks (continuations joined,
    comments dropped; ``torchrun ... -m medcontext``, ``$(medcontext ...)`` included) and the inline code
    spans that give a sub-command with arguments. Returned without the leading ``medcontext``."""
    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line)
            for match in re.finditer(r"(?:^|-m |\$\()medcontext ([^)]*)", line.strip()):
                command = match.group(1).split(" && ")[0].replace("[", " ").replace("]", " ")  # [--opt] given
                found.append(" ".join(command.split()))
    for span in re.findall(r"`(?:torchrun [^`]*?-m )?medcontext ([^`]+)`", text):
        span = " ".join(span.replace("[", " ").replace("]", " ").split())  # optional parts [--use teacher] given
        words = span.split()
        named = 2 if words[0] in _COMMAND_GROUPS else 1  # `data check`, `nnunet export`: two words name it
        if len(words) > named:  # a sub-command with arguments, not its name (`medcontext evaluate`)
            found.append(span)
    return sorted(set(found))


def _argv(command: str) -> list[str]:
    import shlex

    return [token.rstrip(".") for token in shlex.split(command) if token.strip(".")]


README_COMMANDS = _readme_commands()


def test_the_readme_has_the_commands_of_its_pipeline():
    assert len(README_COMMANDS) >= 15
    assert any(c.startswith("train --model nnformer --set model.options.preset=small") for c in README_COMMANDS)
    assert any(c.startswith("train --data Task04_Hippocampus") for c in README_COMMANDS)


@pytest.mark.parametrize("command", README_COMMANDS)
def test_every_readme_command_runs(command, tmp_path, monkeypatch, capsys):
    """Each command parses with the real parser. ``train`` commands then resolve every setting
    (``--print-config``: unknown keys, wrong types and value checks fail there), ``data phantom``
    and ``nnunet trainer-path`` run for real (in a temporary folder); the rest (long trainings,
    downloads, installs into nnU-Net, commands on run folders that do not exist here) only parse."""
    from medcontext.cli import build_parser, main

    argv = _argv(command)
    build_parser().parse_args(argv)  # SystemExit (exit code 2) on an unknown option or sub-command
    monkeypatch.chdir(ROOT)
    if argv[0] == "train":
        assert main([*argv, "--print-config"]) == 0, capsys.readouterr().err
        assert "# valid keys:" in capsys.readouterr().out
    elif argv[:2] in (["data", "phantom"], ["nnunet", "trainer-path"]):
        monkeypatch.chdir(tmp_path)
        argv = [a if a != "DIR" else str(tmp_path / "phantom") for a in argv]
        if argv[:2] == ["data", "phantom"]:
            argv += ["--cases", "2", "--shape", "16", "16", "16"]  # the README's command at a tiny size
        assert main(argv) == 0, capsys.readouterr().err


def test_semi_supervised_snippet_runs_and_reports_the_unlabelled_terms():
    text = (ROOT / "README.md").read_text()
    section = text.split("### Unlabelled crops (semi-supervised)", 1)[1].split("\n### ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, re.S)
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for name in ("'cl_unlabeled'", "'pseudo'", "'ramp'", "'confident'"):
        assert name in lines[-1]
