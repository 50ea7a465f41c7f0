"""Serving goes on through shortages and through clients that went away: a listener whose
accept sockets cannot be made for a while (WSAEMFILE: descriptors exhausted) backs off and
accepts again, reporting the shortage once; an accept whose AcceptEx keeps failing at once
(clients that reset in the backlog) goes on after a back-off instead of failing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

import winiocp.aio
import winiocp.aio.serving
from winiocp.sockets import Socket

LOOPBACK = "127.0.0.1"
WAIT = 30.0
WSAEMFILE = 10024
WSAECONNRESET = 10054
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stock": asyncio.ProactorEventLoop,
    "winiocp": winiocp.aio.new_event_loop,
}
STOCK_CLOSES_ITS_LISTENER = pytest.mark.xfail(
    strict=True, reason="the stock loop closes its listening socket on the first failed "
    "accept, a shortage included, and refuses every client after it")


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def failing_first(count: int, make: Callable[[int], socket.socket]
                  ) -> tuple[Callable[[int], socket.socket], list[int]]:
    """An accept-socket factory whose first ``count`` calls fail with WSAEMFILE (as
    ``socket.socket()`` does when descriptors are exhausted); then ``make``'s sockets."""
    calls = [0]

    def factory(family: int) -> socket.socket:
        calls[0] += 1
        if calls[0] <= count:
            raise OSError(None, "Too many open sockets", None, WSAEMFILE)
        return make(family)
    return factory, calls


async def echo_once(host: str, port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        return await reader.readexactly(len(payload))
    finally:
        writer.close()


@pytest.mark.parametrize("loop_name", [pytest.param("stock", marks=STOCK_CLOSES_ITS_LISTENER),
                                       "winiocp"])
def test_server_accepts_again_after_accept_sockets_ran_short(loop_name: str) -> None:
    """The first 40 accept sockets cannot be made (more than the accepts kept pending): the
    server backs off, then serves every client; the shortage is reported once."""
    loop = LOOPS[loop_name]()
    reports: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    proactor: Any = getattr(loop, "_proactor")
    factory, calls = failing_first(40, proactor._get_accept_socket)
    proactor._get_accept_socket = factory

    async def main() -> None:
        server = await loop.create_server(Echo, LOOPBACK, 0)
        host, port = server.sockets[0].getsockname()[:2]
        for index in range(5):
            payload = b"client %d" % index
            assert await asyncio.wait_for(echo_once(host, port, payload), WAIT) == payload
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), WAIT * 2))
    finally:
        loop.close()
    assert calls[0] > 40
    assert [context["exception"].winerror for context in reports] == [WSAEMFILE]


def test_server_shortage_backs_off_and_a_stopped_server_stops_retrying(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While accept sockets cannot be made, the slots wait out a back-off (one timer for
    all; no slot is retried at once); closing the server ends the waiting."""
    monkeypatch.setattr(winiocp.aio.serving, "ACCEPT_BACKOFF", 3600.0)
    loop = winiocp.aio.new_event_loop()
    loop.set_exception_handler(lambda _loop, context: None)
    proactor: Any = loop.proactor
    factory, calls = failing_first(10**9, proactor._get_accept_socket)
    proactor._get_accept_socket = factory

    async def main() -> None:
        server = await loop.create_server(Echo, LOOPBACK, 0)
        listener = next(iter(loop.listeners.values()))
        while listener.slots_waiting < listener.pool_size:
            await asyncio.sleep(0.01)
        for _ in range(10):
            await asyncio.sleep(0)
        assert calls[0] == listener.pool_size  # each slot tried once, then waits
        assert listener.slots_waiting == listener.pool_size and not listener.accepts
        assert listener._timer is not None  # pyright: ignore[reportPrivateUsage]
        server.close()
        await server.wait_closed()
        assert listener.slots_waiting == 0
        assert listener._timer is None  # pyright: ignore[reportPrivateUsage]

    try:
        loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    finally:
        loop.close()


def test_sock_accept_goes_on_after_many_clients_failed_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """70 AcceptEx in a row fail at once as for clients that reset in the backlog (more than
    are retried at once): the accept backs off and goes on, and the next client is accepted;
    it never fails for clients that are gone."""
    failures = [0]
    accept = Socket.accept

    def flaky_accept(self: Socket, *args: Any, **kwargs: Any) -> Any:
        if failures[0] < 70:
            failures[0] += 1
            raise OSError(None, "An existing connection was forcibly closed", None,
                          WSAECONNRESET)
        return accept(self, *args, **kwargs)

    monkeypatch.setattr(Socket, "accept", flaky_accept)
    loop = winiocp.aio.new_event_loop()

    async def main() -> None:
        with socket.create_server((LOOPBACK, 0)) as listener:
            listener.setblocking(False)
            accepting = asyncio.ensure_future(loop.sock_accept(listener))
            client = socket.socket()
            client.setblocking(False)
            with client:
                await loop.sock_connect(client, listener.getsockname())
                conn, address = await asyncio.wait_for(accepting, WAIT)
                with conn:
                    assert address == client.getsockname()
        assert failures[0] == 70

    try:
        loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    finally:
        loop.close()


def test_cancelling_sock_accept_during_a_back_off_ends_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [0]

    def failing_accept(self: Socket, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        raise OSError(None, "An existing connection was forcibly closed", None, WSAECONNRESET)

    monkeypatch.setattr(Socket, "accept", failing_accept)
    loop = winiocp.aio.new_event_loop()

    async def main() -> None:
        with socket.create_server((LOOPBACK, 0)) as listener:
            listener.setblocking(False)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(loop.sock_accept(listener), 0.2)
            made = calls[0]
            await asyncio.sleep(0.3)
            assert calls[0] == made  # no retry after the cancellation

    try:
        loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    finally:
        loop.close()
