"""generate_phantom: deterministic, fast, valid MSD layout, look-alike organs told apart by place."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medcontext.data import (
    LOOKALIKE_PAIRS,
    PHANTOM_STRUCTURES,
    generate_phantom,
    generate_phantom_images,
    load_dataset,
    validate_dataset,
)
from medcontext.data.unlabeled import read_unlabeled_images


def _digests(root):
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.nii.gz"))}


def test_bit_deterministic_and_seeded(tmp_path):
    a = generate_phantom(tmp_path / "a", num_cases=3, shape=(20, 20, 16), seed=1)
    b = generate_phantom(tmp_path / "b", num_cases=3, shape=(20, 20, 16), seed=1)
    c = generate_phantom(tmp_path / "c", num_cases=3, shape=(20, 20, 16), seed=2)
    assert _digests(a) == _digests(b)
    assert (a / "dataset.json").read_text() == (b / "dataset.json").read_text()
    assert all(_digests(a)[k] != _digests(c)[k] for k in _digests(a))
    # cases are seeded one by one: asking for more cases does not change the first ones
    d = generate_phantom(tmp_path / "d", num_cases=4, shape=(20, 20, 16), seed=1)
    assert {k: v for k, v in _digests(d).items() if "003" not in k} == _digests(a)


def test_phantom_images_are_images_only_and_the_generators_later_cases(tmp_path):
    """The unlabelled phantoms (the demo's --semi arm): a flat folder of images, no label written, each
    image that of generate_phantom's case of the same index (other cases than its labelled ones)."""
    paths = generate_phantom_images(tmp_path / "unlabeled", 2, shape=(20, 20, 16), seed=1, first_case=3)
    assert [p.name for p in paths] == ["phantom_003.nii.gz", "phantom_004.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "unlabeled").rglob("*")) == [p.name for p in paths]  # nothing else
    full = generate_phantom(tmp_path / "full", num_cases=3, shape=(20, 20, 16), seed=1, num_test=2)
    assert {p.name: _digests(p.parent)[p.name] for p in paths} == _digests(full / "imagesTs")
    labelled = {k.split("/")[-1]: v for k, v in _digests(full).items() if k.startswith("imagesTr")}
    assert not set(labelled) & {p.name for p in paths}
    assert not set(labelled.values()) & set(_digests(tmp_path / "unlabeled").values())
    found = read_unlabeled_images(tmp_path / "unlabeled")
    assert [c.case_id for c in found.cases] == ["phantom_003", "phantom_004"] and all(c.label is None for c in found.cases)
    with pytest.raises(ValueError, match="num_cases must be >= 1"):
        generate_phantom_images(tmp_path / "none", 0)


@pytest.fixture(scope="module")
def default_phantom(tmp_path_factory):
    return generate_phantom(tmp_path_factory.mktemp("default"), num_test=2)


def test_default_size_is_valid(default_phantom):
    root = default_phantom
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "MRI"} and meta["numTraining"] == 12 and meta["numTest"] == 2
    spec = load_dataset(root)
    assert len(spec.cases) == 12 and len(spec.unlabeled) == 2 and spec.num_outputs == 8
    summary = validate_dataset(spec, progress=False)
    assert all(c.shape == (48, 48, 48) and c.spacing == (1.0, 1.0, 1.0) and c.orientation == "RAS" for c in summary.cases)
    assert all(set(c.label_voxels) == set(range(8)) for c in summary.cases if c.labelled)  # every structure, every case
    img = nib.load(str(spec.cases[0].images[0]))
    assert img.get_data_dtype() == np.float32 and np.array_equal(img.affine, np.eye(4))


def test_layout_and_lookalike_intensities(default_phantom):
    spec = load_dataset(default_phantom)
    names = {s.name: s.label for s in PHANTOM_STRUCTURES}
    means: dict[int, list[float]] = {k: [] for k in range(1, 8)}
    for case in spec.cases:
        image = nib.load(str(case.images[0])).get_fdata()
        label = np.asanyarray(nib.load(str(case.label)).dataobj)
        com = {k: ndimage.center_of_mass(label == k) for k in range(1, 8)}
        x = {name: com[k][0] for name, k in names.items()}  # axis 0 points to the subject's right
        assert x["left kidney"] < x["spine"] < x["right kidney"]
        assert x["spleen"] < x["spine"] < x["liver"]
        assert x["aorta"] < x["inferior vena cava"]
        assert com[names["spine"]][1] < com[names["aorta"]][1]  # the aorta lies in front of the spine
        for k in range(1, 8):  # interior voxels: the blur at borders depends on the neighbours
            means[k].append(float(image[ndimage.binary_erosion(label == k)].mean()))
    avg = {k: np.mean(v) for k, v in means.items()}
    for a, b in LOOKALIKE_PAIRS:
        assert avg[a] == pytest.approx(avg[b], rel=0.03), (a, b)  # same intensity distribution
    assert abs(avg[names["liver"]] - avg[names["right kidney"]]) > 0.15 * avg[names["liver"]]
    assert abs(avg[names["aorta"]] - avg[names["right kidney"]]) > 0.1 * avg[names["aorta"]]


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="shape must be three sizes >= 16"):
        generate_phantom(tmp_path, num_cases=1, shape=(8, 8, 8))
    with pytest.raises(ValueError, match="num_cases must be >= 1"):
        generate_phantom(tmp_path, num_cases=0)
