"""winiocp.aio's datagram transport (``winiocp/aio/datagram.py``): exact flow control, a close
that sends what is queued, and asyncio's datagram contract. Each test runs the stock loop too.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

import pytest

import winiocp.aio
from winiocp.aio.datagram import DatagramTransport

LOOPBACK = "127.0.0.1"
WAIT = 30.0
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stock": asyncio.ProactorEventLoop,
    "winiocp": winiocp.aio.new_event_loop,
}
#: CPython 3.13.0 to 3.13.5 count a queued datagram 8 bytes more than sending it takes
#: back off (CPython gh-135444, fixed in 3.13.6).
STOCK_NEVER_RESUMES = (3, 13) <= sys.version_info < (3, 13, 6)


class FlowControlled(Protocol):
    """A datagram transport with asyncio's flow control (typeshed's lacks it)."""

    def sendto(self, data: bytes, addr: Any = None) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def set_write_buffer_limits(self, high: int | None = None,
                                low: int | None = None) -> None: ...

    def get_write_buffer_size(self) -> int: ...


def run(loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, Any]) -> Any:
    try:
        return loop.run_until_complete(asyncio.wait_for(main, WAIT))
    finally:
        loop.close()


def loops(*, stock_fails: bool = False, reason: str = "") -> pytest.MarkDecorator:
    """Parametrize over both loops; ``stock_fails``: the stock case is a strict xfail."""
    stock: Any = "stock"
    if stock_fails:
        stock = pytest.param("stock", marks=pytest.mark.xfail(strict=True, reason=reason))
    return pytest.mark.parametrize("name", [stock, "winiocp"])


class Recording(asyncio.DatagramProtocol):
    """Records what the transport tells it."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.errors: list[OSError] = []
        self.received: list[bytes] = []
        self.lost: asyncio.Future[Exception | None] = (
            asyncio.get_running_loop().create_future())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.append(data)

    def error_received(self, exc: Exception) -> None:
        assert isinstance(exc, OSError)
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


def receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(WAIT)
    return sock


async def receive(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` datagrams from ``sock``, read off the loop."""
    def read() -> list[bytes]:
        return [sock.recv(65536) for _ in range(count)]

    return await asyncio.get_running_loop().run_in_executor(None, read)


async def until(condition: Callable[[], bool], turns: int = 300) -> bool:
    """Whether ``condition`` holds within ``turns`` short sleeps (a bounded wait)."""
    for _ in range(turns):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


async def endpoint(connected: bool, target: socket.socket
                   ) -> tuple[FlowControlled, Recording]:
    loop = asyncio.get_running_loop()
    if connected:
        transport, protocol = await loop.create_datagram_endpoint(
            Recording, remote_addr=target.getsockname())
    else:
        transport, protocol = await loop.create_datagram_endpoint(
            Recording, local_addr=(LOOPBACK, 0))
    return cast(FlowControlled, transport), protocol


@loops(stock_fails=STOCK_NEVER_RESUMES,
       reason="CPython gh-135444: the write buffer size never returns to 0")
@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
def test_a_high_water_mark_of_zero_pauses_and_resumes_writing(name: str,
                                                               connected: bool) -> None:
    # anyio sets a high-water mark of 0: each sendto waits until the datagram is sent.
    async def main() -> tuple[list[bytes], list[str], int]:
        with receiver() as target:
            transport, protocol = await endpoint(connected, target)
            transport.set_write_buffer_limits(high=0)
            address = None if connected else target.getsockname()
            for index in range(5):
                transport.sendto(b"datagram %d" % index, address)
            received = await receive(target, 5)
            await until(lambda: transport.get_write_buffer_size() == 0
                        and protocol.events[-1:] == ["resume"])
            size = transport.get_write_buffer_size()
            transport.close()
            await protocol.lost
            return received, protocol.events, size

    received, events, size = run(LOOPS[name](), main())
    assert received == [b"datagram %d" % index for index in range(5)]
    assert events[:1] == ["pause"] and events[-1:] == ["resume"], events
    assert size == 0


@loops(stock_fails=True, reason="CPython gh-156920: asyncio's proactor datagram transport "
       "stops writing once closing: what was queued is never sent, connection_lost never comes")
@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
def test_close_sends_what_is_queued_then_calls_connection_lost(name: str,
                                                               connected: bool) -> None:
    async def main() -> tuple[list[bytes], Exception | None, int]:
        with receiver() as target:
            transport, protocol = await endpoint(connected, target)
            sock = transport.get_extra_info("socket")
            address = None if connected else target.getsockname()
            for index in range(3):
                transport.sendto(b"queued %d" % index, address)
            transport.close()
            exc = await asyncio.wait_for(protocol.lost, 5)
            received = await receive(target, 3)
            return received, exc, sock.fileno()

    received, exc, fileno = run(LOOPS[name](), main())
    assert received == [b"queued %d" % index for index in range(3)]
    assert exc is None and fileno == -1  # the socket is closed


@loops(stock_fails=True, reason="asyncio queues a datagram sent after the close of an "
       "unconnected transport, for good (or raises AttributeError once aborted)")
@pytest.mark.parametrize("how", ["close", "abort"])
def test_sendto_after_the_end_is_dropped(name: str, how: str) -> None:
    async def main() -> tuple[int, Exception | None]:
        with receiver() as target:
            transport, protocol = await endpoint(False, target)
            getattr(transport, how)()
            for _ in range(3):
                transport.sendto(b"late", target.getsockname())
            size = transport.get_write_buffer_size()
            exc = await asyncio.wait_for(protocol.lost, 5)
            return size, exc

    size, exc = run(LOOPS[name](), main())
    assert size == 0 and exc is None


@loops()
def test_a_failed_sendto_is_error_received_and_the_next_ones_still_go(name: str) -> None:
    async def main() -> tuple[list[bytes], list[OSError]]:
        with receiver() as target:
            transport, protocol = await endpoint(False, target)
            transport.sendto(b"first", target.getsockname())
            transport.sendto(b"x" * 70000, target.getsockname())  # larger than UDP allows
            await until(lambda: bool(protocol.errors))
            transport.sendto(b"after", target.getsockname())
            received = await receive(target, 2)
            transport.close()
            await protocol.lost
            return received, protocol.errors

    received, errors = run(LOOPS[name](), main())
    assert received == [b"first", b"after"]
    assert len(errors) == 1 and isinstance(errors[0], OSError)


@loops(stock_fails=True, reason="CPython gh-156698: a failed send leaves a paused protocol "
       "paused for good")
def test_a_paused_protocol_is_resumed_after_a_failed_send(name: str) -> None:
    async def main() -> tuple[list[str], list[OSError], int]:
        with receiver() as target:
            transport, protocol = await endpoint(False, target)
            transport.set_write_buffer_limits(high=0)
            transport.sendto(b"first", target.getsockname())
            transport.sendto(b"x" * 70000, target.getsockname())  # fails when its turn comes
            await receive(target, 1)
            await until(lambda: bool(protocol.errors) and protocol.events[-1:] == ["resume"])
            size = transport.get_write_buffer_size()
            transport.close()
            await asyncio.wait_for(protocol.lost, 5)
            return protocol.events, protocol.errors, size

    events, errors, size = run(LOOPS[name](), main())
    assert len(errors) == 1
    assert events == ["pause", "resume"] and size == 0


@loops()
def test_the_datagram_contract_holds(name: str) -> None:
    # Connected: datagrams both ways, a wrong address and a non-buffer refused; abort ends
    # the transport at once.
    async def main() -> tuple[list[bytes], list[str], Exception | None]:
        with receiver() as target:
            transport, protocol = await endpoint(True, target)
            refused: list[str] = []
            transport.sendto(b"hello")
            data, peer = await asyncio.get_running_loop().run_in_executor(
                None, target.recvfrom, 100)
            assert data == b"hello"
            target.sendto(b"back", peer)
            await until(lambda: bool(protocol.received))
            try:
                transport.sendto(b"x", ("127.0.0.1", 1))
            except ValueError:
                refused.append("address")
            try:
                transport.sendto("text")  # type: ignore[arg-type]
            except TypeError:
                refused.append("str")
            transport.abort()
            exc = await asyncio.wait_for(protocol.lost, 5)
            return protocol.received, refused, exc

    received, refused, exc = run(LOOPS[name](), main())
    assert received == [b"back"] and refused == ["address", "str"]
    assert exc is None


@loops(stock_fails=sys.version_info < (3, 11) or STOCK_NEVER_RESUMES,
       reason="asyncio 3.10 raises TypeError (it sums a queue abort() set to None); "
       "3.13.0-3.13.5 count 8 bytes per datagram sent (CPython gh-135444)")
def test_after_abort_the_write_buffer_is_empty(name: str) -> None:
    async def main() -> int:
        with receiver() as target:
            transport, protocol = await endpoint(True, target)
            transport.sendto(b"hello")
            await receive(target, 1)
            transport.abort()
            await asyncio.wait_for(protocol.lost, 5)
            return transport.get_write_buffer_size()

    assert run(LOOPS[name](), main()) == 0


def test_the_loop_makes_its_own_datagram_transport() -> None:
    async def main() -> object:
        with receiver() as target:
            transport, protocol = await endpoint(True, target)
            transport.close()
            await protocol.lost
            return transport

    assert isinstance(run(winiocp.aio.new_event_loop(), main()), DatagramTransport)


@loops(stock_fails=True, reason="asyncio's proactor datagram transport stops reading after a "
       "receive that failed")
def test_a_failed_receive_is_error_received_and_reading_goes_on(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Windows fails a receive for an ICMP "port unreachable" (WSAECONNRESET), which Wine
    # never reports: the first receive's failure is made here instead.
    loop = LOOPS[name]()
    proactor: Any = getattr(loop, "_proactor")
    method = "recvfrom_into" if name == "winiocp" else "recvfrom"
    original = getattr(proactor, method)
    calls: list[int] = []

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            future: asyncio.Future[Any] = loop.create_future()
            future.set_exception(ConnectionResetError(10054, "port unreachable"))
            return future
        return original(*args, **kwargs)

    monkeypatch.setattr(proactor, method, failing_once)

    async def main() -> tuple[list[bytes], list[OSError]]:
        with receiver() as peer:
            transport, protocol = await endpoint(False, peer)
            await until(lambda: bool(protocol.errors))
            address = transport.get_extra_info("sockname")
            for index in range(3):
                peer.sendto(b"after %d" % index, address)
            await until(lambda: len(protocol.received) == 3, turns=200)
            transport.close()
            await asyncio.wait_for(protocol.lost, 5)
            return protocol.received, protocol.errors

    received, errors = run(loop, main())
    assert [type(error) for error in errors] == [ConnectionResetError]
    assert received == [b"after %d" % index for index in range(3)]


@loops()
@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
def test_datagrams_of_every_size_arrive_whole(name: str, connected: bool) -> None:
    # Each datagram is received into the same buffer: none may see another's bytes.
    sizes = [1, 65507, 7, 40000, 3, 1200]

    async def main() -> list[bytes]:
        with receiver() as peer:
            transport, protocol = await endpoint(connected, peer)
            address = transport.get_extra_info("sockname")
            if connected:
                peer.connect(address)
            for index, size in enumerate(sizes):
                peer.sendto(bytes([65 + index]) * size, address)
                await until(lambda: len(protocol.received) > index)
            transport.close()
            await asyncio.wait_for(protocol.lost, 5)
            return protocol.received

    received = run(LOOPS[name](), main())
    assert received == [bytes([65 + index]) * size for index, size in enumerate(sizes)]
