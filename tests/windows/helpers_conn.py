"""Helpers for the connection-level tests: ``ConnectionManager``, ``Connection``, ``AcceptPool``.

Everything runs against the real ws2_32 (natively, or Wine's, whose sockets are real Linux TCP
sockets) on 127.0.0.1; the peers are stdlib sockets. Every wait is bounded: a lost completion
fails a test instead of hanging it.

* ``Server``: a ``ConnectionManager`` with a listening socket and an ``AcceptPool``, whose
  dequeue loop runs in a background thread (``Server.serve``) or is driven by the test
  (``Server.pump``). An exception that escapes ``run_once`` in the loop thread is kept and
  re-raised by ``Server.close`` (and ``Server.check``): the tests show none does.
* ``Recorder``: a ``Handler`` that records what it is told (bytes, EOF, close reason);
  ``Exchange``: a request/response handler for short connections.
* ``read_to_end``: what a stdlib peer sees when it reads until the end: how many bytes, their
  SHA-256, and whether the stream ended with EOF or a reset; ``reset_via``: whether (and how)
  the peer learns of an RST, which Wine's ``recv`` reports as end of stream.
* ``time_wait_on``: TIME_WAIT entries whose local port is the given port, read through
  ``winiocp.tcptable``.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, TypeVar

import pytest

from winiocp import CompletionPort, Completion, Operation, OpKind, Outcome, Socket
from winiocp.addresses import Address
from winiocp.connections import CloseReason, Connection, Handler, State
from winiocp.constants import NtStatus, TcpState
from winiocp.manager import AcceptPool, ConnectionManager
from winiocp.tcptable import count_state

LOOPBACK = "127.0.0.1"
MiB = 1 << 20
#: Upper bound of a wait for something that must happen.
WAIT = 10.0
#: Upper bound of a bulk transfer (tens of MiB, under Wine).
BULK_WAIT = 60.0
T = TypeVar("T")


# -- waiting ---------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, what: str = "condition",
               interval: float = 0.005) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def kernel_done(operation: Operation) -> bool:
    """Whether the kernel finished ``operation`` (HasOverlappedIoCompleted), dequeued or not."""
    status: int = operation.overlapped.Internal & 0xFFFFFFFF
    return status != NtStatus.STATUS_PENDING


def in_background(call: Callable[[], T]) -> Future[T]:
    """Start ``call`` in a thread; ``.result(timeout)`` joins it (and re-raises)."""
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        return executor.submit(call)
    finally:
        executor.shutdown(wait=False)


# -- stdlib peers ----------------------------------------------------------------------------


def connect(address: tuple[str, int], timeout: float = WAIT) -> socket.socket:
    return socket.create_connection(address, timeout=timeout)


def reset_peer(peer: socket.socket) -> None:
    """Close ``peer`` abortively: SO_LINGER {1, 0} makes close send RST instead of FIN."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("hh", 1, 0))
    peer.close()


def digest(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int) -> bytes:
    """Random bytes: a lost, duplicated or reordered chunk changes the digest."""
    return os.urandom(size)


def send_until_one_pends(connection: Connection, chunk: int = 64 * 1024,
                         most: int = 64 * 1024 * 1024) -> int:
    """Send until a send stays pending (the peer reads nothing, so the socket buffer fills;
    until then each send finishes inline, in skip-on-success mode); the bytes sent in all."""
    filler = bytes(chunk)
    total = 0
    while connection.pending_sends == 0:
        assert total < most, f"{most} bytes sent and every send finished at once"
        connection.send(filler)
        total += chunk
    return total


Ending = Literal["eof", "reset"]


@dataclass
class PeerRead:
    """What a stdlib peer saw reading until the end of the stream."""

    received: int
    sha256: str
    ending: Ending
    error: OSError | None = None
    data: bytes | None = None  # only with keep=True


def read_to_end(peer: socket.socket, timeout: float = BULK_WAIT, keep: bool = False,
                limit: int | None = None) -> PeerRead:
    """Read until EOF or a reset (bounded by ``timeout`` overall); ``limit`` stops early.

    A reset may show as ConnectionResetError or ConnectionAbortedError, depending on the stack.
    """
    hasher = hashlib.sha256()
    kept = bytearray()
    received = 0
    deadline = time.monotonic() + timeout
    buffer = bytearray(1 << 20)
    ending: Ending = "eof"
    error: OSError | None = None
    while limit is None or received < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"peer still reading after {timeout} s ({received} bytes so far)")
        peer.settimeout(left)
        want = len(buffer) if limit is None else min(len(buffer), limit - received)
        try:
            count = peer.recv_into(buffer, want)
        except (ConnectionResetError, ConnectionAbortedError) as exc:
            ending, error = "reset", exc
            break
        if not count:
            break
        hasher.update(memoryview(buffer)[:count])
        if keep:
            kept += buffer[:count]
        received += count
    return PeerRead(received, hasher.hexdigest(), ending, error, bytes(kept) if keep else None)


def reset_via(peer: socket.socket, read: PeerRead | None = None) -> str | None:
    """How ``peer`` learns that its connection was reset, once the server side is finished:
    ``"recv"`` (a receive raises, as Windows reports it), ``"send"`` (the receive reports end
    of stream, but the next send fails at once: how Wine reports an RST), or None (no reset:
    the stream ended with an ordinary FIN, and a send still goes out).

    Sends one byte: only call it when the server has nothing left to read.
    """
    if read is not None and read.ending == "reset":
        return "recv"
    peer.settimeout(WAIT)
    try:
        leftover = peer.recv(1)
    except (ConnectionResetError, ConnectionAbortedError):
        return "recv"
    assert leftover == b"", f"peer received {leftover!r} after the end of the stream"
    try:
        peer.send(b"?")
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return "send"
    return None


def read_then_close(peer: socket.socket, timeout: float = BULK_WAIT) -> PeerRead:
    """The well-behaved peer: read until the end, then close (its FIN after ours)."""
    try:
        return read_to_end(peer, timeout)
    finally:
        peer.close()


# -- the server side -------------------------------------------------------------------------


@dataclass
class Recorder:
    """A ``Handler`` that records everything; optional hooks act on the connection."""

    on_data: Callable[[Connection, bytes], None] | None = None
    on_eof: Callable[[Connection], None] | None = None
    on_lost: Callable[[Connection, CloseReason], None] | None = None
    received: bytearray = field(default_factory=bytearray)
    eof: bool = False
    reasons: list[CloseReason] = field(default_factory=list)
    lost: threading.Event = field(default_factory=threading.Event)

    def data_received(self, connection: Connection, data: bytes) -> None:
        self.received += data
        if self.on_data is not None:
            self.on_data(connection, data)

    def eof_received(self, connection: Connection) -> None:
        self.eof = True
        if self.on_eof is not None:
            self.on_eof(connection)

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        self.reasons.append(reason)
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost(connection, reason)


class RecordingManager(ConnectionManager):
    """A ``ConnectionManager`` that also hands every connection it adds to the test."""

    def __init__(self, *, close_timeout: float = 5.0, time_wait_avoidance: bool = True,
                 on_forced_close: Callable[[Connection], None] | None = None) -> None:
        super().__init__(close_timeout=close_timeout, time_wait_avoidance=time_wait_avoidance,
                         on_forced_close=on_forced_close)
        self.added: queue.Queue[Connection] = queue.Queue()
        self.history: list[Connection] = []

    def add(self, sock: Socket, handler: Handler,
            recycle: Callable[[Socket], bool] | None = None, *,
            local_address: Address | None = None,
            peer_address: Address | None = None) -> Connection:
        connection = super().add(sock, handler, recycle, local_address=local_address,
                                 peer_address=peer_address)
        self.history.append(connection)
        self.added.put(connection)
        return connection


def handler_of(connection: Connection) -> Recorder:
    handler = connection.handler
    assert isinstance(handler, Recorder), handler
    return handler


def ops_of(port: CompletionPort, owner: object) -> list[Operation]:
    """The operations still in ``port``'s registry that were issued on ``owner``."""
    return [op for op in port.pending_operations() if op.owner is owner]


def issuer(operation: Operation) -> object:
    """The Connection or AcceptPool whose completion handler ``operation`` carries."""
    return getattr(operation.context, "__self__", None)


def accepts_pending(port: CompletionPort, pool: AcceptPool | None = None) -> int:
    return sum(1 for op in port.pending_operations()
               if op.kind is OpKind.ACCEPT and (pool is None or issuer(op) is pool))


def time_wait_on(local_port: int) -> int:
    """TIME_WAIT entries whose local port is ``local_port`` (GetTcpTable2)."""
    return count_state(TcpState.MIB_TCP_STATE_TIME_WAIT, local_port)


def pump(manager: ConnectionManager, until: Callable[[], bool], timeout: float = WAIT,
         what: str = "condition") -> None:
    """Drive ``manager.run_once`` from this thread until ``until()`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s pumping the port for {what}")
        manager.run_once(0.05)


class Server:
    """A listening ``RecordingManager``: N AcceptEx posted (at once, or by ``start_pool``
    with ``defer_pool``), connections handled by ``handler_factory()`` (a ``Recorder`` by
    default)."""

    def __init__(self, handler_factory: Callable[[], Handler] = Recorder, *, accepts: int = 8,
                 recycle: bool = False, backlog: int = 1024, close_timeout: float = 5.0,
                 time_wait_avoidance: bool = True,
                 on_forced_close: Callable[[Connection], None] | None = None,
                 defer_pool: bool = False) -> None:
        self.manager = RecordingManager(close_timeout=close_timeout,
                                        time_wait_avoidance=time_wait_avoidance,
                                        on_forced_close=on_forced_close)
        self.port = self.manager.port
        self.listener = Socket()
        self._pool: AcceptPool | None = None
        self._pool_options = (handler_factory, accepts, recycle)
        try:
            self.listener.bind((LOOPBACK, 0))
            self.listener.listen(backlog)
            address = self.listener.getsockname()
            self.address: tuple[str, int] = (str(address[0]), int(address[1]))
            if not defer_pool:
                self.start_pool()
        except BaseException:
            self.listener.close()
            self.port.close()
            raise
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loop_errors: list[BaseException] = []

    def start_pool(self) -> AcceptPool:
        """Post the accepts (the listener already listens: connections wait in the backlog)."""
        assert self._pool is None, "the pool already started"
        handler_factory, accepts, recycle = self._pool_options
        self._pool = self.manager.listen(self.listener, handler_factory, accepts=accepts,
                                         recycle=recycle)
        return self._pool

    @property
    def pool(self) -> AcceptPool:
        assert self._pool is not None, "the pool has not started"
        return self._pool

    # -- driving the loop ----------------------------------------------------------------

    def serve(self) -> Server:
        """Run the dequeue loop in a background thread until ``close``."""
        assert self._thread is None
        self._thread = threading.Thread(target=self._run, name="winiocp-loop", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.manager.run(self._stop.is_set, poll=0.05)
        except BaseException as exc:  # kept for the test: nothing may escape run_once
            self.loop_errors.append(exc)

    def stop_loop(self) -> None:
        """Stop the background loop (the test drives ``run_once`` afterwards)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(WAIT)
            assert not self._thread.is_alive(), "the dequeue loop did not stop"
            self._thread = None
            self._stop.clear()
        self.check()

    def check(self) -> None:
        if self.loop_errors:
            raise AssertionError(f"an exception escaped run_once: {self.loop_errors[0]!r}"
                                 ) from self.loop_errors[0]

    def pump(self, until: Callable[[], bool], timeout: float = WAIT, what: str = "condition"
             ) -> None:
        """Drive ``run_once`` from this thread until ``until()`` holds (bounded)."""
        assert self._thread is None, "the background loop is running"
        pump(self.manager, until, timeout, what)

    def step(self, timeout: float = WAIT) -> Completion:
        """Dequeue one completion and dispatch it, as ``run_once`` does; return it."""
        assert self._thread is None, "the background loop is running"
        completion = self.port.get(timeout)
        assert completion.outcome is not Outcome.TIMED_OUT, "no completion came"
        self.manager.dispatch(completion)
        self.manager.expire()
        return completion

    def wait(self, condition: Callable[[], bool], timeout: float = WAIT, what: str = "condition"
             ) -> None:
        """Wait for ``condition`` with the loop in the background, else by pumping."""
        if self._thread is None:
            self.pump(condition, timeout, what)
        else:
            wait_until(condition, timeout, what)
            self.check()

    def next_connection(self, timeout: float = WAIT) -> Connection:
        """The next connection the pool accepted (pumping the port if no loop runs)."""
        if self._thread is None:
            self.pump(lambda: not self.manager.added.empty(), timeout, "an accepted connection")
        try:
            return self.manager.added.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no connection accepted within {timeout} s")

    def connection_for(self, peer: socket.socket, timeout: float = WAIT) -> Connection:
        """The accepted connection whose remote end is ``peer``."""
        wanted = peer.getsockname()
        deadline = time.monotonic() + timeout
        while True:
            # Newest first, open ones only: a recycled Socket serves several connections.
            for connection in reversed(self.manager.history):
                if connection.state in (State.CLOSED, State.ABORTED) or connection.sock.closed:
                    continue
                try:
                    if tuple(connection.sock.getpeername()[:2]) == tuple(wanted[:2]):
                        return connection
                except OSError:
                    continue
            if time.monotonic() > deadline:
                pytest.fail(f"no accepted connection for {wanted} within {timeout} s")
            if self._thread is None:
                self.manager.run_once(0.05)
            else:
                time.sleep(0.005)

    # -- leaks -----------------------------------------------------------------------------

    def connection_ops(self) -> list[Operation]:
        """Pending operations other than the pool's accepts and recycling disconnects."""
        return [op for op in self.port.pending_operations()
                if not isinstance(issuer(op), AcceptPool)]

    def assert_drained(self, timeout: float = WAIT) -> None:
        """Every connection is gone and no connection operation is left in the registry."""
        self.wait(lambda: not self.manager.live and not self.connection_ops(), timeout,
                  "every connection and its operations to be gone")
        assert not self.manager.close_queue

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the loop, close everything, drain the port (the registry must empty)."""
        try:
            self.stop_loop()
        finally:
            self.manager.close_all(timeout=WAIT)
            self.listener.close()  # close_all closed it already, unless no pool started
            deadline = time.monotonic() + WAIT
            while self.port.pending_count and time.monotonic() < deadline:
                self.manager.run_once(0.05)
            left = self.port.pending_count
            self.port.close()
        assert left == 0, f"{left} operations still pending after close_all"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
        else:  # do not hide the test's failure behind a cleanup failure
            try:
                self.close()
            except BaseException:
                pass


# -- request/response servers -----------------------------------------------------------------


@dataclass
class Exchange:
    """A handler for short request/response connections: after ``request_size`` bytes it
    sends ``response``; with ``close_after`` it then calls ``close()`` (server closes first),
    with ``abort_after`` it calls ``abort()`` right after the send (no orderly exchange)."""

    request_size: int
    response: bytes
    close_after: bool = False
    abort_after: bool = False
    got: int = 0

    def data_received(self, connection: Connection, data: bytes) -> None:
        before = self.got
        self.got += len(data)
        if before < self.request_size <= self.got:
            connection.send(self.response)
            if self.abort_after:
                connection.abort()
            elif self.close_after:
                connection.close()

    def eof_received(self, connection: Connection) -> None:
        pass

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    """A ``Server`` (Recorder handlers, default options) with its loop in the background."""
    with Server() as running:
        running.serve()
        yield running


def closed_states(manager: ConnectionManager) -> dict[CloseReason, int]:
    return {reason: count for reason, count in manager.stats.closed_by_reason.items() if count}


__all__ = [
    "BULK_WAIT", "LOOPBACK", "MiB", "WAIT", "CloseReason", "Connection", "Exchange", "PeerRead",
    "Recorder", "RecordingManager", "Server", "State", "accepts_pending", "closed_states",
    "connect", "digest", "handler_of", "in_background", "kernel_done", "ops_of", "payload",
    "pump", "read_then_close", "read_to_end", "reset_peer", "reset_via", "server",
    "time_wait_on", "wait_until",
]
