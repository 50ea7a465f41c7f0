"""The winiocp echo server with the knobs the CLI does not expose (bench-only).

Why: the churn and memory benchmarks need ``Server(..., time_wait_avoidance=...,
zero_byte_reads=..., recv_size=...)`` and a way to ask the process for its private bytes; the
profile run needs the dequeue loop in one thread under cProfile. ``python -m winiocp serve
echo`` has none of that, and ``winiocp/`` is not ours to change, so this script builds the
same ``Server`` itself.

    python -m bench.servers.winiocp_echo [--workers N] [--no-time-wait-avoidance]
        [--zero-byte-reads] [--recv-size BYTES] [--close-after-echo] [--profile SECONDS]

``--close-after-echo``: after echoing the first message the server closes the connection, so
the server sends the first FIN — the case TIME_WAIT avoidance exists for. ``--profile S``:
one worker, the dequeue loop run in the main thread under cProfile for S seconds (or until
stdin ends), then a ``pstats`` summary (by own time) is printed between ``PROFILE-BEGIN`` and
``PROFILE-END``.
"""

from __future__ import annotations

import argparse
import cProfile
import threading
import time

from winiocp.connections import CloseReason, Connection, Handler
from winiocp.servers import EchoHandler, Server

from bench.servers.common import announce, control_loop, profile_summary, start_watchdog


class EchoOnceHandler:
    """Echo the first message, then close (the server is the active closer)."""

    def data_received(self, connection: Connection, data: bytes) -> None:
        connection.send(data)
        connection.close()

    def eof_received(self, connection: Connection) -> None:
        pass

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--accepts", type=int, default=16)
    parser.add_argument("--no-time-wait-avoidance", action="store_true")
    parser.add_argument("--zero-byte-reads", action="store_true")
    parser.add_argument("--recv-size", type=int, default=65536)
    parser.add_argument("--close-after-echo", action="store_true")
    parser.add_argument("--profile", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    options = parser.parse_args()
    start_watchdog(options.max_seconds)

    factory: type[Handler] = EchoOnceHandler if options.close_after_echo else EchoHandler
    server = Server(factory, "127.0.0.1", 0, workers=1 if options.profile else options.workers,
                    accepts=options.accepts,
                    time_wait_avoidance=not options.no_time_wait_avoidance,
                    zero_byte_reads=options.zero_byte_reads, recv_size=options.recv_size)
    manager = server.manager

    def status() -> dict[str, object]:
        return {"connections": len(manager.live), "pending": manager.port.pending_count,
                "accepted": manager.stats.accepted}

    if options.profile is not None:
        stdin_done = threading.Event()

        def watch_stdin() -> None:
            control_loop(status)
            stdin_done.set()

        threading.Thread(target=watch_stdin, daemon=True).start()
        manager.listen(server.listener, factory, accepts=options.accepts)
        announce(str(server.address[0]), int(server.address[1]))
        deadline = time.monotonic() + options.profile
        profile = cProfile.Profile()
        profile.enable()
        manager.run(lambda: stdin_done.is_set() or time.monotonic() >= deadline)
        profile.disable()
        summary = server.stop()
        print("PROFILE-BEGIN\n" + profile_summary(profile) + "PROFILE-END", flush=True)
    else:
        server.start()
        announce(str(server.address[0]), int(server.address[1]))
        control_loop(status)
        summary = server.stop()
    print(summary.line(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
