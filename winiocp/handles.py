"""``Handle``: files and named pipes opened for overlapped I/O, completing on a port.

Any handle that supports overlapped I/O works with a completion port (rule 8 of the notes),
not only sockets. The same ownership rules apply: each ReadFile/WriteFile/ConnectNamedPipe is
an operation that owns its OVERLAPPED and buffer until its completion is dequeued, and the
handle is closed exactly once.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._cdata import CData
from .constants import (
    FileAccess,
    FileCreation,
    FileFlags,
    FileShare,
    PipeMode,
    WinError,
)
from .errors import ClosedHandleError, exception_for
from .operations import BufferLike, Operation, OpKind, RecvOperation, SendOperation, check_size
from .raw import INVALID_HANDLE, ffi, kernel32

if TYPE_CHECKING:
    from .port import CompletionPort


class Handle:
    """A kernel HANDLE opened with FILE_FLAG_OVERLAPPED."""

    def __init__(self, handle: CData, name: str) -> None:
        if handle == INVALID_HANDLE or handle == ffi.NULL:
            raise ValueError("not a valid handle")
        self._handle: CData | None = handle
        self.name = name
        self._lock = threading.Lock()
        self._port: CompletionPort | None = None
        self.key = 0

    @classmethod
    def open_file(cls, path: str, *, write: bool = False, create: bool = False) -> Handle:
        """Open (or create) a file for overlapped reads (and writes)."""
        access = FileAccess.GENERIC_READ | (FileAccess.GENERIC_WRITE if write else 0)
        disposition = FileCreation.CREATE_ALWAYS if create else FileCreation.OPEN_EXISTING
        handle = kernel32.CreateFileW(
            path, access, FileShare.FILE_SHARE_READ | FileShare.FILE_SHARE_WRITE, ffi.NULL,
            disposition, FileFlags.FILE_FLAG_OVERLAPPED | FileFlags.FILE_ATTRIBUTE_NORMAL,
            ffi.NULL)
        if handle == INVALID_HANDLE:
            raise exception_for(kernel32.GetLastError(), f"CreateFileW({path!r})")
        return cls(handle, path)

    @classmethod
    def create_named_pipe(cls, name: str, *, buffer_size: int = 65536,
                          instances: int = 1) -> Handle:
        r"""Create the server end of a byte-mode duplex pipe (``\\.\pipe\NAME``)."""
        check_size(buffer_size, "buffer_size")
        if not 1 <= instances <= PipeMode.PIPE_UNLIMITED_INSTANCES:
            raise ValueError("instances must be 1-255")
        handle = kernel32.CreateNamedPipeW(
            name, PipeMode.PIPE_ACCESS_DUPLEX | FileFlags.FILE_FLAG_OVERLAPPED,
            PipeMode.PIPE_TYPE_BYTE | PipeMode.PIPE_REJECT_REMOTE_CLIENTS, instances,
            buffer_size, buffer_size, 0, ffi.NULL)
        if handle == INVALID_HANDLE:
            raise exception_for(kernel32.GetLastError(), f"CreateNamedPipeW({name!r})")
        return cls(handle, name)

    def __repr__(self) -> str:
        return f"<winiocp.Handle {self.name!r}{' closed' if self._handle is None else ''}>"

    def __enter__(self) -> Handle:
        return self

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
            self.close()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def handle(self) -> CData:
        handle = self._handle
        if handle is None:
            raise ClosedHandleError(f"handle {self.name!r}")
        return handle

    @property
    def port(self) -> CompletionPort | None:
        return self._port

    def _handle_for_port(self) -> CData:
        if self._port is not None:
            raise ValueError(f"{self!r} is already associated with {self._port!r}")
        return self.handle

    def _set_port(self, port: CompletionPort, key: int) -> None:
        self._port = port
        self.key = key

    def close(self) -> bool:
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is None:
            return False
        kernel32.CloseHandle(handle)
        return True

    def _issue(self, operation: Operation, what: str, call: Callable[[CData], int],
               offset: int, context: object) -> Operation:
        self.handle  # noqa: B018 - a closed handle says so, whether or not it was associated
        port = self._port
        if port is None:
            raise RuntimeError(f"{what}: associate {self!r} with a CompletionPort first")
        if not 0 <= offset < 1 << 64:
            raise ValueError(f"offset must be 0 to 2**64-1, got {offset}")
        operation.context = context  # before the call: another thread may dequeue it first
        operation.overlapped.Offset = offset & 0xFFFFFFFF
        operation.overlapped.OffsetHigh = offset >> 32
        with self._lock:
            handle = self.handle
            port.register(operation)
            try:
                ok = call(handle)
            except BaseException:
                port.unregister(operation, 0)
                raise
            if not ok:
                error = kernel32.GetLastError()
                if error == WinError.ERROR_PIPE_CONNECTED:
                    port.unregister(operation, 0)  # connected already: no packet will come
                elif error != WinError.ERROR_IO_PENDING:
                    port.unregister(operation, error)
                    raise exception_for(error, f"{what} on {self!r}")
        return operation

    def read(self, size: int, offset: int = 0, *, context: object = None) -> RecvOperation:
        """Post a ReadFile of up to ``size`` bytes at ``offset`` (ignored for pipes)."""
        operation = RecvOperation(OpKind.READ, self)
        operation.set_buffers([bytearray(check_size(size))], writable=True)
        buffer = operation.wsabufs[0]
        self._issue(operation, "ReadFile", lambda h: kernel32.ReadFile(
            h, buffer.buf, buffer.len, ffi.NULL, operation.overlapped), offset, context)
        return operation

    def write(self, data: BufferLike, offset: int = 0, *,
              context: object = None) -> SendOperation:
        """Post a WriteFile of ``data`` at ``offset`` (ignored for pipes)."""
        operation = SendOperation(OpKind.WRITE, self)
        operation.set_buffers([data], writable=False)
        buffer = operation.wsabufs[0]
        self._issue(operation, "WriteFile", lambda h: kernel32.WriteFile(
            h, buffer.buf, buffer.len, ffi.NULL, operation.overlapped), offset, context)
        return operation

    def connect_pipe(self, *, context: object = None) -> Operation:
        """Post a ConnectNamedPipe. If a client is already connected, the returned operation
        is already done (``not op.pending``) and no completion will be queued for it."""
        operation = Operation(OpKind.CONNECT_PIPE, self)
        self._issue(operation, "ConnectNamedPipe",
                    lambda h: kernel32.ConnectNamedPipe(h, operation.overlapped), 0, context)
        return operation
