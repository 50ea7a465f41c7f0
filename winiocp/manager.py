"""The dequeue loop that drives connections, the close queue and the accept pool.

``ConnectionManager.run_once`` waits on the port (never longer than the nearest close
deadline) and dequeues a batch of completions with one GetQueuedCompletionStatusEx, routes each
to its operation's completion handler (``op.context``, a callable: ``Connection`` and
``AcceptPool`` issue every operation with one of their methods there, so the loop never asks
what an operation or its issuer is), then, once per batch, force-closes whatever the close
queue says has expired.
Why a batch: under load each dequeue call brings many completions, and the fixed costs of a
dequeue (the port's bookkeeping, the deadline checks, the clock) are paid once for all of them.
The batch's clock reading (``now``) is also what connections record as their last activity:
idle deadlines are seconds long, a batch is handled in far less. Several worker threads may
call ``run_once`` at once on one manager; each takes its own batch and routes all of it (with
slow handlers and several workers, a port with a smaller ``batch_size`` spreads the work
wider), and a connection's callbacks stay one at a time, in order (``connections.py``). No
exception from a handler escapes the loop: the connection it came from is aborted and the
error logged. An interrupt (KeyboardInterrupt) that strikes in the middle of a batch
propagates, and the completions not yet routed wait in the manager for the next
``run_once``: none is lost.

Connected sockets given to ``add`` (those accepted by an ``AcceptPool`` too) are put in
FILE_SKIP_COMPLETION_PORT_ON_SUCCESS mode where Windows allows it (``Socket.set_skip_on_success``):
an operation that completes at once then costs no packet, and is dispatched like any other.
Sockets that will be recycled (``recycle``) are left as they are: Wine's DisconnectEx reports
a disconnect done at once as pending (FALSE, WSA_IO_PENDING) and then, in that mode, queues no
packet, so the recycling disconnect would never complete.

``AcceptPool`` keeps N AcceptEx operations posted (rule 9). A failed accept, synchronous or
completed (a client that connected and reset before the accept was processed), closes that
accept socket and posts a new accept; it never stops the listener. When posting cannot work
for now (no socket can be created, no buffer space: descriptor or memory exhaustion), the slot
is not given up: it is re-armed from the loop after a back-off that doubles up to
``ACCEPT_BACKOFF_MAX`` (a deadline, like the close queue's), and counted in
``Stats.accept_backoffs``. Sockets of finished connections can be recycled into the pool with
DisconnectEx(TF_REUSE_SOCKET); ``close_all`` waits for those too, and closes their sockets.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType

from .closequeue import CloseQueue
from .connections import CloseReason, Connection, Handler
from .constants import WinError
from .errors import ClosedHandleError, PortClosedError
from .operations import OpKind
from .addresses import Address
from .port import Completion, CompletionPort, Outcome
from .sockets import AcceptOperation, Socket

log: logging.Logger = logging.getLogger("winiocp")
#: Stands for the idle queue of a manager that has none (``_queued``).
_NOTHING: MappingProxyType[int, object] = MappingProxyType({})
#: How many times in a row a synchronously failing AcceptEx is retried at once (each retry
#: takes the next client from the backlog) before the slot backs off.
ACCEPT_RETRIES = 16
#: The first and the longest back-off of an accept slot that cannot be posted (seconds).
ACCEPT_BACKOFF = 0.05
ACCEPT_BACKOFF_MAX = 2.0
#: Errors that say the system is out of something (descriptors, buffers, memory): retrying at
#: once cannot help, so the slot backs off.
RESOURCE_ERRORS = frozenset({
    WinError.WSAEMFILE, WinError.WSAENOBUFS, WinError.ERROR_NOT_ENOUGH_MEMORY,
    1450,  # ERROR_NO_SYSTEM_RESOURCES
    14,  # ERROR_OUTOFMEMORY
})


class BufferPool:
    """Receive buffers lent to zero-byte-read connections for one read at a time.

    A taken buffer is the borrower's (and its receive operation's) until ``give`` returns
    it; the pool keeps at most ``keep`` free ones.
    """

    def __init__(self, size: int, keep: int = 64) -> None:
        #: Each buffer's size in bytes.
        self.size: int = size
        #: The most free buffers kept for reuse.
        self.keep: int = keep
        self._free: list[bytearray] = []

    def take(self) -> bytearray:
        """A free buffer, or a new one of ``size`` bytes."""
        try:
            return self._free.pop()
        except IndexError:
            return bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        """Only once no receive into ``buffer`` can be pending any more."""
        if len(self._free) < self.keep:
            self._free.append(buffer)


@dataclass
class Stats:
    """Counters of one manager (updated under its lock)."""

    accepted: int = 0
    accept_failures: int = 0
    connections_closed: int = 0
    closed_by_reason: dict[CloseReason, int] = field(
        default_factory=lambda: dict.fromkeys(CloseReason, 0))
    bytes_received: int = 0
    bytes_sent: int = 0
    handler_errors: int = 0
    #: Times an accept slot could not be posted and was re-armed later (``AcceptPool``).
    accept_backoffs: int = 0

    @property
    def forced_closes(self) -> int:
        """Connections force-closed at their close deadline (``CloseReason.FORCED``)."""
        return self.closed_by_reason[CloseReason.FORCED]


class ConnectionManager:
    """Owns a completion port's connections: routing, close queue, statistics.

    Without ``port`` it creates one and owns it (``close()`` closes it); a given port stays
    the caller's. Every ``Connection`` it manages owns its socket; ``close_all`` closes them
    all. Raises ``ValueError`` for a ``recv_size`` outside 1 to 2**32-1, or a
    ``close_timeout`` / ``idle_timeout`` that is not positive.
    """

    def __init__(self, port: CompletionPort | None = None, *, close_timeout: float = 5.0,
                 time_wait_avoidance: bool = True, recv_size: int = 65536,
                 zero_byte_reads: bool = False, idle_timeout: float | None = None,
                 on_forced_close: Callable[[Connection], None] | None = None) -> None:
        if not 1 <= recv_size <= 0xFFFFFFFF:
            raise ValueError(f"recv_size must be 1 to 2**32-1 bytes, got {recv_size}")
        #: The port the connections complete on.
        self.port: CompletionPort = port if port is not None else CompletionPort()
        self._owns_port = port is None
        self.close_queue: CloseQueue[Connection] = CloseQueue(close_timeout)
        #: Open connections by idle deadline; one idle that long is closed (gracefully).
        self.idle_queue: CloseQueue[Connection] | None = (
            CloseQueue(idle_timeout) if idle_timeout is not None else None)
        #: Close with an RST a connection whose FIN went first (see ``connections.py``).
        self.time_wait_avoidance: bool = time_wait_avoidance
        #: Each connection's receive buffer size.
        self.recv_size: int = recv_size
        #: Whether idle connections wait with zero-byte reads (no buffer pinned).
        self.zero_byte_reads: bool = zero_byte_reads
        #: The buffers zero-byte-read connections borrow for each real read.
        self.buffers: BufferPool = BufferPool(recv_size)
        #: Called with each connection the close queue forced.
        self.on_forced_close: Callable[[Connection], None] | None = on_forced_close
        #: Accept slots waiting out a back-off before they are posted again.
        self.retry_queue: CloseQueue[_AcceptRetry] = CloseQueue(ACCEPT_BACKOFF)
        #: The counters (updated under the manager's lock).
        self.stats: Stats = Stats()
        #: The connections not yet closed.
        self.live: set[Connection] = set()
        #: The accept pools ``listen`` started.
        self.pools: list[AcceptPool] = []
        #: time.monotonic() when the current batch was dequeued (``run_once``, ``dispatch``):
        #: the clock connections record their activity with.
        self.now: float = time.monotonic()
        # What run_once tests every turn: whether any deadline queue holds anything.
        self._queued = (self.close_queue.queued, self.retry_queue.queued,
                        self.idle_queue.queued if self.idle_queue is not None else _NOTHING)
        # Completions of a batch an interrupt cut short, routed first by the next run_once.
        self._undispatched: deque[Completion] = deque()
        self._lock = threading.Lock()

    # -- connections -----------------------------------------------------------------------

    def add(self, sock: Socket, handler: Handler,
            recycle: Callable[[Socket], bool] | None = None, *,
            local_address: Address | None = None,
            peer_address: Address | None = None) -> Connection:
        """Manage a connected socket: associate it (if needed) and keep a receive pending.

        The addresses, when known (AcceptEx returns both), save a getsockname/getpeername.
        """
        if sock.port is None:
            self.port.associate(sock)
        elif sock.port is not self.port:
            raise ValueError(f"{sock!r} is associated with another port")
        if recycle is None:  # (a socket to recycle stays as it is: see the module docstring)
            sock.set_skip_on_success()  # (only where Windows allows it)
        connection = Connection(self, sock, handler, recv_size=self.recv_size,
                                zero_byte_reads=self.zero_byte_reads, recycle=recycle,
                                local_address=local_address, peer_address=peer_address)
        with self._lock:
            self.live.add(connection)
        if self.idle_queue is not None:
            self.idle_queue.add(connection)
        connection.start()
        return connection

    def listen(self, listener: Socket, handler_factory: Callable[[], Handler], *,
               accepts: int = 16, recycle: bool = False) -> AcceptPool:
        """Keep ``accepts`` AcceptEx posted on ``listener`` (bound and listening)."""
        pool = AcceptPool(self, listener, handler_factory, accepts=accepts, recycle=recycle)
        self.pools.append(pool)
        pool.start()
        return pool

    def _closing(self, connection: Connection) -> None:
        self.close_queue.add(connection)

    def _closed(self, connection: Connection, reason: CloseReason) -> None:
        self.close_queue.discard(connection)
        if self.idle_queue is not None:
            self.idle_queue.discard(connection)
        with self._lock:
            self.live.discard(connection)
            self.stats.connections_closed += 1
            self.stats.closed_by_reason[reason] += 1
            self.stats.bytes_received += connection.bytes_received
            self.stats.bytes_sent += connection.bytes_sent

    # -- the loop ----------------------------------------------------------------------------

    def run_once(self, timeout: float | None = None) -> bool:
        """Dequeue a batch of completions (at most the port's ``batch_size``, waiting up to
        ``timeout`` seconds, or 0.5 s with None, for the first), route each in order, then
        handle the deadlines; False once the port is closed."""
        if self._undispatched:  # an interrupt cut the last batch short: finish it first
            self._route(self._take_undispatched())
            self.expire()
            return True
        wait = 0.5 if timeout is None else timeout
        closing, retrying, idle = self._queued
        if closing or retrying or idle:
            for queue in (self.close_queue, self.idle_queue, self.retry_queue):
                due = queue.seconds_until_next() if queue is not None else None
                if due is not None and due < wait:
                    wait = due
        try:
            completions = self.port.get_many(wait)
        except PortClosedError:
            return False
        self.now = now = time.monotonic()
        if completions:
            self._route(completions)
        if closing or retrying or idle:  # (live views: what the handlers just queued counts)
            self.expire(now)
        return True

    def _route(self, completions: list[Completion]) -> None:
        """``dispatch`` each completion, in order (inlined: this is the loop's hot path)."""
        completions.reverse()  # popped from the end: what is left is what was not routed
        pop = completions.pop
        try:
            while completions:
                completion = pop()
                operation = completion.operation
                handler = operation.context if operation is not None else None
                if callable(handler):
                    try:
                        handler(completion)
                    except Exception:
                        self._handler_failed(handler)
        except BaseException:
            completions.reverse()
            self._undispatched.extend(completions)
            raise

    def _take_undispatched(self) -> list[Completion]:
        taken: list[Completion] = []
        undispatched = self._undispatched
        try:
            while True:
                taken.append(undispatched.popleft())
        except IndexError:  # emptied (another thread may have taken some)
            pass
        return taken

    def dispatch(self, completion: Completion) -> None:
        """Route ``completion`` to its operation's completion handler (``op.context``, when
        that is callable); anything else is ignored. Never raises for a handler's exception
        (it is logged and counted, and the connection it came from aborted)."""
        self.now = time.monotonic()
        operation = completion.operation
        handler = operation.context if operation is not None else None
        if callable(handler):
            self._guarded(handler, completion)

    def _guarded(self, call: Callable[..., object], *args: Completion) -> None:
        """Run a handler-facing ``call``; an exception is logged and counted, never let out of
        the loop, and the connection it came from is aborted."""
        try:
            call(*args)
        except Exception:
            self._handler_failed(call)

    def _handler_failed(self, call: Callable[..., object]) -> None:
        """``call`` raised (the exception is being handled): log and count it, and abort the
        connection it came from."""
        log.exception("handler failed in %r", call)
        with self._lock:
            self.stats.handler_errors += 1
        target = getattr(call, "__self__", None)
        if isinstance(target, Connection):
            try:
                target.abort()
            except Exception:
                log.exception("connection_lost failed while aborting %r", target)

    def expire(self, now: float | None = None) -> int:
        """Force-close every connection whose close deadline passed, close those idle too
        long, and re-arm accept slots whose back-off ended; return how many were forced."""
        closing, retrying, idle = self._queued
        if not closing and not retrying and not idle:
            return 0  # nothing has a deadline: the common case costs three C calls
        now = time.monotonic() if now is None else now
        for retry in self.retry_queue.expired(now):
            self._guarded(retry.post)
        if self.idle_queue is not None:
            for connection in self.idle_queue.expired(now):
                idle_until = connection.last_activity + self.idle_queue.timeout
                if idle_until > now:
                    self.idle_queue.add(connection, now=connection.last_activity)
                else:
                    self._guarded(connection.close)
        expired = self.close_queue.expired(now)
        for connection in expired:  # each one guarded: one failing handler stops no other
            self._guarded(connection.force_close)
            if self.on_forced_close is not None:
                self._guarded(functools.partial(self.on_forced_close, connection))
        return len(expired)

    def run(self, until: Callable[[], bool], poll: float = 0.1) -> None:
        """Run the loop until ``until()`` is true (checked at least every ``poll`` seconds)."""
        while not until():
            if not self.run_once(poll):
                return

    def close_all(self, timeout: float | None = None) -> None:
        """Stop accepting, close every connection gracefully and run until all are done
        (connections still closing at their deadline are forced)."""
        for pool in self.pools:
            pool.close()
        with self._lock:
            connections = list(self.live)
        for connection in connections:
            connection.close()
        deadline = time.monotonic() + (timeout if timeout is not None else
                                       self.close_queue.timeout + 1.0)
        while (self.live or self._pool_operations_pending()) and time.monotonic() < deadline:
            self.run_once(0.1)

    def _pool_operations_pending(self) -> bool:
        """Whether an accept or a recycling DisconnectEx of one of our pools is in flight."""
        pools = self.pools
        return any(getattr(op.context, "__self__", None) in pools
                   for op in self.port.pending_operations())

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    def close(self) -> None:
        """Close everything, then the port if this manager created it."""
        self.close_all()
        if self._owns_port:
            self.port.close()


class AcceptPool:
    """N AcceptEx always posted on one listening socket; failed accepts never stop it.

    Made by ``ConnectionManager.listen``. It owns the listener (``close()`` closes it) and
    each accept socket until its accept completes, when the socket goes to a new
    ``Connection``; recycled sockets are the pool's until reused. Raises ``ValueError``
    for ``accepts`` < 1.
    """

    def __init__(self, manager: ConnectionManager, listener: Socket,
                 handler_factory: Callable[[], Handler], *, accepts: int = 16,
                 recycle: bool = False) -> None:
        if accepts < 1:
            raise ValueError(f"accepts must be >= 1, got {accepts}")
        #: The manager the accepted connections are added to.
        self.manager: ConnectionManager = manager
        #: The listening socket (owned by the pool).
        self.listener: Socket = listener
        #: Makes the handler of each accepted connection.
        self.handler_factory: Callable[[], Handler] = handler_factory
        #: How many AcceptEx the pool keeps posted.
        self.accepts: int = accepts
        #: Whether finished connections' sockets are recycled (DisconnectEx TF_REUSE_SOCKET).
        self.recycle: bool = recycle
        #: Recycled sockets ready for the next AcceptEx.
        self.free_sockets: list[Socket] = []
        #: Sockets recycled so far.
        self.recycled: int = 0
        #: Whether ``close()`` was called.
        self.closed: bool = False
        self._recycling: set[Socket] = set()  # a DisconnectEx(TF_REUSE_SOCKET) is pending
        self._retries: set[_AcceptRetry] = set()  # slots waiting out a back-off
        self._lock = threading.Lock()
        if listener.port is None:
            manager.port.associate(listener)

    def start(self) -> None:
        """Post the pool's accepts."""
        for _ in range(self.accepts):
            self._post(None)

    @property
    def slots_waiting(self) -> int:
        """Accept slots not posted right now, waiting out a back-off."""
        return len(self._retries)

    def _post(self, reuse: AcceptOperation | None, backoff: float | None = None) -> None:
        """Post one accept (re-arming ``reuse``); if that cannot work now, back off for
        ``backoff`` seconds (default ``ACCEPT_BACKOFF``)."""
        for _ in range(ACCEPT_RETRIES):
            if self.closed:
                return
            with self._lock:
                recycled = self.free_sockets.pop() if self.free_sockets else None
            try:
                self.listener.accept(recycled, reuse=reuse, context=self.on_completion)
                return
            except ClosedHandleError:
                if recycled is not None:
                    recycled.close()
                if self.listener.closed:
                    return  # the listener was closed: the pool is done
                error: int | None = None
            except Exception as exc:  # noqa: BLE001 - no error may cost the pool a slot
                # E.g. WSAECONNRESET: a client connected and reset before AcceptEx took it
                # (retry at once: the next client is waiting); or WSAEMFILE / WSAENOBUFS.
                log.debug("AcceptEx could not be posted: %r", exc)
                if recycled is not None:
                    recycled.close()
                error = exc.winerror if isinstance(exc, OSError) else None
            self._count_failure()
            if error in RESOURCE_ERRORS or error is None:
                break  # retrying at once cannot help
        self._back_off(reuse, ACCEPT_BACKOFF if backoff is None else backoff)

    def _back_off(self, reuse: AcceptOperation | None, backoff: float) -> None:
        retry = _AcceptRetry(self, reuse, min(2 * backoff, ACCEPT_BACKOFF_MAX))
        with self._lock:
            if self.closed:
                return
            self._retries.add(retry)
        self.manager._count("accept_backoffs")  # pyright: ignore[reportPrivateUsage]  # friend
        log.warning("accept slot of %r backs off for %.2f s", self.listener, backoff)
        self.manager.retry_queue.add(retry, delay=backoff)

    def _retry(self, retry: _AcceptRetry) -> None:
        with self._lock:
            self._retries.discard(retry)
        self._post(retry.reuse, retry.next_backoff)

    def _count_failure(self) -> None:
        self.manager._count("accept_failures")  # pyright: ignore[reportPrivateUsage]  # friend

    def on_completion(self, completion: Completion) -> None:
        """Route one of the pool's completions: an accept, or a recycling DisconnectEx."""
        operation = completion.operation
        if operation is not None and operation.kind is OpKind.DISCONNECT:
            self._recycled(completion, operation.owner)
            return
        assert isinstance(operation, AcceptOperation)
        accepted = operation.accepted
        if completion.outcome is Outcome.FAILED:
            accepted.close()
            if not self.closed:
                self._count_failure()
                self._post(operation)
            return
        self.manager._count("accepted")  # pyright: ignore[reportPrivateUsage]  # friend
        if self.closed:
            accepted.close()
            return
        # Read before the operation is re-armed, which clears them.
        local, remote = operation.local_address, operation.remote_address
        self._post(operation)  # re-arm first: the pool stays full while the handler runs
        try:
            self.manager.add(accepted, self.handler_factory(),
                             self.release if self.recycle else None,
                             local_address=local, peer_address=remote)
        except BaseException:
            accepted.close()  # never leak a connected socket the application never saw
            raise

    def release(self, sock: Socket) -> bool:
        """Take a finished connection's socket for reuse (DisconnectEx TF_REUSE_SOCKET).
        False if the pool does not recycle (the caller closes the socket)."""
        with self._lock:
            if not self.recycle or self.closed:
                return False
            self._recycling.add(sock)
        try:
            sock.disconnect(reuse=True, context=self.on_completion)
        except OSError:
            with self._lock:
                self._recycling.discard(sock)
            return False
        return True

    def _recycled(self, completion: Completion, owner: object) -> None:
        assert isinstance(owner, Socket)
        with self._lock:
            self._recycling.discard(owner)
            keep = completion.outcome is not Outcome.FAILED and not self.closed
            if keep:
                self.free_sockets.append(owner)
                self.recycled += 1
        if not keep:
            owner.close()

    def close(self) -> None:
        """Stop accepting: pending AcceptEx complete as cancelled and are not re-posted;
        sockets being recycled are closed (their DisconnectEx completes as cancelled)."""
        with self._lock:
            self.closed = True
            free, self.free_sockets = self.free_sockets, []
            recycling = list(self._recycling)
            retries, self._retries = self._retries, set()
        for retry in retries:
            self.manager.retry_queue.discard(retry)
        self.listener.close()
        for sock in free + recycling:
            sock.close()


class _AcceptRetry:
    """An accept slot waiting out its back-off in the manager's retry queue."""

    __slots__ = ("pool", "reuse", "next_backoff")

    def __init__(self, pool: AcceptPool, reuse: AcceptOperation | None,
                 next_backoff: float) -> None:
        self.pool = pool
        self.reuse = reuse
        self.next_backoff = next_backoff

    def post(self) -> None:
        self.pool._retry(self)  # pyright: ignore[reportPrivateUsage]  # the pool's own record
