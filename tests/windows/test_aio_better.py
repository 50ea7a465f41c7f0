"""Where ``winiocp.aio`` is better than the stock ProactorEventLoop.

Each scenario runs on both loops in the same test. Ours must pass; what the stock loop did is
printed (run with ``-s`` to see it) and, where the stock loop is known to fail, asserted too,
so the test shows it guards against something real. Peers are stdlib sockets in threads;
every wait is bounded.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import winiocp.aio
from winiocp.port import orphaned_operation_count

LOOPBACK = "127.0.0.1"
MiB = 1 << 20
WAIT = 30.0

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stock": asyncio.ProactorEventLoop,
    "winiocp": winiocp.aio.new_event_loop,
}


def run_on(name: str, main: Callable[[], object]) -> object:
    loop = LOOPS[name]()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), WAIT))  # type: ignore[arg-type]
    finally:
        loop.close()


def reset_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("hh", 1, 0))
    sock.close()


def exchange(address: tuple[str, int], message: bytes, timeout: float) -> bytes | str:
    """Send ``message`` on a new connection and return the answer, or the error's text."""
    try:
        with socket.create_connection(address, timeout=timeout) as client:
            client.sendall(message)
            return client.recv(100)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


class Echo(asyncio.Protocol):
    """Echoes, and stops reading while its echoes are not read (flow control)."""

    def __init__(self, peak: list[int] | None = None) -> None:
        self.peak = peak

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        if self.peak is not None:
            self.peak[0] = max(self.peak[0], self.transport.get_write_buffer_size())

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


# -- the accept loop survives clients that reset before they are accepted (rule 9) -------------


@dataclass
class AcceptOutcome:
    failures_reported: list[str] = field(default_factory=list)
    exchange: bytes | str = b""
    storm_stopped: str = ""


def accept_storm(name: str) -> AcceptOutcome:
    outcome = AcceptOutcome()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(
            lambda _, context: outcome.failures_reported.append(
                f"{context.get('message')} ({context.get('exception')!r})"))
        server = await loop.create_server(Echo, LOOPBACK, 0, backlog=1000)
        address = server.sockets[0].getsockname()[:2]

        def storm() -> None:
            for index in range(500):
                try:
                    client = socket.create_connection(address, timeout=WAIT)
                except OSError as exc:  # the listener is gone
                    outcome.storm_stopped = f"client {index}: {type(exc).__name__}"
                    return
                reset_close(client)

        await asyncio.to_thread(storm)

        outcome.exchange = await asyncio.to_thread(exchange, address, b"still serving?", 5.0)
        server.close()
        await server.wait_closed()

    run_on(name, main)
    return outcome


def test_the_accept_loop_survives_clients_that_reset_before_accept() -> None:
    results = {name: accept_storm(name) for name in LOOPS}
    for name, outcome in results.items():
        print(f"{name}: exchange after 500 resets -> {outcome.exchange!r}; "
              f"reported: {sorted(set(outcome.failures_reported))}; "
              f"storm: {outcome.storm_stopped or 'all 500 connected'}")
    assert results["winiocp"].exchange == b"still serving?"
    assert results["winiocp"].failures_reported == []
    assert results["winiocp"].storm_stopped == ""
    stock = results["stock"]
    if stock.exchange != b"still serving?":
        assert any(report.startswith("Accept failed on a socket")
                   for report in stock.failures_reported)


# -- transport.close() never loses written bytes (rule 3) --------------------------------------


def close_after_response(name: str, response: bytes, peer_keeps_sending: bool) -> bytes:
    received = bytearray()

    class Responder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if not received and not getattr(self, "answered", False):
                self.answered = True
                assert isinstance(self.transport, asyncio.Transport)
                self.transport.write(response)
                self.transport.close()  # write, then close at once: nothing may be lost

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Responder, LOOPBACK, 0)
        address = server.sockets[0].getsockname()[:2]

        def peer() -> None:
            with socket.create_connection(address, timeout=WAIT) as client:
                client.sendall(b"request" + b"x" * MiB)  # more than the server reads
                stop = threading.Event()

                def keep_sending() -> None:
                    while not stop.is_set():
                        try:
                            client.send(b"y" * 4096)
                        except OSError:
                            return
                        time.sleep(0.002)

                sender = threading.Thread(target=keep_sending, daemon=True)
                if peer_keeps_sending:
                    sender.start()
                time.sleep(0.5)  # read late: the response waits in the buffers
                while True:
                    try:
                        chunk = client.recv(65536)
                    except OSError:
                        break  # a reset: what was still queued is lost
                    if not chunk:
                        break
                    received.extend(chunk)
                stop.set()
                if peer_keeps_sending:
                    sender.join(WAIT)

        await asyncio.to_thread(peer)
        server.close()
        await server.wait_closed()

    run_on(name, main)
    return bytes(received)


@pytest.mark.parametrize("peer_keeps_sending", [False, True])
def test_transport_close_never_loses_written_bytes(peer_keeps_sending: bool) -> None:
    response = os.urandom(4 * MiB)
    results = {name: close_after_response(name, response, peer_keeps_sending) for name in LOOPS}
    for name, got in results.items():
        print(f"{name}: the peer got {len(got)} of {len(response)} bytes"
              f"{' (intact)' if got == response else ''}")
    assert hashlib.sha256(results["winiocp"]).digest() == hashlib.sha256(response).digest()
    assert results["stock"] != response, "the stock loop lost nothing: the test shows nothing"


# -- flow control is honoured end to end ---------------------------------------------------------


def never_reading_peer(name: str) -> tuple[int, bytes]:
    peak = [0]
    data = os.urandom(64 * MiB)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Echo(peak), LOOPBACK, 0)
        address = server.sockets[0].getsockname()[:2]

        def peer() -> bytes:
            with socket.create_connection(address, timeout=WAIT) as client:
                sender = threading.Thread(target=client.sendall, args=(data,), daemon=True)
                sender.start()
                time.sleep(2.0)  # the peer reads nothing
                got = bytearray()
                while len(got) < len(data):
                    chunk = client.recv(1 << 20)
                    if not chunk:
                        break
                    got += chunk
                sender.join(WAIT)
                return bytes(got)

        echoed = await asyncio.to_thread(peer)
        server.close()
        await server.wait_closed()
        return echoed

    echoed = run_on(name, main)
    assert isinstance(echoed, bytes)
    return peak[0], echoed


def test_flow_control_bounds_the_servers_write_buffer() -> None:
    """A peer sends 64 MiB and reads nothing: the server's write buffer stays under the
    high-water mark plus one receive, and then every byte comes back intact."""
    high = 64 * 1024  # asyncio's default high-water mark
    receive = 256 * 1024  # the largest read asyncio's proactor transport makes (3.12+)
    for name in LOOPS:
        peak, echoed = never_reading_peer(name)
        print(f"{name}: peak write buffer {peak} bytes, echo intact: {len(echoed)} bytes")
        if name == "winiocp":
            assert peak <= high + receive
            assert len(echoed) == 64 * MiB


# -- memory the kernel may write stays owned through cancellation and close -------------------


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(["recv", "recv_cancel", "send", "gc", "peer_send"]),
                min_size=1, max_size=12),
       st.booleans())
def test_cancelled_and_abandoned_io_never_frees_kernel_memory(actions: list[str],
                                                              close_with_io_pending: bool
                                                              ) -> None:
    loop = winiocp.aio.new_event_loop()
    proactor = loop._proactor  # type: ignore[attr-defined]
    listener = socket.create_server((LOOPBACK, 0))
    peer = socket.create_connection(listener.getsockname(), timeout=WAIT)
    ours, _ = listener.accept()
    ours.setblocking(False)
    listener.close()
    futures: list[asyncio.Future[object]] = []
    try:
        async def main() -> None:
            for action in actions:
                if action in ("recv", "recv_cancel"):
                    future = asyncio.ensure_future(loop.sock_recv(ours, 1024))
                    futures.append(future)  # type: ignore[arg-type]
                    await asyncio.sleep(0)
                    if action == "recv_cancel":
                        future.cancel()
                elif action == "send":
                    await loop.sock_sendall(ours, b"z" * 1000)
                elif action == "gc":
                    gc.collect()
                else:
                    peer.sendall(b"p" * 100)
                await asyncio.sleep(0.001)
            if not close_with_io_pending:
                for pending in futures:
                    pending.cancel()
                await asyncio.gather(*futures, return_exceptions=True)

        loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    finally:
        pending_before = proactor._port.pending_count if proactor._port is not None else 0
        orphans_before = orphaned_operation_count()
        loop.close()  # cancels what is pending and waits for its completions
        ours.close()
        peer.close()
    # close() cancelled what was pending and dequeued every completion: nothing the kernel
    # might still write was left (it would have been kept in the orphan list, never freed).
    assert proactor._port is None
    assert orphaned_operation_count() == orphans_before, (
        f"{orphaned_operation_count() - orphans_before} of {pending_before} kept as orphans")
    futures.clear()  # tasks left pending by the loop's close are asyncio's to warn about
    gc.collect()


# -- a server keeps several accepts pending, and keeps serving past a failing factory --------


def test_a_listener_keeps_several_accepts_pending_and_lets_them_go_when_closed() -> None:
    """The stock loop keeps one AcceptEx per listener (a burst is accepted one client per
    loop iteration); ours keeps ACCEPTS_PER_LISTENER, re-posts each as its client is handed
    out, and cancels them all when the server closes (none is left in the port's registry)."""
    from winiocp.aio.serving import ACCEPTS_PER_LISTENER
    from winiocp.sockets import AcceptOperation

    def pending_accepts(loop: asyncio.AbstractEventLoop) -> int:
        assert isinstance(loop, winiocp.aio.EventLoop) and loop.proactor is not None
        port = loop.proactor._port
        assert port is not None
        return sum(isinstance(op, AcceptOperation) for op in port.pending_operations())

    async def main() -> tuple[int, int, int, list[bytes]]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, LOOPBACK, 0)
        address = server.sockets[0].getsockname()[:2]
        await asyncio.sleep(0.1)
        at_start = pending_accepts(loop)

        def burst() -> list[bytes]:
            clients = [socket.create_connection(address, timeout=WAIT) for _ in range(40)]
            for index, client in enumerate(clients):
                client.sendall(b"client %d" % index)
            echoes = [client.recv(100) for client in clients]
            for client in clients:
                client.close()
            return echoes

        echoes = await asyncio.to_thread(burst)
        after_burst = pending_accepts(loop)
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.1)  # the cancelled AcceptEx complete
        return at_start, after_burst, pending_accepts(loop), echoes

    at_start, after_burst, after_close, echoes = cast(
        "tuple[int, int, int, list[bytes]]", run_on("winiocp", main))
    assert echoes == [b"client %d" % index for index in range(40)]
    assert at_start == ACCEPTS_PER_LISTENER
    assert ACCEPTS_PER_LISTENER <= after_burst <= 100  # a burst may grow it, to the backlog
    assert after_close == 0


def iterations_to_accept_a_burst(name: str, clients: int, grow: bool = True
                                 ) -> tuple[int, int]:
    """``clients`` connect while the loop is blocked, then the loop runs busy (every iteration
    takes 20 ms, as under load): how many iterations it took from the first connection made
    to the last, and (ours) the accept pool's size at the end."""
    from winiocp.aio.serving import Listener

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        iterations = 0
        made: list[int] = []

        class Counted(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                made.append(iterations)

        server = await loop.create_server(Counted, LOOPBACK, 0, backlog=clients + 8)
        listener: Listener | None = None
        if isinstance(loop, winiocp.aio.EventLoop):
            listener = next(iter(loop.listeners.values()))
            if not grow:
                listener.most = listener.pool_size
        address = server.sockets[0].getsockname()[:2]
        await asyncio.sleep(0.1)  # the accepts are posted
        # Blocking connects from the loop's own thread: the kernel completes them into the
        # listen backlog while the loop cannot accept.
        peers = [socket.create_connection(address, timeout=WAIT) for _ in range(clients)]
        busy = True

        def tick() -> None:  # runs once per loop iteration
            nonlocal iterations
            iterations += 1
            time.sleep(0.02)
            if busy:
                loop.call_soon(tick)

        loop.call_soon(tick)
        deadline = time.monotonic() + WAIT
        while len(made) < clients and time.monotonic() < deadline:
            await asyncio.sleep(0)
        busy = False
        for peer in peers:
            peer.close()
        server.close()
        await server.wait_closed()
        assert len(made) == clients, f"{len(made)} of {clients} accepted in {WAIT} s"
        return made[-1] - made[0], listener.pool_size if listener is not None else 1

    return cast("tuple[int, int]", run_on(name, main))


def test_an_accept_pool_outrun_by_a_burst_grows_to_the_backlog() -> None:
    """A loop iteration accepts at most as many clients as accepts were pending when it began:
    the stock loop (one) needs an iteration per client, a fixed pool of 16 at least 7 more
    iterations for 120 queued clients, and a pool that doubles when outrun fewer
    (16 + 32 + 64 + 128 > 120)."""
    from winiocp.aio.serving import ACCEPTS_PER_LISTENER

    clients = 120
    floor = -(-clients // ACCEPTS_PER_LISTENER) - 1  # a fixed pool's fewest iterations
    stock, _ = iterations_to_accept_a_burst("stock", clients)
    fixed, fixed_pool = iterations_to_accept_a_burst("winiocp", clients, grow=False)
    grown, grown_pool = iterations_to_accept_a_burst("winiocp", clients)
    print(f"iterations from the first client accepted to the last: stock loop: {stock}; "
          f"fixed pool of {fixed_pool}: {fixed}; growing pool (now {grown_pool}): {grown}")
    assert stock >= clients - 1
    assert fixed >= floor  # the bound the growth exists to lift
    assert grown < floor
    assert ACCEPTS_PER_LISTENER < grown_pool <= clients + 8


def system_calls_per_accepted_connection(name: str, monkeypatch: pytest.MonkeyPatch,
                                         clients: int = 12) -> tuple[float, float]:
    """Clients connect one after another, each with one echo, to a server whose accepts are
    posted already: per accepted connection, how often the loop asked Windows whether a
    socket listens (getsockopt SO_ACCEPTCONN, winiocp's own) and switched a socket's
    blocking mode (settimeout/setblocking: an ioctlsocket each)."""
    from winiocp.constants import SocketLevel, SocketOption
    from winiocp.sockets import Socket

    counts = {"asks": 0, "switches": 0}
    loop_thread = threading.get_ident()  # (the clients' own sockets are not counted)
    getsockopt_int, settimeout, setblocking = (
        Socket.getsockopt_int, socket.socket.settimeout, socket.socket.setblocking)

    def counted_getsockopt_int(self: Socket, level: int, option: int) -> int:
        if (level, option) == (SocketLevel.SOL_SOCKET, SocketOption.SO_ACCEPTCONN):
            counts["asks"] += 1
        return getsockopt_int(self, level, option)

    def counted_settimeout(self: socket.socket, value: float | None) -> None:
        counts["switches"] += threading.get_ident() == loop_thread
        settimeout(self, value)

    def counted_setblocking(self: socket.socket, flag: bool) -> None:
        counts["switches"] += threading.get_ident() == loop_thread
        setblocking(self, flag)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, LOOPBACK, 0)
        address = server.sockets[0].getsockname()[:2]
        await asyncio.to_thread(exchange, address, b"warm-up", WAIT)  # the accepts are posted
        with monkeypatch.context() as patch:
            patch.setattr(Socket, "getsockopt_int", counted_getsockopt_int)
            patch.setattr(socket.socket, "settimeout", counted_settimeout)
            patch.setattr(socket.socket, "setblocking", counted_setblocking)
            for index in range(clients):
                message = b"client %d" % index
                assert await asyncio.to_thread(exchange, address, message, WAIT) == message
            await asyncio.sleep(0.1)  # the last connection's close
        server.close()
        await server.wait_closed()

    run_on(name, main)
    return counts["asks"] / clients, counts["switches"] / clients


def test_an_accepted_connection_costs_no_system_call_for_what_the_loop_knows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under Wine each such call is a wineserver round trip (section 1c of bench/RESULTS.md:
    an accepted connection's life cost 37 requests before, 31 after). The accept socket is
    made by the loop and the transport's socket is connected, so neither is asked whether it
    listens; and the accept socket is non-blocking from the start, so it is not switched
    again once accepted (the stock loop switches it twice)."""
    stock_asks, stock_switches = system_calls_per_accepted_connection("stock", monkeypatch)
    print(f"stock ProactorEventLoop: {stock_switches:.2f} blocking-mode switches per "
          "accepted connection")
    asks, switches = system_calls_per_accepted_connection("winiocp", monkeypatch)
    assert asks == 0
    assert switches == 1  # the next accept socket's, made non-blocking once
    assert stock_switches > switches


def factory_failure(name: str) -> tuple[list[str], bytes | str]:
    """A server whose protocol factory raises for the first client: what the second gets."""
    reported: list[str] = []
    made: list[int] = []

    def factory() -> asyncio.Protocol:
        made.append(1)
        if len(made) == 1:
            raise RuntimeError("factory failed")
        return Echo()

    async def main() -> bytes | str:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reported.append(
            f"{context.get('message')}: {context.get('exception')!r}"))
        server = await loop.create_server(factory, LOOPBACK, 0)
        address = server.sockets[0].getsockname()[:2]

        def clients() -> bytes | str:
            with socket.create_connection(address, timeout=WAIT) as first:
                first.sendall(b"first")
                time.sleep(0.3)  # the failure is handled before the second connects
                return exchange(address, b"second", 3.0)

        answer = await asyncio.to_thread(clients)
        server.close()
        await server.wait_closed()
        return answer

    return reported, cast("bytes | str", run_on(name, main))


def test_the_server_keeps_accepting_after_its_protocol_factory_raises() -> None:
    results = {name: factory_failure(name) for name in LOOPS}
    for name, (reported, answer) in results.items():
        print(f"{name}: the second client got {answer!r}; reported: {reported}")
    reported, answer = results["winiocp"]
    assert answer == b"second"
    assert len(reported) == 1 and "factory failed" in reported[0]
    assert results["stock"][1] != b"second", "the stock loop kept serving: the test shows nothing"
