"""Trainer names <-> MedContext settings, the discovery file and the export; no nnunetv2 needed."""

import importlib.util

import pytest
import torch

from medcontext.cli import main
from medcontext.integrations.nnunet import (
    MedContextSettings,
    export_plain_model,
    ext_trainer_folder,
    install_trainer,
    parse_trainer_name,
    remove_trainer,
    trainer_name,
)
from medcontext.integrations.nnunet.discovery import SHIM_NAME


def test_base_name_is_the_papers_defaults():
    settings = parse_trainer_name("nnUNetTrainerMedContext")
    assert settings == MedContextSettings()
    assert (settings.variant, settings.mask_ratio, settings.beta, settings.momentum) == ("medcontext", 0.4, 0.5, 0.996)
    assert settings.num_epochs is None and settings.mask_cell is None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("nnUNetTrainerMedContext_noTeacher", {"variant": "no_teacher"}),
        ("nnUNetTrainerMedContext_baseline_250epochs", {"variant": "baseline", "num_epochs": 250}),
        ("nnUNetTrainerMedContext_ratio60_beta1p25_m0p99", {"mask_ratio": 0.6, "beta": 1.25, "momentum": 0.99}),
        ("nnUNetTrainerMedContext_cell8", {"mask_cell": (8, 8, 8)}),
        ("nnUNetTrainerMedContext_cell4x8x16_clOnly", {"mask_cell": (4, 8, 16), "variant": "cl_only"}),
        ("nnUNetTrainerMedContext_5epochs_10iters_2valiters",
         {"num_epochs": 5, "iterations_per_epoch": 10, "val_iterations_per_epoch": 2}),
    ],
)
def test_tokens_set_their_setting_and_the_canonical_name_round_trips(name, expected):
    settings = parse_trainer_name(name)
    assert settings == MedContextSettings(**expected)
    assert parse_trainer_name(trainer_name(settings)) == settings


def test_canonical_name_orders_tokens_and_leaves_out_defaults():
    settings = MedContextSettings(variant="msl_only", mask_ratio=0.2, beta=0.5, num_epochs=3)
    assert trainer_name(settings) == "nnUNetTrainerMedContext_mslOnly_ratio20_3epochs"
    assert trainer_name(MedContextSettings()) == "nnUNetTrainerMedContext"


@pytest.mark.parametrize(
    "name, message",
    [
        ("nnUNetTrainerMedContext_ratio40_ratio60", "mask_ratio is set twice"),
        ("nnUNetTrainerMedContext_rato60", "unknown token 'rato60'"),
        ("nnUNetTrainerMedContext_ratio140", "mask_ratio must be in [0, 1]"),
        ("nnUNetTrainerMedContext_m1p5", "momentum must be in [0, 1]"),
        ("nnUNetTrainerMedContext_0epochs", "num_epochs must be >= 1"),
        ("nnUNetTrainerMedContext_cell0", "mask_cell must be 3 positive"),
        ("nnUNetTrainer_5epochs", "does not start with"),
    ],
)
def test_bad_names_are_refused_with_the_reason(name, message):
    with pytest.raises(ValueError) as info:
        parse_trainer_name(name)
    assert message in str(info.value)


def test_settings_round_trip_through_plain_dicts_and_refuse_unknown_keys():
    settings = MedContextSettings(mask_cell=(4, 8, 8), num_epochs=2)
    assert MedContextSettings.from_dict(settings.as_dict()) == settings
    with pytest.raises(ValueError, match="unknown MedContext settings"):
        MedContextSettings.from_dict({**settings.as_dict(), "ratio": 0.4})


def test_cli_prints_trainer_name_and_path(capsys):
    assert main(["nnunet", "trainer-name", "--variant", "no_teacher", "--mask-ratio", "0.6", "--epochs", "5"]) == 0
    assert capsys.readouterr().out.strip() == "nnUNetTrainerMedContext_noTeacher_ratio60_5epochs"
    assert main(["nnunet", "trainer-path"]) == 0
    assert capsys.readouterr().out.strip() == str(ext_trainer_folder())


def test_ext_trainer_folder_holds_exactly_the_one_shim():
    # nnU-Net imports every module of the folder by its bare name: it must hold only the shim.
    assert sorted(p.name for p in ext_trainer_folder().iterdir() if p.suffix == ".py") == [SHIM_NAME]
    assert not (ext_trainer_folder() / "__init__.py").exists()


def test_install_and_remove_the_shim(tmp_path):
    written = install_trainer(tmp_path)
    assert written == tmp_path / SHIM_NAME
    assert written.read_text() == (ext_trainer_folder() / SHIM_NAME).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [SHIM_NAME]  # no temporary left
    assert remove_trainer(tmp_path) == written and not written.exists()
    assert remove_trainer(tmp_path) is None
    with pytest.raises(NotADirectoryError):
        install_trainer(tmp_path / "missing")


def test_shim_offers_nothing_when_medcontext_is_missing(monkeypatch):
    # a copy left in nnU-Net's folder after `pip uninstall medcontext` must not break nnU-Net's search
    modules = __import__("sys").modules
    for name in [n for n in modules if n.startswith("medcontext.")]:
        monkeypatch.delitem(modules, name)
    monkeypatch.setitem(modules, "medcontext", None)
    spec = importlib.util.spec_from_file_location("shim_under_test", ext_trainer_folder() / SHIM_NAME)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not hasattr(module, "nnUNetTrainerMedContext")


def _fake_model_folder(root, variant="medcontext"):
    folder = root / "nnUNetTrainerMedContext__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        (folder / name).write_text("{}")
    student = {"w": torch.ones(2)}
    teacher = {"w": torch.full((2,), 3.0)} if variant != "no_teacher" else None
    checkpoint = {"network_weights": student, "trainer_name": "nnUNetTrainerMedContext_noTeacher", "current_epoch": 7,
                  "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2),
                  "medcontext": {"settings": MedContextSettings(variant=variant).as_dict(), "teacher_weights": teacher,
                                 "mask_token": None}}
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


@pytest.mark.parametrize("use, value", [("student", 1.0), ("teacher", 3.0)])
def test_export_writes_a_plain_checkpoint(tmp_path, use, value):
    folder = _fake_model_folder(tmp_path)
    out = tmp_path / "plain"
    written = export_plain_model(folder, out, use=use)
    assert written == [out / "fold_0" / "checkpoint_final.pth"]
    checkpoint = torch.load(written[0], weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainer" and "medcontext" not in checkpoint
    assert torch.equal(checkpoint["network_weights"]["w"], torch.full((2,), value))
    assert checkpoint["current_epoch"] == 7 and checkpoint["inference_allowed_mirroring_axes"] == (0, 1, 2)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "dataset_fingerprint.json", "fold_0", "plans.json"]


def test_export_refuses_bad_requests_before_writing(tmp_path):
    folder = _fake_model_folder(tmp_path, variant="no_teacher")
    with pytest.raises(ValueError, match="keeps no teacher"):
        export_plain_model(folder, tmp_path / "a", use="teacher")
    assert not (tmp_path / "a").exists()
    with pytest.raises(FileNotFoundError, match="no fold_3"):
        export_plain_model(folder, tmp_path / "b", folds=[3])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        export_plain_model(folder, tmp_path / "c")
    plain = tmp_path / "plainrun"
    (plain / "fold_0").mkdir(parents=True)
    (plain / "plans.json").write_text("{}")
    (plain / "dataset.json").write_text("{}")
    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainer"}, plain / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ValueError, match="no MedContext entry"):
        export_plain_model(plain, tmp_path / "d")
