"""The stubbed echo turn's floor: its necessary work written flat, with none of winiocp's layers.

Why: the target for the core echo turn (``python_cost``'s ``echo_turn_us``) is 1.3x this floor,
and the turn is made of layers a user can call on their own (``Socket.send``/``recv_into``
with their checks, the port's registration protocol, ``Connection``'s delivery queue and flow
control, the manager's routing). This module does what every turn must do, in few Python calls
(a function per step, one issue function for both calls): classify the two OVERLAPPED_ENTRY
records (registry pop, NT status, a ``Completion`` each), route each to its handler, take the
connection's lock three times and the socket's twice (the same locks the core holds for thread
safety), copy the data out, re-arm and register the receive and the send (OVERLAPPED zeroed,
the data pinned), and make the same stubbed WSARecv/WSASend/WSAGetLastError calls. What
``echo_turn_us`` costs beyond this floor is the layering, not the work: the number the finding
in ``bench/run.py`` reports.

Not a server: no close, no errors, no flow control beyond the counters. Run by
``python_cost`` inside its stubs; ``floor_echo_turn_us`` is its only entry point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from winiocp.constants import WinError
from winiocp.operations import OpKind, OpState, RecvOperation, SendOperation
from winiocp.port import _ENTRY  # pyright: ignore[reportPrivateUsage]  # the record's layout
from winiocp.port import Completion, Outcome
from winiocp.raw import ffi
from winiocp.sockets import Socket
from winiocp._cdata import CData

_OVERLAPPED_SIZE = ffi.sizeof("OVERLAPPED")
_ZERO = bytes(_OVERLAPPED_SIZE)
_PAYLOAD_SIZE = 64


class Winsock(Protocol):
    """The stubbed calls the floor makes (``python_cost.PendingWinsock``)."""

    def WSARecv(self, *args: object) -> int: ...
    def WSASend(self, socket: int, wsabufs: CData, count: int, sent: CData, flags: int,
                overlapped: CData, routine: CData) -> int: ...
    def WSAGetLastError(self) -> int: ...


class _FlatConnection:
    """One connection's echo, every step inline."""

    def __init__(self, sock: Socket, registry: dict[int, object], winsock: Winsock) -> None:
        self.sock, self.registry, self.winsock = sock, registry, winsock
        self.lock = threading.Lock()
        self.sock_lock = threading.Lock()  # as the socket's own lock, held around each call
        self.handle: int | None = sock.fileno()  # read and checked under it, as issue() does
        self.buffer = bytearray(65536)
        self.recv = RecvOperation(OpKind.RECV, sock)
        self.recv.set_buffers([self.buffer], writable=True)
        self.send_op = SendOperation(OpKind.SEND, sock)
        self.send_wsabuf = ffi.new("WSABUF *")  # re-pointed at each send's data
        self.recv.context, self.send_op.context = self.received, self.sent
        self.pending_recvs = self.pending_sends = self.write_size = 0
        self.bytes_received = self.bytes_sent = 0
        self.sizes: dict[SendOperation, int] = {}

    def issue(self, operation: RecvOperation | SendOperation, call: Callable[[int], int]
              ) -> None:
        """Register ``operation`` and make ``call(handle)`` under the socket's lock."""
        with self.sock_lock:
            handle = self.handle
            if handle is None:
                raise OSError("closed")
            operation.state = OpState.PENDING
            self.registry[operation.address] = operation
            if call(handle) == -1 and \
                    self.winsock.WSAGetLastError() != WinError.WSA_IO_PENDING:
                raise OSError("the stub fails nothing")

    def post_recv(self) -> None:
        operation = self.recv
        ffi.memmove(operation.overlapped, _ZERO, _OVERLAPPED_SIZE)
        self.pending_recvs += 1
        wsabufs, flags, overlapped = operation.wsabufs, operation.flags, operation.overlapped
        self.issue(operation, lambda handle: self.winsock.WSARecv(
            handle, wsabufs, 1, ffi.NULL, flags, overlapped, ffi.NULL))

    def received(self, completion: Completion) -> None:
        with self.lock:
            self.pending_recvs -= 1
            data = bytes(self.buffer[:completion.bytes_transferred])
            self.bytes_received += len(data)
        self.send(data)  # the echo handler's data_received
        with self.lock:
            self.post_recv()

    def send(self, data: bytes) -> None:
        with self.lock:
            operation = self.send_op
            ffi.memmove(operation.overlapped, _ZERO, _OVERLAPPED_SIZE)
            pinned = ffi.from_buffer("char[]", data, False)
            wsabuf = self.send_wsabuf
            wsabuf.len = size = len(pinned)
            wsabuf.buf = pinned
            operation.keep_alive(pinned, wsabuf)
            self.pending_sends += 1
            self.write_size += size
            overlapped = operation.overlapped
            self.issue(operation, lambda handle: self.winsock.WSASend(
                handle, wsabuf, 1, ffi.NULL, 0, overlapped, ffi.NULL))
            self.sizes[operation] = size

    def sent(self, completion: Completion) -> None:
        with self.lock:
            size = self.sizes.pop(self.send_op)
            self.pending_sends -= 1
            self.write_size -= size
            self.bytes_sent += completion.bytes_transferred
            self.send_op.release()


def _classify_and_route(raw: bytes, registry: dict[int, object]) -> None:
    """As ``CompletionPort._classify_entries`` then the manager's routing, flat."""
    completions: list[Completion] = []
    for key, address, internal, transferred in _ENTRY.iter_unpack(raw):
        operation = registry.pop(address)
        assert isinstance(operation, (RecvOperation, SendOperation))
        status = internal & 0xFFFFFFFF
        error = 0 if status < 0x80000000 else status
        operation.state = OpState.DONE
        operation.bytes_transferred = transferred
        operation.error = error
        completions.append(Completion(Outcome.COMPLETED, key, transferred, operation, error,
                                      None, address))
    for completion in completions:
        handler = completion.operation.context if completion.operation is not None else None
        if callable(handler):
            handler(completion)


def floor_echo_turn_us(sockets: list[Socket], winsock: Winsock,
                       median_us: Callable[[Callable[[], float], int, int, str], float],
                       rounds: int) -> float:
    """Median microseconds of one flat echo turn over ``sockets`` (open; their handles are
    only passed to the ``winsock`` stub): the receive's completion to the send's."""
    registry: dict[int, object] = {}
    connections = [_FlatConnection(sock, registry, winsock) for sock in sockets]
    for connection in connections:
        connection.buffer[:_PAYLOAD_SIZE] = b"x" * _PAYLOAD_SIZE
    perf_counter = time.perf_counter

    def round_seconds() -> float:
        for connection in connections:
            connection.post_recv()
        receives = b"".join(_ENTRY.pack(1, c.recv.address, 0, _PAYLOAD_SIZE)
                            for c in connections)
        start = perf_counter()
        _classify_and_route(receives, registry)
        middle = perf_counter()
        sends = b"".join(_ENTRY.pack(1, c.send_op.address, 0, _PAYLOAD_SIZE)
                         for c in connections)
        restart = perf_counter()
        _classify_and_route(sends, registry)
        elapsed = (middle - start) + (perf_counter() - restart)
        for connection in connections:  # the receives each turn re-posted: given back
            registry.pop(connection.recv.address)
            connection.recv.state = OpState.DONE
            connection.pending_recvs -= 1
        return elapsed

    return median_us(round_seconds, len(connections), rounds, "echo_floor_us")
