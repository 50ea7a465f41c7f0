"""Every ``Outcome`` of a dequeue, produced for real, through ``get()`` and ``get_many()``.

``get()`` classifies from GetQueuedCompletionStatus's return value and lpOverlapped (rule 2);
``get_many()`` classifies each GetQueuedCompletionStatusEx entry from the NTSTATUS left in its
OVERLAPPED's ``Internal`` field. Both must agree, so most tests run once per dequeue mode.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest
import support
from helpers_net import net  # noqa: F401 - a pytest fixture
from helpers_net import (
    MODES,
    QUIET,
    WAIT,
    Mode,
    Network,
    assert_quiet,
    closed_port_address,
    complete,
    dequeue,
    recv_exact,
    reset_peer,
    wait_kernel_done,
)

from winiocp import (
    Completion,
    CompletionPort,
    Failure,
    OperationCancelledError,
    OpState,
    Outcome,
    PortClosedError,
    RecvOperation,
    Socket,
)
from winiocp.constants import WinError
from winiocp.errors import RESET_ERRORS

pytestmark = pytest.mark.timeout(60)

mode_param = pytest.mark.parametrize("mode", MODES)


def assert_failed(completion: Completion, operation: RecvOperation | None, failure: Failure,
                  exception_type: type[OSError]) -> None:
    """A FAILED completion of ``operation`` with ``failure``, raising ``exception_type``."""
    assert completion.outcome is Outcome.FAILED, completion
    assert completion.operation is operation
    assert completion.failure is failure, completion
    assert completion.bytes_transferred == 0
    if operation is not None:
        assert operation.state is OpState.DONE
        assert operation.failure is failure
        assert operation.error == completion.error
    error = completion.exception()
    assert type(error) is exception_type, repr(error)
    assert isinstance(error, OSError) and error.winerror == completion.error
    with pytest.raises(exception_type):
        completion.raise_for_failure()


# -- COMPLETED and PEER_CLOSED ---------------------------------------------------------------


@mode_param
def test_recv_completed_with_data(net: Network, mode: Mode) -> None:
    sock, peer = net.pair()
    recv = sock.recv(100)
    assert recv.pending and net.port.pending_count == 1
    peer.sendall(b"hello")
    completion = complete(net.port, recv, mode)
    assert completion.outcome is Outcome.COMPLETED
    assert completion.key == sock.key
    assert completion.bytes_transferred == 5
    assert completion.overlapped == recv.address
    assert (completion.error, completion.failure) == (0, None)
    assert completion.exception() is None
    assert completion.raise_for_failure() is completion
    assert recv.data == b"hello" and recv.state is OpState.DONE
    assert net.port.pending_count == 0


@mode_param
def test_gathered_send_completed(net: Network, mode: Mode) -> None:
    sock, peer = net.pair()
    send = sock.send([b"abc", bytearray(b"def"), memoryview(b"ghij")])
    completion = complete(net.port, send, mode)
    assert completion.outcome is Outcome.COMPLETED
    assert completion.bytes_transferred == 10
    assert recv_exact(peer, 10) == b"abcdefghij"


@mode_param
def test_zero_byte_recv_is_completed_not_peer_closed(net: Network, mode: Mode) -> None:
    """A zero-byte read completes with 0 bytes when data arrives: not a graceful close."""
    sock, peer = net.pair()
    probe = sock.recv(0)
    assert_quiet(net.port)  # it waits for data
    peer.sendall(b"xyz")
    completion = complete(net.port, probe, mode)
    assert completion.outcome is Outcome.COMPLETED
    assert completion.bytes_transferred == 0 and not probe.peer_closed
    follow = sock.recv(10)  # the data is still there for a real read
    complete(net.port, follow, mode)
    assert follow.data == b"xyz"


@mode_param
@pytest.mark.parametrize("how", ["close", "shutdown"])
def test_graceful_close_is_peer_closed(net: Network, mode: Mode, how: str) -> None:
    """Rule 1: with a receive pending, the peer's FIN is TRUE + 0 bytes -> PEER_CLOSED."""
    sock, peer = net.pair()
    recv = sock.recv(100)
    if how == "close":
        peer.close()
    else:
        peer.shutdown(socket.SHUT_WR)
    completion = complete(net.port, recv, mode)
    assert completion.outcome is Outcome.PEER_CLOSED
    assert completion.bytes_transferred == 0 and completion.error == 0
    assert completion.exception() is None
    assert recv.peer_closed and recv.data == b""


# -- FAILED --------------------------------------------------------------------------------------


@mode_param
def test_peer_reset_fails_with_reset(net: Network, mode: Mode) -> None:
    """The peer closes with SO_LINGER {1, 0}: the pending receive fails, FALSE + non-NULL."""
    sock, peer = net.pair()
    recv = sock.recv(100)
    reset_peer(peer)
    completion = complete(net.port, recv, mode)
    assert_failed(completion, recv, Failure.RESET, ConnectionResetError)
    assert completion.error in RESET_ERRORS
    # What Windows documents for a reset under pending I/O, and what Wine gives too.
    assert completion.error == WinError.ERROR_NETNAME_DELETED


@mode_param
def test_cancel_pending_recv(net: Network, mode: Mode) -> None:
    sock, _ = net.pair()
    recv = sock.recv(100)
    assert sock.cancel(recv) is True
    assert recv.cancel_requested and recv.pending  # a request only: still the kernel's
    completion = complete(net.port, recv, mode)
    assert_failed(completion, recv, Failure.CANCELLED, OperationCancelledError)
    assert completion.error == WinError.ERROR_OPERATION_ABORTED
    assert sock.cancel(recv) is False  # nothing left to cancel
    assert net.port.pending_count == 0


@mode_param
def test_cancel_every_operation_of_a_socket(net: Network, mode: Mode) -> None:
    sock, _ = net.pair()
    other, _ = net.pair()
    first, second = sock.recv(10), sock.recv(10)
    untouched = other.recv(10)
    assert sock.cancel() is True
    completions = dequeue(net.port, 2, mode)
    assert {id(c.operation) for c in completions} == {id(first), id(second)}
    for completion in completions:
        assert completion.failure is Failure.CANCELLED
    assert untouched.pending and not untouched.cancel_requested
    assert_quiet(net.port)


@mode_param
def test_cancel_of_completed_operation_returns_false(net: Network, mode: Mode) -> None:
    """CancelIoEx of an operation the kernel already finished: ERROR_NOT_FOUND -> False, and
    the completion still reports the data, not a cancellation."""
    sock, peer = net.pair()
    recv = sock.recv(100)
    peer.sendall(b"done")
    wait_kernel_done(recv)  # finished by the kernel, not yet dequeued
    assert recv.pending
    assert sock.cancel(recv) is False
    completion = complete(net.port, recv, mode)
    assert completion.outcome is Outcome.COMPLETED and recv.data == b"done"
    assert sock.cancel(recv) is False  # and after the dequeue


@mode_param
def test_our_close_fails_the_pending_recv(net: Network, mode: Mode) -> None:
    """closesocket under a pending receive: the receive fails and comes back, owned again."""
    sock, _ = net.pair()
    recv = sock.recv(100)
    key = sock.key
    assert sock.close() is True
    completion = complete(net.port, recv, mode)
    assert completion.outcome is Outcome.FAILED and completion.key == key
    assert completion.error != 0 and recv.state is OpState.DONE
    assert net.port.pending_count == 0


@support.wine_deviation("a receive pending when its socket is closed fails with "
                        "ERROR_HANDLES_CLOSED (676, STATUS_HANDLES_CLOSED), not "
                        "ERROR_OPERATION_ABORTED")
@mode_param
def test_our_close_is_classified_closed(net: Network, mode: Mode) -> None:
    """Documented: pending overlapped I/O of a closed socket ends with WSA_OPERATION_ABORTED,
    which without a cancel request is Failure.CLOSED."""
    sock, _ = net.pair()
    recv = sock.recv(100)
    sock.close()
    completion = complete(net.port, recv, mode)
    assert completion.error == WinError.ERROR_OPERATION_ABORTED, completion
    assert_failed(completion, recv, Failure.CLOSED, OperationCancelledError)


@mode_param
def test_connect_refused(net: Network, mode: Mode) -> None:
    with Socket() as sock:
        net.port.associate(sock)
        connect = sock.connect(closed_port_address())
        completion = complete(net.port, connect, mode)
        assert completion.outcome is Outcome.FAILED
        assert completion.failure is Failure.REFUSED
        assert completion.error == WinError.ERROR_CONNECTION_REFUSED
        assert type(completion.exception()) is ConnectionRefusedError
        with pytest.raises(ConnectionRefusedError):
            completion.raise_for_failure()


def reset_connection(net: Network) -> Socket:
    """A connection whose peer reset it, proven by a receive that failed with RESET."""
    sock, peer = net.pair()
    first = sock.recv(100)
    reset_peer(peer)
    assert complete(net.port, first).failure is Failure.RESET
    return sock


def recv_after_reset(net: Network, sock: Socket) -> Completion | OSError:
    """Rule 10: post a receive on a reset connection; what it gave, failing at once or not."""
    try:
        recv = sock.recv(100)
    except OSError as error:
        assert net.port.pending_count == 0  # the failed call gave the operation back
        return error
    completion = complete(net.port, recv)
    assert net.port.pending_count == 0
    return completion


def test_recv_on_reset_connection_leaves_nothing_pending(net: Network) -> None:
    """Whether Winsock fails the call or queues a completion, nothing stays registered and no
    second packet follows."""
    sock = reset_connection(net)
    result = recv_after_reset(net, sock)
    assert isinstance(result, (OSError, Completion))
    assert_quiet(net.port)
    assert net.port.pending_count == 0


@support.wine_deviation("a receive posted on a reset connection succeeds with 0 bytes (looks "
                        "like a graceful close) instead of failing with WSAECONNRESET")
def test_recv_on_reset_connection_reports_the_reset(net: Network) -> None:
    sock = reset_connection(net)
    result = recv_after_reset(net, sock)
    if isinstance(result, OSError):
        assert isinstance(result, ConnectionError), repr(result)
    else:
        assert result.outcome is Outcome.FAILED and result.failure is Failure.RESET, result


# -- POSTED, TIMED_OUT, PORT_CLOSED ----------------------------------------------------------------


@mode_param
@pytest.mark.parametrize(("key", "count"), [(0, 0), (7, 3), ((1 << 64) - 1, 0xFFFFFFFF)])
def test_posted(mode: Mode, key: int, count: int) -> None:
    """TRUE + NULL: a posted packet, returned as data, with no 'error 0' raised."""
    with CompletionPort() as port:
        port.post(key, count)
        (completion,) = dequeue(port, 1, mode)
        assert completion.outcome is Outcome.POSTED
        assert (completion.key, completion.bytes_transferred) == (key, count)
        assert completion.operation is None and completion.overlapped == 0
        assert (completion.error, completion.failure) == (0, None)
        assert completion.exception() is None
        assert completion.raise_for_failure() is completion


def test_get_times_out() -> None:
    with CompletionPort() as port:
        start = time.monotonic()
        completion = port.get(0.1)
        elapsed = time.monotonic() - start
        assert completion.outcome is Outcome.TIMED_OUT
        assert completion.operation is None and completion.exception() is None
        assert 0.05 <= elapsed < 2.0
        assert port.get(0).outcome is Outcome.TIMED_OUT


def test_get_many_times_out_with_an_empty_batch() -> None:
    with CompletionPort() as port:
        start = time.monotonic()
        assert port.get_many(0.1) == []
        assert 0.05 <= time.monotonic() - start < 2.0
        assert port.get_many(0) == []


def close_under_waiter(port: CompletionPort, call: Callable[[], object], join: float
                       ) -> tuple[list[object], float]:
    """Close ``port`` while a thread waits in ``call()``; return what the call gave (a value or
    an exception; empty if it is still waiting) and how long after the close it returned."""
    results: list[object] = []

    def waiter() -> None:
        try:
            results.append(call())
        except BaseException as error:  # noqa: BLE001 - handed to the test
            results.append(error)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    time.sleep(QUIET)  # let it block in the wait
    assert thread.is_alive() and not results
    start = time.monotonic()
    port.close()
    thread.join(join)
    return results, time.monotonic() - start


def test_port_closed_under_get_none() -> None:
    """A thread in get(timeout=None) returns PORT_CLOSED promptly when another thread closes
    the port (its wait is sliced, so even Wine's WAIT_TIMEOUT is noticed within a slice)."""
    port = CompletionPort()
    results, after = close_under_waiter(port, lambda: port.get(None), WAIT)
    assert len(results) == 1, "the waiter did not return"
    (completion,) = results
    assert isinstance(completion, Completion) and completion.outcome is Outcome.PORT_CLOSED
    assert after < 2.0
    assert port.get(0).outcome is Outcome.PORT_CLOSED


@mode_param
def test_closing_the_port_wakes_a_waiter_at_once(mode: Mode) -> None:
    """Windows wakes a port's waiters with ERROR_ABANDONED_WAIT_0 when it is closed; Wine does
    not, so close() wakes them itself (a packet per waiter) before the handle is closed."""
    port = CompletionPort()
    wait: Callable[[], object] = (lambda: port.get(2.5)) if mode == "get" else (
        lambda: port.get_many(2.5))
    results, after = close_under_waiter(port, wait, WAIT)
    (result,) = results
    assert after < 1.0, f"the waiter returned {after:.2f} s after the close"
    if isinstance(result, Completion):
        assert result.outcome is Outcome.PORT_CLOSED
        assert result.error == WinError.ERROR_ABANDONED_WAIT_0
    else:
        assert isinstance(result, PortClosedError), repr(result)
        assert result.winerror == WinError.ERROR_ABANDONED_WAIT_0


def test_get_many_on_a_closed_port_raises() -> None:
    port = CompletionPort()
    results, _ = close_under_waiter(port, lambda: port.get_many(1.0), WAIT)
    (error,) = results
    assert isinstance(error, PortClosedError), repr(error)
    with pytest.raises(PortClosedError):
        port.get_many(0)


def test_get_many_none_returns_when_the_port_is_closed() -> None:
    """get_many(timeout=None) is sliced like get(None): a close is noticed within a slice even
    where the close wakes no waiter (Wine)."""
    port = CompletionPort()
    results, after = close_under_waiter(port, lambda: port.get_many(None), WAIT)
    assert results, "get_many(None) still waits on the closed port"
    assert isinstance(results[0], PortClosedError), repr(results[0])
    assert after < 2.0
# -- one batch, every outcome ------------------------------------------------------------------------


def test_one_batch_classifies_each_entry(net: Network) -> None:
    """Several different outcomes queued at once come back in a single get_many() call, each
    classified from its own OVERLAPPED.Internal."""
    (data_sock, data_peer), (fin_sock, fin_peer) = net.pair(), net.pair()
    (rst_sock, rst_peer), (cancel_sock, _) = net.pair(), net.pair()
    data, fin = data_sock.recv(10), fin_sock.recv(10)
    rst, cancelled = rst_sock.recv(10), cancel_sock.recv(10)
    data_peer.sendall(b"12345")
    fin_peer.close()
    reset_peer(rst_peer)
    cancel_sock.cancel(cancelled)
    net.port.post(99, 1)
    wait_kernel_done(data, fin, rst, cancelled)
    batch = net.port.get_many(WAIT, max_entries=64)
    assert len(batch) == 5, batch
    by_op = {id(c.operation): c for c in batch}
    assert by_op[id(data)].outcome is Outcome.COMPLETED and data.data == b"12345"
    assert by_op[id(fin)].outcome is Outcome.PEER_CLOSED
    assert by_op[id(rst)].failure is Failure.RESET
    assert by_op[id(cancelled)].failure is Failure.CANCELLED
    posted = by_op[id(None)]
    assert (posted.outcome, posted.key, posted.bytes_transferred) == (Outcome.POSTED, 99, 1)
    assert {c.key for c in batch if c.operation} == {s.key for s in (
        data_sock, fin_sock, rst_sock, cancel_sock)}
    assert net.port.pending_count == 0
