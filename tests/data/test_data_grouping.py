"""Grouped splits: a group (e.g. a patient's two ACDC frames) never straddles two sides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medcontext.data import Split, make_split
from medcontext.data.grouping import GroupRuleError, case_groups, check_group_rule

# 12 patients with two frames each, one patient with a single frame
IDS = [f"acdc_patient{p:03d}_frame{f:02d}" for p in range(1, 13) for f in (1, 12)] + ["acdc_patient013_frame01"]
GROUPS = case_groups(IDS, r"regex:(patient\d+)")


def _sides(split: Split) -> dict[str, set[str]]:
    return {part: {GROUPS[c] for c in getattr(split, part)} for part in ("train", "val", "test")}


def test_regex_rule_takes_the_capture_group_or_the_whole_match():
    assert GROUPS["acdc_patient007_frame12"] == "patient007"
    assert case_groups(["ab12x"], r"regex:\d+") == {"ab12x": "12"}
    assert case_groups(IDS, "none") is None and case_groups(IDS, None) is None


@pytest.mark.parametrize("rule, message", [
    ("patient", "expected 'regex:PATTERN'"),
    ("regex:(", "does not compile"),
    ("column:patient", "expected 'regex:PATTERN'"),
])
def test_bad_rules_are_named(rule, message):
    with pytest.raises(GroupRuleError, match=message):
        check_group_rule(rule)


def test_a_case_without_a_match_is_an_error():
    with pytest.raises(GroupRuleError, match="'other_case' has no match"):
        case_groups(["acdc_patient001_frame01", "other_case"], r"regex:(patient\d+)")


def test_metadata_rule_reads_case_metadata_csv(tmp_path):
    (tmp_path / "case_metadata.csv").write_text("case_id,patient\na_1,p1\na_2,p1\nb_1,p2\n")
    assert case_groups(["a_1", "a_2", "b_1"], "metadata:patient", tmp_path) == {"a_1": "p1", "a_2": "p1", "b_1": "p2"}
    with pytest.raises(GroupRuleError, match=r"no 'patient' for 1 case\(s\), e.g. \['c_1'\]"):
        case_groups(["a_1", "c_1"], "metadata:patient", tmp_path)
    with pytest.raises(GroupRuleError, match="needs columns 'case_id' and 'scanner'"):
        case_groups(["a_1"], "metadata:scanner", tmp_path)
    with pytest.raises(GroupRuleError, match="does not exist"):
        case_groups(["a_1"], "metadata:patient", tmp_path / "missing")


@pytest.mark.parametrize("seed", range(6))
def test_groups_stay_whole_and_k_cases_come_from_k_groups(seed):
    split = make_split(IDS, train_cases=5, val_cases=4, test_cases=6, seed=seed, groups=GROUPS)
    sides = _sides(split)
    assert not sides["train"] & sides["val"] and not sides["train"] & sides["test"] and not sides["val"] & sides["test"]
    assert len(split.train) == 5 and len(sides["train"]) == 5  # five patients, one frame each
    # test and val take whole groups until they hold at least the asked number of cases
    assert len(split.test) >= 6 and all(sum(GROUPS[c] == g for c in split.test) == sum(GROUPS[c] == g for c in IDS)
                                        for g in sides["test"])
    assert len(split.val) >= 4
    assert split.groups == {c: GROUPS[c] for c in [*split.train, *split.val, *split.test]}


def test_grouped_training_sets_are_nested_and_use_second_frames_only_after_every_patient():
    first = make_split(IDS, train_cases=1, val_cases=2, test_cases=4, seed=3, groups=GROUPS)
    n_left = len(set(GROUPS.values()) - _sides(first)["val"] - _sides(first)["test"])
    splits = [make_split(IDS, train_cases=k, val_cases=2, test_cases=4, seed=3, groups=GROUPS)
              for k in (1, 3, n_left, n_left + 1)]
    assert len({tuple(s.test) for s in splits}) == 1 and len({tuple(s.val) for s in splits}) == 1
    for small, big in zip(splits, splits[1:]):
        assert set(small.train) < set(big.train)
    assert [len(_sides(s)["train"]) for s in splits] == [1, 3, n_left, n_left]  # the last adds a second frame


def test_ungrouped_splits_are_unchanged_by_the_group_feature():
    ids = [f"case_{i:02d}" for i in range(20)]
    split = make_split(ids, train_cases=5, val_cases=3, test_cases=4, seed=7)
    perm = [sorted(ids)[i] for i in np.random.default_rng(7).permutation(20)]
    assert split.test == sorted(perm[:4]) and split.val == sorted(perm[4:7]) and split.train == sorted(perm[7:12])
    assert split.groups is None and "groups" not in split.to_dict()


def test_explicit_lists_must_not_cut_a_group():
    with pytest.raises(ValueError, match=r"test_cases takes only some cases of group\(s\) \['patient001'\]"):
        make_split(IDS, test_cases=["acdc_patient001_frame01"], seed=0, groups=GROUPS)
    with pytest.raises(ValueError, match="are also test cases"):
        make_split(IDS, test_cases=IDS[:2], explicit_train=["acdc_patient001_frame12"], seed=0, groups=GROUPS)
    split = make_split(IDS, test_cases=IDS[:2], explicit_train=["acdc_patient002_frame01"], val_cases=2, seed=0,
                       groups=GROUPS)
    assert "patient002" not in _sides(split)["val"]


def test_split_json_records_groups_and_refuses_a_straddling_group(tmp_path):
    split = make_split(IDS, train_cases=3, val_cases=2, test_cases=4, seed=1, groups=GROUPS)
    path = split.save(tmp_path / "split.json")
    case = split.train[0]
    assert json.loads(path.read_text())["groups"][case] == GROUPS[case]
    assert Split.load(path) == split
    with pytest.raises(ValueError, match="group 'p1' is in both train and test"):
        Split(train=["a"], test=["b"], groups={"a": "p1", "b": "p1"})


def test_acdc_folder_is_recognised_and_grouped_by_patient(require_data):
    from medcontext.data import load_dataset, split_for_spec
    from medcontext.study.definitions import load_test_split

    spec = load_dataset(require_data("Task_ACDC", "dataset.json"))
    assert spec.preset == "acdc" and spec.eval_class_names == ["RV", "MYO", "LV"]
    assert spec.target_spacing == (1.5, 1.5, 5.0) and spec.group_by == r"regex:(patient\d+)"
    assert len(spec.cases) == 160 and len(set(spec.groups.values())) == 80
    test = load_test_split(Path(__file__).resolve().parents[2] / "benchmarks" / "splits" / "acdc_test.json")
    assert len(test) == 40 and len({spec.groups[c] for c in test}) == 20
    split = split_for_spec(spec, train_cases=5, val_cases=10, test_cases=test, seed=0)
    train_patients = {spec.groups[c] for c in split.train}
    assert len(train_patients) == 5 and not train_patients & {spec.groups[c] for c in [*split.val, *split.test]}
