"""winiocp.aio's socket transport: driven by completions, and closed without losing data.

**Driven by completions.** asyncio's proactor transport turns every read and write into a
future: the proactor completes the future, the future schedules a callback, and the callback
calls the protocol and issues the next operation. ``SocketTransport`` keeps asyncio's whole
transport contract (flow control, ``write_eof``, ``abort``, ``get_extra_info``, the order of
protocol callbacks) but issues its own winiocp operations, with the transport's receive and
send handlers as their context: the proactor routes a completion straight to its handler,
which calls the protocol at once (in the context the transport was made in), with no future
and no ``call_soon`` in between.

* Receiving: one receive pending at a time, into the transport's own small buffer
  (``RECEIVE_BYTES``, 4 KiB), re-armed as it is after each completion: one system call per
  message, and an idle connection pins 4 KiB (the stock loop pins 64 KiB). The data is
  copied out and the next receive posted before the protocol runs (as the stock transport
  does); a ``BufferedProtocol`` is fed the copy through ``get_buffer``/``buffer_updated``.
  A receive that filled the buffer means more may be waiting (a bulk transfer): the
  transport then reads with non-blocking reads, as libuv reads, a ``BufferedProtocol``
  straight into ``get_buffer()`` (zero copies, each read followed at once by
  ``buffer_updated``), a plain ``Protocol`` into the loop's one 256 KiB read buffer
  (``EventLoop.read_buffer``), while they fill their buffer, at most ``MAX_READS`` per
  wake-up. No protocol's buffer is ever lent to the kernel between callbacks: asyncio
  promises nothing about a buffer once ``buffer_updated`` returned, and a protocol may move,
  resize or reuse it. While reading is paused no receive is issued; one already completed
  is held and delivered on ``resume_reading``.
* Writing: ``write()`` sends at once when nothing is in flight; what is written meanwhile is
  queued and goes out as one WSASend gathering all of it when the send in flight completes.
  Large writes are queued as they are (bytes are not copied; other buffers are, once); small
  ones (under ``COPY_BELOW``) are copied together into one buffer, as the stock transport
  copies every write: many small writes make one send, not one WSABUF each. ``writelines``
  queues its chunks the same way. A partial send puts the unsent rest back in front. One
  SendOperation per transport is re-armed for each send; it lets go of what it sent as soon
  as the send completes (the OVERLAPPED is kept, the data is not).
* The sockets are in skip-on-success mode where Windows allows it (see ``proactor.py``): a
  send that completes at once is finished during the call (``finish_inline``), with nothing
  to dequeue. The turn's later writes are then held back and leave in one gathering send at
  the end of the turn (``IocpProactor.call_before_wait``): a protocol that writes many small
  pieces in one turn makes two sends, not one per write.

**The close (rules 3 and 4).** asyncio's proactor transport ends a connection with
``shutdown(SHUT_RDWR)`` and ``closesocket`` as soon as its own write buffer is empty. "Empty"
means the last WSASend completed, not that the peer has the bytes: they may still sit in the
kernel's send buffer. If anything arrived from the peer that nobody read (or arrives later: a
peer still sending), ``closesocket`` resets the connection, and a reset discards what was
still queued: the peer loses the end of the response.

``SocketTransport`` keeps asyncio's timing for the protocol (``connection_lost`` is called
exactly when the stock transport calls it), then closes the socket the orderly way
(``OrderlyClose``): ``shutdown(SD_SEND)`` (Windows sends what is queued, then a FIN), read and
discard until the peer's FIN, then ``closesocket``, bounded by a deadline
(``EventLoop.close_timeout``, 5 s) after which the socket is closed anyway, with a warning.
The drain takes over the transport's receive (pending, or completed and held), then waits with
zero-byte receives and reads with non-blocking reads into the loop's read buffer, so a
closing connection holds no buffer of its own. The loop finishes these
closes before it closes itself (``EventLoop.close``), however the program ends it.
``abort()`` and fatal errors still close at once. So does a transport that read the peer's
FIN already: nothing can arrive after it to be left unread, so ``closesocket`` cannot reset,
and the queued bytes go out before our FIN.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import socket
from asyncio import constants, proactor_events, protocols
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Union

from ..operations import RecvOperation, SendOperation
from ..port import Completion, Outcome
from ..sockets import Socket
from .proactor import failure_of

if TYPE_CHECKING:
    from .loop import EventLoop

log: logging.Logger = logging.getLogger("winiocp.aio")
#: The size of a loop's read buffer (``EventLoop.read_buffer``): the most one read of a plain
#: Protocol's data (or of a closing connection's drain) takes. Every read costs the same
#: system call whatever it brings, so a bulk transfer moves in few of them.
READ_BYTES = 262144
#: The size of a transport's own receive buffer, pinned while its receive is pending: small,
#: so that an idle connection holds little (the stock loop pins 64 KiB per connection), and
#: large enough for a typical request or message in one receive. A receive that fills it is
#: followed by non-blocking reads into ``EventLoop.read_buffer`` (or a BufferedProtocol's
#: buffer), so bulk transfers still move in large reads.
RECEIVE_BYTES = 4096
#: The most chunks one WSASend gathers (the rest wait for the next one).
MAX_GATHER = 64
#: The most non-blocking reads after a receive that filled its buffer, while they fill theirs
#: (then the other connections' turn).
MAX_READS = 32
#: The zero-byte receive's one (empty) buffer: nothing is received into it.
_PROBE_LIST: list[bytearray] = [bytearray()]
# asyncio.Server._detach takes the transport from 3.12 on (3.11.? too: ask, don't guess).
_DETACH_TAKES_TRANSPORT = len(inspect.signature(
    asyncio.base_events.Server._detach).parameters) > 1  # type: ignore[attr-defined]
Chunk = Union[bytes, bytearray, memoryview]
Writable = Union[bytes, bytearray, memoryview]
#: Writes shorter than this are copied together while they wait to be sent: a WSABUF per
#: small piece costs the sender more than the copy (and fills MAX_GATHER). Longer writes are
#: sent as they are, with no copy.
COPY_BELOW = 4096
#: The most bytes small writes are joined into, in one buffer (then the next one starts).
JOIN_BYTES = 65536


# asyncio's transport is subclassed for its contract (extra info, the empty waiter sendfile
# uses, start_tls compatibility, repr, ResourceWarning); reading, writing and the close are
# this class's own.
class SocketTransport(proactor_events._ProactorSocketTransport):  # pyright: ignore[reportPrivateUsage]
    """A completion-driven asyncio socket transport with an orderly close."""

    if TYPE_CHECKING:  # asyncio's private transport state, which typeshed leaves out
        _loop: EventLoop
        _protocol: asyncio.BaseProtocol
        _closing: bool
        _paused: bool
        _sock: socket.socket

        def _fatal_error(self, exc: BaseException, message: str = ...) -> None: ...

        def _eof_received(self) -> None: ...

    _abortive: bool = False
    #: Whether anything was written: with nothing of ours in flight, there is nothing an
    #: immediate close could lose, and it closes as the stock transport does.
    wrote: bool = False
    #: Whether the peer's FIN was read: nothing can arrive after it, so closing loses nothing
    #: and the close needs no drain.
    peer_finished: bool = False

    def __init__(self, loop: EventLoop, sock: socket.socket, protocol: asyncio.BaseProtocol,
                 waiter: asyncio.Future[None] | None = None,
                 extra: dict[str, object] | None = None,
                 server: asyncio.base_events.Server | None = None) -> None:
        self._view: Socket | None = None  # made on the first operation
        # The handlers run in the context the transport was made in (C-level partials: no
        # Python frame of their own on the way to the protocol).
        # (``Any``: mypy's checking of partial does not see through Context.run's ParamSpec)
        run: Callable[..., Any] = contextvars.copy_context().run
        self._on_received: Callable[[Completion], None] = functools.partial(run, self._received)
        self._on_sent: Callable[[Completion], None] = functools.partial(run, self._sent)
        self._on_flush: Callable[[], None] = functools.partial(run, self._flush)
        self._loop_proactor = loop.proactor
        #: The loop turn of the last send that went out at once, and whether writes of that
        #: turn wait for its end (``_flush``) to leave together.
        self._sent_in_turn = -1
        self._flush_due = False
        #: The receive, re-armed on the same buffer for each wait for data.
        self._receive: RecvOperation | None = None
        self._receiving = False
        self._receive_buffer = bytearray(RECEIVE_BYTES)
        self._receive_list = [self._receive_buffer]
        self._receive_view = memoryview(self._receive_buffer)
        #: The receive's completion while reading was paused (or after ``close()``): its data
        #: (or the FIN) is in the receive buffer, not yet delivered.
        self._held: Completion | None = None
        self._sending: SendOperation | None = None
        #: The last send, finished, re-armed for the next one (one send in flight at a time).
        self._spare_send: SendOperation | None = None
        self._in_flight: list[Chunk] = []
        self._in_flight_size = 0
        self._queue: deque[Chunk] = deque()
        self._queued = 0
        #: The queue's last chunk while small writes are being joined into it (ours, never
        #: handed to a send yet): the next small write is copied onto its end.
        self._joining: bytearray | None = None
        if sock.gettimeout() != 0:  # (asyncio's own calls make it so) a BufferedProtocol's
            sock.setblocking(False)  # reads must never block the loop
        super().__init__(loop, sock, protocol, waiter, extra, server)  # type: ignore[arg-type]
        # asyncio's own reading state (3.12+: a 64 KiB buffer per transport), never used here.
        self._data = None

    def _socket_view(self) -> Socket:
        """The proactor's view of our socket (associated with its port on first use).
        Raises ``OSError`` if the socket cannot be associated (not a socket)."""
        view = self._view
        if view is None:
            proactor = self._loop.proactor
            if proactor is None:
                raise ConnectionAbortedError("the event loop is closed")
            view = self._view = proactor.stream_view(self._sock)
        return view

    def _drop_handlers(self) -> None:
        """What is still in flight reports to nobody: the transport (its protocol, an SSL
        context...) is not kept alive by an operation whose result nobody will read. The
        operations themselves stay owned by the port until they complete."""
        if self._receiving and self._receive is not None:
            self._receive.context = _release_buffers
        if self._sending is not None:
            self._sending.context = _release_buffers
            self._sending = None

    # -- reading -------------------------------------------------------------------------------

    def _loop_reading(self, fut: object = None) -> None:
        """Post the receive, if the transport should be reading now. (Scheduled by asyncio's
        own ``__init__``, after ``connection_made``: reading starts there.)"""
        if not self._receiving and self._held is None and not self._closing \
                and not self._paused and not self.peer_finished:
            self._issue_receive()

    def _issue_receive(self) -> None:
        """Post a WSARecv into the transport's small receive buffer, re-armed as it is (the
        buffer stays pinned between receives: nothing is rebuilt per message)."""
        try:
            view = self._view or self._socket_view()
            self._receive = view.recv_into(self._receive_list, reuse=self._receive,
                                           context=self._on_received)
        except ConnectionResetError as exc:
            self._force_close(exc)
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on pipe transport")
        else:
            self._receiving = True

    def _received(self, completion: Completion) -> None:
        """The receive completed (called by the proactor, in the transport's context):
        deliver what it brought, or hold it while reading is paused. After ``close()`` it is
        held for the orderly close, which discards it."""
        self._receiving = False
        if self._closing or (self._paused and completion.outcome is not Outcome.FAILED):
            self._held = completion  # delivered by resume_reading, or dropped by the close
            return
        try:
            if completion.outcome is Outcome.FAILED:
                self._failed(completion, "Fatal read error on pipe transport")
            else:
                self._deliver(completion.bytes_transferred)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, self._delivery_failed())

    def _failed(self, completion: Completion, message: str) -> None:
        """An operation failed: a reset closes at once, anything else is a fatal error."""
        exc = failure_of(completion)
        if isinstance(exc, ConnectionResetError):
            self._force_close(exc)
        else:
            self._fatal_error(exc, message)

    def _deliver(self, count: int) -> None:
        """Hand the protocol the ``count`` bytes the receive brought (0: the peer's FIN). The
        next receive is posted first, as the stock transport re-posts its read before the
        protocol runs; a receive that filled the buffer is followed by non-blocking reads
        of what else is there (a bulk transfer), then the next receive."""
        if not count:
            self.peer_finished = True
            self._eof_received()
            return
        data = bytes(self._receive_view[:count])  # (copied out: the buffer is re-armed)
        full = count == RECEIVE_BYTES
        if not full:
            self._loop_reading()
        protocol = self._protocol
        if isinstance(protocol, protocols.BufferedProtocol):
            # (as the stock transport feeds one: get_buffer/buffer_updated until all is in)
            protocols._feed_data_to_buffered_proto(protocol, data)  # type: ignore[attr-defined]
        else:
            protocol.data_received(data)  # type: ignore[attr-defined]
        if full:
            self._read_ready()

    def _read_ready(self) -> None:
        """More may be waiting: read it now, as long as reads fill their buffer (at most
        MAX_READS, then the other connections' turn); then the next receive."""
        protocol = self._protocol
        try:
            for _ in range(MAX_READS):
                if self._closing or self._paused or self._protocol is not protocol \
                        or not self._read_into(protocol):
                    break
        finally:
            self._loop_reading()  # (also after an interrupt: reading never stops for good)

    def _read_into(self, protocol: asyncio.BaseProtocol) -> bool:
        """One non-blocking read, handed to the protocol at once: into a BufferedProtocol's
        ``get_buffer()``, or into the loop's read buffer, of which a plain Protocol's
        ``data_received`` gets a copy. Whether to read again at once (the read filled the
        buffer: more may be waiting)."""
        buffered = isinstance(protocol, protocols.BufferedProtocol)
        buffer: Writable
        if buffered:
            try:
                buffer = protocol.get_buffer(-1)  # type: ignore[attr-defined]
                size = memoryview(buffer).nbytes
                if not size:
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return False
        else:
            buffer = self._loop.read_buffer
            size = READ_BYTES
        try:
            count = self._sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return False  # nothing (more) to read: the receive waits for it
        except ConnectionResetError as exc:
            self._force_close(exc)
            return False
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return False
        if not count:
            self.peer_finished = True
            self._eof_received()
            return False
        try:
            if buffered:
                protocol.buffer_updated(count)  # type: ignore[attr-defined]
            else:
                data = bytes(buffer[:count])
                if count < size:  # all there was: the next receive waits for more before
                    self._loop_reading()  # the protocol runs (as in ``_deliver``)
                protocol.data_received(data)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, self._delivery_failed())
            return False
        return count == size

    def pause_reading(self) -> None:
        """As asyncio's: no receive is issued until ``resume_reading`` (one in flight is
        held, not cancelled: cancelling it could lose its data)."""
        if self._closing or self._paused:
            return
        self._paused = True

    def resume_reading(self) -> None:
        """As asyncio's: held data is delivered, and reading goes on, in a later callback."""
        if self._closing or not self._paused:
            return
        self._paused = False
        self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        if self._paused or self._closing:
            return
        held, self._held = self._held, None
        try:
            if held is not None:
                self._deliver(held.bytes_transferred)
            else:
                self._loop_reading()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, self._delivery_failed())

    def _delivery_failed(self) -> str:
        """The message of a fatal error in a delivery to the protocol (the stock transport's)."""
        if isinstance(self._protocol, protocols.BufferedProtocol):
            return "Fatal error: protocol.buffer_updated() call failed."
        return "Fatal error: protocol.data_received() call failed."

    # -- writing -------------------------------------------------------------------------------

    def write(self, data: object) -> None:
        """As asyncio's ``write``; the close then waits for these bytes to be delivered."""
        if type(data) is bytes:
            chunk: bytes = data
        elif _writable(data):  # what asyncio's write takes
            chunk = _kept(data)
        else:
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__}")
        self._write_chunks((chunk,) if chunk else (), len(chunk))

    def writelines(self, list_of_data: Iterable[object]) -> None:
        """Queue every buffer as its own chunk: they go out in one gathering WSASend.
        (Any bytes-like object, as asyncio's ``b"".join`` of them takes.)"""
        chunks = [data if type(data) is bytes else _kept(data) for data in list_of_data]
        chunks = [chunk for chunk in chunks if chunk]
        self._write_chunks(chunks, sum(len(chunk) for chunk in chunks))

    def _write_chunks(self, chunks: Sequence[bytes], size: int) -> None:
        """Queue ``chunks`` (``size`` bytes in all; none for an empty write, which is
        checked as asyncio checks it and then ignored) and send them, or hold them back
        to the end of the turn."""
        state: Any = self  # asyncio's private transport state, untyped in typeshed
        if state._eof_written:
            raise RuntimeError("write_eof() already called")
        if state._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not size:
            return
        if state._conn_lost:
            if state._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                log.warning("socket.send() raised exception.")
            state._conn_lost += 1
            return
        self.wrote = True
        queue = self._queue
        send_now = False
        if self._sending is None and not self._flush_due:
            proactor = self._loop_proactor
            if proactor is not None and self._sent_in_turn == proactor.turn:
                # A send of this turn went out at once: the rest of the turn's writes leave
                # in one gathering send at its end.
                self._flush_due = True
                proactor.call_before_wait(self._on_flush)
            elif not queue and len(chunks) == 1:
                # (the common case: nothing waits, nothing in flight: sent as it is)
                if not self._send([chunks[0]], size):
                    if not queue:
                        return  # went out whole: nothing is buffered, nothing waits for it
                    self._send_queued()  # the rest of a partial send
                self._maybe_pause_protocol()  # type: ignore[attr-defined]
                return
            else:
                send_now = True
        if queue or len(chunks) > 1:
            self._enqueue(chunks)
        else:
            queue.extend(chunks)
        self._queued += size
        if send_now:
            self._send_queued()
        self._maybe_pause_protocol()  # type: ignore[attr-defined]

    def _enqueue(self, chunks: Iterable[Chunk]) -> None:
        """Queue ``chunks`` in order: a large one as it is; a small one is copied onto the
        end of the queue's last chunk if that is small too (or already joins small ones), so
        that many small writes wait as one buffer. A chunk handed to a send is never added
        to: it leaves the queue when it is sent (``_send_queued``)."""
        queue = self._queue
        joining = self._joining
        if joining is not None and (not queue or queue[-1] is not joining):
            joining = None  # (the queue was emptied meanwhile)
        for chunk in chunks:
            size = len(chunk)
            if size >= COPY_BELOW:
                queue.append(chunk)
                joining = None
            elif joining is not None and len(joining) + size <= JOIN_BYTES:
                joining += chunk
            elif queue and len(queue[-1]) < COPY_BELOW:
                joining = bytearray(queue[-1])
                joining += chunk
                queue[-1] = joining
            else:
                queue.append(chunk)
                joining = None
        self._joining = joining

    def _send_queued(self) -> None:
        """Send what is queued, one gathering WSASend at a time, until one is left in flight
        or nothing is left. A send that went out at once (skip-on-success) is finished right
        here, with no completion to dequeue; once the queue is empty, what waited for it
        happens (``connection_lost`` after ``close()``, ``write_eof``'s FIN)."""
        queue = self._queue
        while queue:
            if len(queue) <= MAX_GATHER:  # all of it (``_queued`` is the queue's byte count)
                chunks = list(queue)
                queue.clear()
                self._joining = None  # (handed to the send: nothing is added to it now)
                size, self._queued = self._queued, 0
            else:
                chunks = [queue.popleft() for _ in range(MAX_GATHER)]
                size = sum(map(len, chunks))
                self._queued -= size
            if self._send(chunks, size):
                return
        self._after_sends()

    def _send(self, chunks: list[Chunk], size: int) -> bool:
        """One gathering WSASend of ``chunks`` (``size`` bytes); whether the sending is over
        for now: a send in flight, or an error (which closed the transport). A send that went
        out at once (skip-on-success) is finished right here, with no completion to dequeue;
        what it left unsent is put back in front of the queue."""
        try:
            sending = (self._view or self._socket_view()).send(
                chunks, reuse=self._spare_send, context=self._on_sent, finish_inline=True)
        except ConnectionResetError as exc:
            self._force_close(exc)
            return True
        except OSError as exc:
            self._fatal_error(exc, "Fatal write error on pipe transport")
            return True
        if sending.pending:
            self._spare_send = None
            self._sending = sending
            self._in_flight = chunks
            self._in_flight_size = size
            return True
        if sending.error:  # (a send completes at once only when it succeeds)
            self._failed(Completion(Outcome.FAILED, 0, 0, sending, sending.error,
                                    sending.failure, sending.address),
                         "Fatal write error on pipe transport")
            return True
        sending.buffers = ()  # sent: the spare keeps its OVERLAPPED, not the data
        self._spare_send = sending  # (finished inline: the port cleared its context)
        proactor = self._loop_proactor
        if proactor is not None:
            self._sent_in_turn = proactor.turn
        if sending.bytes_transferred < size:  # (the rest goes next, in front of the queue)
            self._requeue_unsent(chunks, sending.bytes_transferred)
        return False

    def _after_sends(self) -> None:
        """Everything written is sent: what waited for that (``connection_lost`` after
        ``close()``, ``write_eof``'s FIN)."""
        state: Any = self
        if state._closing:
            self._loop.call_soon(self._call_connection_lost, None)
        if state._eof_written:
            state._sock.shutdown(socket.SHUT_WR)

    def _sent(self, completion: Completion) -> None:
        """A send completed (called by the proactor, in the transport's context)."""
        state: Any = self
        sent_by = self._sending
        if sent_by is not None:
            sent_by.buffers = ()  # sent: the spare keeps its OVERLAPPED, not the data
        self._spare_send, self._sending = sent_by, None
        chunks, self._in_flight = self._in_flight, []
        size, self._in_flight_size = self._in_flight_size, 0
        if self._abortive or state._sock is None:
            return  # aborted: nothing more goes out
        try:
            if completion.outcome is Outcome.FAILED:
                self._failed(completion, "Fatal write error on pipe transport")
                return
            sent = completion.bytes_transferred
            if sent < size:
                self._requeue_unsent(chunks, sent)
            self._sends_done()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on pipe transport")

    def _flush(self) -> None:
        """The end of a turn in which writes were held back (``_write_chunks``)."""
        self._flush_due = False
        state: Any = self
        if self._abortive or self._sending is not None or state._sock is None:
            return  # aborted, or their turn comes when the send in flight completes
        try:
            self._sends_done()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on pipe transport")

    def _sends_done(self) -> None:
        """Nothing is in flight: send what is queued; then what waited for the buffer to
        drain (``resume_writing``, sendfile's waiter)."""
        self._send_queued()
        # Last: resume_writing() may write again at once.
        self._maybe_resume_protocol()  # type: ignore[attr-defined]
        waiter: asyncio.Future[None] | None = getattr(self, "_empty_waiter")
        if waiter is not None and self._sending is None and not waiter.done():
            waiter.set_result(None)

    def _requeue_unsent(self, chunks: list[Chunk], sent: int) -> None:
        """Put what a partial send left back in front of the queue, in order."""
        unsent: list[Chunk] = []
        for chunk in chunks:
            if sent >= len(chunk):
                sent -= len(chunk)
                continue
            unsent.append(memoryview(chunk)[sent:] if sent else chunk)
            sent = 0
        self._queue.extendleft(reversed(unsent))
        self._queued += sum(len(chunk) for chunk in unsent)

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet sent: queued, and in the send in flight."""
        return self._queued + self._in_flight_size

    def write_eof(self) -> None:
        """Send a FIN once everything written is sent."""
        state: Any = self
        if state._closing or state._eof_written:
            return
        state._eof_written = True
        if self._sending is None and not self._queue:
            state._sock.shutdown(socket.SHUT_WR)

    def _make_empty_waiter(self) -> asyncio.Future[None]:
        state: Any = self
        if state._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        waiter: asyncio.Future[None] = self._loop.create_future()
        state._empty_waiter = waiter
        if self._sending is None and not self._queue:
            waiter.set_result(None)
        return waiter

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """As asyncio's: ``connection_lost`` once everything written is sent, then the
        orderly close. Nothing more is read for the protocol: what arrives is discarded by
        the orderly close's drain."""
        state: Any = self
        if state._closing:
            return
        state._closing = True
        state._conn_lost += 1
        if self._sending is None and not self._queue:
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """Close at once (the socket is reset), as the stock transport does."""
        self._abortive = True
        super().abort()

    def _force_close(self, exc: BaseException | None) -> None:
        if exc is not None:
            self._abortive = True  # a fatal error: nothing is left to deliver
        self._queue.clear()
        self._queued = 0
        self._joining = None
        self._in_flight = []  # (a send still pending keeps its own pins until its packet)
        self._in_flight_size = 0
        self._drop_handlers()
        super()._force_close(exc)  # type: ignore[misc]

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        state: Any = self  # asyncio's private transport state, untyped in typeshed
        if getattr(state, "_called_connection_lost", False):
            return
        sock: socket.socket | None = state._sock
        try:
            state._protocol.connection_lost(exc)
        finally:
            state._sock = None
            server = state._server
            if server is not None:
                if _DETACH_TAKES_TRANSPORT:
                    server._detach(self)
                else:
                    server._detach()
                state._server = None
            state._called_connection_lost = True
            # The receive still pending, or completed and held: the orderly close's drain
            # goes on from it.
            receive = self._receive if self._receiving else None
            ready = self._held is not None
            if receive is not None and receive.context is None:
                # It completed after a _force_close let its handler go: nothing more will
                # come for it, and what it announced is waiting to be read.
                receive, ready = None, True
            self._drop_handlers()
            # No cycle through the transport is left (asyncio's SSL tests check that a
            # closed connection is freed by reference counting alone).
            self._on_received = self._on_sent = _ignore
            self._on_flush = _nothing
            self._held = None
            self._receive = None  # (if still pending, the port owns it until it completes)
            self._spare_send = None
            if sock is not None:
                loop = state._loop
                proactor = loop.proactor
                if proactor is not None:  # a sendfile still pending on it fails now
                    proactor.connection_closing(sock)
                if exc is None and not self._abortive and self.wrote \
                        and not self.peer_finished and sock.fileno() != -1 \
                        and hasattr(loop, "_close_orderly"):
                    loop._close_orderly(sock, self._view, receive, ready)
                else:
                    _close_at_once(sock, self._view)


def _writable(data: object) -> bool:
    return isinstance(data, (bytes, bytearray, memoryview))


def _kept(data: object) -> bytes:
    """What ``write`` keeps of a bytes-like object that is not ``bytes`` itself: a copy of
    its bytes, since the caller may change it once ``write`` returns (a ``bytes`` subclass
    may change what its buffer is). Raises ``TypeError`` for anything else."""
    try:
        return bytes(memoryview(data))  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"data argument must be a bytes-like object, "
                        f"not {type(data).__name__}") from None


def _ignore(completion: Completion) -> None:
    """The handler of a transport whose connection is lost."""


def _nothing() -> None:
    """The flush of a transport whose connection is lost."""


def _release_buffers(completion: Completion) -> None:
    """The handler of an operation whose transport no longer listens: let its buffers go
    (they may be a protocol's), so nothing pinned outlives the operation."""
    operation = completion.operation
    if operation is not None:
        operation.release()


def _close_at_once(sock: socket.socket, view: Socket | None) -> None:
    if _cancel_pending(sock, view):
        # (No shutdown(SHUT_RD) here: under Wine the socket stays open until the cancelled
        # receive is done, and a socket shut for reading meanwhile takes and drops what the
        # peer still sends, where closing it resets the peer.)
        sock.close()
        return
    if sock.fileno() != -1:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    sock.close()


def _close_socket(sock: socket.socket, view: Socket | None) -> None:
    """Close ``sock``, our operations still pending on it (through ``view``) cancelled first.

    On Windows ``closesocket`` cancels them itself ("any pending overlapped send and receive
    operations ... are canceled", closesocket's documentation), and the connection is reset
    if data was left unread. Wine 8 leaves them pending instead, and the socket open with
    them: a peer still sending is then neither read nor reset, and waits for good. Cancelling
    first (as the stock transport cancels its read future) ends them on both; their memory
    stays owned by the port until their packets are dequeued."""
    _cancel_pending(sock, view)
    sock.close()


def _cancel_pending(sock: socket.socket, view: Socket | None) -> bool:
    """Cancel our operations still pending on ``sock``; whether there were any."""
    if view is None or sock.fileno() == -1:
        return False
    try:
        return view.cancel()
    except OSError:  # the view refuses (its socket is closed): nothing of ours is pending
        return False


class OrderlyClose:
    """The end of a connection that wrote: ``shutdown(SD_SEND)``, then read and discard until
    the peer's FIN, then ``closesocket``; at the loop's ``close_timeout`` deadline the socket
    is closed anyway, with a warning.

    It goes on from the transport's own receive (still pending, or completed and ``ready``):
    when that completes, non-blocking reads into the loop's read buffer until nothing is left,
    then a zero-byte receive, which pins no buffer. So a closing connection holds no buffer
    of its own, and one receive at most is pending for it.
    """

    def __init__(self, loop: EventLoop, sock: socket.socket, view: Socket | None,
                 receive: RecvOperation | None, ready: bool) -> None:
        self.loop = loop
        self.sock: socket.socket | None = sock
        self.view = view
        self.receive = receive
        self.timer: asyncio.TimerHandle | None = None
        loop.closing_connections.add(self)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # already reset, or not connected: nothing to wait for
            self.finish()
            return
        self.timer = loop.call_later(loop.close_timeout, self.expire)
        if receive is not None:
            receive.context = self._probed  # (its completion may be dequeued already)
        elif ready:
            self._drain()
        else:
            self._probe()

    def _probe(self) -> None:
        """Wait for more with a zero-byte receive."""
        sock = self.sock
        if sock is None:
            return
        proactor = self.loop.proactor
        try:
            if proactor is None:
                raise RuntimeError("the loop is closed")
            view = self.view
            if view is None:
                view = self.view = proactor.stream_view(sock)
            self.receive = view.recv_into(_PROBE_LIST, reuse=self.receive, context=self._probed)
        except (OSError, RuntimeError):
            self.finish()

    def _probed(self, completion: Completion) -> None:
        if completion.outcome is Outcome.FAILED:
            self.finish()  # a reset, or the socket was closed: nothing left to wait for
        else:
            self._drain()

    def _drain(self) -> None:
        """Read and discard what is there; the peer's FIN (or an error) ends the close."""
        sock = self.sock
        if sock is None:
            return
        buffer = self.loop.read_buffer
        for _ in range(MAX_READS):
            try:
                count = sock.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.finish()
                return
            if not count:
                self.finish()  # the peer's FIN: nothing can arrive to be left unread
                return
            if count < READ_BYTES:
                break
        self._probe()

    def expire(self) -> None:
        """The deadline: close now, although the peer may still send (a reset may follow)."""
        sock = self.sock
        if sock is not None:
            log.warning("The peer of %r sent no FIN within %.1f s of the orderly close; "
                        "closing the socket anyway", sock, self.loop.close_timeout)
        self.finish()

    def finish(self) -> None:
        """Close the socket now (idempotent); the peer's FIN, the deadline or the loop's
        close. A receive still pending stays owned by the port until its packet."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if self.timer is not None:
            self.timer.cancel()
        receive, self.receive = self.receive, None
        if receive is not None:
            receive.context = None  # nobody listens any more (no cycle through this object)
        self.loop.closed_orderly(self)
        _close_socket(sock, self.view)
