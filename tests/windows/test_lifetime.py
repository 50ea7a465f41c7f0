"""Who owns an operation's memory, and the argument checks that keep bad pointers out.

Rule 11: an OVERLAPPED and its buffers must stay alive until the completion is dequeued, even
when the program has dropped every reference to them. The port's registry holds them; these
tests drop everything, collect garbage, churn the heap, and then let the kernel write.
"""

from __future__ import annotations

import gc
import socket
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from helpers_net import net  # noqa: F401 - a pytest fixture
from helpers_net import (
    WAIT,
    Network,
    accepted_pair,
    assert_quiet,
    complete,
    dequeue,
    dequeue_one,
    wait_kernel_done,
)

from winiocp import (
    ClosedHandleError,
    CompletionPort,
    Failure,
    Operation,
    OperationPendingError,
    OpState,
    Outcome,
    RecvOperation,
    SendOperation,
    Socket,
)
from winiocp.operations import BufferLike
from winiocp.port import orphaned_operation_count

pytestmark = pytest.mark.timeout(60)

FILL = b"\xaa" * 64
QUICK = 0.1


def churn() -> list[bytearray]:
    """Allocate many buffers the size of the receive buffers: memory freed too early would be
    handed to them, and the kernel's write would then show up in one."""
    return [bytearray(FILL) for _ in range(4000)]


def assert_untouched(buffers: list[bytearray]) -> None:
    assert all(buffer == FILL for buffer in buffers), "the kernel wrote into freed memory"


def post_unreferenced_recv(sock: Socket) -> tuple[weakref.ref[RecvOperation], int]:
    """Post a receive into a fresh buffer and keep no reference to either."""
    operation = sock.recv_into([bytearray(64)])
    operation.context = "unreferenced"
    return weakref.ref(operation), operation.address


# -- the kernel owns a pending operation ---------------------------------------------------------


def test_unreferenced_recv_survives_gc_and_receives(net: Network) -> None:
    sock, peer = net.pair()
    ref, address = post_unreferenced_recv(sock)
    gc.collect()
    assert ref() is not None, "a pending operation was garbage-collected"
    filler = churn()
    peer.sendall(b"payload after gc")
    completion = dequeue_one(net.port)
    operation = completion.operation
    assert operation is ref() and isinstance(operation, RecvOperation)
    assert completion.overlapped == address == operation.address
    assert completion.outcome is Outcome.COMPLETED and operation.context == "unreferenced"
    assert operation.data == b"payload after gc"
    assert_untouched(filler)


def test_weakref_lives_until_dequeued_and_dies_after(net: Network) -> None:
    sock, peer = net.pair()
    ref, _ = post_unreferenced_recv(sock)
    for _ in range(3):
        gc.collect()
        assert ref() is not None
    peer.sendall(b"x")
    wait_kernel_done(_alive(ref))  # finished by the kernel, not dequeued: still owned
    gc.collect()
    assert ref() is not None and _alive(ref).state is OpState.PENDING
    completion = dequeue_one(net.port)
    assert completion.operation is ref()
    del completion
    gc.collect()
    assert ref() is None, "the operation outlived its dequeued completion"
    assert net.port.pending_count == 0


def _alive(ref: weakref.ref[RecvOperation]) -> RecvOperation:
    operation = ref()
    assert operation is not None
    return operation


def test_pending_op_keeps_its_socket_alive(net: Network) -> None:
    """Dropping the Socket wrapper while a receive is pending frees nothing: the operation
    refers to its socket, and the registry to the operation."""
    sock, peer = accepted_pair(net.port, net.listener)  # not kept by the Network
    net.peers.append(peer)
    sock_ref = weakref.ref(sock)
    op_ref, _ = post_unreferenced_recv(sock)
    del sock
    gc.collect()
    filler = churn()
    assert sock_ref() is not None and op_ref() is not None
    peer.sendall(b"still here")
    completion = dequeue_one(net.port)
    operation = completion.operation
    assert isinstance(operation, RecvOperation) and operation.data == b"still here"
    owner = operation.owner
    assert owner is sock_ref() and isinstance(owner, Socket) and not owner.closed
    assert completion.key == owner.key
    assert owner.close() is True
    assert_untouched(filler)
    del completion, operation, owner
    gc.collect()
    assert sock_ref() is None and op_ref() is None


def test_closing_the_port_orphans_pending_operations() -> None:
    """Closing a port with operations pending keeps their memory for good (the kernel may
    still write it): no crash when it does."""
    with Network() as network:
        sock, peer = network.pair()
        ref, _ = post_unreferenced_recv(sock)
        other = sock.send(b"queued before close")
        before = orphaned_operation_count()
        pending = network.port.pending_count
        assert pending >= 1
        network.port.close()
        assert orphaned_operation_count() == before + pending
        assert network.port.pending_count == 0
        del other
        gc.collect()
        assert ref() is not None and _alive(ref).state is OpState.PENDING
        filler = churn()
        peer.sendall(b"late data")
        wait_kernel_done(_alive(ref))  # the kernel wrote into the orphan: it was still there
        assert bytes(_alive(ref).buffers[0][:9]) == b"late data"
        assert_untouched(filler)
        with pytest.raises(ClosedHandleError):
            sock.recv(10)  # its port is closed: nothing would ever dequeue it
        gc.collect()
        assert ref() is not None  # orphans are never freed


def test_an_orphaned_operation_keeps_its_memory_but_not_its_context() -> None:
    """What an orphan's context leads to (a connection, an event loop and everything it
    holds) is let go: only the memory the kernel may write is kept."""

    class Context:
        pass

    with Network() as network:
        sock, _peer = network.pair()
        context = Context()
        context_ref = weakref.ref(context)
        receiving = sock.recv(100, context=context)
        receiving_ref = weakref.ref(receiving)
        del context, receiving
        network.port.close()
        gc.collect()
        assert receiving_ref() is not None  # the kernel may still write it
        assert context_ref() is None


# -- re-arming (rule 11) ----------------------------------------------------------------------------


def test_reusing_a_pending_recv_raises(net: Network) -> None:
    sock, peer = net.pair()
    recv = sock.recv(16)
    buffers, address = recv.buffers, recv.address
    with pytest.raises(OperationPendingError):
        sock.recv(16, reuse=recv)
    with pytest.raises(OperationPendingError):
        sock.recv_into([bytearray(8)], reuse=recv)
    with pytest.raises(OperationPendingError):
        recv.rearm()
    # The refused re-arm changed nothing: same buffers, still registered, still completes.
    assert recv.pending and recv.buffers is buffers and recv.address == address
    assert net.port.pending_count == 1
    peer.sendall(b"intact")
    assert complete(net.port, recv).outcome is Outcome.COMPLETED
    assert recv.data == b"intact"


def test_send_and_foreign_operations_cannot_be_reused(net: Network) -> None:
    sock, _ = net.pair()
    other, _ = net.pair()
    send = sock.send(b"once")
    complete(net.port, send)
    reuse: Any = send
    with pytest.raises(ValueError, match="rule 11"):
        sock.recv(16, reuse=reuse)  # a send's OVERLAPPED is never reused
    foreign = other.recv(16)
    other.cancel(foreign)
    complete(net.port, foreign)
    with pytest.raises(ValueError, match="another socket"):
        sock.recv(16, reuse=foreign)
    reuse = foreign
    with pytest.raises(ValueError, match="rule 11"):
        net.listener.accept(reuse=reuse)
    assert net.port.pending_count == 0 and foreign.state is OpState.DONE


def test_serial_reuse_of_one_recv(net: Network) -> None:
    """One receive operation re-armed for three receives: the same OVERLAPPED each time."""
    sock, peer = net.pair()
    recv = sock.recv(16)
    overlapped, address = recv.overlapped, recv.address
    for index, message in enumerate([b"one", b"two", b"three"]):
        if index:
            assert recv.state is OpState.DONE
            assert sock.recv(16, reuse=recv) is recv
        assert recv.pending
        peer.sendall(message)
        completion = complete(net.port, recv)
        assert completion.overlapped == address
        assert recv.data == message and recv.overlapped is overlapped
    # A failed use is cleared by the next re-arm.
    sock.recv(16, reuse=recv)
    sock.cancel(recv)
    assert complete(net.port, recv).failure is Failure.CANCELLED
    sock.recv(16, reuse=recv)
    assert (recv.failure, recv.error, recv.cancel_requested) == (None, 0, False)
    peer.sendall(b"four")
    assert complete(net.port, recv).outcome is Outcome.COMPLETED and recv.data == b"four"
    assert recv.address == address


# -- arguments -----------------------------------------------------------------------------------


READ_ONLY: dict[str, list[BufferLike]] = {
    "bytes": [b"read-only"],
    "bytes-after-bytearray": [bytearray(4), b"x"],
    "memoryview-of-bytes": [memoryview(b"abc")],
}
NON_CONTIGUOUS: list[BufferLike] = [memoryview(bytearray(10))[::2]]


def assert_rejected_cleanly(net: Network, sock: Socket, peer: socket.socket,
                            call: Callable[[], object], match: str) -> None:
    """``call`` raises TypeError before any call is made: nothing is registered, no packet
    comes, and the socket still works."""
    with pytest.raises(TypeError, match=match):
        call()
    assert net.port.pending_count == 0
    assert_quiet(net.port, 0.05)
    recv = sock.recv(8)
    peer.sendall(b"fine")
    assert complete(net.port, recv).outcome is Outcome.COMPLETED and recv.data == b"fine"


@pytest.mark.parametrize("case", sorted(READ_ONLY))
def test_read_only_buffer_raises_type_error(net: Network, case: str) -> None:
    sock, peer = net.pair()
    assert_rejected_cleanly(net, sock, peer, lambda: sock.recv_into(READ_ONLY[case]),
                            "writable")


def test_non_contiguous_buffer_raises_type_error(net: Network) -> None:
    sock, peer = net.pair()
    assert_rejected_cleanly(net, sock, peer, lambda: sock.recv_into(NON_CONTIGUOUS),
                            "contiguous")
    assert_rejected_cleanly(net, sock, peer, lambda: sock.send(NON_CONTIGUOUS), "contiguous")


def test_recv_needs_at_least_one_buffer(net: Network) -> None:
    sock, _ = net.pair()
    with pytest.raises(ValueError, match="at least one"):
        sock.recv_into([])
    with pytest.raises(ValueError, match="at least one"):
        sock.send([])
    assert net.port.pending_count == 0


def test_send_needs_bytes(net: Network) -> None:
    sock, peer = net.pair()
    for data in ("text", ["text"], 12, [b"ok", "text"]):
        wrong: Any = data
        with pytest.raises(TypeError):
            sock.send(wrong)
    assert net.port.pending_count == 0
    peer.settimeout(QUICK)
    with pytest.raises(socket.timeout):
        peer.recv(10)  # nothing was sent


@pytest.mark.parametrize(("size", "error"), [(-1, ValueError), (1 << 32, OverflowError),
                                             (1 << 64, OverflowError)])
def test_bad_sizes(net: Network, size: int, error: type[Exception]) -> None:
    sock, _ = net.pair()
    with pytest.raises(error):
        sock.recv(size)
    with pytest.raises(error):
        net.listener.accept(recv_size=size)
    with pytest.raises(error):
        sock.getsockopt(0xFFFF, 0x1001, size)
    with pytest.raises(error):
        sock.set_buffer_sizes(receive=size)
    assert net.port.pending_count == 0


def test_non_integer_sizes(net: Network) -> None:
    sock, _ = net.pair()
    for size in (1.5, "10", True):
        wrong: Any = size
        with pytest.raises(TypeError):
            sock.recv(wrong)


def test_listening_socket_refuses_stream_io(net: Network) -> None:
    with pytest.raises(ValueError, match="listening"):
        net.listener.recv(10)
    with pytest.raises(ValueError, match="listening"):
        net.listener.recv_into([bytearray(4)])
    with pytest.raises(ValueError, match="listening"):
        net.listener.send(b"x")
    with pytest.raises(ValueError, match="listening"):
        net.listener.disconnect()
    assert net.port.pending_count == 0


SOCKET_CALLS: dict[str, Callable[[Socket], object]] = {
    "recv": lambda s: s.recv(10),
    "recv_into": lambda s: s.recv_into([bytearray(4)]),
    "send": lambda s: s.send(b"x"),
    "connect": lambda s: s.connect(("127.0.0.1", 9)),
    "disconnect": lambda s: s.disconnect(),
    "cancel_all": lambda s: s.cancel(),
    "shutdown": lambda s: s.shutdown(),
    "getsockname": lambda s: s.getsockname(),
    "getpeername": lambda s: s.getpeername(),
    "setsockopt": lambda s: s.set_nodelay(True),
    "getsockopt": lambda s: s.get_linger(),
    "fileno": lambda s: s.fileno(),
    "bind": lambda s: s.bind(("127.0.0.1", 0)),
    "listen": lambda s: s.listen(),
}


@pytest.mark.parametrize("call", sorted(SOCKET_CALLS))
def test_closed_socket_raises_closed_handle_error(net: Network, call: str) -> None:
    sock, _ = net.pair()
    assert sock.close() is True and sock.close() is False
    with pytest.raises(ClosedHandleError):
        SOCKET_CALLS[call](sock)
    assert net.port.pending_count == 0


def test_closed_listener_raises_closed_handle_error(net: Network) -> None:
    net.listener.close()
    with pytest.raises(ClosedHandleError):
        net.listener.accept()
    assert net.port.pending_count == 0


@pytest.mark.parametrize("call", ["recv", "send", "disconnect", "shutdown", "fileno"])
def test_closed_unassociated_socket_raises_closed_handle_error(call: str) -> None:
    """Closed before it was ever associated: still ClosedHandleError, not 'associate first'."""
    sock = Socket()
    sock.close()
    with pytest.raises(ClosedHandleError):
        SOCKET_CALLS[call](sock)
    with CompletionPort() as port, pytest.raises(ClosedHandleError):
        port.associate(sock)


def test_pending_cancel_and_close_keep_the_operation_until_dequeued(net: Network) -> None:
    """cancel() and close() are requests: the operation stays the kernel's until dequeued."""
    sock, _ = net.pair()
    recv = sock.recv(10)
    ref: weakref.ref[Operation] = weakref.ref(recv)
    sock.cancel(recv)
    sock.close()
    del recv
    gc.collect()
    assert ref() is not None
    completion = dequeue_one(net.port, timeout=WAIT)
    assert completion.operation is ref() and completion.outcome is Outcome.FAILED
    del completion
    gc.collect()
    assert ref() is None


def test_send_operations_are_fresh_each_time(net: Network) -> None:
    sock, _ = net.pair()
    first, second = sock.send(b"a"), sock.send(b"b")
    assert isinstance(first, SendOperation) and first is not second
    assert first.address != second.address
    completions = dequeue(net.port, 2, "get")
    assert {id(c.operation) for c in completions} == {id(first), id(second)}
    assert net.port.pending_count == 0
