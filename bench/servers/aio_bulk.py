"""The ``aio`` section's bulk sink: one asyncio server that counts and discards what it receives.

Why: the bulk workload (one connection, hundreds of MiB one way, client -> server)
measures a loop's receive path at full speed, where the per-read cost and the read size count
and the write path does not. The same application code runs on every loop (the factories of
``aio_echo.py``); only the loop differs. Two receivers, on two ports of the same process:

* ``Sink``, an ``asyncio.Protocol``: ``data_received`` adds ``len(data)`` (the loop allocates
  a ``bytes`` per read);
* ``BufferedSink``, an ``asyncio.BufferedProtocol``: the loop receives into the protocol's own
  256 KiB buffer (``get_buffer`` / ``buffer_updated``; no copy or allocation of ours).

When the client shuts down its side (EOF), the server writes the byte count it received in
ASCII and closes: the load generator (``loadgen bulk``) checks the count and stops its clock
at the close.

    python -m bench.servers.aio_bulk --loop winiocp

Speaks the stdin/stdout protocol of bench/servers/common.py: before ``listening on HOST:PORT``
(the ``Sink``) it prints ``loop MODULE.CLASS`` and ``buffered on HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from typing import cast

from bench.servers.aio_echo import LOOPS, loop_factory
from bench.servers.common import announce, control_loop, start_watchdog

BUFFER_SIZE = 256 * 1024


class Sink(asyncio.Protocol):
    transport: asyncio.Transport
    received: int = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # winloop's are not asyncio's

    def data_received(self, data: bytes) -> None:
        self.received += len(data)

    def eof_received(self) -> bool:
        self.transport.write(str(self.received).encode())
        self.transport.close()
        return True


class BufferedSink(asyncio.BufferedProtocol):
    transport: asyncio.Transport
    received: int = 0

    def __init__(self) -> None:
        self.buffer = memoryview(bytearray(BUFFER_SIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes

    def eof_received(self) -> bool:
        self.transport.write(str(self.received).encode())
        self.transport.close()
        return True


async def serve() -> tuple[asyncio.Server, asyncio.Server]:
    loop = asyncio.get_running_loop()
    plain = await loop.create_server(Sink, "127.0.0.1", 0)
    buffered = await loop.create_server(BufferedSink, "127.0.0.1", 0)
    return plain, buffered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--loop", choices=LOOPS, default="stock")
    parser.add_argument("--max-seconds", type=float, default=1800)
    options = parser.parse_args(argv)
    start_watchdog(options.max_seconds)
    loop = loop_factory(options.loop)()
    asyncio.set_event_loop(loop)
    print(f"loop {type(loop).__module__}.{type(loop).__qualname__}", flush=True)
    plain, buffered = loop.run_until_complete(serve())
    host, port = buffered.sockets[0].getsockname()[:2]
    print(f"buffered on {host}:{port}", flush=True)
    host, port = plain.sockets[0].getsockname()[:2]
    announce(host, port)

    def wait_for_stdin() -> None:
        control_loop()
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    try:
        loop.run_forever()
    finally:
        for server in (plain, buffered):
            server.close()
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
