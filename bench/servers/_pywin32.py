"""A narrow typed view of the pywin32 modules the bench uses (no pywin32 stubs needed).

Why: pywin32 is a bench-only dependency of the Windows CPython; typing just the handful of
``win32file`` calls used here keeps ``mypy bench`` strict without adding types-pywin32 to the
host requirements.
"""

from __future__ import annotations

import importlib
import socket
from typing import Protocol, cast


class Overlapped(Protocol):
    """``pywintypes.OVERLAPPED``: ``object`` carries whatever the caller attaches."""

    object: object


class Win32File(Protocol):
    INVALID_HANDLE_VALUE: int
    SO_UPDATE_ACCEPT_CONTEXT: int

    def OVERLAPPED(self) -> Overlapped: ...
    def CreateIoCompletionPort(self, handle: object, existing: object, key: int,
                               threads: int, /) -> object: ...
    def PostQueuedCompletionStatus(self, port: object, transferred: int, key: int,
                                   overlapped: Overlapped | None, /) -> None: ...
    def GetQueuedCompletionStatus(self, port: object, timeout: int, /
                                  ) -> tuple[int, int, int, Overlapped | None]: ...
    def AllocateReadBuffer(self, size: int, /) -> memoryview: ...
    def CalculateSocketEndPointSize(self, sock: socket.socket, /) -> int: ...
    def AcceptEx(self, listener: socket.socket, accepted: socket.socket, buffer: memoryview,
                 overlapped: Overlapped, /) -> int: ...
    def WSARecv(self, sock: socket.socket, buffer: memoryview, overlapped: Overlapped,
                flags: int = ..., /) -> object: ...
    def WSASend(self, sock: socket.socket, data: bytes, overlapped: Overlapped,
                flags: int = ..., /) -> object: ...
    def CloseHandle(self, handle: object, /) -> None: ...


def load() -> Win32File:
    """``win32file``, typed (ImportError if pywin32 is not installed)."""
    return cast(Win32File, importlib.import_module("win32file"))
