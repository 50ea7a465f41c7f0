"""Mistakes the typed raw API must catch, each marked with the errors mypy and pyright must raise.

Never run, only type-checked (tests/host/test_typecheck.py): every line marked ``# E: <mypy
code>`` and ``# P: <pyright rule>`` must be reported with exactly those, and no other line may
be. Without the generated Protocols cffi's library objects are untyped, and each of these would
be found only at run time, or (for an int passed as a handle) not at all. Each mistake stands
alone: a wrong call's result is never used, so pyright (which makes it Unknown) and mypy (which
keeps the declared type) see the same program after it.
"""

from __future__ import annotations

from winiocp.raw import INVALID_HANDLE, extension_functions, ffi, kernel32, ws2_32

kernel32.CreateIoCompletionPort(INVALID_HANDLE, ffi.NULL, 0)  # E: call-arg  # P: reportCallIssue
port = kernel32.CreateIoCompletionPort(INVALID_HANDLE, ffi.NULL, 0, 0)
kernel32.CloseHandle(0)  # E: arg-type  # P: reportArgumentType
overlapped = ffi.new("OVERLAPPED *")
kernel32.PostQueuedCompletionStatus(port, overlapped, 0, overlapped)  # E: arg-type  # P: reportArgumentType

sock = ws2_32.WSASocketW(2, 1, 6, ffi.NULL, 0, 1)
ext = extension_functions(sock)
received = ffi.new("DWORD *")
ext.AcceptEx(sock, sock, ffi.NULL, 0, 44, 44, received)  # E: call-arg  # P: reportCallIssue
ext.DisconnectEx(sock, overlapped, 0, 0, 0)  # E: call-arg  # P: reportCallIssue

handle: int = kernel32.CreateIoCompletionPort(INVALID_HANDLE, ffi.NULL, 0, 0)  # E: assignment  # P: reportAssignmentType
# pyright's strict mode also reports the unknown type of the missing attribute.
kernel32.CreateIoCompletionPortEx(INVALID_HANDLE)  # E: attr-defined  # P: reportAttributeAccessIssue, reportUnknownMemberType
ws2_32.closesocket(port)  # E: arg-type  # P: reportArgumentType
# getsockopt writes into optval: bytes (immutable, passed by pointer) must not be accepted.
ws2_32.getsockopt(sock, 0xFFFF, 0x1008, b"\0\0\0\0", ffi.new("int *", 4))  # E: arg-type  # P: reportArgumentType
