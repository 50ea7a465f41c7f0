"""AcceptEx, ConnectEx, DisconnectEx and TransmitFile through the wrappers, against real Winsock.

Rule 7 of the notes is shown, not assumed: every socket ``Socket.accept`` hands out has
SO_UPDATE_ACCEPT_CONTEXT set, and the socket behaves like a connected one (getpeername,
getsockname, getsockopt, shutdown with the peer seeing EOF). The contrast (the same AcceptEx or
ConnectEx issued through the raw API, without the context update) is what Windows documents
as failing with WSAENOTCONN; Wine does not enforce it, which the strict Wine-only xfails record.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import support
from helpers_io import (  # noqa: F401 - fixtures are found by name
    BULK_WAIT_S,
    FAMILIES,
    WAIT_S,
    Digest,
    accept_client,
    assert_nothing_queued,
    connected_pair,
    kernel_finished,
    listener,
    make_listener,
    make_socket,
    port,
    pool,
    read_to_eof,
    read_to_eof_digest,
    receive_all,
    receive_exactly,
    require_family,
    result,
    stack,
    stdlib_client,
    unused_tcp_port,
    wait_for,
    wait_until,
)

from winiocp import (
    CompletionPort,
    Failure,
    Handle,
    OpKind,
    Outcome,
    Socket,
)
from winiocp._cdata import CData
from winiocp.addresses import Sockaddr
from winiocp.constants import (
    AddressFamily,
    Shutdown,
    SocketLevel,
    SocketOption,
    SocketType,
    WinError,
)
from winiocp.errors import REFUSED_ERRORS
from winiocp.raw import extension_functions, ffi, ws2_32
from winiocp.sockets import ACCEPT_ADDRESS_SIZE

#: Raw OVERLAPPEDs (and their buffers) issued by these tests. Kept for the life of the process:
#: if a test fails before dequeuing one, the kernel may still write into it.
KEEP_FOREVER: list[object] = []


# -- the raw calls, without the context update ---------------------------------------------------


@dataclass
class RawPending:
    """A raw overlapped call's memory: the OVERLAPPED and what the call writes."""

    overlapped: CData
    keep: tuple[CData, ...]

    @property
    def address(self) -> int:
        return int(ffi.cast("uintptr_t", self.overlapped))


def require_started(succeeded: bool, what: str) -> None:
    if not succeeded:
        error = ws2_32.WSAGetLastError()
        assert error == WinError.WSA_IO_PENDING, f"{what} failed at once: {error}"


def raw_accept_ex(listening: Socket, target: Socket) -> RawPending:
    """AcceptEx through the raw API: exactly what ``Socket.accept`` does, minus
    SO_UPDATE_ACCEPT_CONTEXT."""
    pending = RawPending(ffi.new("OVERLAPPED *"),
                         (ffi.new("char[]", 2 * ACCEPT_ADDRESS_SIZE), ffi.new("DWORD *")))
    KEEP_FOREVER.append(pending)
    accept_ex = extension_functions(listening.fileno()).AcceptEx
    require_started(bool(accept_ex(listening.fileno(), target.fileno(), pending.keep[0], 0,
                                   ACCEPT_ADDRESS_SIZE, ACCEPT_ADDRESS_SIZE, pending.keep[1],
                                   pending.overlapped)), "AcceptEx")
    return pending


def raw_connect_ex(sock: Socket, address: tuple[str, int]) -> RawPending:
    """ConnectEx through the raw API, minus SO_UPDATE_CONNECT_CONTEXT (``sock`` is bound)."""
    sockaddr = Sockaddr(sock.family, address)
    pending = RawPending(ffi.new("OVERLAPPED *"), (sockaddr.storage, ffi.new("DWORD *")))
    KEEP_FOREVER.append((pending, sockaddr))
    connect_ex = extension_functions(sock.fileno()).ConnectEx
    require_started(bool(connect_ex(sock.fileno(), sockaddr.pointer, sockaddr.length, ffi.NULL, 0,
                                    pending.keep[1], pending.overlapped)), "ConnectEx")
    return pending


def wait_raw(port: CompletionPort, pending: RawPending) -> None:
    """Dequeue the raw call's packet: a success for an OVERLAPPED no wrapper owns."""
    completion = wait_for(port, None)
    assert completion.overlapped == pending.address


def accepted_without_context(port: CompletionPort, listener: Socket, stack: ExitStack
                             ) -> tuple[Socket, socket.socket]:
    target = make_socket(stack)
    pending = raw_accept_ex(listener, target)
    client = stdlib_client(stack, listener.getsockname())
    wait_raw(port, pending)
    return target, client


def connected_without_context(port: CompletionPort, stack: ExitStack
                              ) -> tuple[Socket, socket.socket]:
    server = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
    sock = make_socket(stack)
    port.associate(sock)
    sock.bind(("127.0.0.1", 0))
    pending = raw_connect_ex(sock, server.getsockname())
    wait_raw(port, pending)
    peer = stack.enter_context(server.accept()[0])
    peer.settimeout(WAIT_S)
    return sock, peer


def assert_not_connected(call: Callable[[], object]) -> None:
    with pytest.raises(OSError) as caught:
        call()
    assert caught.value.winerror == WinError.WSAENOTCONN, caught.value


def assert_shutdown_sends_eof(sock: Socket, peer: socket.socket) -> None:
    """shutdown(SD_SEND) succeeds and the peer reads EOF (0 bytes)."""
    sock.shutdown(Shutdown.SD_SEND)
    assert peer.recv(16) == b"", "the peer did not see EOF after shutdown(SD_SEND)"


def assert_shutdown_sends_eof_after(sock: Socket, peer: socket.socket, data: bytes) -> None:
    """shutdown(SD_SEND) after ``data`` was sent: the peer reads exactly ``data``, then EOF."""
    sock.shutdown(Shutdown.SD_SEND)
    assert read_to_eof(peer) == data


# -- AcceptEx: the context is set on every accepted socket ---------------------------------------


def test_accepted_socket_works_like_a_connected_one(port: CompletionPort, listener: Socket,
                                                    stack: ExitStack) -> None:
    operation, client = accept_client(port, listener, stack)
    accepted = operation.accepted
    port.associate(accepted)

    assert operation.context_updated
    assert accepted.getpeername() == client.getsockname()
    assert accepted.getsockname() == client.getpeername() == listener.getsockname()
    assert accepted.getsockopt_int(SocketLevel.SOL_SOCKET, SocketOption.SO_TYPE) == \
        SocketType.SOCK_STREAM
    assert accepted.getsockopt_int(SocketLevel.SOL_SOCKET, SocketOption.SO_ACCEPTCONN) == 0
    assert accepted.getsockopt_int(SocketLevel.SOL_SOCKET, SocketOption.SO_ERROR) == 0

    # Half-close: the peer sees EOF, and the other direction still carries data.
    sent = accepted.send(b"last words")
    assert wait_for(port, sent).bytes_transferred == 10
    assert_shutdown_sends_eof_after(accepted, client, b"last words")
    client.sendall(b"still open")
    assert receive_all(port, accepted, 10) == b"still open"



@support.wine_deviation("getpeername works on an AcceptEx socket without "
                        "SO_UPDATE_ACCEPT_CONTEXT (Windows fails it with WSAENOTCONN)")
def test_without_accept_context_getpeername_fails(port: CompletionPort, listener: Socket,
                                                  stack: ExitStack) -> None:
    accepted, client = accepted_without_context(port, listener, stack)
    assert_not_connected(accepted.getpeername)
    # What the wrapper does after every AcceptEx repairs it.
    assert accepted._update_accept_context(listener) == 0
    assert accepted.getpeername() == client.getsockname()


@support.wine_deviation("shutdown works even without SO_UPDATE_ACCEPT_CONTEXT (on Windows it "
                        "fails with WSAENOTCONN)")
def test_without_accept_context_shutdown_fails(port: CompletionPort, listener: Socket,
                                               stack: ExitStack) -> None:
    accepted, client = accepted_without_context(port, listener, stack)
    assert_not_connected(lambda: accepted.shutdown(Shutdown.SD_SEND))
    assert accepted._update_accept_context(listener) == 0
    assert_shutdown_sends_eof(accepted, client)


def test_raw_acceptex_connection_is_real_even_without_context(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    """What Wine does without the context, recorded: the socket is connected, and both
    getpeername and shutdown work (the two xfails above are Wine deviations, not a broken
    raw call)."""
    accepted, client = accepted_without_context(port, listener, stack)
    if not support.UNDER_WINE:
        pytest.skip("records Wine's behaviour; Windows is checked by the two tests above")
    assert accepted.getpeername() == client.getsockname()
    assert_shutdown_sends_eof(accepted, client)


def test_accept_with_first_data(port: CompletionPort, listener: Socket,
                                stack: ExitStack) -> None:
    operation = listener.accept(recv_size=64)
    stack.enter_context(operation.accepted)
    client = stdlib_client(stack, listener.getsockname())
    # Connected, but AcceptEx with a receive size waits for data before it completes.
    assert_nothing_queued(port)
    assert operation.pending
    client.sendall(b"first data")

    completion = wait_for(port, operation)
    assert completion.bytes_transferred == 10
    assert operation.data == b"first data"
    assert operation.context_updated
    assert operation.remote_address == client.getsockname()
    assert operation.local_address == client.getpeername() == listener.getsockname()
    assert operation.accepted.getpeername() == operation.remote_address
    assert operation.accepted.getsockname() == operation.local_address


def test_twenty_accepts_in_a_row_each_get_the_context(port: CompletionPort, listener: Socket,
                                                      stack: ExitStack) -> None:
    # The first AcceptOperation is re-armed for the other 19 (rule 11): a reused OVERLAPPED
    # must not skip the context update either.
    operation, client = accept_client(port, listener, stack)
    seen = []
    for index in range(20):
        if index:
            again, client = accept_client(port, listener, stack, reuse=operation)
            assert again is operation
        accepted = operation.accepted
        assert operation.context_updated, f"accept #{index}"
        assert accepted.getpeername() == client.getsockname() == operation.remote_address, \
            f"accept #{index}"
        assert accepted.getsockname() == listener.getsockname()
        seen.append(accepted)
    assert len({id(sock) for sock in seen}) == 20, "every accept gets a socket of its own"


# -- ConnectEx ------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [b"", b"sent with the connect"], ids=["no-data", "first-data"])
@pytest.mark.parametrize("family", FAMILIES)
def test_connectex_sets_the_connect_context(port: CompletionPort, stack: ExitStack,
                                            family: AddressFamily, first: bytes) -> None:
    require_family(family)
    server = make_listener(port, stack, family)
    sock = make_socket(stack, family)
    port.associate(sock)
    operation = sock.connect(server.getsockname(), first)

    completion = wait_for(port, operation)
    assert completion.bytes_transferred == len(first)
    accept = server.accept(recv_size=len(first))
    stack.enter_context(accept.accepted)
    wait_for(port, accept)
    assert accept.data == first

    # SO_UPDATE_CONNECT_CONTEXT: the socket knows it is connected.
    assert sock.getpeername() == server.getsockname() == accept.local_address
    assert sock.getsockname() == accept.remote_address == accept.accepted.getpeername()
    port.associate(accept.accepted)
    receive = accept.accepted.recv(64)
    sock.shutdown(Shutdown.SD_SEND)
    assert wait_for(port, receive, Outcome.PEER_CLOSED).bytes_transferred == 0


@pytest.mark.parametrize("call", [
    pytest.param("getpeername", marks=support.wine_deviation(
        "getpeername works after ConnectEx without SO_UPDATE_CONNECT_CONTEXT (Windows fails it "
        "with WSAENOTCONN)")),
    pytest.param("shutdown", marks=support.wine_deviation(
        "shutdown works after ConnectEx without SO_UPDATE_CONNECT_CONTEXT (Windows fails it with "
        "WSAENOTCONN)")),
])
def test_without_connect_context_the_socket_is_not_connected(
        port: CompletionPort, stack: ExitStack, call: str) -> None:
    sock, peer = connected_without_context(port, stack)
    if call == "getpeername":
        assert_not_connected(sock.getpeername)
    else:
        assert_not_connected(lambda: sock.shutdown(Shutdown.SD_SEND))
    assert sock._update_connect_context() == 0
    assert sock.getpeername() == peer.getsockname()
    assert_shutdown_sends_eof(sock, peer)


def test_connect_to_a_refused_port_fails_as_refused(port: CompletionPort,
                                                    stack: ExitStack) -> None:
    sock = make_socket(stack)
    port.associate(sock)
    operation = sock.connect(unused_tcp_port())
    # Windows retries a refused SYN before giving up: allow it more than the usual wait.
    completion = wait_for(port, operation, Outcome.FAILED, timeout=15)
    assert completion.failure is Failure.REFUSED
    assert completion.error in REFUSED_ERRORS
    assert operation.failure is Failure.REFUSED
    assert isinstance(completion.exception(), ConnectionRefusedError)


# -- DisconnectEx(TF_REUSE_SOCKET) -----------------------------------------------------------------


def serve_then_disconnect_for_reuse(port: CompletionPort, listener: Socket,
                                    stack: ExitStack) -> Socket:
    """Accept a client, see its graceful close on the pending receive, DisconnectEx(reuse)."""
    operation, client = accept_client(port, listener, stack)
    sock = operation.accepted
    port.associate(sock)
    receive = sock.recv(64)
    client.close()
    wait_for(port, receive, Outcome.PEER_CLOSED)
    disconnect = sock.disconnect(reuse=True)
    completion = wait_for(port, disconnect)  # DisconnectEx produces a packet too (rule 9)
    assert completion.operation is not None and completion.operation.kind is OpKind.DISCONNECT
    return sock


def test_disconnect_reuse_then_accept_again_on_the_same_socket(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    sock = serve_then_disconnect_for_reuse(port, listener, stack)
    second, client = accept_client(port, listener, stack, accept_socket=sock)
    assert second.accepted is sock
    assert second.context_updated
    assert sock.getpeername() == client.getsockname() == second.remote_address
    assert sock.getsockname() == listener.getsockname()


@support.wine_deviation("a socket reused after DisconnectEx(TF_REUSE_SOCKET) keeps its SD_SEND "
                        "shutdown (WSASend fails at once with WSAESHUTDOWN) and receives nothing "
                        "(a WSARecv, or an AcceptEx with a receive size, never completes)")
def test_disconnect_reuse_then_echo_on_the_same_socket(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    sock = serve_then_disconnect_for_reuse(port, listener, stack)
    _, client = accept_client(port, listener, stack, accept_socket=sock)
    # The server greets, then echoes what comes back, keeping a receive pending (rule 1).
    greeting = sock.send(b"ready")
    assert wait_for(port, greeting).bytes_transferred == 5
    assert receive_exactly(client, 5) == b"ready"
    receive = sock.recv(64)
    client.sendall(b"echo me")
    assert wait_for(port, receive).bytes_transferred == 7
    echo = sock.send(receive.data)
    assert wait_for(port, echo).bytes_transferred == 7
    assert receive_exactly(client, 7) == b"echo me"


# -- TransmitFile ---------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 300_001], ids=["whole-file", "first-300001-bytes"])
def test_transmit_file_sends_head_file_and_tail(port: CompletionPort, listener: Socket,
                                                stack: ExitStack, pool: ThreadPoolExecutor,
                                                tmp_path: Path, count: int) -> None:
    content = os.urandom(1 << 20)
    path = tmp_path / "payload.bin"
    path.write_bytes(content)
    head, tail = b"HEAD:" + os.urandom(100), os.urandom(77) + b":TAIL"
    expected = head + (content[:count] if count else content) + tail

    sock, client = connected_pair(port, listener, stack)
    client.settimeout(BULK_WAIT_S)
    reader = pool.submit(read_to_eof_digest, client)
    file = stack.enter_context(Handle.open_file(str(path)))
    operation = sock.transmit_file(file, count, head=head, tail=tail)
    completion = wait_for(port, operation, timeout=BULK_WAIT_S)
    assert completion.bytes_transferred == len(expected)
    sock.shutdown(Shutdown.SD_SEND)
    assert result(reader, BULK_WAIT_S) == Digest.of(expected)


# -- regressions of library bugs found by these tests (fixed in eaf820d) ---------------------------


def test_listener_closed_before_its_accept_is_dequeued(port: CompletionPort, listener: Socket,
                                                       stack: ExitStack) -> None:
    """The AcceptEx completed while the listener was open; the listener is closed before the
    packet is dequeued. The dequeue must report it (it used to raise ClosedHandleError from
    get(), losing the packet), as a failure: the context cannot be set any more."""
    operation = listener.accept()
    stack.enter_context(operation.accepted)
    stdlib_client(stack, listener.getsockname())
    wait_until(lambda: kernel_finished(operation), what="AcceptEx completion")
    assert listener.close()
    completion = wait_for(port, operation, Outcome.FAILED)
    assert completion.error == WinError.WSAENOTSOCK
    assert not operation.context_updated
    assert port.pending_count == 0
    assert not operation.accepted.closed  # still the caller's to close


def test_accept_operation_is_not_reused_on_another_listener(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    """An AcceptOperation belongs to its listener: re-arming it on another one is refused (it
    used to be allowed, and SO_UPDATE_ACCEPT_CONTEXT was then set with the first listener's
    SOCKET, or get() raised once that listener was closed)."""
    first, _ = accept_client(port, listener, stack)
    other = make_listener(port, stack)
    with pytest.raises(ValueError, match="another socket"):
        other.accept(reuse=first)
    assert not first.pending and port.pending_count == 0
    # On its own listener it is re-armed as usual.
    again, client = accept_client(port, listener, stack, reuse=first)
    assert again is first and first.context_updated
    assert first.accepted.getpeername() == client.getsockname()


@pytest.mark.parametrize("associated", [
    pytest.param(True, id="target-associated"),
    pytest.param(False, id="target-not-associated"),
])
def test_to_stdlib_refused_while_the_socket_is_a_pending_accept_target(
        port: CompletionPort, listener: Socket, stack: ExitStack, associated: bool) -> None:
    """A socket waiting in an AcceptEx is in use even though the listener owns the operation
    (to_stdlib used to give it away, and the accept then failed with WSAENOTSOCK)."""
    target = make_socket(stack)
    if associated:
        port.associate(target)
    operation = listener.accept(accept_socket=target)
    try:
        stack.enter_context(target.to_stdlib())
    except RuntimeError as refused:
        assert "pending" in str(refused)
    client = stdlib_client(stack, listener.getsockname())
    completion = port.get(WAIT_S)
    assert completion.operation is operation
    assert not target.closed, (
        f"to_stdlib() gave away a socket with an AcceptEx pending on it; the accept then ended "
        f"{completion!r}")
    assert completion.outcome is Outcome.COMPLETED and operation.context_updated
    assert target.getpeername() == client.getsockname()
