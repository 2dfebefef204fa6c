"""The demo pipeline on a 2-step budget: the runs share everything but the variant, outputs exist;
``--semi`` adds its arm on images-only unlabelled phantoms, also to a finished demo, and resumes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from medcontext.demo import (
    SEMI_VARIANT,
    UNLABELED_DIR,
    VARIANTS,
    DemoBudget,
    _prepare_out,
    demo_variants,
    mean_dice_sentence,
    run_demo,
    short_run_momentum,
)
from medcontext.engine import load_config
from medcontext.engine.config import ConfigError


def test_demo_runs_both_variants_with_the_same_budget(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, quick=True, steps=2, progress=False, echo=lambda s: None)
    base, mc = (load_config(result.runs[v] / "config.yaml") for v in ("baseline", "medcontext"))
    assert base.diff(mc) == {"method.variant": ("baseline", "medcontext")}
    split = [json.loads((result.runs[v] / "split.json").read_text()) for v in ("baseline", "medcontext")]
    assert split[0] == split[1] and len(split[0]["train"]) == 2
    for name in ("overlay.png", "curves.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    table = (out / "results.md").read_text()
    assert "| liver |" in table and "baseline Dice" in table and "medcontext Dice" in table
    assert set(result.summaries) == {"baseline", "medcontext"}
    assert result.summaries["medcontext"].n_cases == len(split[0]["test"])
    # a second run reuses its own folder (old runs removed); a foreign non-empty folder is refused
    _prepare_out(out)
    assert not (out / "baseline").exists() and (out / "demo.json").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a demo folder"):
        run_demo(foreign, quick=True, steps=1, progress=False, echo=lambda s: None)


def test_short_run_momentum():
    assert short_run_momentum(300) == pytest.approx(0.95)
    assert short_run_momentum(100_000) == 0.996
    assert short_run_momentum(10) == 0.5


def _tiny_budget(monkeypatch):
    """The quick budget at test size: 6 phantoms of 32^3 (2 train, 1 val, 3 test), 2 unlabelled, 2 steps."""
    from medcontext import demo

    monkeypatch.setitem(demo.BUDGETS, "quick", demo.DemoBudget(cases=6, shape=(32, 32, 32), steps=2, val_cases=1,
                                                               eval_every=2, unlabeled_cases=2))


def _figure_texts(monkeypatch) -> dict[str, list[str]]:
    """Legend entries and panel titles of every figure the demo saves, by file name."""
    from medcontext.evaluation import figures

    texts: dict[str, list[str]] = {}
    real_save = figures.save_png

    def save_png(fig, path, **kwargs):
        legends = [leg for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if leg is not None]
        texts[Path(path).name] = [t.get_text() for leg in legends for t in leg.get_texts()] + [ax.get_title() for ax in fig.axes]
        return real_save(fig, path, **kwargs)

    monkeypatch.setattr(figures, "save_png", save_png)
    return texts


def test_semi_adds_only_its_arm_to_a_finished_demo_and_an_interrupted_semi_arm_resumes(tmp_path, monkeypatch):
    from medcontext.engine import run_folder
    from medcontext.engine.checkpoint import read_checkpoint
    from medcontext.engine.host.signals import RunInterrupted
    from medcontext.engine.training_log import read_metrics

    _tiny_budget(monkeypatch)
    out = tmp_path / "demo"
    run_demo(out, quick=True, progress=False, echo=lambda s: None)  # the default demo: two arms
    two_arms = (out / "results.md").read_text()
    assert "On mean Dice, " in two_arms and SEMI_VARIANT not in two_arms and not (out / UNLABELED_DIR).exists()
    kept = {v: (out / v / "last.pt").read_bytes() for v in VARIANTS}

    # --semi on the finished folder trains the new arm only; stopped after its first step as by Ctrl-C
    real_train = run_folder.train

    def stopped_after_one_step(cfg, run_dir, **kwargs):
        return dataclasses.replace(real_train(cfg, run_dir, stop_after=1, **kwargs), stopped_by="SIGINT", exit_code=130)

    monkeypatch.setattr(run_folder, "train", stopped_after_one_step)
    said: list[str] = []
    with pytest.raises(RunInterrupted, match=f"the {SEMI_VARIANT} run"):
        run_demo(out, quick=True, semi=True, progress=False, echo=said.append)
    assert any(s.startswith(f"adding the {SEMI_VARIANT} arm to the finished demo") for s in said)
    headings = [s.strip() for s in said if s.startswith("\n=== ")]
    assert headings[:2] == ["=== baseline: finished earlier (2 steps) ===", "=== medcontext: finished earlier (2 steps) ==="]
    assert headings[2].startswith(f"=== {SEMI_VARIANT}: 2 steps") and len(headings) == 3  # nothing evaluated
    assert read_checkpoint(out / SEMI_VARIANT / "last.pt")["step"] == 1 and not (out / "results.md").exists()

    # the same command continues the interrupted arm; the two finished runs are untouched
    monkeypatch.setattr(run_folder, "train", real_train)
    texts = _figure_texts(monkeypatch)
    said.clear()
    result = run_demo(out, quick=True, semi=True, progress=False, echo=said.append)
    assert said[0].startswith("continuing the interrupted demo")
    assert [r["step"] for r in read_metrics(out / SEMI_VARIANT / "metrics.jsonl", "train")] == [1, 2]
    assert all((out / v / "last.pt").read_bytes() == kept[v] for v in VARIANTS)

    # same seed, split, crops, steps and schedule: the configs differ in the variant and the unlabelled source only
    mc, semi = (load_config(result.runs[v] / "config.yaml") for v in ("medcontext", SEMI_VARIANT))
    assert mc.diff(semi) == {"method.variant": ("medcontext", SEMI_VARIANT),
                             "data.unlabeled": (None, str((out / UNLABELED_DIR).resolve()))}
    splits = {v: json.loads((result.runs[v] / "split.json").read_text()) for v in demo_variants(semi=True)}
    assert all(splits[v][k] == splits["baseline"][k] for v in splits for k in ("train", "val", "test"))
    assert splits[SEMI_VARIANT]["unlabeled"] == ["phantom_006", "phantom_007"]

    table = (out / "results.md").read_text()
    assert f"{SEMI_VARIANT} Dice" in table and "On mean Dice, " in table and set(result.summaries) == set(splits)
    assert f"{SEMI_VARIANT} cl_unlabeled" in texts["curves.png"] and SEMI_VARIANT in texts["overlay.png"]


def test_the_unlabelled_phantoms_are_images_only_and_no_label_of_theirs_is_in_the_demo_folder(tmp_path, monkeypatch):
    """What the semi arm may see: its source folder holds images only, of cases the labelled dataset does not
    have; no label file of those cases is written anywhere in the demo folder (so none can be read)."""
    from medcontext.data import load_dataset
    from medcontext.demo import _write_phantoms
    from medcontext.data.unlabeled import read_unlabeled_images

    budget = DemoBudget(cases=4, shape=(24, 24, 24), steps=1, val_cases=1, eval_every=1, unlabeled_cases=3)
    out = tmp_path / "demo"
    data_dir, unlabeled = _write_phantoms(out, budget, seed=0, semi=True, echo=lambda s: None)
    assert unlabeled == out / UNLABELED_DIR
    files = sorted(p.relative_to(unlabeled).as_posix() for p in unlabeled.rglob("*"))
    assert files == [f"phantom_00{i}.nii.gz" for i in (4, 5, 6)]  # the cases after the labelled ones, nothing else
    found = read_unlabeled_images(unlabeled)
    spec = load_dataset(data_dir)
    assert not {c.case_id for c in found.cases} & {c.case_id for c in spec.cases}
    assert not [p for p in out.rglob("*") if p.name.startswith(("phantom_004", "phantom_005", "phantom_006"))
                and p.parent != unlabeled]
    assert _write_phantoms(tmp_path / "plain", budget, seed=0, semi=False, echo=lambda s: None)[1] is None
    assert not (tmp_path / "plain" / UNLABELED_DIR).exists()


def test_the_demo_folder_keeps_its_runs_across_semi_and_says_why_it_starts_afresh(tmp_path):
    out = tmp_path / "demo"
    plain = {"quick": True, "seed": 0, "train_cases": 2, "steps": 40, "semi": False}
    with_semi = {**plain, "semi": True}

    def folder(marker: dict, runs, finished: bool):
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        (out / "demo.json").write_text(json.dumps(marker))
        for name in (*runs, "phantom"):
            (out / name).mkdir()
        if finished:
            (out / "results.md").write_text("done")

    def prepare(settings):
        said: list[str] = []
        return _prepare_out(out, settings, echo=said.append), " ".join(said)

    folder(plain, VARIANTS, finished=True)  # a finished default demo, then --semi: only the new arm is missing
    kept, said = prepare(with_semi)
    assert kept and f"adding the {SEMI_VARIANT} arm" in said and all((out / v).is_dir() for v in VARIANTS)
    assert not (out / "results.md").exists()  # rewritten at the end; until then the folder counts as interrupted
    folder(plain, VARIANTS[:1], finished=False)  # interrupted without --semi, continued with it
    assert prepare(with_semi)[0] and (out / VARIANTS[0]).is_dir()
    folder(with_semi, demo_variants(semi=True), finished=False)  # interrupted --semi demo continued without --semi
    kept, said = prepare(plain)
    assert kept and (out / SEMI_VARIANT).is_dir() and "neither trained nor reported" in said
    folder({k: v for k, v in plain.items() if k != "semi"}, VARIANTS, finished=False)  # a marker of before --semi
    assert prepare(plain)[0]
    for settings in (with_semi, plain):  # a finished demo: the same command trains it again, so does one without --semi
        folder(with_semi, demo_variants(semi=True), finished=True)
        kept, said = prepare(settings)
        assert not kept and "finished" in said and not any((out / v).exists() for v in demo_variants(semi=True))
    folder(with_semi, demo_variants(semi=True), finished=False)  # other settings: afresh, naming what changed
    kept, said = prepare({**with_semi, "seed": 1})
    assert not kept and "seed 0 -> 1" in said and not (out / UNLABELED_DIR).exists() and not (out / "phantom").exists()


def test_mean_dice_sentence_names_the_winner_or_the_tie():
    assert mean_dice_sentence({"baseline": 0.9661, "medcontext": 0.9442}).startswith(
        "On mean Dice, baseline won: 0.966, against medcontext 0.944")
    tie = mean_dice_sentence({"baseline": 0.9501, "medcontext": 0.9504, SEMI_VARIANT: 0.9612})
    assert tie.startswith(f"On mean Dice, {SEMI_VARIANT} won: 0.961, against baseline 0.950, medcontext 0.950")
    assert mean_dice_sentence({"baseline": 0.9501, "medcontext": 0.9504}).startswith(
        "On mean Dice, baseline and medcontext tie at 0.950")
    assert "No mean Dice for medcontext" in mean_dice_sentence({"baseline": 0.9, "medcontext": float("nan")})
