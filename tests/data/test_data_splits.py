"""make_split / split_for_spec: determinism, disjointness, nesting, errors, saving."""

from __future__ import annotations

import json

import pytest

from medcontext.data import Split, load_dataset, make_split, split_for_spec

IDS = [f"case_{i:02d}" for i in range(20)]


def test_deterministic_by_seed_and_independent_of_input_order():
    a = make_split(IDS, train_cases=5, val_cases=3, test_cases=4, seed=7)
    b = make_split(list(reversed(IDS)), train_cases=5, val_cases=3, test_cases=4, seed=7)
    assert a == b
    assert make_split(IDS, train_cases=5, val_cases=3, test_cases=4, seed=8) != a
    assert (len(a.train), len(a.val), len(a.test)) == (5, 3, 4)
    assert not set(a.train) & set(a.val) and not set(a.train) & set(a.test) and not set(a.val) & set(a.test)
    assert a.train == sorted(a.train)


def test_test_and_val_do_not_depend_on_k_and_k_shot_sets_are_nested():
    splits = [make_split(IDS, train_cases=k, val_cases=2, test_cases=0.25, seed=3) for k in (1, 2, 5, 10)]
    assert len({tuple(s.test) for s in splits}) == 1 and len({tuple(s.val) for s in splits}) == 1
    assert len(splits[0].test) == 5
    for small, big in zip(splits, splits[1:]):
        assert set(small.train) < set(big.train)
    everything = make_split(IDS, val_cases=2, test_cases=0.25, seed=3)
    assert len(everything.train) == 13 and set(splits[-1].train) < set(everything.train)


def test_explicit_lists():
    split = make_split(IDS, test_cases=IDS[:4], explicit_train=["case_10", "case_05"], val_cases=2, seed=0)
    assert split.test == IDS[:4] and split.train == ["case_05", "case_10"]
    assert len(split.val) == 2 and not set(split.val) & {"case_05", "case_10", *IDS[:4]}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_cases": 17, "test_cases": 4}, r"train_cases=17 but only 16 cases are available"),
        ({"train_cases": 0}, "train_cases must be >= 1"),
        ({"val_cases": 20}, "leaves no training case"),
        ({"test_cases": 20}, "leaves no case for training"),
        ({"test_cases": 1.5}, r"fraction must be in \(0, 1\)"),
        ({"test_cases": ["case_01", "kase_02"]}, r"not in the dataset: 'kase_02' \(did you mean 'case_02'\?\)"),
        ({"test_cases": ["case_01"], "explicit_train": ["case_01"]}, "also test cases"),
        ({"explicit_train": ["case_01", "case_01"]}, "twice"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_split(IDS, **kwargs)


def test_duplicates_and_overlap_are_rejected():
    with pytest.raises(ValueError, match="duplicates"):
        make_split(["a", "b", "a"])
    with pytest.raises(ValueError, match="'a' is in both train and test"):
        Split(train=["a", "b"], test=["a"])


def test_save_and_load(tmp_path):
    split = make_split(IDS, train_cases=3, val_cases=1, test_cases=2, seed=1)
    path = split.save(tmp_path / "run" / "split.json")
    assert Split.load(path) == split
    assert json.loads(path.read_text()) == split.to_dict()
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left
    path.write_text('{"train": ["a"], "tset": []}')
    with pytest.raises(ValueError, match="split.json is not a valid split file"):
        Split.load(path)


def test_split_for_spec_without_official_lists(phantom_dir):
    spec = load_dataset(phantom_dir)
    split = split_for_spec(spec, train_cases=2, val_cases=1, test_cases=2, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (2, 1, 2)
    assert set(split.train + split.val + split.test) <= set(spec.case_ids)
    assert split == make_split(spec.case_ids, train_cases=2, val_cases=1, test_cases=2, seed=0)
