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
    assert set(raw) <= set(TrainConfig().to_dict()) | {"base"}
    from medcontext.models import get_model_spec

    get_model_spec(cfg.model.name)  # the model exists
    assert cfg.model.roi is None or len(cfg.model.roi) == 3


def test_shipped_config_set_is_complete():
    names = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    for dataset in ("synapse", "acdc", "brats21", "brats17"):
        for model in ("unetr", "swin_unetr"):
            assert f"{dataset}_{model}" in names and f"{dataset}_{model}_5shot" in names
    assert {"cpu_phantom", "cpu_hippocampus_unet3d"} <= names


# ---------------------------------------------------------------------- composition (base:)
PAPER_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("cpu_"))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bases_merge_in_order_relative_to_the_including_file(tmp_path):
    _write(tmp_path / "parts" / "common.yaml", "optim: {lr: 1.0e-4, name: sgd}\nmodel: {options: {size: small, x: 1}}\n")
    _write(tmp_path / "parts" / "later.yaml", "base: common.yaml\noptim: {lr: 2.0e-4}\ntrain: {steps: 7}\n")
    _write(tmp_path / "parts" / "other.yaml", "train: {steps: 9, seed: 3}\n")
    leaf = _write(tmp_path / "run.yaml", "base: [parts/later.yaml, parts/other.yaml]\n"
                                         "model: {options: {size: tiny}}\ntrain: {seed: 4}\n")
    cfg = load_config(leaf, ["train.seed=5"])
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 2e-4  # a base of a base, overridden by the later file
    assert cfg.train.steps == 9  # the later of two bases wins
    assert cfg.model.options == {"size": "tiny"}  # a mapping-valued setting is replaced whole
    assert cfg.train.seed == 5  # --set over everything
    assert load_config(leaf).train.seed == 4  # the file over its bases


def test_base_errors_name_the_file(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: sub/c.yaml\n")
    _write(tmp_path / "sub" / "c.yaml", "base: ../a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: its bases form a cycle \(.*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml\)"):
        load_config(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")
    _write(tmp_path / "fine.yaml", "train: {steps: 3}\n")
    _write(tmp_path / "missing.yaml", "base: [fine.yaml, nope.yaml]\n")
    with pytest.raises(ConfigError, match=rf"missing\.yaml: its base 'nope\.yaml' does not exist \(looked for {tmp_path / 'nope.yaml'}\)"):
        load_config(tmp_path / "missing.yaml")
    _write(tmp_path / "typo.yaml", "optim: {lrr: 1}\n")
    _write(tmp_path / "uses_typo.yaml", "base: typo.yaml\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown configuration key 'optim\.lrr'") as err:
        load_config(tmp_path / "uses_typo.yaml")
    assert "uses_typo" not in str(err.value)  # the file that holds the mistake, not the one that includes it
    _write(tmp_path / "bad.yaml", "base: {a: 1}\n")
    with pytest.raises(ConfigError, match="base must be a file path or a list of them"):
        load_config(tmp_path / "bad.yaml")


def test_a_paper_setting_changes_in_one_place(tmp_path):
    """The paper's shared settings live in configs/base/paper.yaml: one edit reaches every paper config."""
    import shutil

    copy = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, copy)
    paper = copy / "base" / "paper.yaml"
    paper.write_text(paper.read_text().replace("mask_ratio: 0.4 ", "mask_ratio: 0.6 "))
    assert len(PAPER_CONFIGS) == 16
    for path in PAPER_CONFIGS:
        assert load_config(path).method.mask_ratio == 0.4
        assert load_config(copy / path.name).method.mask_ratio == 0.6, path.name
    assert load_config(copy / "cpu_phantom.yaml").method.mask_ratio == 0.4  # the CPU configs stand alone


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.name)
def test_paper_configs_keep_the_paper_settings(path):
    """What the composition must give every paper config (the values of the files before it)."""
    cfg = load_config(path)
    model, dataset, five_shot = path.stem.split("_", 1)[1].removesuffix("_5shot"), path.stem.split("_")[0], "5shot" in path.stem
    assert (cfg.model.name, cfg.model.options, cfg.model.roi) == (model, {"size": "paper"}, [96, 96, 96])
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.grad_clip) == ("adamw", 1e-4, 1e-5, None)
    assert (cfg.method.variant, cfg.method.mask_ratio, cfg.method.beta, cfg.method.momentum) == ("medcontext", 0.4, 0.5, 0.996)
    assert cfg.optim.schedule == {"unetr": "constant", "swin_unetr": "warmup_cosine"}[model]
    assert cfg.data.preset == dataset and cfg.data.use_official_test
    assert (cfg.data.train_cases == 5 or cfg.data.train_case_ids is not None) == five_shot
    if model == "swin_unetr":
        assert cfg.optim.warmup_steps == min(1000, cfg.train.steps // 20)  # 5% of the steps, at most 1000
