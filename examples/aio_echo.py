"""An asyncio echo server and client on ``winiocp.aio``.

The server is plain asyncio (``asyncio.start_server``); only the event loop is winiocp's.
The client connects, sends a few lines, reads each echo, and the program ends.
"""

from __future__ import annotations

import asyncio
import sys

import winiocp.aio


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo every line until the client closes its side."""
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()                      # winiocp.aio closes without losing written bytes
    await writer.wait_closed()


async def main_async() -> int:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)   # port 0: any free port
    host, port = server.sockets[0].getsockname()[:2]
    reader, writer = await asyncio.open_connection(host, port)
    for text in (b"hello\n", b"from\n", b"winiocp.aio\n"):
        writer.write(text)
        echo = await asyncio.wait_for(reader.readline(), timeout=10)
        print("echoed:", echo)
        if echo != text:
            return 1
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return 0


def main() -> int:
    # Any supported Python; on 3.12+ also asyncio.run(..., loop_factory=winiocp.aio.new_event_loop).
    return winiocp.aio.run(main_async())


if __name__ == "__main__":
    sys.exit(main())
