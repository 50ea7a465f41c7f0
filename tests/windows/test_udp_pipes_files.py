"""Datagram sockets, named pipes and files through the same completion port (rule 8: any handle
that supports overlapped I/O works with a port), against the real kernel32/ws2_32."""

from __future__ import annotations

import gc
import socket
import weakref
from asyncio import windows_utils
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
import support
from helpers_io import (  # noqa: F401 - fixtures are found by name
    FAMILIES,
    LOOPBACK,
    STDLIB_FAMILY,
    WAIT_S,
    assert_nothing_queued,
    datagram,
    make_socket,
    port,
    stack,
    unique_pipe_name,
    wait_all,
    wait_for,
)

from winiocp import ClosedHandleError, CompletionPort, Failure, Handle, Outcome, Socket
from winiocp.constants import AddressFamily, SocketType, WinError
from winiocp.owner import weak_fileno

# -- UDP -------------------------------------------------------------------------------------------


def udp_pair(port: CompletionPort, stack: ExitStack, family: AddressFamily
             ) -> tuple[Socket, socket.socket]:
    """A wrapper UDP socket (bound, associated) and a bound stdlib peer, same family."""
    sock = make_socket(stack, family, SocketType.SOCK_DGRAM)
    sock.bind((LOOPBACK[family], 0))
    port.associate(sock)
    peer = stack.enter_context(socket.socket(STDLIB_FAMILY[family], socket.SOCK_DGRAM))
    peer.bind((LOOPBACK[family], 0))
    peer.settimeout(WAIT_S)
    return sock, peer


@pytest.mark.parametrize("family", FAMILIES)
def test_udp_recvfrom_and_sendto_both_ways(port: CompletionPort, stack: ExitStack,
                                           family: AddressFamily) -> None:
    sock, peer = udp_pair(port, stack, family)

    receive = sock.recvfrom(2048)
    peer.sendto(b"to the wrapper", sock.getsockname())
    assert wait_for(port, receive).bytes_transferred == 14
    assert datagram(receive) == b"to the wrapper"
    assert receive.peer == peer.getsockname()  # the full address, as the stdlib spells it

    send = sock.sendto(b"to the peer", peer.getsockname())
    assert wait_for(port, send).bytes_transferred == 11
    data, sender = peer.recvfrom(2048)
    assert (data, sender) == (b"to the peer", sock.getsockname())


def test_udp_keeps_datagram_boundaries(port: CompletionPort, stack: ExitStack) -> None:
    sock, peer = udp_pair(port, stack, AddressFamily.AF_INET)
    for sent in (b"one", b"two", b"three"):
        peer.sendto(sent, sock.getsockname())
    receive = sock.recvfrom(2048)
    for sent in (b"one", b"two", b"three"):
        assert wait_for(port, receive).bytes_transferred == len(sent)
        assert (datagram(receive), receive.peer) == (sent, peer.getsockname())
        if sent != b"three":
            assert sock.recvfrom(2048, reuse=receive) is receive  # rule 11: re-armed


def test_udp_between_two_wrapper_sockets(port: CompletionPort, stack: ExitStack) -> None:
    first, _ = udp_pair(port, stack, AddressFamily.AF_INET)
    second, _ = udp_pair(port, stack, AddressFamily.AF_INET)
    receive = second.recvfrom(64)
    send = first.sendto(b"wrapper to wrapper", second.getsockname())
    wait_all(port, receive, send)
    assert (datagram(receive), receive.peer) == (b"wrapper to wrapper", first.getsockname())


# -- named pipes -----------------------------------------------------------------------------------


def pipe_pair(port: CompletionPort, stack: ExitStack, *, client_first: bool
              ) -> tuple[Handle, Handle]:
    """A connected pipe: the server end (CreateNamedPipeW) and a client end (CreateFileW),
    both associated with ``port``. The client opens it before or after ConnectNamedPipe."""
    name = unique_pipe_name()
    server = stack.enter_context(Handle.create_named_pipe(name))
    port.associate(server)
    if client_first:
        client = stack.enter_context(Handle.open_file(name, write=True))
        connect = server.connect_pipe()
        # Already connected: ERROR_PIPE_CONNECTED, a success that queues no packet.
        assert not connect.pending and connect.error == 0
        assert_nothing_queued(port)
    else:
        connect = server.connect_pipe()
        assert connect.pending  # waits for a client
        assert_nothing_queued(port)
        client = stack.enter_context(Handle.open_file(name, write=True))
        assert wait_for(port, connect).bytes_transferred == 0
    port.associate(client)
    return server, client


@pytest.mark.parametrize("client_first", [False, True], ids=["server-waits", "client-first"])
def test_named_pipe_connect_then_both_directions(port: CompletionPort, stack: ExitStack,
                                                 client_first: bool) -> None:
    server, client = pipe_pair(port, stack, client_first=client_first)

    read = server.read(256)
    write = client.write(b"client to server")
    wait_all(port, read, write)
    assert (read.data, write.bytes_transferred) == (b"client to server", 16)

    read = client.read(256)
    write = server.write(bytearray(b"server to client"))
    wait_all(port, read, write)
    assert (read.data, write.bytes_transferred) == (b"server to client", 16)


def test_named_pipe_read_fails_when_the_client_closes(port: CompletionPort,
                                                      stack: ExitStack) -> None:
    server, client = pipe_pair(port, stack, client_first=False)
    read = server.read(64)
    assert client.close()
    completion = wait_for(port, read, Outcome.FAILED)
    assert completion.error == WinError.ERROR_BROKEN_PIPE
    assert completion.failure is Failure.OTHER
    with pytest.raises(BrokenPipeError):  # and the next read fails at once (rule 10)
        server.read(64)
    assert port.pending_count == 0


# -- files -----------------------------------------------------------------------------------------


def open_for_io(port: CompletionPort, stack: ExitStack, path: Path) -> Handle:
    handle = stack.enter_context(Handle.open_file(str(path), write=True, create=True))
    port.associate(handle)
    return handle


def test_file_writes_and_reads_at_offsets(port: CompletionPort, stack: ExitStack,
                                          tmp_path: Path) -> None:
    path = tmp_path / "offsets.bin"
    file = open_for_io(port, stack, path)
    writes = [file.write(b"AAAA", 0), file.write(bytearray(b"BBBBBB"), 10),
              file.write(memoryview(b"xxCCxx")[2:4], 20)]
    for completion, size in zip(wait_all(port, *writes), (4, 6, 2), strict=True):
        assert completion.bytes_transferred == size
    # Overwrite in the middle; the gap between writes reads as zeros.
    assert wait_for(port, file.write(b"ab", 12)).bytes_transferred == 2
    expected = b"AAAA" + bytes(6) + b"BBab" + b"BB" + bytes(4) + b"CC"
    assert path.read_bytes() == expected

    for offset, size in ((0, 4), (10, 6), (12, 2), (4, 6), (20, 2), (0, 22)):
        read = file.read(size, offset)
        assert wait_for(port, read).bytes_transferred == size
        assert read.data == expected[offset:offset + size], (offset, size)
    short = file.read(100, 18)  # straddles the end: a short read
    assert wait_for(port, short).bytes_transferred == 4
    assert short.data == expected[18:]


@pytest.mark.parametrize("offset", [22, 1000], ids=["at-eof", "past-eof"])
def test_file_read_at_eof_reports_handle_eof(port: CompletionPort, stack: ExitStack,
                                             tmp_path: Path, offset: int) -> None:
    file = open_for_io(port, stack, tmp_path / "eof.bin")
    wait_for(port, file.write(b"z" * 22, 0))
    try:
        read = file.read(10, offset)
    except OSError as error:  # Windows may fail the call at once...
        path = "synchronous"
        assert error.winerror == WinError.ERROR_HANDLE_EOF
    else:  # ...or report the end of file in the completion
        path = "completion"
        completion = wait_for(port, read, Outcome.FAILED)
        assert completion.error == WinError.ERROR_HANDLE_EOF
        assert completion.failure is Failure.OTHER and completion.bytes_transferred == 0
        exception = completion.exception()
        assert exception is not None and exception.winerror == WinError.ERROR_HANDLE_EOF
    assert port.pending_count == 0
    if support.UNDER_WINE:
        assert path == "completion", "Wine reports EOF through the completion packet"


@pytest.mark.parametrize("associated", [True, False], ids=["associated", "never-associated"])
def test_handle_closes_once_then_refuses_every_call(port: CompletionPort, tmp_path: Path,
                                                    associated: bool) -> None:
    pipe = Handle.create_named_pipe(unique_pipe_name())
    file = Handle.open_file(str(tmp_path / "closed.bin"), write=True, create=True)
    for handle in (pipe, file):
        if associated:
            port.associate(handle)
        assert handle.close() is True
        assert handle.closed and handle.close() is False
        calls: dict[str, Callable[[], object]] = {
            "handle": lambda: handle.handle,
            "read": lambda: handle.read(4, 0),
            "write": lambda: handle.write(b"data", 0),
            "connect_pipe": lambda: handle.connect_pipe(),
        }
        for name, call in calls.items():
            with pytest.raises(ClosedHandleError):
                call()
                pytest.fail(f"{name} on closed {handle!r} did not raise")
    assert port.pending_count == 0


@pytest.mark.parametrize("lender_goes", ["closed", "collected"])
def test_a_borrowed_pipe_view_refuses_calls_once_its_owner_lets_go(
        port: CompletionPort, lender_goes: str) -> None:
    """``Handle.borrow`` with ``weak_fileno``, as winiocp.aio views asyncio's PipeHandle: the
    view never keeps the owner alive, and once the owner closed the HANDLE (or was collected,
    which closes it) no call reaches the value."""
    ends = windows_utils.pipe(overlapped=(True, True))
    owner = windows_utils.PipeHandle(ends[0])
    other = windows_utils.PipeHandle(ends[1])
    try:
        view = Handle.borrow(owner.fileno(), "borrowed pipe end", weak_fileno(owner))
        port.associate(view)
        assert not view.closed
        if lender_goes == "closed":
            owner.close()
        else:
            collected = weakref.ref(owner)
            del owner
            gc.collect()
            assert collected() is None, "the view kept its owner alive"
        assert view.closed
        for call in (lambda: view.read(4), lambda: view.write(b"data"), lambda: view.handle):
            with pytest.raises(ClosedHandleError):
                call()
        assert port.pending_count == 0
    finally:
        other.close()
