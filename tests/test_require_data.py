"""The real-data switch of tests/conftest.py: absent data skips a test, unless
MEDCONTEXT_REQUIRE_DATA=1 (set by .ci/run) makes it a failure that says why."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
CI = Path(__file__).resolve().parents[1] / ".ci" / "run"

USES_DATA = """
def test_needs_real_data(require_data):
    folder = require_data("Task04_Hippocampus", "dataset.json")
    assert (folder / "dataset.json").is_file()
"""


@pytest.fixture
def tiny_suite(pytester, monkeypatch, tmp_path):
    """A one-test suite with our conftest, its data folder pointed at ``tmp_path / "data"``."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_uses_data=USES_DATA)
    monkeypatch.setenv("MEDCONTEXT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MEDCONTEXT_REQUIRE_DATA", raising=False)
    return tmp_path / "data"


def test_missing_data_skips_with_the_path_as_reason(pytester, tiny_suite):
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"*real data {tiny_suite / 'Task04_Hippocampus'} is missing*"])


@pytest.mark.parametrize("flag", ["1", "true"])
def test_missing_data_fails_when_the_flag_is_set(pytester, tiny_suite, monkeypatch, flag):
    monkeypatch.setenv("MEDCONTEXT_REQUIRE_DATA", flag)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*MEDCONTEXT_REQUIRE_DATA is set (CI must run the real-data tests), but real data *"
                                 "Task04_Hippocampus is missing*"])


def test_present_data_runs_with_or_without_the_flag(pytester, tiny_suite, monkeypatch):
    (tiny_suite / "Task04_Hippocampus").mkdir(parents=True)
    (tiny_suite / "Task04_Hippocampus" / "dataset.json").write_text("{}")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    monkeypatch.setenv("MEDCONTEXT_REQUIRE_DATA", "1")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    monkeypatch.setenv("MEDCONTEXT_REQUIRE_DATA", "0")  # "0" means off, as unset
    (tiny_suite / "Task04_Hippocampus" / "dataset.json").unlink()
    pytester.runpytest_subprocess().assert_outcomes(skipped=1)


def test_ci_requires_the_real_data():
    assert "export MEDCONTEXT_REQUIRE_DATA=1" in CI.read_text().splitlines()
