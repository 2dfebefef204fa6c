"""Transforms, training / evaluation datasets, and the way back to the original grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medcontext.data import (
    PreprocessConfig,
    nifti_io,
    Restorer,
    load_dataset,
    load_for_inference,
    make_eval_dataset,
    make_train_dataset,
    preprocess_transforms,
    save_nifti,
    train_transforms,
)



def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


# ---------------------------------------------------------------------------- PreprocessConfig


def test_config_from_spec_overrides_and_round_trip(phantom_dir):
    spec = load_dataset(phantom_dir)
    cfg = PreprocessConfig.from_spec(spec)
    assert cfg.normalization == "zscore" and cfg.spacing is None and cfg.labels == list(range(8))
    assert cfg.num_outputs == spec.num_outputs
    cfg2 = PreprocessConfig.from_spec(spec, target_spacing=[2, 2, 2], crop_foreground=True)
    assert cfg2.spacing == (2.0, 2.0, 2.0) and cfg2.crop_foreground
    back = PreprocessConfig.from_dict(json.loads(json.dumps(cfg2.to_dict())))
    assert back == cfg2 and back.fingerprint() == cfg2.fingerprint() != cfg.fingerprint()
    with pytest.raises(ValueError, match=r"unknown preprocessing settings \['spacinng'\]"):
        PreprocessConfig.from_spec(spec, spacinng=(1, 1, 1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"normalization": "minmax"}, "normalization must be one of"),
        ({"normalization": "ct"}, "needs ct_window"),
        ({"normalization": "ct", "ct_window": (250, -175)}, "low < high"),
        ({"spacing": (1.0, 0.0, 1.0)}, "three positive mm values"),
        ({"orientation": "RAX"}, "three axis codes"),
        ({"output_mode": "sigmoid"}, "needs regions"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(**kwargs)


# -------------------------------------------------------------------------------- transforms


def test_preprocess_shapes_dtypes_and_zscore(phantom_dir):
    spec = load_dataset(phantom_dir)
    cfg = PreprocessConfig.from_spec(spec, spacing=(2.0, 2.0, 2.0))
    case = spec.cases[0]
    out = preprocess_transforms(cfg)({"image": str(case.images[0]), "label": str(case.label)})
    image, label = out["image"], out["label"]
    assert isinstance(image, MetaTensor) and image.shape == (1, 12, 12, 12) and image.dtype == torch.float32
    assert label.shape == (1, 12, 12, 12) and label.dtype == torch.int64
    assert abs(float(image.mean())) < 1e-4 and float(image.std()) == pytest.approx(1.0, abs=0.01)
    assert set(torch.unique(label).tolist()) <= set(range(8)) and int(label.max()) == 7
    assert np.allclose(np.diag(image.affine.numpy())[:3], 2.0)


def test_ct_window_and_orientation(tmp_path, helpers):
    hu = np.linspace(-1000, 1000, 10 * 8 * 6, dtype=np.float32).reshape(10, 8, 6)
    lps = np.array([[-1.0, 0, 0, 5], [0, -1.0, 0, 7], [0, 0, 2.0, -3], [0, 0, 0, 1]])
    path = helpers.write_nifti(tmp_path / "ct.nii.gz", hu, lps)
    cfg = PreprocessConfig(normalization="ct", ct_window=(-175, 250))
    image = preprocess_transforms(cfg, with_label=False)({"image": str(path)})["image"]
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    expected = ((np.clip(hu, -175, 250) + 175) / 425)[::-1, ::-1]  # LPS -> RAS flips the first two axes
    assert np.allclose(image[0].numpy(), expected, atol=1e-6)
    assert np.allclose(image.affine.numpy() @ [0, 0, 0, 1], lps @ [9, 7, 0, 1])  # same world point


def test_sigmoid_regions_are_encoded(tmp_path, helpers):
    image, label = helpers.blob_case(labels=(1, 4))
    label[0, 0, :3] = 2
    ip = helpers.write_nifti(tmp_path / "i.nii.gz", image)
    lp = helpers.write_nifti(tmp_path / "l.nii.gz", label)
    regions = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    cfg = PreprocessConfig(output_mode="sigmoid", regions=regions, labels=[0, 1, 2, 4])
    out = preprocess_transforms(cfg)({"image": str(ip), "label": str(lp)})["label"]
    assert out.shape == (3, 12, 12, 12) and out.dtype == torch.float32
    for r, values in enumerate(regions.values()):
        assert np.array_equal(out[r].numpy().astype(bool), np.isin(label, values))


def test_label_values_above_known_labels_fail_naming_the_file(tmp_path, helpers):
    image, label = helpers.blob_case()
    label[0, 0, 0] = 9
    ip = helpers.write_nifti(tmp_path / "i.nii.gz", image)
    lp = helpers.write_nifti(tmp_path / "bad_label.nii.gz", label)
    with pytest.raises(Exception) as err:
        preprocess_transforms(PreprocessConfig(labels=[0, 1, 2]))({"image": str(ip), "label": str(lp)})
    chain = f"{err.value} {err.value.__cause__}"
    assert "bad_label.nii.gz holds values [0, 1, 2, 9]" in chain


def test_foreground_crop_on_nonzero_brain(tmp_path, helpers):
    image = np.zeros((20, 20, 20), np.float32)
    image[5:15, 4:12, 6:16] = np.random.default_rng(0).uniform(1, 2, (10, 8, 10))
    ip = helpers.write_nifti(tmp_path / "i.nii.gz", image)
    cfg = PreprocessConfig(normalization="zscore_nonzero", crop_foreground=True)
    out = preprocess_transforms(cfg, with_label=False)({"image": str(ip)})["image"]
    assert out.shape == (1, 10, 8, 10)
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-5)
    assert np.allclose(out.affine.numpy()[:3, 3], [5, 4, 6])  # the crop moves the origin


def test_train_transforms_crops(phantom_dir):
    spec = load_dataset(phantom_dir)
    cfg = PreprocessConfig.from_spec(spec)
    case = spec.cases[0]
    volume = preprocess_transforms(cfg)({"image": str(case.images[0]), "label": str(case.label)})
    rand = train_transforms(cfg, (32, 16, 16), num_samples=3, pos=1, neg=0)
    rand.set_random_state(0)
    crops = rand(volume)
    assert len(crops) == 3
    for crop in crops:
        assert crop["image"].shape == (1, 32, 16, 16) and crop["image"].dtype == torch.float32
        assert crop["label"].shape == (1, 32, 16, 16) and crop["label"].dtype == torch.int64
        assert not isinstance(crop["image"], MetaTensor)
        assert int((crop["label"] > 0).sum()) > 0  # pos=1, neg=0: centred on foreground
    assert "RandRotate90d" not in [type(t).__name__ for t in rand.transforms]  # 32x16 in-plane: no 90-degree turns
    not_lateral = PreprocessConfig.from_dict({**cfg.to_dict(), "lateral": False})  # the phantom is left/right aware
    assert "RandRotate90d" in [type(t).__name__ for t in train_transforms(not_lateral, (16, 16, 32)).transforms]
    with pytest.raises(ValueError, match="roi_size"):
        train_transforms(cfg, (32, 32))


# ---------------------------------------------------------------------------------- datasets


def test_train_dataset_items_and_seeding(phantom_dir):
    spec = load_dataset(phantom_dir)
    cfg = PreprocessConfig.from_spec(spec)
    ds = make_train_dataset(spec, spec.case_ids[:2], cfg, (16, 16, 16), num_samples=3, seed=5, num_workers=0)
    assert len(ds) == 6
    items = [ds[i] for i in range(len(ds))]
    assert [it["case_id"] for it in items] == ["phantom_000"] * 3 + ["phantom_001"] * 3
    assert all(it["image"].shape == (1, 16, 16, 16) and it["label"].dtype == torch.int64 for it in items)
    assert not torch.equal(items[0]["image"], items[1]["image"])  # fresh crop per item
    again = make_train_dataset(spec, spec.case_ids[:2], cfg, (16, 16, 16), num_samples=3, seed=5, num_workers=0)
    assert all(torch.equal(a["image"], again[i]["image"]) for i, a in enumerate(items))
    other = make_train_dataset(spec, spec.case_ids[:2], cfg, (16, 16, 16), num_samples=3, seed=6, num_workers=0)
    assert not all(torch.equal(a["image"], other[i]["image"]) for i, a in enumerate(items))
    ds.transform.set_random_state(seed=11)  # reseeding reproduces a draw (the engine's resumable sampling)
    first = ds[4]
    ds[0]
    ds.transform.set_random_state(seed=11)
    assert torch.equal(ds[4]["image"], first["image"])
    batch = torch.utils.data.default_collate([items[0], items[1]])
    assert batch["image"].shape == (2, 1, 16, 16, 16)
    with pytest.raises(IndexError):
        ds[6]


def test_train_dataset_with_worker_processes(phantom_dir):
    from monai.data import DataLoader

    spec = load_dataset(phantom_dir)
    cfg = PreprocessConfig.from_spec(spec)
    ds = make_train_dataset(spec, spec.case_ids[:1], cfg, (16, 16, 16), num_samples=4, seed=0, num_workers=0)
    loader = DataLoader(ds, batch_size=1, num_workers=2, shuffle=False)
    crops = [b["image"][0] for b in loader]
    assert len(crops) == 4
    # MONAI's loader reseeds each worker: the workers do not repeat each other's crops
    assert all(not torch.equal(crops[i], crops[j]) for i in range(4) for j in range(i + 1, 4))


def test_train_dataset_pads_small_volumes_and_persistent_cache(phantom_dir, tmp_path):
    spec = load_dataset(phantom_dir)
    cfg = PreprocessConfig.from_spec(spec, spacing=(2.0, 2.0, 2.0))  # 12^3 volumes, 16^3 crops
    cache = tmp_path / "cache"
    ds = make_train_dataset(spec, spec.cases[:2], cfg, (16, 16, 16), num_samples=1, cache_dir=cache, seed=1)
    first = [ds[i] for i in range(2)]
    assert all(it["image"].shape == (1, 16, 16, 16) for it in first)
    folders = list(cache.iterdir())
    assert len(folders) == 1 and len(list(folders[0].glob("*.pt"))) == 2
    again = make_train_dataset(spec, spec.cases[:2], cfg, (16, 16, 16), num_samples=1, cache_dir=cache, seed=1)
    assert all(torch.equal(a["label"], again[i]["label"]) for i, a in enumerate(first))
    assert len(list(cache.iterdir())) == 1  # same settings reuse the cache
    cfg2 = PreprocessConfig.from_spec(spec)
    make_train_dataset(spec, spec.cases[:1], cfg2, (16, 16, 16), num_samples=1, cache_dir=cache)[0]
    assert len(list(cache.iterdir())) == 2  # other settings, other cache


def test_eval_dataset_restores_the_original_label(phantom_dir):
    spec = load_dataset(phantom_dir)
    cfg = PreprocessConfig.from_spec(spec, spacing=(1.5, 1.5, 1.5))
    ds = make_eval_dataset(spec, spec.case_ids[:1], cfg, num_workers=0)
    item = ds[0]
    assert item["case_id"] == "phantom_000" and item["image"].shape == (1, 16, 16, 16)
    restore = Restorer.from_image(item["image"], output_mode=cfg.output_mode)
    back = restore(item["label"][0].numpy())
    original = np.asanyarray(nib.load(item["source_label"]).dataobj)
    assert back.shape == original.shape == (24, 24, 24)
    assert np.array_equal(restore.affine, nib.load(item["source_label"]).affine)
    assert (back == original).mean() > 0.95  # 1.5 mm there and back, nearest neighbour
    # the same result as MONAI's own inverse of the recorded transforms
    monai_inverse = ds.transform.inverse({"image": item["image"], "label": item["label"]})["label"]
    assert np.array_equal(back, monai_inverse[0].numpy().round().astype(back.dtype))


# ----------------------------------------------------------------------------------- restore


def test_restore_is_exact_through_reorientation_and_crop(tmp_path, helpers):
    image = np.zeros((14, 11, 9), np.float32)
    label = np.zeros((14, 11, 9), np.uint8)
    image[3:12, 2:9, 1:8] = 5.0
    label[4:8, 3:6, 2:5] = 1
    label[8:11, 5:8, 4:7] = 2
    affine = np.array([[0, 0, -2.0, 30], [1.5, 0, 0, -4], [0, -1.0, 0, 9], [0, 0, 0, 1]])  # a permuted, flipped grid
    ip = helpers.write_nifti(tmp_path / "i.nii.gz", image, affine)
    cfg = PreprocessConfig(normalization="zscore_nonzero", crop_foreground=True)
    tensor, restore = load_for_inference(cfg, [ip])
    assert isinstance(tensor, torch.Tensor) and not isinstance(tensor, MetaTensor)
    assert tensor.shape == (1, 7, 9, 7)  # RAS order of the permuted axes, cropped to the box
    lp = helpers.write_nifti(tmp_path / "l.nii.gz", label, affine)
    pre = preprocess_transforms(cfg)({"image": str(ip), "label": str(lp)})["label"][0].numpy()
    back = restore(pre)
    assert back.dtype == pre.dtype and np.array_equal(back, label)
    probs = np.stack([pre == k for k in range(3)]).astype(np.float32)
    back_probs = restore(probs)
    assert back_probs.shape == (3, 14, 11, 9) and back_probs.dtype == np.float32
    assert np.array_equal(back_probs.argmax(0), label)
    outside = image == 0
    assert np.all(back_probs[0][outside] == 1.0) and np.all(back_probs[1:][:, outside] == 0.0)  # background fill
    with pytest.raises(ValueError, match="spatial shape"):
        restore(np.zeros((5, 5, 5), np.int64))


def test_restore_linear_probabilities_after_resampling(tmp_path, helpers):
    image, label = helpers.blob_case(shape=(20, 20, 10))
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    ip = helpers.write_nifti(tmp_path / "i.nii.gz", image, affine)
    lp = helpers.write_nifti(tmp_path / "l.nii.gz", label, affine)
    cfg = PreprocessConfig(spacing=(1.0, 1.0, 1.0), labels=[0, 1, 2])
    pre = preprocess_transforms(cfg)({"image": str(ip), "label": str(lp)})["label"][0].numpy()
    _, restore = load_for_inference(cfg, ip)
    probs = torch.from_numpy(np.stack([pre == k for k in range(3)]).astype(np.float32))
    back = restore(probs)
    assert back.shape == (3, 20, 20, 10)
    assert np.allclose(back.sum(0), 1.0, atol=1e-5)  # linear interpolation keeps a distribution
    assert (back.argmax(0) == label).mean() > 0.97
    assert (restore(pre) == label).mean() > 0.97


def test_save_nifti_is_atomic_and_keeps_geometry(tmp_path, monkeypatch):
    path = tmp_path / "out" / "pred.nii.gz"
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [10, -5, 3]
    data = np.arange(60, dtype=np.int64).reshape(3, 4, 5)
    save_nifti(data, affine, path)
    img = nib.load(str(path))
    assert np.array_equal(np.asarray(img.dataobj), data) and np.allclose(img.affine, affine)
    assert img.get_data_dtype() == np.int16

    def broken_save(img, filename):  # a crash half-way through writing
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nifti_io.nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(np.zeros((3, 4, 5), np.int16), affine, path)
    monkeypatch.undo()
    assert np.array_equal(np.asarray(nib.load(str(path)).dataobj), data)  # old file intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["pred.nii.gz"]  # no temp files left
    with pytest.raises(ValueError, match="end in .nii"):
        save_nifti(data, affine, tmp_path / "pred.npy")


def test_restorer_save_writes_the_original_geometry(tmp_path, helpers):
    image, label = helpers.blob_case(shape=(16, 14, 8))
    affine = np.diag([-0.9, 0.9, 2.0, 1.0])
    ip = helpers.write_nifti(tmp_path / "i.nii.gz", image, affine)
    cfg = PreprocessConfig(spacing=(1.5, 1.5, 1.5))
    tensor, restore = load_for_inference(cfg, str(ip))
    pred = torch.zeros(tensor.shape[1:], dtype=torch.int64)
    pred[2:5, 2:5, 2:5] = 3
    out = restore.save(pred, tmp_path / "pred.nii.gz", dtype=np.uint8)
    img = nib.load(str(out))
    assert img.shape == (16, 14, 8) and np.allclose(img.affine, affine) and img.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(img.dataobj))) == {0, 3}
    probs = restore.save(torch.rand((2, *tensor.shape[1:])), tmp_path / "probs.nii.gz")
    assert nib.load(str(probs)).shape == (16, 14, 8, 2)


# ------------------------------------------------------------------------------- real data


def test_real_hippocampus_round_trip(require_data):
    hippocampus = require_data("Task04_Hippocampus", "dataset.json")
    image_path = hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    label_path = hippocampus / "labelsTr" / "hippocampus_001.nii.gz"
    original = np.asanyarray(nib.load(str(label_path)).dataobj)
    for spacing, threshold in ((None, 1.0), ((0.8, 0.8, 0.8), 0.99)):
        cfg = PreprocessConfig(spacing=spacing, labels=[0, 1, 2])
        tensor, restore = load_for_inference(cfg, image_path)
        pre = preprocess_transforms(cfg)({"image": str(image_path), "label": str(label_path)})["label"][0]
        assert tensor.shape[1:] == pre.shape
        back = restore(pre)
        assert back.shape == original.shape
        for k in (1, 2):
            assert dice(back == k, original == k) >= threshold


def test_real_anisotropic_spleen_round_trip(require_data):
    fixtures = require_data("fixtures", "spleen_ct.nii.gz", "spleen_ct_label.nii.gz")
    image_path, label_path = fixtures / "spleen_ct.nii.gz", fixtures / "spleen_ct_label.nii.gz"
    original_img = nib.load(str(label_path))
    original = np.asanyarray(original_img.dataobj)
    # (spacing, Dice threshold): 5 mm slices resampled to 2 mm; the Synapse grid also coarsens in-plane
    for spacing, threshold in (((0.8, 0.8, 2.0), 0.99), ((1.5, 1.5, 2.0), 0.98)):
        cfg = PreprocessConfig(spacing=spacing, normalization="ct", ct_window=(-175, 250), labels=[0, 1])
        tensor, restore = load_for_inference(cfg, image_path)
        pre = preprocess_transforms(cfg)({"image": str(image_path), "label": str(label_path)})["label"][0]
        assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
        back = restore(pre)
        assert back.shape == original.shape == (164, 166, 26)
        assert np.array_equal(restore.affine, original_img.affine)
        assert dice(back, original) > threshold
