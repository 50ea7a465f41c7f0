"""What a connection of ``winiocp.aio`` holds in memory: idle, after a bulk transfer, and
while its orderly close goes on.

A server holds thousands of connections that are mostly idle, so what one idle connection
pins is multiplied. The stock ProactorEventLoop keeps a 64 KiB receive pending on each
(32 KiB before Python 3.12); libuv, and so winloop, keeps a zero-byte receive pending that
pins no buffer. ``winiocp.aio`` keeps a receive pending into a 4 KiB buffer of the
transport's (one system call per message, where a zero-byte receive needs a read after it)
and reads anything larger into a buffer of the loop's, so an idle connection costs about
10 KiB whatever it received before, and a closing one (drained with zero-byte receives) no
buffer of its own while it drains.

Measured with tracemalloc (the Python heap, which does not move with the machine's load),
after a warm-up connection so one-time allocations are not counted; the clients are stdlib
sockets in a thread, the same for both loops.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import tracemalloc
from collections.abc import Callable

import pytest

import winiocp.aio

LOOPBACK = "127.0.0.1"
WAIT = 30.0
#: Connections measured per case.
CONNECTIONS = 40
#: What an idle connection of ours may hold: its transport, protocol, socket objects (about
#: 4-6 KiB on CPython 3.10-3.13) and its 4 KiB receive buffer, far from a 64 KiB buffer.
MAX_IDLE_BYTES = 16 * 1024
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stock": asyncio.ProactorEventLoop,
    "winiocp": winiocp.aio.new_event_loop,
}


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data[:64])  # a bulk upload gets a short answer per receive


#: The buffer every ``BufferedEcho`` hands out (one is enough: each read is consumed at once),
#: so what is measured is the loop's, not the protocol's.
SHARED_BUFFER = bytearray(65536)


class BufferedEcho(asyncio.BufferedProtocol):
    buffer = SHARED_BUFFER

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytes(self.buffer[:min(nbytes, 64)]))


def connect_clients(address: tuple[str, int], count: int, upload: int) -> list[socket.socket]:
    """``count`` clients, each after sending ``upload`` bytes (at least one 64-byte message)
    and reading the first answer: the server has received, answered, and re-armed."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(address, timeout=WAIT)
        client.sendall(b"x" * max(64, upload))
        if not client.recv(64):
            raise ConnectionError("the server closed")
        clients.append(client)
    return clients


def idle_bytes_per_connection(name: str, protocol: Callable[[], asyncio.BaseProtocol],
                              upload: int) -> float:
    """The Python heap a loop holds per connection left idle after ``upload`` bytes."""
    clients: list[socket.socket] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol, LOOPBACK, 0)
        address = server.sockets[0].getsockname()[:2]
        clients.extend(await asyncio.to_thread(connect_clients, address, 2, upload))  # warm-up
        await asyncio.sleep(0.3)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        clients.extend(await asyncio.to_thread(connect_clients, address, CONNECTIONS, upload))
        await asyncio.sleep(0.5)  # every connection is idle now, its next receive posted
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
        for client in clients:
            client.close()
        server.close()
        return used / CONNECTIONS

    loop = LOOPS[name]()
    tracemalloc.start()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    finally:
        tracemalloc.stop()
        for client in clients:
            client.close()
        loop.close()


@pytest.mark.parametrize("upload", [64, 4 << 20], ids=["after-a-message", "after-4MiB"])
@pytest.mark.parametrize("protocol", [Echo, BufferedEcho], ids=["Protocol", "BufferedProtocol"])
def test_an_idle_connection_holds_a_small_receive_buffer(protocol: Callable[[], asyncio.BaseProtocol],
                                                    upload: int) -> None:
    per_connection = {name: idle_bytes_per_connection(name, protocol, upload) for name in LOOPS}
    print(", ".join(f"{name}: {size / 1024:.1f} KiB" for name, size in per_connection.items()),
          "per idle connection")
    assert per_connection["winiocp"] <= MAX_IDLE_BYTES
    assert per_connection["winiocp"] < per_connection["stock"]


def test_a_closing_connection_holds_no_buffer_while_it_drains() -> None:
    """Connections closed by the server while their peers keep sending (and never send their
    FIN) are drained until the deadline: meanwhile each holds no buffer of its own."""
    release = threading.Event()
    closed = threading.Event()
    clients: list[socket.socket] = []

    def chatty_peers(address: tuple[str, int]) -> None:
        for _ in range(CONNECTIONS):
            client = socket.create_connection(address, timeout=WAIT)
            client.sendall(b"x" * 64)
            clients.append(client)
        closed.wait(WAIT)
        while not release.is_set():  # keep sending: the drains have something to read
            for client in clients:
                try:
                    client.send(b"y" * 1024)
                except OSError:
                    pass
            release.wait(0.01)

    class CloseOnData(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(b"bye")
            self.transport.close()

    loop = winiocp.aio.new_event_loop()
    loop.close_timeout = WAIT

    async def main() -> float:
        server = await loop.create_server(CloseOnData, LOOPBACK, 0)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        peers = threading.Thread(target=chatty_peers,
                                 args=(server.sockets[0].getsockname()[:2],), daemon=True)
        peers.start()
        while len(loop.closing_connections) < CONNECTIONS:
            await asyncio.sleep(0.05)
        closed.set()
        await asyncio.sleep(0.5)  # the drains read what the peers keep sending
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
        assert len(loop.closing_connections) == CONNECTIONS
        release.set()
        for client in clients:
            client.close()  # their FINs end the drains
        peers.join(WAIT)
        while loop.closing_connections:
            await asyncio.sleep(0.05)
        server.close()
        return used / CONNECTIONS

    tracemalloc.start()
    try:
        per_connection = loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    finally:
        tracemalloc.stop()
        release.set()
        for client in clients:
            client.close()
        loop.close()
    print(f"{per_connection / 1024:.1f} KiB per draining connection")
    assert per_connection <= MAX_IDLE_BYTES
