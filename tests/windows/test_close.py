"""Closing connections without losing data (rules 1, 3 and 4), against real Winsock.

A ``Connection``'s ``close()`` is driven only by completions: sends drain, then
shutdown(SD_SEND), then the peer's FIN arrives on the receive that is always pending, and only
then closesocket. These tests show it on real sockets: the peer gets every byte, then EOF,
however much was queued when ``close()`` was called; the pending counters match the port's
registry at every dequeue; a peer that never closes is reset at the close deadline; resets and
aborts end in their documented state and leave nothing pending. The last test is the negative
control: closesocket right after a large send, without the orderly sequence, loses data.

Under Wine a peer's ``recv`` reports an RST as end of stream (and the next ``send`` fails);
``helpers_conn.reset_via`` tells the two apart.
"""

from __future__ import annotations

import functools
import random
import time

import pytest
import support
from helpers_conn import (  # noqa: F401 - `server` is a fixture, found by name
    BULK_WAIT,
    WAIT,
    MiB,
    CloseReason,
    Connection,
    Recorder,
    Server,
    State,
    accepts_pending,
    connect,
    digest,
    handler_of,
    in_background,
    kernel_done,
    ops_of,
    payload,
    read_then_close,
    read_to_end,
    reset_peer,
    reset_via,
    server,
    wait_until,
)

from winiocp import CompletionPort, OpKind, Outcome, Socket

#: How a connection the peer reset may end: the failed receive or send says which.
RESET_REASONS = (CloseReason.PEER_RESET, CloseReason.ERROR)


def assert_counts_match_registry(port: CompletionPort, connection: Connection) -> None:
    """The connection's counters are exactly its operations in the port's registry, and a
    receive is pending whenever the peer may still send (rule 1)."""
    operations = ops_of(port, connection.sock)
    sends = sum(1 for op in operations if op.kind is OpKind.SEND)
    receives = sum(1 for op in operations if op.kind is OpKind.RECV)
    assert (connection.pending_sends, connection.pending_recvs) == (sends, receives), operations
    if connection.state is State.OPEN or (connection.state is State.CLOSING
                                          and not connection.peer_fin):
        assert connection.pending_recvs == 1, f"rule 1: no receive pending on {connection!r}"


def finished(connection: Connection) -> bool:
    """Closed, and the handler told (connection_lost runs after the state changes)."""
    return (connection.state in (State.CLOSED, State.ABORTED)
            and handler_of(connection).lost.is_set())


def assert_graceful(connection: Connection) -> None:
    assert (connection.state, connection.close_reason) == (State.CLOSED, CloseReason.GRACEFUL)
    assert handler_of(connection).reasons == [CloseReason.GRACEFUL]
    assert (connection.pending_sends, connection.pending_recvs) == (0, 0)


def assert_drained_after_reset(server: Server, connection: Connection) -> None:
    """Ended by a reset: the documented state, nothing escaped the loop, nothing pending."""
    server.wait(lambda: finished(connection), what="the connection to end")
    assert connection.state is State.ABORTED
    assert connection.close_reason in RESET_REASONS
    assert handler_of(connection).reasons == [connection.close_reason]
    server.wait(lambda: (connection.pending_sends, connection.pending_recvs) == (0, 0),
                what="the aborted operations' completions")
    assert not ops_of(server.port, connection.sock)
    assert connection.sock.closed
    assert server.manager.stats.handler_errors == 0
    server.assert_drained()
    server.check()


# -- no data lost ------------------------------------------------------------------------------


def test_send_64_mib_then_close_at_once_delivers_every_byte(server: Server) -> None:
    peer = connect(server.address)
    connection = server.connection_for(peer)
    data = payload(64 * MiB)
    connection.send(data)
    connection.close()  # at once: the send is still pending
    assert connection.state is State.CLOSING

    read = read_then_close(peer)

    assert (read.received, read.sha256, read.ending) == (len(data), digest(data), "eof")
    server.wait(lambda: finished(connection), what="the graceful close")
    assert_graceful(connection)
    assert connection.bytes_sent == len(data)
    server.assert_drained()


def test_fifty_connections_closed_at_once_deliver_every_byte(server: Server) -> None:
    peers = [connect(server.address) for _ in range(50)]
    connections = [server.connection_for(peer) for peer in peers]
    datas = [payload(2 * MiB) for _ in peers]
    for connection, data in zip(connections, datas):
        connection.send(data)
        connection.close()

    readers = [in_background(functools.partial(read_then_close, peer)) for peer in peers]
    reads = [reader.result(BULK_WAIT) for reader in readers]

    for read, data in zip(reads, datas):
        assert (read.received, read.sha256, read.ending) == (len(data), digest(data), "eof")
    server.wait(lambda: all(finished(c) for c in connections), what="50 graceful closes")
    for connection in connections:
        assert_graceful(connection)
    assert server.manager.stats.bytes_sent == 50 * 2 * MiB
    server.assert_drained()


def test_pending_counts_match_the_registry_at_every_dequeue() -> None:
    """2,000 small sends queued, then close(). Those the socket buffer took at once finished
    inline (skip-on-success); the rest are pending. The test dequeues one completion at a time;
    after each, the counters equal what the port's registry holds, the receive stays pending
    until the peer's FIN (rule 1) and shutdown waits for the last send (rule 3)."""
    with Server() as server:  # no background loop: this test dequeues
        peer = connect(server.address)
        connection = server.next_connection()
        assert (connection.pending_sends, connection.pending_recvs) == (0, 1)
        assert_counts_match_registry(server.port, connection)

        peer.sendall(b"hello")
        server.pump(lambda: bytes(handler_of(connection).received) == b"hello")
        assert_counts_match_registry(server.port, connection)  # the receive was re-posted

        sizes = random.Random(3).choices(range(1024, 4097), k=2000)
        chunks = [payload(size) for size in sizes]
        for chunk in chunks:
            connection.send(chunk)
        queued = connection.pending_sends  # the peer reads nothing yet: the buffer fills up
        assert 0 < queued <= 2000
        assert_counts_match_registry(server.port, connection)
        connection.close()
        assert connection.state is State.CLOSING
        assert not connection.shutdown_sent, "shutdown must wait for the pending sends"
        with pytest.raises(BrokenPipeError):
            connection.send(b"refused after close()")
        assert connection.pending_sends == queued  # the refused send was not counted

        reader = in_background(lambda: read_then_close(peer))
        seen = [connection.pending_sends]
        while not finished(connection):
            server.step()
            assert_counts_match_registry(server.port, connection)
            assert connection.pending_sends <= seen[-1]
            seen.append(connection.pending_sends)
            assert connection.shutdown_sent == (connection.pending_sends == 0)
        read = reader.result(BULK_WAIT)

        expected = b"".join(chunks)
        assert (read.received, read.sha256, read.ending) == (len(expected), digest(expected),
                                                              "eof")
        assert_graceful(connection)
        assert connection.bytes_sent == len(expected)
        assert not ops_of(server.port, connection.sock)
        # Every send completion was seen one at a time, down to 0.
        assert seen[0] == queued and 0 in seen


# -- closing from anywhere, twice --------------------------------------------------------------


def test_close_twice_is_safe(server: Server) -> None:
    peer = connect(server.address)
    connection = server.connection_for(peer)
    connection.close()
    connection.close()
    assert connection.state is State.CLOSING
    assert len(server.manager.close_queue) == 1

    read = read_then_close(peer)

    assert (read.received, read.ending) == (0, "eof")
    server.wait(lambda: finished(connection), what="the graceful close")
    connection.close()
    connection.abort()  # a no-op too: the socket is not touched again
    assert_graceful(connection)
    assert connection.sock.close() is False  # already closed exactly once
    assert server.manager.stats.connections_closed == 1
    server.assert_drained()


def test_close_from_inside_handler_callbacks() -> None:
    def reply_and_close(connection: Connection, data: bytes) -> None:
        connection.send(b"reply:" + data)
        connection.close()
        connection.close()

    def close_again(connection: Connection, reason: CloseReason) -> None:
        connection.close()  # inside connection_lost: already finished
        connection.abort()

    with Server(lambda: Recorder(on_data=reply_and_close, on_eof=lambda c: c.close(),
                                 on_lost=close_again)) as server:
        server.serve()
        peer = connect(server.address)
        connection = server.connection_for(peer)
        peer.sendall(b"ping")

        read = read_to_end(peer, keep=True)
        peer.close()

        assert (read.data, read.ending) == (b"reply:ping", "eof")
        server.wait(lambda: finished(connection), what="the graceful close")
        assert_graceful(connection)
        assert server.manager.stats.handler_errors == 0
        server.assert_drained()


# -- the close deadline (rule 4) ---------------------------------------------------------------


def test_peer_that_never_closes_is_reset_at_the_close_deadline() -> None:
    forced: list[tuple[Connection, float]] = []
    with Server(close_timeout=0.5,
                on_forced_close=lambda c: forced.append((c, time.monotonic()))) as server:
        server.serve()
        peer = connect(server.address)
        connection = server.connection_for(peer)
        data = payload(64 * 1024)
        connection.send(data)
        closed_at = time.monotonic()
        connection.close()

        read = read_to_end(peer)  # every byte, then our FIN; the peer never closes
        assert (read.received, read.sha256, read.ending) == (len(data), digest(data), "eof")
        server.wait(lambda: finished(connection), what="the forced close")

        assert (connection.state, connection.close_reason) == (State.ABORTED, CloseReason.FORCED)
        assert handler_of(connection).reasons == [CloseReason.FORCED]
        assert server.manager.stats.forced_closes == 1
        assert [c for c, _ in forced] == [connection]
        assert 0.5 <= forced[0][1] - closed_at < 0.5 + 2.0
        # The forced close is abortive: the peer learns it through an RST.
        via = reset_via(peer)
        assert via is not None, "the peer saw no reset after the forced close"
        if support.UNDER_WINE:
            assert via == "send"  # Wine's recv reports the RST as end of stream
        peer.close()
        server.wait(lambda: connection.pending_recvs == 0, what="the aborted receive")
        server.assert_drained()
        assert server.port.pending_count == accepts_pending(server.port, server.pool)
        assert not server.manager.live
    # Server.close: the registry empties completely once the accepts are cancelled.
    assert server.port.pending_count == 0


# -- aborts and resets -------------------------------------------------------------------------


def test_abort_resets_the_peer_and_drains_pending_operations(server: Server) -> None:
    peer = connect(server.address)
    connection = server.connection_for(peer)
    connection.send(payload(16 * MiB))  # still pending when abort() closes the socket

    connection.abort()

    assert (connection.state, connection.close_reason) == (State.ABORTED, CloseReason.ABORTED)
    assert handler_of(connection).reasons == [CloseReason.ABORTED]
    assert connection.sock.closed
    read = read_to_end(peer)
    assert read.received < 16 * MiB
    assert reset_via(peer, read) is not None, "the peer saw no reset after abort()"
    peer.close()
    server.wait(lambda: (connection.pending_sends, connection.pending_recvs) == (0, 0),
                what="the aborted operations' completions")
    assert not ops_of(server.port, connection.sock)
    assert server.manager.stats.closed_by_reason[CloseReason.ABORTED] == 1
    server.assert_drained()


def test_peer_reset_during_a_large_send(server: Server) -> None:
    peer = connect(server.address)
    connection = server.connection_for(peer)
    connection.send(payload(64 * MiB))

    read_to_end(peer, limit=1 * MiB)
    reset_peer(peer)

    assert_drained_after_reset(server, connection)
    assert connection.bytes_sent < 64 * MiB


@pytest.mark.parametrize("moment", ["mid-transfer", "after-eof"])
def test_peer_reset_while_we_are_closing(server: Server, moment: str) -> None:
    peer = connect(server.address)
    connection = server.connection_for(peer)
    size = 16 * MiB if moment == "mid-transfer" else 1 * MiB
    data = payload(size)
    connection.send(data)
    connection.close()

    if moment == "mid-transfer":
        read_to_end(peer, limit=1 * MiB)
    else:  # everything read, our FIN seen: the peer resets instead of closing
        read = read_to_end(peer)
        assert (read.received, read.sha256, read.ending) == (size, digest(data), "eof")
    reset_peer(peer)

    assert_drained_after_reset(server, connection)


def test_our_close_while_a_receive_is_pending(server: Server) -> None:
    """Nothing to send: close() shuts down at once; the receive stays pending, still gets the
    peer's data, then its FIN, and only then is the socket closed."""
    peer = connect(server.address)
    connection = server.connection_for(peer)
    connection.close()
    assert connection.state is State.CLOSING
    assert connection.shutdown_sent
    assert connection.pending_recvs == 1
    assert not connection.sock.closed

    peer.settimeout(WAIT)
    assert peer.recv(1) == b""  # our FIN
    peer.sendall(b"after your FIN")  # half-closed: we still receive
    server.wait(lambda: bytes(handler_of(connection).received) == b"after your FIN",
                what="data received while closing")
    assert connection.state is State.CLOSING
    peer.close()

    server.wait(lambda: finished(connection), what="the graceful close")
    assert_graceful(connection)
    server.assert_drained()


# -- the negative control (rule 3) -------------------------------------------------------------


def test_closesocket_right_after_a_large_send_loses_data() -> None:
    """What the library never does: closesocket with SO_LINGER {1, 0} while a large send is
    still being transmitted. The peer sees a reset, and does not get every byte."""
    size = 64 * MiB
    data = payload(size)
    with CompletionPort() as port, Socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port.associate(listener)
        accept = listener.accept()
        address = listener.getsockname()
        peer = connect((str(address[0]), int(address[1])))
        assert port.get(WAIT).operation is accept
        sock = accept.accepted
        port.associate(sock)

        send = sock.send(data)
        sock.set_linger(True, 0)
        sock.close()

        read = read_to_end(peer)
        via = reset_via(peer, read)
        peer.close()
        print(f"raw close after a {size}-byte send: peer got {read.received} bytes, "
              f"ended by {read.ending}, reset seen via {via}")
        assert via is not None or read.received < size
        assert read.received < size or read.sha256 != digest(data)
        wait_until(lambda: kernel_done(send), what="the send's completion")
        completion = port.get(WAIT)
        assert completion.operation is send
        assert completion.outcome in (Outcome.COMPLETED, Outcome.FAILED)
        assert port.pending_count == 0
