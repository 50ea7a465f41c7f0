"""Mistakes the typed raw API must catch, each marked with the mypy error code it must raise.

Never run, only type-checked (tests/host/test_typecheck.py): every ``# E: <code>`` line must
be reported with that code, and no other line may be. Without the generated Protocols
cffi's library objects are untyped, and each of these would be found only at run time, or
(for an int passed as a handle) not at all.
"""

from __future__ import annotations

from winiocp.raw import INVALID_HANDLE, extension_functions, ffi, kernel32, ws2_32

port = kernel32.CreateIoCompletionPort(INVALID_HANDLE, ffi.NULL, 0)  # E: call-arg
kernel32.CloseHandle(0)  # E: arg-type
overlapped = ffi.new("OVERLAPPED *")
kernel32.PostQueuedCompletionStatus(port, overlapped, 0, overlapped)  # E: arg-type

sock = ws2_32.WSASocketW(2, 1, 6, ffi.NULL, 0, 1)
ext = extension_functions(sock)
received = ffi.new("DWORD *")
ext.AcceptEx(sock, sock, ffi.NULL, 0, 44, 44, received)  # E: call-arg
ext.DisconnectEx(sock, overlapped, 0, 0, 0)  # E: call-arg

handle: int = kernel32.CreateIoCompletionPort(INVALID_HANDLE, ffi.NULL, 0, 0)  # E: assignment
kernel32.CreateIoCompletionPortEx(INVALID_HANDLE)  # E: attr-defined
ws2_32.closesocket(port)  # E: arg-type
# getsockopt writes into optval: bytes (immutable, passed by pointer) must not be accepted.
ws2_32.getsockopt(sock, 0xFFFF, 0x1008, b"\0\0\0\0", ffi.new("int *", 4))  # E: arg-type
