"""Prediction and evaluation of a trained run: output geometry, label values, errors.

The run is trained and the geometry predicted through the engine's API; the error, exit-code and
summary tests go through ``medcontext predict`` / ``evaluate``, whose output they check."""

from __future__ import annotations

import csv
import os
import stat

import nibabel as nib
import numpy as np
import pytest

from medcontext.cli import main
from medcontext.engine import load_config, train
from medcontext.engine.predict import failure_reason, find_input_cases, predict_run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from medcontext.data import generate_phantom

    root = tmp_path_factory.mktemp("predict")
    data = generate_phantom(root / "Phantom", num_cases=6, shape=(24, 24, 24), seed=1)
    out = root / "run"
    cfg = load_config(None, [f"data.path={data}", "method.variant=medcontext", "train.steps=3", "train.seed=0",
                             "model.name=unet3d", "model.options={size: tiny}", "model.roi=[16, 16, 16]",
                             "data.num_samples=1", "data.val_cases=1", "data.test_cases=2", "train.tensorboard=false"])
    assert train(cfg, out, progress=False, echo=lambda _: None).finished
    return data, out


def _oblique_copy(src, dst, spacing=(1.5, 0.8, 2.0)):
    """The same voxels with an LPS-flipped, anisotropic, shifted affine."""
    img = nib.load(str(src))
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [30.0, -12.5, 7.0]
    out = nib.Nifti1Image(np.asarray(img.dataobj)[:, :20, :], affine)  # also a non-cubic shape
    nib.save(out, str(dst))
    return out


def test_predict_writes_the_input_geometry_exactly(trained_run, tmp_path):
    data, run = trained_run
    inputs = tmp_path / "in"
    inputs.mkdir()
    ref = _oblique_copy(data / "imagesTr" / "phantom_000.nii.gz", inputs / "oblique.nii.gz")
    _oblique_copy(data / "imagesTr" / "phantom_001.nii.gz", inputs / "second.nii", spacing=(1.0, 1.0, 1.0))
    written = predict_run(run, inputs, tmp_path / "out", probabilities=True, use="teacher", checkpoint="last",
                          postprocess=False, echo=lambda _: None)
    assert tmp_path / "out" / "oblique.nii.gz" in written
    pred = nib.load(str(tmp_path / "out" / "oblique.nii.gz"))
    assert pred.shape == ref.shape == (24, 20, 24)
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-6)
    values = np.unique(np.asarray(pred.dataobj))
    assert np.issubdtype(pred.get_data_dtype(), np.integer) and set(values.tolist()) <= set(range(8))
    probs = nib.load(str(tmp_path / "out" / "oblique_probabilities.nii.gz"))
    assert probs.shape == (24, 20, 24, 8)
    p = np.asarray(probs.dataobj)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-3)
    np.testing.assert_array_equal(np.argmax(p, -1), np.asarray(pred.dataobj))  # labels agree with probabilities
    assert (tmp_path / "out" / "second.nii.gz").is_file()


def _components(mask: np.ndarray) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask, structure=np.ones((3, 3, 3)))[1])


def _with_an_island(logits_fn):
    """Predictor.logits plus a certain stray island: a central block of label 2 and, in a corner
    inside a background shell, 2^3 voxels of label 1 (3 training steps guarantee nothing)."""
    def logits(self, image):
        out = logits_fn(self, image).clone()
        h, w, d = out.shape[1:]
        out[:, h // 2 - 4 : h // 2 + 4, w // 2 - 4 : w // 2 + 4, d // 2 - 4 : d // 2 + 4] = 0
        out[2, h // 2 - 4 : h // 2 + 4, w // 2 - 4 : w // 2 + 4, d // 2 - 4 : d // 2 + 4] = 100
        out[:, :6, :6, :6] = 0
        out[0, :6, :6, :6] = 100
        out[1, 2:4, 2:4, 2:4] = 200
        return out
    return logits


def test_training_chooses_a_post_processing_that_evaluate_and_predict_apply(trained_run, tmp_path, capsys,
                                                                           monkeypatch):
    import json
    import shutil

    from medcontext.engine.predict import Predictor

    data, trained = trained_run
    chosen = json.loads((trained / "postprocessing.json").read_text())  # written with best.pt, on the val case
    assert chosen["version"] == 1 and chosen["chosen_on"] == "validation" and chosen["validation_cases"] == 1
    assert isinstance(chosen["foreground_largest_component"], bool)
    assert set(chosen["largest_component_labels"]) <= set(range(1, 8))
    assert chosen["validation_dice_postprocessed"]["mean"] >= chosen["validation_dice_raw"]["mean"]
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    forced = dict(chosen, foreground_largest_component=True, largest_component_labels=[])
    (run / "postprocessing.json").write_text(json.dumps(forced))
    monkeypatch.setattr(Predictor, "logits", _with_an_island(Predictor.logits))
    assert main(["evaluate", "--run", str(run), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "largest component of the whole foreground" in printed and "Dice raw" in printed
    post, raw = run / "eval" / "predictions", run / "eval" / "raw" / "predictions"
    islands = 0
    for path in sorted(post.glob("*.nii.gz")):
        final = np.asarray(nib.load(str(path)).dataobj) > 0
        before = np.asarray(nib.load(str(raw / path.name)).dataobj) > 0
        assert _components(final) <= 1 and (final <= before).all()  # only islands removed
        islands += _components(before) - _components(final)
    assert islands >= 2  # at least the corner island of each test case
    assert (run / "eval" / "raw" / "metrics.csv").is_file()
    assert "## Post-processing" in (run / "eval" / "summary.md").read_text()
    # predict applies the same decision; --no-postprocessing writes the raw masks
    case = json.loads((run / "split.json").read_text())["test"][0]
    for flag, expected in (([], post), (["--no-postprocessing"], raw)):
        out = tmp_path / f"predict{len(flag)}"
        assert main(["predict", "--run", str(run), "--input", str(data / "imagesTr" / f"{case}.nii.gz"),
                     "--output", str(out), *flag]) == 0
        np.testing.assert_array_equal(np.asarray(nib.load(str(out / f"{case}.nii.gz")).dataobj),
                                      np.asarray(nib.load(str(expected / f"{case}.nii.gz")).dataobj))


def test_predict_errors_name_the_file(trained_run, tmp_path, capsys):
    data, run = trained_run
    missing = tmp_path / "nope.nii.gz"
    assert main(["predict", "--run", str(run), "--input", str(missing), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nope.nii.gz" in err and "Traceback" not in err
    two_channels = np.stack([np.zeros((24, 24, 24), np.float32)] * 2, axis=-1)
    nib.save(nib.Nifti1Image(two_channels, np.eye(4)), str(tmp_path / "two.nii.gz"))
    assert main(["predict", "--run", str(run), "--input", str(tmp_path / "two.nii.gz"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "two.nii.gz" in err and "2 channel" in err
    assert main(["predict", "--run", str(tmp_path), "--input", str(missing), "--output", str(tmp_path / "o")]) == 2
    assert "not a medcontext run folder" in capsys.readouterr().err


def test_predict_goes_on_after_a_bad_case_and_names_it(trained_run, tmp_path, capsys, monkeypatch):
    from medcontext.engine.host import cpu_threads

    recounts = []
    original_refresh = cpu_threads.CpuShare.refresh
    monkeypatch.setattr(cpu_threads.CpuShare, "refresh", lambda self: recounts.append(1) or original_refresh(self))
    data, run = trained_run
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a_good", "c_good"):
        (inputs / f"{name}.nii.gz").write_bytes((data / "imagesTr" / "phantom_000.nii.gz").read_bytes())
    whole = (data / "imagesTr" / "phantom_001.nii.gz").read_bytes()
    (inputs / "b_truncated.nii.gz").write_bytes(whole[: len(whole) // 3])  # a copy that was cut off
    two_channels = np.stack([np.zeros((24, 24, 24), np.float32)] * 2, axis=-1)
    nib.save(nib.Nifti1Image(two_channels, np.eye(4)), str(inputs / "d_two_channels.nii.gz"))
    old = os.umask(0o022)
    try:
        code = main(["predict", "--run", str(run), "--input", str(inputs), "--output", str(tmp_path / "out")])
    finally:
        os.umask(old)
    assert code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "2 of 4 case(s) could not be predicted; the other 2 were written" in captured.err
    # the messages of `data check`: the same input checks run for every command
    assert (f"b_truncated ({inputs / 'b_truncated.nii.gz'}): DatasetError: case b_truncated: image file "
            f"{inputs / 'b_truncated.nii.gz'} is truncated or corrupt: EOFError") in captured.err
    assert (f"d_two_channels ({inputs / 'd_two_channels.nii.gz'}): DatasetError: case d_two_channels: image "
            f"{inputs / 'd_two_channels.nii.gz'} has 2 channel(s) but the dataset has 1") in captured.err
    assert "b_truncated: FAILED" in captured.out
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a_good.nii.gz", "c_good.nii.gz"]  # the case after the bad one was predicted too
    assert all(stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o644 for name in written)
    assert len(recounts) == 1 + 4  # on entering, then before every case, failed ones included


def test_failure_reason_is_the_innermost_cause():
    try:
        try:
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        except EOFError as inner:
            raise RuntimeError("applying transform <LoadImaged object>") from inner
    except RuntimeError as err:
        assert failure_reason(err) == "EOFError: Compressed file ended before the end-of-stream marker was reached"
    assert failure_reason(ValueError("first line\nsecond")) == "ValueError: first line"
    assert failure_reason(KeyError()) == "KeyError"


def test_evaluate_scores_the_test_split(trained_run, capsys):
    data, run = trained_run
    assert main(["evaluate", "--run", str(run), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(run / "eval" / "metrics.csv")))
    test_cases = {r["case_id"] for r in rows}
    import json

    assert test_cases == set(json.loads((run / "split.json").read_text())["test"]) and len(test_cases) == 2
    assert {r["class_name"] for r in rows} >= {"liver", "spleen"} and len(rows) == 2 * 7
    assert (run / "eval" / "summary.md").read_text().strip()
    assert "mean" in printed
    for case in test_cases:
        pred = nib.load(str(run / "eval" / "predictions" / f"{case}.nii.gz"))
        truth = nib.load(str(data / "labelsTr" / f"{case}.nii.gz"))
        assert pred.shape == truth.shape and np.allclose(pred.affine, truth.affine)


def test_find_input_cases_groups_channel_files(tmp_path):
    for name in ("b_0000.nii.gz", "b_0001.nii.gz", "a.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    cases = find_input_cases(tmp_path, num_channels=2)
    assert [(c.case_id, [p.name for p in c.paths]) for c in cases] == [
        ("a", ["a.nii.gz"]), ("b", ["b_0000.nii.gz", "b_0001.nii.gz"])]
    single = find_input_cases(tmp_path, num_channels=1)
    assert [c.case_id for c in single] == ["a", "b_0000", "b_0001"]
    (tmp_path / "c_0001.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="c_0001"):
        find_input_cases(tmp_path, num_channels=2)


def test_predict_and_evaluate_take_a_share_of_the_cores_like_training(trained_run, tmp_path, monkeypatch):
    """A training beside a prediction counts it: both register in the CPU-share folder per case."""
    from medcontext.engine import predict
    from medcontext.engine.host import cpu_threads

    folder = tmp_path / "cpu-share"
    monkeypatch.setattr(cpu_threads.tempfile, "gettempdir", lambda: str(folder))
    seen = []
    original = predict.Predictor.predict_case

    def spy(self, *args, **kwargs):
        seen.append(sorted(p.name for p in next(folder.iterdir()).iterdir()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(predict.Predictor, "predict_case", spy)
    data, run = trained_run
    assert main(["evaluate", "--run", str(run), "--no-progress"]) == 0
    assert main(["predict", "--run", str(run), "--input", str(data / "imagesTr"), "--output", str(tmp_path / "p")]) == 0
    assert len(seen) == 2 + 6 and all(names == [str(os.getpid())] for names in seen)
    assert not list(next(folder.iterdir()).iterdir())  # unregistered at the end
