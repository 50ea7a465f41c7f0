"""``Socket`` basics against real Winsock: creation, inheritance, adoption to and from the stdlib,
option helpers, closing exactly once (rule 6), scatter/gather, zero-byte and bulk transfers."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
import support
from helpers_io import (  # noqa: F401 - fixtures are found by name
    BULK_WAIT_S,
    FAMILIES,
    LOOPBACK,
    WAIT_S,
    Digest,
    assert_nothing_queued,
    connected_pair,
    listener,
    make_socket,
    pool,
    port,
    read_to_eof_digest,
    receive_all,
    receive_exactly,
    recv_into_fully,
    remaining_views,
    result,
    stack,
    wait_all,
    wait_for,
)

from winiocp import ClosedHandleError, CompletionPort, Failure, Handle, Outcome, Socket
from winiocp.constants import (
    AddressFamily,
    IPProto,
    Shutdown,
    SocketLevel,
    SocketOption,
    SocketType,
    WinError,
    WSASocketFlags,
)
from winiocp.operations import BufferLike
from winiocp.raw import ffi, ws2_32

TYPES = [pytest.param(SocketType.SOCK_STREAM, id="tcp"),
         pytest.param(SocketType.SOCK_DGRAM, id="udp")]


# -- creation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_create_and_bind(stack: ExitStack, family: AddressFamily, kind: SocketType) -> None:
    sock = make_socket(stack, family, kind)
    assert (sock.family, sock.type) == (family, kind)
    assert sock.getsockopt_int(SocketLevel.SOL_SOCKET, SocketOption.SO_TYPE) == kind
    sock.bind((LOOPBACK[family], 0))
    name = sock.getsockname()
    assert name[0] == LOOPBACK[family] and name[1] > 0
    assert len(name) == (2 if family == AddressFamily.AF_INET else 4)


@pytest.mark.parametrize(("family", "kind"), [
    (AddressFamily.AF_UNSPEC, SocketType.SOCK_STREAM),
    (99, SocketType.SOCK_STREAM),
    (AddressFamily.AF_INET, 3),  # SOCK_RAW
    (AddressFamily.AF_INET6, 5),  # SOCK_SEQPACKET
])
def test_bad_family_or_type_raises_value_error(family: int, kind: int) -> None:
    with pytest.raises(ValueError, match="family" if kind in (1, 2) else "type"):
        Socket(family, kind)


def test_sockets_are_not_inheritable(port: CompletionPort, listener: Socket,
                                     stack: ExitStack) -> None:
    """WSA_FLAG_NO_HANDLE_INHERIT, read back with GetHandleInformation (through the stdlib's
    ``os.get_handle_inheritable``: no new declaration needed)."""
    # The check can tell: a raw socket made without the flag is inheritable.
    raw = ws2_32.WSASocketW(AddressFamily.AF_INET, SocketType.SOCK_STREAM, IPProto.IPPROTO_TCP,
                            ffi.NULL, 0, WSASocketFlags.WSA_FLAG_OVERLAPPED)
    try:
        assert os.get_handle_inheritable(raw)
    finally:
        ws2_32.closesocket(raw)
    sock, _ = connected_pair(port, listener, stack)  # made by accept(), not by the test
    for made in (make_socket(stack), make_socket(stack, type=SocketType.SOCK_DGRAM), listener,
                 sock):
        assert not os.get_handle_inheritable(made.fileno()), made


# -- adopting stdlib sockets -----------------------------------------------------------------------


def test_from_stdlib_to_stdlib_round_trip(port: CompletionPort, stack: ExitStack) -> None:
    server = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
    client = stack.enter_context(socket.create_connection(server.getsockname()))
    peer = stack.enter_context(server.accept()[0])
    peer.settimeout(WAIT_S)
    value = client.fileno()

    sock = stack.enter_context(Socket.from_stdlib(client))
    assert client.fileno() == -1, "the stdlib object must be detached"
    assert sock.fileno() == value
    assert (sock.family, sock.type) == (AddressFamily.AF_INET, SocketType.SOCK_STREAM)
    assert sock.getpeername() == peer.getsockname()
    port.associate(sock)
    send = sock.send(b"from the wrapper")
    assert wait_for(port, send).bytes_transferred == 16
    assert receive_exactly(peer, 16) == b"from the wrapper"
    peer.sendall(b"to the wrapper")
    assert receive_all(port, sock, 14) == b"to the wrapper"

    back = stack.enter_context(sock.to_stdlib())
    assert sock.closed and not sock.close(), "the wrapper gave its SOCKET away"
    with pytest.raises(ClosedHandleError):
        sock.fileno()
    assert back.fileno() == value
    back.settimeout(WAIT_S)
    back.sendall(b"stdlib again")
    assert receive_exactly(peer, 12) == b"stdlib again"
    peer.sendall(b"both ways")
    assert receive_exactly(back, 9) == b"both ways"


def test_to_stdlib_refused_while_an_operation_is_pending(port: CompletionPort, listener: Socket,
                                                        stack: ExitStack) -> None:
    sock, client = connected_pair(port, listener, stack)
    receive = sock.recv(16)
    with pytest.raises(RuntimeError, match="pending"):
        sock.to_stdlib()
    assert not sock.closed
    client.sendall(b"still mine")
    assert wait_for(port, receive).operation is receive and receive.data == b"still mine"
    back = stack.enter_context(sock.to_stdlib())  # nothing pending any more
    back.settimeout(WAIT_S)
    client.sendall(b"now yours")
    assert receive_exactly(back, 9) == b"now yours"


@pytest.mark.parametrize("listening", [None, True], ids=["asked", "told"])
def test_a_borrowed_listener_accepts_and_refuses_receives(listening: bool | None,
                                                          port: CompletionPort,
                                                          stack: ExitStack) -> None:
    """``Socket.borrow`` learns that a stdlib socket listens from Windows, or from the
    caller's ``listening=True``; either way the view accepts and refuses stream I/O."""
    lender = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
    view = Socket.borrow(lender, listening=listening)
    port.associate(view)
    with pytest.raises(ValueError, match="listening"):
        view.recv(16)
    accept = view.accept()
    client = stack.enter_context(socket.create_connection(lender.getsockname()))
    accepted = wait_for(port, accept).operation
    assert accepted is accept and accept.accepted is not None
    stack.enter_context(accept.accepted)
    assert accept.remote_address == client.getsockname()


@support.wine_deviation("AcceptEx on a socket that does not listen, and WSARecv on one that "
                        "does, pend (nothing ever completes them) instead of failing at once")
@pytest.mark.parametrize("told", ["listening", "connected"])
def test_a_call_a_wrongly_told_view_lets_through_is_refused_by_windows(
        told: str, port: CompletionPort, stack: ExitStack) -> None:
    """Told wrongly, a view passes a call it should have refused, and Windows refuses it at
    once: AcceptEx on a socket that does not listen fails with WSAEINVAL ("listen was not
    invoked prior to AcceptEx"), WSARecv on a listener with WSAENOTCONN ("the socket is not
    connected"); nothing is left pending."""
    call: Callable[[], object]
    if told == "listening":
        lender = stack.enter_context(socket.socket())
        view = Socket.borrow(lender, listening=True)
        call, expected = view.accept, WinError.WSAEINVAL
    else:
        lender = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        view = Socket.borrow(lender, listening=False)
        call, expected = (lambda: view.recv(16)), WinError.WSAENOTCONN
    port.associate(view)
    try:
        with pytest.raises(OSError) as error:
            call()
        assert error.value.winerror == expected
    finally:  # (under Wine the call pends: cancel it and take its completion)
        view.cancel()
        while port.pending_count and port.get(WAIT_S).outcome is not Outcome.TIMED_OUT:
            pass
    assert port.pending_count == 0


def test_to_stdlib_gives_a_blocking_socket(stack: ExitStack, pool: ThreadPoolExecutor) -> None:
    """Regression (fixed in eaf820d): a stdlib socket with a time-out is non-blocking at the
    Winsock level; after from_stdlib/to_stdlib the new socket.socket says it is blocking, and
    its recv() used to raise BlockingIOError (WSAEWOULDBLOCK) instead of waiting."""
    server = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
    client = socket.create_connection(server.getsockname(), timeout=WAIT_S)  # non-blocking
    peer = stack.enter_context(server.accept()[0])
    back = stack.enter_context(stack.enter_context(Socket.from_stdlib(client)).to_stdlib())
    assert back.gettimeout() is None  # what the stdlib object claims: a blocking socket
    # A kernel-side receive time-out bounds the blocking recv below (it leaves Python's own
    # time-out, and so the claim above, alone).
    back.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("<I", int(WAIT_S * 1000)))
    def send_late() -> None:
        time.sleep(0.3)
        peer.sendall(b"late")

    late = pool.submit(send_late)
    assert back.recv(16) == b"late"
    result(late)


# -- options ---------------------------------------------------------------------------------------


def test_option_helpers_round_trip(stack: ExitStack) -> None:
    sock = make_socket(stack)
    assert sock.get_linger() == (False, 0)
    sock.set_linger(True, 7)
    assert sock.get_linger() == (True, 7)
    sock.set_linger(True, 0)
    assert sock.get_linger() == (True, 0)
    sock.set_linger(False)
    assert sock.get_linger()[0] is False

    assert sock.get_nodelay() is False
    sock.set_nodelay(True)
    assert sock.get_nodelay() is True
    sock.set_nodelay(False)
    assert sock.get_nodelay() is False

    sock.set_buffer_sizes(receive=32768, send=16384)
    assert sock.get_buffer_sizes() == (32768, 16384)
    sock.set_buffer_sizes(send=65536)  # one at a time leaves the other alone
    assert sock.get_buffer_sizes() == (32768, 65536)

    reuse = (SocketLevel.SOL_SOCKET, SocketOption.SO_REUSEADDR)
    assert sock.getsockopt_int(*reuse) == 0
    sock.set_reuse_address(True)
    assert sock.getsockopt_int(*reuse) == 1
    sock.set_reuse_address(False)
    assert sock.getsockopt_int(*reuse) == 0


def test_exclusive_address_use(stack: ExitStack) -> None:
    sock = make_socket(stack)
    exclusive = (SocketLevel.SOL_SOCKET, SocketOption.SO_EXCLUSIVEADDRUSE)
    assert sock.getsockopt_int(*exclusive) == 0
    sock.set_exclusive_address_use(True)
    assert sock.getsockopt_int(*exclusive) == 1
    # Windows refuses the combination with SO_REUSEADDR, in either order (WSAEINVAL).
    other = make_socket(stack)
    other.set_reuse_address(True)
    with pytest.raises(OSError) as caught:
        other.set_exclusive_address_use(True)
    assert caught.value.winerror == WinError.WSAEINVAL


@pytest.mark.parametrize(("call", "error"), [
    (lambda s: s.set_linger(True, 65536), ValueError),
    (lambda s: s.set_linger(True, -1), ValueError),
    (lambda s: s.set_buffer_sizes(receive=-1), ValueError),
    (lambda s: s.set_buffer_sizes(send=1 << 32), OverflowError),
    (lambda s: s.shutdown(3), ValueError),
    (lambda s: s.getsockopt(SocketLevel.SOL_SOCKET, SocketOption.SO_TYPE, -4), ValueError),
], ids=["linger-too-long", "linger-negative", "rcvbuf-negative", "sndbuf-over-dword",
        "shutdown-how", "getsockopt-size"])
def test_option_helpers_reject_bad_values(stack: ExitStack, call: Callable[[Socket], object],
                                          error: type[Exception]) -> None:
    sock = make_socket(stack)
    with pytest.raises(error):
        call(sock)
    assert sock.get_linger() == (False, 0)  # nothing reached the socket


@support.wine_deviation("closesocket after SO_LINGER {1, 0} ends the connection with FIN, not "
                        "RST: the peer reads EOF (the stdlib socket module behaves the same)")
def test_linger_zero_close_resets_the_peer(port: CompletionPort, listener: Socket,
                                           stack: ExitStack) -> None:
    """Rule 5: SO_LINGER {1, 0} then closesocket sends RST instead of FIN."""
    sock, client = connected_pair(port, listener, stack)
    sock.set_linger(True, 0)
    assert sock.close()
    with pytest.raises(ConnectionResetError):
        client.recv(16)


# -- closing exactly once (rule 6) -----------------------------------------------------------------


def new_socket_with_value(stack: ExitStack, value: int, attempts: int = 32) -> Socket:
    """A new socket that Windows gave the SOCKET value ``value`` (misses stay open, so they
    cannot be handed out again)."""
    for _ in range(attempts):
        sock = make_socket(stack)
        if sock.fileno() == value:
            return sock
    pytest.skip(f"Windows did not hand the closed value {value} to any of {attempts} sockets")


def closed_socket_calls(tmp_path: Path, stack: ExitStack) -> dict[str, Callable[[Socket], object]]:
    """Every call a TCP socket offers, each given valid arguments."""
    path = tmp_path / "file.bin"
    path.write_bytes(b"x" * 10)
    file = stack.enter_context(Handle.open_file(str(path)))
    return {
        "fileno": lambda s: s.fileno(),
        "bind": lambda s: s.bind(("127.0.0.1", 0)),
        "listen": lambda s: s.listen(),
        "getsockname": lambda s: s.getsockname(),
        "getpeername": lambda s: s.getpeername(),
        "shutdown": lambda s: s.shutdown(Shutdown.SD_BOTH),
        "setsockopt": lambda s: s.setsockopt(SocketLevel.SOL_SOCKET, SocketOption.SO_KEEPALIVE, 1),
        "getsockopt": lambda s: s.getsockopt(SocketLevel.SOL_SOCKET, SocketOption.SO_TYPE),
        "getsockopt_int": lambda s: s.getsockopt_int(SocketLevel.SOL_SOCKET,
                                                     SocketOption.SO_TYPE),
        "set_linger": lambda s: s.set_linger(True, 0),
        "get_linger": lambda s: s.get_linger(),
        "set_nodelay": lambda s: s.set_nodelay(True),
        "get_nodelay": lambda s: s.get_nodelay(),
        "set_buffer_sizes": lambda s: s.set_buffer_sizes(4096, 4096),
        "get_buffer_sizes": lambda s: s.get_buffer_sizes(),
        "set_reuse_address": lambda s: s.set_reuse_address(True),
        "set_exclusive_address_use": lambda s: s.set_exclusive_address_use(True),
        "recv": lambda s: s.recv(16),
        "recv_into": lambda s: s.recv_into([bytearray(8), bytearray(8)]),
        "send": lambda s: s.send(b"data"),
        "connect": lambda s: s.connect(("127.0.0.1", 9)),
        "disconnect": lambda s: s.disconnect(reuse=True),
        "transmit_file": lambda s: s.transmit_file(file),
        "cancel": lambda s: s.cancel(),
        "to_stdlib": lambda s: s.to_stdlib(),
    }


def assert_all_raise_closed(sock: Socket, calls: dict[str, Callable[[Socket], object]]) -> None:
    """Every call raises ClosedHandleError (reported together, by name, if some do not)."""
    wrong = {}
    for name, call in calls.items():
        try:
            call(sock)
        except ClosedHandleError:
            continue
        except Exception as exc:  # noqa: BLE001 - reported below, by call
            wrong[name] = repr(exc)
        else:
            wrong[name] = "no exception"
    assert not wrong, f"calls on a closed socket that did not raise ClosedHandleError: {wrong}"


def test_close_twice_returns_true_then_false(stack: ExitStack) -> None:
    sock = make_socket(stack)
    assert not sock.closed
    assert sock.close() is True
    assert sock.closed
    assert sock.close() is False
    assert sock.close() is False


def test_closed_wrapper_never_touches_a_reused_value(port: CompletionPort, listener: Socket,
                                                     stack: ExitStack, tmp_path: Path) -> None:
    calls = closed_socket_calls(tmp_path, stack)
    old = make_socket(stack)
    port.associate(old)
    value = old.fileno()
    assert old.close()
    new = new_socket_with_value(stack, value)  # the OS recycled the value (rule 6)

    assert_all_raise_closed(old, calls)
    assert old.close() is False  # and no second closesocket reached the new socket
    with pytest.raises(ValueError, match="already associated"):
        port.associate(old)  # associated once, for good

    # None of the calls above reached the new owner of the value: its options are the defaults,
    # it is neither bound nor listening nor shut down, and it works.
    assert new.get_linger() == (False, 0)
    assert new.get_nodelay() is False
    assert new.getsockopt_int(SocketLevel.SOL_SOCKET, SocketOption.SO_KEEPALIVE) == 0
    assert new.getsockopt_int(SocketLevel.SOL_SOCKET, SocketOption.SO_ACCEPTCONN) == 0
    with pytest.raises(OSError) as unbound:
        new.getsockname()
    assert unbound.value.winerror == WinError.WSAEINVAL
    port.associate(new)
    connect = new.connect(listener.getsockname(), b"new owner")
    accept = listener.accept(recv_size=9)
    stack.enter_context(accept.accepted)
    wait_all(port, connect, accept)
    assert accept.data == b"new owner"
    assert new.getpeername() == listener.getsockname()


def test_closed_listener_and_datagram_socket_raise_closed(port: CompletionPort,
                                                          listener: Socket,
                                                          stack: ExitStack) -> None:
    target = make_socket(stack)
    assert listener.close()
    with pytest.raises(ClosedHandleError):
        listener.accept(target)
    with pytest.raises(ClosedHandleError):
        listener.accept()
    assert not target.closed  # the caller's accept socket is left alone

    live = stack.enter_context(Socket(type=SocketType.SOCK_STREAM))
    live.bind(("127.0.0.1", 0))
    live.listen()
    port.associate(live)
    assert target.close()
    with pytest.raises(ClosedHandleError):
        live.accept(target)  # a closed accept socket is refused too

    udp = make_socket(stack, type=SocketType.SOCK_DGRAM)
    port.associate(udp)
    udp.bind(("127.0.0.1", 0))
    assert udp.close()
    with pytest.raises(ClosedHandleError):
        udp.recvfrom(16)
    with pytest.raises(ClosedHandleError):
        udp.sendto(b"x", ("127.0.0.1", 9))
    assert port.pending_count == 0


def test_closed_unassociated_socket_raises_closed(port: CompletionPort, stack: ExitStack,
                                                  tmp_path: Path) -> None:
    """Regression (fixed in eaf820d): a closed socket never associated with a port used to
    raise RuntimeError("associate ... with a CompletionPort first") from its overlapped calls,
    advice that port.associate() then refused with ClosedHandleError."""
    calls = closed_socket_calls(tmp_path, stack)
    sock = make_socket(stack)
    assert sock.close()
    assert_all_raise_closed(sock, calls)
    with pytest.raises(ClosedHandleError):
        port.associate(sock)
    udp = make_socket(stack, type=SocketType.SOCK_DGRAM)
    assert udp.close()
    with pytest.raises(ClosedHandleError):
        udp.recvfrom(16)
    with pytest.raises(ClosedHandleError):
        udp.sendto(b"x", ("127.0.0.1", 9))


# -- scatter / gather ------------------------------------------------------------------------------


def test_gather_send_arrives_in_order(port: CompletionPort, listener: Socket,
                                      stack: ExitStack) -> None:
    sock, client = connected_pair(port, listener, stack)
    parts: list[BufferLike] = [b"alpha|", bytearray(b"beta|"),
                               memoryview(b"..gamma|..")[2:-2], b"", b"delta"]
    send = sock.send(parts)
    expected = b"alpha|beta|gamma|delta"
    assert wait_for(port, send).bytes_transferred == len(expected)
    assert receive_exactly(client, len(expected)) == expected


def test_scatter_recv_into_fills_buffers_in_order(port: CompletionPort, listener: Socket,
                                                  stack: ExitStack) -> None:
    sock, client = connected_pair(port, listener, stack)
    arena, extra = bytearray(24), bytearray(9)
    view = memoryview(arena)
    buffers: list[BufferLike] = [view[0:8], view[8:24], extra]
    payload = bytes(range(33))

    receive = sock.recv_into(buffers)
    client.sendall(payload)
    received = wait_for(port, receive).bytes_transferred
    assert received > 0
    assert receive.data == payload[:received]  # .data gathers the buffers in order
    recv_into_fully(port, sock, remaining_views(buffers, received))  # if TCP split it
    assert bytes(arena) == payload[:24]
    assert bytes(extra) == payload[24:]


@pytest.mark.parametrize(("buffer", "message"), [
    pytest.param(b"read-only", "writable", id="read-only"),
    pytest.param(memoryview(bytearray(8))[::2], "contiguous", id="non-contiguous"),
])
def test_recv_into_refuses_buffers_it_cannot_write(port: CompletionPort, listener: Socket,
                                                   stack: ExitStack, buffer: BufferLike,
                                                   message: str) -> None:
    """Regression (fixed in eaf820d): cffi raises BufferError for both, and the friendly
    TypeErrors of operations.pin() were dead code."""
    sock, _ = connected_pair(port, listener, stack)
    try:
        with pytest.raises(TypeError, match=message):
            sock.recv_into([bytearray(4), buffer])
    finally:
        assert port.pending_count == 0  # refused before anything reached Winsock


# -- zero-byte and bulk transfers ------------------------------------------------------------------


def test_zero_byte_recv_waits_for_data_without_consuming_it(port: CompletionPort,
                                                            listener: Socket,
                                                            stack: ExitStack) -> None:
    sock, client = connected_pair(port, listener, stack)
    probe = sock.recv(0)
    assert_nothing_queued(port)  # no data yet: it stays pending
    assert probe.pending
    client.sendall(b"payload")
    completion = wait_for(port, probe)  # COMPLETED, not PEER_CLOSED: its buffer is empty
    assert completion.bytes_transferred == 0 and probe.data == b""
    receive = sock.recv(64)
    assert wait_for(port, receive).bytes_transferred == 7
    assert receive.data == b"payload"


def test_large_send_arrives_whole(port: CompletionPort, listener: Socket, stack: ExitStack,
                                  pool: ThreadPoolExecutor) -> None:
    data = os.urandom(8 << 20)
    sock, client = connected_pair(port, listener, stack)
    client.settimeout(BULK_WAIT_S)
    reader = pool.submit(read_to_eof_digest, client)
    send = sock.send(data)
    assert wait_for(port, send, timeout=BULK_WAIT_S).bytes_transferred == len(data)
    sock.shutdown(Shutdown.SD_SEND)
    assert result(reader, BULK_WAIT_S) == Digest(len(data), hashlib.sha256(data).hexdigest())


def test_cancelled_receive_reports_cancelled(port: CompletionPort, listener: Socket,
                                             stack: ExitStack) -> None:
    sock, _ = connected_pair(port, listener, stack)
    receive = sock.recv(16)
    assert sock.cancel(receive)
    completion = wait_for(port, receive, Outcome.FAILED)
    assert completion.failure is Failure.CANCELLED
    assert completion.error == WinError.ERROR_OPERATION_ABORTED
    assert sock.cancel(receive) is False  # already done

