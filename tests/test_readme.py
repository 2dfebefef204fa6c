"""The README's quick start stays true: CI runs its test command, the plug-in example runs."""

import re
import subprocess
import sys
from pathlib import Path

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
