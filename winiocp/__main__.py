"""``python -m winiocp``: small commands around the package.

``demo`` runs ``examples/raw_echo.py`` of this checkout for now (a later version brings a demo of
its own). The example is loaded by path because ``examples/`` is not part of the package: an
installed wheel has no example, and says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

#: The raw-API echo example, next to the package in a source checkout.
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "raw_echo.py"


def load_example(path: Path) -> ModuleType:
    """Import the Python file at ``path`` as a module (without running its ``__main__`` part)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_demo() -> int:
    """Run the example's ``main()``; exit status 2 when this is not a source checkout."""
    if not EXAMPLE.is_file():
        print(f"winiocp demo: the example {EXAMPLE} was not found (the demo needs a source "
              "checkout of winiocp)", file=sys.stderr)
        return 2
    return int(load_example(EXAMPLE).main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m winiocp",
                                     description="Windows I/O completion ports for Python.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="echo a message through a completion port")
    options = parser.parse_args(argv)
    if options.command == "demo":
        return run_demo()
    parser.error(f"unknown command {options.command!r}")


if __name__ == "__main__":
    sys.exit(main())
