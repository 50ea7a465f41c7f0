"""``winiocp.aio``: the loop does what the stock Windows loop does, on winiocp.

CPython's own test_asyncio is the broad proof (tools/asyncio_suite.py); these tests pin down the
entry points (run, install, loop_factory, rebinding the proactor), the paths every server uses
(TCP v4/v6, UDP, pipes, subprocesses, sendfile, SSL-free streams) and the waits on handles,
1,000 at once, with a trace that our proactor served them.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

import winiocp.aio
from winiocp.aio import EventLoop, IocpProactor
from winiocp.waits import pending_wait_count

T = TypeVar("T")
WAIT = 30.0
_kernel32 = ctypes.WinDLL("kernel32")
_kernel32.CreateEventW.restype = ctypes.c_void_p
_kernel32.SetEvent.argtypes = _kernel32.CloseHandle.argtypes = [ctypes.c_void_p]


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), WAIT)
    return winiocp.aio.run(bounded())


async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write((await reader.read(1000)).upper())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def test_run_uses_our_loop_and_proactor() -> None:
    async def main() -> tuple[type, type]:
        loop = asyncio.get_running_loop()
        return type(loop), type(loop._proactor)  # type: ignore[attr-defined]
    assert run(main) == (EventLoop, IocpProactor)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="loop_factory is new in 3.12")
def test_asyncio_run_with_our_loop_factory() -> None:
    async def main() -> bool:
        return isinstance(asyncio.get_running_loop(), EventLoop)
    assert asyncio.run(main(), loop_factory=winiocp.aio.new_event_loop)  # type: ignore[call-arg]


def test_install_makes_new_loops_ours() -> None:
    old = asyncio.get_event_loop_policy()
    try:
        winiocp.aio.install()
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, EventLoop)
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(old)


def test_rebinding_the_proactor_makes_every_proactor_loop_ours(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio.windows_events, "IocpProactor", IocpProactor)
    loop = asyncio.ProactorEventLoop()
    try:
        assert isinstance(loop._proactor, IocpProactor)  # type: ignore[attr-defined]
        reader_writer = loop.run_until_complete(_tcp_exchange("127.0.0.1"))
        assert reader_writer == b"HELLO"
    finally:
        loop.close()


async def _tcp_exchange(host: str) -> bytes:
    server = await asyncio.start_server(echo_once, host, 0)
    address = server.sockets[0].getsockname()
    reader, writer = await asyncio.open_connection(host, address[1])
    writer.write(b"hello")
    answer = await reader.read(100)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return answer


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tcp_streams(host: str) -> None:
    assert run(lambda: _tcp_exchange(host)) == b"HELLO"


def test_udp_endpoints() -> None:
    async def main() -> tuple[bytes, bool]:
        loop = asyncio.get_running_loop()
        received: asyncio.Future[tuple[bytes, tuple[str, int]]] = loop.create_future()

        class Receiver(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if not received.done():
                    received.set_result((data, addr))

        server, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
        client, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=server.get_extra_info("sockname"))
        client.sendto(b"datagram")
        data, addr = await received
        same = addr == client.get_extra_info("sockname")
        client.close()
        server.close()
        return data, same
    assert run(main) == (b"datagram", True)


def test_sock_methods_and_sendfile() -> None:
    payload = os.urandom(300_000)
    with tempfile.NamedTemporaryFile(delete=False) as file:
        file.write(payload)
    try:
        async def main() -> bytes:
            loop = asyncio.get_running_loop()
            listener = socket.create_server(("127.0.0.1", 0))
            listener.setblocking(False)
            client = socket.socket()
            client.setblocking(False)
            await loop.sock_connect(client, listener.getsockname())
            conn, _ = await loop.sock_accept(listener)
            with open(file.name, "rb") as source:
                sent = await loop.sock_sendfile(conn, source)
            assert sent == len(payload)
            conn.close()
            got = bytearray()
            while True:
                chunk = await loop.sock_recv(client, 65536)
                if not chunk:
                    break
                got += chunk
            client.close()
            listener.close()
            return bytes(got)
        assert run(main) == payload
    finally:
        os.unlink(file.name)


def test_named_pipes() -> None:
    address = rf"\\.\pipe\winiocp-aio-{os.getpid()}"

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()

        class Upper(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                assert isinstance(self.transport, asyncio.WriteTransport)
                self.transport.write(data.upper())

        class Client(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                done.set_result(data)

        [server] = await loop.start_serving_pipe(Upper, address)  # type: ignore[attr-defined]
        transport, _ = await loop.create_pipe_connection(Client, address)  # type: ignore[attr-defined]
        transport.write(b"through a pipe")
        answer = await done
        transport.close()
        server.close()
        return answer
    assert run(main) == b"THROUGH A PIPE"


def test_subprocess_with_pipes() -> None:
    async def main() -> tuple[bytes, int]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await process.communicate(b"from a child")
        assert process.returncode is not None
        return out, process.returncode
    assert run(main) == (b"FROM A CHILD", 0)


def test_a_thousand_handle_waits_at_once() -> None:
    """1,000 waits on the thread pool (no thread of ours per handle): all complete when their
    events are set, time-outs say False, cancelled waits leave nothing registered."""
    events: list[int] = [_kernel32.CreateEventW(None, True, False, None) for _ in range(1000)]
    try:
        async def main() -> list[bool]:
            loop = asyncio.get_running_loop()
            proactor: IocpProactor = loop._proactor  # type: ignore[attr-defined]
            waits = [proactor.wait_for_handle(event) for event in events]
            timed = proactor.wait_for_handle(events[0], 0.1)
            cancelled = proactor.wait_for_handle(events[1])
            cancelled.cancel()
            assert await timed is False
            for event in events:
                _kernel32.SetEvent(event)
            results = await asyncio.gather(*waits)
            assert cancelled.cancelled()
            return results
        assert run(main) == [True] * 1000
        assert pending_wait_count() == 0
    finally:
        for event in events:
            _kernel32.CloseHandle(event)


def test_call_soon_threadsafe_wakes_the_loop() -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[str] = loop.create_future()
        loop.run_in_executor(None, lambda: loop.call_soon_threadsafe(woken.set_result, "woken"))
        return await woken
    assert run(main) == "woken"


def test_closing_the_loop_with_io_pending_is_safe() -> None:
    loop = winiocp.aio.new_event_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    accepting = loop.create_task(loop.sock_accept(listener))
    loop.run_until_complete(asyncio.sleep(0.05))
    proactor: IocpProactor = loop._proactor  # type: ignore[attr-defined]
    assert proactor._port is not None and proactor._port.pending_count >= 1
    accepting.cancel()
    loop.run_until_complete(asyncio.gather(accepting, return_exceptions=True))
    loop.close()
    assert proactor._port is None
    listener.close()



def test_a_failed_operation_leaves_no_cycle_holding_its_exception() -> None:
    """CPython 3.13's test_open_connection_happy_eyeball_refcycles, on every version: the
    exception of a failed connect must not be kept alive by the future it failed. Its traceback ran
    through the completion's frames, which hold the future, which holds the exception: only
    the cycle collector would free them (it is off here, so a cycle shows)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the connect is refused

    async def main() -> list[str]:
        refused: OSError | None = None
        try:  # happy eyeballs: the connect runs in a task of its own, which has ended here
            await asyncio.open_connection("127.0.0.1", port, happy_eyeballs_delay=0.25)
        except OSError as exc:
            refused = exc
        assert refused is not None, "the connect was not refused"
        # Older versions' create_connection keeps lists of its errors (3.13 clears them):
        # not ours. A future holding the exception is.
        return [repr(holder) for holder in gc.get_referrers(refused)
                if isinstance(holder, asyncio.Future)]

    gc.disable()
    try:
        assert run(main) == []
    finally:
        gc.enable()

@pytest.mark.parametrize("timeout", [-0.001, 4294967.295, float("inf")])
def test_select_refuses_a_timeout_windows_cannot_wait(timeout: float) -> None:
    """As the stock proactor: a negative timeout, or one of INFINITE milliseconds or more (it
    would wait for ever), is a ValueError."""
    proactor = IocpProactor()
    try:
        with pytest.raises(ValueError):
            proactor.select(timeout)
    finally:
        proactor.close()


def test_select_accepts_the_longest_finite_timeout() -> None:
    proactor = IocpProactor()
    try:
        proactor.wake()  # a packet is waiting, so even the longest wait returns at once
        assert proactor.select(4294967.294) == []
    finally:
        proactor.close()


def test_work_deferred_to_the_end_of_a_turn_survives_an_interrupt_in_one_of_them() -> None:
    # A transport's held-back writes wait in call_before_wait: losing one to another's
    # interrupt would leave that transport queueing for ever.
    proactor = IocpProactor()
    ran: list[str] = []

    def interrupted() -> None:
        ran.append("interrupted")
        raise KeyboardInterrupt

    try:
        for callback in (lambda: ran.append("first"), interrupted, lambda: ran.append("last")):
            proactor.call_before_wait(callback)
        turn = proactor.turn
        with pytest.raises(KeyboardInterrupt):
            proactor.select(0)
        assert ran == ["first", "interrupted"] and proactor.turn == turn + 1
        assert proactor.select(0) == []
        assert ran == ["first", "interrupted", "last"]  # on the next select, once
        proactor.select(0)
        assert ran == ["first", "interrupted", "last"]
    finally:
        proactor.close()
