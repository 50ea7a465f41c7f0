"""Connections: pending-I/O accounting and closing without losing data (rules 1, 3, 4, 5, 6).

``closesocket`` with I/O pending resets the connection, and data just sent can be lost; waiting
"a few seconds" first is no fix. A ``Connection`` closes in the order the notes prescribe,
driven only by completions:

1. ``close()`` refuses new sends;
2. when every pending send has completed, ``shutdown(SD_SEND)``: Windows sends what is left,
   then a FIN;
3. the receive that is always kept pending (rule 1) completes with 0 bytes when the peer has
   read everything and closed its side;
4. only then ``closesocket``, and the connection's memory is released.

Every closing connection sits in a close queue (rule 4) with a deadline; one that has not
finished by then is closed abortively, and counted.

TIME_WAIT (rule 5): when the server sent the first FIN, the socket would linger in TIME_WAIT
after closing. With ``time_wait_avoidance`` (on by default), once the peer's FIN has arrived
after ours, the socket is closed with SO_LINGER {1, 0}: an RST instead of TIME_WAIT. That is
safe only at that moment: the peer's FIN came after ours, so (if it closes once it has read to
the end, as request/response clients do) it has read all our data. "After ours" is judged in
the kernel, not by dequeue order: our pending receive must still have been waiting when our
FIN left, or the peer closed first (e.g. it half-closed right after its request) and an RST
could discard the response. A peer that half-closes after our FIN without reading to the end
could still lose data to the RST: turn the option off for such protocols. When the peer closes first, the server is the passive closer and never
enters TIME_WAIT anyway, so it closes gracefully: an RST there could discard response bytes
still in flight. (Linux, and so Wine, enters TIME_WAIT as soon as the peer's FIN arrives after
ours; Windows keeps the connection attached to the socket until ``closesocket``, which is what
makes the trick work there.)

Completions reach a connection through its operations (``op.context``), never through a SOCKET
value, which Windows reuses (rule 6).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from .constants import NtStatus
from .errors import ClosedHandleError, Failure
from .operations import OpKind, RecvOperation, SendOperation, BufferLike
from .port import Completion, Outcome
from .sockets import Socket

if TYPE_CHECKING:
    from .manager import ConnectionManager


class State(Enum):
    OPEN = "open"
    CLOSING = "closing"  # close() called: draining sends, then waiting for the peer's FIN
    CLOSED = "closed"  # the orderly exchange finished and the socket is closed
    ABORTED = "aborted"  # closed abortively: abort(), a reset, an error, or the deadline


class CloseReason(Enum):
    GRACEFUL = "graceful"  # the orderly exchange completed
    PEER_RESET = "peer reset"  # the peer reset (or the network aborted) the connection
    ABORTED = "aborted"  # abort() was called
    FORCED = "forced"  # the close deadline passed (close queue)
    ERROR = "error"  # a send, shutdown or receive failed otherwise


class Handler(Protocol):
    """What a connection tells its user. All methods may call ``send``/``close``/``abort``."""

    def data_received(self, connection: Connection, data: bytes) -> None: ...
    def eof_received(self, connection: Connection) -> None: ...
    def connection_lost(self, connection: Connection, reason: CloseReason) -> None: ...


class Connection:
    """One TCP connection on a ``ConnectionManager``'s port."""

    def __init__(self, manager: ConnectionManager, sock: Socket, handler: Handler, *,
                 recv_size: int = 65536, zero_byte_reads: bool = False,
                 recycle: Callable[[Socket], bool] | None = None) -> None:
        self.manager = manager
        #: Takes the socket after a graceful close instead of closesocket (DisconnectEx reuse).
        self.recycle = recycle
        self.sock = sock
        self.handler = handler
        self.state = State.OPEN
        self.close_reason: CloseReason | None = None
        self.pending_sends = 0
        self.pending_recvs = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.peer_fin = False
        self.shutdown_sent = False
        #: time.monotonic() of the last data received (the idle deadline counts from it).
        self.last_activity = time.monotonic()
        #: Whether our FIN went out before the peer's arrived (we are the active closer).
        self.we_closed_first = False
        self.zero_byte_reads = zero_byte_reads
        self._lock = threading.RLock()
        # Zero-byte-read mode pins no buffer while idle: one is borrowed from the manager's
        # pool for each real read and given back once its completion is dequeued.
        self._buffer: bytearray | None = None if zero_byte_reads else bytearray(recv_size)
        self._recv: RecvOperation | None = None
        self._borrowed: bytearray | None = None
        self._probing = False
        self._lost: CloseReason | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.state.value} sends={self.pending_sends} {self.sock!r}>"

    # -- receiving (rule 1: always one receive pending while the peer may send) -------------

    def start(self) -> None:
        with self._lock:
            self._post_recv()
        self._notify_lost()

    def _notify_lost(self) -> None:
        """Tell the handler the connection is gone, outside our lock (a handler may lock
        other connections: a proxy closing its pair must not deadlock), exactly once."""
        if self._lost is None:  # the common case, per completion: no lock needed to see it
            return
        with self._lock:
            reason, self._lost = self._lost, None
        if reason is not None:
            self.handler.connection_lost(self, reason)

    def _post_recv(self, probe: bool | None = None) -> None:
        """Post the one receive; the buffer and OVERLAPPED are reused serially (rule 11).

        In zero-byte-read mode a 0-byte receive is posted first (it pins no buffer while the
        connection is idle); when it completes, a real receive collects what arrived.
        """
        if self.peer_fin or self.state in (State.CLOSED, State.ABORTED):
            return
        probe = self.zero_byte_reads if probe is None else probe
        if probe:
            buffer = _EMPTY
        elif self._buffer is not None:
            buffer = self._buffer
        else:
            buffer = self._borrowed = self.manager.buffers.take()
        buffers: list[BufferLike] = [buffer]
        # Counted before the call: its completion may be handled first (it waits on our lock).
        self.pending_recvs += 1
        self._probing = probe
        try:
            self._recv = self.sock.recv_into(buffers, reuse=self._recv, context=self)
        except OSError as exc:  # it failed at once: no completion will come
            self.pending_recvs -= 1
            self._give_back(self._borrowed)
            self._borrowed = None
            if not isinstance(exc, ClosedHandleError):
                # Rule 10: a broken connection is also detected when posting.
                self._finish_abortively(CloseReason.PEER_RESET, linger=False)

    def _on_recv(self, completion: Completion, operation: RecvOperation) -> None:
        with self._lock:
            self.pending_recvs -= 1
            borrowed, self._borrowed = self._borrowed, None
            if self.state in (State.CLOSED, State.ABORTED):
                self._give_back(borrowed)  # connection_lost was (or is being) delivered
                return
            if completion.outcome is Outcome.FAILED:
                self._give_back(borrowed)
                self._finish_abortively(_reason_for(completion.failure), linger=False)
                return
            if self._probing:
                self._post_recv(probe=False)  # data (or the FIN) is there: read it for real
                return
            if completion.outcome is Outcome.PEER_CLOSED:
                data = b""
            else:
                data = operation.data
                self.bytes_received += len(data)
                self.last_activity = time.monotonic()
            self._give_back(borrowed)  # the data is copied out: the buffer is free again
            if not data:
                self.peer_fin = True
                if self.state is State.CLOSING:
                    self._advance_close()
                    return
        if data:
            self.handler.data_received(self, data)
            with self._lock:
                self._post_recv()
        else:
            self.handler.eof_received(self)
            self.close()

    # -- sending ---------------------------------------------------------------------------

    def send(self, data: BufferLike) -> SendOperation:
        """Queue ``data`` (zero-copy; do not modify it until sent). Refused once closing."""
        with self._lock:
            if self.state is not State.OPEN:
                raise BrokenPipeError(f"{self!r}: no sends after close()")
            self.pending_sends += 1
            try:
                return self.sock.send(data, context=self)
            except BaseException:
                self.pending_sends -= 1
                raise

    def _on_send(self, completion: Completion) -> None:
        with self._lock:
            self.pending_sends -= 1
            if completion.outcome is Outcome.FAILED:
                self._finish_abortively(_reason_for(completion.failure), linger=False)
                return
            self.bytes_sent += completion.bytes_transferred
            if self.state is State.CLOSING:
                self._advance_close()

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close gracefully, without losing data (safe to call twice, or from a handler)."""
        with self._lock:
            if self.state is not State.OPEN:
                return
            self.state = State.CLOSING
            self.manager._closing(self)
            self._advance_close()
        self._notify_lost()

    def abort(self) -> None:
        """Close at once with SO_LINGER {1, 0} (RST); pending operations are cancelled by the
        close and their memory stays owned until their completions are dequeued."""
        with self._lock:
            self._finish_abortively(CloseReason.ABORTED, linger=True)
        self._notify_lost()

    def force_close(self) -> None:
        """Called by the close queue when the deadline passed."""
        with self._lock:
            if self.state is State.CLOSING:
                self._finish_abortively(CloseReason.FORCED, linger=True)
        self._notify_lost()

    def _advance_close(self) -> None:
        """Step the close sequence as far as completed I/O allows (lock held)."""
        if self.state is not State.CLOSING:
            return
        if self.pending_sends:
            return  # step 2 waits for every send
        if not self.shutdown_sent:
            try:
                self.sock.shutdown()
            except OSError:
                self._finish_abortively(CloseReason.ERROR, linger=False)
                return
            self.shutdown_sent = True
            # We are the active closer only if nothing from the peer (its FIN above all) had
            # reached the socket by now: our receive must still be waiting in the kernel, not
            # merely undequeued. A peer that half-closed right after its request is the
            # passive side's peer: an RST there would discard what we still have to send.
            self.we_closed_first = not self.peer_fin and self._receive_still_waiting()
        if not self.peer_fin:
            return  # step 3: the pending receive will bring the peer's FIN
        # Step 4. RST instead of TIME_WAIT only when we were the active closer: the peer's FIN
        # came after ours, so everything we sent was read and acknowledged.
        linger = self.manager.time_wait_avoidance and self.we_closed_first
        self._finish(State.CLOSED, CloseReason.GRACEFUL, linger)

    def _give_back(self, buffer: bytearray | None) -> None:
        if buffer is not None:
            self.manager.buffers.give(buffer)

    def _receive_still_waiting(self) -> bool:
        """Whether the pending receive has not completed in the kernel yet (whatever the
        port's queue holds): its OVERLAPPED still says STATUS_PENDING."""
        receive = self._recv
        return (receive is not None and receive.pending
                and receive.overlapped.Internal == NtStatus.STATUS_PENDING)

    def _finish_abortively(self, reason: CloseReason, linger: bool) -> None:
        if self.state in (State.CLOSED, State.ABORTED):
            return
        self._finish(State.ABORTED, reason, linger)

    def _finish(self, state: State, reason: CloseReason, linger: bool) -> None:
        self.state = state
        self.close_reason = reason
        if state is State.CLOSED and self.recycle is not None and self.recycle(self.sock):
            pass  # DisconnectEx(TF_REUSE_SOCKET) is pending; the accept pool takes the socket
        else:
            if linger:
                try:
                    self.sock.set_linger(True, 0)
                except OSError:
                    pass  # already closed or reset: closing is all that is left
            self.sock.close()
        self.manager._closed(self, reason)
        self._lost = reason  # delivered by _notify_lost, once the lock is released

    # -- routing -----------------------------------------------------------------------------

    def on_completion(self, completion: Completion) -> None:
        operation = completion.operation
        try:
            if isinstance(operation, RecvOperation):
                self._on_recv(completion, operation)
            elif operation is not None and operation.kind is OpKind.SEND:
                self._on_send(completion)
        finally:
            self._notify_lost()


class NullHandler:
    """A handler that ignores data; closes when the peer does."""

    def data_received(self, connection: Connection, data: bytes) -> None:
        pass

    def eof_received(self, connection: Connection) -> None:
        pass

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        pass


#: What a zero-byte receive "reads into"; never written, so one serves every connection.
_EMPTY = bytearray()


def _reason_for(failure: Failure | None) -> CloseReason:
    if failure in (Failure.RESET, Failure.CLOSED, Failure.CANCELLED):
        return CloseReason.PEER_RESET
    return CloseReason.ERROR
