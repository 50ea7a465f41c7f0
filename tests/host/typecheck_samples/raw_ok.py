"""A correct program on the raw API: mypy --strict and strict pyright must accept it as it is.

Never run, only type-checked (tests/host/test_typecheck.py). It exercises each kind of
argument the generated Protocols accept: pointers as CData, ``bytes`` for ``char *``,
``str`` for ``wchar_t *``, integers for handles-as-values (SOCKET) and flags, and calls
through an extension function.
"""

from __future__ import annotations

from winiocp.constants import (
    INFINITE,
    AddressFamily,
    IPProto,
    SocketLevel,
    SocketOption,
    SocketType,
    WSASocketFlags,
)
from winiocp.raw import INVALID_HANDLE, extension_functions, ffi, kernel32, ws2_32

port = kernel32.CreateIoCompletionPort(INVALID_HANDLE, ffi.NULL, 0, 0)
listener: int = ws2_32.WSASocketW(AddressFamily.AF_INET, SocketType.SOCK_STREAM,
                                  IPProto.IPPROTO_TCP, ffi.NULL, 0,
                                  WSASocketFlags.WSA_FLAG_OVERLAPPED)
kernel32.CreateIoCompletionPort(ffi.cast("HANDLE", listener), port, listener, 0)

reuse = ffi.new("int *", 1)
ws2_32.setsockopt(listener, SocketLevel.SOL_SOCKET, SocketOption.SO_REUSEADDR,
                  ffi.cast("char *", reuse), ffi.sizeof("int"))
ws2_32.setsockopt(listener, SocketLevel.SOL_SOCKET, SocketOption.SO_REUSEADDR, b"\1\0\0\0", 4)

address = ffi.new("struct sockaddr_in *")
address.sin_family = AddressFamily.AF_INET
ws2_32.bind(listener, ffi.cast("struct sockaddr *", address), ffi.sizeof(address[0]))
ws2_32.listen(listener, 128)

accepted = ws2_32.WSASocketW(AddressFamily.AF_INET, SocketType.SOCK_STREAM,
                             IPProto.IPPROTO_TCP, ffi.NULL, 0,
                             WSASocketFlags.WSA_FLAG_OVERLAPPED)
buffer = ffi.new("char[]", 2 * (ffi.sizeof("struct sockaddr_in6") + 16))
received = ffi.new("DWORD *")
overlapped = ffi.new("OVERLAPPED *")
ext = extension_functions(listener)
started: int = ext.AcceptEx(listener, accepted, buffer, 0, 44, 44, received, overlapped)

transferred = ffi.new("DWORD *")
key = ffi.new("ULONG_PTR *")
done = ffi.new("OVERLAPPED **")
if not kernel32.GetQueuedCompletionStatus(port, transferred, key, done, INFINITE):
    error: int = kernel32.GetLastError()

pipe = kernel32.CreateNamedPipeW("\\\\.\\pipe\\winiocp-sample", 0, 0, 1, 0, 0, 0, ffi.NULL)
kernel32.CloseHandle(pipe)
ws2_32.closesocket(accepted)
ws2_32.closesocket(listener)
kernel32.CloseHandle(port)
