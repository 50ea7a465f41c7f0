"""Echo one message through an I/O completion port, with winiocp's raw API only.

The server side is the plain Windows C API called through cffi: a port, an overlapped listening
socket, AcceptEx, then WSARecv and WSASend, each finished by dequeuing its completion packet.
The client is an ordinary stdlib socket. Run it with ``python -m winiocp demo``.
"""

from __future__ import annotations

import socket
import sys

from winiocp._cdata import CData
from winiocp.constants import (
    AddressFamily, IPProto, SocketLevel, SocketOption, SocketType, WinError, WSASocketFlags,
)
from winiocp.raw import INVALID_HANDLE, extension_functions, ffi, kernel32, ws2_32

ADDRESS_SPACE = ffi.sizeof("struct sockaddr_in") + 16  # what AcceptEx needs per address


def check(succeeded: bool, what: str) -> None:
    """Raise unless the call succeeded or its overlapped operation is now pending."""
    code = 0 if succeeded else ws2_32.WSAGetLastError()
    if code not in (0, WinError.WSA_IO_PENDING):
        raise OSError(0, f"{what}: {ffi.getwinerror(code)[1]}", None, code)


def new_socket(port: CData) -> int:
    """An overlapped TCP socket, tied to the completion port (completion key 0)."""
    sock = ws2_32.WSASocketW(AddressFamily.AF_INET, SocketType.SOCK_STREAM, IPProto.IPPROTO_TCP,
                             ffi.NULL, 0, WSASocketFlags.WSA_FLAG_OVERLAPPED)
    check(kernel32.CreateIoCompletionPort(ffi.cast("HANDLE", sock), port, 0, 0) == port, "socket")
    return sock


def wait(port: CData) -> int:
    """Dequeue one completion packet (5 s at most) and return its byte count.

    Only one operation is in flight at a time here, so the packet is the one just issued.
    """
    count, key, overlapped = ffi.new("DWORD *"), ffi.new("ULONG_PTR *"), ffi.new("OVERLAPPED **")
    check(bool(kernel32.GetQueuedCompletionStatus(port, count, key, overlapped, 5000)), "GQCS")
    return int(count[0])


def main() -> int:
    port = kernel32.CreateIoCompletionPort(INVALID_HANDLE, ffi.NULL, 0, 0)
    listener, accepted = new_socket(port), new_socket(port)
    try:
        loopback = int.from_bytes(socket.inet_aton("127.0.0.1"), "little")  # network order
        address = ffi.new("struct sockaddr_in *", {"sin_family": AddressFamily.AF_INET,
                                                   "sin_addr": {"S_un": {"S_addr": loopback}}})
        size = ffi.new("int *", ffi.sizeof(address[0]))
        name = ffi.cast("struct sockaddr *", address)
        check(ws2_32.bind(listener, name, size[0]) == 0, "bind")  # 127.0.0.1, any port
        check(ws2_32.listen(listener, 1) == 0, "listen")
        check(ws2_32.getsockname(listener, name, size) == 0, "getsockname")  # the port chosen
        # AcceptEx and WSARecv are never pending together: they may share one OVERLAPPED.
        # It and every buffer must stay alive until their completion is dequeued.
        overlapped, sent = ffi.new("OVERLAPPED *"), ffi.new("OVERLAPPED *")
        addresses, buffer = ffi.new("char[]", 2 * ADDRESS_SPACE), ffi.new("char[]", 64)
        check(bool(extension_functions(listener).AcceptEx(
            listener, accepted, addresses, 0, ADDRESS_SPACE, ADDRESS_SPACE, ffi.new("DWORD *"),
            overlapped)), "AcceptEx")
        with socket.create_connection(("127.0.0.1", socket.ntohs(address.sin_port)), 5) as client:
            client.sendall(b"hello")
            wait(port)  # the connection is accepted; let it inherit the listener's context
            check(ws2_32.setsockopt(accepted, SocketLevel.SOL_SOCKET,
                                    SocketOption.SO_UPDATE_ACCEPT_CONTEXT,
                                    ffi.cast("char *", ffi.new("SOCKET *", listener)),
                                    ffi.sizeof("SOCKET")) == 0, "SO_UPDATE_ACCEPT_CONTEXT")
            wsabuf, flags = ffi.new("WSABUF *", {"len": 64, "buf": buffer}), ffi.new("DWORD *")
            check(ws2_32.WSARecv(accepted, wsabuf, 1, ffi.NULL, flags, overlapped, ffi.NULL) == 0,
                  "WSARecv")
            wsabuf.len = wait(port)  # echo exactly what arrived
            check(ws2_32.WSASend(accepted, wsabuf, 1, ffi.NULL, 0, sent, ffi.NULL) == 0, "WSASend")
            wait(port)
            echoed = client.recv(64)
    finally:
        ws2_32.closesocket(accepted)
        ws2_32.closesocket(listener)
        kernel32.CloseHandle(port)
    print(f"echoed {echoed!r} through a completion port")
    return 0 if echoed == b"hello" else 1


if __name__ == "__main__":
    sys.exit(main())
