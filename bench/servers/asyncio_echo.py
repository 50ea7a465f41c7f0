"""The asyncio baseline: an echo ``Protocol`` on the ``ProactorEventLoop`` (IOCP underneath).

Why: it is what a Python programmer on Windows gets from the standard library, built on the
same completion ports through ``_overlapped``; winiocp should beat it. One thread, as asyncio
is meant to be used.

    python -m bench.servers.asyncio_echo
"""

from __future__ import annotations

import asyncio
import threading

from bench.servers.common import announce, control_loop, start_watchdog


class Echo(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def main() -> int:
    start_watchdog(600)
    loop = asyncio.ProactorEventLoop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0, backlog=512))
    host, port = server.sockets[0].getsockname()[:2]
    announce(host, port)

    def wait_for_stdin() -> None:
        control_loop()
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    loop.run_forever()
    server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
