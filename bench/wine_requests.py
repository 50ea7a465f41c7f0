"""Wineserver requests per echoed message: what a message really costs an event loop under Wine.

Why this exists: under Wine a Win32 call is not one round trip to wineserver. A WSARecv is a
``get_handle_fd`` (Wine caches no socket descriptor) and a ``recv_socket``; a receive that is
pending when the data arrives costs a signal to the thread, a ``select`` to fetch the
asynchronous call, another ``get_handle_fd`` and a ``select`` to report its result; a
GetQueuedCompletionStatusEx is one ``remove_completion`` per entry plus one that finds the
queue empty; and a call that never reaches the kernel on Windows (GetOverlappedResult on a
finished operation) costs nothing here. So "system calls per message" (counted in the stubbed
run, ``bench/micro/aio_cost.py``) is what matters on Windows, and this count is what an
echoed message costs under Wine: the ceiling on what any loop can gain here.

How: the bench's wineserver is restarted with ``WINEDEBUG=+server`` (it then prints every
request it serves, ``TID: name( args )``, on the stderr of the process that started it), one
server runs alone on it, a host client echoes an exact number of 64-byte messages over 1 or
more connections, and the request lines printed meanwhile are counted by name. Afterwards
the wineserver is stopped again, so that nothing else is measured on a tracing server.
"""

from __future__ import annotations

import collections
import os
import re
import socket
import subprocess
import time
from typing import Any

from bench import harness

#: A request as wineserver traces it (its reply is ``TID: name() = STATUS { ... }``).
REQUEST = re.compile(r"^[0-9a-f]{4,8}: (\w+)\( ")
MESSAGE = b"m" * 64


def stop_bench_wineserver() -> None:
    """Stop the bench prefix's wineserver (and with it any program still on it)."""
    env = dict(os.environ, WINEPREFIX=str(harness.BENCH_PREFIX))
    subprocess.run(["wineserver", "-k"], env=env, check=False, capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    while harness.bench_wineserver_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.1)


def connect(port: int, connections: int) -> list[socket.socket]:
    """``connections`` client sockets to the echo server (Nagle off)."""
    clients = [socket.create_connection(("127.0.0.1", port), timeout=30)
               for _ in range(connections)]
    for client in clients:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return clients


def echo_exchanges(clients: list[socket.socket], rounds: int) -> int:
    """``rounds`` times: one 64-byte message on every connection, then every echo read.
    Returns the number of messages echoed."""
    for _ in range(rounds):
        for client in clients:
            client.sendall(MESSAGE)
        for client in clients:
            got = 0
            while got < len(MESSAGE):
                chunk = client.recv(len(MESSAGE) - got)
                if not chunk:
                    raise RuntimeError("the echo server closed the connection")
                got += len(chunk)
    return rounds * len(clients)


def _settled_length(lines: list[str], quiet: float = 0.3, limit: float = 10.0) -> int:
    """The length of ``lines`` once the trace stops growing (the reader thread lags)."""
    length, deadline = len(lines), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(quiet)
        if len(lines) == length:
            break
        length = len(lines)
    return length


def count_requests(command: list[str], name: str, counts: list[int], messages: int
                   ) -> dict[str, dict[str, Any]]:
    """Per connection count: requests per echoed message, in all and by name, of the echo
    server ``command`` alone on a tracing wineserver."""
    stop_bench_wineserver()
    process = harness.WindowsProcess(command, name, wine_debug="+server")
    cells: dict[str, dict[str, Any]] = {}
    try:
        port = process.listening_port(timeout=120)
        for connections in counts:
            clients = connect(port, connections)
            try:
                echo_exchanges(clients, max(1, 100 // connections))  # accepted, warmed up
                start = _settled_length(process.lines)
                echoed = echo_exchanges(clients, max(1, messages // connections))
                end = _settled_length(process.lines)
            finally:
                for client in clients:
                    client.close()
            names = collections.Counter(
                match.group(1) for match in map(REQUEST.match, process.lines[start:end])
                if match)
            total = sum(names.values())
            cells[str(connections)] = {
                "messages": echoed,
                "requests_per_message": total / echoed,
                "by_request": {request: count / echoed
                               for request, count in names.most_common()},
            }
            harness.log(f"wine requests {name:9} {connections:>3} conn: "
                        f"{total / echoed:5.2f} per message")
    finally:
        process.stop(timeout=15)
        stop_bench_wineserver()  # later sections must not run on a tracing wineserver
    return cells
