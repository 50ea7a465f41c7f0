"""The socket transport's close, done in the order that loses no data (rules 3 and 4).

asyncio's proactor transport ends a connection with ``shutdown(SHUT_RDWR)`` and
``closesocket`` as soon as its own write buffer is empty. "Empty" means the last WSASend
completed, not that the peer has the bytes: they may still sit in the kernel's send buffer.
If anything arrived from the peer that nobody read (or arrives later: a peer still sending),
``closesocket`` resets the connection, and a reset discards what was still queued: the peer
loses the end of the response.

``SocketTransport`` keeps asyncio's timing for the protocol (``connection_lost`` is called
exactly when the stock transport calls it), then closes the socket the orderly way:
``shutdown(SD_SEND)`` (Windows sends what is queued, then a FIN), read and discard until the
peer's FIN, then ``closesocket``, bounded by a deadline (``EventLoop.close_timeout``, 5 s)
after which the socket is closed anyway. ``abort()`` and fatal errors still close at once.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from asyncio import proactor_events
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import EventLoop

#: Read size while draining a closing connection.
_DRAIN_BYTES = 65536
# asyncio.Server._detach takes the transport from 3.12 on (3.11.? too: ask, don't guess).
_DETACH_TAKES_TRANSPORT = len(inspect.signature(
    asyncio.base_events.Server._detach).parameters) > 1  # type: ignore[attr-defined]


# asyncio's transport is subclassed on purpose: its whole contract is kept, only the close
# differs.
class SocketTransport(proactor_events._ProactorSocketTransport):  # pyright: ignore[reportPrivateUsage]
    """asyncio's proactor socket transport, with an orderly close."""

    _abortive: bool = False
    #: Whether anything was written: with nothing of ours in flight, there is nothing an
    #: immediate close could lose, and it closes as the stock transport does.
    wrote: bool = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """As asyncio's ``write``; the close then waits for these bytes to be delivered."""
        if data:
            self.wrote = True
        super().write(data)

    def abort(self) -> None:
        """Close at once (the socket is reset), as the stock transport does."""
        self._abortive = True
        super().abort()

    def _force_close(self, exc: BaseException | None) -> None:
        if exc is not None:
            self._abortive = True  # a fatal error: nothing is left to deliver
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
            if sock is not None:
                loop = state._loop
                if exc is None and not self._abortive and self.wrote and sock.fileno() != -1 \
                        and hasattr(loop, "_close_orderly"):
                    loop._close_orderly(sock)
                else:
                    _close_at_once(sock)


def _close_at_once(sock: socket.socket) -> None:
    if sock.fileno() != -1:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    sock.close()


class OrderlyClose:
    """shutdown(SD_SEND), drain until the peer's FIN (or the deadline), then close."""

    def __init__(self, loop: EventLoop, sock: socket.socket, timeout: float) -> None:
        self.loop = loop
        self.sock: socket.socket | None = sock
        self.timer: asyncio.TimerHandle | None = None
        loop.closing_connections.add(self)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # already reset, or not connected: nothing to wait for
            self.finish()
            return
        self.timer = loop.call_later(timeout, self.finish)
        self.read()

    def read(self) -> None:
        """Post the next receive of the drain."""
        sock = self.sock
        if sock is None:
            return
        proactor = self.loop.proactor
        try:
            if proactor is None:
                raise RuntimeError("the loop is closed")
            future = proactor.recv(sock, _DRAIN_BYTES)
        except (OSError, RuntimeError):
            self.finish()
            return
        future.add_done_callback(self.step)

    def step(self, future: asyncio.Future[bytes]) -> None:
        """One drain receive ended: the peer's FIN, a failure, or more data to discard."""
        if future.cancelled() or future.exception() is not None or not future.result():
            self.finish()  # the peer's FIN (b""), a reset, or the loop is closing
        else:
            self.read()  # the peer is still sending: discard it, wait for its FIN

    def finish(self) -> None:
        """Close the socket now (idempotent); the deadline, the FIN or the loop's close."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.loop.closing_connections.discard(self)
        sock.close()
