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
server runs alone on it, a host client runs a workload (ping-pong over 1 or more connections,
churn, or one bulk transfer) and the request lines printed while it ran are counted by name,
per unit of the workload (an echoed message, a connection, a MiB). Afterwards the wineserver
is stopped again, so that nothing else is measured on a tracing server.
"""

from __future__ import annotations

import collections
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
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


class Window:
    """The stretch of a server's trace a workload measures: ``start()`` then ``stop()``."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.begin = self.end = 0

    def start(self) -> None:
        self.begin = _settled_length(self.lines)

    def stop(self) -> None:
        self.end = _settled_length(self.lines)

    def requests(self) -> collections.Counter[str]:
        return collections.Counter(
            match.group(1) for match in map(REQUEST.match, self.lines[self.begin:self.end])
            if match)


#: A workload: given the server's port and output lines, it runs its load, marks the part it
#: measures on the window, and returns how many units (messages, connections, MiB) it did.
Workload = Callable[[int, list[str], Window], int]


def pingpong(connections: int, messages: int) -> Workload:
    """``messages`` 64-byte echoes over ``connections`` connections made (and warmed up)
    before the window opens; the unit is one echoed message."""
    def run(port: int, lines: list[str], window: Window) -> int:
        clients = connect(port, connections)
        try:
            echo_exchanges(clients, max(1, 100 // connections))  # accepted, warmed up
            window.start()
            echoed = echo_exchanges(clients, max(1, messages // connections))
            window.stop()
        finally:
            for client in clients:
                client.close()
        return echoed
    return run


def churn(connections: int) -> Workload:
    """Connect, one 64-byte exchange, close (the client first), ``connections`` times one
    after another; the unit is one connection's life."""
    def run(port: int, lines: list[str], window: Window) -> int:
        window.start()
        for _ in range(connections):
            clients = connect(port, 1)
            try:
                echo_exchanges(clients, 1)
            finally:
                clients[0].close()
        time.sleep(0.5)  # the server's side of the last closes
        window.stop()
        return connections
    return run


def bulk(mebibytes: int, port_line: str | None = None) -> Workload:
    """One connection sends ``mebibytes`` MiB in 256 KiB writes, then its FIN, and reads the
    server's answer; the unit is one MiB. ``port_line``: the server's output line (prefix)
    that gives the port, when it is not the listening one."""
    def run(port: int, lines: list[str], window: Window) -> int:
        if port_line is not None:
            port = int(next(line for line in lines if line.startswith(port_line))
                       .rsplit(":", 1)[1])
        chunk = bytes(256 << 10)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as client:
            window.start()
            for _ in range(mebibytes * 4):
                client.sendall(chunk)
            client.shutdown(socket.SHUT_WR)
            client.recv(64)  # the server's byte count, then its FIN
            window.stop()
        return mebibytes
    return run


def count_requests(command: list[str], name: str, workloads: dict[str, Workload]
                   ) -> dict[str, dict[str, Any]]:
    """Per workload: wineserver requests per unit, in all and by name, of the server
    ``command`` alone on a tracing wineserver."""
    stop_bench_wineserver()
    process = harness.WindowsProcess(command, name, wine_debug="+server")
    cells: dict[str, dict[str, Any]] = {}
    try:
        port = process.listening_port(timeout=120)
        for workload, run in workloads.items():
            window = Window(process.lines)
            units = run(port, process.lines, window)
            names = window.requests()
            total = sum(names.values())
            cells[workload] = {
                "units": units,
                "requests_per_unit": total / units,
                "by_request": {request: count / units for request, count in names.most_common()},
            }
            harness.log(f"wine requests {name:9} {workload:>15}: {total / units:7.2f} per unit")
    finally:
        process.stop(timeout=15)
        stop_bench_wineserver()  # later sections must not run on a tracing wineserver
    return cells
