"""TrainConfig: YAML loading, dotted overrides, type checks, unknown-key errors, all shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medcontext.engine.config import ConfigError, TrainConfig, load_config, parse_override, save_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_valid_and_cpu_sized():
    cfg = load_config()
    assert cfg.train.device == "auto" and cfg.data.num_workers == 0
    assert cfg.method.mask_ratio == 0.4 and cfg.method.beta == 0.5 and cfg.method.momentum == 0.996


def test_yaml_then_overrides_later_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\n  name: sgd\nmodel:\n  roi: [32, 48, 32]\n  options: {size: tiny}\n")
    cfg = load_config(path, ["optim.lr=3e-4", "train.steps=7", "data.train_cases=null", "method.mask_cell=[8,8,8]"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.name == "sgd"  # from the file
    assert cfg.model.roi == [32, 48, 32] and cfg.model.options == {"size": "tiny"}
    assert cfg.train.steps == 7 and cfg.data.train_cases is None
    assert cfg.method.mask_cell == [8, 8, 8]


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  weight_decay: 3e-5\n")  # YAML 1.1 would read a string
    assert load_config(path).optim.weight_decay == pytest.approx(3e-5)


def test_unknown_key_suggests_close_keys():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["optim.learning_rate=1e-3"])
    assert "optim.learning_rate" in str(info.value)
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(overrides=["optm.lr=1e-3"])
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(overrides=["steps=5"])


def test_unknown_key_in_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "train.steps" in str(info.value)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.steps=abc", "integer"),
        ("train.steps=2.5", "integer"),
        ("optim.lr=true", "number"),
        ("train.tensorboard=1", "true/false"),
        ("train.steps=0", "train.steps must be >= 1"),
        ("optim.name=adam", "adamw or sgd"),
        ("eval.overlap=1.0", "eval.overlap"),
    ],
)
def test_wrong_types_and_ranges_are_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(overrides=[override])


def test_parse_override_values():
    assert parse_override("optim.lr=1e-4") == ("optim.lr", pytest.approx(1e-4))
    assert parse_override("model.roi=[1, 2, 3]") == ("model.roi", [1, 2, 3])
    assert parse_override("data.path=/x/y") == ("data.path", "/x/y")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("optim.lr")


def test_save_roundtrip(tmp_path):
    cfg = load_config(overrides=["optim.lr=2e-4", "model.roi=[16,16,16]", "data.test_cases=3"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert again.diff(cfg) == {}
    changed = load_config(path, ["train.seed=5"])
    assert changed.diff(cfg) == {"train.seed": (5, 0)}


def test_int_or_float_field_keeps_type():
    assert load_config(overrides=["data.test_cases=3"]).data.test_cases == 3
    assert isinstance(load_config(overrides=["data.test_cases=3"]).data.test_cases, int)
    assert load_config(overrides=["data.test_cases=0.25"]).data.test_cases == 0.25


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_resolve(path):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= set(TrainConfig().to_dict())
    from medcontext.models import get_model_spec

    get_model_spec(cfg.model.name)  # the model exists
    assert cfg.model.roi is None or len(cfg.model.roi) == 3


def test_shipped_config_set_is_complete():
    names = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    for dataset in ("synapse", "acdc", "brats21", "brats17"):
        for model in ("unetr", "swin_unetr"):
            assert f"{dataset}_{model}" in names and f"{dataset}_{model}_5shot" in names
    assert {"cpu_phantom", "cpu_hippocampus_unet3d"} <= names
