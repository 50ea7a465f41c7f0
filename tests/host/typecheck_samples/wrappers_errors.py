"""Mistakes the typed wrappers must catch, each marked with the errors mypy and pyright must raise.

Never run, only type-checked (tests/host/test_typecheck.py).
"""

from __future__ import annotations

from winiocp import CompletionPort, Socket
from winiocp.connections import Connection
from winiocp.manager import ConnectionManager

port = CompletionPort(concurrency="2")  # E: arg-type  # P: reportArgumentType
sock = Socket()
port.associate(sock.fileno())  # E: arg-type  # P: reportArgumentType
port.get(timeout="1")  # E: arg-type  # P: reportArgumentType
sock.bind("127.0.0.1:80")  # E: arg-type  # P: reportArgumentType
receiving = sock.recv(size=b"4096")  # E: arg-type  # P: reportArgumentType
sock.send("text is not bytes")  # E: arg-type  # P: reportArgumentType
text: str = receiving.data  # E: assignment  # P: reportAssignmentType
sock.accept(accept_socket=5)  # E: arg-type  # P: reportArgumentType
sock.set_linger(True, 0, 1)  # E: call-arg  # P: reportCallIssue
port.post(key=None)  # E: arg-type  # P: reportArgumentType


class NotAHandler:
    def data_received(self, connection: Connection) -> None: ...


ConnectionManager().listen(sock, NotAHandler)  # E: arg-type  # P: reportArgumentType
