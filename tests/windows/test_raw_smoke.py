"""Smoke tests of the raw layer: real completion ports and real Winsock, no wrappers, no mocks.

Every test drives ``winiocp.raw`` (cffi calls typed by ``_api.py``) against the system's
kernel32/ws2_32, with stdlib ``socket`` peers on 127.0.0.1, and checks what Windows reports.

Two rules hold throughout: each OVERLAPPED and every buffer it uses stays referenced (a
``Pending``, recorded in ``IN_FLIGHT``) until its completion has been dequeued, because Windows
writes into them until then, even when a test fails half-way; and every wait on the port is
bounded, so a broken binding fails instead of hanging.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import support

from winiocp import raw
from winiocp.__main__ import EXAMPLE, load_example
from winiocp.__main__ import main as cli_main
from winiocp._cdata import CData
from winiocp.constants import (
    INVALID_SOCKET,
    MAKEWORD_2_2,
    AddressFamily,
    IPProto,
    SocketLevel,
    SocketOption,
    SocketType,
    TransmitFileFlags,
    WinError,
    WSASocketFlags,
)
from winiocp.raw import (
    INVALID_HANDLE,
    ExtensionFunctions,
    extension_functions,
    ffi,
    kernel32,
    lookups_done,
    ws2_32,
)

Address = tuple[str, int]

#: Upper bound of every wait, so that a lost completion fails the test instead of hanging it.
WAIT_MS = 5000
WAIT_S = WAIT_MS / 1000
LOOPBACK = "127.0.0.1"
#: Completion keys: they tell which handle a packet belongs to.
LISTEN_KEY = 1
ACCEPTED_KEY = 2
#: AcceptEx needs 16 bytes more than the largest address of the transport, per address.
ADDRESS_SPACE = ffi.sizeof("struct sockaddr_in") + 16
#: What a pending receive may fail with when the peer resets the connection.
RESET_ERRORS = {
    WinError.ERROR_NETNAME_DELETED,
    WinError.ERROR_CONNECTION_ABORTED,
    WinError.WSAECONNRESET,
    WinError.WSAECONNABORTED,
}


def describe(code: int) -> str:
    """A Windows error code with its message, for assertion failures."""
    return f"{code} ({ffi.getwinerror(code)[1]})"


def last_winsock_error(what: str) -> str:
    """Why the Winsock call just made failed (cffi keeps the error of its last call)."""
    return f"{what} failed: {describe(ws2_32.WSAGetLastError())}"


def as_handle(sock: int) -> CData:
    """A SOCKET where kernel32 wants a HANDLE: base-provider sockets are kernel handles."""
    return ffi.cast("HANDLE", sock)


@contextmanager
def completion_port() -> Iterator[CData]:
    """A new completion port (no file handle yet), closed on exit."""
    port = kernel32.CreateIoCompletionPort(INVALID_HANDLE, ffi.NULL, 0, 0)
    assert port != ffi.NULL, f"CreateIoCompletionPort: {describe(kernel32.GetLastError())}"
    try:
        yield port
    finally:
        kernel32.CloseHandle(port)


def associate(port: CData, sock: int, key: int) -> None:
    """Tie ``sock`` to ``port``: its completions are queued there under ``key``."""
    result = kernel32.CreateIoCompletionPort(as_handle(sock), port, key, 0)
    assert result == port, f"associating a socket: {describe(kernel32.GetLastError())}"


@contextmanager
def overlapped_socket() -> Iterator[int]:
    """A TCP/IPv4 socket that can do overlapped I/O (what a port needs), closed on exit."""
    flags = WSASocketFlags.WSA_FLAG_OVERLAPPED | WSASocketFlags.WSA_FLAG_NO_HANDLE_INHERIT
    sock = ws2_32.WSASocketW(AddressFamily.AF_INET, SocketType.SOCK_STREAM, IPProto.IPPROTO_TCP,
                             ffi.NULL, 0, flags)
    assert sock != INVALID_SOCKET, last_winsock_error("WSASocketW")
    try:
        yield sock
    finally:
        ws2_32.closesocket(sock)


def sockaddr_in(host: str, port: int) -> CData:
    """A ``struct sockaddr_in *`` for an IPv4 address (fields in network byte order)."""
    return ffi.new("struct sockaddr_in *", {
        "sin_family": AddressFamily.AF_INET,
        "sin_port": socket.htons(port),
        "sin_addr": {"S_un": {"S_addr": int.from_bytes(socket.inet_aton(host), "little")}},
    })


def to_address(sockaddr: CData) -> Address:
    """The ``(host, port)`` a ``struct sockaddr *`` holds, as stdlib sockets spell it."""
    sin = ffi.cast("struct sockaddr_in *", sockaddr)
    assert sin.sin_family == AddressFamily.AF_INET
    host = socket.inet_ntoa(int(sin.sin_addr.S_un.S_addr).to_bytes(4, "little"))
    return host, socket.ntohs(sin.sin_port)


def name_of(query: Callable[[int, CData, CData], int], sock: int) -> Address:
    """``getsockname`` or ``getpeername`` (passed as ``query``) of a raw socket."""
    sin = ffi.new("struct sockaddr_in *")
    size = ffi.new("int *", ffi.sizeof("struct sockaddr_in"))
    assert query(sock, ffi.cast("struct sockaddr *", sin), size) == 0, last_winsock_error("query")
    return to_address(sin)


@contextmanager
def listening_socket(port: CData) -> Iterator[tuple[int, Address]]:
    """An overlapped socket listening on 127.0.0.1 (free port), tied to ``port``."""
    with overlapped_socket() as listener:
        sin = sockaddr_in(LOOPBACK, 0)
        assert ws2_32.bind(listener, ffi.cast("struct sockaddr *", sin),
                           ffi.sizeof("struct sockaddr_in")) == 0, last_winsock_error("bind")
        assert ws2_32.listen(listener, 8) == 0, last_winsock_error("listen")
        associate(port, listener, LISTEN_KEY)
        yield listener, name_of(ws2_32.getsockname, listener)


@dataclass
class Pending:
    """An overlapped operation with all the memory Windows may still write to.

    Holding this object is what keeps the OVERLAPPED, the data buffer and the out-parameters
    alive until the completion is dequeued.
    """

    overlapped: CData
    buffer: CData = ffi.NULL
    keep: tuple[CData, ...] = ()

    def data(self, size: int) -> bytes:
        """The first ``size`` bytes of the buffer (what a receive delivered)."""
        return ffi.buffer(self.buffer, size)[:]


def address_of(overlapped: CData) -> int:
    """An OVERLAPPED pointer as a number: what identifies an operation in flight."""
    return int(ffi.cast("uintptr_t", overlapped))


#: Operations started and not yet dequeued, by OVERLAPPED address. ``dequeue`` removes them;
#: the ``server`` fixture drains what a failing test leaves behind before freeing it.
IN_FLIGHT: dict[int, Pending] = {}
#: Operations whose completion never came: kept (leaked) rather than freed under Windows.
ABANDONED: list[Pending] = []


def started(pending: Pending, succeeded: bool, what: str) -> Pending:
    """Check that an overlapped call finished at once or is pending, and record it in flight.

    Both cases queue a completion packet (the sockets here do not use the skip-on-success
    mode), so the tests always dequeue it.
    """
    if not succeeded:
        code = ws2_32.WSAGetLastError()
        assert code == WinError.WSA_IO_PENDING, f"{what} failed at once: {describe(code)}"
    IN_FLIGHT[address_of(pending.overlapped)] = pending
    return pending


def post_accept(functions: ExtensionFunctions, listener: int, accepted: int) -> Pending:
    """Issue AcceptEx for ``accepted`` (no initial data: it completes on connection)."""
    pending = Pending(ffi.new("OVERLAPPED *"), ffi.new("char[]", 2 * ADDRESS_SPACE),
                      (ffi.new("DWORD *"),))
    result = functions.AcceptEx(listener, accepted, pending.buffer, 0, ADDRESS_SPACE,
                                ADDRESS_SPACE, pending.keep[0], pending.overlapped)
    return started(pending, bool(result), "AcceptEx")


def accept_addresses(functions: ExtensionFunctions, accept: Pending) -> tuple[Address, Address]:
    """The (local, remote) addresses AcceptEx wrote into its buffer."""
    local, remote = ffi.new("struct sockaddr **"), ffi.new("struct sockaddr **")
    local_size, remote_size = ffi.new("int *"), ffi.new("int *")
    functions.GetAcceptExSockaddrs(accept.buffer, 0, ADDRESS_SPACE, ADDRESS_SPACE,
                                   local, local_size, remote, remote_size)
    return to_address(local[0]), to_address(remote[0])


def update_accept_context(accepted: int, listener: int) -> None:
    """SO_UPDATE_ACCEPT_CONTEXT: the value is the listening SOCKET, pointer-sized."""
    value = ffi.new("SOCKET *", listener)
    assert ws2_32.setsockopt(accepted, SocketLevel.SOL_SOCKET,
                             SocketOption.SO_UPDATE_ACCEPT_CONTEXT, ffi.cast("char *", value),
                             ffi.sizeof("SOCKET")) == 0, last_winsock_error("setsockopt")


def post_recv(sock: int, size: int = 256) -> Pending:
    """Issue a WSARecv of up to ``size`` bytes."""
    buffer = ffi.new("char[]", size)
    wsabuf = ffi.new("WSABUF *", {"len": size, "buf": buffer})
    flags = ffi.new("DWORD *", 0)
    pending = Pending(ffi.new("OVERLAPPED *"), buffer, (wsabuf, flags))
    result = ws2_32.WSARecv(sock, wsabuf, 1, ffi.NULL, flags, pending.overlapped, ffi.NULL)
    return started(pending, result == 0, "WSARecv")


def post_send(sock: int, data: bytes) -> Pending:
    """Issue a WSASend of ``data`` (with an OVERLAPPED of its own, as every send needs)."""
    buffer = ffi.new("char[]", data)
    wsabuf = ffi.new("WSABUF *", {"len": len(data), "buf": buffer})
    pending = Pending(ffi.new("OVERLAPPED *"), buffer, (wsabuf,))
    result = ws2_32.WSASend(sock, wsabuf, 1, ffi.NULL, 0, pending.overlapped, ffi.NULL)
    return started(pending, result == 0, "WSASend")


@dataclass(frozen=True)
class Dequeued:
    """One GetQueuedCompletionStatus result, as the four outcomes are told apart."""

    ok: bool
    error: int
    transferred: int
    key: int
    overlapped: CData


def dequeue(port: CData, timeout_ms: int = WAIT_MS) -> Dequeued:
    """Call GetQueuedCompletionStatus once; ``error`` is GetLastError when it returned FALSE."""
    transferred = ffi.new("DWORD *")
    key = ffi.new("ULONG_PTR *")
    overlapped = ffi.new("OVERLAPPED **")
    ok = kernel32.GetQueuedCompletionStatus(port, transferred, key, overlapped, timeout_ms)
    error = 0 if ok else kernel32.GetLastError()
    if overlapped[0] != ffi.NULL:
        IN_FLIGHT.pop(address_of(overlapped[0]), None)
    return Dequeued(bool(ok), error, transferred[0], key[0], overlapped[0])


def drain(port: CData) -> None:
    """Dequeue what a failed test left in flight (closing its sockets aborted it).

    Only then may that memory be freed; what still has not completed is kept forever.
    """
    while IN_FLIGHT and dequeue(port).overlapped != ffi.NULL:
        pass
    ABANDONED.extend(IN_FLIGHT.values())
    IN_FLIGHT.clear()


def expect_completion(port: CData, pending: Pending, key: int) -> int:
    """Dequeue the next packet, check it is ``pending``'s success; return the byte count."""
    done = dequeue(port)
    assert done.ok, f"completion failed: {describe(done.error)}"
    assert done.overlapped == pending.overlapped
    assert done.key == key
    return done.transferred


@dataclass(frozen=True)
class Server:
    """A port, a listener tied to it, and a not yet connected socket for AcceptEx."""

    port: CData
    listener: int
    address: Address
    accepted: int
    functions: ExtensionFunctions


@pytest.fixture
def server() -> Iterator[Server]:
    with completion_port() as port:
        try:
            with listening_socket(port) as (listener, address), overlapped_socket() as accepted:
                associate(port, accepted, ACCEPTED_KEY)
                yield Server(port, listener, address, accepted, extension_functions(listener))
        finally:
            drain(port)


def establish(server: Server) -> socket.socket:
    """Connect a stdlib client and AcceptEx it on ``server.accepted``, context updated."""
    accept = post_accept(server.functions, server.listener, server.accepted)
    client = socket.create_connection(server.address, timeout=WAIT_S)
    try:
        assert expect_completion(server.port, accept, LISTEN_KEY) == 0
        update_accept_context(server.accepted, server.listener)
    except BaseException:
        client.close()
        raise
    return client


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """Read ``size`` bytes from a stdlib socket (TCP may deliver them in pieces)."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def echo_client(address: Address, payload: bytes) -> tuple[Address, Address, bytes]:
    """A stdlib peer (run in a thread): send ``payload``, read its echo.

    Returns the client's own address, its peer's address and what came back.
    """
    with socket.create_connection(address, timeout=WAIT_S) as client:
        client.sendall(payload)
        return client.getsockname(), client.getpeername(), receive_exactly(client, len(payload))


# --- Winsock start-up and sockets -------------------------------------------------------------

#: Run in a fresh interpreter with the package's ``__init__`` bypassed (an empty package module
#: stands in), so only ``winiocp.raw`` and what it needs get imported. The stdlib ``socket``
#: module starts Winsock too, so it must not be among them, or the check proves nothing.
STARTUP_CHECK = """
import sys, types
package = types.ModuleType("winiocp")
package.__path__ = [sys.argv[1]]
sys.modules["winiocp"] = package
from winiocp import raw
from winiocp.constants import INVALID_SOCKET
assert "_socket" not in sys.modules, "winiocp.raw imported socket: the check proves nothing"
sock = raw.ws2_32.WSASocketW(2, 1, 6, raw.ffi.NULL, 0, 0x81)
assert sock != INVALID_SOCKET, f"WSASocketW: Winsock error {raw.ws2_32.WSAGetLastError()}"
raw.ws2_32.closesocket(sock)
"""


def test_importing_raw_starts_winsock() -> None:
    package = Path(raw.__file__).parent
    result = subprocess.run([sys.executable, "-c", STARTUP_CHECK, str(package)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_winsock_version_is_2_2() -> None:
    # A nested start-up reports the version the process uses; the cleanup balances it.
    data = ffi.new("WSADATA *")
    assert ws2_32.WSAStartup(MAKEWORD_2_2, data) == 0
    try:
        assert data.wVersion == MAKEWORD_2_2
    finally:
        assert ws2_32.WSACleanup() == 0


def test_overlapped_socket_is_a_stream_socket_a_port_accepts() -> None:
    with completion_port() as port, overlapped_socket() as sock:
        kind = ffi.new("int *")
        size = ffi.new("int *", ffi.sizeof("int"))
        assert ws2_32.getsockopt(sock, SocketLevel.SOL_SOCKET, SocketOption.SO_TYPE,
                                 ffi.cast("char *", kind), size) == 0
        assert kind[0] == SocketType.SOCK_STREAM
        associate(port, sock, 7)


# --- The port on its own ----------------------------------------------------------------------


def test_post_then_dequeue_one_packet() -> None:
    with completion_port() as port:
        overlapped = ffi.new("OVERLAPPED *")
        assert kernel32.PostQueuedCompletionStatus(port, 1234, 42, overlapped)
        done = dequeue(port)
        assert (done.ok, done.transferred, done.key) == (True, 1234, 42)
        assert done.overlapped == overlapped


def test_dequeue_a_batch_with_gqcs_ex() -> None:
    count = 4
    with completion_port() as port:
        overlapped = ffi.new("OVERLAPPED[]", count)
        for index in range(count):
            assert kernel32.PostQueuedCompletionStatus(port, 100 + index, 10 + index,
                                                       overlapped + index)
        entries = ffi.new("OVERLAPPED_ENTRY[]", count * 2)
        removed = ffi.new("ULONG *")
        assert kernel32.GetQueuedCompletionStatusEx(port, entries, count * 2, removed,
                                                    WAIT_MS, 0)
        assert removed[0] == count
        got = [(entries[i].lpCompletionKey, entries[i].dwNumberOfBytesTransferred,
                entries[i].lpOverlapped) for i in range(count)]
        # A port is a FIFO queue: the packets come out in the order they were posted.
        assert got == [(10 + i, 100 + i, overlapped + i) for i in range(count)]
        assert not dequeue(port, 0).ok, "the batch left a packet behind"


# --- Extension functions ----------------------------------------------------------------------


def test_extension_functions_are_fetched_once_per_provider() -> None:
    with overlapped_socket() as first, overlapped_socket() as second:
        functions = extension_functions(first)
        pointers = (functions.AcceptEx, functions.GetAcceptExSockaddrs, functions.ConnectEx,
                    functions.DisconnectEx, functions.TransmitFile)
        assert all(bool(pointer) for pointer in pointers), "a NULL extension function"
        cached = lookups_done()
        assert cached >= 1
        assert extension_functions(second) is functions
        assert lookups_done() == cached


# --- AcceptEx, WSARecv, WSASend, DisconnectEx -------------------------------------------------


def test_acceptex_recv_send_round_trip(server: Server) -> None:
    payload = b"round trip through a completion port"
    accept = post_accept(server.functions, server.listener, server.accepted)
    with ThreadPoolExecutor(1) as pool:
        client = pool.submit(echo_client, server.address, payload)
        assert expect_completion(server.port, accept, LISTEN_KEY) == 0
        local, remote = accept_addresses(server.functions, accept)
        update_accept_context(server.accepted, server.listener)
        peer = name_of(ws2_32.getpeername, server.accepted)

        receive = post_recv(server.accepted)
        received = receive.data(expect_completion(server.port, receive, ACCEPTED_KEY))
        send = post_send(server.accepted, received)
        assert expect_completion(server.port, send, ACCEPTED_KEY) == len(received)
        client_name, client_peer, echoed = client.result(timeout=WAIT_S)

    assert received == payload
    assert echoed == payload
    assert remote == client_name == peer
    assert local == client_peer == server.address


def reuse_for_a_second_client(server: Server) -> socket.socket:
    """Serve a client until it closes, DisconnectEx(TF_REUSE_SOCKET), AcceptEx the next one.

    The client closes first, so the server's side never enters TIME_WAIT and the socket can be
    reused at once; the receive kept pending reports that close as TRUE with 0 bytes.
    """
    with establish(server):
        receive = post_recv(server.accepted)
    assert expect_completion(server.port, receive, ACCEPTED_KEY) == 0

    disconnect = Pending(ffi.new("OVERLAPPED *"))
    result = server.functions.DisconnectEx(server.accepted, disconnect.overlapped,
                                           TransmitFileFlags.TF_REUSE_SOCKET, 0)
    started(disconnect, bool(result), "DisconnectEx")
    assert expect_completion(server.port, disconnect, ACCEPTED_KEY) == 0
    return establish(server)


def test_disconnectex_reuses_the_socket_for_another_accept(server: Server) -> None:
    with reuse_for_a_second_client(server) as client:
        assert name_of(ws2_32.getpeername, server.accepted) == client.getsockname()


@support.wine_deviation("a socket reused after DisconnectEx(TF_REUSE_SOCKET) keeps its SD_SEND "
                        "shutdown (WSASend fails with WSAESHUTDOWN) and a WSARecv pending "
                        "before data arrives is never completed")
def test_reused_socket_sends_and_receives(server: Server) -> None:
    with reuse_for_a_second_client(server) as client:
        # Send first: under Wine it fails at once, leaving no operation pending.
        send = post_send(server.accepted, b"again")
        assert expect_completion(server.port, send, ACCEPTED_KEY) == 5
        assert receive_exactly(client, 5) == b"again"
        receive = post_recv(server.accepted)
        client.sendall(b"back")
        assert receive.data(expect_completion(server.port, receive, ACCEPTED_KEY)) == b"back"


# --- The four outcomes of GetQueuedCompletionStatus -------------------------------------------


def test_outcome_io_completed(server: Server) -> None:
    with establish(server) as client:
        receive = post_recv(server.accepted)
        client.sendall(b"data")
        done = dequeue(server.port)
    assert done.ok and done.overlapped == receive.overlapped
    assert (done.transferred, done.key, receive.data(4)) == (4, ACCEPTED_KEY, b"data")


def test_outcome_io_failed_on_reset(server: Server) -> None:
    with establish(server) as client:
        receive = post_recv(server.accepted)
        # SO_LINGER {1, 0}: closing sends RST instead of FIN.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("HH", 1, 0))
    done = dequeue(server.port)
    assert not done.ok and done.overlapped == receive.overlapped, describe(done.error)
    assert done.error in RESET_ERRORS, describe(done.error)
    assert done.key == ACCEPTED_KEY


def test_outcome_io_failed_on_cancel(server: Server) -> None:
    with establish(server):
        receive = post_recv(server.accepted)
        assert kernel32.CancelIoEx(as_handle(server.accepted), receive.overlapped)
        done = dequeue(server.port)
    assert not done.ok and done.overlapped == receive.overlapped, describe(done.error)
    assert done.error == WinError.ERROR_OPERATION_ABORTED, describe(done.error)


def test_outcome_posted_packet() -> None:
    with completion_port() as port:
        assert kernel32.PostQueuedCompletionStatus(port, 0, 99, ffi.NULL)
        done = dequeue(port)
    assert done.ok and done.overlapped == ffi.NULL
    assert (done.key, done.transferred) == (99, 0)


def test_outcome_time_out() -> None:
    with completion_port() as port:
        done = dequeue(port, 50)
    assert not done.ok and done.overlapped == ffi.NULL
    assert done.error == WinError.WAIT_TIMEOUT, describe(done.error)


# --- The README example and the command line ---------------------------------------------------


def test_raw_echo_example_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_example(EXAMPLE).main() == 0
    assert capsys.readouterr().out == "echoed b'hello' through a completion port\n"


def test_cli_raw_echo_runs_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["raw-echo"]) == 0
    assert "through a completion port" in capsys.readouterr().out
