"""Connections: pending-I/O accounting, ordered delivery, flow control, and closing without
losing data (rules 1, 3, 4, 5, 6).

Closing. ``closesocket`` with I/O pending resets the connection, and data just sent can be
lost; waiting "a few seconds" first is no fix. A ``Connection`` closes in the order the notes
prescribe, driven only by completions:

1. ``close()`` refuses new sends;
2. when every pending send has completed, ``shutdown(SD_SEND)``: Windows sends what is left,
   then a FIN;
3. the receive that is always kept pending (rule 1) completes with 0 bytes when the peer has
   read everything and closed its side;
4. only then ``closesocket``, and the connection's memory is released.

Every closing connection sits in a close queue (rule 4) with a deadline; one that has not
finished by then is closed abortively, and counted.

TIME_WAIT (rule 5). The side whose FIN goes first keeps the connection in TIME_WAIT for minutes
after closing; many short connections exhaust ports. With ``time_wait_avoidance`` (on by
default), a connection we closed first is closed with SO_LINGER {1, 0} (an RST instead of
TIME_WAIT) at step 4. Who went first is asked of the connection itself, through the documented
SIO_TCP_INFO (``tcpinfo.py``): after both FINs, the TCP state is TIME_WAIT only when our FIN
went first *and the peer acknowledged it*. An acknowledgement of our FIN acknowledges every byte
before it, so no response byte is still unsent or unacknowledged, and the peer's FIN came after
it had received ours: a request/response peer that closes once it has read to the end has read
everything. Every other answer means the RST is not safe, or not needed: LAST_ACK or CLOSED
(the peer closed first, e.g. it half-closed right after its request, and may still be reading
our response: an RST would discard it; the passive closer never enters TIME_WAIT anyway),
CLOSING (simultaneous close: our FIN is not acknowledged yet), or no answer at all (SIO_TCP_INFO
needs Windows 10 1703; Wine lacks it): then the close is graceful and TIME_WAIT is accepted.
A peer known to have closed first (its FIN was dequeued before our shutdown) is not asked at
all. A peer that half-closes after our FIN without having read to the end could still lose data
to the RST: turn the option off for such protocols.

Delivery. Completions of one connection are dequeued by any worker thread, but its handler is
told one thing at a time, in order, and nothing after ``connection_lost``: every callback
(data, EOF, pause/resume writing, connection lost) is queued on the connection and run by
whichever thread finds the queue idle, outside the connection's lock (a handler may lock other
connections). A handler that calls back into its connection (``send``, ``close``) from a
callback just adds to the queue that its own thread is draining. The common case, data for a
connection with nothing queued and nobody delivering, skips the queue: the receive's thread
takes the delivery under the lock it already holds for the completion, runs
``data_received``, and re-posts the receive under the same lock acquisition that ends the
delivery (two lock round trips per receive instead of four). The outcome is the same as
queueing, so this holds with any number of worker threads.

Flow control, as asyncio transports have it: ``get_write_buffer_size()`` counts the bytes of
pending sends; above the high-water mark the handler's ``pause_writing`` is called, at or below
the low-water mark ``resume_writing``. ``pause_reading()`` leaves no receive pending (a receive
already in flight completes, and its data is held until ``resume_reading()``, which posts the
next receive: rule 1 again). After ``close()`` reading goes on regardless, since step 3 needs
the peer's FIN; data a paused handler would have been given then is dropped.

Completions reach a connection through its operations, never through a SOCKET value, which
Windows reuses (rule 6): each carries one of the connection's completion handlers as its
``context``, and the manager's loop calls it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from .addresses import Address
from .constants import TcpInfoState
from .errors import ClosedHandleError, Failure
from .operations import BufferLike, RecvOperation, SendOperation
from .port import Completion, Outcome
from .sockets import Socket
from .tcpinfo import tcp_state

if TYPE_CHECKING:
    from .manager import ConnectionManager

#: asyncio's default high-water mark for a transport's write buffer.
DEFAULT_HIGH_WATER = 64 * 1024


class State(Enum):
    """Where a connection is in its life."""

    OPEN = "open"
    CLOSING = "closing"  # close() called: draining sends, then waiting for the peer's FIN
    CLOSED = "closed"  # the orderly exchange finished and the socket is closed
    ABORTED = "aborted"  # closed abortively: abort(), a reset, an error, or the deadline


# Module globals for the states and outcomes the hot paths test: one load instead of two (an
# enum member is an attribute of its class).
_OPEN, _CLOSING, _CLOSED, _ABORTED = State.OPEN, State.CLOSING, State.CLOSED, State.ABORTED
_FAILED, _PEER_CLOSED = Outcome.FAILED, Outcome.PEER_CLOSED
_get_ident = threading.get_ident


class CloseReason(Enum):
    """Why a connection ended (given to ``connection_lost``)."""

    GRACEFUL = "graceful"  # the orderly exchange completed
    PEER_RESET = "peer reset"  # the peer reset (or the network aborted) the connection
    ABORTED = "aborted"  # abort() was called
    FORCED = "forced"  # the close deadline passed (close queue)
    ERROR = "error"  # a send, shutdown or receive failed otherwise


class Handler(Protocol):
    """What a connection tells its user, one call at a time. Every method may call ``send``,
    ``close``, ``abort`` and the flow-control methods of the connection.

    A handler may also have ``pause_writing(connection)`` and ``resume_writing(connection)``
    (see ``FlowControlled``); they are called when it has them.
    """

    def data_received(self, connection: Connection, data: bytes) -> None:
        """Bytes arrived, in order (``data`` is a copy: the handler may keep it)."""
        ...

    def eof_received(self, connection: Connection) -> None:
        """The peer closed its side (a 0-byte receive); the connection then closes."""
        ...

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        """The connection is over (its socket closed or recycled); the handler's last call."""
        ...


class FlowControlled(Handler, Protocol):
    """A handler that wants to know when the connection's write buffer fills and drains."""

    def pause_writing(self, connection: Connection) -> None:
        """Pending sends passed the high-water mark: stop sending until resumed."""
        ...

    def resume_writing(self, connection: Connection) -> None:
        """Pending sends drained to the low-water mark: sending may go on."""
        ...


class Connection:
    """One TCP connection on a ``ConnectionManager``'s port.

    Made by ``ConnectionManager.add`` (or an ``AcceptPool``), which associates the socket and
    starts reading. The connection owns the socket from then on: it closes it at the end of
    the close sequence, abortively on a failure, ``abort()`` or the close deadline, or hands
    it to ``recycle``. It owns its receive buffer too (or borrows one from the manager's
    pool per read, with ``zero_byte_reads``); a send's data belongs to that send's operation
    until it completes.

    Slotted (no ``__dict__``): an idle connection is mostly this object, and servers hold
    thousands. Keep per-connection state of your own on the handler.
    """

    __slots__ = ("manager", "recycle", "sock", "handler", "state", "close_reason",
                 "pending_sends", "pending_recvs", "bytes_sent", "bytes_received",
                 "bytes_dropped", "peer_fin", "shutdown_sent", "last_activity",
                 "we_closed_first", "zero_byte_reads", "_local_address", "_peer_address",
                 "_lock", "_buffer", "_recv", "_borrowed", "_probing", "_events",
                 "_delivering", "_delivering_thread", "_lost_queued", "_undelivered_data",
                 "_write_size", "_send_sizes", "_spare_send", "_high_water", "_low_water",
                 "_writing_paused", "_reading_paused", "_held", "__weakref__")

    def __init__(self, manager: ConnectionManager, sock: Socket, handler: Handler, *,
                 recv_size: int = 65536, zero_byte_reads: bool = False,
                 recycle: Callable[[Socket], bool] | None = None,
                 local_address: Address | None = None,
                 peer_address: Address | None = None) -> None:
        #: The manager whose port and loop drive this connection.
        self.manager: ConnectionManager = manager
        #: Takes the socket after a graceful close instead of closesocket (DisconnectEx reuse).
        self.recycle: Callable[[Socket], bool] | None = recycle
        #: The connected socket (owned by the connection).
        self.sock: Socket = sock
        #: What the connection tells what it receives and how it ends.
        self.handler: Handler = handler
        #: Where the connection is in its life.
        self.state: State = State.OPEN
        #: Why it ended (None while it has not).
        self.close_reason: CloseReason | None = None
        #: Sends posted whose completions are not handled yet.
        self.pending_sends: int = 0
        #: Receives posted whose completions are not handled yet (0 or 1).
        self.pending_recvs: int = 0
        #: Bytes the completed sends carried.
        self.bytes_sent: int = 0
        #: Bytes received (delivered, held or dropped).
        self.bytes_received: int = 0
        #: Bytes that arrived after close() while reading was paused, and were dropped.
        self.bytes_dropped: int = 0
        #: Whether the peer's FIN (a 0-byte receive) has been dequeued.
        self.peer_fin: bool = False
        #: Whether our shutdown(SD_SEND) was called (step 2 of the close).
        self.shutdown_sent: bool = False
        #: time.monotonic() of the last data received or send completed (the idle deadline
        #: counts from it): the manager's clock of the batch that brought the completion.
        self.last_activity: float = time.monotonic()
        #: Whether our FIN went out first and was acknowledged (TIME_WAIT would follow):
        #: None until known, and for good when the OS cannot tell (see the module docstring).
        self.we_closed_first: bool | None = None
        #: Whether idle reads are zero-byte reads that pin no buffer.
        self.zero_byte_reads: bool = zero_byte_reads
        self._local_address = local_address
        self._peer_address = peer_address
        # Not re-entrant: nothing done under it calls back into the connection (handlers
        # run outside it), and a plain Lock costs half an RLock on this hot path.
        self._lock = threading.Lock()
        # Zero-byte-read mode pins no buffer while idle: one is borrowed from the manager's
        # pool for each real read and given back once its completion is dequeued.
        self._buffer: bytearray | None = None if zero_byte_reads else bytearray(recv_size)
        self._recv: RecvOperation | None = None
        self._borrowed: bytearray | None = None
        self._probing = False
        # Delivery: callbacks queued for the handler, run one at a time (module docstring).
        # Made by the first callback queued: most never queue one (data takes the direct
        # path), and an empty deque is 0.75 KiB.
        self._events: deque[Callable[[], None]] | None = None
        self._delivering = False
        self._delivering_thread: int | None = None  # the thread running callbacks
        self._lost_queued = False
        self._undelivered_data = 0  # data callbacks queued or running: read again after them
        # Flow control.
        self._write_size = 0
        self._send_sizes: dict[SendOperation, int] = {}  # bytes of each send in flight
        # A finished send, re-armed by the next send() instead of a new OVERLAPPED: one send
        # at a time (an echo, a request's answer) then needs no allocation (_count_sent).
        # None in zero-byte-read mode: that mode exists for the least memory per idle
        # connection, and a spare operation would be some 0.4 KiB more on each.
        self._spare_send: SendOperation | None = None
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_HIGH_WATER // 4
        self._writing_paused = False
        self._reading_paused = False
        self._held: bytes | None = None  # what arrived while reading was paused (b"": EOF)

    def __repr__(self) -> str:
        return f"<Connection {self.state.value} sends={self.pending_sends} {self.sock!r}>"

    # -- addresses ---------------------------------------------------------------------------

    @property
    def local_address(self) -> Address | None:
        """Our end's address (from AcceptEx's buffers, or getsockname); None if unknown."""
        if self._local_address is None:
            self._local_address = _ask(self.sock.getsockname)
        return self._local_address

    @property
    def peer_address(self) -> Address | None:
        """The peer's address (from AcceptEx's buffers, or getpeername); None if unknown."""
        if self._peer_address is None:
            self._peer_address = _ask(self.sock.getpeername)
        return self._peer_address

    # -- delivery (one callback at a time, in order, nothing after connection_lost) -------

    def _queue(self, callback: Callable[[], None]) -> None:
        """Queue a handler callback (lock held); run by ``_deliver`` once the lock is free."""
        if not self._lost_queued:
            if self._events is None:
                self._events = deque()
            self._events.append(callback)

    def _deliver(self) -> None:
        """Run queued callbacks unless another frame (this thread's or another's) is."""
        if not self._events:  # the common case, seen without the lock
            return
        with self._lock:
            if self._delivering or not self._events:
                return
            self._delivering = True
            callback = self._events.popleft()
        self._drain(callback)

    def _drain(self, callback: Callable[[], None]) -> None:
        """Run ``callback``, then every callback queued meanwhile; the caller took the
        delivery (set ``_delivering``) under the lock."""
        lock = self._lock
        self._delivering_thread = _get_ident()
        try:
            while True:
                callback()
                with lock:
                    if not self._events:
                        self._delivering = False
                        self._delivering_thread = None
                        return
                    callback = self._events.popleft()
        except BaseException:
            with lock:
                self._delivering = False
                self._delivering_thread = None
            raise

    def _queue_data(self, data: bytes) -> None:
        self._undelivered_data += 1
        self._queue(lambda: self._deliver_data(data))

    def _deliver_data(self, data: bytes) -> None:
        try:
            self.handler.data_received(self, data)
        finally:
            with self._lock:
                self._undelivered_data -= 1
                self._read_if_wanted()

    def _deliver_data_now(self, data: bytes) -> None:
        """``data_received`` without the queue: ``_received`` found nothing queued and nobody
        delivering, and took the delivery under its lock (module docstring). The lock that
        ends the delivery also re-posts the receive; what was queued meanwhile runs next."""
        self._delivering_thread = _get_ident()
        try:
            self.handler.data_received(self, data)
        except BaseException:
            with self._lock:
                self._undelivered_data -= 1
                self._delivering = False
                self._delivering_thread = None
                self._read_if_wanted()
            raise
        with self._lock:
            self._undelivered_data -= 1
            self._read_if_wanted()
            if not self._events:
                self._delivering = False
                self._delivering_thread = None
                return
            callback = self._events.popleft()
        self._drain(callback)

    def _deliver_eof(self) -> None:
        self.handler.eof_received(self)
        self.close()

    # -- receiving (rule 1: always one receive pending while the peer may send) -------------

    def start(self) -> None:
        """Post the first receive (called by the manager)."""
        with self._lock:
            self._read_if_wanted()
        self._deliver()

    def _read_if_wanted(self) -> None:
        """Post the one receive if the connection should be reading now (lock held)."""
        if self.pending_recvs or self._undelivered_data or self.peer_fin:
            return
        state = self.state
        if state is _OPEN:
            if self._reading_paused:
                return
        elif state is not _CLOSING:
            return  # closing always reads: step 3 needs the peer's FIN
        self._post_recv(self.zero_byte_reads)

    def _post_recv(self, probe: bool) -> None:
        """Post the receive; the buffer and OVERLAPPED are reused serially (rule 11).

        In zero-byte-read mode a 0-byte receive (``probe``) is posted first (it pins no buffer
        while the connection is idle); when it completes, a real receive collects what arrived.
        """
        if probe:
            buffer = _EMPTY
        elif self._buffer is not None:
            buffer = self._buffer
        else:
            buffer = self._borrowed = self.manager.buffers.take()
        buffers: tuple[BufferLike] = (buffer,)
        # Counted before the call: its completion may be handled first (it waits on our lock).
        self.pending_recvs += 1
        self._probing = probe
        try:
            self._recv = self.sock.recv_into(buffers, reuse=self._recv, context=self._received)
        except OSError as exc:  # it failed at once: no completion will come
            self.pending_recvs -= 1
            self._give_back(self._borrowed)
            self._borrowed = None
            if not isinstance(exc, ClosedHandleError):
                # Rule 10: a broken connection is also detected when posting.
                self._finish_abortively(CloseReason.PEER_RESET, linger=False)

    def _received(self, completion: Completion) -> None:
        """The completion handler of the connection's receives (their ``context``): account
        for the receive, then hand its data to the handler at once if this thread took the
        delivery (else it was queued, held, or there was none)."""
        deliver: bytes | None = None
        with self._lock:
            self.pending_recvs -= 1
            borrowed, self._borrowed = self._borrowed, None
            state = self.state
            if state is _CLOSED or state is _ABORTED:
                self._give_back(borrowed)  # connection_lost was (or is being) delivered
                if completion.operation is not None:
                    completion.operation.release()  # nothing will be read into it again
            elif completion.outcome is _FAILED:
                self._give_back(borrowed)
                self._finish_abortively(_reason_for(completion.failure), linger=False)
            elif self._probing:  # data (or the FIN) is there: read it for real, if wanted
                if state is _CLOSING or not self._reading_paused:
                    self._post_recv(probe=False)
            else:
                if completion.outcome is _PEER_CLOSED:
                    data = b""
                else:
                    # The one buffer posted, a bytearray (ours or the pool's): what
                    # ``operation.data`` gathers, without its loop or a memoryview.
                    buffer = borrowed if borrowed is not None else self._buffer
                    assert buffer is not None  # (a real read: posted with one of them)
                    data = bytes(buffer[:completion.bytes_transferred])
                    self.bytes_received += len(data)
                    self.last_activity = self.manager.now
                if borrowed is not None:  # the data is copied out: the buffer is free again
                    self.manager.buffers.give(borrowed)
                if not data:
                    self.peer_fin = True
                    if self.state is State.CLOSING:
                        self._advance_close()
                    elif self._reading_paused:
                        self._held = b""
                    else:
                        self._queue(self._deliver_eof)
                elif not self._reading_paused:
                    if self._delivering or self._events:
                        self._queue_data(data)  # after what is queued, or being delivered
                    else:
                        self._delivering = True  # ours: handed over at once, after the lock
                        self._undelivered_data += 1
                        deliver = data
                elif self.state is State.OPEN:
                    self._held = data  # pause_reading() came while this receive was in flight
                else:
                    self.bytes_dropped += len(data)  # closing, paused: nobody wants it
                    self._read_if_wanted()
        if deliver is not None:
            self._deliver_data_now(deliver)  # which runs what was queued meanwhile too
        elif self._events:  # (checked again by _deliver, under the lock)
            self._deliver()

    def pause_reading(self) -> None:
        """Stop receiving: no receive is posted until ``resume_reading()`` (one already in
        flight completes, and its data is held until then)."""
        with self._lock:
            self._reading_paused = True

    def resume_reading(self) -> None:
        """Receive again: held data is delivered first, then the next receive is posted."""
        with self._lock:
            if not self._reading_paused:
                return
            self._reading_paused = False
            held, self._held = self._held, None
            if self.state is State.OPEN and held is not None:
                if held:
                    self._queue_data(held)
                else:
                    self._queue(self._deliver_eof)
            else:
                self._read_if_wanted()
        self._deliver()

    def is_reading(self) -> bool:
        """Whether the connection is open and not paused by ``pause_reading()``."""
        return self.state is State.OPEN and not self._reading_paused

    # -- sending ---------------------------------------------------------------------------

    def send(self, data: BufferLike) -> None:
        """Queue ``data`` (zero-copy; do not modify it until sent). Refused once closing.

        A send that completes at once (skip-on-success mode: a socket buffer with room, as on
        loopback) is accounted for here: no completion is dequeued for it. The write buffer
        (``get_write_buffer_size``) and the handler's ``pause_writing``/``resume_writing``
        tell what is still in flight."""
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        with self._lock:
            if self.state is not _OPEN:
                raise BrokenPipeError(f"{self!r}: no sends after close()")
            self.pending_sends += 1
            self._write_size += size
            spare, self._spare_send = self._spare_send, None
            try:
                operation = self.sock.send(data, context=self._sent, finish_inline=True,
                                           reuse=spare)
            except BaseException:
                self.pending_sends -= 1
                self._write_size -= size
                raise
            if operation.context is None:  # finished inline: no completion will come
                self._count_sent(operation, size, operation.bytes_transferred)
                return
            # Pending, or already dequeued by another thread: either way its completion
            # waits for our lock, so it is recorded before any thread can handle it (and the
            # operation is re-armed only after that).
            self._send_sizes[operation] = size
            pause = None
            if not self._writing_paused and self._write_size > self._high_water:
                pause = self._pause_writing()
        if pause is not None:
            self._call_now_or_queue(pause)

    def _sent(self, completion: Completion) -> None:
        """The completion handler of the connection's sends (their ``context``)."""
        operation = completion.operation
        if not isinstance(operation, SendOperation):
            return
        with self._lock:
            size = self._send_sizes.pop(operation, None)
            if size is None:
                pass  # not counted: its send() raised (yet the kernel queued a packet)
            elif completion.outcome is _FAILED:
                self.pending_sends -= 1
                self._write_size -= size
                self._finish_abortively(_reason_for(completion.failure), linger=False)
            else:
                self._count_sent(operation, size, completion.bytes_transferred)
        if self._events:
            self._deliver()

    def _count_sent(self, operation: SendOperation, size: int, transferred: int) -> None:
        """A send of ``size`` bytes succeeded, finished inline or dequeued (lock held)."""
        self.pending_sends -= 1
        self._write_size -= size
        self.bytes_sent += transferred
        self.last_activity = self.manager.now  # a stream to a quiet peer is not idle
        if self._spare_send is None and not self.zero_byte_reads:
            operation.buffers = ()  # (the data it sent is not the spare's to keep)
            self._spare_send = operation
        if self._writing_paused and self._write_size <= self._low_water:
            self._resume_writing()
        if self.state is _CLOSING:
            self._advance_close()

    def get_write_buffer_size(self) -> int:
        """Bytes handed to ``send`` whose sends have not completed yet."""
        return self._write_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """(low, high) water marks, as asyncio transports report them."""
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks (asyncio's defaults and rules: high 64 KiB, low high // 4)."""
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        pause = None
        with self._lock:
            self._high_water, self._low_water = high, low
            if not self._writing_paused and self._write_size > high:
                pause = self._pause_writing()
            elif self._writing_paused and self._write_size <= low:
                self._resume_writing()
        if pause is not None:
            self._call_now_or_queue(pause)
        self._deliver()

    def _pause_writing(self) -> Callable[[], None] | None:
        """Note the pause (lock held); the handler's callback, for the caller to run."""
        self._writing_paused = True
        callback = getattr(self.handler, "pause_writing", None)
        if callback is None or self.state is not State.OPEN:
            return None
        return lambda: callback(self)

    def _call_now_or_queue(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` at once if this thread is inside one of our handler's callbacks
        (as asyncio's ``write()`` calls ``pause_writing``: a handler writing in a loop sees
        the pause before its next write), else deliver it in turn."""
        if self._delivering_thread == threading.get_ident():
            callback()
            return
        with self._lock:
            self._queue(callback)
        self._deliver()

    def _resume_writing(self) -> None:
        self._writing_paused = False
        callback = getattr(self.handler, "resume_writing", None)
        if callback is not None and self.state is State.OPEN:
            self._queue(lambda: callback(self))

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close gracefully, without losing data (safe to call twice, or from a handler)."""
        with self._lock:
            if self.state is State.OPEN:
                self.state = State.CLOSING
                self._held = None  # the handler closed: what it had not read is not wanted
                # The manager's close-queue hook: the manager is this class's friend.
                self.manager._closing(self)  # pyright: ignore[reportPrivateUsage]
                self._advance_close()
                self._read_if_wanted()  # a paused connection must still see the peer's FIN
        self._deliver()

    def abort(self) -> None:
        """Close at once with SO_LINGER {1, 0} (RST); pending operations are cancelled by the
        close and their memory stays owned until their completions are dequeued."""
        with self._lock:
            self._finish_abortively(CloseReason.ABORTED, linger=True)
        self._deliver()

    def force_close(self) -> None:
        """Called by the close queue when the deadline passed."""
        with self._lock:
            if self.state is State.CLOSING:
                self._finish_abortively(CloseReason.FORCED, linger=True)
        self._deliver()

    def _advance_close(self) -> None:
        """Step the close sequence as far as completed I/O allows (lock held)."""
        if self.state is not State.CLOSING:
            return
        if self.pending_sends:
            return  # step 2 waits for every send
        if not self.shutdown_sent:
            if self.peer_fin:
                self.we_closed_first = False  # its FIN was dequeued before ours left
            try:
                self.sock.shutdown()
            except OSError:
                self._finish_abortively(CloseReason.ERROR, linger=False)
                return
            self.shutdown_sent = True
        if not self.peer_fin:
            return  # step 3: the pending receive will bring the peer's FIN
        # Step 4. Both FINs are out: ask the connection who went first (module docstring).
        if self.we_closed_first is None:
            state = tcp_state(self.sock)
            if state is TcpInfoState.TCPSTATE_TIME_WAIT:
                self.we_closed_first = True
            elif state is not None and state is not TcpInfoState.TCPSTATE_CLOSING:
                self.we_closed_first = False
        linger = self.manager.time_wait_avoidance and self.we_closed_first is True
        self._finish(State.CLOSED, CloseReason.GRACEFUL, linger)

    def _give_back(self, buffer: bytearray | None) -> None:
        if buffer is not None:
            self.manager.buffers.give(buffer)

    def _finish_abortively(self, reason: CloseReason, linger: bool) -> None:
        if self.state in (State.CLOSED, State.ABORTED):
            return
        self._finish(State.ABORTED, reason, linger)

    def _finish(self, state: State, reason: CloseReason, linger: bool) -> None:
        self.state = state
        self.close_reason = reason
        # Recycled only when no TIME_WAIT is known to follow: DisconnectEx(TF_REUSE_SOCKET)
        # would hold the socket until TIME_WAIT ends, and the RST that avoids TIME_WAIT
        # needs closesocket.
        if (state is State.CLOSED and self.recycle is not None
                and self.we_closed_first is False and self.recycle(self.sock)):
            pass  # DisconnectEx(TF_REUSE_SOCKET) is pending; the accept pool takes the socket
        else:
            if linger:
                try:
                    self.sock.set_linger(True, 0)
                except OSError:
                    pass  # already closed or reset: closing is all that is left
            self.sock.close()
        self.manager._closed(self, reason)  # pyright: ignore[reportPrivateUsage]  # friend
        # Let go of what only a live connection needs; a receive still in flight keeps its
        # own buffer alive (the port's registry holds the operation) until it is dequeued.
        self._buffer = None
        self._held = None
        self._recv = None
        self._spare_send = None
        self._queue(lambda: self.handler.connection_lost(self, reason))
        self._lost_queued = True  # nothing is delivered after connection_lost

    # -- routing -----------------------------------------------------------------------------

    def on_completion(self, completion: Completion) -> None:
        """Route one of this connection's completions by its kind. The manager's loop calls
        the operation's own handler (its ``context``) instead; this is for code that
        dequeues a connection's completions itself."""
        operation = completion.operation
        if isinstance(operation, RecvOperation):
            self._received(completion)
        elif isinstance(operation, SendOperation):
            self._sent(completion)


class NullHandler:
    """A handler that ignores data; closes when the peer does."""

    def data_received(self, connection: Connection, data: bytes) -> None:
        """Drop ``data``."""

    def eof_received(self, connection: Connection) -> None:
        """Nothing: the connection closes by itself after EOF."""

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        """Nothing."""


#: What a zero-byte receive "reads into"; never written, so one serves every connection.
_EMPTY = bytearray()


def _ask(getter: Callable[[], Address]) -> Address | None:
    try:
        return getter()
    except OSError:
        return None


def _reason_for(failure: Failure | None) -> CloseReason:
    if failure in (Failure.RESET, Failure.CLOSED, Failure.CANCELLED):
        return CloseReason.PEER_RESET
    return CloseReason.ERROR
