"""What an idle connection costs in Python objects.

A server holds thousands of idle connections, so what one costs is multiplied: with
``zero_byte_reads`` it pins no receive buffer, and then its own objects (the ``Connection``,
its ``Socket``, its receive operation, the addresses) are most of it. The bench's memory
section measures the whole process (Wine's per-socket state included); this test measures the
Python heap alone with tracemalloc, which does not move with the machine's load.
"""

from __future__ import annotations

import gc
import socket
import threading
import tracemalloc
from collections.abc import Iterator

import pytest
from helpers_conn import connect, wait_until

from winiocp import Socket
from winiocp.manager import ConnectionManager
from winiocp.servers import EchoHandler

#: Connections measured (after a warm-up batch, so one-time allocations are not counted).
CONNECTIONS = 200
#: The bound: 1.9-2.6 KiB per connection on CPython 3.10-3.13 with a slotted Connection and
#: no delivery queue until one is needed; 3.3-4.2 KiB before (an instance dict, an empty deque).
MAX_BYTES_PER_CONNECTION = 3 * 1024


@pytest.fixture
def echo_manager() -> Iterator[tuple[ConnectionManager, tuple[str, int]]]:
    """A zero-byte-read manager serving echo on a listener, run by one worker thread."""
    manager = ConnectionManager(zero_byte_reads=True)
    listener = Socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    address = listener.getsockname()
    manager.listen(listener, EchoHandler, accepts=16)
    stop = threading.Event()
    worker = threading.Thread(target=manager.run, args=(stop.is_set,), daemon=True)
    worker.start()
    try:
        yield manager, (str(address[0]), int(address[1]))
    finally:
        stop.set()
        worker.join()
        manager.close()


def idle_clients(address: tuple[str, int], count: int, clients: list[socket.socket]) -> None:
    """``count`` connections, each after one 64-byte exchange (its receive re-posted)."""
    for _ in range(count):
        client = connect(address)
        client.sendall(b"x" * 64)
        echoed = b""
        while len(echoed) < 64:
            echoed += client.recv(64 - len(echoed))
        clients.append(client)


def test_an_idle_zero_byte_read_connection_costs_little_python_heap(
        echo_manager: tuple[ConnectionManager, tuple[str, int]]) -> None:
    manager, address = echo_manager
    clients: list[socket.socket] = []
    try:
        idle_clients(address, 20, clients)
        wait_until(lambda: len(manager.live) == 20, what="the warm-up connections")
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            idle_clients(address, CONNECTIONS, clients)
            wait_until(lambda: len(manager.live) == 20 + CONNECTIONS, what="the connections")
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        per_connection = grown / CONNECTIONS  # (our client sockets are counted too)
        assert per_connection <= MAX_BYTES_PER_CONNECTION, f"{per_connection:.0f} bytes"
    finally:
        for client in clients:
            client.close()
