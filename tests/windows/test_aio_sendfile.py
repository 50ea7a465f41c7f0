"""``loop.sendfile()`` (TransmitFile) never waits forever: a peer that resets, cancelling
it, closing the connection under it and closing the loop each end it, and the TransmitFile's
memory stays owned by the port until its completion is dequeued.

Windows documents that TransmitFile "completes when it has sent the specified number of
bytes, or when an error occurs" (Microsoft Learn, TransmitFile function), and that closing a
socket cancels its pending overlapped operations (closesocket). Wine does neither in two
cases: a TransmitFile to a peer that closed and then reset the connection is left pending,
and so is one whose socket is closed under it while the peer is connected. The stock loop's
sendfile then waits for ever; ours looks at the connection under a pending sendfile
(``proactor._TransmitWatch``) and ends it. A pending
TransmitFile cancelled (CancelIoEx) while its socket is open does complete under Wine.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from support import wine_deviation

import winiocp.aio
from winiocp.operations import OpKind
from winiocp.port import orphaned_operation_count

LOOPBACK = "127.0.0.1"
WAIT = 15.0
#: How long a sendfile whose connection is gone may take to end (milliseconds on Windows).
END_WAIT = 10.0
SIZE = 16 << 20  # far more than the socket buffers hold: the TransmitFile stays pending
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stock": asyncio.ProactorEventLoop,
    "winiocp": winiocp.aio.new_event_loop,
}
WINE_KEEPS_A_CLOSED_SOCKET_TRANSMIT_FILE = wine_deviation(
    "closing a socket does not end its pending TransmitFile while the peer is connected")


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sendfile") / "big.bin"
    block = os.urandom(1 << 20)
    with open(path, "wb") as file:
        for _ in range(SIZE >> 20):
            file.write(block)
    return path


class Served(asyncio.Protocol):
    """The server side: starts a sendfile when the client's request comes."""

    def __init__(self, path: Path, tasks: list[asyncio.Task[int]]) -> None:
        self.path = path
        self.tasks = tasks
        self.lost: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.tasks or self.tasks[-1].get_name() != repr(self):
            file = open(self.path, "rb")  # noqa: SIM115 - closed by the task's callback
            task = asyncio.ensure_future(
                asyncio.get_running_loop().sendfile(self.transport, file))
            task.set_name(repr(self))
            task.add_done_callback(lambda _: file.close())
            self.tasks.append(task)

    def eof_received(self) -> bool:
        return True  # keep sending: the client may read the response after its FIN

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def serve(path: Path, clients: int, *, close_at_once: bool
                ) -> tuple[list[Served], list[asyncio.Task[int]], list[socket.socket]]:
    """``clients`` connections that each send a request; the server sendfiles ``path`` on
    each. With ``close_at_once`` the client closes right after its request (a FIN; its
    kernel resets the connection when the response comes); otherwise it stays connected and
    reads nothing (its sendfile stays pending)."""
    loop = asyncio.get_running_loop()
    served: list[Served] = []
    tasks: list[asyncio.Task[int]] = []

    def make() -> Served:
        served.append(Served(path, tasks))
        return served[-1]

    server = await loop.create_server(make, LOOPBACK, 0)
    address = server.sockets[0].getsockname()[:2]
    open_clients: list[socket.socket] = []
    for _ in range(clients):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        client.setblocking(False)
        await loop.sock_connect(client, address)
        await loop.sock_sendall(client, b"GET /big.bin HTTP/1.1\r\n\r\n")
        if close_at_once:
            client.close()
        else:
            open_clients.append(client)
    while len(tasks) < clients:
        await asyncio.sleep(0.01)
    server.close()
    return served, tasks, open_clients


def transmits_pending(loop: asyncio.AbstractEventLoop) -> int:
    """TransmitFile operations of our loop's port whose completions are not dequeued."""
    proactor: Any = getattr(loop, "_proactor")
    port = proactor._port
    return sum(1 for operation in port.pending_operations()
               if operation.kind is OpKind.TRANSMIT_FILE)


async def until_no_transmit_pending(loop: asyncio.AbstractEventLoop) -> None:
    while transmits_pending(loop):
        await asyncio.sleep(0.02)


def run(loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, None]) -> None:
    try:
        loop.run_until_complete(asyncio.wait_for(main, WAIT * 3))
    finally:
        loop.close()


async def outcome(task: asyncio.Task[int]) -> str:
    """How ``task`` ended within ``WAIT`` (the task is left running if it did not)."""
    try:
        await asyncio.wait_for(asyncio.shield(task), END_WAIT)
    except asyncio.TimeoutError:
        return "still pending"
    except asyncio.CancelledError:
        return "cancelled"
    except ConnectionError:
        return "connection error"
    return "completed"


async def cancel_all(tasks: list[asyncio.Task[int]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_sendfile_to_a_peer_that_reset_fails(big_file: Path) -> None:
    """Clients send a request and close at once: their kernels reset the connections when
    the responses come, and each sendfile ends with a connection error; the TransmitFiles
    complete, and closing the transports brings ``connection_lost``.

    Ours only: under Wine the stock loop's sendfile waits for ever on some of them (one to
    all five, from run to run), and its loop's close then never returns."""
    loop = winiocp.aio.new_event_loop()

    async def main() -> None:
        served, tasks, _ = await serve(big_file, 5, close_at_once=True)
        try:
            outcomes = list(await asyncio.gather(*(outcome(task) for task in tasks)))
        finally:
            await cancel_all(tasks)  # (ends the ones Wine keeps: see the module)
        assert outcomes == ["connection error"] * len(tasks)
        await asyncio.wait_for(until_no_transmit_pending(loop), WAIT)
        for protocol in served:
            protocol.transport.close()
        await asyncio.wait_for(asyncio.gather(*(protocol.lost for protocol in served)), WAIT)

    run(loop, main())


@pytest.mark.parametrize("close_at_once", [False, True], ids=["stalled", "reset"])
def test_cancelling_sendfile_ends_its_transmit_file(big_file: Path,
                                                   close_at_once: bool) -> None:
    """Cancelling the sendfile task cancels the TransmitFile, whose completion then comes:
    for a peer that stopped reading, and for one that reset (where Wine keeps it pending
    until then)."""
    loop = winiocp.aio.new_event_loop()

    async def main() -> None:
        served, tasks, clients = await serve(big_file, 3, close_at_once=close_at_once)
        await asyncio.sleep(0.2)
        await cancel_all(tasks)
        assert all(task.cancelled() or task.exception() is not None for task in tasks)
        await asyncio.wait_for(until_no_transmit_pending(loop), WAIT)
        for protocol in served:
            protocol.transport.abort()
        for client in clients:
            client.close()

    run(loop, main())


@pytest.mark.parametrize("close_at_once", [False, True], ids=["stalled", "reset"])
def test_closing_the_loop_ends_a_pending_sendfile(big_file: Path, close_at_once: bool) -> None:
    """A loop closed with sendfiles pending cancels their TransmitFiles and gets their
    completions: nothing is left to the port's orphans (memory kept for good)."""
    loop = winiocp.aio.new_event_loop()
    orphans = orphaned_operation_count()
    clients: list[socket.socket] = []
    tasks: list[asyncio.Task[int]] = []

    async def main() -> None:
        _, started, open_clients = await serve(big_file, 3, close_at_once=close_at_once)
        tasks.extend(started)
        clients.extend(open_clients)
        await asyncio.sleep(0.2)
        if not close_at_once:  # (those to a reset peer end with an error, except on Wine)
            assert transmits_pending(loop) == 3

    try:
        loop.run_until_complete(asyncio.wait_for(main(), WAIT * 3))
    finally:
        loop.close()
        for client in clients:
            client.close()
        for task in tasks:  # never resumed now that the loop is closed: end them here
            try:
                task.get_coro().close()
            except RuntimeError:  # their cleanup asks the closed loop for something
                pass
    assert orphaned_operation_count() == orphans


def test_connection_closing_fails_the_pending_sendfile(big_file: Path) -> None:
    """``IocpProactor.connection_closing(sock)`` (what a transport calls before it closes
    its socket) fails a sendfile pending on it at once, with ConnectionResetError as when
    closesocket aborts it on Windows, and cancels its TransmitFile while the socket is
    still open, so its completion comes."""
    loop = winiocp.aio.new_event_loop()

    async def main() -> None:
        served, tasks, clients = await serve(big_file, 1, close_at_once=False)
        await asyncio.sleep(0.2)
        proactor = loop.proactor
        assert proactor is not None
        sock = served[0].transport.get_extra_info("socket")
        proactor.connection_closing(getattr(sock, "_sock", sock))
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(tasks[0], WAIT)
        await asyncio.wait_for(until_no_transmit_pending(loop), WAIT)
        served[0].transport.abort()
        await asyncio.wait_for(served[0].lost, WAIT)
        for client in clients:
            client.close()

    run(loop, main())


@pytest.mark.parametrize("loop_name", [
    pytest.param("stock", marks=WINE_KEEPS_A_CLOSED_SOCKET_TRANSMIT_FILE), "winiocp"])
def test_aborting_the_transport_ends_a_pending_sendfile(loop_name: str,
                                                       big_file: Path) -> None:
    """``transport.abort()`` during a sendfile: the sendfile fails with a connection
    error and ``connection_lost`` comes."""
    loop = LOOPS[loop_name]()

    async def main() -> None:
        served, tasks, clients = await serve(big_file, 1, close_at_once=False)
        await asyncio.sleep(0.2)
        served[0].transport.abort()
        try:
            result = await outcome(tasks[0])
            await asyncio.wait_for(served[0].lost, WAIT)
            if loop_name == "winiocp":  # its TransmitFile was ended, and its packet came
                await asyncio.wait_for(until_no_transmit_pending(loop), WAIT)
        finally:
            await cancel_all(tasks)
            for client in clients:
                client.close()
        assert result == "connection error"

    run(loop, main())
