"""winiocp.aio's write path: what a transport keeps of the data written once it is sent, and
how many sends many small writes make.

The stock loop runs the same tests where it applies (``LOOPS``).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

import winiocp.aio
from winiocp.aio.transports import SocketTransport
from winiocp.sockets import Socket

LOOPBACK = "127.0.0.1"
WAIT = 30.0
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stock": asyncio.ProactorEventLoop,
    "winiocp": winiocp.aio.new_event_loop,
}


def run(loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, Any]) -> Any:
    try:
        return loop.run_until_complete(asyncio.wait_for(main, WAIT))
    finally:
        loop.close()


async def connected_pair() -> tuple[asyncio.WriteTransport, socket.socket]:
    """A transport of the running loop on one end of a loopback connection, and the other
    end (a blocking stdlib socket)."""
    loop = asyncio.get_running_loop()
    with socket.create_server((LOOPBACK, 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        peer, _ = listener.accept()
    peer.settimeout(WAIT)
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=client)
    return cast(asyncio.WriteTransport, transport), peer


async def read_exactly(peer: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``peer``, read off the loop (in a thread)."""
    def read() -> bytes:
        received = bytearray()
        while len(received) < size:
            part = peer.recv(1 << 20)
            if not part:
                break
            received += part
        return bytes(received)

    return await asyncio.get_running_loop().run_in_executor(None, read)


async def until(condition: Callable[[], bool], turns: int = 300) -> bool:
    """Whether ``condition`` holds within ``turns`` short sleeps of the loop (a bounded wait
    for the send's completion to be handled: the peer may have the bytes before that)."""
    for _ in range(turns):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


# -- what is kept of the data written -----------------------------------------------------------

@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_data_written_is_not_kept_once_it_is_sent(name: str) -> None:
    # The transport re-arms one send operation for the next send; what that operation sent
    # must not stay referenced by it (a connection that wrote 32 MiB and went idle used to
    # hold the 32 MiB until its next write). A reference count is exact: each object written
    # is back to the references the test holds once its send completed.
    big = bytes(4 << 20)  # pends: more than the socket's buffers take at once
    small = b"s" * 100  # goes out at once (skip-on-success: finished inline)
    gathered = [b"g" * 5000, b"h" * 6000]  # leave together, in one gathering send
    objects: list[bytes] = [big, small, *gathered]
    before = [sys.getrefcount(data) for data in objects]

    async def main() -> list[int]:
        transport, peer = await connected_pair()
        with peer:
            transport.write(big)
            assert await read_exactly(peer, len(big)) == big
            transport.write(small)
            assert await read_exactly(peer, len(small)) == small
            transport.writelines(gathered)
            assert await read_exactly(peer, 11000) == b"".join(gathered)
            await until(lambda: [sys.getrefcount(data) for data in objects] == before)
            after = [sys.getrefcount(data) for data in objects]
            transport.close()
            return after

    after = run(LOOPS[name](), main())
    assert after == before, "written objects still referenced after they were sent"
