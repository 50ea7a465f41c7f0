"""Connections under the scenarios an IOCP server review found wrong.

Each test names the defect it guards against; each failed on the code before its fix (the
closing note of the change says how). Everything runs against the real ws2_32 on 127.0.0.1
with stdlib peers; every wait is bounded.

* memory: closed connections are not kept alive by the idle and close deadline queues;
* TIME_WAIT avoidance decides from the connection's TCP state, not from OVERLAPPED.Internal;
* accept slots survive descriptor exhaustion (back-off, re-armed from the loop);
* one delivery at a time per connection, nothing after ``connection_lost``, with 4 workers;
* recycling never fights TIME_WAIT avoidance, and ``close_all`` closes sockets being recycled;
* a long response to a quiet peer is activity (the idle deadline does not cut it);
* flow control: write-buffer water marks, pause/resume reading, an echo peer that never reads;
* a connection knows its addresses.
"""

from __future__ import annotations

import gc
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import winiocp.manager
import winiocp.raw
import winiocp.sockets
from winiocp import OpKind, Socket
from winiocp.connections import CloseReason, Connection, Handler, NullHandler, State
from winiocp.constants import INVALID_SOCKET, NtStatus, TcpInfoState, WinError
from winiocp.manager import AcceptPool, ConnectionManager
from winiocp.operations import BufferOperation
from winiocp.servers import EchoHandler
from winiocp.tcpinfo import tcp_state

from helpers_conn import (
    BULK_WAIT,
    LOOPBACK,
    MiB,
    WAIT,
    Server,
    connect,
    digest,
    kernel_done,
    payload,
    read_to_end,
    reset_peer,
    wait_until,
)
from support import wine_deviation


@contextmanager
def serving(manager: ConnectionManager, handler_factory: Callable[[], Handler], *,
            workers: int = 1, accepts: int = 8, before_accepts: Callable[[], None] | None = None
            ) -> Iterator[tuple[tuple[str, int], AcceptPool]]:
    """``manager`` listening on 127.0.0.1 with ``workers`` threads running its loop
    (``before_accepts()`` runs once the listener exists, before the accepts are posted)."""
    listener = Socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(1024)
    host, port = listener.getsockname()[:2]
    if before_accepts is not None:
        before_accepts()
    pool = manager.listen(listener, handler_factory, accepts=accepts)
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            manager.run(stop.is_set, poll=0.05)
        except BaseException as exc:  # nothing may escape run_once: kept for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    try:
        yield (str(host), int(port)), pool
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
        manager.close()
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)


# -- 1. deadline queues keep no closed connection alive ---------------------------------------


class Tracked(NullHandler):
    """Keeps only a weak reference to each connection it saw end."""

    ended: list[weakref.ref[Connection]] = []

    def data_received(self, connection: Connection, data: bytes) -> None:
        if data == b"close-me":
            connection.close()  # and the peer never closes: a slow closer

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        Tracked.ended.append(weakref.ref(connection))


def test_closed_connections_are_not_kept_alive_by_the_deadline_queues() -> None:
    """One long-lived connection heads the idle queue and one slow closer heads the close
    queue; 1,500 short connections come and go behind them. Every one of those must be
    collectable once closed, and the queues' heaps stay bounded by what is live. (Before: each
    closed connection, with its buffer and socket, stayed in both heaps until the head's
    deadline, 60 s here.)"""
    Tracked.ended = []
    short = 1500
    manager = ConnectionManager(idle_timeout=60.0, close_timeout=60.0)
    with serving(manager, Tracked) as (address, _):
        long_lived = connect(address)
        slow_closer = connect(address)
        slow_closer.sendall(b"close-me")
        wait_until(lambda: len(manager.close_queue) == 1, what="the slow closer")
        for _ in range(short):
            with connect(address):
                pass  # the peer closes first: the server closes gracefully behind it
        wait_until(lambda: manager.stats.connections_closed >= short, timeout=BULK_WAIT,
                   what="the short connections to close")
        time.sleep(0.2)  # let the workers leave the last dispatch
        gc.collect()
        alive = [ref for ref in Tracked.ended if ref() is not None]
        assert len(Tracked.ended) >= short
        assert not alive, f"{len(alive)} closed connections are still reachable"
        for queue in (manager.close_queue, manager.idle_queue):
            assert queue is not None
            live = len(queue)
            heap = len(queue._heap)
            assert heap <= 2 * live + 64, f"heap of {heap} entries for {live} live ones"
        long_lived.close()
        slow_closer.close()


# -- 2. TIME_WAIT avoidance: from the TCP state, not OVERLAPPED.Internal -----------------------


def test_a_peer_that_closed_first_never_gets_an_rst_whatever_internal_says() -> None:
    """The peer sends its request and half-closes; the FIN reaches our kernel (our receive is
    done) before the server's response and close. OVERLAPPED.Internal is then made to say
    STATUS_PENDING, as it would if the kernel had not finished the receive yet (Microsoft
    documents the field as reserved). The peer closed first, so no RST may follow: the decision
    must come from the connection's TCP state. (Before: Internal said "still waiting", so the
    server believed it closed first and reset a peer that was still reading.)"""
    response = payload(256 * 1024)
    with Server() as server:
        with connect(server.address) as peer:
            connection = server.connection_for(peer)
            peer.sendall(b"request")
            server.pump(lambda: bytes(connection.handler.received) == b"request",  # type: ignore[attr-defined]
                        what="the request")
            connection.send(response)
            server.pump(lambda: connection.pending_sends == 0 and connection.pending_recvs == 1,
                        what="the response to leave and the next receive")
            receive = [op for op in server.connection_ops() if op.kind is OpKind.RECV][0]
            peer.shutdown(socket.SHUT_WR)
            wait_until(lambda: kernel_done(receive), what="the peer's FIN in our kernel")
            receive.overlapped.Internal = NtStatus.STATUS_PENDING  # as if not finished yet
            connection.close()  # the FIN is not dequeued yet: shutdown goes out at once
            server.pump(lambda: connection.state is not State.CLOSING, timeout=BULK_WAIT,
                        what="the close")
            read = read_to_end(peer, WAIT)
        assert connection.we_closed_first is not True
        assert (connection.state, connection.close_reason) == (State.CLOSED,
                                                               CloseReason.GRACEFUL)
        assert (read.received, read.sha256, read.ending) == (len(response), digest(response),
                                                             "eof")


@wine_deviation("SIO_TCP_INFO is not implemented (WSAIoctl fails with WSAEOPNOTSUPP), so "
                "winiocp falls back to a graceful close")
def test_the_tcp_state_of_a_connection_is_known() -> None:
    with socket.create_server((LOOPBACK, 0)) as listener:
        with connect(listener.getsockname()) as peer:
            accepted, _ = listener.accept()
            sock = Socket.from_stdlib(accepted)
            try:
                assert tcp_state(sock) is TcpInfoState.TCPSTATE_ESTABLISHED
                peer.close()
                time.sleep(0.2)
                assert tcp_state(sock) is TcpInfoState.TCPSTATE_CLOSE_WAIT
            finally:
                sock.close()


def test_the_tcp_state_of_a_closed_socket_is_unknown_not_an_error() -> None:
    sock = Socket()
    sock.close()
    assert tcp_state(sock) is None


# -- 4. accept slots survive descriptor exhaustion ---------------------------------------------


class FailingWinsock:
    """ws2_32 as seen by ``winiocp.sockets``, whose socket creation fails ``failures`` times
    with ``error`` (WSAEMFILE: the process is out of descriptors)."""

    def __init__(self, real: object, failures: int, error: int = WinError.WSAEMFILE) -> None:
        self._real = real
        self.failures = failures
        self._error = error
        self._failed = threading.local()

    def WSASocketW(self, *args: Any) -> int:  # noqa: N802 - the Winsock name
        if self.failures > 0:
            self.failures -= 1
            self._failed.value = True
            return INVALID_SOCKET
        return self._real.WSASocketW(*args)  # type: ignore[attr-defined,no-any-return]

    def WSAGetLastError(self) -> int:  # noqa: N802
        if getattr(self._failed, "value", False):
            self._failed.value = False
            return self._error
        return self._real.WSAGetLastError()  # type: ignore[attr-defined,no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("error", [WinError.WSAEMFILE, WinError.WSAENOBUFS])
def test_an_accept_slot_survives_a_burst_of_descriptor_exhaustion(
        monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """Socket creation fails 100 times in a row; the pool's one accept slot must come back
    and accept the next client. (Before: 64 tight retries, then the slot was abandoned and the
    listener accepted nothing while the server looked healthy.)"""
    monkeypatch.setattr(winiocp.manager, "ACCEPT_BACKOFF", 0.002, raising=False)
    monkeypatch.setattr(winiocp.manager, "ACCEPT_BACKOFF_MAX", 0.01, raising=False)
    failing = FailingWinsock(winiocp.raw.ws2_32, failures=100, error=error)
    manager = ConnectionManager()
    with serving(manager, NullHandler, accepts=1,
                 before_accepts=lambda: monkeypatch.setattr(winiocp.sockets, "ws2_32", failing)
                 ) as (address, pool):
        wait_until(lambda: failing.failures == 0, what="the exhaustion to pass")
        with connect(address) as peer:
            wait_until(lambda: manager.stats.accepted == 1, what="the client to be accepted")
            peer.sendall(b"x")
        assert manager.stats.accept_failures >= 100
        assert manager.stats.accept_backoffs >= 1
        wait_until(lambda: pool.slots_waiting == 0, what="the slot to be posted")
        pending = [op for op in manager.port.pending_operations() if op.kind is OpKind.ACCEPT]
        assert len(pending) == 1, "the slot was lost"


# -- 5. one delivery at a time per connection, nothing after connection_lost ---------------


class Auditor:
    """Echoes slowly and records any callback that overlaps another or follows
    connection_lost on its connection."""

    violations: list[str] = []
    lost_counts: list[int] = []

    def __init__(self) -> None:
        self.active = 0
        self.lost = 0
        self.guard = threading.Lock()
        self.received = 0
        Auditor.lost_counts.append(0)
        self.index = len(Auditor.lost_counts) - 1

    def _enter(self, what: str) -> None:
        with self.guard:
            self.active += 1
            if self.active > 1:
                Auditor.violations.append(f"{what} overlapped another callback")
            if self.lost:
                Auditor.violations.append(f"{what} after connection_lost")

    def _leave(self) -> None:
        with self.guard:
            self.active -= 1

    def data_received(self, connection: Connection, data: bytes) -> None:
        self._enter("data_received")
        try:
            time.sleep(0.002)  # a handler doing some work: the window other workers race into
            self.received += len(data)
            if self.received > 256 * 1024 and self.index % 3 == 0:
                connection.close()  # this peer never closes: the deadline forces it
            if connection.state is State.OPEN:
                connection.send(data)  # echoes: they fail when the peer resets
        finally:
            self._leave()

    def eof_received(self, connection: Connection) -> None:
        self._enter("eof_received")
        self._leave()

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        self._enter("connection_lost")
        with self.guard:
            self.lost += 1
            Auditor.lost_counts[self.index] += 1
        time.sleep(0.001)
        self._leave()


def _blast_then_reset(address: tuple[str, int], seconds: float, rng: random.Random) -> None:
    chunk = payload(64 * 1024)
    peer = connect(address)
    peer.settimeout(0.05)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                peer.send(chunk)
            except TimeoutError:
                pass  # our echoes are not read: the window is full
    except OSError:
        pass  # the server reset or forced the connection
    if rng.random() < 0.8:
        reset_peer(peer)
    else:
        peer.close()


def test_no_callback_overlaps_or_follows_connection_lost_with_four_workers() -> None:
    """40 peers blast data and reset (or close) at random moments while the server echoes
    with a handler that takes a while; a third of the connections are closed by the server
    and then forced by the close deadline while their peers still send. With 4 workers, no
    callback of a connection may overlap another, none may follow its connection_lost, and
    connection_lost comes exactly once. (Before: a worker delivered connection_lost for a failed
    send or a forced close while another was still inside data_received.)"""
    Auditor.violations = []
    Auditor.lost_counts = []
    rng = random.Random(8)
    manager = ConnectionManager(close_timeout=0.3)
    with serving(manager, Auditor, workers=4, accepts=16) as (address, _):
        peers = [threading.Thread(target=_blast_then_reset,
                                  args=(address, rng.uniform(0.2, 1.0), rng), daemon=True)
                 for _ in range(40)]
        for peer in peers:
            peer.start()
        for peer in peers:
            peer.join(BULK_WAIT)
        wait_until(lambda: len(Auditor.lost_counts) == 40 and all(Auditor.lost_counts),
                   timeout=BULK_WAIT, what="every connection_lost")
        time.sleep(0.3)  # anything that would still come after connection_lost
    assert not Auditor.violations, Auditor.violations[:10]
    assert Auditor.lost_counts == [1] * 40


# -- 8. recycling and TIME_WAIT avoidance; no socket left behind by close_all ------------------


def test_a_connection_we_closed_first_is_not_recycled() -> None:
    """The server closes first: recycling it with DisconnectEx(TF_REUSE_SOCKET) would wait out
    TIME_WAIT (or skip the RST that avoids it). Only a connection the peer closed first is
    recycled. (Before: every graceful close was recycled.)"""
    with Server(recycle=True) as server:
        server.serve()
        with connect(server.address) as peer:
            connection = server.connection_for(peer)
            connection.close()
            read_to_end(peer, WAIT)
        server.wait(lambda: connection.state is State.CLOSED, what="the close")
        assert connection.we_closed_first is not False
        assert connection.sock.closed
        assert server.pool.recycled == 0
        assert not [op for op in server.port.pending_operations()
                    if op.kind is OpKind.DISCONNECT]


def test_close_all_closes_the_sockets_it_was_recycling() -> None:
    """A connection the peer closed first is being recycled (DisconnectEx pending or just
    completed) when the manager shuts down: close_all must wait for it and close the socket.
    (Before: it waited for accepts only; the DisconnectEx was never dequeued and its socket
    never closed.)"""
    server = Server(recycle=True)
    try:
        server.serve()
        with connect(server.address) as peer:
            connection = server.connection_for(peer)
        server.wait(lambda: connection.state is State.CLOSED, what="the graceful close")
        server.stop_loop()
        recycled = connection.sock
        assert connection.we_closed_first is False
        server.manager.close_all(timeout=WAIT)
        assert recycled.closed, "the socket being recycled was left open"
        assert not [op for op in server.port.pending_operations()
                    if op.kind is OpKind.DISCONNECT]
    finally:
        server.close()


# -- 9. sends completing are activity ----------------------------------------------------------


class Streamer(NullHandler):
    """On a request, streams ``total`` bytes in 64 KiB chunks, with flow control."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.chunk = payload(64 * 1024)
        self.paused = False
        self.error: BaseException | None = None

    def data_received(self, connection: Connection, data: bytes) -> None:
        self._stream(connection)

    def _stream(self, connection: Connection) -> None:
        try:
            while self.left > 0 and not self.paused:
                connection.send(self.chunk[:min(self.left, len(self.chunk))])
                self.left -= min(self.left, len(self.chunk))
            if self.left <= 0:
                connection.close()
        except BrokenPipeError as exc:  # closed under us (the idle deadline)
            self.error = exc

    def pause_writing(self, connection: Connection) -> None:
        self.paused = True

    def resume_writing(self, connection: Connection) -> None:
        self.paused = False
        self._stream(connection)


def test_a_long_response_to_a_quiet_peer_is_not_cut_by_the_idle_deadline() -> None:
    """The peer sends one request, then only reads, slowly, for several idle timeouts while
    the server streams 8 MiB. Sends completing are activity: the stream must arrive whole.
    (Before: only received data counted, and the idle close cut the stream.)"""
    total = 8 * MiB
    handlers: list[Streamer] = []

    def factory() -> Streamer:
        handlers.append(Streamer(total))
        return handlers[-1]

    manager = ConnectionManager(idle_timeout=1.0, close_timeout=30.0)
    with serving(manager, factory) as (address, _):
        with connect(address) as peer:
            peer.sendall(b"go")
            received = 0
            buffer = bytearray(64 * 1024)
            started = time.monotonic()
            while True:
                count = peer.recv_into(buffer)
                if not count:
                    break
                received += count
                time.sleep(0.04)  # a slow reader: the stream takes several idle timeouts
            took = time.monotonic() - started
    assert handlers[0].error is None, f"the stream was closed under the handler after {took} s"
    assert received == total, f"{received} of {total} bytes after {took:.1f} s"
    assert took > 1.0, "the peer read too fast to test the idle deadline"


# -- flow control ------------------------------------------------------------------------------


def test_write_buffer_limits_follow_asyncio_rules() -> None:
    with Server() as server:
        with connect(server.address) as peer:
            connection = server.connection_for(peer)
            assert connection.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            connection.set_write_buffer_limits(high=1000)
            assert connection.get_write_buffer_limits() == (250, 1000)
            connection.set_write_buffer_limits(low=100)
            assert connection.get_write_buffer_limits() == (100, 400)
            for high, low in ((10, 20), (-1, None), (10, -1)):
                with pytest.raises(ValueError, match="must be"):
                    connection.set_write_buffer_limits(high, low)
            assert connection.get_write_buffer_size() == 0


class FlowRecorder(NullHandler):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()

    def data_received(self, connection: Connection, data: bytes) -> None:
        self.data += data

    def eof_received(self, connection: Connection) -> None:
        self.events.append("eof")

    def pause_writing(self, connection: Connection) -> None:
        self.events.append("pause")

    def resume_writing(self, connection: Connection) -> None:
        self.events.append("resume")


def test_pause_and_resume_writing_follow_the_write_buffer() -> None:
    """A peer that does not read: sends pile up past the high-water mark (pause_writing);
    once the peer reads, they drain below the low-water mark (resume_writing)."""
    handler = FlowRecorder()
    with Server(lambda: handler) as server:
        with connect(server.address) as peer:
            connection = server.connection_for(peer)
            connection.set_write_buffer_limits(high=256 * 1024)
            block = payload(64 * 1024)
            sent = 0
            while "pause" not in handler.events and sent < 64 * MiB:
                connection.send(block)
                sent += len(block)
                server.pump(lambda: True, what="a step")  # let completions come
            assert handler.events == ["pause"], handler.events
            assert connection.get_write_buffer_size() > 256 * 1024
            reader = threading.Thread(target=read_to_end, args=(peer, BULK_WAIT, False, sent),
                                      daemon=True)
            reader.start()
            server.pump(lambda: connection.get_write_buffer_size() == 0, timeout=BULK_WAIT,
                        what="the sends to drain")
            reader.join(BULK_WAIT)
            assert handler.events == ["pause", "resume"]


def pause_with_data_in_flight(server: Server, peer: socket.socket, data: bytes) -> Connection:
    """The peer's connection, paused while its receive was pending; ``data`` then completed
    that receive (so it is held, and no receive is pending)."""
    connection = server.connection_for(peer)
    server.pump(lambda: connection.pending_recvs == 1, what="the first receive")
    connection.pause_reading()
    peer.sendall(data)
    server.pump(lambda: connection.pending_recvs == 0, what="the receive in flight")
    return connection


def test_paused_reading_posts_no_receive_and_holds_what_arrived() -> None:
    handler = FlowRecorder()
    with Server(lambda: handler) as server:
        with connect(server.address) as peer:
            connection = pause_with_data_in_flight(server, peer, b"first")
            assert not connection.is_reading()
            peer.sendall(b"second")
            time.sleep(0.2)
            server.pump(lambda: True, timeout=0.2, what="nothing")
            assert handler.data == b"" and connection.pending_recvs == 0  # held, not posted
            connection.resume_reading()
            server.pump(lambda: bytes(handler.data) == b"firstsecond", what="the held data")
            assert connection.pending_recvs == 1 and connection.is_reading()
            connection.pause_reading()
            peer.shutdown(socket.SHUT_WR)
            server.pump(lambda: connection.pending_recvs == 0, what="the FIN")
            assert handler.events == []  # held while paused
            connection.resume_reading()
            server.pump(lambda: handler.events == ["eof"], what="the held EOF")
            server.pump(lambda: connection.state is State.CLOSED, what="the close")


def test_closing_while_paused_still_reaches_the_peers_fin() -> None:
    handler = FlowRecorder()
    with Server(lambda: handler) as server:
        with connect(server.address) as peer:
            connection = pause_with_data_in_flight(server, peer, b"ignored")
            connection.close()  # rule 3 needs the FIN: reading resumes for the close
            assert connection.pending_recvs == 1
            peer.sendall(b"more")
            read_to_end(peer, WAIT)
            peer.close()
            server.pump(lambda: connection.state is State.CLOSED, what="the close")
    assert handler.data == b""
    assert connection.bytes_dropped == len(b"more")
    assert connection.close_reason is CloseReason.GRACEFUL


def _pinned_bytes(manager: ConnectionManager) -> int:
    """Bytes of buffers that pending sends and receives lend the kernel right now."""
    total = 0
    for operation in manager.port.pending_operations():
        if isinstance(operation, BufferOperation):
            total += sum(memoryview(b).nbytes for b in operation.buffers)
    return total


def test_an_echo_peer_that_never_reads_cannot_grow_the_servers_memory() -> None:
    """The peer sends 64 MiB and reads nothing at first. The echo server's pinned bytes
    (pending sends plus the pending receive) stay under the high-water mark plus one receive
    buffer; then the peer reads, and every byte comes back intact. (Before: echoes piled up
    as pending sends, tens of MiB pinned.)"""
    data = payload(64 * MiB)
    recv_size = 64 * 1024
    manager = ConnectionManager(recv_size=recv_size)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _pinned_bytes(manager))
            time.sleep(0.005)

    with serving(manager, EchoHandler, workers=2) as (address, _):
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with connect(address, timeout=BULK_WAIT) as peer:
            sender = threading.Thread(target=peer.sendall, args=(data,), daemon=True)
            sender.start()
            time.sleep(3.0)  # the peer reads nothing: the server must stop reading
            stalled_peak = peak
            read = read_to_end(peer, BULK_WAIT * 2, limit=len(data))
            sender.join(BULK_WAIT)
        done.set()
        sampler.join(WAIT)
    high = 64 * 1024
    assert stalled_peak <= high + recv_size + recv_size, (
        f"{stalled_peak} bytes pinned while the peer did not read")
    assert peak <= high + recv_size + recv_size, f"{peak} bytes pinned at the peak"
    assert (read.received, read.sha256) == (len(data), digest(data))


# -- addresses ---------------------------------------------------------------------------------


def test_a_connection_knows_its_addresses() -> None:
    with Server() as server:
        with connect(server.address) as peer:
            connection = server.connection_for(peer)
            assert connection.local_address is not None
            assert tuple(connection.local_address[:2]) == server.address
            assert connection.peer_address is not None
            assert tuple(connection.peer_address[:2]) == peer.getsockname()[:2]


def test_addresses_of_an_added_socket_come_from_the_socket() -> None:
    manager = ConnectionManager()
    try:
        with socket.create_server((LOOPBACK, 0)) as listener:
            peer = connect(listener.getsockname())
            accepted, _ = listener.accept()
        connection = manager.add(Socket.from_stdlib(accepted), NullHandler())
        assert connection.peer_address is not None
        assert tuple(connection.peer_address[:2]) == peer.getsockname()[:2]
        assert connection.local_address is not None
        assert tuple(connection.local_address[:2]) == peer.getpeername()[:2]
        connection.abort()
        peer.close()
    finally:
        manager.close()
