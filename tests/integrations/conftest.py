"""A tiny nnU-Net v2 dataset for the integration tests: 6 phantom cases of 32^3 (2 test images),
converted from the MSD layout and planned/preprocessed by nnU-Net once per session; the planned
network is then narrowed (features 4-32) so that training steps take a fraction of a second.

Tests here that need nnunetv2 skip with a reason where it is not installed
(``pip install "medcontext[nnunet]"``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_Phantom"
TINY_FEATURES = [4, 8, 16, 32, 32, 32]


def nnunet_available() -> bool:
    try:
        import nnunetv2  # noqa: F401
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: F401
    except ImportError:
        return False
    return True


def nnunet_command(name: str) -> str:
    """A console script of nnunetv2 installed beside this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.skip(f"{name} is not installed beside {sys.executable}")
    return str(path)


def run_checked(command: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="session")
def nnunet_dataset(tmp_path_factory):
    """Folders and environment of a planned, preprocessed tiny dataset: dict with ``env``,
    ``raw``, ``preprocessed``, ``results``, ``test_images``, ``plans``, ``dataset_json``."""
    if not nnunet_available():
        pytest.skip('nnunetv2 is not installed (pip install "medcontext[nnunet]")')
    from medcontext.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("nnunet")
    msd = generate_phantom(root / "Task990_Phantom", num_cases=6, shape=(32, 32, 32), seed=0, num_test=2)
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_def_n_proc="1", nnUNet_compile="false")
    env.pop("nnUNet_extTrainer", None)
    for name in ("raw", "preprocessed", "results"):
        (root / name).mkdir()
    run_checked([nnunet_command("nnUNetv2_convert_MSD_dataset"), "-i", str(msd), "-np", "1"], env)
    # nnUNet_n_proc_DA=0 (no augmentation workers) is for training only: planning needs >= 1
    run_checked([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
                 "-np", "1", "-npfp", "1"], env)
    env["nnUNet_n_proc_DA"] = "0"
    preprocessed = root / "preprocessed" / DATASET_NAME
    plans_file = preprocessed / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = TINY_FEATURES[: arch["n_stages"]]
    plans_file.write_text(json.dumps(plans, indent=1))
    return {
        "root": root,
        "env": env,
        "raw": root / "raw" / DATASET_NAME,
        "preprocessed": preprocessed,
        "results": root / "results" / DATASET_NAME,
        "test_images": root / "raw" / DATASET_NAME / "imagesTs",
        "plans": plans,
        "dataset_json": json.loads((preprocessed / "dataset.json").read_text()),
    }


@pytest.fixture
def run_nnunet(nnunet_dataset):
    """``run_nnunet(script, *args, env=None)``: run an nnunetv2 console script, assert exit 0."""

    def run(script: str, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        return run_checked([nnunet_command(script), *map(str, args)], env or nnunet_dataset["env"], timeout)

    return run


@pytest.fixture
def nnunet_paths(nnunet_dataset, monkeypatch):
    """nnU-Net's environment variables of :func:`nnunet_dataset` in this process."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", "nnUNet_def_n_proc",
                "nnUNet_compile"):
        monkeypatch.setenv(key, nnunet_dataset["env"][key])
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    return nnunet_dataset
