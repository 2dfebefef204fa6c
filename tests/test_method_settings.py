"""The method's settings have one home: a variant added there reaches every reader.

Readers: the MedContext wrapper, the engine's config checks, the planner's cost, the nnU-Net
trainer names and command, the CLI help and the study report's labels.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from medcontext.method import MedContext, settings
from medcontext.method.settings import DEFAULTS, VARIANTS, Variant, check_choice, get_variant, register_variant

TEST_VARIANT = Variant("two_views_test", masked_pass=True, msl=True, cl=False, teacher=False,
                       summary="a variant only the tests know", nnunet_token="twoViewsTest")


@pytest.fixture
def test_variant():
    """``two_views_test`` registered (one entry) for one test, removed afterwards."""
    register_variant(TEST_VARIANT)
    yield TEST_VARIANT
    VARIANTS.pop(TEST_VARIANT.name)


def test_a_registered_variant_passes_the_config_checks(test_variant):
    from medcontext.engine import ConfigError, load_config

    cfg = load_config(None, ["method.variant=two_views_test", "train.steps=2"])
    assert cfg.method.variant == "two_views_test"
    with pytest.raises(ConfigError, match="eval.use must be student, or teacher"):
        load_config(None, ["method.variant=two_views_test", "eval.use=teacher"])


def test_an_unregistered_variant_is_refused_by_the_config_checks():
    from medcontext.engine import ConfigError, load_config

    with pytest.raises(ConfigError, match="method.variant must be .*got 'two_views_test'"):
        load_config(None, ["method.variant=two_views_test"])


def test_a_registered_variant_has_an_nnunet_trainer_name_and_command_choice(test_variant):
    from medcontext.integrations.nnunet.command import add_parser
    from medcontext.integrations.nnunet.settings import MedContextSettings, parse_trainer_name, trainer_name

    chosen = MedContextSettings(variant="two_views_test", mask_ratio=0.6)
    name = trainer_name(chosen)
    assert name == "nnUNetTrainerMedContext_twoViewsTest_ratio60"
    assert parse_trainer_name(name) == chosen
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"), argparse.HelpFormatter)
    args = parser.parse_args(["nnunet", "trainer-name", "--variant", "two_views_test"])
    assert args.variant == "two_views_test" and args.mask_ratio == DEFAULTS.mask_ratio


def test_a_registered_variant_has_a_planner_cost_a_cli_help_line_and_a_study_label(test_variant):
    from medcontext.cli import build_parser
    from medcontext.engine.planning.training_plan import variant_cost
    from medcontext.study.comparison_report import _method_label

    assert variant_cost("two_views_test") == (6, 2, False)  # two student passes of 1 + 2 units, no teacher
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "two_views_test" in " ".join(help_text.split())
    # the ratio is one of its settings, the momentum and beta are not (no teacher, no consistency term)
    assert _method_label("two_views_test", 0.6, 0.99, 1.0) == "two_views_test (ratio 0.6)"
    assert _method_label("medcontext", 0.6, 0.99, 1.0) == "medcontext (ratio 0.6, momentum 0.99, beta 1)"


def test_a_registered_variant_trains_in_the_medcontext_wrapper(test_variant):
    torch.manual_seed(0)
    network = nn.Conv3d(1, 2, 3, padding=1)
    mc = MedContext(network, variant="two_views_test", mask_space="input", mask_cell=4, seed=0)
    images, labels = torch.randn(2, 1, 8, 8, 8), torch.randint(0, 2, (2, 1, 8, 8, 8))
    out = mc.losses(images, labels)
    assert mc.teacher is None and mc.masker is not None
    assert out.msl.item() > 0 and out.cl.item() == 0


def test_a_taken_name_or_token_is_refused():
    with pytest.raises(ValueError, match="exists already"):
        register_variant(VARIANTS["baseline"])
    clash = Variant("another", masked_pass=False, msl=False, cl=False, teacher=False, summary="", nnunet_token="noTeacher")
    with pytest.raises(ValueError, match="token 'noTeacher' is taken"):
        register_variant(clash)
    assert "another" not in VARIANTS


def test_inconsistent_variants_cannot_be_written():
    with pytest.raises(ValueError, match="need the masked pass"):
        Variant("x", masked_pass=False, msl=True, cl=False, teacher=False, summary="", nnunet_token="")
    with pytest.raises(ValueError, match="consistency term needs the teacher"):
        Variant("x", masked_pass=True, msl=True, cl=True, teacher=False, summary="", nnunet_token="")


def test_the_one_validator_suggests_the_closest_value():
    with pytest.raises(ValueError, match=r"variant must be one of .*got 'medcontxt'. Did you mean 'medcontext'\?"):
        get_variant("medcontxt")
    with pytest.raises(ValueError, match=r"^trainer name X: mask_mode must be one of 'exact', 'bernoulli', got 'exakt'"):
        check_choice("mask_mode", "exakt", settings.MASK_MODES, source="trainer name X")
    assert check_choice("mask_mode", "exact", settings.MASK_MODES) == "exact"


def test_the_defaults_are_the_papers_and_every_reader_uses_them():
    from medcontext.engine.config import MethodConfig
    from medcontext.integrations.nnunet.settings import MedContextSettings

    assert (DEFAULTS.variant, DEFAULTS.mask_ratio, DEFAULTS.beta, DEFAULTS.momentum) == ("medcontext", 0.4, 0.5, 0.996)
    method = MethodConfig()
    nnunet = MedContextSettings()
    wrapper = MedContext(nn.Conv3d(1, 2, 3, padding=1), mask_space="input", total_steps=10)
    for name in ("variant", "mask_ratio", "beta", "momentum"):
        assert getattr(method, name) == getattr(nnunet, name) == getattr(DEFAULTS, name), name
    assert (wrapper.variant, wrapper.mask_ratio, wrapper.beta, wrapper.base_momentum) == ("medcontext", 0.4, 0.5, 0.996)


def _forward_counter(module: nn.Module) -> dict:
    calls = {"n": 0}
    module.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    return calls


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_cost_units_count_the_passes_a_step_runs(name):
    """Student forwards x (1 + 2 for the backward) + teacher forwards, counted on a real step."""
    torch.manual_seed(0)
    variant = VARIANTS[name]
    mc = MedContext(nn.Conv3d(1, 2, 3, padding=1), variant=name, mask_space="input", mask_cell=4,
                    student_passes="separate", total_steps=4, seed=0)
    student = _forward_counter(mc.network)
    teacher = _forward_counter(mc.teacher) if mc.teacher is not None else {"n": 0}
    # a semi-supervised variant also takes unlabelled crops (one per labelled crop) and the step
    extra = {"unlabeled": torch.randn(2, 1, 8, 8, 8), "step": 3} if variant.unlabeled else {}
    out = mc.losses(torch.randn(2, 1, 8, 8, 8), torch.randint(0, 2, (2, 1, 8, 8, 8)), **extra)
    assert student["n"] == variant.student_passes and teacher["n"] == variant.teacher_forwards
    assert variant.cost_units == 3 * student["n"] + teacher["n"]
    assert [t for t in ("msl", "cl") if getattr(out, t).item() > 0] == [t for t in variant.loss_terms if t != "sup"]


def test_the_paper_variants_cost_7_and_3_units():
    assert (VARIANTS["medcontext"].cost_units, VARIANTS["baseline"].cost_units) == (7, 3)


def test_the_settings_module_imports_no_torch():
    path = Path(settings.__file__)
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert imported <= {"__future__", "difflib", "dataclasses", "typing"}, imported
    # and it runs on its own, with torch made unimportable
    script = (f"import sys, importlib.util; sys.modules['torch'] = None; "
              f"spec = importlib.util.spec_from_file_location('s', {str(path)!r}); m = importlib.util.module_from_spec(spec); "
              f"sys.modules['s'] = m; spec.loader.exec_module(m); print(m.VARIANTS['medcontext'].cost_units)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "7"


def test_the_variant_table_of_docs_method_md_is_the_settings_table():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].startswith("`") and cells[0].strip("`") in VARIANTS:
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(VARIANTS), "docs/method.md's variant table lists other variants than VARIANTS"
    for name, cells in rows.items():
        variant = VARIANTS[name]
        assert int(cells[5]) == variant.cost_units, name
        assert (cells[1] == "yes") == variant.masked_pass and (cells[2] == "yes") == variant.msl, name
        assert (cells[3] == "yes") == variant.cl and (cells[4] != "no") == variant.teacher, name
        assert (cells[6].strip("`") if variant.nnunet_token else "") == variant.nnunet_token, name
