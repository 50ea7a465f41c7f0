"""``python -m winiocp``: the demo, the example servers, and the raw-API example.

    python -m winiocp demo [--clients N] [--duration S] [--workers N]
    python -m winiocp serve echo|http [--host H] [--port P] [--workers N] [--duration S]
    python -m winiocp raw-echo

``raw-echo`` runs ``examples/raw_echo.py`` of a source checkout; it is loaded by path because
``examples/`` is not part of the package.
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


def serve(kind: str, host: str, port: int, workers: int, duration: float | None) -> int:
    """Run the ``echo`` or ``http`` server until ``duration`` ends (or Ctrl-C); print a summary."""
    from .servers import EchoHandler, HttpHandler, Server

    factory = EchoHandler if kind == "echo" else HttpHandler
    server = Server(factory, host, port, workers=workers,
                    idle_timeout=None if kind == "echo" else 30.0)

    def ready(address: tuple[object, ...]) -> None:
        print(f"listening on {address[0]}:{address[1]}", flush=True)

    summary = server.serve(duration, ready)
    print(summary.line(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m winiocp",
                                     description="Windows I/O completion ports for Python.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="the echo server under load, every byte verified")
    demo.add_argument("--clients", type=int, default=16)
    demo.add_argument("--duration", type=float, default=3.0)
    demo.add_argument("--workers", type=int, default=2)
    serve_parser = commands.add_parser("serve", help="run the echo or HTTP server")
    serve_parser.add_argument("kind", choices=("echo", "http"))
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=0)
    serve_parser.add_argument("--workers", type=int, default=4)
    serve_parser.add_argument("--duration", type=float, default=None)
    commands.add_parser("raw-echo", help="echo one message with the raw API only")
    options = parser.parse_args(argv)
    if options.command == "demo":
        from .demo import run

        return run(options.clients, options.duration, options.workers)
    if options.command == "serve":
        return serve(options.kind, options.host, options.port, options.workers,
                     options.duration)
    if options.command == "raw-echo":
        return run_demo()
    parser.error(f"unknown command {options.command!r}")


if __name__ == "__main__":
    sys.exit(main())
