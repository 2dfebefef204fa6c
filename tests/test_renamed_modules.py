"""Old module paths of renamed modules still import, warn, and are the new module object."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

from medcontext._renamed import RENAMED


@pytest.mark.parametrize("old, new", sorted(RENAMED.items()))
def test_an_old_module_path_warns_and_returns_the_new_module(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: it was renamed {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_old_names_are_gone_from_the_tree_and_new_ones_exist():
    for old, new in RENAMED.items():
        assert importlib.util.find_spec(new) is not None, new
        parent, _, leaf = old.rpartition(".")
        assert importlib.util.find_spec(parent).submodule_search_locations is not None
        assert not any((Path(p) / f"{leaf}.py").exists()
                       for p in importlib.util.find_spec(parent).submodule_search_locations), old


def test_a_symbol_imported_through_an_old_path_is_the_new_one(monkeypatch):
    from medcontext.engine.run_folder import train

    monkeypatch.delitem(sys.modules, "medcontext.engine.run", raising=False)
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("medcontext.engine.run")
    assert old.train is train
