"""``Server``: the classic IOCP model — a pool of worker threads on one completion port.

The workers all wait in the port's dequeue loop (``ConnectionManager.run``); the port wakes at
most one per completion. The listener keeps N AcceptEx posted; every connection keeps one
receive pending, closes without losing data and avoids TIME_WAIT (see ``connections.py``).
Stopping closes the listener, lets the workers go, then closes every connection gracefully
(forcing those that do not finish by their deadline).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..addresses import Address
from ..connections import Handler
from ..constants import AddressFamily
from ..manager import ConnectionManager
from ..sockets import Socket


@dataclass(frozen=True)
class ServerSummary:
    """What a server did, from its manager's counters: returned by ``Server.stop``."""

    #: Connections accepted.
    connections: int
    #: Bytes received on every connection.
    bytes_received: int
    #: Bytes sent on every connection (completed sends).
    bytes_sent: int
    #: Connections closed abortively because their close deadline passed (the close queue).
    forced_closes: int
    #: AcceptEx operations that failed (e.g. a client that reset in the backlog); each was
    #: replaced by a new accept.
    accept_failures: int

    def line(self) -> str:
        """One ``key=value`` line, as the CLI prints it."""
        return (f"connections={self.connections} bytes_in={self.bytes_received} "
                f"bytes_out={self.bytes_sent} forced_closes={self.forced_closes} "
                f"accept_failures={self.accept_failures}")


class Server:
    """Serve ``handler_factory()`` handlers on ``host:port`` with ``workers`` threads.

    The constructor binds and listens at once (``port=0``: any free port, see ``address``),
    with SO_EXCLUSIVEADDRUSE, so a second server cannot take the same port. ``start()`` posts
    ``accepts`` AcceptEx and starts the workers; ``stop()`` (or ``serve()``) ends it. Each
    accepted connection gets a handler of its own from ``handler_factory()``. The keyword
    arguments after ``backlog`` are the :class:`~winiocp.manager.ConnectionManager`'s.

    Raises ``ValueError`` for ``workers < 1`` and ``OSError`` when the address cannot be bound
    (in use, or not an address of this machine); the listener is then closed.
    The server owns its listener and its manager (with the completion port and every
    connection) until ``stop()``.
    """

    def __init__(self, handler_factory: Callable[[], Handler], host: str = "127.0.0.1",
                 port: int = 0, *, workers: int = 4, accepts: int = 16, backlog: int = 512,
                 close_timeout: float = 5.0, idle_timeout: float | None = None,
                 time_wait_avoidance: bool = True, zero_byte_reads: bool = False,
                 recv_size: int = 65536) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        #: Called once per accepted connection for its handler.
        self.handler_factory: Callable[[], Handler] = handler_factory
        #: How many worker threads run the dequeue loop.
        self.workers: int = workers
        #: The manager: the completion port, the connections, the close and idle deadlines.
        self.manager: ConnectionManager = ConnectionManager(
            close_timeout=close_timeout, idle_timeout=idle_timeout,
            time_wait_avoidance=time_wait_avoidance, zero_byte_reads=zero_byte_reads,
            recv_size=recv_size)
        family = AddressFamily.AF_INET6 if ":" in host else AddressFamily.AF_INET
        #: The listening socket (IPv6 when ``host`` has a colon).
        self.listener: Socket = Socket(family)
        try:
            self.listener.set_exclusive_address_use(True)
            self.listener.bind((host, port))
            self.listener.listen(backlog)
        except BaseException:
            self.listener.close()
            raise
        #: The address really bound: ``(host, port)``, with the port chosen when 0 was asked.
        self.address: Address = self.listener.getsockname()
        self._accepts = accepts
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Post the accepts and start the worker threads (daemon threads); returns at once.

        Call it once: the accepts are the manager's accept pool, the threads are joined by
        ``stop()``.
        """
        self.manager.listen(self.listener, self.handler_factory, accepts=self._accepts)
        for index in range(self.workers):
            thread = threading.Thread(target=self.manager.run, args=(self._stopping.is_set,),
                                      name=f"winiocp-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> ServerSummary:
        """Stop accepting, close every connection safely, and summarise.

        The workers finish their current completion and leave; then the manager stops
        accepting and closes every connection in the order that loses no data, forcing (abortively)
        those that do not finish by their close deadline, and closes the port. Blocks until
        then (at most about ``close_timeout``).
        """
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self.manager.close()
        stats = self.manager.stats
        return ServerSummary(stats.accepted, stats.bytes_received, stats.bytes_sent,
                             stats.forced_closes, stats.accept_failures)

    def serve(self, duration: float | None = None,
              ready: Callable[[Address], None] | None = None) -> ServerSummary:
        """Start, call ``ready(address)``, serve until ``duration`` ends or Ctrl-C, stop.

        ``duration=None`` serves until Ctrl-C (KeyboardInterrupt is caught: the server then
        stops cleanly and the summary is returned).
        """
        self.start()
        if ready is not None:
            ready(self.address)
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.1 if deadline is None else min(0.1, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            pass
        return self.stop()
