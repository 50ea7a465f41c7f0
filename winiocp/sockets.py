"""``Socket``: an overlapped Winsock socket whose operations complete on a completion port.

What it guarantees, beyond the raw calls:

* the SOCKET value is closed exactly once, and no call touches it after ``close()`` (Windows
  hands recently closed values to new sockets: rule 6), even from another thread;
* every accepted socket gets SO_UPDATE_ACCEPT_CONTEXT before user code sees it (rule 7), and
  every ConnectEx'd socket SO_UPDATE_CONNECT_CONTEXT;
* every operation owns its memory until its completion is dequeued (``operations.py``), and a
  call that fails at once raises the classified error and gives the memory back (rule 10);
* bad arguments raise Python exceptions before any pointer reaches Winsock.
"""

from __future__ import annotations

import socket as _stdlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from . import addresses
from ._cdata import CData
from .addresses import Address
from .constants import (
    INVALID_SOCKET,
    SOCKET_ERROR,
    XP1_IFS_HANDLES,
    AddressFamily,
    CompletionNotificationModes,
    IoControl,
    IPProto,
    Shutdown,
    SocketLevel,
    SocketOption,
    SocketType,
    TcpOption,
    TransmitFileFlags,
    WinError,
    WSASocketFlags,
)
from .errors import ClosedHandleError, exception_for
from .operations import (
    AddressedOperation,
    BufferLike,
    Operation,
    OpKind,
    RecvFromOperation,
    RecvOperation,
    SendOperation,
    SendToOperation,
    check_size,
)
from .owner import OverlappedOwner, weak_fileno
from .raw import ExtensionFunctions, extension_functions, ffi, kernel32, ws2_32

if TYPE_CHECKING:
    from .handles import Handle
    from .port import CompletionPort

#: AcceptEx's address slots: the largest sockaddr plus the 16 bytes the documentation demands.
ACCEPT_ADDRESS_SIZE = addresses.SOCKADDR_STORAGE_SIZE + 16
# The kinds tested on every receive and send posted, as module globals (one load, not two).
_RECV, _SEND = OpKind.RECV, OpKind.SEND
_EXTENSIONS: dict[tuple[int, int, int], ExtensionFunctions] = {}


class Socket(OverlappedOwner[int]):
    """An overlapped, non-inheritable socket (IPv4/IPv6, TCP/UDP).

    It owns the SOCKET: ``close()`` (or leaving a ``with`` block) calls closesocket once,
    and no call reaches the value afterwards (``ClosedHandleError``). A ``borrow`` view
    never closes it. Each overlapped method returns an operation that owns the memory the
    kernel may write until its completion is dequeued; associate the socket with a
    ``CompletionPort`` first. Raises ``ValueError`` for a family other than AF_INET/AF_INET6
    or a type other than SOCK_STREAM/SOCK_DGRAM, and the ``OSError`` of WSASocketW's error.
    """

    kind_name = "socket"

    def __init__(self, family: int = AddressFamily.AF_INET, type: int = SocketType.SOCK_STREAM,
                 proto: int = 0) -> None:
        if family not in (AddressFamily.AF_INET, AddressFamily.AF_INET6):
            raise ValueError(f"family must be AF_INET or AF_INET6, not {family}")
        if type not in (SocketType.SOCK_STREAM, SocketType.SOCK_DGRAM):
            raise ValueError(f"type must be SOCK_STREAM or SOCK_DGRAM, not {type}")
        flags = WSASocketFlags.WSA_FLAG_OVERLAPPED | WSASocketFlags.WSA_FLAG_NO_HANDLE_INHERIT
        handle = ws2_32.WSASocketW(family, type, proto, ffi.NULL, 0, flags)
        if handle == INVALID_SOCKET:
            raise exception_for(ws2_32.WSAGetLastError(), "WSASocketW")
        self._init(handle, family, type, proto)

    def _init(self, handle: int, family: int, type: int, proto: int) -> None:
        super().__init__(handle)
        self.family: AddressFamily = AddressFamily(family)
        self.type: SocketType = SocketType(type)
        self.proto: int = proto
        self._listening = False
        #: The AcceptEx pending with this socket as its accept socket (owned by the listener).
        self._accept_target_of: AcceptOperation | None = None

    @classmethod
    def _adopt(cls, handle: int, family: int, type: int, proto: int) -> Socket:
        sock = cls.__new__(cls)
        sock._init(handle, family, type, proto)
        return sock

    @classmethod
    def from_stdlib(cls, sock: _stdlib.socket) -> Socket:
        """Take over a stdlib socket (which Python creates overlapped); ``sock`` is detached."""
        if sock.family not in (_stdlib.AF_INET, _stdlib.AF_INET6):
            raise ValueError(f"only AF_INET/AF_INET6 sockets can be adopted, not {sock.family!r}")
        family, type, proto = int(sock.family), int(sock.type), sock.proto
        # A stdlib time-out leaves the SOCKET non-blocking; give it back blocking, as a
        # socket.socket(fileno=...) made from it later will assume.
        sock.setblocking(True)
        return cls._adopt(sock.detach(), family, type, proto)

    @classmethod
    def borrow(cls, sock: _stdlib.socket, *, listening: bool | None = None) -> Socket:
        """A view of a stdlib socket that stays the stdlib socket's: overlapped operations
        on it complete on a port as usual, ``close()`` of the view only lets go, and once the
        stdlib socket is closed the view refuses every call (``ClosedHandleError``) instead of
        touching a value Windows may have reused. For event loops that hand out stdlib
        sockets (asyncio) but do their I/O through winiocp.

        ``listening`` says whether a stream socket listens, when the caller knows (a socket
        it has just made, one it has connected or accepted): the view then refuses
        ``recv``/``send`` or ``accept`` as it should without asking Windows, which costs a
        getsockopt (a system call per borrow). ``None`` asks. A wrong answer cannot reach
        the wrong socket: Windows itself then fails the call (WSAENOTCONN, WSAEINVAL; Wine
        leaves such a call pending instead)."""
        value = sock.fileno()
        if value == -1:
            raise ClosedHandleError("socket")
        if sock.family not in (_stdlib.AF_INET, _stdlib.AF_INET6):
            raise ValueError(f"only AF_INET/AF_INET6 sockets can be borrowed, not {sock.family!r}")
        view = cls._adopt(value, int(sock.family), int(sock.type), sock.proto)
        view._lend(value, weak_fileno(sock))  # (the view must not keep the socket alive)
        if sock.type == _stdlib.SOCK_STREAM:
            view._listening = bool(view.getsockopt_int(
                SocketLevel.SOL_SOCKET, SocketOption.SO_ACCEPTCONN)
                if listening is None else listening)
        return view

    def to_stdlib(self) -> _stdlib.socket:
        """Give the SOCKET to a stdlib ``socket.socket``; this wrapper is closed afterwards.

        Refused while operations are pending. Associations with a port stay (Windows has no
        way to undo one).
        """
        with self._lock:
            handle = self._checked()
            target_of = self._accept_target_of
            if (target_of is not None and target_of.pending and target_of.accepted is self) or (
                self._port is not None
                and any(op.uses(self) for op in self._port.pending_operations())
            ):
                raise RuntimeError(f"{self!r} has pending operations")
            self._handle = None
        return _stdlib.socket(self.family, self.type, self.proto, fileno=handle)

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"fd={self._handle}"
        return f"<winiocp.Socket {self.family.name} {self.type.name} {state}>"

    # -- handle ownership (OverlappedOwner) ------------------------------------------------

    def _close_handle(self, handle: int) -> None:
        ws2_32.closesocket(handle)

    def _as_port_handle(self, handle: int) -> CData:
        return ffi.cast("HANDLE", handle)

    def _last_error(self) -> int:
        return ws2_32.WSAGetLastError()

    def fileno(self) -> int:
        """The SOCKET value. Only meaningful until ``close()``: the OS reuses values."""
        return self._checked()

    def _raise_last(self, what: str) -> None:
        raise exception_for(ws2_32.WSAGetLastError(), f"{what} on {self!r}")

    def _extensions(self) -> ExtensionFunctions:
        kind = (self.family, self.type, self.proto)
        found = _EXTENSIONS.get(kind)
        if found is None:
            found = _EXTENSIONS[kind] = extension_functions(self._checked())
        return found

    # -- plain calls -------------------------------------------------------------------------

    def bind(self, address: tuple[object, ...]) -> None:
        """Bind to ``address`` (``(host, port)``, or the IPv6 4-tuple; ``""`` is the wildcard).

        Raises as ``addresses.encode`` does for a bad address, and the ``OSError`` of bind's
        error (e.g. ``WSAEADDRINUSE``).
        """
        sockaddr = addresses.Sockaddr(self.family, address)
        with self._lock:
            if ws2_32.bind(self._checked(), sockaddr.pointer, sockaddr.length) == SOCKET_ERROR:
                self._raise_last(f"bind({address!r})")

    def _is_bound(self) -> bool:
        try:
            self.getsockname()
        except OSError as exc:
            if exc.winerror == WinError.WSAEINVAL:  # "not bound"
                return False
            raise
        return True

    def listen(self, backlog: int = 128) -> None:
        """Listen (after ``bind``), so ``accept()`` can be posted; ``ValueError`` for UDP."""
        if self.type != SocketType.SOCK_STREAM:
            raise ValueError("listen() needs a SOCK_STREAM socket")
        with self._lock:
            if ws2_32.listen(self._checked(), backlog) == SOCKET_ERROR:
                self._raise_last("listen")
        self._listening = True

    def _name(self, getter: Callable[[int, CData, CData], int], what: str) -> Address:
        storage = ffi.new("struct sockaddr_storage *")
        length = ffi.new("int *", ffi.sizeof("struct sockaddr_storage"))
        pointer = ffi.cast("struct sockaddr *", storage)
        with self._lock:
            if getter(self._checked(), pointer, length) == SOCKET_ERROR:
                self._raise_last(what)
        return addresses.decode_cdata(pointer, length[0])

    def getsockname(self) -> Address:
        """The local address, as the ``socket`` module gives it (``OSError`` if unbound)."""
        return self._name(ws2_32.getsockname, "getsockname")

    def getpeername(self) -> Address:
        """The peer's address (``OSError`` if not connected)."""
        return self._name(ws2_32.getpeername, "getpeername")

    def shutdown(self, how: int = Shutdown.SD_SEND) -> None:
        """shutdown(): by default ``SD_SEND``, which sends a FIN once queued data is out.

        Raises ``ValueError`` for another ``how``, and the ``OSError`` of shutdown's error
        (``WSAENOTCONN`` on a socket that is not connected).
        """
        if how not in (Shutdown.SD_RECEIVE, Shutdown.SD_SEND, Shutdown.SD_BOTH):
            raise ValueError(f"how must be SD_RECEIVE, SD_SEND or SD_BOTH, not {how}")
        with self._lock:
            if ws2_32.shutdown(self._checked(), how) == SOCKET_ERROR:
                self._raise_last("shutdown")

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """Set an option: an int (as a 4-byte int) or raw bytes; raises the ``OSError`` of
        setsockopt's error (``WSAENOPROTOOPT`` for an unknown option)."""
        data = value if isinstance(value, bytes) else int(value).to_bytes(4, "little", signed=True)
        with self._lock:
            if ws2_32.setsockopt(self._checked(), level, option, data, len(data)) == SOCKET_ERROR:
                self._raise_last(f"setsockopt({level}, {option})")

    def getsockopt(self, level: int, option: int, size: int = 4) -> bytes:
        """Read an option's raw bytes (at most ``size``); raises the ``OSError`` of
        getsockopt's error."""
        check_size(size)
        buffer = ffi.new("char[]", max(size, 1))
        length = ffi.new("int *", size)
        with self._lock:
            if ws2_32.getsockopt(self._checked(), level, option, buffer, length) == SOCKET_ERROR:
                self._raise_last(f"getsockopt({level}, {option})")
        return ffi.buffer(buffer, length[0])[:]

    def getsockopt_int(self, level: int, option: int) -> int:
        """An option's value read as a signed 4-byte little-endian int."""
        return int.from_bytes(self.getsockopt(level, option, 4).ljust(4, b"\0"), "little",
                              signed=True)

    def set_linger(self, enabled: bool, seconds: int = 0) -> None:
        """SO_LINGER. ``set_linger(True, 0)``: close() then resets (RST), never TIME_WAIT."""
        if not 0 <= seconds <= 0xFFFF:
            raise ValueError(f"linger seconds must be 0-65535, got {seconds}")
        value = int(enabled).to_bytes(2, "little") + seconds.to_bytes(2, "little")
        self.setsockopt(SocketLevel.SOL_SOCKET, SocketOption.SO_LINGER, value)

    def get_linger(self) -> tuple[bool, int]:
        """SO_LINGER as ``(enabled, seconds)``."""
        raw = self.getsockopt(SocketLevel.SOL_SOCKET, SocketOption.SO_LINGER, 4)
        return bool(int.from_bytes(raw[:2], "little")), int.from_bytes(raw[2:4], "little")

    def set_nodelay(self, enabled: bool) -> None:
        """TCP_NODELAY: with ``True``, small sends go out at once (no Nagle delay)."""
        self.setsockopt(SocketLevel.IPPROTO_TCP, TcpOption.TCP_NODELAY, int(enabled))

    def get_nodelay(self) -> bool:
        """Whether TCP_NODELAY is set."""
        return bool(self.getsockopt_int(SocketLevel.IPPROTO_TCP, TcpOption.TCP_NODELAY))

    def set_buffer_sizes(self, receive: int | None = None, send: int | None = None) -> None:
        """SO_RCVBUF and SO_SNDBUF in bytes (``None`` leaves one as it is)."""
        for option, size in ((SocketOption.SO_RCVBUF, receive), (SocketOption.SO_SNDBUF, send)):
            if size is not None:
                self.setsockopt(SocketLevel.SOL_SOCKET, option, check_size(size, "buffer size"))

    def get_buffer_sizes(self) -> tuple[int, int]:
        """``(SO_RCVBUF, SO_SNDBUF)`` in bytes."""
        return (self.getsockopt_int(SocketLevel.SOL_SOCKET, SocketOption.SO_RCVBUF),
                self.getsockopt_int(SocketLevel.SOL_SOCKET, SocketOption.SO_SNDBUF))

    def set_reuse_address(self, enabled: bool) -> None:
        """SO_REUSEADDR (on Windows it lets another socket bind the same port: prefer
        ``set_exclusive_address_use`` for servers)."""
        self.setsockopt(SocketLevel.SOL_SOCKET, SocketOption.SO_REUSEADDR, int(enabled))

    def set_exclusive_address_use(self, enabled: bool) -> None:
        """SO_EXCLUSIVEADDRUSE: no other socket may bind this address (set before ``bind``)."""
        self.setsockopt(SocketLevel.SOL_SOCKET, SocketOption.SO_EXCLUSIVEADDRUSE, int(enabled))

    def set_udp_connreset(self, enabled: bool) -> None:
        """SIO_UDP_CONNRESET: whether an ICMP port-unreachable, the answer to a datagram this
        socket sent to a port where nothing listens, fails a receive of this socket.

        On by default in Windows: the receive then fails (WSAECONNRESET at once, or a
        completion with ERROR_PORT_UNREACHABLE, ``Failure.REFUSED``), which a UDP server
        serving many peers rarely wants. ``set_udp_connreset(False)`` turns it off.
        """
        if self.type != SocketType.SOCK_DGRAM:
            raise ValueError("SIO_UDP_CONNRESET needs a SOCK_DGRAM socket")
        value = ffi.new("BOOL *", bool(enabled))
        returned = ffi.new("DWORD *")
        with self._lock:
            if ws2_32.WSAIoctl(self._checked(), IoControl.SIO_UDP_CONNRESET, value,
                               ffi.sizeof("BOOL"), ffi.NULL, 0, returned, ffi.NULL,
                               ffi.NULL) == SOCKET_ERROR:
                self._raise_last("WSAIoctl(SIO_UDP_CONNRESET)")

    def set_skip_on_success(self) -> bool:
        """Turn on FILE_SKIP_COMPLETION_PORT_ON_SUCCESS where it is safe; True if it is on.

        An operation that succeeds at once then queues no completion packet: ``issue`` gives
        it to the port's own queue, and the next ``get()``/``get_many()`` hands it out like
        any completion, with no system call to dequeue it (see ``port.py``). Nothing else
        changes for the caller. It cannot be turned off again.

        Only for stream sockets, and only while every installed Winsock provider returns
        IFS handles: SetFileCompletionNotificationModes' documentation says the mode is
        compatible only with such providers and to check the WSAEnumProtocols records for
        XP1_IFS_HANDLES; the records checked are those of IPv4 and IPv6 providers (libuv
        tests the same families). Datagram sockets stay as they are: a
        truncated datagram "fails" at once yet still completes, a case the mode leaves
        unspecified. Returns False, changing nothing, where the mode is not used; raises
        ``ClosedHandleError`` once closed and the ``OSError`` of the call's failure.
        """
        if self.type != SocketType.SOCK_STREAM or not _providers_all_ifs():
            return False
        with self._lock:
            handle = self._checked()
            if not self._skip_on_success:
                if not kernel32.SetFileCompletionNotificationModes(
                        ffi.cast("HANDLE", handle),
                        CompletionNotificationModes.FILE_SKIP_COMPLETION_PORT_ON_SUCCESS):
                    raise exception_for(kernel32.GetLastError(),
                                        "SetFileCompletionNotificationModes")
                self._skip_on_success = True
        return True

    @property
    def skips_on_success(self) -> bool:
        """Whether ``set_skip_on_success`` turned the mode on for this socket."""
        return self._skip_on_success

    # -- overlapped operations ---------------------------------------------------------------

    def _issue(self, operation: Operation, what: str, call: Callable[[int], int],
               returns_bool: bool, context: object) -> Operation:
        """Issue a Winsock call: BOOL functions fail with FALSE, int ones with SOCKET_ERROR."""
        return self.issue(operation, what, call, 0 if returns_bool else SOCKET_ERROR, context)

    def _reusable(self, reuse: Operation | None, kind: OpKind,
                  factory: Callable[[], Operation]) -> Operation:
        if reuse is None:
            return factory()
        if reuse.kind is not kind or not reuse.reusable:
            raise ValueError(f"{reuse!r} cannot be reused for {kind.value} (rule 11: an "
                             "OVERLAPPED is re-armed only for another call of its own kind)")
        if reuse.owner is not self:
            raise ValueError(f"{reuse!r} belongs to another socket")
        reuse.rearm()
        return reuse

    def _need_stream(self, what: str) -> None:
        """``what`` needs a connected (or connectable) stream socket, not a listening one."""
        if self.type != SocketType.SOCK_STREAM:
            raise ValueError(f"{what} needs a SOCK_STREAM socket")
        if self._listening:
            raise ValueError(f"{what} needs a connected socket, not a listening one")

    def recv(self, size: int = 65536, *, reuse: RecvOperation | None = None,
             context: object = None) -> RecvOperation:
        """Post a WSARecv into a new ``size``-byte buffer. ``size=0`` posts a zero-byte read."""
        return self.recv_into([bytearray(check_size(size))], reuse=reuse, context=context)

    def recv_into(self, buffers: Sequence[BufferLike], *, reuse: RecvOperation | None = None,
                  flags: int = 0, context: object = None) -> RecvOperation:
        """Post a WSARecv scattering into writable ``buffers`` (pinned until it completes).

        Raises ``ValueError`` on a listening socket or for a ``reuse`` operation that is not
        this socket's receive, ``OperationPendingError`` if ``reuse`` is still pending,
        ``TypeError`` for a read-only or non-buffer, and the classified ``OSError`` when
        WSARecv fails at once (rule 10: e.g. ``ConnectionResetError``).
        """
        if self._listening:
            raise ValueError("recv needs a connected socket, not a listening one")
        if reuse is None:
            operation = RecvOperation(OpKind.RECV, self)
        elif reuse.kind is _RECV and reuse.owner is self:  # (re-armed once per read)
            reuse.rearm()
            operation = reuse
        else:
            self._reusable(reuse, OpKind.RECV, _no_factory)  # raises the reason why not
            operation = reuse
        operation.set_buffers(buffers, writable=True)
        operation.flags[0] = flags
        wsabufs, count, winsock = operation.wsabufs, len(operation.buffers), ws2_32
        # (issue's arguments given by position: keywords cost a hot call more)
        self.issue(operation, "WSARecv", winsock.WSARecv, SOCKET_ERROR, context, (), False,
                   (wsabufs, count, ffi.NULL, operation.flags, operation.overlapped, ffi.NULL),
                   winsock.WSAGetLastError)
        return operation

    def send(self, data: BufferLike | Sequence[BufferLike], flags: int = 0, *,
             reuse: SendOperation | None = None, context: object = None,
             finish_inline: bool = False) -> SendOperation:
        """Post a WSASend of ``data`` (one buffer, or a list to gather), zero-copy: the
        operation pins the buffers until it completes, so do not change them meanwhile.
        ``reuse`` re-arms a finished send of this socket instead of making a new one.

        With ``finish_inline``, a send that completes at once on a socket in skip-on-success
        mode is returned finished (``pending`` False, ``bytes_transferred`` set): no
        completion is dequeued for it, ``context`` is not called, and the operation's
        ``context`` is None. A send that pended keeps its ``context``: with several threads
        dequeuing, its completion may be dequeued before this returns, so ``pending`` alone
        does not tell the two apart.

        Raises ``ValueError`` on a listening socket or for a ``reuse`` operation that is not
        this socket's send, ``OperationPendingError`` if ``reuse`` is still pending,
        ``TypeError`` for ``str`` or a non-buffer, and the classified ``OSError`` when
        WSASend fails at once.
        """
        if self._listening:
            raise ValueError("send needs a connected socket, not a listening one")
        if reuse is None:
            operation = SendOperation(OpKind.SEND, self)
        elif reuse.kind is _SEND and reuse.owner is self:  # (re-armed once per send)
            reuse.rearm()
            operation = reuse
        else:
            self._reusable(reuse, OpKind.SEND, _no_factory)  # raises the reason why not
            operation = reuse
        operation.set_buffers((data,) if type(data) is bytes else _as_buffer_list(data),
                              writable=False)
        wsabufs, count, winsock = operation.wsabufs, len(operation.buffers), ws2_32
        self.issue(operation, "WSASend", winsock.WSASend, SOCKET_ERROR, context, (),
                   finish_inline,
                   (wsabufs, count, ffi.NULL, flags, operation.overlapped, ffi.NULL),
                   winsock.WSAGetLastError)
        return operation

    def recvfrom_into(self, buffer: BufferLike, *, reuse: RecvFromOperation | None = None,
                      context: object = None) -> RecvFromOperation:
        """Post a WSARecvFrom into ``buffer`` (writable, pinned until it completes); as
        ``recvfrom`` otherwise."""
        if self.type != SocketType.SOCK_DGRAM:
            raise ValueError("recvfrom needs a SOCK_DGRAM socket")
        operation = self._reusable(reuse, OpKind.RECVFROM,
                                   lambda: RecvFromOperation(OpKind.RECVFROM, self))
        assert isinstance(operation, RecvFromOperation)
        operation.set_buffers([buffer], writable=True)
        operation.sockaddr_length[0] = ffi.sizeof("struct sockaddr_storage")
        self._issue(operation, "WSARecvFrom", lambda h: ws2_32.WSARecvFrom(
            h, operation.wsabufs, 1, ffi.NULL, operation.flags,
            ffi.cast("struct sockaddr *", operation.sockaddr), operation.sockaddr_length,
            operation.overlapped, ffi.NULL), returns_bool=False, context=context)
        return operation

    def recvfrom(self, size: int = 65536, *, reuse: RecvFromOperation | None = None,
                 context: object = None) -> RecvFromOperation:
        """Post a WSARecvFrom (UDP); the completed operation has ``.data`` and ``.peer``.

        A datagram larger than ``size`` completes FAILED with ``Failure.TOO_LARGE``
        (WSAEMSGSIZE / ERROR_MORE_DATA): ``.data`` holds its first ``size`` bytes, the rest is
        discarded, and ``.peer`` says who sent it. ``reuse=`` starts with clear flags."""
        return self.recvfrom_into(bytearray(check_size(size)), reuse=reuse, context=context)

    def sendto(self, data: BufferLike, address: tuple[object, ...], *,
               context: object = None) -> SendToOperation:
        """Post a WSASendTo. A literal ``address`` is never resolved; a datagram larger than
        the protocol allows raises ``OSError`` (WSAEMSGSIZE) and nothing is queued."""
        if self.type != SocketType.SOCK_DGRAM:
            raise ValueError("sendto needs a SOCK_DGRAM socket")
        operation = SendToOperation(OpKind.SENDTO, self)
        operation.set_buffers([data], writable=False)
        encoded = addresses.encode(self.family, address)
        ffi.memmove(operation.sockaddr, encoded, len(encoded))
        self._issue(operation, "WSASendTo", lambda h: ws2_32.WSASendTo(
            h, operation.wsabufs, 1, ffi.NULL, 0,
            ffi.cast("struct sockaddr *", operation.sockaddr), len(encoded),
            operation.overlapped, ffi.NULL), returns_bool=False, context=context)
        return operation

    def accept(self, accept_socket: Socket | None = None, *, recv_size: int = 0,
               reuse: AcceptOperation | None = None,
               context: object = None) -> AcceptOperation:
        """Post an AcceptEx. On completion the operation's ``accepted`` socket already has
        SO_UPDATE_ACCEPT_CONTEXT set, and ``local_address``/``remote_address``/``data`` are
        filled in. With ``recv_size`` > 0 it completes only after that much data arrives.

        Without ``accept_socket`` a new socket of the listener's kind is made (and closed
        again if posting fails). Raises ``ValueError`` if this socket is not listening or
        ``accept_socket`` is this socket, and the classified ``OSError`` when AcceptEx
        fails at once (e.g. a client that reset while queued: post another accept).
        """
        if not self._listening:
            raise ValueError("accept needs a listening socket: call listen() first")
        check_size(recv_size, "recv_size")
        if accept_socket is self:
            raise ValueError("the accept socket must not be the listening socket")
        created = accept_socket is None
        target = Socket(self.family, self.type, self.proto) if accept_socket is None else accept_socket
        try:
            operation = self._reusable(reuse, OpKind.ACCEPT,
                                       lambda: AcceptOperation(self, target))
            assert isinstance(operation, AcceptOperation)
            operation.prepare(target, recv_size)
            accept_ex = self._extensions().AcceptEx

            def call(listen_handle: int) -> int:
                # The accept socket's value is read under its lock (taken after the
                # listener's, as everywhere): a racing close() cannot hand AcceptEx a value
                # Windows has already given to another socket.
                with target._lock:
                    return accept_ex(listen_handle, target._checked(), operation.output,
                                     recv_size, ACCEPT_ADDRESS_SIZE, ACCEPT_ADDRESS_SIZE,
                                     operation.received, operation.overlapped)

            self._issue(operation, "AcceptEx", call, returns_bool=True, context=context)
        except BaseException:
            if created:
                target.close()
            raise
        return operation

    def connect(self, address: tuple[object, ...], data: BufferLike = b"", *,
                context: object = None) -> ConnectOperation:
        """Post a ConnectEx (binding to the wildcard address first if unbound, as it requires);
        on completion SO_UPDATE_CONNECT_CONTEXT is set and ``data`` has been sent.

        Raises ``ValueError`` for a UDP or listening socket, as ``addresses.encode`` does
        for a bad address, and the classified ``OSError`` when ConnectEx fails at once.
        A refusal normally comes as a FAILED completion (``Failure.REFUSED``).
        """
        self._need_stream("connect")
        if not self._is_bound():  # ConnectEx requires a bound socket
            self.bind(("", 0))
        check_size(memoryview(data).nbytes, "connect data size")
        sockaddr = addresses.Sockaddr(self.family, address)
        operation = ConnectOperation(self)
        send_buffer = operation.set_data(data)
        connect_ex = self._extensions().ConnectEx
        operation.keep_alive(sockaddr, send_buffer)
        self._issue(operation, "ConnectEx", lambda h: connect_ex(
            h, sockaddr.pointer, sockaddr.length, send_buffer, len(send_buffer), operation.sent,
            operation.overlapped), returns_bool=True, context=context)
        return operation

    def disconnect(self, reuse: bool = False, *, context: object = None) -> Operation:
        """Post a DisconnectEx; with ``reuse`` (TF_REUSE_SOCKET) the socket can then be given
        to ``accept()`` or ``connect()`` again."""
        self._need_stream("disconnect")
        operation = Operation(OpKind.DISCONNECT, self)
        flags = TransmitFileFlags.TF_REUSE_SOCKET if reuse else 0
        disconnect_ex = self._extensions().DisconnectEx
        self._issue(operation, "DisconnectEx",
                    lambda h: disconnect_ex(h, operation.overlapped, flags, 0),
                    returns_bool=True, context=context)
        return operation

    def transmit_file(self, file: Handle, count: int = 0, *, offset: int = 0,
                      head: bytes = b"", tail: bytes = b"", flags: int = 0,
                      context: object = None) -> Operation:
        """Post a TransmitFile of ``count`` bytes (0: to the end) of ``file`` from ``offset``,
        with optional ``head`` and ``tail`` data."""
        self._need_stream("transmit_file")
        check_size(count, "count")
        operation = Operation(OpKind.TRANSMIT_FILE, self)
        operation.set_offset(offset)
        buffers = ffi.new("TRANSMIT_FILE_BUFFERS *")
        head_c, tail_c = ffi.new("char[]", head), ffi.new("char[]", tail)
        buffers.Head, buffers.HeadLength = head_c, len(head)
        buffers.Tail, buffers.TailLength = tail_c, len(tail)
        operation.keep_alive(buffers, head_c, tail_c, file)
        transmit = self._extensions().TransmitFile

        def call(socket_handle: int) -> int:
            with file._lock:  # the file's value is read under its lock, as in accept()
                return transmit(socket_handle, file._checked(), count, 0,
                                operation.overlapped, buffers, flags)

        self._issue(operation, "TransmitFile", call, returns_bool=True, context=context)
        return operation

    def _update_accept_context(self, listener: Socket) -> int:
        """SO_UPDATE_ACCEPT_CONTEXT with the listening socket's value: 0 or the error.

        The listener's lock is held so its value cannot be closed (and reused by Windows for
        another socket) while it is being passed.
        """
        with listener._lock:
            listen_handle = listener._handle
            if listen_handle is None:
                return WinError.WSAENOTSOCK  # the listener was closed before we got here
            value = ffi.new("SOCKET *", listen_handle)
            with self._lock:
                handle = self._handle
                if handle is None:
                    return WinError.WSAENOTSOCK
                if ws2_32.setsockopt(handle, SocketLevel.SOL_SOCKET,
                                     SocketOption.SO_UPDATE_ACCEPT_CONTEXT,
                                     ffi.cast("char *", value),
                                     ffi.sizeof("SOCKET")) == SOCKET_ERROR:
                    return ws2_32.WSAGetLastError()
        return 0

    def _update_connect_context(self) -> int:
        with self._lock:
            handle = self._handle
            if handle is None:
                return WinError.WSAENOTSOCK
            if ws2_32.setsockopt(handle, SocketLevel.SOL_SOCKET,
                                 SocketOption.SO_UPDATE_CONNECT_CONTEXT, ffi.NULL,
                                 0) == SOCKET_ERROR:
                return ws2_32.WSAGetLastError()
        return 0


class AcceptOperation(Operation):
    """AcceptEx: owns the output buffer (first data + both addresses) and the byte count.

    While it is pending it also keeps the accept socket alive (``accepted``); the socket is
    the caller's once the completion is dequeued (close it if the accept failed).
    Reusable (rule 11): ``listener.accept(reuse=op)`` re-arms it. It is Socket's friend:
    it calls the accept socket's private hooks (SO_UPDATE_ACCEPT_CONTEXT, the extension
    functions), hence the reportPrivateUsage ignores below.
    """

    __slots__ = ("listener", "accepted", "output", "received", "recv_size", "local_address",
                 "remote_address", "data", "context_updated")
    reusable = True
    keeps_pins = True
    post_processing = True

    def __init__(self, listener: Socket, accepted: Socket) -> None:
        super().__init__(OpKind.ACCEPT, listener)
        #: The listening socket the AcceptEx was posted on.
        self.listener: Socket = listener
        #: The accept socket: connected to the client once this completes.
        self.accepted: Socket = accepted
        #: AcceptEx's output buffer: first data, then the local and remote addresses.
        self.output: CData = ffi.NULL
        #: AcceptEx's byte count out-parameter.
        self.received: CData = ffi.new("DWORD *")
        #: How much first data the accept waits for (0: it completes on the connection).
        self.recv_size: int = 0
        #: After completion: our end's address (None before).
        self.local_address: Address | None = None
        #: After completion: the client's address (None before).
        self.remote_address: Address | None = None
        #: After completion: the first data received with the connection.
        self.data: bytes = b""
        #: Whether SO_UPDATE_ACCEPT_CONTEXT was set (rule 7): True after every success.
        self.context_updated: bool = False

    def prepare(self, accepted: Socket, recv_size: int) -> None:
        """Set up a (re-armed) accept into ``accepted``: a new output buffer, results
        cleared; the operation keeps the buffer and the socket alive until it completes."""
        self.accepted = accepted
        accepted._accept_target_of = self  # pyright: ignore[reportPrivateUsage]
        self.recv_size = recv_size
        self.output = ffi.new("char[]", recv_size + 2 * ACCEPT_ADDRESS_SIZE)
        self.local_address = self.remote_address = None
        self.data = b""
        self.context_updated = False
        self.keep_alive(self.output, accepted)

    def on_success(self) -> int:
        """Set SO_UPDATE_ACCEPT_CONTEXT (rule 7), then read both addresses and the first
        data out of the buffer; 0, or the error that fails the accept."""
        error = self.accepted._update_accept_context(  # pyright: ignore[reportPrivateUsage]
            self.listener)
        if error:
            return error
        self.context_updated = True
        local, local_length = ffi.new("struct sockaddr **"), ffi.new("int *")
        remote, remote_length = ffi.new("struct sockaddr **"), ffi.new("int *")
        self.accepted._extensions().GetAcceptExSockaddrs(  # pyright: ignore[reportPrivateUsage]
            self.output, self.recv_size, ACCEPT_ADDRESS_SIZE, ACCEPT_ADDRESS_SIZE, local,
            local_length, remote, remote_length)
        self.local_address = addresses.decode_cdata(local[0], local_length[0])
        self.remote_address = addresses.decode_cdata(remote[0], remote_length[0])
        self.data = ffi.buffer(self.output, self.bytes_transferred)[:]
        return 0

    def uses(self, target: object) -> bool:
        """The kernel uses both the listening socket and the accept socket."""
        return target is self.owner or target is self.accepted

    def release(self) -> None:
        """Drop the output buffer (the decoded results stay) and the accept socket pin."""
        super().release()
        self.output = ffi.NULL


class ConnectOperation(Operation):
    """ConnectEx: owns the address, the optional first data and the sent-bytes count
    until its completion is dequeued. Socket's friend: it sets SO_UPDATE_CONNECT_CONTEXT
    through the socket's private hook."""

    __slots__ = ("sent", "data")
    post_processing = True

    def __init__(self, sock: Socket) -> None:
        super().__init__(OpKind.CONNECT, sock)
        #: ConnectEx's sent-bytes out-parameter.
        self.sent: CData = ffi.new("DWORD *")
        #: The first data sent with the connection (pinned while the connect is pending).
        self.data: BufferLike = b""

    def set_data(self, data: BufferLike) -> CData:
        """Remember ``data`` and return a ``char[]`` over it (zero-copy) for ConnectEx."""
        self.data = data
        return ffi.from_buffer("char[]", data) if len(memoryview(data)) else ffi.new("char[]", 0)

    def on_success(self) -> int:
        """Set SO_UPDATE_CONNECT_CONTEXT; 0, or the error that fails the connect."""
        assert isinstance(self.owner, Socket)
        return self.owner._update_connect_context()  # pyright: ignore[reportPrivateUsage]


_IFS_ONLY: list[bool] = []


def _providers_all_ifs() -> bool:
    """Whether every installed provider of IPv4 and IPv6 sockets (base or layered) returns IFS
    handles. Providers of other families never serve a ``Socket`` (Wine's IPX provider, for
    one, is not IFS). Asked once a process: the catalog changes only when networking software
    is installed."""
    if not _IFS_ONLY:
        _IFS_ONLY.append(all(
            flags & XP1_IFS_HANDLES for family, _, flags in provider_records()
            if family in (AddressFamily.AF_INET, AddressFamily.AF_INET6)))
    return _IFS_ONLY[0]


def provider_records() -> list[tuple[int, int, int]]:
    """``(iAddressFamily, iSocketType, dwServiceFlags1)`` of every installed Winsock
    provider, base and layered (WSAEnumProtocolsW). Raises the ``OSError`` of its failure."""
    size = ffi.new("DWORD *", 16 * ffi.sizeof("WSAPROTOCOL_INFOW"))
    for _ in range(8):  # the catalog may grow between two calls
        records = ffi.new("char[]", size[0])
        count = ws2_32.WSAEnumProtocolsW(ffi.NULL, ffi.cast("LPWSAPROTOCOL_INFOW", records),
                                         size)
        if count != SOCKET_ERROR:
            infos = ffi.cast("WSAPROTOCOL_INFOW *", records)
            return [(int(info.iAddressFamily), int(info.iSocketType),
                     int(info.dwServiceFlags1)) for info in (infos[i] for i in range(count))]
        error = ws2_32.WSAGetLastError()
        if error != WinError.WSAENOBUFS:
            raise exception_for(error, "WSAEnumProtocolsW")
    raise exception_for(WinError.WSAENOBUFS, "WSAEnumProtocolsW")


def _no_factory() -> Operation:
    raise AssertionError("only called without an operation to reuse")


def _as_buffer_list(data: BufferLike | Sequence[BufferLike]) -> Sequence[BufferLike]:
    kind = type(data)
    if kind is bytes or kind is bytearray:  # the common case first: one buffer
        return (data,)  # type: ignore[return-value]
    if kind is list or kind is tuple:  # a list of buffers, checked one by one when pinned
        return data  # type: ignore[return-value]
    if isinstance(data, (bytes, bytearray, memoryview)):
        # One buffer. The cast: pyright narrows the Sequence[BufferLike] arm to
        # memoryview[BufferLike] (as if a memoryview's items could be buffers).
        return [cast(BufferLike, data)]
    if isinstance(data, str):
        raise TypeError("send() needs bytes-like data, not str")
    try:
        memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        try:
            return list(data)
        except TypeError:
            raise TypeError("send() needs bytes-like data or a list of buffers, not "
                            f"{type(data).__name__}") from None
    return [data]  # type: ignore[list-item]


def create_connection(address: tuple[object, ...], port: CompletionPort,
                      family: int = AddressFamily.AF_INET) -> tuple[Socket, ConnectOperation]:
    """A new TCP socket associated with ``port`` and a ConnectEx to ``address`` posted."""
    sock = Socket(family, SocketType.SOCK_STREAM, IPProto.IPPROTO_TCP)
    try:
        port.associate(sock)
        return sock, sock.connect(address)
    except BaseException:
        sock.close()
        raise


__all__ = ["Socket", "AcceptOperation", "ConnectOperation", "AddressedOperation",
           "create_connection"]
