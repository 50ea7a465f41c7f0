"""A listening socket served by several AcceptEx at once, for ``EventLoop.create_server``.

Why: asyncio's proactor loop keeps one accept pending per listener. Each accepted client is
handed out from a callback, and only then is the next AcceptEx posted, so a burst of clients
is accepted one per loop iteration while the rest wait in the backlog. libuv keeps 32
AcceptEx pending per listener (``uv_simultaneous_server_accepts``); a ``Listener`` keeps
``ACCEPTS_PER_LISTENER``, each re-posted as soon as its client is handed out, so a burst is
accepted in the iterations that bring its completions. A loop iteration can accept at most
as many clients as there are accepts pending when it starts (each re-posted one completes in a
later iteration), so when every pending accept completed in one iteration the burst outran
the pool: it doubles, up to the listen backlog given to ``create_server``. Under load, where
an iteration takes tens of milliseconds, a fixed pool of 16 accepted 135 clients a second
while 144 waited in the backlog (bench/RESULTS.md).

A ``Listener`` also keeps serving when the protocol factory (or the transport made for one
client) raises: the error goes to the loop's exception handler and that one connection is
closed, as asyncio's selector loop does. The stock proactor loop's accept chain ended there,
and its server accepted nobody after that.

A shortage never ends serving either. When an accept cannot be posted or fails for want of
descriptors, buffers or memory (WSAEMFILE, WSAENOBUFS, ...: ``winiocp.manager.RESOURCE_ERRORS``,
the core ``AcceptPool``'s), its slot backs off and is re-armed from the loop, the delay
doubling from ``ACCEPT_BACKOFF`` to ``ACCEPT_BACKOFF_MAX`` as the core pool's: reported once
to the loop's exception handler when the shortage begins, and once in the log when an accept
succeeds again. A client that went away never gets here (``IocpProactor.accept`` goes on with
the next AcceptEx); only an error of the listening socket itself closes it, as asyncio's
loops do.

Accepts are tracked per listening socket object, never by its SOCKET value (a closed
listener's value may be given to the next socket; rule 6).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from asyncio import trsock
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..addresses import Address
from ..manager import ACCEPT_BACKOFF, ACCEPT_BACKOFF_MAX, RESOURCE_ERRORS

if TYPE_CHECKING:
    from .loop import EventLoop

log: logging.Logger = logging.getLogger("winiocp.aio")

#: AcceptEx calls first kept pending per listening socket (the stock loop keeps one, libuv
#: 32); the pool grows from there when bursts outrun it, up to the listen backlog. Each holds
#: an accept socket and its address buffer until a client comes.
ACCEPTS_PER_LISTENER = 16

#: Makes the transport (and its protocol) for an accepted socket and the peer's address.
MakeTransport = Callable[[socket.socket, Address], object]


class Listener:
    """The pending accepts of one listening socket, each re-posted when its client is out."""

    def __init__(self, loop: EventLoop, sock: socket.socket, make_transport: MakeTransport
                 ) -> None:
        self.loop = loop
        self.sock = sock
        self.make_transport = make_transport
        #: The accept futures now pending (bounded by the count ``start`` was given).
        self.accepts: set[asyncio.Future[tuple[socket.socket, Address]]] = set()
        self.stopped: bool = False
        #: How many accepts the pool keeps pending now, and the most it may grow to.
        self.pool_size: int = 0
        self.most: int = 0
        self._turn = -1
        self._accepted_in_turn = 0
        #: Slots waiting out a back-off after a shortage, and the timer that re-arms them.
        self.slots_waiting: int = 0
        self._backoff = ACCEPT_BACKOFF
        self._timer: asyncio.TimerHandle | None = None
        self._short = False  # a shortage was reported, and no accept succeeded since

    def start(self, count: int, most: int | None = None) -> None:
        """Post ``count`` accepts, from the loop (as asyncio starts its accept loop); the pool
        may grow to ``most`` (default: ``count``) when a burst outruns it."""
        self.pool_size = count
        self.most = max(count, most if most is not None else count)
        for _ in range(count):
            self.loop.call_soon(self._post)

    def stop(self) -> None:
        """Cancel every pending accept; nothing is re-posted after this."""
        self.stopped = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.slots_waiting = 0
        for future in list(self.accepts):
            future.cancel()
        self.accepts.clear()

    def _post(self) -> None:
        proactor = self.loop.proactor
        if self.stopped or proactor is None or self.sock.fileno() == -1:
            return
        try:
            future = proactor.accept(self.sock)
        except OSError as exc:
            if exc.winerror in RESOURCE_ERRORS:
                self._back_off(exc)
            else:
                self._failed(exc)
            return
        self.accepts.add(future)
        future.add_done_callback(self._accepted)

    def _accepted(self, future: asyncio.Future[tuple[socket.socket, Address]]) -> None:
        self.accepts.discard(future)
        try:
            conn, address = future.result()
        except asyncio.CancelledError:
            self.sock.close()  # as asyncio's: a cancelled accept means the server stopped
            return
        except OSError as exc:
            if exc.winerror in RESOURCE_ERRORS:
                self._back_off(exc)
            else:
                self._failed(exc)
            return
        if self._short:
            self._short = False
            self._backoff = ACCEPT_BACKOFF
            log.info("%r accepts again after a shortage", self.sock)
        self._post()  # first: the next client needs no callback of its own to be accepted
        self._grow_if_outrun()
        if self.loop.get_debug():
            log.debug("%r got a new connection from %r: %r", self.sock, address, conn)
        try:
            self.make_transport(conn, address)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - reported; the server goes on
            conn.close()
            self.loop.call_exception_handler({
                "message": "Error on transport creation for incoming connection",
                "exception": exc,
                "socket": trsock.TransportSocket(self.sock),
            })

    def _grow_if_outrun(self) -> None:
        """Double the pool when every accept pending at this iteration's start completed in
        it: more clients were waiting than the pool could take in one iteration."""
        proactor = self.loop.proactor
        turn = proactor.turn if proactor is not None else -1
        if turn != self._turn:
            self._turn, self._accepted_in_turn = turn, 0
        self._accepted_in_turn += 1
        if self._accepted_in_turn < self.pool_size or self.pool_size >= self.most:
            return
        grown = min(self.most, 2 * self.pool_size)
        for _ in range(grown - self.pool_size):
            self._post()
        self.pool_size = grown

    def _back_off(self, exc: OSError) -> None:
        """A slot could not accept for want of resources: re-arm it from the loop after the
        back-off (one timer for all the slots waiting); report the shortage once."""
        if self.stopped:
            return
        self.slots_waiting += 1
        if not self._short:
            self._short = True
            self.loop.call_exception_handler({
                "message": "Accept failed for want of system resources; the server goes on "
                           "accepting after a back-off",
                "exception": exc,
                "socket": trsock.TransportSocket(self.sock),
            })
        if self._timer is None:
            delay, self._backoff = self._backoff, min(2 * self._backoff, ACCEPT_BACKOFF_MAX)
            log.debug("%r: %d accept slots back off for %.2f s", self.sock,
                      self.slots_waiting, delay)
            self._timer = self.loop.call_later(delay, self._rearm)

    def _rearm(self) -> None:
        """The back-off is over: post the waiting slots again."""
        self._timer = None
        waiting, self.slots_waiting = self.slots_waiting, 0
        for _ in range(waiting):
            self._post()

    def _failed(self, exc: OSError) -> None:
        """The listener itself failed (a client's own failure never gets here: see
        ``IocpProactor.accept``): report it once and close the listener, as asyncio does."""
        if self.sock.fileno() != -1:
            self.loop.call_exception_handler({
                "message": "Accept failed on a socket",
                "exception": exc,
                "socket": trsock.TransportSocket(self.sock),
            })
            self.sock.close()
        elif self.loop.get_debug():
            log.debug("Accept failed on socket %r", self.sock, exc_info=True)
