"""The README's examples run, under real Winsock, and print what they should."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: Each example, and a line it prints only when its check passed.
EXPECTED = {
    "raw_echo": "echoed b'hello' through a completion port",
    "wrappers_echo": "echoed b'hello, port' with the wrappers",
    "aio_echo": "echoed: b'winiocp.aio\\n'",
    "udp_echo": "echoed: b'hello, udp'",
    "handler_server": "upper-cased: b'FROM A HANDLER\\n'",
    "named_pipe": "client read: b'HELLO THROUGH A PIPE'",
    "transmit_file": "client got 262154 bytes: head, file and tail, as sent",
    "aiohttp_app": "client got: ['Hello from aiohttp on winiocp.aio.loop.EventLoop']",
    "uvicorn_app": "client got: ['Hello from uvicorn on winiocp.aio.loop.EventLoop']",
}


@pytest.mark.parametrize("name", EXPECTED)
def test_example_main_returns_0(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main() == 0
    assert EXPECTED[name] in capsys.readouterr().out
