"""Operation objects: one per overlapped call, owning everything the kernel may write.

An overlapped call hands the kernel pointers: the OVERLAPPED, the data buffers, the WSABUF
array, the flags word, address buffers and their lengths. The kernel may write through them
until the operation's completion packet is dequeued, which can be long after every Python
reference to the call is gone. So each call gets an ``Operation`` that owns all of that memory
(cffi-owned, or a pinned user buffer), and the completion port keeps the operation in its
registry, keyed by the OVERLAPPED's address, from just before the call is issued until its
completion is dequeued (see ``port.py``). A dequeued completion hands the operation back.

Rule 11 of the notes: a connection's receive (or accept) OVERLAPPED may be reused serially, so
receive and accept operations can be re-armed with ``reuse=``; re-arming one that is still
pending raises ``OperationPendingError``. Sends, DisconnectEx and the rest always get their own.

Warning statuses are a property of the kind. A receive of a datagram (or message-mode pipe
message) larger than its buffer ends with STATUS_BUFFER_OVERFLOW, an NTSTATUS *warning*: the
first part of the data is there, and, as for any status that is not an error, a completion
packet is queued, even when the call reported WSAEMSGSIZE / ERROR_MORE_DATA at once.
``Operation.warnings`` lists those codes for the receive kinds; for every other kind they are
plain failures (an oversized WSASendTo sends nothing and queues nothing).

Post-processing (``on_success``: the peer's address, AcceptEx's context, ...) runs while the
port classifies a dequeued batch, so it must never raise out of it: an exception it raises
fails its own operation (``error`` says what, ``cause`` keeps the exception) and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from ._cdata import CData
from .addresses import Address, decode_cdata
from .constants import WinError
from .errors import Failure, OperationPendingError, classify_failure
from .raw import ffi

if TYPE_CHECKING:
    from .port import CompletionPort

#: Anything with the buffer protocol: bytes, bytearray, memoryview, array, mmap, ...
BufferLike = bytes | bytearray | memoryview
MAX_DWORD = 0xFFFFFFFF
_OVERLAPPED_SIZE = ffi.sizeof("OVERLAPPED")
_ZERO_OVERLAPPED = bytes(_OVERLAPPED_SIZE)
#: A receive's warning codes: truncated, yet completed with data, and a packet comes.
RECEIVE_WARNINGS = frozenset({WinError.WSAEMSGSIZE, WinError.ERROR_MORE_DATA})


class OpKind(Enum):
    """Which call an operation is; each value is the Windows function's name."""

    ACCEPT = "AcceptEx"
    CONNECT = "ConnectEx"
    RECV = "WSARecv"
    SEND = "WSASend"
    RECVFROM = "WSARecvFrom"
    SENDTO = "WSASendTo"
    DISCONNECT = "DisconnectEx"
    TRANSMIT_FILE = "TransmitFile"
    READ = "ReadFile"
    WRITE = "WriteFile"
    CONNECT_PIPE = "ConnectNamedPipe"
    WAIT = "RegisterWaitForSingleObject"
    AFD_POLL = "DeviceIoControl"


class OpState(Enum):
    """Where an operation is in its life; only ``PENDING`` lends memory to the kernel."""

    #: Created or re-armable; the kernel holds no pointer into it.
    IDLE = "idle"
    #: Issued; only its dequeued completion may end this state.
    PENDING = "pending"
    #: Completion dequeued (or the call failed at once, or was never made).
    DONE = "done"


# Module globals for the states tested on every call issued and completion: one load
# instead of two (an enum member is an attribute of its class).
_PENDING, _DONE = OpState.PENDING, OpState.DONE


class Owner(Protocol):
    """What an operation is issued on: a Socket or an overlapped Handle."""

    @property
    def port(self) -> CompletionPort | None:
        """The port the owner is associated with (None before ``associate``)."""
        ...

    def __repr__(self) -> str: ...


class Operation:
    """One overlapped operation and the memory it lends the kernel.

    It owns its OVERLAPPED (cffi memory, freed with the object) and whatever ``keep_alive``
    was given. While it is pending the port's registry references it, so none of that
    memory can be freed before its completion is dequeued (or, if the port is closed first,
    ever). Made by what issues the calls (``Socket``, ``Handle``, ``wait_for_handle``).
    """

    __slots__ = (
        "kind", "owner", "overlapped", "address", "state", "bytes_transferred", "error",
        "failure", "cancel_requested", "context", "cause", "_keepalive", "__weakref__",
    )

    #: Whether this kind may be re-armed for another call once finished (rule 11: never
    #: while pending, so no two calls ever share its OVERLAPPED).
    reusable = False
    #: Whether finishing keeps the pinned buffers for the next call (a receive re-armed on
    #: the same buffer); otherwise they are let go as soon as the completion is dequeued.
    keeps_pins = False
    #: Whether ``on_success`` has work to do (saves a call per completion where it has not).
    post_processing = False
    #: Error codes that are warnings for this kind: the data came (in part), a packet is
    #: queued even when the call reports the code at once, and post-processing runs.
    warnings: frozenset[int] = frozenset()

    def __init__(self, kind: OpKind, owner: Owner) -> None:
        self.kind: OpKind = kind
        #: The socket or handle the call was issued on.
        self.owner: Owner = owner
        self.overlapped: CData = ffi.new("OVERLAPPED *")
        #: The OVERLAPPED's address: the registry key and what the completion packet carries.
        self.address: int = int(ffi.cast("uintptr_t", self.overlapped))
        self.state: OpState = OpState.IDLE
        #: The byte count of its completion (0 until then).
        self.bytes_transferred: int = 0
        #: The Windows error the operation completed with (0 for success).
        self.error: int = 0
        #: What kind of failure that error is (None unless it failed).
        self.failure: Failure | None = None
        #: Whether ``cancel()`` asked for it: tells ``Failure.CANCELLED`` from ``CLOSED``.
        self.cancel_requested: bool = False
        #: Free for the caller: whatever helps it route the completion.
        self.context: object = None
        #: The exception post-processing raised, when that is why the operation failed.
        self.cause: BaseException | None = None
        self._keepalive: tuple[object, ...] = ()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.kind.value} {self.state.value} "
                f"on {self.owner!r} at 0x{self.address:x}>")

    @property
    def pending(self) -> bool:
        """Whether the kernel may still write its memory (issued, completion not dequeued)."""
        return self.state is OpState.PENDING

    def keep_alive(self, *objects: object) -> None:
        """Hold ``objects`` (buffers, out-parameters) until the completion is dequeued."""
        self._keepalive = objects

    def rearm(self) -> None:
        """Make a finished (or new) operation ready for another call (a zeroed OVERLAPPED,
        results cleared); raises ``OperationPendingError`` while it is still pending."""
        if self.state is _PENDING:
            raise OperationPendingError(
                f"{self!r} is still pending: the kernel owns its OVERLAPPED until its "
                "completion is dequeued"
            )
        ffi.memmove(self.overlapped, _ZERO_OVERLAPPED, _OVERLAPPED_SIZE)
        self.bytes_transferred = self.error = 0
        self.failure = None
        self.cancel_requested = False
        self.cause = None

    def finish(self, error: int, bytes_transferred: int) -> int:
        """Called once, by the port, when the completion is dequeued (before user code);
        returns the error it finished with (``error``, or what post-processing failed it
        with: e.g. SO_UPDATE_ACCEPT_CONTEXT), its ``failure`` classified.

        Never raises an ``Exception``: one operation's post-processing never breaks the
        dequeue of the others (a KeyboardInterrupt still propagates; the port copes).
        """
        self.state = _DONE
        self.bytes_transferred = bytes_transferred
        if self.post_processing and (not error or error in self.warnings):
            try:
                error = self.on_success() or error  # a warning stays the result
            except Exception as exc:  # noqa: BLE001 - reported as this operation's failure
                self.cause = exc
                error = _error_for(exc)
        self.error = error
        if error:
            self.failure = classify_failure(error, self.cancel_requested)
        if not self.keeps_pins:
            self.release()
        return error

    def abandon(self) -> None:
        """The call was never made: done, with no completion and no post-processing."""
        self.state = OpState.DONE
        self.bytes_transferred = 0
        self.error = WinError.ERROR_OPERATION_ABORTED
        self.release()

    def on_success(self) -> int:
        """Per-kind work on a completion that brought its data (a success, or one of the
        kind's ``warnings``): AcceptEx's context, a datagram's sender, ... 0 or an error."""
        return 0

    def set_offset(self, offset: int) -> None:
        """The file position a ReadFile/WriteFile/TransmitFile starts at (OVERLAPPED.Offset)."""
        if not 0 <= offset < 1 << 64:
            raise ValueError(f"offset must be 0 to 2**64-1, got {offset}")
        self.overlapped.Offset = offset & 0xFFFFFFFF
        self.overlapped.OffsetHigh = offset >> 32

    def uses(self, target: object) -> bool:
        """Whether the kernel may be using ``target`` (a socket or handle) for this operation."""
        return self.owner is target

    def release(self) -> None:
        """Drop what only the kernel needed; results the caller reads stay."""
        self._keepalive = ()


class BufferOperation(Operation):
    """An operation over a list of buffers (WSARecv/WSASend and their -From/-To forms)."""

    __slots__ = ("buffers", "wsabufs", "_wsabuf")

    def __init__(self, kind: OpKind, owner: Owner) -> None:
        super().__init__(kind, owner)
        self.buffers: tuple[BufferLike, ...] = ()
        self.wsabufs: CData = ffi.NULL
        # The one-buffer WSABUF, kept across re-arms: Winsock captures the WSABUF array
        # during the call (WSASend/WSARecv docs), so only the pinned data must outlive it.
        self._wsabuf: CData | None = None

    def set_buffers(self, buffers: Sequence[BufferLike], writable: bool) -> int:
        """Pin ``buffers`` (zero-copy) into a WSABUF array; return the total length.

        The operation keeps the pinned views and the array alive until its completion is
        dequeued. Raises ``ValueError`` for no buffers, ``TypeError`` for a non-buffer (or
        a read-only one with ``writable``), ``OverflowError`` for one of 4 GiB or more.
        Returns -1 without pinning anything when re-armed on the very same buffers.
        """
        count = len(buffers)
        if count == 1:  # the common case, without the loop's lists
            buffer = buffers[0]
            old = self.buffers
            if old and old[0] is buffer and len(old) == 1 and self.wsabufs is not ffi.NULL:
                return -1  # re-armed on the very same buffer: it is pinned already
            kind = type(buffer)  # pin()'s own first case, inline: once per send or receive
            if kind is bytearray or (kind is bytes and not writable):
                cbuffer = ffi.from_buffer("char[]", buffer, writable)
            else:
                cbuffer = pin(buffer, writable)
            length = len(cbuffer)
            if length > MAX_DWORD:
                raise OverflowError("a buffer may hold at most 4 GiB - 1 bytes")
            wsabufs = self._wsabuf
            if wsabufs is None:
                wsabufs = self._wsabuf = ffi.new("WSABUF *")
            wsabufs.len = length
            wsabufs.buf = cbuffer
            self.buffers = (buffer,)
            self.wsabufs = wsabufs
            self._keepalive = (cbuffer, wsabufs)
            return length
        if not count:
            raise ValueError("at least one buffer is needed")
        old = self.buffers
        if len(old) == count and self.wsabufs is not ffi.NULL and all(
                a is b for a, b in zip(old, buffers)):
            return -1  # re-armed on the very same buffers: they are pinned already
        pinned: list[CData] = []
        wsabufs = ffi.new("WSABUF[]", len(buffers))
        total = 0
        for index, buffer in enumerate(buffers):
            cbuffer = pin(buffer, writable)
            length = len(cbuffer)
            if length > MAX_DWORD:
                raise OverflowError("a buffer may hold at most 4 GiB - 1 bytes")
            wsabufs[index].buf = cbuffer
            wsabufs[index].len = length
            pinned.append(cbuffer)
            total += length
        self.buffers = tuple(buffers)
        self.wsabufs = wsabufs
        self.keep_alive(tuple(pinned), wsabufs)
        return total

    @property
    def data(self) -> bytes:
        """The bytes transferred (received, or sent), gathered from the buffers in order.

        Raises ``OperationPendingError`` while the operation is pending: nothing is
        transferred yet, and an empty result would read as the peer's end of file.
        """
        if self.state is _PENDING:
            raise OperationPendingError(
                f"{self!r} is still pending: its data is known once its completion is dequeued")
        if len(self.buffers) == 1:
            return bytes(memoryview(self.buffers[0]).cast("B")[:self.bytes_transferred])
        remaining = self.bytes_transferred
        parts: list[bytes] = []
        for buffer in self.buffers:
            view = memoryview(buffer).cast("B")
            take = min(remaining, len(view))
            parts.append(bytes(view[:take]))
            remaining -= take
            if not remaining:
                break
        return b"".join(parts)

    @property
    def all_buffers_empty(self) -> bool:
        """Whether every buffer has length 0 (a zero-byte read: 0 bytes is then no EOF)."""
        return all(len(memoryview(buffer)) == 0 for buffer in self.buffers)

    def release(self) -> None:
        """Drop the pins and the WSABUF array; ``buffers`` stay, for ``data``."""
        self._keepalive = ()  # Operation.release, inline: this runs once per completion
        self.wsabufs = ffi.NULL

    def let_go(self) -> None:
        """Let go of the buffers altogether once the completion is handled: the pins, the
        WSABUF array and the references, so a caller's buffer is neither exported (it may
        be resized again) nor kept alive by this operation, which may still be re-armed on
        other buffers (``data`` is empty then). Raises ``OperationPendingError`` while the
        kernel may still write them."""
        if self.state is _PENDING:
            raise OperationPendingError(
                f"{self!r} is still pending: the kernel owns its buffers until its "
                "completion is dequeued")
        self._keepalive = ()
        self.wsabufs = ffi.NULL
        self.buffers = ()


class RecvOperation(BufferOperation):
    """WSARecv (or a Handle's ReadFile): ``data`` is what arrived (a copy of the filled part
    of the buffers). Reusable (rule 11): ``recv(reuse=op)`` re-arms it (given the very same
    buffers, ``recv_into`` does not pin them again); until it completes, the kernel owns its
    OVERLAPPED, buffers and flags word."""

    __slots__ = ("flags",)
    reusable = True
    keeps_pins = True
    warnings: frozenset[int] = RECEIVE_WARNINGS  # a message-mode pipe's ReadFile: ERROR_MORE_DATA

    def __init__(self, kind: OpKind, owner: Owner) -> None:
        super().__init__(kind, owner)
        #: WSARecv's in/out flags word (MSG_PARTIAL, ...).
        self.flags: CData = ffi.new("DWORD *")

    @property
    def peer_closed(self) -> bool:
        """A 0-byte success on non-empty buffers: the peer's graceful close (rule 1)."""
        return self.error == 0 and self.bytes_transferred == 0 and not self.all_buffers_empty

class SendOperation(BufferOperation):
    """WSASend (or a Handle's WriteFile): the data buffers stay pinned until it completes,
    and are let go then. Reusable once finished (``send(reuse=op)``): a sender with one send
    in flight at a time needs one OVERLAPPED, not one per call."""

    __slots__ = ()
    reusable = True


class AddressedOperation(BufferOperation):
    """WSARecvFrom / WSASendTo: a buffer operation with a peer address.

    Owns the ``sockaddr`` storage, its in/out length and the flags word the kernel writes.
    """

    __slots__ = ("sockaddr", "sockaddr_length", "peer", "flags")

    def __init__(self, kind: OpKind, owner: Owner) -> None:
        super().__init__(kind, owner)
        #: The in/out flags word of WSARecvFrom (unused by WSASendTo).
        self.flags: CData = ffi.new("DWORD *")
        #: The peer's address: WSASendTo's target, or where WSARecvFrom writes the sender.
        self.sockaddr: CData = ffi.new("struct sockaddr_storage *")
        self.sockaddr_length: CData = ffi.new("int *", ffi.sizeof("struct sockaddr_storage"))
        #: After a receive's completion: who sent the datagram (None before).
        self.peer: Address | None = None

    def rearm(self) -> None:
        """As ``Operation.rearm``; also clears the flags word and ``peer``."""
        super().rearm()
        self.flags[0] = 0  # in/out: what the last completion left must not become input
        self.peer = None


class RecvFromOperation(AddressedOperation):
    """WSARecvFrom. A truncated datagram (``Failure.TOO_LARGE``) still has its first part in
    ``data`` and its sender in ``peer``."""

    __slots__ = ()
    reusable = True
    keeps_pins = True
    post_processing = True
    warnings: frozenset[int] = RECEIVE_WARNINGS

    def on_success(self) -> int:
        """Decode the sender's address into ``peer``; 0 (a bad address raises ValueError,
        which fails this operation alone)."""
        self.peer: Address | None = decode_cdata(ffi.cast("struct sockaddr *", self.sockaddr),
                                                 self.sockaddr_length[0])
        return 0


class SendToOperation(AddressedOperation):
    """WSASendTo: the datagram's buffer and the encoded target address stay owned until
    it completes."""

    __slots__ = ()


def _error_for(exception: Exception) -> int:
    """The Windows error an operation whose post-processing raised ``exception`` fails with."""
    if isinstance(exception, OSError) and exception.winerror:
        return int(exception.winerror)
    if isinstance(exception, MemoryError):
        return WinError.ERROR_NOT_ENOUGH_MEMORY
    if isinstance(exception, OSError):
        return WinError.ERROR_INVALID_HANDLE  # no Windows code: as a call on a bad handle
    return WinError.ERROR_INVALID_DATA  # e.g. a ValueError decoding what the kernel wrote


def pin(buffer: object, writable: bool) -> CData:
    """A ``char[]`` over ``buffer``'s memory, without copying; the caller keeps it alive."""
    kind = type(buffer)
    if kind is bytearray or (kind is bytes and not writable):  # contiguous, as needed
        return ffi.from_buffer("char[]", buffer, writable)
    try:
        view = memoryview(buffer)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(
            f"a bytes-like object (buffer protocol) is needed, not {type(buffer).__name__}"
        ) from exc
    if writable and view.readonly:
        raise TypeError(f"a receive needs a writable buffer (bytearray, memoryview of one, "
                        f"...), not a read-only {type(buffer).__name__}")
    if not view.c_contiguous:
        raise TypeError("the buffer must be C-contiguous (no strided memoryview slices)")
    return ffi.from_buffer("char[]", buffer, writable)


def check_size(size: int, what: str = "size") -> int:
    """``size`` if it is an int in 0 to 2**32-1 (a DWORD); else ``TypeError`` (not an int,
    or a bool), ``ValueError`` (negative) or ``OverflowError`` (too large)."""
    # Checked at run time too: untyped callers pass anything.
    if (not isinstance(size, int)  # pyright: ignore[reportUnnecessaryIsInstance]
            or isinstance(size, bool)):
        raise TypeError(f"{what} must be an int, not {type(size).__name__}")
    if size < 0:
        raise ValueError(f"{what} must not be negative, got {size}")
    if size > MAX_DWORD:
        raise OverflowError(f"{what} must fit in a DWORD (< 4 GiB), got {size}")
    return size
