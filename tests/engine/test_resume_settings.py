"""One resume-compatibility check (run folder and checkpoint) and one network preflight per run."""

from __future__ import annotations

import pytest

import medcontext.engine.run_folder as run_module
from medcontext.engine.config import ConfigError, load_config
from medcontext.engine.resume import RESUME_MAY_CHANGE, check_resume_settings
from medcontext.engine.run_folder import train


def _cfg(*overrides: str):
    return load_config(None, ["train.steps=10", "train.batch_size=1", "data.num_samples=2", "train.effective_batch_size=2",
                              *overrides])


def test_settings_that_may_change_on_resume_pass():
    assert "train.device" in RESUME_MAY_CHANGE and "train.seed" not in RESUME_MAY_CHANGE
    check_resume_settings(_cfg(), _cfg("train.device=cpu", "data.num_workers=3"), saved_world_size=1, source="x")


def test_a_changed_setting_is_named_with_both_values():
    with pytest.raises(ConfigError) as info:
        check_resume_settings(_cfg(), _cfg("train.seed=7"), saved_world_size=1, source="the run's config.yaml")
    assert str(info.value) == (
        "--resume: the settings differ from the run's config.yaml (train.seed: run 0, now 7); resume with the same "
        "settings (drop the changed options) or start a new run"
    )


def test_an_old_run_without_effective_batch_gets_it_from_its_process_count():
    saved = _cfg("train.effective_batch_size=null", "train.batch_size=1", "data.num_samples=2")
    check_resume_settings(saved, _cfg(), saved_world_size=1, source="x")  # 1 volume x 2 crops x 1 process = 2
    assert saved.train.effective_batch_size == 2
    with pytest.raises(ConfigError, match="the number of processes changed the effective batch"):
        check_resume_settings(_cfg("train.effective_batch_size=null"), _cfg(), saved_world_size=2, source="x")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("roi", [["--set", "model.roi=[16, 16, 16]"], []], ids=["explicit crop", "planned crop"])
def test_the_network_is_preflighted_once(phantom_dir, tmp_path, monkeypatch, roi):
    calls = []
    real = run_module.check_run_settings

    def counting(cfg, **kwargs):
        calls.append(tuple(kwargs["roi"]))
        return real(cfg, **kwargs)

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(run_module, "check_run_settings", counting)
    monkeypatch.setattr(run_module, "_checked_precision", stop)  # the step after the preflight of a planned crop
    cfg = load_config(None, [f"data.path={phantom_dir}", "model.options={size: tiny}", "train.steps=2",
                             "data.num_samples=1", "train.tensorboard=false",
                             *([r for r in roi if r != "--set"])])
    with pytest.raises(_Stop):
        train(cfg, tmp_path / "run", progress=False, echo=lambda s: None)
    assert len(calls) == 1
    if roi:
        assert calls == [(16, 16, 16)]
