"""load_dataset: the three layouts, the presets, and DatasetSpec's contract."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medcontext.data import (
    PRESETS,
    CaseRecord,
    DatasetError,
    DatasetSpec,
    load_dataset,
    split_for_spec,
    validate_dataset,
)


# ---------------------------------------------------------------------------------------- MSD


def test_msd_layout_from_phantom(phantom_dir):
    spec = load_dataset(phantom_dir)
    assert spec.preset == "msd" and spec.layout == "msd"
    assert spec.case_ids == [f"phantom_{i:03d}" for i in range(6)]
    assert [c.case_id for c in spec.unlabeled] == ["phantom_006"]
    assert spec.unlabeled[0].label is None
    assert spec.channel_names == ["MRI"] and spec.modality == "MRI" and spec.num_channels == 1
    assert spec.labels[0] == "background" and spec.labels[6] == "right kidney" and spec.num_outputs == 8
    assert spec.eval_classes == list(range(1, 8))
    assert spec.eval_class_names[0] == "spine"
    assert all(c.images[0].is_file() and c.label.is_file() for c in spec.cases)


def test_msd_dataset_json_path_is_accepted(phantom_dir):
    assert load_dataset(phantom_dir / "dataset.json").case_ids == load_dataset(phantom_dir).case_ids


def test_spec_dict_round_trip_is_json(phantom_dir):
    spec = load_dataset(phantom_dir)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["cases"][0]["images"] == ["imagesTr/phantom_000.nii.gz"]  # relative to the root
    back = DatasetSpec.from_dict(data)
    assert back.to_dict() == spec.to_dict()
    assert back.cases[0].images[0] == spec.cases[0].images[0]
    assert back.labels == spec.labels and isinstance(next(iter(back.labels)), int)


def test_msd_4d_multichannel_and_ct(tmp_path, helpers):
    root = helpers.write_msd(tmp_path / "Task99_Two", channels=2, modality={"0": "T2", "1": "ADC"})
    spec = load_dataset(root)
    assert spec.channel_names == ["T2", "ADC"] and spec.num_channels == 2 and spec.modality == "MRI"
    summary = validate_dataset(spec, progress=False)
    assert all(c.channels == 2 for c in summary.cases)
    ct = helpers.write_msd(tmp_path / "Task98_Ct", modality={"0": "CT"})
    spec = load_dataset(ct)
    assert spec.modality == "CT" and spec.ct_window == (-175.0, 250.0)
    assert load_dataset(ct, ct_window="paper").ct_window == (-1000.0, 1000.0)
    assert load_dataset(ct, ct_window=(-100, 200)).ct_window == (-100.0, 200.0)


def test_msd_task01_is_read_as_brats17_regions(tmp_path, helpers):
    labels = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
    modality = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    root = helpers.write_msd(tmp_path / "Task01_BrainTumour", channels=4, modality=modality, labels=labels)
    spec = load_dataset(root)
    assert spec.preset == "brats17" and spec.output_mode == "sigmoid"
    assert spec.regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert spec.num_outputs == 3 and spec.eval_classes == [0, 1, 2] and spec.eval_class_names == ["WT", "TC", "ET"]
    assert load_dataset(root, preset="msd").output_mode == "softmax"  # explicit msd keeps the plain labels


def test_nnunet_v2_dataset_json(tmp_path, helpers):
    root = tmp_path / "Dataset001_X"
    for i in range(2):
        image, label = helpers.blob_case(seed=i)
        for c in range(2):
            helpers.write_nifti(root / "imagesTr" / f"x_{i:03d}_{c:04d}.nii.gz", image + c)
        helpers.write_nifti(root / "labelsTr" / f"x_{i:03d}.nii.gz", label)
    meta = {"channel_names": {"0": "CT", "1": "CT"}, "labels": {"background": 0, "a": 1, "b": 2},
            "numTraining": 2, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = load_dataset(root)
    assert spec.layout == "nnunet" and spec.case_ids == ["x_000", "x_001"]
    assert spec.labels == {0: "background", 1: "a", 2: "b"} and spec.modality == "CT"
    assert [p.name for p in spec.cases[0].images] == ["x_000_0000.nii.gz", "x_000_0001.nii.gz"]


def test_msd_missing_files_are_all_named(tmp_path, helpers):
    root = helpers.write_msd(tmp_path / "ds", n=3)
    (root / "imagesTr" / "case_001.nii.gz").unlink()
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset(root)
    msg = str(err.value)
    assert "case case_001: image file" in msg and "case_001.nii.gz does not exist" in msg
    assert "case case_002: label file" in msg and len(err.value.problems) == 2


def test_msd_bad_json(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset.json is not valid JSON"):
        load_dataset(root)
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "training": []}))
    with pytest.raises(DatasetError, match="missing key 'labels'"):
        load_dataset(root)


# ----------------------------------------------------------------------------------- datalist


def _datalist_tree(tmp_path, helpers):
    data = tmp_path / "data"
    for i in range(4):
        image, label = helpers.blob_case(seed=i)
        helpers.write_nifti(data / "imgs" / f"s{i}_t1.nii.gz", image)
        helpers.write_nifti(data / "imgs" / f"s{i}_t2.nii.gz", image * 2)
        helpers.write_nifti(data / "segs" / f"s{i}.nii.gz", label)
    helpers.write_nifti(data / "imgs" / "u_t1.nii.gz", image)
    helpers.write_nifti(data / "imgs" / "u_t2.nii.gz", image)

    def entry(i):
        return {"image": [f"imgs/s{i}_t1.nii.gz", f"imgs/s{i}_t2.nii.gz"], "label": f"segs/s{i}.nii.gz", "case_id": f"s{i}"}

    return data, {
        "training": [entry(0), entry(1), entry(2)],
        "validation": [entry(3)],
        "test": [{"image": ["imgs/u_t1.nii.gz", "imgs/u_t2.nii.gz"], "case_id": "u"}],
    }


def test_datalist_next_to_data(tmp_path, helpers):
    data, dl = _datalist_tree(tmp_path, helpers)
    (data / "list.json").write_text(json.dumps(dl))
    spec = load_dataset(data / "list.json")
    assert spec.layout == "datalist" and spec.preset == "generic"
    assert spec.case_ids == ["s0", "s1", "s2", "s3"] and [c.case_id for c in spec.unlabeled] == ["u"]
    assert spec.official_train == ["s0", "s1", "s2"] and spec.official_test == ["s3"]
    assert spec.num_channels == 2 and spec.channel_names == ["channel0", "channel1"]
    # no "labels" key: read from the label files
    assert spec.labels == {0: "background", 1: "label1", 2: "label2"}
    validate_dataset(spec, progress=False)


def test_datalist_elsewhere_with_base_dir_and_labels(tmp_path, helpers):
    data, dl = _datalist_tree(tmp_path, helpers)
    dl["labels"] = {"0": "background", "1": "one", "2": "two"}
    dl["modality"] = {"0": "T1", "1": "T2"}
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "fold0.json").write_text(json.dumps(dl))
    spec = load_dataset(data, datalist=lists / "fold0.json")
    assert spec.root == data and spec.labels[2] == "two" and spec.channel_names == ["T1", "T2"]
    assert spec.cases[0].images[0] == data / "imgs" / "s0_t1.nii.gz"
    dl["training"][0]["label"] = "segs/nope.nii.gz"
    (lists / "fold0.json").write_text(json.dumps(dl))
    with pytest.raises(DatasetError, match=r"case s0: label file .*segs/nope.nii.gz does not exist"):
        load_dataset(data, datalist=lists / "fold0.json")


def test_datalist_without_training_key(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"validation": []}))
    with pytest.raises(DatasetError, match="missing key 'training'"):
        load_dataset(tmp_path / "x.json")


# ------------------------------------------------------------------------------------ folders


def test_folders_with_nnunet_channel_suffixes(tmp_path, helpers):
    root = tmp_path / "ds"
    for i in range(3):
        image, label = helpers.blob_case(seed=i)
        for c in range(3):
            helpers.write_nifti(root / "images" / f"pt_{i:02d}_{c:04d}.nii.gz", image + c)
        helpers.write_nifti(root / "labels" / f"pt_{i:02d}.nii.gz", label)
    helpers.write_nifti(root / "imagesTs" / "pt_99_0000.nii.gz", image)
    helpers.write_nifti(root / "imagesTs" / "pt_99_0001.nii.gz", image)
    helpers.write_nifti(root / "imagesTs" / "pt_99_0002.nii.gz", image)
    (root / "images" / "._pt_00_0000.nii.gz").write_bytes(b"macOS junk")  # ignored
    spec = load_dataset(root)
    assert spec.layout == "folders" and spec.case_ids == ["pt_00", "pt_01", "pt_02"]
    assert spec.num_channels == 3 and [p.name[-12:] for p in spec.cases[1].images] == [
        "_0000.nii.gz", "_0001.nii.gz", "_0002.nii.gz"]
    assert [c.case_id for c in spec.unlabeled] == ["pt_99"]
    summary = validate_dataset(spec, progress=False)
    assert len(summary.cases) == 4


def test_folders_plain_ids_and_btcv_numbering(tmp_path, helpers):
    root = tmp_path / "btcv"
    for n in (1, 2, 3):
        image, label = helpers.blob_case(seed=n)
        helpers.write_nifti(root / "img" / f"img{n:04d}.nii.gz", image)
        helpers.write_nifti(root / "label" / f"label{n:04d}.nii", label)
    spec = load_dataset(root)
    assert spec.case_ids == ["img0001", "img0002", "img0003"]
    assert spec.cases[1].label.name == "label0002.nii"


def test_folders_four_digit_ids_are_not_channels(tmp_path, helpers):
    root = tmp_path / "ds"
    image, label = helpers.blob_case()
    for n in (1, 2):
        helpers.write_nifti(root / "images" / f"case_{n:04d}.nii.gz", image)
        helpers.write_nifti(root / "labels" / f"case_{n:04d}.nii.gz", label)
    helpers.write_nifti(root / "imagesTs" / "case_0100.nii.gz", image)
    spec = load_dataset(root)
    assert spec.case_ids == ["case_0001", "case_0002"] and spec.num_channels == 1
    assert [c.case_id for c in spec.unlabeled] == ["case_0100"]


def test_folders_mismatch_names_every_file(tmp_path, helpers):
    root = tmp_path / "ds"
    image, label = helpers.blob_case()
    helpers.write_nifti(root / "images" / "a.nii.gz", image)
    helpers.write_nifti(root / "images" / "b.nii.gz", image)
    helpers.write_nifti(root / "labels" / "a.nii.gz", label)
    helpers.write_nifti(root / "labels" / "zz.nii.gz", label)
    with pytest.raises(DatasetError) as err:
        load_dataset(root)
    msg = str(err.value)
    assert "case b: no label file" in msg and "labels/b.nii.gz" in msg
    assert "label " in msg and "zz.nii.gz: no image for case zz" in msg


def test_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="no labels folder"):
        load_dataset(tmp_path)
    (tmp_path / "images").rmdir()
    with pytest.raises(DatasetError, match="no dataset found"):
        load_dataset(tmp_path)


def test_unknown_preset_suggests():
    with pytest.raises(DatasetError, match="did you mean 'synapse'"):
        load_dataset(".", preset="synapce")


def test_preset_msd_needs_dataset_json(tmp_path, helpers):
    root = tmp_path / "ds"
    image, label = helpers.blob_case()
    helpers.write_nifti(root / "images" / "a.nii.gz", image)
    helpers.write_nifti(root / "labels" / "a.nii.gz", label)
    with pytest.raises(DatasetError, match="preset 'msd' needs a dataset.json"):
        load_dataset(root, preset="msd")


# ------------------------------------------------------------------------------------ presets


def _btcv(tmp_path, helpers, prefix="img"):
    """The 30 BTCV training ids (0001-0010, 0021-0040) as tiny files."""
    root = tmp_path / "btcv"
    tiny = np.zeros((4, 4, 4), np.float32)
    for k in [*range(1, 11), *range(21, 41)]:
        helpers.write_nifti(root / "imagesTr" / f"{prefix}{k:04d}.nii.gz", tiny)
        helpers.write_nifti(root / "labelsTr" / f"{prefix}{k:04d}.nii.gz", tiny.astype(np.uint8))
    return root


def test_synapse_preset_follows_spec_section5(tmp_path, helpers):
    spec = load_dataset(_btcv(tmp_path, helpers), preset="synapse")
    assert spec.modality == "CT" and spec.channel_names == ["CT"]
    assert len(spec.labels) == 14 and spec.labels[11] == "pancreas" and spec.num_outputs == 14
    assert spec.eval_classes == [1, 2, 3, 4, 6, 7, 8, 11]
    assert spec.eval_class_names == ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach",
                                     "aorta", "pancreas"]
    assert spec.official_train == [f"img{n:04d}" for n in
                                   (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)]
    assert spec.official_test == [f"img{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)]
    assert spec.few_shot == ["img0006", "img0007", "img0009", "img0010", "img0021"]
    assert spec.ct_window == (-175.0, 250.0) and spec.target_spacing == (1.5, 1.5, 2.0)
    assert spec.default_roi == (96, 96, 96)
    assert load_dataset(tmp_path / "btcv", preset="synapse", ct_window="paper").ct_window == (-1000.0, 1000.0)

    split = split_for_spec(spec)
    assert split.test == sorted(spec.official_test) and split.train == sorted(spec.official_train)
    few = split_for_spec(spec, train_case_ids=spec.few_shot, val_cases=2, seed=1)
    assert few.train == spec.few_shot and len(few.val) == 2 and not set(few.val) & set(spec.official_test)


def test_synapse_official_ids_map_by_number(tmp_path, helpers):
    spec = load_dataset(_btcv(tmp_path, helpers, prefix="case"), preset="synapse")
    assert spec.official_test[0] == "case0001" and spec.few_shot[0] == "case0006"


def test_acdc_and_brats21_presets(tmp_path, helpers):
    root = helpers.write_msd(tmp_path / "acdc", labels={"0": "bg", "1": "x", "2": "y", "3": "z"})
    with pytest.raises(DatasetError, match="'case_000' has no match.*or to 'none'"):
        load_dataset(root, preset="acdc")  # the preset groups by patient: ids without one are refused
    acdc = load_dataset(root, preset="acdc", group_by="none")
    assert acdc.groups is None
    assert acdc.labels == {0: "background", 1: "RV", 2: "MYO", 3: "LV"} and acdc.eval_class_names == ["RV", "MYO", "LV"]
    assert acdc.modality == "MRI" and acdc.normalization == "zscore"
    with pytest.raises(DatasetError, match="preset 'brats21' expects 4 channels"):
        load_dataset(root, preset="brats21")


def test_brats21_subject_folders(tmp_path, helpers):
    root = tmp_path / "BraTS2021"
    for sid in ("BraTS2021_00000", "BraTS2021_00002"):
        image, label = helpers.blob_case(labels=(1, 4))
        label[0, 0, 0] = 2
        for k, suffix in enumerate(("t1", "t1ce", "t2", "flair")):
            helpers.write_nifti(root / sid / f"{sid}_{suffix}.nii.gz", image + k)
        helpers.write_nifti(root / sid / f"{sid}_seg.nii.gz", label)
    spec = load_dataset(root, preset="brats21")
    assert spec.layout == "brats_subjects" and spec.case_ids == ["BraTS2021_00000", "BraTS2021_00002"]
    assert [p.name.split("_")[-1] for p in spec.cases[0].images] == ["t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz",
                                                                      "flair.nii.gz"]
    assert spec.regions == {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]} and spec.num_outputs == 3
    assert spec.channel_names == ["T1", "T1Gd", "T2", "FLAIR"] and spec.crop_foreground
    validate_dataset(spec, progress=False)
    (root / "BraTS2021_00002" / "BraTS2021_00002_t2.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case BraTS2021_00002: missing BraTS2021_00002_t2.nii.gz"):
        load_dataset(root, preset="brats21")


def test_presets_are_self_consistent():
    assert {"msd", "synapse", "acdc", "brats21", "brats17"} <= set(PRESETS)
    assert len(PRESETS["synapse"].official_train) == 18 and len(PRESETS["synapse"].official_test) == 12


# ----------------------------------------------------------------------------- DatasetSpec


def test_spec_rejects_inconsistent_definitions(tmp_path):
    case = CaseRecord("case_a", [tmp_path / "a.nii.gz"], tmp_path / "a_seg.nii.gz")
    with pytest.raises(DatasetError, match="consecutive label values"):
        DatasetSpec(root=tmp_path, name="x", preset="generic", cases=[case], labels={0: "bg", 1: "a", 4: "b"})
    with pytest.raises(DatasetError, match="duplicate case ids"):
        DatasetSpec(root=tmp_path, name="x", preset="generic", cases=[case, case])
    with pytest.raises(DatasetError, match="region 'WT' names label values"):
        DatasetSpec(root=tmp_path, name="x", preset="generic", cases=[case], labels={0: "bg", 1: "a"},
                    output_mode="sigmoid", regions={"WT": [1, 2]}, eval_classes=[0], eval_class_names=["WT"])
    spec = DatasetSpec(root=tmp_path, name="x", preset="generic", cases=[case], labels={0: "bg", 1: "a"},
                       eval_classes=[1], eval_class_names=["a"])
    with pytest.raises(DatasetError, match="no case 'case_b'; did you mean case_a"):
        spec.get_case("case_b")
    assert spec.select(["case_a"])[0] is case


def test_real_hippocampus_reads_as_msd(require_data):
    spec = load_dataset(require_data("Task04_Hippocampus", "dataset.json"))
    assert len(spec.cases) == 200 and spec.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert spec.modality == "MRI" and spec.num_outputs == 3 and spec.case_ids[0] == "hippocampus_001"
