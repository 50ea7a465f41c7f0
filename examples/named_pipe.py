r"""A named pipe, both ends on one completion port, with ``winiocp.Handle``.

The server end is made with CreateNamedPipeW (``Handle.create_named_pipe``) and waits for a
client with ConnectNamedPipe (``connect_pipe``); the client end opens ``\\.\pipe\NAME`` with
CreateFileW (``Handle.open_file``). Every read and write is an operation that owns its
OVERLAPPED and buffer until its completion is dequeued, as for sockets (rule 8: any handle
that supports overlapped I/O works with a port).
"""

from __future__ import annotations

import os
import sys

from winiocp import CompletionPort, Handle, Operation, Outcome


def wait(port: CompletionPort, *operations: Operation) -> None:
    """Dequeue until every one of ``operations`` has completed (5 s each at most)."""
    waiting = set(operations)
    while waiting:
        done = port.get(timeout=5)
        if done.outcome is not Outcome.COMPLETED:  # TIMED_OUT, or FAILED (done.exception())
            raise OSError(f"pipe operation did not complete: {done!r}")
        waiting.discard(done.operation)


def main() -> int:
    name = rf"\\.\pipe\winiocp-example-{os.getpid()}"
    with CompletionPort() as port, Handle.create_named_pipe(name) as server:
        port.associate(server)
        connecting = server.connect_pipe()   # ConnectNamedPipe: pending until a client opens
        with Handle.open_file(name, write=True) as client:
            port.associate(client)
            if connecting.pending:           # (a client that came first: done at once, no packet)
                wait(port, connecting)
            # The client asks; the server reads it and answers in upper case.
            request = server.read(256)       # ReadFile, pending until data comes
            wait(port, request, client.write(b"hello through a pipe"))
            reply = client.read(256)
            wait(port, reply, server.write(request.data.upper()))
    print("server read:", request.data)
    print("client read:", reply.data)
    return 0 if reply.data == b"HELLO THROUGH A PIPE" else 1


if __name__ == "__main__":
    sys.exit(main())
