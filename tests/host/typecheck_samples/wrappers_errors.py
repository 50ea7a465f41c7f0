"""Mistakes the typed wrappers must catch, each marked with the mypy error code it must raise.

Never run, only type-checked (tests/host/test_typecheck.py).
"""

from __future__ import annotations

from winiocp import CompletionPort, Socket
from winiocp.connections import Connection
from winiocp.manager import ConnectionManager

port = CompletionPort(concurrency="2")  # E: arg-type
sock = Socket()
port.associate(sock.fileno())  # E: arg-type
port.get(timeout="1")  # E: arg-type
sock.bind("127.0.0.1:80")  # E: arg-type
receiving = sock.recv(size=b"4096")  # E: arg-type
sock.send("text is not bytes")  # E: arg-type
text: str = receiving.data  # E: assignment
sock.accept(accept_socket=5)  # E: arg-type
sock.set_linger(True, 0, 1)  # E: call-arg
port.post(key=None)  # E: arg-type


class NotAHandler:
    def data_received(self, connection: Connection) -> None: ...


ConnectionManager().listen(sock, NotAHandler)  # E: arg-type
