"""What sockets and handles share: one kernel handle, closed exactly once, and the one way
an overlapped call is issued on it.

``OverlappedOwner`` holds the handle value under a lock. ``close()`` swaps it out under that
lock, so a call that is being issued finishes before the value is closed, and no later call
can reach a value Windows may already have given to another object (rule 6). ``issue()``
registers the operation with the port before the call (another thread may dequeue its
completion before the call returns), and gives it back at once if the call fails
synchronously (rule 10). Association reads the value under the same lock, so a racing
``close()`` cannot hand CreateIoCompletionPort a value Windows has given to another object.

A call that succeeds at once on a handle in FILE_SKIP_COMPLETION_PORT_ON_SUCCESS mode queues
no packet at all: ``issue`` then gives the operation to the port's own queue of inline
completions (``CompletionPort.complete_inline``), and the next dequeue hands it out like any
other. So an operation is pending from its call to its dequeued completion whichever way it
completes, and callers route both the same way. A caller that would rather take such a
result at once (a transport whose send went out whole) asks for ``finish_inline``: the
operation comes back from the call finished, and never reaches a dequeue.

Which synchronous "failures" still queue a packet depends on the operation's kind: any call
can report ERROR_IO_PENDING; only a receive can report a warning (a truncated datagram or
message, ``Operation.warnings``), after which the I/O manager queues the packet as for any
status that is not an error. A send reporting WSAEMSGSIZE has failed: it raises, and nothing
is queued (on Wine, which does queue a packet for it, see ``_packet_queued``).
"""

from __future__ import annotations

import functools
import operator
import threading
import warnings
import weakref
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from ._cdata import CData
from .constants import WinError
from .errors import ClosedHandleError, exception_for
from .operations import Operation
from .raw import ffi, kernel32

if TYPE_CHECKING:
    from .port import CompletionPort

H = TypeVar("H")
T = TypeVar("T")

_IO_PENDING = int(WinError.ERROR_IO_PENDING)  # a plain int: compared on every call issued
_FILENO = operator.methodcaller("fileno")


class Lender(Protocol):
    """What a borrowed view's handle belongs to: a stdlib socket, asyncio's ``PipeHandle``."""

    def fileno(self) -> int: ...


def weak_fileno(lender: Lender) -> Callable[[], int]:
    """``lender.fileno()`` through a weak proxy: the ``lender_value`` of a borrowed view that
    must not keep its lender alive (once the lender is collected it raises ReferenceError,
    which the view takes as closed). A C-level callable, with no Python frame: it runs for
    every call issued on the view."""
    return functools.partial(_FILENO, weakref.proxy(lender))


class OverlappedOwner(Generic[H]):
    """A handle (``H``: a SOCKET int or a HANDLE pointer) for overlapped I/O on a port.

    It owns the handle and closes it exactly once, in ``close()`` (or, with a
    ``ResourceWarning``, when collected unclosed), unless it is borrowed: then the lender
    closes it. A context manager: leaving the ``with`` block closes it.
    """

    #: Used in error messages ("socket is closed").
    kind_name: str = "handle"
    #: For a borrowed handle (``_lend``): the lender's current value (its ``fileno``).
    _lender_value: Callable[[], int] | None = None
    #: FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is on (``Socket.set_skip_on_success``): a call
    #: that succeeds at once queues no packet, so ``issue`` hands the port its completion.
    _skip_on_success: bool = False

    def __init__(self, handle: H) -> None:
        self._handle: H | None = handle
        self._lock = threading.Lock()
        self._port: CompletionPort | None = None
        #: The completion key given by ``CompletionPort.associate``.
        self.key: int = 0
        self._borrowed_value = 0

    def _lend(self, value: int, lender_value: Callable[[], int]) -> None:
        """Make this a borrowed view of a handle another object owns (a stdlib socket, a
        pipe): ``close()`` only lets go, and once the lender closed it (``lender_value()``
        no longer returns ``value``) no call reaches the value, which Windows may already
        have reused (rule 6)."""
        self._borrowed_value = value
        self._lender_value = lender_value

    @property
    def borrowed(self) -> bool:
        """Whether the handle belongs to another object (see ``Socket.borrow``)."""
        return self._lender_value is not None

    def _lender_closed(self) -> bool:
        lender_value = self._lender_value
        if lender_value is None:
            return False
        try:
            return lender_value() != self._borrowed_value
        except (OSError, ValueError, ReferenceError):  # e.g. PipeHandle.fileno() of a
            # closed pipe, or a weak proxy's lender that is gone
            return True

    # -- subclass hooks ----------------------------------------------------------------------

    def _close_handle(self, handle: H) -> None:
        raise NotImplementedError

    def _as_port_handle(self, handle: H) -> CData:
        raise NotImplementedError

    def _last_error(self) -> int:
        raise NotImplementedError

    # -- ownership -----------------------------------------------------------------------------

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Reached only when no operation is pending: each pending operation references its
        # owner, and the port's registry references the operation.
        if getattr(self, "_handle", None) is not None and self._lender_value is None:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
            self.close()

    @property
    def closed(self) -> bool:
        """Whether the handle is closed (for a borrowed one: let go, or closed by its owner)."""
        return self._handle is None or self._lender_closed()

    def _checked(self) -> H:
        handle = self._handle
        if handle is None or (self._lender_value is not None and self._lender_closed()):
            raise ClosedHandleError(self.kind_name)
        return handle

    def close(self) -> bool:
        """Close the handle (idempotent); True if this call closed it.

        Pending operations complete with an error; their memory stays owned until those
        completions are dequeued.
        """
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is None:
            return False
        if self._lender_value is None:  # a borrowed handle is closed by its owner
            self._close_handle(handle)
        return True

    @property
    def port(self) -> CompletionPort | None:
        """The completion port this handle is associated with (None before ``associate``)."""
        return self._port

    def _associate(self, port: CompletionPort, key: int,
                   call: Callable[[CData], None]) -> None:
        """``call(handle)`` (CreateIoCompletionPort) with the value read under the lock, so
        ``close()`` waits for it; then remember the port and key."""
        with self._lock:
            if self._port is not None:
                raise ValueError(f"{self!r} is already associated with {self._port!r}")
            handle = self._checked()
            call(self._as_port_handle(handle))
            self._port = port
            self.key = key

    def cancel(self, operation: Operation | None = None) -> bool:
        """Ask Windows to cancel ``operation`` (or every operation on this handle).

        A request only: the operation stays owned until its completion (success or
        ERROR_OPERATION_ABORTED) is dequeued. False if there was nothing left to cancel
        (ERROR_NOT_FOUND: it already completed). Raises ``ValueError`` for another
        handle's operation, ``ClosedHandleError`` once closed, ``OSError`` if CancelIoEx
        fails otherwise.
        """
        if operation is not None:
            if operation.owner is not self:
                raise ValueError(f"{operation!r} belongs to another {self.kind_name}")
            if not operation.pending:
                return False
            operation.cancel_requested = True
        with self._lock:
            handle = self._as_port_handle(self._checked())
            target = operation.overlapped if operation is not None else ffi.NULL
            if operation is None and self._port is not None:
                for pending in self._port.pending_operations():
                    if pending.owner is self:
                        pending.cancel_requested = True
            if kernel32.CancelIoEx(handle, target):
                return True
            error = kernel32.GetLastError()
        if error == WinError.ERROR_NOT_FOUND:
            return False
        raise exception_for(error, "CancelIoEx")

    # -- issuing -------------------------------------------------------------------------------

    def issue(self, operation: Operation, what: str, call: Callable[..., object],
              failed_with: int, context: object,
              done_at_once: Collection[int] = (), finish_inline: bool = False,
              args: tuple[object, ...] = (),
              last_error: Callable[[], int] | None = None) -> Operation:
        """Register ``operation``, make ``call(handle, *args)``, and sort out a synchronous
        failure. (``args`` lets ``call`` be the C function itself, with no closure per call.)

        ``failed_with`` is the result that reports an error (SOCKET_ERROR for Winsock's int
        functions, 0 (FALSE) for BOOL ones); WSA_IO_PENDING is not one.
        An error in ``done_at_once`` means it completed without a packet (e.g.
        ERROR_PIPE_CONNECTED). ``context`` is set before the call, so a completion dequeued
        by another thread before the call returns is still routed.

        A call that succeeds at once on a handle in skip-on-success mode queues no packet:
        its completion goes to the port's queue of inline completions, handed out by the
        next dequeue; with ``finish_inline`` the operation is finished here instead, and
        returned done (``pending`` False, its result set, its context never called and
        cleared to None).

        ``last_error`` reads the thread's last error after a failed call (default: the
        handle kind's own, ``_last_error``); a hot caller passes the C function itself.

        Raises ``ClosedHandleError`` once closed, ``RuntimeError`` before the handle is
        associated with a port, and the classified ``OSError`` (``exception_for``) when the
        call fails at once; the operation is then given back (not pending), unless the
        kernel queued a packet for it anyway (see ``_packet_queued``).
        """
        port = self._port
        if port is None:
            if self._handle is None:  # says so whether or not it was ever associated
                raise ClosedHandleError(self.kind_name)
            raise RuntimeError(f"{what}: associate {self!r} with a CompletionPort first")
        operation.context = context
        with self._lock:
            handle = self._handle
            if handle is None:
                raise ClosedHandleError(self.kind_name)
            if self._lender_value is not None and self._lender_closed():
                raise ClosedHandleError(self.kind_name)
            port.register(operation)
            try:
                result = call(handle, *args)
            except Exception:
                # cffi refused an argument (TypeError, OverflowError, ...): no call was made.
                port.unregister(operation, 0, issued=False)
                raise
            # A KeyboardInterrupt can arrive just after the C call returned: the operation
            # then stays registered (kept alive), since the kernel may own it.
            if result != failed_with:
                if self._skip_on_success:  # done already, and no packet will come
                    if finish_inline:
                        port.finish_inline(operation)
                    else:
                        port.complete_inline(operation, self.key)
            else:
                error = self._last_error() if last_error is None else last_error()
                if error in done_at_once:
                    port.unregister(operation, 0)
                elif error != _IO_PENDING and error not in operation.warnings:
                    if not _packet_queued(operation):
                        port.unregister(operation, error)
                    raise exception_for(error, f"{what} on {self!r}")
        return operation


def _packet_queued(operation: Operation) -> bool:
    """Whether a call that failed at once still queued a completion packet.

    Windows queues one for every status that is not an error, warnings included (Microsoft's
    OVERLAPPED documentation: "When the request is completed, the system sets [Internal] to
    the status code for the completed request"). On Windows an oversized send fails with an
    error status, and this is False; Wine fails it with STATUS_BUFFER_OVERFLOW, a warning, and
    queues a packet: the operation then stays registered (its memory owned) until that packet
    is dequeued, and a new operation can never be handed the stale packet at the same address.
    """
    status = int(operation.overlapped.Internal) & 0xFFFFFFFF
    return 0x80000000 <= status < 0xC0000000  # NT_WARNING

