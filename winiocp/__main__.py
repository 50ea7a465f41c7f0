"""``python -m winiocp``: the demo, the example servers, and the raw-API example.

    python -m winiocp demo [--clients N] [--duration S] [--workers N]
    python -m winiocp serve echo|http [--host H] [--port P] [--workers N] [--duration S]
    python -m winiocp raw-echo

``raw-echo`` runs ``examples/raw_echo.py`` of a source checkout; it is loaded by path because
``examples/`` is not part of the package, and an installed package does not offer it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

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
    """Run the example's ``main()`` (``main`` offers ``raw-echo`` only when it is there)."""
    return int(load_example(EXAMPLE).main())


def serve(kind: str, host: str, port: int, workers: int, duration: float | None) -> int:
    """Run the ``echo`` or ``http`` server until ``duration`` ends (or Ctrl-C); print a summary.

    When the address cannot be listened on (the port is taken, the host does not resolve or
    is not an address of this machine), prints one line saying so and returns 1.
    """
    from .servers import EchoHandler, HttpHandler, Server

    factory = EchoHandler if kind == "echo" else HttpHandler
    try:
        server = Server(factory, host, port, workers=workers,
                        idle_timeout=None if kind == "echo" else 30.0)
    except OSError as exc:  # socket.gaierror is an OSError too
        print(f"python -m winiocp serve: cannot listen on {host}:{port}: {reason(exc)}",
              file=sys.stderr)
        return 1

    def ready(address: tuple[object, ...]) -> None:
        print(f"listening on {address[0]}:{address[1]}", flush=True)

    summary = server.serve(duration, ready)
    print(summary.line(), flush=True)
    return 0


def reason(exc: OSError) -> str:
    """An ``OSError``'s message without what the CLI's line says already: winiocp's errors
    read ``<call> on <socket>: <Windows' text> [<WinError name>]``, and only the end is kept."""
    if exc.strerror and isinstance(getattr(exc, "winerror", None), int):
        return exc.strerror.rpartition(": ")[2]
    return exc.strerror or str(exc)


class Parser(argparse.ArgumentParser):
    """argparse, whose mistakes are one line on stderr (``prog: error: ...``, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0: any free port), not {value}")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


# argparse names the type in its message ("invalid positive_int value"): say what it is.
positive_int.__name__ = "integer"
port_number.__name__ = "port"
seconds.__name__ = "duration"


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
    parser = Parser(prog="python -m winiocp",
                    description="Windows I/O completion ports for Python.")
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter
    demo = commands.add_parser("demo", help="the echo server under load, every byte verified",
                               formatter_class=defaults)
    demo.add_argument("--clients", type=positive_int, default=16,
                      help="client threads, each opening connection after connection")
    demo.add_argument("--duration", type=seconds, default=3.0, help="seconds of load")
    demo.add_argument("--workers", type=positive_int, default=2,
                      help="the server's worker threads")
    serve_parser = commands.add_parser("serve", help="run the echo or HTTP server",
                                       formatter_class=defaults)
    serve_parser.add_argument("kind", choices=("echo", "http"), help="the server")
    serve_parser.add_argument("--host", default="127.0.0.1",
                              help="the address (or name) to listen on")
    serve_parser.add_argument("--port", type=port_number, default=0,
                              help="the port (0: any free port, printed at start)")
    serve_parser.add_argument("--workers", type=positive_int, default=4,
                              help="worker threads on the completion port")
    serve_parser.add_argument("--duration", type=seconds, default=None,
                              help="seconds to serve (None: until Ctrl-C)")
    if EXAMPLE.is_file():  # a source checkout: examples/ is not part of an installed package
        commands.add_parser("raw-echo", help="echo one message with the raw API only "
                            "(runs examples/raw_echo.py of this source checkout)")
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
