"""FILE_SKIP_COMPLETION_PORT_ON_SUCCESS: a call that succeeds at once queues no packet, and the
port hands out its completion itself (``Socket.set_skip_on_success``, ``port.py``).

The first test shows the premise on the real kernel (here Wine's): with the mode on, nothing
is ever dequeued for such a call, so an operation the port did not complete itself would stay
PENDING for ever, its memory pinned. The others show that every way a completion can happen
inline reaches the caller exactly once, fairly, and from any thread.
"""

from __future__ import annotations

import socket
import threading

import pytest
import time
from contextlib import ExitStack

from helpers_io import (
    WAIT_S,
    make_listener,
    assert_nothing_queued,
    connected_pair,
    listener,  # noqa: F401 - a pytest fixture
    port,  # noqa: F401 - a pytest fixture
    stack,  # noqa: F401 - a pytest fixture
    wait_for,
)
from support import wine_deviation

from winiocp import AcceptOperation, CompletionPort, OpState, Outcome, Socket
from winiocp.errors import OperationPendingError
from winiocp.constants import CompletionNotificationModes, SocketType
from winiocp.port import orphaned_operation_count
from winiocp.raw import ffi, kernel32
from winiocp.constants import XP1_IFS_HANDLES, AddressFamily
from winiocp.sockets import provider_records


def test_every_ip_provider_here_returns_ifs_handles() -> None:
    records = provider_records()
    ip = [flags for family, _, flags in records
          if family in (AddressFamily.AF_INET, AddressFamily.AF_INET6)]
    assert len(ip) >= 4, records  # TCP and UDP, IPv4 and IPv6
    assert all(flags & XP1_IFS_HANDLES for flags in ip), records


def test_the_kernel_queues_no_packet_for_a_call_that_succeeds_at_once(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    # The mode set behind the wrapper's back: the wrapper expects a packet, none comes.
    sock, _client = connected_pair(port, listener, stack)
    assert kernel32.SetFileCompletionNotificationModes(
        ffi.cast("HANDLE", sock.fileno()),
        CompletionNotificationModes.FILE_SKIP_COMPLETION_PORT_ON_SUCCESS)
    sending = sock.send(b"x" * 100)
    assert int(sending.overlapped.Internal) == 0  # done: STATUS_SUCCESS, all bytes sent
    assert int(sending.overlapped.InternalHigh) == 100
    assert_nothing_queued(port)
    assert sending.state is OpState.PENDING  # and so it would stay: no completion will come


def test_an_inline_send_is_dequeued_like_any_completion(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    sock, client = connected_pair(port, listener, stack)
    assert sock.set_skip_on_success() and sock.skips_on_success
    sending = sock.send(b"y" * 100)
    assert sending.pending  # pending until its completion is handed out
    completion = wait_for(port, sending)
    assert completion.bytes_transferred == 100 and completion.key == sock.key
    assert not sending.pending
    assert_nothing_queued(port)  # once only
    assert client.recv(200) == b"y" * 100


def test_finish_inline_returns_an_inline_send_finished(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    sock, client = connected_pair(port, listener, stack)
    assert sock.set_skip_on_success()
    called: list[object] = []
    sending = sock.send(b"z" * 100, context=called.append, finish_inline=True)
    assert not sending.pending and sending.state is OpState.DONE  # nothing left to dequeue
    assert sending.bytes_transferred == 100 and sending.error == 0
    assert sending.context is None  # what tells it from a send whose packet is on its way
    assert port.pending_count == 0
    assert_nothing_queued(port)  # neither from the kernel nor from the inline queue
    assert not called
    assert client.recv(200) == b"z" * 100


def test_finish_inline_leaves_a_send_that_did_not_complete_at_once_pending(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    sock, _client = connected_pair(port, listener, stack)  # nobody reads: buffers fill
    assert sock.set_skip_on_success()
    big = b"q" * (1 << 20)
    marker = object()
    sends = [sock.send(big, finish_inline=True, context=marker) for _ in range(64)]
    still = [s for s in sends if s.pending]
    assert still, "64 MiB unread still all went out at once"
    assert all(s.context is marker for s in still)  # routed to it when its packet comes
    assert all(s.context is None for s in sends if not s.pending)
    assert port.pending_count == len(still)  # each one stays owned until its packet comes


def test_a_finished_send_is_reused_and_a_pending_one_is_refused(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    sock, client = connected_pair(port, listener, stack)
    sending = sock.send(b"first")
    with pytest.raises(OperationPendingError):
        sock.send(b"again", reuse=sending)  # rule 11: never two calls on one OVERLAPPED
    wait_for(port, sending)
    again = sock.send(b"second", reuse=sending)
    assert again is sending and sending.pending
    wait_for(port, sending)
    assert sending.bytes_transferred == len(b"second")
    client.settimeout(WAIT_S)
    received = b""
    while len(received) < len(b"firstsecond"):
        received += client.recv(64)
    assert received == b"firstsecond"
    other, _ = connected_pair(port, listener, stack)
    with pytest.raises(ValueError, match="another socket"):
        other.send(b"x", reuse=sending)
    receiving = sock.recv(16)
    with pytest.raises(ValueError, match="cannot be reused"):
        sock.send(b"x", reuse=receiving)  # type: ignore[arg-type]


def test_an_inline_receive_carries_its_data_both_ways_of_dequeuing(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    sock, client = connected_pair(port, listener, stack)
    assert sock.set_skip_on_success()
    client.sendall(b"hello")
    time.sleep(0.2)  # the bytes are in our receive buffer before the WSARecv
    receiving = sock.recv(64)
    (completion,) = port.get_many(WAIT_S)
    assert completion.operation is receiving and completion.outcome is Outcome.COMPLETED
    assert receiving.data == b"hello"
    client.close()
    time.sleep(0.2)
    closing = sock.recv(64, reuse=receiving)  # the FIN is there already: inline too
    completion = port.get(WAIT_S)
    assert completion.operation is closing and completion.outcome is Outcome.PEER_CLOSED


def test_an_inline_accept_gets_its_accept_context(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    assert listener.set_skip_on_success()
    client = stack.enter_context(socket.create_connection(listener.getsockname()[:2],
                                                          timeout=WAIT_S))
    time.sleep(0.2)  # the client waits in the backlog: AcceptEx succeeds at once
    accepting = listener.accept()
    stack.enter_context(accepting.accepted)
    wait_for(port, accepting)
    assert accepting.accepted.getpeername() == client.getsockname()  # SO_UPDATE_ACCEPT_CONTEXT


def test_datagram_sockets_keep_their_packets(port: CompletionPort) -> None:
    with Socket(type=SocketType.SOCK_DGRAM) as udp:
        assert not udp.set_skip_on_success() and not udp.skips_on_success


def test_a_socket_that_always_has_data_does_not_starve_the_kernels_queue(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    # A's receives always complete inline (its peer sent plenty); B's one byte comes as a
    # kernel packet. Without the alternation it would wait behind all of A's data.
    busy, busy_peer = connected_pair(port, listener, stack)
    quiet, quiet_peer = connected_pair(port, listener, stack)
    assert busy.set_skip_on_success()
    busy_peer.sendall(b"z" * 32768)
    time.sleep(0.3)
    waiting = quiet.recv(16)
    quiet_peer.sendall(b"!")
    time.sleep(0.3)  # B's packet is queued in the kernel before A's first receive
    receiving = busy.recv(16)
    for calls in range(1, 11):
        for completion in port.get_many(WAIT_S):
            if completion.operation is waiting:
                assert waiting.data == b"!"
                assert calls <= 3, f"B's packet came after {calls} dequeues"
                return
            assert completion.operation is receiving
            receiving = busy.recv(16, reuse=receiving)
    raise AssertionError("B's completion never came while A had data")


def test_an_inline_completion_of_a_thread_that_never_dequeues_reaches_a_waiting_thread(
        stack: ExitStack) -> None:
    # A CompletionPort of its own: this (main) thread must never have dequeued from it.
    with CompletionPort() as own_port:
        accepting, client = accept_client_on(own_port, make_listener(own_port, stack), stack)
        sock = accepting.accepted
        own_port.associate(sock)
        assert sock.set_skip_on_success()
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(own_port.get(WAIT_S)))
        waiter.start()
        time.sleep(0.2)  # the waiter is blocked in GetQueuedCompletionStatus
        sending = sock.send(b"ping")
        waiter.join(WAIT_S + 1)
        completion = got[0]
        assert getattr(completion, "operation", None) is sending, completion
        assert client.recv(10) == b"ping"


def accept_client_on(own_port: CompletionPort, server: Socket, stack: ExitStack
                     ) -> tuple[AcceptOperation, socket.socket]:
    """accept_client, but dequeued by a helper thread (the caller never dequeues)."""
    accepting = server.accept()
    stack.enter_context(accepting.accepted)
    client = stack.enter_context(socket.create_connection(server.getsockname()[:2],
                                                          timeout=WAIT_S))
    done: list[object] = []
    helper = threading.Thread(target=lambda: done.append(own_port.get(WAIT_S)))
    helper.start()
    helper.join(WAIT_S + 1)
    assert getattr(done[0], "operation", None) is accepting, done
    return accepting, client


def test_closing_the_port_lets_inline_completions_go(stack: ExitStack) -> None:
    before = orphaned_operation_count()
    own_port = CompletionPort()
    try:
        sock, _client = connected_pair(own_port, make_listener(own_port, stack), stack)
        assert sock.set_skip_on_success()
        sending = sock.send(b"never dequeued")
        assert own_port.pending_count == 1
    finally:
        own_port.close()
    assert sending.state is OpState.DONE
    assert orphaned_operation_count() == before  # the kernel holds none of its memory


@wine_deviation("DisconnectEx on a socket in skip-on-success mode finishes at once (Internal "
                "is STATUS_SUCCESS) yet reports ERROR_IO_PENDING, and no packet ever comes; "
                "on Windows ERROR_IO_PENDING always means a packet will be queued")
def test_a_disconnect_in_skip_mode_completes(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    sock, client = connected_pair(port, listener, stack)
    assert sock.set_skip_on_success()
    client.close()
    time.sleep(0.2)
    disconnecting = sock.disconnect()
    wait_for(port, disconnecting)
