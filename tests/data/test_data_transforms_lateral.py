"""Left/right-aware augmentation: lateral label sets never get mirrored along the L-R axis."""

from monai.transforms import RandFlipd, RandRotate90d

from medcontext.data import PreprocessConfig, generate_phantom, load_dataset, train_transforms


def _random_transforms(cfg, roi):
    return [t for t in train_transforms(cfg, roi).transforms if isinstance(t, (RandFlipd, RandRotate90d))]


def test_lateral_labels_disable_left_right_mirroring(tmp_path):
    spec = load_dataset(generate_phantom(tmp_path / "ph", num_cases=2, shape=(24, 24, 24)))
    cfg = PreprocessConfig.from_spec(spec)
    assert cfg.lateral  # the phantom has a left and a right kidney
    transforms = _random_transforms(cfg, (16, 16, 16))
    flip_axes = sorted(t.flipper.spatial_axis for t in transforms if isinstance(t, RandFlipd))
    assert flip_axes == [1, 2]
    assert not any(isinstance(t, RandRotate90d) for t in transforms)
    assert PreprocessConfig.from_dict(cfg.to_dict()).lateral


def test_non_lateral_labels_keep_all_flips():
    cfg = PreprocessConfig(labels=[0, 1, 2])
    transforms = _random_transforms(cfg, (16, 16, 16))
    assert sorted(t.flipper.spatial_axis for t in transforms if isinstance(t, RandFlipd)) == [0, 1, 2]
    assert any(isinstance(t, RandRotate90d) for t in transforms)
    # a lateral config reoriented so that left-right is the second axis spares that axis instead
    other = PreprocessConfig(labels=[0, 1], lateral=True, orientation="ARS")
    axes = sorted(t.flipper.spatial_axis for t in _random_transforms(other, (16, 16, 8)) if isinstance(t, RandFlipd))
    assert axes == [0, 2]
