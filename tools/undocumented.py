"""List winiocp's public classes, functions and methods that have no docstring.

The API reference is generated from the docstrings, so a public name without one is a hole in
the documentation. Read from the source (``ast``), so it runs on any OS:

    python3 tools/undocumented.py            # one line per symbol, then a count
    python3 tools/undocumented.py winiocp/port.py winiocp/sockets.py

Public means: in any module of the package but the cffi module and its build script (the
private ``_cdata`` and the generated ``_api`` included: their types are what ``winiocp.raw``
exports), a class or function whose name does not start with ``_``, and the methods and
properties of such a class with such names. Exits 1 when it found any.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "winiocp"

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


NOT_API = {"_ffi.py", "_ffi_build.py"}


def public_modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path.name not in NOT_API)


def undocumented(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every public definition in ``path`` without a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in tree.body:
        if not isinstance(node, Definition) or node.name.startswith("_"):
            continue
        if ast.get_docstring(node) is None:
            yield node.lineno, node.name
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if (isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and not member.name.startswith("_") and ast.get_docstring(member) is None
                        and not _is_overload(member)):
                    yield member.lineno, f"{node.name}.{member.name}"


def _is_overload(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    # An @overload signature is documented by its implementation; a setter by its getter.
    return any((isinstance(d, ast.Name) and d.id == "overload")
               or (isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter"))
               for d in function.decorator_list)


def main(argv: list[str]) -> int:
    paths = [Path(arg).resolve() for arg in argv] or public_modules()
    found = 0
    for path in paths:
        for line, name in undocumented(path):
            print(f"{path.relative_to(ROOT)}:{line}: {name}")
            found += 1
    print(f"{found} public definitions without a docstring")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
