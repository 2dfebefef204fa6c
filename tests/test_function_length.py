"""No function of the package runs over 60 lines of body (issue 27's rule), without a stated reason.

The body is counted from its first statement after the docstring to its last line: signatures and
docstrings (which here carry the shapes and units every public function documents) do not count.
A function that needs more goes into ``STATED_REASONS`` with the reason, so that a long function is
a decision someone wrote down, never an accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medcontext

MAX_BODY_LINES = 60
PACKAGE = Path(medcontext.__file__).parent

# "path relative to the package:function name" -> why it stays long.
STATED_REASONS: dict[str, str] = {}


def _docstring_lines(node: ast.AST) -> int:
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of ``node``."""
    statements = node.body[1:] if _docstring_lines(node) else node.body
    if not statements:
        return 0
    return node.end_lineno - statements[0].lineno + 1


def long_functions(root: Path = PACKAGE) -> dict[str, int]:
    """``{"relative/path.py:name": body lines}`` of every function over ``MAX_BODY_LINES``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and body_lines(node) > MAX_BODY_LINES:
                found[f"{path.relative_to(root).as_posix()}:{node.name}"] = body_lines(node)
    return found


def test_no_function_body_runs_over_sixty_lines_without_a_stated_reason():
    unexplained = {name: n for name, n in long_functions().items() if name not in STATED_REASONS}
    assert not unexplained, (
        f"functions over {MAX_BODY_LINES} body lines: {unexplained}; split them into named steps "
        "or state the reason in STATED_REASONS"
    )


def test_every_stated_reason_still_names_a_long_function():
    stale = set(STATED_REASONS) - set(long_functions())
    assert not stale, f"STATED_REASONS names functions that are no longer long (remove them): {sorted(stale)}"


def test_the_counter_sees_a_long_body_and_ignores_the_docstring(tmp_path):
    doc = '    """' + "\n".join(["doc"] * 80) + '"""\n'
    (tmp_path / "short.py").write_text("def f():\n" + doc + "    return 1\n")
    (tmp_path / "long.py").write_text("def g():\n" + "".join(f"    x{i} = {i}\n" for i in range(61)))
    assert long_functions(tmp_path) == {"long.py:g": 61}
