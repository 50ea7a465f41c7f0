r"""Socket readiness as a completion-port operation: the AFD driver's poll.

A completion port reports operations that finished; many programs (every asyncio library that
calls ``add_reader``, every ``selectors`` user) want to know instead when a socket *could* be
read or written. Winsock's own answers, ``select()`` and ``WSAPoll``, block a thread, and
``select()`` takes at most 512 sockets in CPython. The Winsock provider itself, the AFD
driver (``\Device\Afd``), has a better one: ``IOCTL_AFD_POLL``, an overlapped
DeviceIoControl that completes on a port, like any other operation, once one of the events
it asks for holds for the socket. trio, mio (Rust), wepoll and libuv all poll this way; the
request is not in the SDK (``cdefs/50_afd.h`` says where its layout comes from).

What this module gives:

* ``AfdDevice``: a handle to the driver, opened for overlapped I/O and associated with a
  port. Polls are issued on it, not on the socket, and name the socket inside the request.
* ``AfdPollOperation``: one poll. It owns its OVERLAPPED and its ``AFD_POLL_INFO`` (the same
  buffer is the request and the reply) until its completion is dequeued, like every
  operation; re-armed for the next poll of the same socket (never two at once: two polls on
  one socket confuse Windows, as trio and wepoll found).
* ``base_socket``: the socket the driver knows. A layered provider (an LSP) may hand out a
  socket of its own that wraps the base one; the poll must name the base one.

A poll is one-shot: it completes once, with the events that held, and must be issued again to
watch on. ``winiocp.readiness`` keeps one poll per watched socket and turns completions into
readable/writable, the level-triggered way ``select()`` reports them.
"""

from __future__ import annotations

from ._cdata import CData
from .constants import IOCTL_AFD_POLL, SOCKET_ERROR, AfdPollEvents, FileFlags, FileShare, IoControl
from .errors import exception_for
from .handles import Handle
from .operations import Operation, OpKind
from .raw import INVALID_HANDLE, ffi, kernel32, ws2_32

#: Events that make a socket readable, as select() would say: data, a connection to accept,
#: the peer's FIN, a reset, a failed connect (whose error a read then reports).
READABLE_EVENTS: int = (AfdPollEvents.AFD_POLL_RECEIVE | AfdPollEvents.AFD_POLL_ACCEPT
                        | AfdPollEvents.AFD_POLL_DISCONNECT | AfdPollEvents.AFD_POLL_ABORT
                        | AfdPollEvents.AFD_POLL_CONNECT_FAIL)
#: Events that make a socket writable: room to send, a reset, a failed connect (asyncio's
#: ``sock_connect`` waits for writability, then reads SO_ERROR).
WRITABLE_EVENTS: int = (AfdPollEvents.AFD_POLL_SEND | AfdPollEvents.AFD_POLL_ABORT
                        | AfdPollEvents.AFD_POLL_CONNECT_FAIL)
#: Every event bit a poll may ask for.
ALL_EVENTS: int = int(sum(AfdPollEvents))
#: The request's Timeout: the largest LONGLONG, i.e. until an event (or a cancel).
_NO_TIMEOUT = 0x7FFF_FFFF_FFFF_FFFF
_INFO_SIZE = ffi.sizeof("AFD_POLL_INFO")
_DEVICE_PATH = "\\\\.\\GLOBALROOT\\Device\\Afd\\winiocp"
_SYNCHRONIZE = 0x00100000
# The base-socket queries, in the order to try them: SIO_BASE_HANDLE asks the provider stack
# for the base socket; a layered provider that hides it may still answer the BSP queries, which
# are what select() itself uses.
_BASE_QUERIES = (IoControl.SIO_BASE_HANDLE, IoControl.SIO_BSP_HANDLE_POLL,
                 IoControl.SIO_BSP_HANDLE_SELECT)


def base_socket(sock: int) -> int:
    """The base provider's socket behind ``sock`` (the one an AFD poll must name).

    Asks ``SIO_BASE_HANDLE`` first, then the ``SIO_BSP_HANDLE_*`` queries a layered provider
    may answer instead. Raises ``TypeError`` for a value that is not an int, and the
    ``OSError`` of the first query (e.g. WSAENOTSOCK) when none answers.
    """
    if not isinstance(sock, int) or isinstance(sock, bool):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"a socket value must be an int, not {type(sock).__name__}")
    if sock < 0:
        raise ValueError(f"not a socket value: {sock}")
    result = ffi.new("SOCKET *")
    returned = ffi.new("DWORD *")
    first_error = 0
    for query in _BASE_QUERIES:
        if ws2_32.WSAIoctl(sock, query, ffi.NULL, 0, result, ffi.sizeof("SOCKET"), returned,
                           ffi.NULL, ffi.NULL) != SOCKET_ERROR:
            return int(result[0])
        first_error = first_error or ws2_32.WSAGetLastError()
    raise exception_for(first_error, f"WSAIoctl(SIO_BASE_HANDLE) on socket {sock}")


class AfdPollOperation(Operation):
    """One AFD poll of one socket: asks for ``requested`` events, completes with ``events``.

    Owns its ``AFD_POLL_INFO`` (request and reply) until its completion is dequeued; re-armed
    by ``AfdDevice.poll(..., operation=...)`` for the next poll of the same socket.
    """

    __slots__ = ("device", "info", "socket", "requested", "events")

    reusable = True
    post_processing = True

    def __init__(self, device: AfdDevice) -> None:
        super().__init__(OpKind.AFD_POLL, device)
        #: The driver handle it is issued on (its ``owner``, typed).
        self.device: AfdDevice = device
        #: The request and, once completed, the reply (cffi memory, owned here).
        self.info: CData = ffi.new("AFD_POLL_INFO *")
        #: The base socket polled.
        self.socket: int = 0
        #: The ``AFD_POLL_*`` events asked for.
        self.requested: int = 0
        #: The ``AFD_POLL_*`` events that held when it completed (0 until then).
        self.events: int = 0

    def on_success(self) -> int:
        info = self.info
        self.events = int(info.Handles[0].Events) if info.NumberOfHandles else 0
        return 0


class AfdDevice(Handle):
    r"""A handle to the AFD driver (``\Device\Afd``), on which socket polls are issued.

    Associate it with a completion port (``port.associate(device)``) before polling. Any
    number of sockets can be polled through one device, but cancelling costs more the more
    polls a device has pending: ``winiocp.readiness`` spreads sockets over several.
    """

    @classmethod
    def open(cls) -> AfdDevice:
        """Open a new handle to the driver. Raises the ``OSError`` of CreateFileW."""
        handle = kernel32.CreateFileW(
            _DEVICE_PATH, _SYNCHRONIZE, FileShare.FILE_SHARE_READ | FileShare.FILE_SHARE_WRITE,
            ffi.NULL, 3,  # OPEN_EXISTING
            FileFlags.FILE_FLAG_OVERLAPPED, ffi.NULL)
        if handle == INVALID_HANDLE:
            raise exception_for(kernel32.GetLastError(), "CreateFileW(\\Device\\Afd)")
        device = cls(handle, "\\Device\\Afd")
        device.kind_name = "AFD device"
        return device

    def __repr__(self) -> str:
        return f"<winiocp.AfdDevice{' closed' if self._handle is None else ''}>"

    def poll(self, sock: int, events: int, *, operation: AfdPollOperation | None = None,
             context: object = None) -> AfdPollOperation:
        """Post a poll of the base socket ``sock`` (``base_socket``) for ``events``
        (``AfdPollEvents`` bits); it completes once one of them holds (at once if one does
        already), with the events in ``operation.events``.

        ``operation`` re-arms a finished poll of this device (raises
        ``OperationPendingError`` while it is pending). Raises ``ValueError`` for events
        outside ``AfdPollEvents`` or none, ``TypeError`` for a non-int socket, and the
        ``OSError`` of DeviceIoControl when the call fails at once (e.g. an invalid socket).
        """
        if not isinstance(sock, int) or isinstance(sock, bool):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"sock must be an int socket value, not {type(sock).__name__}")
        if not isinstance(events, int) or not events or events & ~ALL_EVENTS:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"events must be AFD_POLL_* bits, got {events!r}")
        if operation is None:
            operation = AfdPollOperation(self)
        elif operation.owner is not self:
            raise ValueError(f"{operation!r} belongs to another device")
        else:
            operation.rearm()
        if not 0 <= sock < 1 << (8 * ffi.sizeof("SOCKET")):
            raise ValueError(f"not a socket value: {sock}")
        info = operation.info
        info.Timeout = _NO_TIMEOUT
        info.NumberOfHandles = 1
        info.Exclusive = 0
        entry = info.Handles[0]
        entry.Handle = ffi.cast("HANDLE", sock)
        entry.Events = events
        entry.Status = 0
        operation.socket = sock
        operation.requested = events
        operation.events = 0
        self.issue(operation, "DeviceIoControl(IOCTL_AFD_POLL)", kernel32.DeviceIoControl, 0,
                   context, args=(IOCTL_AFD_POLL, info, _INFO_SIZE, info, _INFO_SIZE, ffi.NULL,
                                  operation.overlapped))
        return operation
