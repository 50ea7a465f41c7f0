"""The accept pool (rule 9): failed accepts never stop the listener; sockets can be recycled.

500 clients connect and reset at once. Whether each reset reaches the server as a failed
AcceptEx completion (the client reset while its connection sat in the backlog) or as an
accepted connection whose receive then fails is up to the stack and the timing; either way
the pool re-posts, keeps N accepts pending and still serves the next client, and the counters
account for every connection the server saw.

With ``recycle=True`` a gracefully closed connection's socket is handed back with
DisconnectEx(TF_REUSE_SOCKET), and later AcceptEx calls take it instead of a new socket.
"""

from __future__ import annotations

import time

import support
from helpers_conn import (
    WAIT,
    CloseReason,
    Connection,
    Recorder,
    Server,
    State,
    accepts_pending,
    closed_states,
    connect,
    handler_of,
    reset_peer,
    wait_until,
)

from winiocp import OpKind

RESET_CLIENTS = 500
ACCEPTS = 8


def send_back(connection: Connection, data: bytes) -> None:
    connection.send(data)


def echo() -> Recorder:
    return Recorder(on_data=send_back)


def echo_round_trip(server: Server, message: bytes) -> bytes:
    """One well-behaved client: send, read the echo, close first."""
    with connect(server.address) as peer:
        peer.sendall(message)
        received = b""
        while len(received) < len(message):
            chunk = peer.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def settled(server: Server, quiet: float = 0.5, timeout: float = WAIT) -> None:
    """Wait until the accept counters stop moving and every accepted connection is closed."""
    stats = server.manager.stats
    last: tuple[int, int, int] | None = None
    since = time.monotonic()
    deadline = since + timeout
    while True:
        now = (stats.accepted, stats.accept_failures, stats.connections_closed)
        if now != last:
            last, since = now, time.monotonic()
        elif (time.monotonic() - since >= quiet and stats.accepted == stats.connections_closed
              and not server.manager.live):
            return
        assert time.monotonic() < deadline, f"the pool did not settle: {stats}"
        time.sleep(0.02)


def test_reset_storm_does_not_stop_the_listener() -> None:
    with Server(echo, accepts=ACCEPTS) as server:
        server.serve()
        clients = [connect(server.address) for _ in range(RESET_CLIENTS)]
        for client in clients:  # all connected first, then all reset at once
            reset_peer(client)

        settled(server)
        stats = server.manager.stats
        accepted, failures = stats.accepted, stats.accept_failures
        seen = accepted + failures
        print(f"\n{RESET_CLIENTS} resetting clients: {stats.accepted} accepted, "
              f"{stats.accept_failures} accepts failed, closed: {closed_states(server.manager)}")
        assert 0 < seen <= RESET_CLIENTS
        assert stats.handler_errors == 0
        # Every accepted connection ended, none forced or aborted by us: by the reset, or
        # (Wine, when the RST came before the first receive) as an end of stream.
        assert stats.connections_closed == stats.accepted
        assert (stats.closed_by_reason[CloseReason.FORCED],
                stats.closed_by_reason[CloseReason.ABORTED]) == (0, 0)
        assert accepts_pending(server.port, server.pool) == ACCEPTS

        # The listener still serves a normal client, and the pool is still full.
        assert echo_round_trip(server, b"still serving") == b"still serving"
        settled(server)
        assert (stats.accepted, stats.accept_failures) == (accepted + 1, failures)
        assert stats.accepted + stats.accept_failures <= RESET_CLIENTS + 1
        assert accepts_pending(server.port, server.pool) == ACCEPTS
        assert sum(1 for op in server.port.pending_operations()
                   if op.kind is OpKind.ACCEPT) == ACCEPTS
        server.assert_drained()


def test_clients_reset_in_the_backlog_fail_accepts_that_are_reposted() -> None:
    """Rule 9's case made certain: the clients connect and reset while no AcceptEx is posted
    yet, so every one sits reset in the backlog when the pool starts. Their AcceptEx
    completions fail (Wine: ERROR_UNEXP_NET_ERR); each is re-posted, and the listener goes on."""
    clients = 50
    with Server(echo, accepts=ACCEPTS, defer_pool=True) as server:
        for client in [connect(server.address) for _ in range(clients)]:
            reset_peer(client)
        time.sleep(0.2)  # the RSTs reach the listener's backlog (loopback: at once)
        server.start_pool()
        server.serve()

        settled(server)
        stats = server.manager.stats
        print(f"\n{clients} clients reset in the backlog: {stats.accepted} accepted, "
              f"{stats.accept_failures} accepts failed")
        assert stats.accept_failures > 0
        assert stats.accepted + stats.accept_failures <= clients
        assert (stats.connections_closed, stats.handler_errors) == (stats.accepted, 0)
        assert accepts_pending(server.port, server.pool) == ACCEPTS

        assert echo_round_trip(server, b"after the failures") == b"after the failures"
        settled(server)
        assert accepts_pending(server.port, server.pool) == ACCEPTS
        server.assert_drained()


# -- recycling ---------------------------------------------------------------------------------


def close_one(server: Server, message: bytes, echoed: bool = False) -> Connection:
    """A client connects, sends ``message`` (reads its echo) and closes first; the connection
    ends gracefully."""
    with connect(server.address) as peer:
        peer.sendall(message)
        connection = server.connection_for(peer)
        server.wait(lambda: bytes(handler_of(connection).received) == message, 3.0,
                    what="the message")
        if echoed:
            peer.settimeout(2.0)  # an echo on loopback is immediate
            echo = b""
            while len(echo) < len(message):
                chunk = peer.recv(len(message) - len(echo))
                assert chunk, f"end of stream instead of the echo of {message!r}"
                echo += chunk
            assert echo == message
    server.wait(lambda: handler_of(connection).lost.is_set(), what="the graceful close")
    assert (connection.state, connection.close_reason) == (State.CLOSED, CloseReason.GRACEFUL)
    return connection


def warm_up(server: Server, echoed: bool) -> list[Connection]:
    """Two connections closed gracefully, each socket recycled before the next accept
    completes. With accepts=1 the accept posted when the second connection was accepted took
    the first one's socket: the next client lands on it."""
    first: list[Connection] = []
    for index in range(2):
        first.append(close_one(server, b"warm-up %d" % index, echoed))
        wait_until(lambda: server.pool.recycled == len(first), what="the DisconnectEx completion")
    assert first[0].sock is not first[1].sock
    return first


def test_recycled_sockets_are_taken_by_later_accepts() -> None:
    with Server(Recorder, accepts=1, recycle=True, close_timeout=0.5) as server:
        server.serve()
        first = warm_up(server, echoed=False)
        assert server.pool.recycled == 2

        with connect(server.address) as peer:
            # connection_for matched the recycled socket's getpeername with this peer.
            connection = server.connection_for(peer)
            assert connection.sock is first[0].sock  # no new socket: the recycled one
            assert connection is not first[0] and connection.state is State.OPEN
            assert connection.pending_recvs == 1
        assert [bytes(handler_of(c).received) for c in first] == [b"warm-up 0", b"warm-up 1"]
        assert server.manager.stats.accepted == 3
        assert server.manager.stats.handler_errors == 0


@support.wine_deviation("DisconnectEx ignores TF_REUSE_SOCKET (a FIXME in ws2_32: it only shuts "
                        "the sending side down), so on a socket accepted into again WSASend "
                        "fails with WSAESHUTDOWN and the peer's FIN never completes the receive")
def test_data_flows_both_ways_on_a_recycled_socket() -> None:
    with Server(echo, accepts=1, recycle=True, close_timeout=0.5) as server:
        server.serve()
        first = warm_up(server, echoed=True)
        # Receive, send and the graceful close, on the recycled socket.
        connection = close_one(server, b"echo me", echoed=True)
        assert connection.sock is first[0].sock
        wait_until(lambda: server.pool.recycled == 3, what="the socket recycled once more")
        assert server.manager.stats.handler_errors == 0
        assert server.manager.stats.closed_by_reason[CloseReason.GRACEFUL] == 3
