"""The ``wine-deviations`` directive: the tests marked ``wine_deviation("reason")``, read from
``tests/windows/*.py`` when the documentation is built, so the list cannot fall behind them.

A deviation is found where ``wine_deviation(...)`` (or ``support.wine_deviation(...)``) is called
with a literal reason: as a test's decorator, in the ``marks`` of a ``pytest.param`` in a
test's decorators (the case is named by the param's first value), or assigned to a module-level
name that a test then uses as a decorator or mark.
"""

from __future__ import annotations

import ast
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

TESTS = Path(__file__).resolve().parents[2] / "tests" / "windows"


def _reason(node: ast.AST) -> str | None:
    """The literal reason of a ``wine_deviation("...")`` call, else None."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    function = node.func
    name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
    if name != "wine_deviation":
        return None
    argument = node.args[0]
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return " ".join(argument.value.split())
    return None


def deviations() -> list[tuple[str, str, str]]:
    """``(file, test, reason)`` of every deviation, in file and line order."""
    found: list[tuple[str, str, str]] = []
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text("utf-8"), str(path))
        named: dict[str, str] = {}
        for statement in tree.body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                target, reason = statement.targets[0], _reason(statement.value)
                if isinstance(target, ast.Name) and reason is not None:
                    named[target.id] = reason

        def reason_of(node: ast.AST) -> str | None:
            if isinstance(node, ast.Name):
                return named.get(node.id)
            return _reason(node)

        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if not function.name.startswith("test"):
                continue
            for decorator in function.decorator_list:
                reason = reason_of(decorator)
                if reason is not None:
                    found.append((path.name, function.name, reason))
                    continue
                for node in ast.walk(decorator):
                    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                            and node.func.attr == "param"):
                        continue
                    for keyword in node.keywords:
                        if keyword.arg != "marks":
                            continue
                        marks = (keyword.value.elts if isinstance(keyword.value, (ast.List, ast.Tuple))
                                 else [keyword.value])
                        for mark in marks:
                            reason = reason_of(mark)
                            if reason is None:
                                continue
                            case = ""
                            if node.args and isinstance(node.args[0], ast.Constant):
                                case = f"[{node.args[0].value}]"
                            found.append((path.name, function.name + case, reason))
    return found


class WineDeviations(SphinxDirective):
    """A list: each deviation's reason, and the test that meets it."""

    def run(self) -> list[nodes.Node]:
        items = nodes.bullet_list()
        for path, test, reason in deviations():
            self.env.note_dependency(str(TESTS / path))
            # Built as nodes, not parsed: a reason is plain text, whatever characters it has.
            item = nodes.list_item()
            item += nodes.paragraph(reason, reason)
            name = f"tests/windows/{path}::{test}"
            test_line = nodes.paragraph()
            test_line += nodes.literal(name, name, classes=["test-reference"])
            item += test_line
            items += item
        if not len(items):
            return [nodes.paragraph(text="No test is marked as meeting a Wine deviation.")]
        return [items]


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("wine-deviations", WineDeviations)
    return {"parallel_read_safe": True, "version": "1"}
