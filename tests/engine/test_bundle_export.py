"""``medcontext export``: a trained run as a MONAI Bundle that MONAI runs alone, with predict's masks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medcontext.cli import main

# The MONAI model zoo's metadata schema (meta_schema_20240725.json of the MONAI-extra-test-data 0.8.1
# release, the URL a bundle's metadata names), written out offline from the published schema's fields:
# verify_metadata downloads the schema, which this machine cannot, unless the file is already there.
SCHEMA = Path(__file__).parent / "monai_bundle" / "meta_schema_20240725.json"
NNFORMER_TINY = "model.options={preset: small, embed_dim: 8, num_heads: [1, 1, 2, 2]}"
# `python -m monai.bundle ...` in a process where `import medcontext` fails
WITHOUT_MEDCONTEXT = (
    "import runpy, sys; sys.modules['medcontext'] = None; sys.argv[0] = 'monai.bundle'; "
    "runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)"
)


def _tiny_run(phantom_dir: Path, out: Path, *model_args: str) -> Path:
    argv = ["train", "--data", str(phantom_dir), "--out", str(out), "--variant", "medcontext", "--steps", "2",
            "--seed", "0", *model_args, "--set", "data.num_samples=1", "--set", "data.val_cases=1",
            "--set", "data.test_cases=1", "--set", "train.tensorboard=false", "--no-progress"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def runs(phantom_dir, tmp_path_factory) -> dict[str, Path]:
    """Tiny trained runs: unet3d (resampled to another spacing, cropped to the foreground, with a
    hand-written postprocessing.json), UNETR and nnFormer."""
    root = tmp_path_factory.mktemp("bundle_runs")
    runs = {
        "unet3d": _tiny_run(phantom_dir, root / "unet3d", "--model", "unet3d", "--model-size", "tiny",
                            "--roi", "16", "16", "16",
                            "--set", 'data.preprocess={"spacing": [1.3, 0.9, 1.7], "crop_foreground": true}'),
        "unetr": _tiny_run(phantom_dir, root / "unetr", "--model", "unetr", "--model-size", "tiny",
                           "--roi", "16", "16", "16"),
        "nnformer": _tiny_run(phantom_dir, root / "nnformer", "--model", "nnformer", "--roi", "32", "32", "32",
                              "--set", NNFORMER_TINY),
    }
    # a post-processing decision in the agreed format 1 (the run may have chosen none)
    decision = {"version": 1, "chosen_on": "validation", "target": "labels", "foreground_largest_component": True,
                "foreground_labels": list(range(1, 8)), "largest_component_labels": [2, 5], "validation_cases": 1}
    (runs["unet3d"] / "postprocessing.json").write_text(json.dumps(decision))
    return runs


@pytest.fixture(scope="module")
def inputs(phantom_dir, tmp_path_factory) -> Path:
    """Three cases in other geometries: LPS-flipped and anisotropic, isotropic, rotated."""
    folder = tmp_path_factory.mktemp("bundle_inputs")
    images = sorted((phantom_dir / "imagesTr").glob("*.nii.gz"))
    for name, source, spacing in [("oblique.nii.gz", images[4], (1.5, 0.8, 2.0)), ("iso.nii", images[5], (1, 1, 1))]:
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
        affine[:3, 3] = [30.0, -12.5, 7.0]
        nib.save(nib.Nifti1Image(np.asarray(nib.load(str(source)).dataobj)[:, :20, :], affine), str(folder / name))
    angle = 0.3
    rotated = np.eye(4)
    rotated[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]) \
        @ np.diag([1.2, 1.0, 0.7])
    nib.save(nib.Nifti1Image(np.asarray(nib.load(str(images[0])).dataobj), rotated), str(folder / "rotated.nii.gz"))
    return folder


def _run_bundle(bundle: Path, inputs: Path, output: Path) -> None:
    """``python -m monai.bundle run`` on ``inputs`` in a fresh process where medcontext cannot be imported."""
    command = [sys.executable, "-c", WITHOUT_MEDCONTEXT, "run", "--config_file", str(bundle / "configs" / "inference.json"),
                "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
                "--dataset_dir", str(inputs), "--output_dir", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=bundle, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _tie_voxels(run: Path, image: Path, voxels: np.ndarray) -> np.ndarray:
    """Whether each original voxel (N, 3) lies exactly halfway between two preprocessed voxels."""
    from medcontext.data import PreprocessConfig, load_for_inference

    cfg = PreprocessConfig.from_dict(json.loads((run / "preprocess.json").read_text()))
    _, restore = load_for_inference(cfg, image)
    matrix = np.linalg.inv(restore.preprocessed_affine) @ restore.original_affine
    position = voxels @ matrix[:3, :3].T + matrix[:3, 3]
    return (np.abs(position - np.floor(position) - 0.5) < 1e-4).any(axis=1)


def _assert_same_masks(run: Path, inputs: Path, predicted: Path, bundled: Path) -> None:
    """Bundle masks == ``medcontext predict`` masks: shape, affine and every voxel, except voxels that
    lie exactly halfway between two preprocessed voxels of a rotated input, where nearest-neighbour
    restoring may pick either neighbour (MONAI's Invertd and medcontext's restorer break such ties
    differently)."""
    for image in sorted(inputs.iterdir()):
        stem = image.name.split(".nii")[0]
        ours, theirs = nib.load(str(predicted / f"{stem}.nii.gz")), nib.load(str(bundled / f"{stem}_seg.nii.gz"))
        assert theirs.shape == ours.shape == nib.load(str(image)).shape
        np.testing.assert_allclose(theirs.affine, nib.load(str(image)).affine, atol=1e-5)
        a, b = np.asarray(ours.dataobj), np.asarray(theirs.dataobj)
        differ = np.argwhere(a != b)
        if stem != "rotated":
            assert len(differ) == 0, f"{image.name}: {len(differ)} voxels differ"
        else:
            assert _tie_voxels(run, image, differ.astype(float)).all(), f"{image.name}: a non-tie voxel differs"
            assert len(differ) < 0.05 * a.size
        assert len(np.unique(a)) > 1  # the masks are not trivially empty


def _verify_metadata(bundle: Path, tmp_path: Path) -> None:
    from monai.bundle import verify_metadata

    local = tmp_path / "schema.json"
    shutil.copy(SCHEMA, local)  # present, so verify_metadata does not download
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(local))


def _assert_schema_refuses_incomplete_metadata(bundle: Path, tmp_path: Path) -> None:
    """The offline schema is a real check: the same metadata without a required key fails it."""
    incomplete = tmp_path / "incomplete"
    shutil.copytree(bundle / "configs", incomplete / "configs")
    meta = json.loads((incomplete / "configs" / "metadata.json").read_text())
    del meta["task"]
    (incomplete / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="task"):
        _verify_metadata(incomplete, tmp_path)


@pytest.mark.parametrize("model, flags", [
    ("unet3d", ["--torchscript"]),  # scripted; resampled, cropped, post-processed
    ("unetr", []),  # MONAI's UNETR class with model.pt
    ("nnformer", ["--torchscript", "--use", "teacher"]),  # traced: our own network without medcontext
])
def test_bundle_runs_with_monai_alone_and_gives_predicts_masks(runs, inputs, tmp_path, model, flags):
    """Export, verify_metadata (offline schema), verify_net_in_out, then `python -m monai.bundle run`
    in a fresh process where medcontext cannot be imported: predict's masks."""
    from monai.bundle import verify_net_in_out

    run, bundle = runs[model], tmp_path / "bundle"
    assert main(["export", "--run", str(run), "--bundle", str(bundle), *flags]) == 0
    for name in ["configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md", "LICENSE"]:
        assert (bundle / name).is_file(), name
    assert (bundle / "models" / "model.ts").is_file() == ("--torchscript" in flags)
    if model == "nnformer":  # traced: its attention masks are made on the CPU, so the bundle runs there
        assert json.loads((bundle / "configs" / "inference.json").read_text())["device"] == "$torch.device('cpu')"
        assert "runs it on the CPU" in (bundle / "docs" / "README.md").read_text()
    _verify_metadata(bundle, tmp_path)
    _assert_schema_refuses_incomplete_metadata(bundle, tmp_path)
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), device="cpu", bundle_root=str(bundle))
    use = "teacher" if "teacher" in flags else "student"
    assert main(["predict", "--run", str(run), "--input", str(inputs), "--output", str(tmp_path / "predict"),
                 "--use", use, "--device", "cpu"]) == 0
    _run_bundle(bundle, inputs, tmp_path / "bundled")
    _assert_same_masks(run, inputs, tmp_path / "predict", tmp_path / "bundled")
    if model == "unet3d":
        _assert_postprocessing_was_applied(bundle, run, inputs, tmp_path)


def _assert_postprocessing_was_applied(bundle: Path, run: Path, inputs: Path, tmp_path: Path) -> None:
    """The hand-written postprocessing.json became KeepLargestConnectedComponentd steps in the network's
    space (where predict applies it), and it changed predict's masks, so the comparison means something."""
    steps = json.loads((bundle / "configs" / "inference.json").read_text())["postprocessing"]["transforms"]
    kept = [t for t in steps if t["_target_"] == "KeepLargestConnectedComponentd"]
    assert [(t["applied_labels"], t["independent"]) for t in kept] == [(list(range(1, 8)), False), ([2, 5], True)]
    assert [t["_target_"] for t in steps].index("Invertd") > steps.index(kept[-1])
    assert main(["predict", "--run", str(run), "--input", str(inputs), "--output", str(tmp_path / "raw"),
                 "--device", "cpu", "--no-postprocessing"]) == 0
    changed = sum(int((np.asarray(nib.load(str(tmp_path / "raw" / p.name)).dataobj)
                       != np.asarray(nib.load(str(p)).dataobj)).sum()) for p in (tmp_path / "predict").iterdir())
    assert changed > 0


def test_nnformer_python_bundle_names_medcontext(runs, tmp_path):
    """Without TorchScript an nnFormer bundle builds the network through medcontext, and says so."""
    bundle = tmp_path / "bundle"
    assert main(["export", "--run", str(runs["nnformer"]), "--bundle", str(bundle)]) == 0
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["network_def"]["_target_"] == "medcontext.models.create_model"
    assert inference["network_def"]["deep_supervision"] is False  # the heads are left out of model.pt
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "medcontext" in meta["required_packages_version"]
    assert "pip install medcontext" in (bundle / "docs" / "README.md").read_text()
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    heads = sorted({key.split(".")[1] for key in weights if key.startswith("heads.")})
    assert heads == ["0"]  # the run's student has heads 0, 1, 2 (deep supervision); only the full-resolution one is kept


def test_preprocessing_config_is_the_packages_preprocessing(phantom_dir, tmp_path):
    """Each normalisation/crop/spacing/orientation setting gives the same tensor and affine in the
    bundle's transforms as in medcontext's own (what the masks test covers for one setting)."""
    from monai.bundle import ConfigParser

    from medcontext.data import PreprocessConfig
    from medcontext.data.transforms import preprocess_transforms
    from medcontext.export.bundle_config import preprocessing_transforms

    image = sorted((phantom_dir / "imagesTr").glob("*.nii.gz"))[0]
    for settings in [dict(normalization="ct", ct_window=(-0.5, 1.5), crop_foreground=True, spacing=(1.2, 1.0, 0.8)),
                     dict(normalization="zscore_nonzero", crop_foreground=True, orientation="LPS"),
                     dict(normalization="none", spacing=(2.0, 2.0, 2.0))]:
        cfg = PreprocessConfig(**settings)
        ours = preprocess_transforms(cfg, with_label=False)({"image": str(image)})["image"]
        parser = ConfigParser({"imports": ["$import torch"],
                               "pre": {"_target_": "Compose", "transforms": preprocessing_transforms(cfg)}})
        theirs = parser.get_parsed_content("pre")({"image": str(image)})["image"]
        assert torch.equal(ours.as_tensor(), theirs.as_tensor()), settings
        assert torch.equal(ours.affine, theirs.affine), settings


def test_sigmoid_regions_postprocess_paint_and_restore_as_predict_does(inputs, tmp_path):
    """Region runs: logits > 0 per region, largest components on the region channels, painted largest
    region first (BraTS: ET over TC over WT), back to the input's grid: predict's steps, voxel for voxel."""
    from monai.bundle import ConfigParser

    from medcontext.data import PreprocessConfig, load_for_inference
    from medcontext.engine.inference import regions_to_labels
    from medcontext.evaluation.postprocessing import PostProcessing
    from medcontext.export.bundle_config import postprocessing_transforms, preprocessing_transforms

    regions = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    cfg = PreprocessConfig(output_mode="sigmoid", regions=regions, labels=[0, 1, 2, 4], spacing=(1.3, 0.9, 1.7))
    decision = PostProcessing(True, (1,), (0, 1, 2), "regions")
    parser = ConfigParser({
        "imports": ["$import numpy", "$import torch"], "output_dir": str(tmp_path),
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing_transforms(cfg)},
        "post": {"_target_": "Compose", "transforms": postprocessing_transforms(cfg, decision, "uint8")},
    })
    item = parser.get_parsed_content("preprocessing")({"image": str(inputs / "oblique.nii.gz")})
    logits = torch.randn(3, *item["image"].shape[1:], generator=torch.Generator().manual_seed(0))
    parser.get_parsed_content("post")({**item, "pred": logits})
    got = np.asarray(nib.load(str(tmp_path / "oblique_seg.nii.gz")).dataobj)
    _, restore = load_for_inference(cfg, inputs / "oblique.nii.gz")
    on = decision.apply((logits > 0).numpy().astype(np.uint8))
    expected = restore(regions_to_labels(on, regions).astype(np.uint8))
    assert got.shape == expected.shape and set(np.unique(got).tolist()) == {0, 1, 2, 4}
    np.testing.assert_array_equal(got, expected)


def test_bad_run_folders_get_clear_errors(runs, tmp_path, capsys):
    def export_error(run: Path, bundle: Path) -> str:
        assert main(["export", "--run", str(run), "--bundle", str(bundle)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a medcontext run folder" in export_error(empty, tmp_path / "b1")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(runs["unet3d"], no_weights, ignore=shutil.ignore_patterns("*.pt"))
    assert "last.pt" in export_error(no_weights, tmp_path / "b2")
    existing = tmp_path / "existing"
    existing.mkdir()
    assert "already exists" in export_error(runs["unet3d"], existing)
    bad_post = tmp_path / "bad_post"
    shutil.copytree(runs["unet3d"], bad_post)
    (bad_post / "postprocessing.json").write_text(json.dumps(
        {"version": 1, "chosen_on": "validation", "foreground_largest_component": False, "largest_component_labels": [9],
         "foreground_labels": []}))
    err = export_error(bad_post, tmp_path / "b3")
    assert "postprocessing.json" in err and "[9]" in err
    (bad_post / "postprocessing.json").write_text(json.dumps({"version": 2}))
    assert "version" in export_error(bad_post, tmp_path / "b4")
    assert not any(p.name.startswith(("b1", "b2", "b3", "b4", ".b")) for p in tmp_path.iterdir())  # nothing left behind


def _registered_models() -> list[str]:
    from medcontext.models import list_models

    return list_models()


@pytest.mark.parametrize("name", _registered_models())
def test_every_registered_model_has_a_bundle_definition_with_its_weights(name):
    """A new model exports without new code: the bundle's definition (MONAI's class, else
    create_model) takes the registry network's weights (less deep-supervision heads) and, at crops
    up to 32^3 (SwinUNETR needs 64^3: weights only, its logits are checked at every export), gives
    the same logits."""
    from medcontext.export.bundle import _max_logit_difference, _transfer_weights, bundle_network
    from medcontext.export.bundle_config import network_definition
    from medcontext.models import create_model, get_model_spec

    spec = get_model_spec(name)
    options = dict(spec.test_options or {})
    if spec.deep_supervision is True:
        options["deep_supervision"] = True  # trained with heads; the bundle leaves them out
    torch.manual_seed(0)
    network = create_model(name, 1, 3, spec.test_roi, **options)
    definition = network_definition(name, 1, 3, spec.test_roi, options)
    json.dumps(definition)  # plain JSON
    exported = bundle_network(definition)
    _transfer_weights(network, exported, name)
    if max(spec.test_roi) <= 32:
        assert _max_logit_difference(network, exported, (1, 1, *spec.test_roi)) == 0.0
