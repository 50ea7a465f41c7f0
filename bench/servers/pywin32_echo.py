"""The pywin32 baseline: an IOCP echo server written against ``win32file``.

Why: pywin32 is the established way to reach completion ports from Python; it does the same
work as winiocp (AcceptEx pool, worker threads in GetQueuedCompletionStatus, one WSARecv
pending per connection, WSASend echoes) through hand-written C bindings instead of cffi.

    python -m bench.servers.pywin32_echo [--workers N]
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading

from bench.servers import _pywin32
from bench.servers.common import announce, control_loop, start_watchdog

win32file = _pywin32.load()
ACCEPTS = 16
RECV_SIZE = 8192
WAIT_TIMEOUT = 258
ERROR_ABANDONED_WAIT_0 = 735
ACCEPT, RECV, SEND = 0, 1, 2


class Connection:
    """One accepted socket with its receive buffer and a single OVERLAPPED (ping-pong)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.overlapped = win32file.OVERLAPPED()
        self.overlapped.object = (RECV, self)
        self.buffer = win32file.AllocateReadBuffer(RECV_SIZE)
        self.pending = b""

    def post_recv(self) -> None:
        self.overlapped.object = (RECV, self)
        win32file.WSARecv(self.sock, self.buffer, self.overlapped, 0)

    def post_send(self, data: bytes) -> None:
        self.pending = data
        self.overlapped.object = (SEND, self)
        win32file.WSASend(self.sock, data, self.overlapped, 0)


class Acceptor:
    """One AcceptEx slot: re-posted after every completion."""

    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.overlapped = win32file.OVERLAPPED()
        self.overlapped.object = (ACCEPT, self)
        # Exactly the endpoint size: any larger and AcceptEx waits for the first data.
        size = win32file.CalculateSocketEndPointSize(server.listener)
        self.buffer = win32file.AllocateReadBuffer(size)
        self.accepted: socket.socket | None = None

    def post(self) -> None:
        self.accepted = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        win32file.AcceptEx(self.server.listener, self.accepted, self.buffer, self.overlapped)


class EchoServer:
    def __init__(self, workers: int) -> None:
        self.port = win32file.CreateIoCompletionPort(win32file.INVALID_HANDLE_VALUE, None, 0, 0)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(512)
        win32file.CreateIoCompletionPort(self.listener.fileno(), self.port, 0, 0)
        self.live: set[Connection] = set()  # keeps each connection (and its OVERLAPPED) alive
        self.lock = threading.Lock()
        self.acceptors = [Acceptor(self) for _ in range(ACCEPTS)]
        for acceptor in self.acceptors:
            acceptor.post()
        self.threads = [threading.Thread(target=self.work, daemon=True) for _ in range(workers)]
        for thread in self.threads:
            thread.start()

    def drop(self, connection: Connection) -> None:
        with self.lock:
            self.live.discard(connection)
        connection.sock.close()

    def work(self) -> None:
        while True:
            rc, transferred, _key, overlapped = win32file.GetQueuedCompletionStatus(self.port, 500)
            if overlapped is None:
                if rc in (0, WAIT_TIMEOUT):
                    continue
                return  # the port was closed
            tag = overlapped.object
            assert isinstance(tag, tuple)
            kind: int = tag[0]
            owner: object = tag[1]
            try:
                if kind == ACCEPT:
                    assert isinstance(owner, Acceptor)
                    self.accepted(owner, rc)
                elif isinstance(owner, Connection):
                    if rc != 0 or (kind == RECV and transferred == 0):
                        self.drop(owner)
                    elif kind == RECV:
                        owner.post_send(bytes(owner.buffer[:transferred]))
                    elif transferred < len(owner.pending):
                        owner.post_send(owner.pending[transferred:])
                    else:
                        owner.post_recv()
            except OSError:
                if isinstance(owner, Connection):
                    self.drop(owner)

    def accepted(self, acceptor: Acceptor, rc: int) -> None:
        sock = acceptor.accepted
        assert sock is not None
        if rc == 0:
            sock.setsockopt(socket.SOL_SOCKET, win32file.SO_UPDATE_ACCEPT_CONTEXT,
                            struct.pack("P", self.listener.fileno()))
            connection = Connection(sock)
            with self.lock:
                self.live.add(connection)
            win32file.CreateIoCompletionPort(sock.fileno(), self.port, 0, 0)
            try:
                connection.post_recv()
            except OSError:
                self.drop(connection)
        else:
            sock.close()
        acceptor.post()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args()
    start_watchdog(600)
    server = EchoServer(options.workers)
    host, port = server.listener.getsockname()[:2]
    announce(host, port)
    control_loop()
    server.listener.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
