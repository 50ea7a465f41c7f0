"""``Handle``: files and named pipes opened for overlapped I/O, completing on a port.

Any handle that supports overlapped I/O works with a completion port (rule 8 of the notes),
not only sockets. The same ownership rules apply: each ReadFile/WriteFile/ConnectNamedPipe is
an operation that owns its OVERLAPPED and buffer until its completion is dequeued, and the
handle is closed exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

from ._cdata import CData
from .constants import (
    FileAccess,
    FileCreation,
    FileFlags,
    FileShare,
    PipeMode,
    WinError,
)
from .errors import exception_for
from .operations import BufferLike, Operation, OpKind, RecvOperation, SendOperation, check_size
from .owner import OverlappedOwner
from .raw import INVALID_HANDLE, ffi, kernel32


class Handle(OverlappedOwner[CData]):
    """A kernel HANDLE opened with FILE_FLAG_OVERLAPPED.

    It owns the handle: ``close()`` calls CloseHandle once (a ``borrow`` view never does).
    Each read, write or pipe connect is an operation that owns its OVERLAPPED and buffer
    until its completion is dequeued. Raises ``TypeError`` for anything but a cffi pointer
    (an int handle value: ``ffi.cast("HANDLE", value)``), ``ValueError`` for
    INVALID_HANDLE_VALUE or NULL.
    """

    def __init__(self, handle: CData, name: str) -> None:
        if (not isinstance(handle, CData)  # pyright: ignore[reportUnnecessaryIsInstance]
                or ffi.typeof(handle).kind != "pointer"):
            raise TypeError(
                f"Handle needs a HANDLE (a cffi pointer, as kernel32.CreateFileW returns), not "
                f"{type(handle).__name__}: for a handle value use "
                "Handle(ffi.cast('HANDLE', value), name) to take it over, or Handle.borrow")
        if handle == INVALID_HANDLE or handle == ffi.NULL:
            raise ValueError("not a valid handle")
        super().__init__(handle)
        #: The path or pipe name, for messages.
        self.name: str = name
        self.kind_name: str = f"handle {name!r}"

    @classmethod
    def open_file(cls, path: str, *, write: bool = False, create: bool = False) -> Handle:
        """Open (or, with ``create``, create or truncate) a file for overlapped reads (and,
        with ``write``, writes). Raises the ``OSError`` of CreateFileW's error."""
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
        r"""Create the server end of a byte-mode duplex pipe (``\\.\pipe\NAME``) that refuses
        remote clients. Raises ``ValueError`` for ``instances`` outside 1-255, ``TypeError``
        / ``ValueError`` / ``OverflowError`` for a bad ``buffer_size``, and the ``OSError``
        of CreateNamedPipeW's error."""
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

    @classmethod
    def borrow(cls, value: int, name: str, lender_value: Callable[[], int]) -> Handle:
        """A view of a HANDLE another object owns (e.g. asyncio's ``PipeHandle``): operations
        on it complete on a port, ``close()`` only lets go, and once ``lender_value()`` stops
        returning ``value`` (the owner closed it; raising OSError, ValueError or
        ReferenceError counts as closed) every call is refused. ``weak_fileno(owner)``
        (``winiocp.owner``) makes one that does not keep the owner alive."""
        view = cls(ffi.cast("HANDLE", value), name)
        view._lend(value, lender_value)
        return view

    def __repr__(self) -> str:
        return f"<winiocp.Handle {self.name!r}{' closed' if self._handle is None else ''}>"

    @property
    def handle(self) -> CData:
        """The HANDLE, for raw calls (raises once closed)."""
        return self._checked()

    def _close_handle(self, handle: CData) -> None:
        kernel32.CloseHandle(handle)

    def _as_port_handle(self, handle: CData) -> CData:
        return handle

    def _last_error(self) -> int:
        return kernel32.GetLastError()

    def _issue(self, operation: Operation, what: str, call: Callable[[CData], int],
               offset: int, context: object) -> Operation:
        operation.set_offset(offset)
        return self.issue(operation, what, call, 0, context,  # BOOL functions: FALSE
                          done_at_once=(WinError.ERROR_PIPE_CONNECTED,))

    def read(self, size: int, offset: int = 0, *, context: object = None) -> RecvOperation:
        """Post a ReadFile of up to ``size`` bytes at ``offset`` (ignored for pipes)."""
        return self.read_into(bytearray(check_size(size)), offset, context=context)

    def read_into(self, buffer: BufferLike, offset: int = 0, *,
                  context: object = None) -> RecvOperation:
        """Post a ReadFile into ``buffer`` (writable, pinned until it completes)."""
        operation = RecvOperation(OpKind.READ, self)
        operation.set_buffers([buffer], writable=True)
        target = operation.wsabufs[0]
        self._issue(operation, "ReadFile", lambda h: kernel32.ReadFile(
            h, target.buf, target.len, ffi.NULL, operation.overlapped), offset, context)
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
        """Post a ConnectNamedPipe. If a client is already connected (ERROR_PIPE_CONNECTED),
        the returned operation is already done (``not op.pending``) and no completion will be
        queued for it."""
        operation = Operation(OpKind.CONNECT_PIPE, self)
        self._issue(operation, "ConnectNamedPipe",
                    lambda h: kernel32.ConnectNamedPipe(h, operation.overlapped), 0, context)
        return operation
