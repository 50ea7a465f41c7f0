"""The manager's batch loop and the connection's direct delivery.

``run_once`` dequeues a batch of completions at once and routes them in order; a receive's
data is handed to the handler without the delivery queue when nothing else of its connection
is queued or being delivered. Each guard here failed without it (the change's closing note
says how). Real ws2_32 on 127.0.0.1 with stdlib peers; every wait is bounded.
"""

from __future__ import annotations

import socket
import threading

import pytest

from winiocp import Completion, OpKind, Socket
from winiocp.constants import SocketType
from winiocp.manager import ConnectionManager
from winiocp.connections import CloseReason, Connection, State

from helpers_conn import (WAIT, Server, connect, in_background, issuer, kernel_done, ops_of,
                          read_to_end, send_until_one_pends, wait_until)


def next_completion(server: Server, connection: Connection, kind: OpKind) -> Completion:
    """Dequeue until ``connection``'s next ``kind`` completion, which is returned without
    being dispatched (any other completion is dispatched as the loop would)."""
    for _ in range(100):
        completion = server.port.get(WAIT)
        operation = completion.operation
        assert operation is not None, f"no {kind.value} completion came: {completion!r}"
        if operation.kind is kind and issuer(operation) is connection:
            return completion
        server.manager.dispatch(completion)
    pytest.fail(f"no {kind.value} completion among 100")


class Gate:
    """Records each callback, and any that overlaps another; ``resume_writing`` waits at a
    gate until the test opens it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.overlaps: list[str] = []
        self.active = 0
        self.inside = threading.Event()
        self.open = threading.Event()
        self._guard = threading.Lock()

    def _enter(self, what: str) -> None:
        with self._guard:
            self.active += 1
            self.calls.append(what)
            if self.active > 1:
                self.overlaps.append(what)

    def _leave(self) -> None:
        with self._guard:
            self.active -= 1

    def data_received(self, connection: Connection, data: bytes) -> None:
        self._enter(f"data {data!r}")
        self._leave()

    def eof_received(self, connection: Connection) -> None:
        self._enter("eof")
        self._leave()

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        self._enter("lost")
        self._leave()

    def pause_writing(self, connection: Connection) -> None:
        self._enter("pause")
        self._leave()

    def resume_writing(self, connection: Connection) -> None:
        self._enter("resume")
        self.inside.set()
        try:
            self.open.wait(WAIT)
        finally:
            self._leave()


def test_data_waits_while_another_thread_delivers_a_callback_of_its_connection() -> None:
    """A worker is inside ``resume_writing`` (its send completion drained the write buffer)
    when another worker dequeues the connection's received data: the data must wait its turn,
    not be handed over at once beside the running callback. (Without the ``_delivering``
    check of the direct path, data_received ran while resume_writing was still running.)"""
    with Server(Gate) as server:
        with connect(server.address) as peer:
            connection = server.connection_for(peer)
            gate = connection.handler
            assert isinstance(gate, Gate)
            connection.set_write_buffer_limits(high=4, low=0)
            # A send that pends is above the high-water mark: paused.
            queued = send_until_one_pends(connection)
            assert read_to_end(peer, limit=queued).received == queued
            sent = next_completion(server, connection, OpKind.SEND)
            peer.sendall(b"hello")
            received = next_completion(server, connection, OpKind.RECV)

            # The worker stays alive until the test is over: it issues the next receive, and
            # "all I/O initiated by a given thread is canceled when that thread exits"
            # (WSARecv's documentation); Wine then never completes that receive at all.
            dispatched, test_over = threading.Event(), threading.Event()

            def work() -> None:
                server.manager.dispatch(sent)
                dispatched.set()
                test_over.wait(WAIT)

            worker = in_background(work)
            try:
                assert gate.inside.wait(WAIT), "resume_writing was not called"
                server.manager.dispatch(received)  # while the worker is inside resume_writing
                assert gate.calls == ["pause", "resume"], gate.calls  # the data waits
                gate.open.set()
                assert dispatched.wait(WAIT), "the worker's dispatch did not return"

                assert gate.overlaps == [], gate.calls
                assert gate.calls == ["pause", "resume", "data b'hello'"]
                assert connection.pending_recvs == 1  # and the next receive is posted
                peer.sendall(b"again")
                server.pump(lambda: len(gate.calls) == 4, what="the next data")
                assert gate.calls[-1] == "data b'again'"
                assert gate.overlaps == []
            finally:
                test_over.set()
                worker.result(WAIT)


class InterruptOnce:
    """The first ``data_received`` of all raises KeyboardInterrupt (Ctrl-C in a handler);
    every other one records its data."""

    fired = False

    def __init__(self) -> None:
        self.received = bytearray()
        self.interrupted = False

    def data_received(self, connection: Connection, data: bytes) -> None:
        if not InterruptOnce.fired:
            InterruptOnce.fired = self.interrupted = True
            raise KeyboardInterrupt
        self.received += data

    def eof_received(self, connection: Connection) -> None:
        pass

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        pass


def _receives_done(server: Server, connections: list[Connection]) -> None:
    """Wait until the kernel finished every connection's pending receive (not dequeued)."""
    receives = [op for op in server.port.pending_operations()
                if op.kind is OpKind.RECV and issuer(op) in connections]
    assert len(receives) == len(connections)
    wait_until(lambda: all(kernel_done(op) for op in receives), what="the receives")


def test_an_interrupt_in_the_middle_of_a_batch_loses_no_completion() -> None:
    """Three receives complete; one ``run_once`` dequeues them as one batch and the first
    handler raises KeyboardInterrupt. The interrupt propagates, and the completions not yet
    routed are routed by the next ``run_once``: every other connection gets its data, and the
    interrupted one reads on. (Without the batch's salvage they were dropped: their data
    never came and their connections never read again.)"""
    InterruptOnce.fired = False
    with Server(InterruptOnce) as server:
        peers = [connect(server.address) for _ in range(3)]
        try:
            connections = [server.connection_for(peer) for peer in peers]
            handlers = [connection.handler for connection in connections]
            assert all(isinstance(handler, InterruptOnce) for handler in handlers)
            for index, peer in enumerate(peers):
                peer.sendall(b"to %d" % index)
            _receives_done(server, connections)

            with pytest.raises(KeyboardInterrupt):
                server.manager.run_once(WAIT)
            interrupted = [h for h in handlers if isinstance(h, InterruptOnce) and h.interrupted]
            assert len(interrupted) == 1
            server.pump(lambda: all(bytes(h.received) == b"to %d" % index
                                    for index, h in enumerate(handlers)
                                    if isinstance(h, InterruptOnce) and not h.interrupted),
                        what="the rest of the interrupted batch")
            # The interrupted connection is not wedged: it posted its next receive.
            victim = handlers.index(interrupted[0])
            peers[victim].sendall(b"more")
            server.pump(lambda: bytes(interrupted[0].received) == b"more",
                        what="the interrupted connection's next data")
            assert all(connection.state is State.OPEN for connection in connections)
        finally:
            for peer in peers:
                peer.close()


class Collect:
    def __init__(self) -> None:
        self.received = bytearray()

    def data_received(self, connection: Connection, data: bytes) -> None:
        self.received += data

    def eof_received(self, connection: Connection) -> None:
        pass

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        pass


def test_one_run_once_routes_a_whole_batch() -> None:
    """Four connections' receives completed: one ``run_once`` with no wait routes them all."""
    with Server(Collect) as server:
        peers = [connect(server.address) for _ in range(4)]
        try:
            connections = [server.connection_for(peer) for peer in peers]
            for index, peer in enumerate(peers):
                peer.sendall(b"batch %d" % index)
            _receives_done(server, connections)
            assert server.manager.run_once(0)
            handlers = [c.handler for c in connections]
            assert [bytes(h.received) for h in handlers if isinstance(h, Collect)
                    ] == [b"batch %d" % index for index in range(4)]
        finally:
            for peer in peers:
                peer.close()


def _skip_mode_allowed(sock: Socket) -> bool:
    return sock.set_skip_on_success()  # idempotent: True if the mode is (now) on


def test_added_connections_skip_completion_packets_unless_recycled() -> None:
    """``add`` turns FILE_SKIP_COMPLETION_PORT_ON_SUCCESS on where Windows allows it, except
    on sockets to recycle (see ``manager.py``)."""
    with Server(Collect) as server, connect(server.address) as peer:
        sock = server.connection_for(peer).sock
        assert sock.skips_on_success == _skip_mode_allowed(sock)
    with Server(Collect, recycle=True) as server, connect(server.address) as peer:
        assert not server.connection_for(peer).sock.skips_on_success


@pytest.mark.parametrize("zero_byte_reads", [False, True])
def test_a_send_that_completes_at_once_is_done_when_send_returns(zero_byte_reads: bool) -> None:
    """In skip-on-success mode a send the socket buffer takes at once is finished inside
    ``Connection.send``: counted, and nothing left for the loop to dequeue. The next send
    re-arms the same operation (one OVERLAPPED for a connection that sends one at a time),
    except in zero-byte-read mode, which keeps nothing extra on an idle connection. (Before:
    its completion waited in the port's inline queue for the next dequeue, and every send
    allocated an operation.)"""
    with Server(Collect) as server:
        server.manager.zero_byte_reads = zero_byte_reads  # for the connection accepted next
        with connect(server.address) as peer:
            connection = server.connection_for(peer)
            assert connection.zero_byte_reads is zero_byte_reads
            if not connection.sock.skips_on_success:
                pytest.skip("this socket's provider is not IFS: every send queues a packet")
            spares = []
            for index in range(20):
                connection.send(b"ping %2d" % index)
                assert (connection.pending_sends, connection.bytes_sent) == (0, 7 * (index + 1))
                assert connection.get_write_buffer_size() == 0
                assert server.port.get_inline() == []
                spares.append(connection._spare_send)  # pyright: ignore[reportPrivateUsage]
            if zero_byte_reads:
                assert spares == [None] * 20
            else:
                assert len({id(spare) for spare in spares}) == 1 and spares[0] is not None
            assert [op.kind for op in ops_of(server.port, connection.sock)] == [OpKind.RECV]
            assert read_to_end(peer, limit=20 * 7).received == 20 * 7


def test_a_send_another_thread_dequeued_first_waits_for_its_completion() -> None:
    """A send pends, and another worker dequeues its completion before ``Connection.send``
    has returned (the socket's ``send`` is wrapped to play that worker). The operation is then
    finished, like one finished inline, but its completion is still to be routed: the
    connection must count it from that completion and must not re-arm the operation before
    (a re-armed operation would take the stale completion for its next send). (Before the
    port cleared an inline-finished operation's context, ``pending`` was all it could check,
    and such a send was counted at once and kept as the spare.)"""
    with Server(Collect) as server, connect(server.address) as peer:
        connection = server.connection_for(peer)
        queued = send_until_one_pends(connection)
        real = connection.sock
        dequeued: list[Completion] = []

        class OtherWorkerDequeuesFirst:
            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

            def send(self, data: bytes, **options: object) -> object:
                operation = real.send(data, **options)  # type: ignore[arg-type]
                assert operation.pending, "the socket buffer had room after all"
                owed = queued + len(data)  # what the peer must read for this send to complete
                assert read_to_end(peer, limit=owed).received == owed
                while operation.pending:
                    dequeued.append(server.port.get(WAIT))
                return operation

        connection.sock = OtherWorkerDequeuesFirst()  # type: ignore[assignment]
        try:
            connection.send(b"raced")
        finally:
            connection.sock = real
        assert connection._spare_send is None  # pyright: ignore[reportPrivateUsage]
        assert connection.pending_sends == 2  # the one that filled the buffer, and this one
        for completion in dequeued:
            server.manager.dispatch(completion)
        assert (connection.pending_sends, connection.get_write_buffer_size()) == (0, 0)
        assert connection.bytes_sent == queued + len(b"raced")
        spare = connection._spare_send  # pyright: ignore[reportPrivateUsage]
        assert spare is not None and not spare.pending
        assert connection.state is State.OPEN


def test_a_send_the_connection_never_counted_leaves_its_counters_alone() -> None:
    """A send completion reaches the connection although ``Connection.send`` never counted
    it (its ``send()`` raised, yet the kernel queued a packet: Wine does for a warning
    status; here the send is issued behind the connection's back). The connection takes
    each send's size from what it recorded, so neither the pending count nor the write
    buffer goes negative, and it stays open. (Before: both went negative, and without the
    check on the recorded size the completion aborted the connection.)"""
    with Server(Collect) as server, connect(server.address) as peer:
        connection = server.connection_for(peer)
        connection.sock.send(b"stray", context=connection.on_completion)
        server.manager.dispatch(next_completion(server, connection, OpKind.SEND))
        assert (connection.pending_sends, connection.get_write_buffer_size()) == (0, 0)
        assert connection.state is State.OPEN
        connection.send(b"counted")  # finished inline (skip-on-success), or pending
        assert connection.bytes_sent + connection.get_write_buffer_size() == len(b"counted")
        server.pump(lambda: connection.pending_sends == 0, what="the counted send")
        assert connection.get_write_buffer_size() == 0
        assert connection.bytes_sent == len(b"counted")
        assert server.manager.stats.handler_errors == 0


def test_the_loop_calls_each_operation_s_own_handler_and_ignores_other_contexts() -> None:
    """``run_once`` routes a completion to its operation's context when that is callable (a
    completion handler: how Connection and AcceptPool receive theirs, and how code of one's
    own on the manager's port receives its completions), calls nothing for a context that is
    not, and a handler that raises is counted, never let out of the loop. (Before: only a
    Connection or AcceptPool context was routed; the handler here was never called.)"""
    manager = ConnectionManager()
    calls: list[Completion] = []

    def failing(completion: Completion) -> None:
        raise RuntimeError("a failing handler")

    try:
        with Socket(type=SocketType.SOCK_DGRAM) as receiver, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            receiver.bind(("127.0.0.1", 0))
            manager.port.associate(receiver)
            address = receiver.getsockname()
            for context in (calls.append, "not a handler", failing):
                operation = receiver.recvfrom(100, context=context)
                sender.sendto(b"datagram", address)
                wait_until(lambda: kernel_done(operation), what="the datagram")
                manager.run_once(WAIT)
                assert not operation.pending  # dequeued, and routed (or not) by that batch
            assert [(c.operation, c.bytes_transferred) for c in calls] == [
                (calls[0].operation, len(b"datagram"))]
            assert calls[0].operation is not None and calls[0].operation.context is not None
            assert manager.stats.handler_errors == 1
    finally:
        manager.port.close()
