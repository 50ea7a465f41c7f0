"""winiocp.aio's own socket transport: completions call the protocol directly, a
a bulk transfer is read straight into a BufferedProtocol's buffer, queued writes are gathered, and the
transport contract holds (pause/resume with data in flight, errors in callbacks, context).

Where a mechanism is a difference from the stock loop, the test runs both loops and shows the
stock loop doing what ours avoids.
"""

from __future__ import annotations

import array
import asyncio
import contextvars
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Coroutine
import typing
from typing import Any, TypeVar, cast

import pytest

import winiocp.aio
from winiocp.aio.transports import READ_BYTES, RECEIVE_BYTES, SocketTransport
from winiocp.sockets import Socket

P = TypeVar("P", bound=asyncio.BaseProtocol)
LOOPBACK = "127.0.0.1"
WAIT = 30.0
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stock": asyncio.ProactorEventLoop,
    "winiocp": winiocp.aio.new_event_loop,
}


def collecting(made: list[P], factory: Callable[[], P]) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory that also records each protocol it makes in ``made``."""
    def make() -> P:
        made.append(factory())
        return made[-1]
    return make


class Finishing(typing.Protocol):
    """A protocol whose ``done`` future says it has seen what the test sends."""

    done: asyncio.Future[None]


F = TypeVar("F", bound=Finishing)


async def serve_one(factory: Callable[[], F], send: Callable[[tuple[str, int]], None]) -> F:
    """Serve one connection made by ``send(address)`` (in a thread) until the protocol
    ``factory`` made for it is done; return that protocol."""
    loop = asyncio.get_running_loop()
    made: list[F] = []

    def make() -> asyncio.BaseProtocol:
        made.append(factory())
        return cast(asyncio.BaseProtocol, made[-1])

    server = await loop.create_server(make, LOOPBACK, 0)
    sender = threading.Thread(target=send, args=(server.sockets[0].getsockname()[:2],))
    sender.start()
    while not made:
        await asyncio.sleep(0.01)
    await made[0].done
    # Joined off the loop: the peer may be waiting for the close the loop is yet to make.
    await loop.run_in_executor(None, sender.join, WAIT)
    server.close()
    return made[0]


def run(loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, Any]) -> Any:
    try:
        return loop.run_until_complete(asyncio.wait_for(main, WAIT))
    finally:
        loop.close()


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def ping_pong(messages: int, size: int = 64) -> float:
    """Echo ``messages`` round trips through a server on the running loop."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, LOOPBACK, 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    payload = b"p" * size
    for _ in range(messages):
        writer.write(payload)
        assert await reader.readexactly(size) == payload
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return float(messages)


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_a_receive_completion_schedules_no_callback(name: str) -> None:
    # The stock transport's every read is a future whose done callback goes through
    # call_soon; ours calls data_received from the completion itself.
    loop = LOOPS[name]()
    scheduled = [0]
    call_soon = loop.call_soon

    def counting(callback: Callable[..., object], *args: Any, **kwargs: Any) -> asyncio.Handle:
        scheduled[0] += 1
        return call_soon(callback, *args, **kwargs)

    loop.call_soon = counting  # type: ignore[method-assign,assignment]
    messages = 200

    async def main() -> int:
        await ping_pong(20)  # warm up: connections, tasks
        before = scheduled[0]
        await ping_pong(messages)
        return scheduled[0] - before

    per_message = run(loop, main()) / messages
    print(f"{name}: {per_message:.2f} call_soon per echoed message")
    # Both ends of each message are transports of the loop under test: the streams client
    # wakes its task once per message whatever the loop; the rest is the transports'.
    if name == "stock":
        assert per_message >= 3.0
    else:
        assert per_message <= 2.0


class Collect(asyncio.BufferedProtocol):
    """A BufferedProtocol that records where each receive landed."""

    def __init__(self) -> None:
        self.buffer = bytearray(8192)
        self.view = memoryview(self.buffer)
        self.pinned_at_eof = False
        self.data = bytearray()
        self.hints: list[int] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        self.hints.append(sizehint)
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]

    def eof_received(self) -> bool:
        # Reading is over, the connection still open: nothing may keep our buffer exported
        # (a pinned memoryview in a garbage cycle crashes the GC's clear: seen with
        # asyncio's SSLProtocol).
        try:
            self.view.release()
        except BufferError:
            self.pinned_at_eof = True
        self.done.set_result(None)
        return False


class EchoUntilEof(Echo):
    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        super().data_received(data)

    def eof_received(self) -> bool:
        self.done.set_result(None)
        return False


def test_a_small_message_takes_one_receive_and_no_read_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each message of a ping-pong arrives through the receive the transport keeps pending
    (into its own small buffer): no non-blocking read follows it. (A zero-byte receive, which
    pins no buffer, needs one read per message after it: a system call more per message.)"""
    reads: list[int] = []
    original = socket.socket.recv_into

    def counting(sock: socket.socket, buffer: Any, *args: Any) -> int:
        reads.append(sock.fileno())
        return original(sock, buffer, *args)

    monkeypatch.setattr(socket.socket, "recv_into", counting)
    messages = [os.urandom(64) for _ in range(50)]

    def ping_pong(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=WAIT) as peer:
            for message in messages:
                peer.sendall(message)
                echoed = b""
                while len(echoed) < len(message):
                    echoed += peer.recv(len(message) - len(echoed))
                assert echoed == message
            peer.shutdown(socket.SHUT_WR)
            peer.recv(1)

    protocol = run(winiocp.aio.new_event_loop(), serve_one(EchoUntilEof, ping_pong))
    assert protocol.received == 64 * len(messages)
    assert reads == []


class Pausing:
    """Collects what arrives and, now and then (seeded), pauses reading after a delivery and
    resumes it a moment later: deliveries then meet a receive held while paused."""

    def __init__(self, seed: int) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.data = bytearray()
        self.random = random.Random(seed)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def delivered(self) -> None:
        if self.random.random() < 0.3:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(0.002, self.transport.resume_reading)

    def eof_received(self) -> bool:
        self.done.set_result(None)
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class PausingProtocol(Pausing, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        self.data += data
        self.delivered()


class PausingBufferedProtocol(Pausing, asyncio.BufferedProtocol):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.buffer = bytearray(3000)  # smaller than a receive: fed in several pieces

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]
        self.delivered()


@pytest.mark.parametrize("protocol", [PausingProtocol, PausingBufferedProtocol],
                         ids=["Protocol", "BufferedProtocol"])
@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_every_byte_arrives_in_order_across_receive_sizes_and_pauses(
        name: str, protocol: Callable[[int], Pausing]) -> None:
    """Chunks around the transport's receive size (one byte less, exactly, one more, several
    times it), sent one by one or back to back, while the protocol pauses and resumes reading:
    the protocol gets every byte once, in order."""
    chooser = random.Random(7)
    sizes = [RECEIVE_BYTES - 1, RECEIVE_BYTES, RECEIVE_BYTES + 1, 1, 3 * RECEIVE_BYTES + 5,
             64, READ_BYTES + 1]
    chunks = [os.urandom(chooser.choice(sizes)) for _ in range(120)]
    payload = b"".join(chunks)

    def send(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=WAIT) as peer:
            for chunk in chunks:
                peer.sendall(chunk)
                if chooser.random() < 0.3:  # (the rest arrive back to back, coalesced)
                    time.sleep(0.001)
            peer.shutdown(socket.SHUT_WR)
            peer.recv(1)

    received = run(LOOPS[name](), serve_one(lambda: protocol(11), send))
    assert len(received.data) == len(payload)
    assert bytes(received.data) == payload


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_a_bulk_transfer_is_read_straight_into_a_buffered_protocols_buffer(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = os.urandom(1 << 20)
    read_into: list[object] = []  # the buffers our transport's reads wrote to
    original = socket.socket.recv_into

    def recording(sock: socket.socket, buffer: Any, *args: Any) -> int:
        read_into.append(buffer)
        return original(sock, buffer, *args)

    monkeypatch.setattr(socket.socket, "recv_into", recording)

    def send(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=WAIT) as peer:
            peer.sendall(payload)
            peer.shutdown(socket.SHUT_WR)
            peer.recv(1)

    protocol = run(LOOPS[name](), serve_one(Collect, send))
    data, hints = bytes(protocol.data), protocol.hints
    assert not protocol.pinned_at_eof
    assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()
    if name == "stock":
        assert all(hint > 0 for hint in hints)  # asked to take a copy of each read's size
    else:
        # What a receive brought into the transport's small buffer is copied in (asked with
        # its size, as the stock loop asks); the rest of the transfer is read straight into
        # the protocol's buffer, asked for right before each read (-1).
        copied = [hint for hint in hints if hint != -1]
        direct = [hint for hint in hints if hint == -1]
        assert all(0 < hint <= RECEIVE_BYTES for hint in copied)
        assert len(copied) * RECEIVE_BYTES < len(payload) // 4
        assert len(read_into) == len(direct) and all(b is protocol.view for b in read_into)


def test_queued_writes_go_out_gathered_in_few_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    sends: list[int] = []
    original = Socket.send

    def counting(self: Socket, data: Any, *args: Any, **kwargs: Any) -> Any:
        sends.append(len(data) if isinstance(data, list) else 1)
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(Socket, "send", counting)
    chunks = [os.urandom(1000) for _ in range(300)]

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        with socket.create_server((LOOPBACK, 0)) as listener:
            client = socket.create_connection(listener.getsockname()[:2])
            peer, _ = listener.accept()
        with peer:
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=client)
            for chunk in chunks[:100]:
                transport.write(bytearray(chunk))  # mutable: copied, then changed below
            transport.writelines(chunks[100:])
            transport.close()
            peer.settimeout(WAIT)
            received = bytearray()
            while len(received) < 300_000:
                part = await loop.run_in_executor(None, peer.recv, 1 << 20)
                if not part:
                    break
                received += part
            return bytes(received)

    received = run(winiocp.aio.new_event_loop(), main())
    assert received == b"".join(chunks)
    assert len(sends) <= 10, sends  # 300 writes (joined: they are small), a handful of WSASends


def test_writes_held_back_to_the_end_of_a_turn_leave_without_waiting_for_an_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A send that goes out at once holds the turn's later writes back, to leave gathered
    # when the loop next asks for completions. Flushing them then schedules connection_lost
    # (the close waited for them): the loop must run it, not wait for an event.
    sends: list[int] = []
    original = Socket.send

    def counting(self: Socket, data: Any, *args: Any, **kwargs: Any) -> Any:
        sends.append(len(data) if isinstance(data, list) else 1)
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(Socket, "send", counting)

    class WriteAndClose(asyncio.Protocol):
        def __init__(self) -> None:
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.WriteTransport, transport)

        def write_and_close(self) -> None:
            for part in (b"one ", b"two ", b"three"):
                self.transport.write(part)
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set_result(None)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        with socket.create_server((LOOPBACK, 0)) as listener:
            client = socket.create_connection(listener.getsockname()[:2])
            peer, _ = listener.accept()
        with peer:
            _, protocol = await loop.create_connection(WriteAndClose, sock=client)
            await asyncio.sleep(0.1)  # everything else has happened
            loop.call_soon(protocol.write_and_close)  # the turn's last callback
            await asyncio.wait_for(protocol.lost, 3)  # (nothing else will ever happen)
            peer.settimeout(WAIT)
            received = b""
            while part := await loop.run_in_executor(None, peer.recv, 1024):
                received += part
            return received

    assert run(winiocp.aio.new_event_loop(), main()) == b"one two three"
    assert sends == [1, 1]  # the first at once, the other two joined at the turn's end


class Chunked:
    """Stand-in for the transport's queue state (``_requeue_unsent`` uses nothing else)."""

    def __init__(self) -> None:
        from collections import deque
        self._queue: Any = deque([b"later"])
        self._queued = 5


def test_a_partial_send_puts_the_unsent_rest_back_in_front() -> None:
    state = Chunked()
    SocketTransport._requeue_unsent(state, [b"abc", b"defg", b"hi"], 5)  # type: ignore[arg-type]
    assert [bytes(chunk) for chunk in state._queue] == [b"fg", b"hi", b"later"]
    assert state._queued == 5 + 4


class PauseOnFirst(asyncio.Protocol):
    """Pauses reading on its first data, resumes a little later: nothing may be lost."""

    def __init__(self, expected: int) -> None:
        self.data = bytearray()
        self.expected = expected
        self.paused_calls = 0
        self.paused = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.paused:
            self.paused_calls += 1
        self.data += data
        if len(self.data) >= self.expected and not self.done.done():
            self.done.set_result(None)
        elif len(self.data) < self.expected and not self.paused:
            self.paused = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(0.05, self.resume)

    def resume(self) -> None:
        self.paused = False
        self.transport.resume_reading()


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_pause_reading_with_a_receive_in_flight_holds_its_data(name: str) -> None:
    payload = os.urandom(512 * 1024)

    def send(address: tuple[str, int]) -> None:
        socket.create_connection(address, timeout=WAIT).sendall(payload)

    protocol = run(LOOPS[name](), serve_one(lambda: PauseOnFirst(len(payload)), send))
    assert protocol.paused_calls == 0  # nothing delivered while paused
    assert bytes(protocol.data) == payload


def test_an_exception_in_data_received_closes_only_that_connection() -> None:
    errors: list[dict[str, Any]] = []

    class Faulty(asyncio.Protocol):
        lost: asyncio.Future[BaseException | None]

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.lost = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            raise ValueError("broken protocol")

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost.set_result(exc)

    async def main() -> BaseException | None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: errors.append(context))
        protocols: list[Faulty] = []
        server = await loop.create_server(collecting(protocols, Faulty),
                                          LOOPBACK, 0)
        address = server.sockets[0].getsockname()[:2]
        with socket.create_connection(address, timeout=WAIT) as peer:
            peer.sendall(b"boom")
            while not protocols:
                await asyncio.sleep(0.01)
            exc = await protocols[0].lost
        assert await ping_pong(5) == 5.0  # the loop goes on serving
        server.close()
        return exc

    exc = run(winiocp.aio.new_event_loop(), main())
    assert isinstance(exc, ValueError)
    assert [type(error.get("exception")) for error in errors] == [ValueError]


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_protocol_callbacks_run_in_the_context_the_connection_was_made_in(name: str) -> None:
    seen: list[str] = []

    class Record(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            seen.append(VAR.get())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with socket.create_server((LOOPBACK, 0)) as listener:
            client = socket.create_connection(listener.getsockname()[:2])
            peer, _ = listener.accept()
        with peer:
            VAR.set("connecting task")
            transport, _ = await loop.create_connection(Record, sock=client)
            VAR.set("changed later")
            peer.sendall(b"x")
            while not seen:
                await asyncio.sleep(0.01)
            transport.close()

    run(LOOPS[name](), main())
    assert seen == ["connecting task"]


class RespondOnEof(asyncio.Protocol):
    """Answers a request once the peer has finished sending it, then lets the transport close
    (``eof_received`` returns False)."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def eof_received(self) -> bool:
        self.transport.write(self.response)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set_result(None)


def test_a_close_after_the_peers_fin_loses_nothing_and_needs_no_drain(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the peer's FIN is read nothing can arrive that a close would leave unread, so the
    transport closes at once instead of the orderly close's shutdown-and-drain: one fewer
    receive and no deadline per connection (the churn workload), and still no byte lost."""
    response = os.urandom(4 << 20)
    received = bytearray()

    def peer(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=WAIT) as client:
            client.sendall(b"request")
            client.shutdown(socket.SHUT_WR)
            threading.Event().wait(0.5)  # read late: the response waits in the buffers
            while chunk := client.recv(1 << 16):
                received.extend(chunk)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, winiocp.aio.EventLoop)
        orderly: list[socket.socket] = []
        close_orderly = loop._close_orderly

        def counting(sock: socket.socket, *rest: Any) -> None:
            orderly.append(sock)
            close_orderly(sock, *rest)

        monkeypatch.setattr(loop, "_close_orderly", counting)
        await serve_one(lambda: RespondOnEof(response), peer)
        return len(orderly)

    orderly_closes = run(winiocp.aio.new_event_loop(), main())
    assert hashlib.sha256(received).digest() == hashlib.sha256(response).digest()
    assert orderly_closes == 0


class Record(asyncio.Protocol):
    """Keeps every chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def eof_received(self) -> bool:
        self.done.set_result(None)
        return False


def test_a_stream_is_read_in_large_reads_into_the_loops_buffer() -> None:
    """A plain Protocol's data is read into the loop's one read buffer (the connection holds
    none of its own): a bulk transfer in reads of up to READ_BYTES, each costing one system
    call whatever it brings; small messages after it arrive one by one. Every byte arrives,
    in order."""
    bulk = os.urandom(16 << 20)
    tail = [b"small %d" % index for index in range(6)]

    def peer(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=WAIT) as client:
            client.sendall(bulk)
            for message in tail:
                threading.Event().wait(0.05)  # one small read each
                client.sendall(message)
            client.shutdown(socket.SHUT_WR)
            client.recv(1)

    protocol = run(winiocp.aio.new_event_loop(), serve_one(Record, peer))
    received = b"".join(protocol.chunks)
    assert hashlib.sha256(received).digest() == hashlib.sha256(bulk + b"".join(tail)).digest()
    largest = max(map(len, protocol.chunks))
    assert 65536 < largest <= READ_BYTES
    assert protocol.chunks[-len(tail):] == tail


# -- the contract in the corners: each case below broke on an earlier winiocp.aio and holds
# on the stock loop (run on both) -----------------------------------------------------------


class Producer(asyncio.Protocol):
    """asyncio's producer pattern: write until ``pause_writing``, go on in
    ``resume_writing``, close when all is written."""

    def __init__(self, chunks: int) -> None:
        self.remaining = chunks
        self.paused = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)
        self.produce()

    def produce(self) -> None:
        self.paused = False
        while not self.paused and self.remaining:
            self.transport.write(b"x" * 16384)
            self.remaining -= 1
        if not self.remaining:
            self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.produce()

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set_result(None)


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_writes_made_in_resume_writing_go_out_with_nothing_else_happening(name: str) -> None:
    # resume_writing runs when the queue drained; what it writes must leave without any
    # other event: no timer, no data from the peer (they once waited for the next event).
    chunks = 400
    received: list[int] = []

    def read_all(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=WAIT) as peer:
            total = 0
            while part := peer.recv(1 << 20):
                total += len(part)
            received.append(total)

    async def main() -> None:
        await asyncio.wait_for(serve_one(lambda: Producer(chunks), read_all), 10)

    run(LOOPS[name](), main())
    assert received == [chunks * 16384]


class Switching(asyncio.Protocol):
    """A plain protocol that hands the connection to a BufferedProtocol part-way, the way
    ``loop.start_tls`` does (pause_reading, set_protocol, resume_reading)."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.before = bytearray()
        self.after = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.before += data
        if len(self.before) >= 4:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(0.3, self.switch)  # data queues meanwhile

    def switch(self) -> None:
        self.transport.set_protocol(Following(self))
        self.transport.resume_reading()


class Following(asyncio.BufferedProtocol):
    """Takes over from ``Switching``; like asyncio's SSLProtocol, one buffer every time."""

    def __init__(self, first: Switching) -> None:
        self.first = first
        self.view = memoryview(bytearray(65536))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.first.after += self.view[:nbytes]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.first.done.set_result(None)


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_a_switch_to_a_buffered_protocol_keeps_the_stream_intact(name: str) -> None:
    # Bytes received before the switch, into the transport's buffer, are fed to the new
    # protocol's buffer; a read of the bytes after them must not land there first.
    first, second, third = b"head", b"A" * 1000, b"B" * 500

    def send(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=WAIT) as peer:
            peer.sendall(first)
            time.sleep(0.1)
            peer.sendall(second)  # held in the transport while reading is paused
            time.sleep(0.1)
            peer.sendall(third)  # waits in the socket's buffer
            peer.shutdown(socket.SHUT_WR)
            peer.recv(1)

    protocol = run(LOOPS[name](), serve_one(Switching, send))
    assert bytes(protocol.before + protocol.after) == first + second + third


class MovingBuffer(asyncio.BufferedProtocol):
    """Offers the free end of its buffer; a later callback takes what was read and starts
    over at the front (a parser that consumes in its own time)."""

    def __init__(self) -> None:
        self.buffer = bytearray(1000)
        self.end = 0
        self.taken = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)[self.end:]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        asyncio.get_running_loop().call_soon(self.consume)

    def consume(self) -> None:
        self.taken += self.buffer[:self.end]
        self.end = 0
        self.buffer.extend(b"\0" * 8)  # grows it too: it must not be exported any more
        del self.buffer[-8:]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.consume()
        self.done.set_result(None)


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_a_buffered_protocol_may_move_and_resize_its_buffer_between_callbacks(name: str) -> None:
    # get_buffer() is asked right before the read that fills what it returns: a buffer
    # handed out earlier, then moved or resized by the protocol, is never written to.
    pieces = (b"AAAA", b"BBBB", b"CCCC")

    def send(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=WAIT) as peer:
            for piece in pieces:
                peer.sendall(piece)
                time.sleep(0.1)
            peer.shutdown(socket.SHUT_WR)
            peer.recv(1)

    protocol = run(LOOPS[name](), serve_one(MovingBuffer, send))
    assert bytes(protocol.taken) == b"".join(pieces)


class CloseAfterFirst(asyncio.BufferedProtocol):
    """Closes soon after the first read (reading goes on until then); then watches its
    buffer."""

    def __init__(self) -> None:
        self.buffer = bytearray(b"." * 64)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.buffer[:] = b"." * 64  # taken: the buffer is ours again
        cast(asyncio.WriteTransport, self.transport).write(b"bye")  # (an orderly close)
        asyncio.get_running_loop().call_later(0.05, self.transport.close)  # reading on

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)
        asyncio.get_running_loop().call_later(0.5, self.done.set_result, None)


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_nothing_is_written_to_a_buffered_protocols_buffer_after_close(name: str) -> None:
    def send(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=WAIT) as peer:
            peer.sendall(b"first")
            time.sleep(0.2)
            try:
                peer.sendall(b"Z" * 8)  # after the close: for nobody
            except OSError:
                pass
            time.sleep(0.5)

    protocol = run(LOOPS[name](), serve_one(CloseAfterFirst, send))
    assert bytes(protocol.buffer) == b"." * 64


class ReadOnlyBuffer(asyncio.BufferedProtocol):
    """Offers a buffer nothing can be read into."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reason: BaseException | None = None

    def get_buffer(self, sizehint: int) -> bytes:
        return bytes(100)

    def buffer_updated(self, nbytes: int) -> None:
        raise AssertionError("nothing can have been read into a bytes object")

    def connection_lost(self, exc: Exception | None) -> None:
        self.reason = exc
        self.done.set_result(None)


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_an_unusable_buffer_from_get_buffer_ends_the_connection(name: str) -> None:
    # A fatal error, reported, and connection_lost with it: not a connection that hangs.
    errors: list[dict[str, Any]] = []

    def send(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=WAIT) as peer:
            peer.sendall(b"hello")
            peer.recv(1)

    async def main() -> ReadOnlyBuffer:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        return await asyncio.wait_for(serve_one(ReadOnlyBuffer, send), 10)

    protocol = run(LOOPS[name](), main())
    assert isinstance(protocol.reason, TypeError)
    assert errors and isinstance(errors[0].get("exception"), TypeError)


class BytesSubclass(bytes):
    pass


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_write_and_writelines_take_what_asyncio_takes(name: str) -> None:
    got: list[bytes] = []

    class Writer(asyncio.Protocol):
        def __init__(self) -> None:
            self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.refused: list[str] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            writer = cast(asyncio.WriteTransport, transport)
            writer.write(BytesSubclass(b"sub "))
            writer.writelines([array.array("B", b"array "), memoryview(b"view"),  # type: ignore[list-item]
                               b""])
            for wrong in ("text", array.array("B", b"x")):
                try:
                    writer.write(wrong)  # type: ignore[arg-type]
                except TypeError:
                    self.refused.append(type(wrong).__name__)
            writer.write_eof()
            try:
                writer.write(b"")
            except RuntimeError:  # even an empty write, as asyncio checks it
                self.refused.append("after write_eof")
            writer.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self.done.set_result(None)

    def read_all(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=WAIT) as peer:
            data = b""
            while part := peer.recv(1024):
                data += part
            got.append(data)

    protocol = run(LOOPS[name](), serve_one(Writer, read_all))
    assert got == [b"sub array view"]
    assert protocol.refused == ["str", "array", "after write_eof"]
