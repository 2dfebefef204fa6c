"""Imports only point down: every ``medcontext`` import, top-level or inside a function, is checked.

The layers, bottom up (STYLE.md, "The shape of the house"):

    io, shipped (below everything)  <  method  <  models  <  data = evaluation  <  engine.host
    <  engine  <  workflows (study, demo, run_scoring, export)  <  cli

``engine.host`` (precision, threads, memory, allocator, signals, machine, distributed) knows
nothing of the rest of the engine: the config, planning and the training loop sit on it.

A module may import its own layer and the layers below it. ``integrations`` sits on method and
models (and data, evaluation, io) beside the engine: it may not import the engine or anything
above it, and only the CLI may import it. A new top-level module fails here until it is given a
layer below.

Run against another source tree: ``MEDCONTEXT_LAYERS_SRC=/path/to/src pytest tests/test_layers.py``
or ``python tests/test_layers.py /path/to/src``.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

SRC = Path(os.environ.get("MEDCONTEXT_LAYERS_SRC", Path(__file__).resolve().parents[1] / "src"))

IO, METHOD, MODELS, DATA, HOST, ENGINE, WORKFLOWS, CLI = range(8)
INTEGRATIONS = "integrations"

LAYERS: dict[str, int | str] = {
    "medcontext.io": IO,
    "medcontext.shipped": IO,
    "medcontext._renamed": IO,  # old module paths; imports the new ones by name only
    "medcontext.method": METHOD,
    "medcontext": MODELS,  # the package itself: ``from medcontext import MedContext`` (imports method, models)
    "medcontext.models": MODELS,
    "medcontext.data": DATA,
    "medcontext.evaluation": DATA,
    "medcontext.engine": ENGINE,
    "medcontext.engine.host": HOST,
    "medcontext.integrations": INTEGRATIONS,
    "medcontext.study": WORKFLOWS,
    "medcontext.demo": WORKFLOWS,
    "medcontext.run_scoring": WORKFLOWS,
    "medcontext.export": WORKFLOWS,
    "medcontext.cli": CLI,
    "medcontext.__main__": CLI,
}
LAYER_NAMES = {IO: "io", METHOD: "method", MODELS: "models", DATA: "data/evaluation", HOST: "engine.host",
               ENGINE: "engine",
               WORKFLOWS: "workflows", CLI: "cli", INTEGRATIONS: "integrations"}


def layer_of(module: str) -> int | str | None:
    """The layer of a dotted module name: its own entry, else its closest enclosing package's."""
    parts = module.split(".")
    if parts[0] != "medcontext":
        return None
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in LAYERS and (end > 1 or len(parts) == 1):
            return LAYERS[name]
    return None


def allowed(source: int | str, target: int | str) -> bool:
    """Whether a module of layer ``source`` may import one of layer ``target``."""
    if source == INTEGRATIONS:
        return target == INTEGRATIONS or target in (IO, METHOD, MODELS, DATA)
    if target == INTEGRATIONS:
        return source == CLI
    return target <= source


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool):
    """``(line, imported module, source text)`` of every medcontext import in ``tree``, nested ones included.

    ``from X import name`` counts as importing ``X.name`` (the name may be a submodule).
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "medcontext":
                    yield node.lineno, alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin.split(".")[0] != "medcontext":
                continue
            text = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
            for alias in node.names:
                yield node.lineno, f"{origin}.{alias.name}", text


def layer_violations(src: Path = SRC) -> list[str]:
    """One line per import that points up (or at a module without a layer), naming file and line."""
    problems = []
    for path in sorted((src / "medcontext").rglob("*.py")):
        module = module_name(path, src)
        source = layer_of(module)
        where = path.relative_to(src)
        if source is None:
            problems.append(f"{where}: module {module} has no layer; add it to LAYERS in tests/test_layers.py")
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        reported = set()
        for line, target_module, text in imported_modules(tree, module, path.name == "__init__.py"):
            if line in reported:
                continue  # one line per import statement
            target = layer_of(target_module)
            if target is None:
                target = layer_of(target_module.rpartition(".")[0])  # ``from medcontext import name``
            if target is None:
                problems.append(f"{where}:{line}: `{text}` imports {target_module}, which has no layer")
                reported.add(line)
            elif not allowed(source, target):
                problems.append(
                    f"{where}:{line}: `{text}` points up: {LAYER_NAMES[source]} ({module}) "
                    f"imports {LAYER_NAMES[target]} ({target_module})"
                )
                reported.add(line)
    return problems


def test_imports_only_point_down():
    assert (SRC / "medcontext").is_dir(), f"no medcontext package under {SRC}"
    problems = layer_violations(SRC)
    assert not problems, "imports against the layering (STYLE.md):\n" + "\n".join(problems)


def test_the_check_sees_nested_and_relative_imports(tmp_path):
    package = tmp_path / "medcontext"
    (package / "method").mkdir(parents=True)
    (package / "engine").mkdir()
    (package / "method" / "__init__.py").write_text("from .step import run\n")
    (package / "method" / "step.py").write_text(
        "def run():\n    from medcontext.engine import train\n    from ..engine.loop import fit\n"
    )
    (package / "engine" / "__init__.py").write_text("from medcontext.method import run\n")
    (package / "integrations").mkdir()
    (package / "integrations" / "trainer.py").write_text("import medcontext.models\nimport medcontext.engine.run_folder\n")
    problems = layer_violations(tmp_path)
    assert len(problems) == 3, problems
    assert problems[0].startswith("medcontext/integrations/trainer.py:2: `import medcontext.engine.run_folder` points up")
    assert problems[1].startswith("medcontext/method/step.py:2: `from medcontext.engine import train` points up: method")
    assert problems[2].startswith("medcontext/method/step.py:3: `from ..engine.loop import fit` points up")


def test_host_concerns_may_not_import_the_rest_of_the_engine(tmp_path):
    host = tmp_path / "medcontext" / "engine" / "host"
    host.mkdir(parents=True)
    (tmp_path / "medcontext" / "engine" / "__init__.py").write_text("from medcontext.engine.host import precision\n")
    (host / "__init__.py").write_text("")
    (host / "precision.py").write_text("from medcontext.data import load_dataset\nfrom ..config import TrainConfig\n")
    problems = layer_violations(tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith("medcontext/engine/host/precision.py:2: `from ..config import TrainConfig` points up: "
                                  "engine.host (medcontext.engine.host.precision) imports engine")


if __name__ == "__main__":
    found = layer_violations(Path(sys.argv[1]) if len(sys.argv) > 1 else SRC)
    print("\n".join(found) or "no import points up")
    sys.exit(1 if found else 0)
