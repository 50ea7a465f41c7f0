"""SOCKET values are not unique over time (rule 6), shown with the values Windows hands out.

Windows gives a just-closed SOCKET value to the next socket created. A completion of the old
socket can still be queued then: it must reach the old operation (and connection) only,
because routing goes through the OVERLAPPED (``op.context``) and a completion key that
``CompletionPort.associate`` never reuses, not through the SOCKET value. And the old wrapper
must never call closesocket on the value again: that would close the new socket.
"""

from __future__ import annotations

import gc
import socket
import warnings
import weakref

import pytest
import support
from helpers_conn import (
    LOOPBACK,
    WAIT,
    CloseReason,
    Recorder,
    RecordingManager,
    State,
    connect,
    handler_of,
    issuer,
    kernel_done,
    ops_of,
    pump,
    wait_until,
)

from winiocp import (
    AcceptOperation,
    ClosedHandleError,
    Completion,
    CompletionPort,
    Failure,
    OpState,
    Outcome,
    RecvOperation,
    Socket,
)

#: Bound of the loops that look for a value handed out again.
TRIES = 2000


def socket_with_value(value: int) -> tuple[Socket, int]:
    """Create sockets until Windows hands out ``value`` again; (that socket, tries it took).
    Sockets with other values stay open meanwhile (so each try gets a fresh value) and are
    closed before returning."""
    spares: list[Socket] = []
    try:
        for tries in range(1, TRIES + 1):
            candidate = Socket()
            if candidate.fileno() == value:
                return candidate, tries
            spares.append(candidate)
        raise AssertionError(f"SOCKET value {value} not handed out again in {TRIES} tries")
    finally:
        for spare in spares:
            spare.close()


def listening(port: CompletionPort) -> tuple[Socket, tuple[str, int]]:
    listener = Socket()
    listener.bind((LOOPBACK, 0))
    listener.listen()
    port.associate(listener)
    address = listener.getsockname()
    return listener, (str(address[0]), int(address[1]))


def accept_into(listener: Socket, target: Socket | None, address: tuple[str, int]
                ) -> tuple[AcceptOperation, socket.socket]:
    """Post AcceptEx (into ``target`` if given) and connect a stdlib peer; wait until the
    kernel finished the accept, without dequeuing its completion."""
    accept = listener.accept(target)
    peer = connect(address)
    wait_until(lambda: kernel_done(accept), what="the accept")
    return accept, peer


def closed_under_it(completion: Completion) -> bool:
    """The failure of an operation whose socket this process closed: ERROR_OPERATION_ABORTED
    on Windows; Wine completes it with ERROR_HANDLES_CLOSED (676), which classifies as OTHER."""
    if completion.failure is Failure.CLOSED:
        return True
    return support.UNDER_WINE and completion.error == 676


def test_closed_socket_values_are_handed_out_again() -> None:
    seen: set[int] = set()
    for tries in range(1, TRIES + 1):
        sock = Socket()
        value = sock.fileno()
        assert sock.close() is True
        assert sock.close() is False  # closed once; the value is never touched again
        if value in seen:
            print(f"\nSOCKET value {value} handed out again after {tries} sockets")
            return
        seen.add(value)
    raise AssertionError(f"{TRIES} sockets, all with distinct values: {sorted(seen)[:10]}...")


def test_late_completion_of_a_closed_socket_reaches_only_its_own_operation() -> None:
    with CompletionPort() as port:
        listener, address = listening(port)
        accept_old, peer_old = accept_into(listener, None, address)
        assert port.get(WAIT).operation is accept_old
        old = accept_old.accepted
        key_old = port.associate(old)
        recv_old = old.recv(4096)
        value = old.fileno()
        assert old.close() is True  # the receive is still pending
        wait_until(lambda: kernel_done(recv_old), what="the old receive to be aborted")

        new, tries = socket_with_value(value)  # its completion is still queued
        accept_new, peer_new = accept_into(listener, new, address)
        key_new = port.associate(new)
        recv_new = new.recv(4096)
        peer_new.sendall(b"new data")
        wait_until(lambda: kernel_done(recv_new), what="the new receive")
        print(f"\nvalue {value} handed out again after {tries} tries; keys {key_old}, {key_new}")

        assert new.fileno() == value
        assert key_new != key_old

        late = port.get(WAIT)  # queued first: the old socket's aborted receive
        assert late.operation is recv_old
        assert late.key == key_old
        assert late.outcome is Outcome.FAILED and closed_under_it(late), late
        assert recv_old.owner is old
        # The new socket's receive is untouched: still pending (not dequeued), no data taken.
        assert recv_new.state is OpState.PENDING
        assert ops_of(port, new) == [recv_new]

        assert port.get(WAIT).operation is accept_new
        own = port.get(WAIT)
        assert (own.operation, own.key, own.outcome) == (recv_new, key_new, Outcome.COMPLETED)
        assert isinstance(own.operation, RecvOperation) and own.operation.data == b"new data"

        # The old wrapper never closes the value again; the new socket is unaffected.
        assert old.close() is False
        assert new.fileno() == value
        new.send(b"still mine")
        peer_new.settimeout(WAIT)
        assert peer_new.recv(100) == b"still mine"
        assert port.get(WAIT).outcome is Outcome.COMPLETED
        assert port.pending_count == 0

        for sock in (new, listener):
            sock.close()
        peer_old.close()
        peer_new.close()


def test_late_completion_reaches_only_the_old_connection() -> None:
    """The same through a ConnectionManager: the old connection's receive is aborted with
    abort(); a new connection gets the same SOCKET value, a receive of its own and data; the
    old connection's late completion is dispatched first and changes nothing on the new one."""
    manager = RecordingManager()
    port = manager.port
    try:
        listener, address = listening(port)
        accept_old, peer_old = accept_into(listener, None, address)
        assert port.get(WAIT).operation is accept_old
        old = manager.add(accept_old.accepted, Recorder())
        value, key_old = old.sock.fileno(), old.sock.key
        (recv_old,) = ops_of(port, old.sock)

        old.abort()
        assert (old.state, old.close_reason) == (State.ABORTED, CloseReason.ABORTED)
        assert old.pending_recvs == 1  # its completion is not dequeued yet
        wait_until(lambda: kernel_done(recv_old), what="the old receive to be aborted")

        sock_new, _ = socket_with_value(value)
        accept_new, peer_new = accept_into(listener, sock_new, address)
        new = manager.add(sock_new, Recorder())
        (recv_new,) = ops_of(port, new.sock)
        peer_new.sendall(b"new data")
        wait_until(lambda: kernel_done(recv_new), what="the new receive")
        assert new.sock.fileno() == value
        assert new.sock.key != key_old

        late = port.get(WAIT)
        assert (late.operation, late.key) == (recv_old, key_old)
        assert late.operation is not None and issuer(late.operation) is old
        manager.dispatch(late)
        assert old.pending_recvs == 0
        assert (old.state, handler_of(old).reasons) == (State.ABORTED, [CloseReason.ABORTED])
        assert handler_of(old).received == b""
        assert (new.state, new.pending_recvs, new.bytes_received) == (State.OPEN, 1, 0)
        assert handler_of(new).received == b"" and not handler_of(new).reasons
        assert recv_new.state is OpState.PENDING

        manager.dispatch(port.get(WAIT))  # the new accept: no connection's business
        own = port.get(WAIT)
        assert (own.operation, own.key) == (recv_new, new.sock.key)
        manager.dispatch(own)
        assert bytes(handler_of(new).received) == b"new data"
        assert handler_of(old).received == b""

        # The old wrapper's close() is a no-op; the new connection works both ways.
        assert old.sock.close() is False
        old.abort()
        old.close()
        new.send(b"still mine")
        peer_new.settimeout(WAIT)
        assert peer_new.recv(100) == b"still mine"
        peer_new.sendall(b" and more")
        pump(manager, lambda: bytes(handler_of(new).received) == b"new data and more",
             what="more data on the new connection")
        assert new.state is State.OPEN

        new.close()
        peer_new.settimeout(WAIT)
        assert peer_new.recv(1) == b""
        peer_new.close()
        pump(manager, lambda: new.state is State.CLOSED, what="the graceful close")
        assert new.close_reason is CloseReason.GRACEFUL
        peer_old.close()
        listener.close()
        assert port.pending_count == 0
    finally:
        port.close()


def lent_socket(port: CompletionPort) -> tuple[socket.socket, Socket, int]:
    """A stdlib UDP socket, a ``Socket.borrow`` view of it associated with ``port``, and its
    SOCKET value."""
    lender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lender.bind((LOOPBACK, 0))
    view = Socket.borrow(lender)
    port.associate(view)
    return lender, view, lender.fileno()


def assert_refused_and_leaves_value_alone(view: Socket, new: Socket, value: int) -> None:
    """``view`` refuses every call, and letting go of it leaves ``new`` (holding the same
    value again) working."""
    assert new.fileno() == value
    with pytest.raises(ClosedHandleError):
        view.recv_into([bytearray(16)])
    with pytest.raises(ClosedHandleError):
        view.sendto(b"meant for the old socket", ("127.0.0.1", 9))
    with pytest.raises(ClosedHandleError):
        view.fileno()
    assert view.closed
    view.close()  # a view only lets go: closesocket is never called on the value
    new.bind((LOOPBACK, 0))  # the value's new owner is untouched
    assert new.getsockname()[0] == LOOPBACK


def test_a_borrowed_view_never_touches_the_value_once_its_lender_closed_it() -> None:
    """Rule 6 for views (asyncio's sockets, through ``winiocp.aio``): the stdlib socket
    closes its SOCKET, Windows hands the value to a new socket, and the view must not act on
    it. (With the lender check removed from ``issue()``, the receive here is posted on the
    new socket.)"""
    with CompletionPort() as port:
        lender, view, value = lent_socket(port)
        lender.close()
        new, tries = socket_with_value(value)
        try:
            print(f"\nvalue {value} handed out again after {tries} tries")
            assert_refused_and_leaves_value_alone(view, new, value)
            assert port.pending_count == 0
        finally:
            new.close()


def test_a_borrowed_view_refuses_every_call_once_its_lender_is_collected() -> None:
    """The same when the stdlib socket is garbage-collected (which closes it): the view holds
    it only weakly, so it neither keeps the socket open nor outlives it as a live view. (The
    value is not waited for here: whatever runs meanwhile, the collector's ResourceWarning
    machinery included, may take it first.)"""
    with CompletionPort() as port:
        lender, view, _ = lent_socket(port)
        collected = weakref.ref(lender)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # (it was never closed)
            del lender
            gc.collect()
        assert collected() is None, "the view kept its lender alive"
        assert view.closed
        for call in (lambda: view.recv_into([bytearray(16)]), view.fileno,
                     lambda: view.sendto(b"meant for the old socket", ("127.0.0.1", 9))):
            with pytest.raises(ClosedHandleError):
                call()
        assert port.pending_count == 0
