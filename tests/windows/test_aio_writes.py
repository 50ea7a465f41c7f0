"""winiocp.aio's write path: what a transport keeps of the data written once it is sent, and
how many sends many small writes make.

The stock loop runs the same tests where it applies (``LOOPS``).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

import winiocp.aio
from winiocp.aio.transports import SocketTransport
from winiocp.sockets import Socket

LOOPBACK = "127.0.0.1"
WAIT = 30.0
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stock": asyncio.ProactorEventLoop,
    "winiocp": winiocp.aio.new_event_loop,
}


def run(loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, Any]) -> Any:
    try:
        return loop.run_until_complete(asyncio.wait_for(main, WAIT))
    finally:
        loop.close()


async def connected_pair() -> tuple[asyncio.WriteTransport, socket.socket]:
    """A transport of the running loop on one end of a loopback connection, and the other
    end (a blocking stdlib socket)."""
    loop = asyncio.get_running_loop()
    with socket.create_server((LOOPBACK, 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        peer, _ = listener.accept()
    peer.settimeout(WAIT)
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=client)
    return cast(asyncio.WriteTransport, transport), peer


async def read_exactly(peer: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``peer``, read off the loop (in a thread)."""
    def read() -> bytes:
        received = bytearray()
        while len(received) < size:
            part = peer.recv(1 << 20)
            if not part:
                break
            received += part
        return bytes(received)

    return await asyncio.get_running_loop().run_in_executor(None, read)


async def until(condition: Callable[[], bool], turns: int = 300) -> bool:
    """Whether ``condition`` holds within ``turns`` short sleeps of the loop (a bounded wait
    for the send's completion to be handled: the peer may have the bytes before that)."""
    for _ in range(turns):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


# -- what is kept of the data written -----------------------------------------------------------

@pytest.mark.parametrize("last", ["pending", "at_once"])
@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_data_written_is_not_kept_once_it_is_sent(name: str, last: str) -> None:
    # The transport re-arms one send operation for the next send; what that operation sent
    # must not stay referenced by it (a connection that wrote 32 MiB and went idle used to
    # hold the 32 MiB until its next write). A reference count is exact: each object written
    # is back to the references the test holds once its send completed.
    big = bytes(4 << 20)  # pends: more than the socket's buffers take at once
    small = b"s" * 100  # goes out at once (skip-on-success: finished inline)
    gathered = [b"g" * 5000, b"h" * 6000]  # leave together, in one gathering send
    objects: list[bytes] = [big, small, *gathered]
    before = [sys.getrefcount(data) for data in objects]

    async def main() -> list[int]:
        transport, peer = await connected_pair()
        with peer:
            if last == "at_once":  # the last send is finished inline (where sockets skip)
                transport.write(big)
                assert await read_exactly(peer, len(big)) == big
            transport.write(small)
            assert await read_exactly(peer, len(small)) == small
            transport.writelines(gathered)
            assert await read_exactly(peer, 11000) == b"".join(gathered)
            if last == "pending":  # the last send's completion is dequeued
                transport.write(big)
                assert await read_exactly(peer, len(big)) == big
            await until(lambda: [sys.getrefcount(data) for data in objects] == before)
            after = [sys.getrefcount(data) for data in objects]
            transport.close()
            return after

    after = run(LOOPS[name](), main())
    assert after == before, "written objects still referenced after they were sent"


# -- many small writes ---------------------------------------------------------------------------

class SendCounter:
    """Counts the sends a loop issues: WSASend calls, each with the list of buffers it
    gathers (the stock loop's proactor sends one buffer per call)."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[object]] = []
        if name == "winiocp":
            original = Socket.send

            def counting(sock: Socket, data: Any, *args: Any, **kwargs: Any) -> Any:
                self.calls.append(list(data) if isinstance(data, (list, tuple)) else [data])
                return original(sock, data, *args, **kwargs)

            monkeypatch.setattr(Socket, "send", counting)
        else:
            proactor: Any = getattr(loop, "_proactor")
            send = proactor.send

            def counting_stock(conn: Any, buf: Any, *args: Any, **kwargs: Any) -> Any:
                self.calls.append([buf])
                return send(conn, buf, *args, **kwargs)

            monkeypatch.setattr(proactor, "send", counting_stock)


class Flow(asyncio.Protocol):
    """Records pause_writing / resume_writing."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")


async def flow_pair() -> tuple[asyncio.WriteTransport, Flow, socket.socket]:
    loop = asyncio.get_running_loop()
    with socket.create_server((LOOPBACK, 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        peer, _ = listener.accept()
    peer.settimeout(WAIT)
    transport, protocol = await loop.create_connection(Flow, sock=client)
    return cast(asyncio.WriteTransport, transport), protocol, peer


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_many_small_writes_in_one_turn_make_two_sends(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first write goes out at once; the 9,999 written while it is out leave together
    # in one send (they were gathered 64 buffers a send: 157 sends). Flow control stays
    # exact: paused once the queue passes the high-water mark, resumed once it drained.
    pieces = [b"%023d\n" % index for index in range(10_000)]
    loop = LOOPS[name]()
    counter = SendCounter(name, loop, monkeypatch)

    async def main() -> tuple[bytes, list[str], int]:
        transport, protocol, peer = await flow_pair()
        with peer:
            transport.set_write_buffer_limits(high=1000)
            del counter.calls[:]
            done = loop.create_future()

            def write_all() -> None:  # one callback: one turn of the loop
                for piece in pieces:
                    transport.write(piece)
                done.set_result(None)

            loop.call_soon(write_all)
            await done
            received = await read_exactly(peer, 240_000)
            await until(lambda: transport.get_write_buffer_size() == 0
                        and "resume" in protocol.events)
            size = transport.get_write_buffer_size()
            transport.close()
            return received, protocol.events, size

    received, events, size = run(loop, main())
    assert received == b"".join(pieces)
    assert events == ["pause", "resume"] and size == 0
    assert len(counter.calls) == 2, [len(call) for call in counter.calls]


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_writelines_of_small_pieces_makes_one_send(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pieces = [b"%023d\n" % index for index in range(1000)]
    loop = LOOPS[name]()
    counter = SendCounter(name, loop, monkeypatch)

    async def main() -> bytes:
        transport, peer = await connected_pair()
        with peer:
            del counter.calls[:]
            transport.writelines(pieces)
            received = await read_exactly(peer, 24_000)
            transport.close()
            return received

    assert run(loop, main()) == b"".join(pieces)
    assert len(counter.calls) == 1, [len(call) for call in counter.calls]


def test_large_writes_are_sent_without_a_copy_between_small_ones_joined(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Small pieces are copied together; a large one is handed to WSASend as it is.
    large = [bytes([65 + index]) * 100_000 for index in range(3)]
    small = [b"%07d\n" % index for index in range(30)]
    loop = winiocp.aio.new_event_loop()
    counter = SendCounter("winiocp", loop, monkeypatch)

    async def main() -> bytes:
        transport, peer = await connected_pair()
        with peer:
            del counter.calls[:]
            transport.writelines([*small[:10], large[0], *small[10:20], large[1], large[2],
                                  *small[20:]])
            received = await read_exactly(peer, 300_240)
            transport.close()
            return received

    assert run(loop, main()) == b"".join(
        [*small[:10], large[0], *small[10:20], large[1], large[2], *small[20:]])
    sent = [buffer for call in counter.calls for buffer in call]
    for buffer in large:  # the very objects written, each once
        assert sum(1 for other in sent if other is buffer) == 1
    assert len(sent) <= 6 and len(counter.calls) <= 2, [len(call) for call in counter.calls]


class Queue:
    """Stand-in for the transport's queue state (``_enqueue`` uses nothing else)."""

    def __init__(self) -> None:
        from collections import deque
        self._queue: Any = deque()
        self._joining: bytearray | None = None


def test_small_chunks_are_joined_in_order_and_a_sent_buffer_is_never_added_to() -> None:
    state = Queue()
    large = b"L" * 5000
    SocketTransport._enqueue(state, [b"a", b"b", large, b"c"])  # type: ignore[arg-type]
    SocketTransport._enqueue(state, [b"d"])  # type: ignore[arg-type]
    assert list(state._queue) == [b"ab", large, b"cd"] and state._queue[1] is large
    taken = list(state._queue)  # a send takes all of it...
    state._queue.clear()
    SocketTransport._enqueue(state, [b"e", b"f"])  # type: ignore[arg-type]
    assert taken == [b"ab", large, b"cd"]  # ...and what it took stays as it was
    assert list(state._queue) == [b"ef"]
    state._queue.appendleft(memoryview(b"xyz")[1:])  # a partial send's rest, put back
    SocketTransport._enqueue(state, [b"g"])  # type: ignore[arg-type]
    assert [bytes(chunk) for chunk in state._queue] == [b"yz", b"efg"]
