"""Unlabelled volumes: sources, the rules that keep validation/test patients out, checks, crops."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medcontext.data import DatasetError, PreprocessConfig, Split, load_dataset, make_split
from medcontext.data.unlabeled import (
    UnlabeledSet,
    check_unlabeled_images,
    make_unlabeled_dataset,
    parse_unlabeled_sources,
    read_unlabeled_images,
    select_unlabeled,
)

PATIENT = r"regex:(patient\d+)"


def _write_patients(helpers, root: Path, patients: int = 8, frames=(1, 12), shape=(12, 12, 12)) -> Path:
    """An ACDC-like MSD dataset: two frames per patient, case ids ``p_patientNNN_frameFF``."""
    training = []
    for p in range(1, patients + 1):
        for f in frames:
            image, label = helpers.blob_case(shape, seed=p * 100 + f)
            name = f"p_patient{p:03d}_frame{f:02d}.nii.gz"
            helpers.write_nifti(root / "imagesTr" / name, image)
            helpers.write_nifti(root / "labelsTr" / name, label)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "patients", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a", "2": "b"},
            "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _split(spec, seed: int = 0) -> Split:
    return make_split(spec.case_ids, train_cases=2, val_cases=2, test_cases=2, seed=seed, groups=spec.groups)


def _patients_of(split: Split, ids) -> set[str]:
    return {split.groups[c] for c in ids}


def test_pool_is_every_patient_left_over_and_shares_no_patient_with_the_split(helpers, tmp_path):
    spec = load_dataset(_write_patients(helpers, tmp_path / "ds"), group_by=PATIENT)
    split = _split(spec)
    with_pool, chosen = select_unlabeled(spec, split, "pool")
    used = _patients_of(split, [*split.train, *split.val, *split.test])
    assert len(used) == 2 + 1 + 1  # 2 labelled patients, val and test one patient (2 frames) each
    expected = sorted(c for c in spec.case_ids if spec.groups[c] not in used)
    assert with_pool.unlabeled == chosen.case_ids == expected and len(expected) == 2 * (8 - 4)
    # a labelled patient's other frame is not unlabelled: a patient is on one side only
    other_frames = [c for c in spec.case_ids if spec.groups[c] in _patients_of(split, split.train) and c not in split.train]
    assert other_frames and set(other_frames) == set(chosen.excluded["labelled training cases or cases of their groups"])
    assert all(c.label is None for c in chosen.cases)
    saved = with_pool.to_dict()
    assert saved["unlabeled"] == expected and Split.from_dict(saved).unlabeled == expected
    assert "unlabeled" not in split.to_dict()  # labelled-only runs write the split as before
    assert chosen.describe().startswith(f"{len(expected)} unlabelled volume(s) ({len(expected)} from pool)")
    assert UnlabeledSet.from_dict(json.loads(json.dumps(chosen.to_dict()))).case_ids == expected


def test_a_split_refuses_an_unlabelled_case_of_a_validation_patient():
    groups = {"a1": "a", "a2": "a", "b1": "b", "c1": "c"}
    with pytest.raises(ValueError, match="group 'a' is in both val and unlabeled"):
        Split(train=["b1"], val=["a1"], test=["c1"], groups=groups, unlabeled=["a2"])
    with pytest.raises(ValueError, match="in both train and unlabeled"):
        Split(train=["b1"], val=["a1", "a2"], unlabeled=["b1"])


def test_pool_labels_are_never_read_they_may_be_deleted(helpers, tmp_path):
    root = _write_patients(helpers, tmp_path / "ds")
    spec = load_dataset(root, group_by=PATIENT)
    split = _split(spec)
    pool = [c for c in spec.cases if c.case_id not in {*split.train, *split.val, *split.test}]
    for case in pool:
        case.label.unlink()
    with pytest.raises(DatasetError, match="label file .* does not exist"):
        load_dataset(root, group_by=PATIENT)
    spec = load_dataset(root, group_by=PATIENT, missing_labels_ok=True)
    assert _split(spec).to_dict() == split.to_dict()  # the same split with or without the pool's labels
    _, chosen = select_unlabeled(spec, split, ["pool"])
    check_unlabeled_images(chosen.cases, spec.channel_names)
    crops = make_unlabeled_dataset(chosen.cases, PreprocessConfig.from_spec(spec), (8, 8, 8), num_workers=0)
    item = crops[0]
    assert set(item) == {"image", "case_id"} and tuple(item["image"].shape) == (1, 8, 8, 8)
    assert len(crops) == len(chosen.cases)


def test_the_labelled_dataset_as_a_folder_source_keeps_only_the_pool(helpers, tmp_path):
    root = _write_patients(helpers, tmp_path / "ds")
    spec = load_dataset(root, group_by=PATIENT)
    split = _split(spec)
    _, from_pool = select_unlabeled(spec, split, "pool")
    with_folder, from_folder = select_unlabeled(spec, split, [str(root), "pool"])
    assert from_folder.case_ids == from_pool.case_ids
    assert from_folder.counts() == {str(root.resolve()): len(from_pool.cases), "pool": 0}
    held_out = from_folder.excluded["validation/test cases or cases of their groups"]
    assert sorted(held_out) == sorted([*split.val, *split.test])
    assert len(from_folder.excluded["image files an earlier source listed"]) == len(from_pool.cases)
    assert not set(with_folder.unlabeled) & {*split.train, *split.val, *split.test}


def test_folder_sources_any_layout_labels_ignored(helpers, tmp_path):
    flat = tmp_path / "flat"
    for i in range(3):
        helpers.write_nifti(flat / f"u_{i}.nii.gz", np.ones((10, 10, 10), np.float32) * i)
    (flat / "notes.txt").write_text("not an image")
    assert [c.case_id for c in read_unlabeled_images(flat).cases] == ["u_0", "u_1", "u_2"]
    nnunet = tmp_path / "nnunet"
    for i in range(2):
        for channel in range(2):
            helpers.write_nifti(nnunet / "imagesTr" / f"s{i}_{channel:04d}.nii.gz", np.zeros((6, 6, 6), np.float32))
    helpers.write_nifti(nnunet / "imagesTs" / "t0_0000.nii.gz", np.zeros((6, 6, 6), np.float32))
    helpers.write_nifti(nnunet / "imagesTs" / "t0_0001.nii.gz", np.zeros((6, 6, 6), np.float32))
    helpers.write_nifti(nnunet / "labelsTr" / "s0.nii.gz", np.zeros((6, 6, 6), np.uint8))  # ignored
    found = read_unlabeled_images(nnunet)
    assert [(c.case_id, len(c.images), c.label) for c in found.cases] == [("s0", 2, None), ("s1", 2, None), ("t0", 2, None)]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps({"training": [{"image": "flat/u_0.nii.gz", "label": "missing.nii.gz"}],
                                  "unlabeled": ["flat/u_1.nii.gz"]}))
    assert [c.case_id for c in read_unlabeled_images(listed).cases] == ["u_0", "u_1"]
    with pytest.raises(DatasetError, match="no NIfTI images"):
        read_unlabeled_images(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_images_ts_source_and_clear_errors_for_unknown_sources(helpers, tmp_path, phantom_dir):
    spec = load_dataset(phantom_dir)
    split = make_split(spec.case_ids, train_cases=2, val_cases=1, test_cases=1, seed=0)
    _, chosen = select_unlabeled(spec, split, "imagesTs")
    assert chosen.case_ids == [c.case_id for c in spec.unlabeled] and len(chosen.cases) == 1
    without = load_dataset(helpers.write_msd(tmp_path / "msd", n=4))
    with pytest.raises(DatasetError, match="lists no images without labels"):
        select_unlabeled(without, make_split(without.case_ids, train_cases=1, val_cases=1, seed=0), "imagesTs")
    with pytest.raises(DatasetError, match="did you mean 'pool'"):
        select_unlabeled(spec, split, "poool")
    with pytest.raises(DatasetError, match="no unlabelled volume left"):
        select_unlabeled(spec, make_split(spec.case_ids, val_cases=1, test_cases=1, seed=0), "pool")
    with pytest.raises(DatasetError, match="entries must be"):
        parse_unlabeled_sources(["pool", 3])
    assert parse_unlabeled_sources(None) == [] and parse_unlabeled_sources(["pool", "pool"]) == ["pool"]


def test_a_case_id_naming_two_different_images_is_an_error(helpers, tmp_path):
    spec = load_dataset(_write_patients(helpers, tmp_path / "ds", patients=6), group_by="none")
    split = make_split(spec.case_ids, train_cases=2, val_cases=2, test_cases=2, seed=0)
    pool_case = next(c for c in spec.case_ids if c not in {*split.train, *split.val, *split.test})
    other = tmp_path / "other"
    helpers.write_nifti(other / f"{pool_case}.nii.gz", np.zeros((12, 12, 12), np.float32))
    with pytest.raises(DatasetError, match=f"unlabelled case '{pool_case}' .* has the id of another case"):
        select_unlabeled(spec, split, ["pool", str(other)])


def test_bad_unlabelled_files_get_the_data_checks_errors(helpers, tmp_path):
    folder = tmp_path / "bad"
    helpers.write_nifti(folder / "good.nii.gz", np.zeros((8, 8, 8), np.float32))
    helpers.write_nifti(folder / "two_channels.nii.gz", np.zeros((8, 8, 8, 2), np.float32))
    nan = np.zeros((8, 8, 8), np.float32)
    nan[0, 0, 0] = np.nan
    helpers.write_nifti(folder / "nan.nii.gz", nan)
    (folder / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti header")[:20])
    cases = read_unlabeled_images(folder).cases
    with pytest.raises(DatasetError) as caught:
        check_unlabeled_images(cases, ["MRI"])
    message = str(caught.value)
    assert "unlabelled volumes failed their check in 3 case(s)" in message
    assert "two_channels.nii.gz has 2 channel(s) but the dataset has 1" in message
    assert "nan.nii.gz has 1 NaN/Inf voxels" in message and "broken.nii.gz is" in message
    assert "good" not in message
    check_unlabeled_images([c for c in cases if c.case_id == "good"], ["MRI"])


def test_crops_are_uniform_padded_seeded_and_augmented_like_labelled_ones(helpers, tmp_path):
    folder = tmp_path / "u"
    ramp = np.arange(6 * 20 * 20, dtype=np.float32).reshape(20, 20, 6)
    helpers.write_nifti(folder / "ramp.nii.gz", ramp)
    cases = read_unlabeled_images(folder).cases
    cfg = PreprocessConfig(normalization="none")
    crops = make_unlabeled_dataset(cases, cfg, (8, 8, 8), num_workers=0)
    draws = []
    for seed in (1, 1, 2):
        crops.transform.set_random_state(seed=seed)
        draws.append(crops[0]["image"])
    assert tuple(draws[0].shape) == (1, 8, 8, 8) and draws[0].dtype == torch.float32
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    # depth 6 < 8: zero padding; the crop position varies over draws (no label to balance on)
    assert (draws[0] == 0).any()
    corners = set()
    for seed in range(12):
        crops.transform.set_random_state(seed=seed)
        corners.add(float(crops[0]["image"].abs().max()))
    assert len(corners) > 3
