"""Every setting checked before any work: the table of value checks and the network preflight."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

import medcontext.data
from medcontext.engine import train
from medcontext.engine.config import CHECKS, ConfigError, TrainConfig, load_config
from medcontext.engine.preflight import check_run_settings
from medcontext.models import get_model_spec, list_models


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["optim.final_lr=-1"], "optim.final_lr must be a finite number >= 0"),
        (["eval.max_val_cases=-3"], "eval.max_val_cases must be >= 1 or null"),
        (["eval.max_val_cases=0"], "eval.max_val_cases must be >= 1 or null"),
        (["optim.lr=1e400"], "optim.lr must be a finite number > 0, got inf"),
        (["optim.lr=.nan"], "optim.lr must be a finite number > 0, got nan"),
        (["optim.betas=[2,3]"], r"optim.betas must be two numbers in \[0, 1\)"),
        (["optim.betas=[0.9]"], "optim.betas must be two numbers"),
        (["method.beta=.inf"], "method.beta must be a finite number >= 0"),
        (["method.variant=medcontxt"], "method.variant must be .*did you mean 'medcontext'"),
        (["method.mask_space=tokens"], "method.mask_space must be auto, token or input, got 'tokens' .*'token'"),
        (["method.mask_cell=[16, 0, 16]"], "method.mask_cell must be a positive int, 3 positive ints or null"),
        (["method.depth_axis=3"], r"method.depth_axis must be a spatial axis in \[-3, 2\]"),
        (["model.name=unetx"], "model.name must be .*unetr.*did you mean 'unetr'"),
        (["model.roi=[16, 16]"], "model.roi must be 3 positive ints or null"),
        (["optim.name=sgd", "optim.momentum=0"], "optim.momentum must be .*> 0 for SGD"),
        (["data.pos=0", "data.neg=0"], "data.pos must be a finite number >= 0"),
        (["data.test_cases=1.5"], r"data.test_cases must be an int >= 0, a fraction in \(0, 1\)"),
        (["data.test_cases=[a, a]"], "data.test_cases must be .*distinct case ids"),
        (["train.device=gpu"], "train.device must be auto, cpu, cuda, cuda:N or mps"),
        (["data.group_by=patient"], "data.group_by must be 'regex:PATTERN'"),
        (["data.group_by=regex:("], "data.group_by must be 'regex:PATTERN' \\(a valid regular expression\\)"),
        (["method.momentum_horizon=0"], r"method.momentum_horizon must be in \(0, 1\]"),
        (["method.variant=baseline", "eval.use=teacher"], "eval.use must be student, or teacher with a method.variant"),
    ],
)
def test_bad_values_are_refused_with_the_full_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(overrides=overrides)


def test_all_problems_are_listed_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["optim.final_lr=-1", "eval.max_val_cases=-3", "optim.lr=1e400"])
    message = str(info.value)
    assert all(key in message for key in ("optim.final_lr", "eval.max_val_cases", "optim.lr"))


def test_valid_edge_values_pass():
    """Each value at the edge of its range is accepted and kept as given (not clamped or replaced)."""
    cfg = load_config(overrides=["optim.final_lr=0", "eval.max_val_cases=1", "optim.betas=[0, 0.999]",
                                 "method.mask_cell=8", "train.device=cuda:1", "data.test_cases=[a, b]",
                                 "optim.grad_clip=null", "method.variant=msl_only", "eval.use=teacher"])
    assert (cfg.optim.final_lr, cfg.eval.max_val_cases, cfg.optim.betas, cfg.method.mask_cell) == (0.0, 1, [0.0, 0.999], 8)
    assert (cfg.train.device, cfg.data.test_cases, cfg.optim.grad_clip) == ("cuda:1", ["a", "b"], None)
    assert (cfg.method.variant, cfg.eval.use) == ("msl_only", "teacher")
    cfg = load_config(overrides=["data.test_cases=[]", "data.train_case_ids=[x, y]", "data.test_cases=0.25"])
    assert (cfg.data.test_cases, cfg.data.train_case_ids) == (0.25, ["x", "y"])  # the later override wins
    cfg = load_config(overrides=["data.group_by=none", "method.momentum_horizon=0.05"])
    assert (cfg.data.group_by, cfg.method.momentum_horizon) == ("none", 0.05)
    cfg = load_config(overrides=["data.group_by=metadata:patient", "method.momentum_horizon=1"])
    assert (cfg.data.group_by, cfg.method.momentum_horizon) == ("metadata:patient", 1.0)
    assert load_config(overrides=["data.test_cases=[]"]).data.test_cases == []


def test_every_setting_has_a_check():
    """A new setting needs a row in CHECKS (engine/config/checks.py); booleans are checked by their type."""
    checked = {check.key for check in CHECKS}
    hints = {}
    for section in dataclasses.fields(TrainConfig):
        hints.update({f"{section.name}.{k}": v for k, v in typing.get_type_hints(section.default_factory).items()})
    missing = [key for key in TrainConfig.keys() if key not in checked and hints[key] is not bool]
    assert not missing, f"add a Check row for {missing} to CHECKS in medcontext/engine/config/checks.py"
    assert all(key in TrainConfig.keys() for key in checked)


def test_a_predicate_that_raises_counts_as_failed():
    cfg = TrainConfig()
    cfg.optim.betas = None  # set from Python, bypassing the typed setter
    with pytest.raises(ConfigError, match="optim.betas must be two numbers"):
        cfg.validate()


# ---------------------------------------------------------------------- network preflight
def _tiny_cfg(phantom_dir, *overrides: str) -> TrainConfig:
    return load_config(None, [f"data.path={phantom_dir}", "model.options={size: tiny}", "model.roi=[16, 16, 16]",
                              "train.steps=2", "data.num_samples=1", "data.val_cases=1", "data.test_cases=2",
                              "train.tensorboard=false", *overrides])


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["model.options={size: small}", "model.roi=[8, 8, 8]"],
         ["model.roi=[8, 8, 8]", "Expected more than 1 spatial element", "crop is too small"]),
        (["model.options={size: tiny, foo: 1}"], ["model.options.foo", "has no option 'foo'"]),
        (["model.name=unetr", "model.options={size: tiny, hidden_sz: 48}"],
         ["model.options.hidden_sz", "Did you mean model.options.hidden_size?"]),
        (["model.options={size: huge}"], ["model.options={'size': 'huge'}", "unknown size 'huge'"]),
        (["model.name=unetr", "model.roi=[32, 32, 32]", "method.mask_cell=8"],
         ["method.mask_cell=8", "multiple of the network's token patch"]),
        (["method.student_passes=concat", "model.options={size: tiny, norm_name: batch}"],
         ["method.student_passes='concat' runs the clean and masked views"]),
        (["model.init_checkpoint=/no/such/weights.pt"], ["model.init_checkpoint='/no/such/weights.pt'", "does not exist"]),
        (["data.preprocess={spacingg: [1, 1, 1]}"], ["data.preprocess=", "unknown preprocessing settings ['spacingg']"]),
    ],
)
def test_settings_that_need_the_network_fail_before_any_data_is_read(phantom_dir, tmp_path, monkeypatch, overrides,
                                                                     fragments):
    def no_data_work(*args, **kwargs):
        raise AssertionError("the dataset was read before the settings were checked")

    monkeypatch.setattr(medcontext.data, "validate_dataset", no_data_work)
    monkeypatch.setattr(medcontext.data, "make_train_dataset", no_data_work)
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        train(_tiny_cfg(phantom_dir, "method.variant=medcontext", *overrides), out, progress=False, echo=lambda s: None)
    message = str(info.value)
    assert all(fragment in message for fragment in fragments), message
    assert not out.exists()  # no partial run folder


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_passes_its_own_test_settings(name):
    """No false alarms: each model's contract-test options and crop pass, MedContext included."""
    spec = get_model_spec(name)
    roi = spec.test_roi
    cfg = load_config(None, [f"model.name={name}", f"model.roi={list(roi)}", "method.variant=medcontext",
                             "train.device=cpu", "data.num_samples=1"])
    cfg.model.options = dict(spec.test_options)
    state = torch.get_rng_state()
    check_run_settings(cfg, in_channels=1, out_channels=3, output_mode="softmax", roi=roi)
    assert torch.equal(torch.get_rng_state(), state)  # the run's random stream is untouched
