"""A worker-pool ``Server`` running a protocol of your own: upper-casing lines.

A handler is any object with ``data_received``, ``eof_received`` and ``connection_lost``
(``winiocp.connections.Handler``); ``Server`` makes one per accepted connection and calls it
from its worker threads, one call at a time per connection, in order. The connection keeps a
receive pending, and closes without losing what was sent. A stdlib client sends a few lines,
reads each answer, closes its side, and the server stops.
"""

from __future__ import annotations

import socket
import sys

from winiocp.connections import CloseReason, Connection, State
from winiocp.servers.base import Server

MAX_LINE = 64 * 1024


class UpperHandler:
    """Answers every line (ending in ``\\n``) with the line upper-cased; ``quit`` closes."""

    def __init__(self) -> None:
        self.partial = b""                  # TCP is a byte stream: a line may come in pieces

    def data_received(self, connection: Connection, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        if len(self.partial) > MAX_LINE:    # a line that never ends: drop the client
            connection.abort()
            return
        for line in lines:
            if connection.state is not State.OPEN:  # closing: no more sends
                return
            if line == b"quit":
                connection.close()          # sends what is queued, then FIN (no data lost)
            else:
                connection.send(line.upper() + b"\n")  # owned by the connection until sent

    def eof_received(self, connection: Connection) -> None:
        pass                                # the client closed its side: the connection closes

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        print("connection lost:", reason.value)


def main() -> int:
    server = Server(UpperHandler, "127.0.0.1", 0, workers=2)   # port 0: any free port
    server.start()                          # the accepts are posted, the workers run
    try:
        host, port = server.address[:2]     # the port chosen
        with socket.create_connection((host, port), timeout=10) as client, \
                client.makefile("rb") as answers:   # (both must close to close the socket)
            for line in (b"hello\n", b"from a handler\n"):
                client.sendall(line)
                answer = answers.readline()
                print("upper-cased:", answer)
                if answer != line.upper():
                    return 1
            client.sendall(b"quit\n")       # the server closes: we read its end of file
            if answers.read() != b"":
                return 1
    finally:
        summary = server.stop()             # closes every connection safely, then the port
    print(summary.line())
    return 0 if summary.connections == 1 and summary.forced_closes == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
