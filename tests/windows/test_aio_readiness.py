"""Readiness on the loops: ``add_reader``/``add_writer`` on ``winiocp.aio.EventLoop`` (AFD polls
on the loop's own completion port) and ``winiocp.aio.SelectorEventLoop`` (asyncio's selector
loop on ``AfdSelector``).

The stock ``ProactorEventLoop`` has no ``add_reader`` at all, and the stock
``SelectorEventLoop``'s ``select()`` refuses more than 512 sockets: both are run here too, as
strict xfails, so each test shows what it guards against.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

import winiocp.aio
from winiocp.port import orphaned_operation_count

T = TypeVar("T")
WAIT = 30.0
STOCK_HAS_NO_ADD_READER = pytest.mark.xfail(
    strict=True, raises=NotImplementedError,
    reason="the stock ProactorEventLoop has no add_reader/add_writer")
PROACTOR_LOOPS = [
    pytest.param(asyncio.ProactorEventLoop, id="stock", marks=STOCK_HAS_NO_ADD_READER),
    pytest.param(winiocp.aio.new_event_loop, id="winiocp"),
]
ALL_LOOPS = [*PROACTOR_LOOPS, pytest.param(winiocp.aio.new_selector_event_loop, id="selector")]


def run(factory: Callable[[], asyncio.AbstractEventLoop],
        main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = factory()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        result = loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    finally:
        loop.close()
    assert errors == []
    return result


def settle(future: asyncio.Future[T], value: T = None) -> None:  # type: ignore[assignment]
    if not future.done():
        future.set_result(value)


def nonblocking_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


@pytest.mark.parametrize("factory", ALL_LOOPS)
def test_a_reader_is_called_while_its_socket_is_readable(
        factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def main() -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        a, b = nonblocking_pair()
        calls = 0
        enough = loop.create_future()

        def readable() -> None:  # leaves the data unread at first: level-triggered
            nonlocal calls
            calls += 1
            if calls == 3:
                enough.set_result(a.recv(100))

        try:
            loop.add_reader(a, readable)
            await asyncio.sleep(0.2)
            assert calls == 0  # nothing to read yet
            b.send(b"ready")
            data = await enough
            assert loop.remove_reader(a)
            assert not loop.remove_reader(a)
            b.send(b"more")
            await asyncio.sleep(0.2)
            return calls, data
        finally:
            a.close()
            b.close()

    assert run(factory, main) == (3, b"ready")


@pytest.mark.parametrize("factory", ALL_LOOPS)
def test_a_writer_is_called_when_its_socket_can_send(
        factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        a, b = nonblocking_pair()
        sent = 0
        try:
            while True:  # fill the send buffer: the socket stops being writable
                try:
                    sent += a.send(bytes(65536))
                except BlockingIOError:
                    break
            writable = loop.create_future()
            loop.add_writer(a.fileno(), settle, writable)
            await asyncio.sleep(0.2)
            assert not writable.done()
            received = 0
            while received < sent:  # the peer reads: room again
                try:
                    received += len(b.recv(1 << 20))
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            await writable
            assert loop.remove_writer(a.fileno())
            return received
        finally:
            a.close()
            b.close()

    assert run(factory, main) > 0


@pytest.mark.parametrize("factory", PROACTOR_LOOPS)
def test_readers_and_completions_share_the_loop(
        factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """A reader on one socket, sock_recv (a completion) on another, and a stream server:
    one loop, one port, all served."""
    async def main() -> tuple[bytes, bytes, bytes]:
        loop = asyncio.get_running_loop()
        a, b = nonblocking_pair()
        c, d = nonblocking_pair()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        try:
            got = loop.create_future()
            loop.add_reader(a, lambda: settle(got, a.recv(100)))
            receive = loop.create_task(loop.sock_recv(c, 100))
            reader, writer = await asyncio.open_connection(
                *server.sockets[0].getsockname()[:2])
            writer.write(b"stream")
            b.send(b"readiness")
            d.send(b"completion")
            echoed = await reader.read(100)
            writer.close()
            result = (await got, await receive, echoed)
            loop.remove_reader(a)
            return result
        finally:
            server.close()
            await server.wait_closed()
            for s in (a, b, c, d):
                s.close()

    assert run(factory, main) == (b"readiness", b"completion", b"stream")


@pytest.mark.parametrize("factory", ALL_LOOPS)
def test_a_removed_reader_is_never_called_for_the_socket_that_reuses_its_value(
        factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        calls: list[str] = []
        a, b = nonblocking_pair()
        loop.add_reader(a, calls.append, "old")
        await asyncio.sleep(0.05)  # its poll is in flight
        b.send(b"x")
        time.sleep(0.2)  # (the loop does not run) the old poll completes ...
        loop.remove_reader(a)  # ... but the reader is gone before the loop sees it
        old_value = a.fileno()
        a.close()
        b.close()
        news = [nonblocking_pair() for _ in range(4)]  # Windows may reuse the old values
        assert old_value  # (for the reader of a failure)
        new_sockets = [s for pair in news for s in pair]
        try:
            for c in new_sockets:
                loop.add_reader(c, calls.append, "new")
            await asyncio.sleep(0.3)
            assert calls == []
            news[0][1].send(b"y")
            while not calls:
                await asyncio.sleep(0.01)
            for c in new_sockets:
                loop.remove_reader(c)
            return calls[:1]
        finally:
            for c, d in news:
                c.close()
                d.close()

    assert run(factory, main) == ["new"]


def test_closing_the_loop_with_readers_waiting_leaves_no_poll_behind() -> None:
    """The loop's close cancels the polls and waits for their completions: no memory is left
    to the orphan list, and the driver handles are closed."""
    before = orphaned_operation_count()
    pairs = [nonblocking_pair() for _ in range(100)]

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for a, _ in pairs:
            loop.add_reader(a, lambda: None)
            loop.add_writer(a, lambda: None)
            loop.remove_writer(a)
        await asyncio.sleep(0.2)
        proactor = getattr(loop, "proactor")
        return int(proactor.polls.__len__())

    try:
        assert run(winiocp.aio.new_event_loop, main) == 100
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    gc.collect()
    assert orphaned_operation_count() == before


def test_add_reader_on_a_closed_loop_or_a_bad_file_object_raises() -> None:
    loop = winiocp.aio.new_event_loop()
    with pytest.raises(ValueError):
        loop.add_reader("not a socket", print)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        loop.add_reader(-1, print)
    loop.close()
    with pytest.raises(RuntimeError):
        loop.add_reader(1, print)
    assert not loop.remove_reader(1)


def _many_clients(count: int) -> Callable[[], Coroutine[Any, Any, int]]:
    async def main() -> int:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(8))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=count)
        address = server.sockets[0].getsockname()[:2]
        connections = [await asyncio.open_connection(*address) for _ in range(count)]
        try:
            for index, (_, writer) in enumerate(connections):  # all open at once
                writer.write(b"%08d" % index)
            answers = [await reader.readexactly(8) for reader, _ in connections]
            return sum(answer == b"%08d" % index for index, answer in enumerate(answers))
        finally:
            for _, writer in connections:
                writer.close()
            server.close()
            await server.wait_closed()
    return main


@pytest.mark.parametrize("factory", [
    pytest.param(asyncio.SelectorEventLoop, id="stock", marks=[
        pytest.mark.xfail(strict=True, raises=ValueError,
                          reason="the stock selector loop's select() refuses more than 512 "
                                 "sockets"),
        # (its transports, abandoned when select() raised, are collected with the loop closed)
        pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]),
    pytest.param(winiocp.aio.new_selector_event_loop, id="winiocp"),
])
def test_the_selector_loop_serves_600_connections_at_once(
        factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    assert run(factory, _many_clients(600)) == 600


def test_run_takes_the_selector_loop_by_name() -> None:
    async def kind() -> str:
        return type(asyncio.get_running_loop()).__name__

    assert winiocp.aio.run(kind(), loop="selector") == "SelectorEventLoop"
    assert winiocp.aio.run(kind()) == "EventLoop"
    coroutine = kind()
    with pytest.raises(ValueError):
        winiocp.aio.run(coroutine, loop="threads")  # type: ignore[arg-type]
    coroutine.close()


@pytest.mark.parametrize("factory", [
    pytest.param(asyncio.SelectorEventLoop, id="stock", marks=pytest.mark.xfail(
        strict=True, raises=(NotImplementedError, OSError),
        reason="the stock selector loop cannot run subprocesses on Windows (its select() is "
               "handed the child's pipes, which are no sockets: WSAENOTSOCK)")),
    pytest.param(winiocp.aio.new_selector_event_loop, id="winiocp"),
])
def test_the_selector_loop_runs_subprocesses_beside_its_readers(
        factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """The selector loop's proactor side (same port) serves the child's pipes and its exit,
    while a reader on a socket is served by the selector side."""
    async def main() -> tuple[bytes, int, bytes]:
        loop = asyncio.get_running_loop()
        a, b = nonblocking_pair()
        try:
            got = loop.create_future()
            loop.add_reader(a, lambda: settle(got, a.recv(100)))
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            b.send(b"socket")
            out, _ = await child.communicate(b"pipe " * 20000)
            loop.remove_reader(a)
            return out, child.returncode or 0, await got
        finally:
            a.close()
            b.close()

    assert run(factory, main) == (b"PIPE " * 20000, 0, b"socket")
