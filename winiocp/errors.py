"""Windows errors as Python exceptions, and the classification of a failed operation.

Two jobs, both small: turn a Windows error code into the exception a Python programmer expects
(``ConnectionResetError`` for a reset, ``TimeoutError`` for a time-out, ``OSError`` with
``.winerror`` for the rest), and say what kind of failure a completed operation suffered, so
callers branch on a name instead of on a table of numbers.

A completion reports the Win32 form of an error (RtlNtStatusToDosError of the packet's status:
ERROR_HOST_UNREACHABLE), a call that fails at once its Winsock form (WSAEHOSTUNREACH). Both
forms get the same ``Failure`` and the same ``errno``: CPython derives ``errno`` from a
``winerror`` only for the Winsock range, and turns the Win32 network codes into EINVAL, so
``exception_for`` sets the errno of their Winsock twin.
"""

from __future__ import annotations

import errno
from enum import Enum

from .constants import WinError

#: "The specified network name is no longer available": how Windows reports a reset on a socket
#: whose I/O was pending. Grouped with the other reset codes.
RESET_ERRORS = frozenset({
    WinError.ERROR_NETNAME_DELETED, WinError.WSAECONNRESET, WinError.ERROR_CONNECTION_ABORTED,
    WinError.WSAECONNABORTED, WinError.WSAENETRESET,
})
CANCELLED_ERRORS = frozenset({WinError.ERROR_OPERATION_ABORTED})
#: "Handles were closed": how Wine (STATUS_HANDLES_CLOSED) ends I/O whose handle was closed.
HANDLES_CLOSED_ERRORS = frozenset({WinError.ERROR_HANDLES_CLOSED})
#: ERROR_PORT_UNREACHABLE is an ICMP port-unreachable: nothing listens there, as a refusal.
REFUSED_ERRORS = frozenset({
    WinError.ERROR_CONNECTION_REFUSED, WinError.WSAECONNREFUSED, WinError.ERROR_PORT_UNREACHABLE,
})
TIMEOUT_ERRORS = frozenset({WinError.ERROR_SEM_TIMEOUT, WinError.WSAETIMEDOUT})
UNREACHABLE_ERRORS = frozenset({
    WinError.ERROR_HOST_UNREACHABLE, WinError.WSAEHOSTUNREACH,
    WinError.ERROR_NETWORK_UNREACHABLE, WinError.WSAENETUNREACH,
})
#: ERROR_CONNECTION_INVALID: "a nonexistent network connection", e.g. a send on a socket
#: that is not connected.
NOT_CONNECTED_ERRORS = frozenset({WinError.ERROR_CONNECTION_INVALID, WinError.WSAENOTCONN})
#: A datagram (or pipe message) larger than the receive buffer, or than a send may carry.
TOO_LARGE_ERRORS = frozenset({WinError.WSAEMSGSIZE, WinError.ERROR_MORE_DATA})
#: The Win32 network codes whose errno CPython gets wrong (EINVAL): their Winsock twin's.
_ERRNO_OF: dict[int, int] = {
    WinError.ERROR_HOST_UNREACHABLE: errno.EHOSTUNREACH,
    WinError.ERROR_NETWORK_UNREACHABLE: errno.ENETUNREACH,
    WinError.ERROR_CONNECTION_INVALID: errno.ENOTCONN,
    WinError.ERROR_PORT_UNREACHABLE: errno.ECONNREFUSED,
    WinError.ERROR_CONNECTION_REFUSED: errno.ECONNREFUSED,
}


class Failure(Enum):
    """Why an operation failed (a completion dequeued with FALSE and a non-NULL OVERLAPPED)."""

    #: The connection was reset or aborted (ERROR_NETNAME_DELETED, WSAECONNRESET, ...).
    RESET = "reset"
    #: ERROR_OPERATION_ABORTED after this library's ``cancel()`` asked for it.
    CANCELLED = "cancelled"
    #: ERROR_OPERATION_ABORTED without a cancel request: the handle was closed under it.
    CLOSED = "closed"
    #: The peer refused the connection.
    REFUSED = "refused"
    #: The operation timed out (ERROR_SEM_TIMEOUT, WSAETIMEDOUT).
    TIMED_OUT = "timed out"
    #: No route to the host or network (ERROR_HOST_UNREACHABLE, WSAENETUNREACH, ...).
    UNREACHABLE = "unreachable"
    #: The socket is not connected (ERROR_CONNECTION_INVALID, WSAENOTCONN).
    NOT_CONNECTED = "not connected"
    #: A datagram larger than the receive buffer (its first part was received, the rest
    #: discarded), or larger than a datagram may be (WSAEMSGSIZE, ERROR_MORE_DATA).
    TOO_LARGE = "message too large"
    #: Anything else; the error code says what.
    OTHER = "other"


def classify_failure(code: int, cancel_requested: bool) -> Failure:
    """The ``Failure`` for Windows error ``code`` (Win32 or Winsock form; never raises).

    ``cancel_requested`` tells a cancellation from a close: both end the I/O with
    ERROR_OPERATION_ABORTED. A code in no group is ``Failure.OTHER``.
    """
    if code in CANCELLED_ERRORS:
        return Failure.CANCELLED if cancel_requested else Failure.CLOSED
    for codes, failure in _FAILURE_GROUPS:
        if code in codes:
            return failure
    return Failure.OTHER


#: Each group of codes and the failure it is (cancellation, which depends on who asked, aside).
_FAILURE_GROUPS: tuple[tuple[frozenset[WinError], Failure], ...] = (
    (RESET_ERRORS, Failure.RESET),
    (HANDLES_CLOSED_ERRORS, Failure.CLOSED),
    (REFUSED_ERRORS, Failure.REFUSED),
    (TIMEOUT_ERRORS, Failure.TIMED_OUT),
    (UNREACHABLE_ERRORS, Failure.UNREACHABLE),
    (NOT_CONNECTED_ERRORS, Failure.NOT_CONNECTED),
    (TOO_LARGE_ERRORS, Failure.TOO_LARGE),
)


class OperationCancelledError(OSError):
    """The operation ended with ERROR_OPERATION_ABORTED (cancelled, or its handle closed)."""


class PortClosedError(OSError):
    """The completion port was closed (ERROR_ABANDONED_WAIT_0 / ERROR_INVALID_HANDLE)."""


class ClosedHandleError(OSError):
    """An operation was asked of a socket, handle or port this process already closed.

    Raised instead of touching the old handle value, which Windows may have handed to a new
    object since (rule 6 of the notes).
    """

    def __init__(self, what: str) -> None:
        super().__init__(errno.EBADF, f"{what} is closed")


class OperationPendingError(RuntimeError):
    """An OVERLAPPED that is still owned by the kernel was offered for another operation."""


_EXCEPTION_TYPES: dict[frozenset[WinError], type[OSError]] = {
    RESET_ERRORS: ConnectionResetError,
    CANCELLED_ERRORS: OperationCancelledError,
    HANDLES_CLOSED_ERRORS: OperationCancelledError,
    REFUSED_ERRORS: ConnectionRefusedError,
    TIMEOUT_ERRORS: TimeoutError,
}


def _describe(code: int) -> str:
    from .raw import ffi  # imported late: tools read this module without loading the DLLs

    text = ffi.getwinerror(code)[1].strip()
    return text or f"Windows error {code}"


def error_name(code: int) -> str:
    """The ``WinError`` name of ``code`` (``"WSAECONNRESET"``), or the number as text."""
    try:
        return WinError(code).name
    except ValueError:
        return str(code)


def exception_for(code: int, context: str) -> OSError:
    """The exception for Windows error ``code``; ``context`` says what was being done."""
    message = f"{context}: {_describe(code)} [{error_name(code)}]"
    for codes, exception_type in _EXCEPTION_TYPES.items():
        if code in codes:
            if code == WinError.ERROR_CONNECTION_ABORTED or code == WinError.WSAECONNABORTED:
                exception_type = ConnectionAbortedError
            break
    else:
        # OSError maps a winerror to the matching errno (and subclass) by itself.
        exception_type = OSError
    exception = exception_type(None, message, None, code)
    fixed = _ERRNO_OF.get(code)
    if fixed is not None:
        exception.errno = fixed
    return exception
