"""``python -m winiocp demo``: the echo server under load, every byte verified.

Starts the echo server (worker threads on one completion port) in this process, then drives
it from client threads with plain stdlib sockets: each client opens connections one after
another, sends random payloads of mixed sizes, checks every echoed byte, and closes. Prints a
progress line while it runs and a table at the end; the exit status is non-zero if any byte
was wrong or lost, or a connection failed.
"""

from __future__ import annotations

import random
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

from .constants import TcpState
from .servers import EchoHandler, Server
from .tcptable import count_state

#: The payload sizes a client picks from, at random: from one small segment to 64 KiB.
PAYLOAD_SIZES = (16, 200, 1400, 4096, 16384, 65536)


@dataclass
class ClientTally:
    """What one client thread did; only that thread writes it."""

    #: Connections opened.
    connections: int = 0
    #: Payloads sent and echoed back intact.
    messages: int = 0
    #: Bytes of those payloads, each compared with what came back.
    bytes_verified: int = 0
    #: What went wrong (a wrong echo, a connection error); the client stops at the first.
    errors: list[str] = field(default_factory=list[str])
    #: Round-trip time of each message, in seconds.
    latencies: list[float] = field(default_factory=list[float])


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes; ``ConnectionError`` if the peer closes first."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError(f"connection closed with {remaining} bytes missing")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def client(address: tuple[str, int], stop: threading.Event, tally: ClientTally,
           seed: int) -> None:
    """Echo random payloads over successive connections until ``stop``, checking each echo.

    Records everything in ``tally``; an ``OSError`` or a wrong echo is recorded there too (and
    ends this client) instead of being raised. ``seed`` makes the payloads reproducible.
    """
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with socket.create_connection(address, timeout=10) as sock:
                tally.connections += 1
                for _ in range(rng.randint(1, 20)):
                    payload = rng.randbytes(rng.choice(PAYLOAD_SIZES))
                    started = time.perf_counter()
                    sock.sendall(payload)
                    echoed = receive_exactly(sock, len(payload))
                    tally.latencies.append(time.perf_counter() - started)
                    if echoed != payload:
                        tally.errors.append(f"wrong echo of {len(payload)} bytes")
                        return
                    tally.messages += 1
                    tally.bytes_verified += len(payload)
                    if stop.is_set():
                        break
        except OSError as exc:
            tally.errors.append(f"{type(exc).__name__}: {exc}")
            return


def run(clients: int = 16, duration: float = 3.0, workers: int = 2) -> int:
    """Run the demo and print its table; the exit status (0: every byte came back).

    ``clients`` threads drive a ``workers``-thread echo server on 127.0.0.1 (any free port)
    for ``duration`` seconds; the server is stopped (every connection closed) before the
    table is printed. Raises only what ``Server`` raises when it cannot listen.
    """
    server = Server(EchoHandler, "127.0.0.1", 0, workers=workers, accepts=32)
    server.start()
    host, port = str(server.address[0]), int(server.address[1])
    stop = threading.Event()
    tallies = [ClientTally() for _ in range(clients)]
    threads = [threading.Thread(target=client, args=((host, port), stop, tally, seed))
               for seed, tally in enumerate(tallies)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    while (elapsed := time.perf_counter() - started) < duration:
        time.sleep(0.5)
        messages = sum(t.messages for t in tallies)
        print(f"\r{elapsed:4.1f}s  {messages} messages echoed and verified", end="",
              file=sys.stderr, flush=True)
    stop.set()
    for thread in threads:
        thread.join(15)
    elapsed = time.perf_counter() - started
    print(file=sys.stderr)
    summary = server.stop()
    time_wait = count_state(TcpState.MIB_TCP_STATE_TIME_WAIT, port)
    latencies = [x for t in tallies for x in t.latencies]
    errors = [e for t in tallies for e in t.errors]
    messages = sum(t.messages for t in tallies)
    verified = sum(t.bytes_verified for t in tallies)
    p50, p99 = (statistics.quantiles(latencies, n=100)[i] * 1000 for i in (49, 98)) \
        if len(latencies) >= 2 else (0.0, 0.0)
    rows = [
        ("connections", f"{sum(t.connections for t in tallies)}"),
        ("messages/s", f"{messages / elapsed:,.0f}"),
        ("MB/s (each way)", f"{verified / elapsed / 1e6:,.2f}"),
        ("latency p50 / p99", f"{p50:.2f} ms / {p99:.2f} ms"),
        ("accept failures", f"{summary.accept_failures}"),
        ("forced closes", f"{summary.forced_closes}"),
        ("TIME_WAIT left on server port", f"{time_wait}"),
        ("bytes verified", f"{verified:,}"),
        ("errors", f"{len(errors)}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"winiocp echo demo: {clients} clients, {workers} workers, {elapsed:.1f} s")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for error in errors[:5]:
        print(f"  error: {error}")
    return 1 if errors or messages == 0 else 0
