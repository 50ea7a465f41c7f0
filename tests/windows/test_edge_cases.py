"""Edge cases a review found, each shown against real Winsock: memory the kernel may still
write is never given back early, a raw packet never makes us dereference a foreign pointer,
and no handler or argument mistake hangs, crashes or escapes the dequeue loop."""

from __future__ import annotations

import gc
import mmap
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import winiocp.sockets as sockets_module
from winiocp import CompletionPort, Outcome, SendOperation, Socket
from winiocp.connections import CloseReason, Connection, NullHandler, State
from winiocp.constants import SocketType, WinError
from winiocp.manager import ConnectionManager
from winiocp import raw
from winiocp.raw import ffi, kernel32

WAIT = 5.0


@pytest.fixture
def port() -> Iterator[CompletionPort]:
    with CompletionPort() as completion_port:
        yield completion_port


def connected_pair(port: CompletionPort) -> tuple[Socket, socket.socket]:
    """Our socket (associated, connected with ConnectEx) and the stdlib peer."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = Socket()
        port.associate(sock)
        connecting = sock.connect(server.getsockname())
        peer, _ = server.accept()
    assert port.get(WAIT).operation is connecting
    peer.settimeout(WAIT)
    return sock, peer


def test_a_datagram_larger_than_the_buffer_keeps_its_operation_pending(
        port: CompletionPort) -> None:
    """WSARecvFrom fails "at once" with WSAEMSGSIZE, yet a packet is queued for it: the
    operation must stay owned until that packet is dequeued (else a later read is confused
    with it and an OVERLAPPED the kernel owns gets re-armed)."""
    with Socket(type=SocketType.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        port.associate(receiver)
        address = receiver.getsockname()
        sender.sendto(b"x" * 100, address)
        time.sleep(0.2)  # queued before the receive is posted: WSARecvFrom reports it at once
        small = receiver.recvfrom(10)
        truncated = port.get(WAIT)
        assert truncated.operation is small and truncated.outcome is Outcome.FAILED
        assert truncated.error in (WinError.ERROR_MORE_DATA, WinError.WSAEMSGSIZE)
        assert small.data == b"x" * 10
        whole = receiver.recvfrom(200, reuse=small)
        sender.sendto(b"second datagram", address)
        done = port.get(WAIT)
        assert done.operation is whole and done.outcome is Outcome.COMPLETED
        assert whole.data == b"second datagram"
        assert port.pending_count == 0


def test_a_raw_packet_with_a_foreign_pointer_is_never_dereferenced(
        port: CompletionPort) -> None:
    """PostQueuedCompletionStatus may carry any pointer-sized value as lpOverlapped: the
    batch path must classify it from the entry itself, as get() does."""
    for _ in range(2):
        assert kernel32.PostQueuedCompletionStatus(port.handle, 5, 7,
                                                   ffi.cast("LPOVERLAPPED", 0x10))
    (first,) = port.get_many(WAIT, max_entries=1)
    second = port.get(WAIT)
    for completion in (first, second):
        assert completion.outcome is Outcome.COMPLETED and completion.operation is None
        assert (completion.overlapped, completion.key, completion.bytes_transferred) == (0x10, 7, 5)


def test_an_interrupt_right_after_the_call_keeps_the_operation_owned(
        port: CompletionPort, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C can be raised just after WSASend returned: the kernel then owns the operation,
    which must stay registered and complete normally."""
    sock, peer = connected_pair(port)
    real = raw.ws2_32

    class InterruptedAfterSend:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def WSASend(self, *args: object) -> int:  # noqa: N802 - the C name
            real.WSASend(*args)  # type: ignore[arg-type]
            raise KeyboardInterrupt

    monkeypatch.setattr(sockets_module, "ws2_32", InterruptedAfterSend())
    with pytest.raises(KeyboardInterrupt):
        sock.send(bytearray(b"payload!" * 1000))
    monkeypatch.undo()
    assert port.pending_count == 1
    gc.collect()
    received = b""
    while len(received) < 8000:
        received += peer.recv(65536)
    done = port.get(WAIT)
    assert done.outcome is Outcome.COMPLETED and isinstance(done.operation, SendOperation)
    assert done.bytes_transferred == 8000 and done.operation.data == received
    sock.close()
    peer.close()


def test_connect_data_over_4_gib_is_refused_without_hanging(port: CompletionPort) -> None:
    sock = Socket()
    port.associate(sock)
    huge = mmap.mmap(-1, (1 << 32) + 16)  # virtual memory only: never touched
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            sock.connect(("127.0.0.1", 9), memoryview(huge))
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "connect() hung"
    assert isinstance(outcome[0], OverflowError)
    assert port.pending_count == 0
    sock.close()
    outcome.clear()  # the traceback holds a view of the mapping
    gc.collect()
    huge.close()


class LostRecorder(NullHandler):
    def __init__(self, fail: bool = False) -> None:
        self.events: list[str] = []
        self.fail = fail

    def data_received(self, connection: Connection, data: bytes) -> None:
        self.events.append(f"data {data!r}")

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        self.events.append(f"lost {reason.value}")
        if self.fail:
            raise RuntimeError("handler bug")


def test_no_data_is_delivered_after_connection_lost() -> None:
    manager = ConnectionManager()
    try:
        sock, peer = connected_pair(manager.port)
        handler = LostRecorder()
        connection = manager.add(sock, handler)
        peer.sendall(b"hello")
        time.sleep(0.2)
        received = manager.port.get(WAIT)  # worker A has it ...
        connection.abort()  # ... worker B aborts first ...
        manager.dispatch(received)  # ... then A dispatches
        assert handler.events == ["lost aborted"]
        peer.close()
    finally:
        manager.close()


def test_a_failing_handler_in_the_close_queue_stops_no_other_connection() -> None:
    manager = ConnectionManager(close_timeout=0.2)
    try:
        peers = []
        handlers = [LostRecorder(fail=True), LostRecorder()]
        connections = []
        for handler in handlers:
            sock, peer = connected_pair(manager.port)
            peers.append(peer)  # never closes: both connections will be forced
            connections.append(manager.add(sock, handler))
        for connection in connections:
            connection.close()
        deadline = time.monotonic() + WAIT
        while manager.live and time.monotonic() < deadline:
            manager.run_once(0.1)  # must not raise
        assert [c.state for c in connections] == [State.ABORTED, State.ABORTED]
        assert [h.events for h in handlers] == [["lost forced"], ["lost forced"]]
        assert manager.stats.handler_errors == 1 and manager.stats.forced_closes == 2
        for peer in peers:
            peer.close()
    finally:
        manager.close()


@pytest.mark.parametrize("size", [0, -1, 1 << 32])
def test_a_receive_size_that_cannot_work_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="recv_size"):
        ConnectionManager(recv_size=size)
