"""Old module paths of renamed modules keep importing, with a :class:`DeprecationWarning`.

``import medcontext.engine.run`` (renamed :mod:`medcontext.engine.run_folder` in 0.2) returns the
module under its new name, so attribute access and monkeypatching act on the one module object.
:data:`RENAMED` maps every old dotted name to its new one; the package installs the finder on
import. Imports nothing of medcontext (the new modules are imported by name, on demand).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

RENAMED: dict[str, str] = {
    "medcontext.engine.run": "medcontext.engine.run_folder",
    "medcontext.engine.run_plan": "medcontext.engine.planning.run_planner",
    "medcontext.engine.run_log": "medcontext.engine.training_log",
    "medcontext.data.planning": "medcontext.engine.planning.training_plan",
    "medcontext.engine.precision": "medcontext.engine.host.precision",
    "medcontext.engine.precision_check": "medcontext.engine.host.precision_check",
    "medcontext.engine.cpu_threads": "medcontext.engine.host.cpu_threads",
    "medcontext.engine.cpu_memory": "medcontext.engine.host.cpu_memory",
    "medcontext.engine.tcmalloc": "medcontext.engine.host.tcmalloc",
    "medcontext.engine.signals": "medcontext.engine.host.signals",
    "medcontext.engine.machine": "medcontext.engine.host.machine",
    "medcontext.engine.distributed": "medcontext.engine.host.distributed",
    "medcontext.run_evaluation": "medcontext.run_scoring",
    "medcontext.study.runner": "medcontext.study.execution",
    "medcontext.study.plan": "medcontext.study.definitions",
    "medcontext.study.report": "medcontext.study.comparison_report",
    "medcontext.evaluation.report": "medcontext.evaluation.metric_table",
}
"""``{old dotted module name: new dotted module name}`` (0.2 restructuring, issue 27)."""


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def create_module(self, spec) -> ModuleType:
        warnings.warn(f"{self.old} is deprecated: it was renamed {self.new}; import that instead",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """The module is the new one, already executed."""


class RenamedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of :data:`RENAMED` (after every regular finder has not)."""

    def find_spec(self, fullname: str, path=None, target=None):
        new = RENAMED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(fullname, new))


def install() -> None:
    """Append the finder to :data:`sys.meta_path` once."""
    if not any(isinstance(finder, RenamedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(RenamedModuleFinder())
