"""The echo server (``Server`` + ``EchoHandler``) under concurrent stdlib clients.

Every byte is checked: random payloads of mixed sizes (one byte to several receive buffers)
come back byte for byte, with 2 to 4 worker threads on one completion port, and in the
zero-byte-read mode too. Clients that close first leave no TIME_WAIT on the server's port (the
server is the passive closer). ``stop()`` with connections still open closes every one of them
without losing data: each client reads all its echoes, then EOF.
"""

from __future__ import annotations

import random
import threading

import pytest
import support
from helpers_servers import (
    WAIT_S,
    ServerUnderTest,
    connect,
    echo_round_trips,
    random_payloads,
    read_to_eof,
    receive_exactly,
    run_concurrently,
    wait_until,
)

from winiocp.connections import CloseReason
from winiocp.constants import TcpState
from winiocp.servers import EchoHandler
from winiocp.tcptable import count_state

CLIENTS = 50
MESSAGES = 6


@pytest.mark.parametrize(("workers", "zero_byte_reads"),
                         [(2, False), (4, False), (3, True)],
                         ids=["2-workers", "4-workers", "3-workers-zero-byte-reads"])
def test_concurrent_clients_get_every_byte_back(workers: int, zero_byte_reads: bool) -> None:
    rng = random.Random(workers * 1000 + zero_byte_reads)
    sessions = [random_payloads(rng, rng.randint(1, MESSAGES)) for _ in range(CLIENTS)]
    total = sum(len(payload) for payloads in sessions for payload in payloads)
    with ServerUnderTest(EchoHandler, workers=workers, zero_byte_reads=zero_byte_reads) as server:
        verified: list[int] = []
        run_concurrently(lambda payloads: verified.append(
            echo_round_trips(server.address, payloads)), sessions)
        assert sum(verified) == total

        # The clients closed first: the server is the passive closer of every connection.
        server.wait_idle()
        assert count_state(TcpState.MIB_TCP_STATE_TIME_WAIT, server.port_number) == 0
        assert server.closed(CloseReason.GRACEFUL) == CLIENTS
        summary = server.stop()
    assert summary.connections == CLIENTS
    assert summary.bytes_received == summary.bytes_sent == total
    assert summary.forced_closes == 0
    assert summary.accept_failures == 0


class WaitingClient:
    """A client that has sent payloads and, once the server stopped, reads what is left."""

    def __init__(self, address: tuple[str, int], payloads: list[bytes]) -> None:
        self.payloads = payloads
        self.sock = connect(address)
        self.received = b""
        self.error: BaseException | None = None

    @property
    def sent(self) -> bytes:
        return b"".join(self.payloads)

    def read_rest(self, close_after_eof: bool) -> None:
        try:
            self.received += read_to_eof(self.sock)
        except OSError as exc:
            self.error = exc
        if close_after_eof:
            self.sock.close()


def open_clients(server: ServerUnderTest, count: int, seed: int) -> list[WaitingClient]:
    """``count`` connections, each with its payloads sent and (for half of them) echoed
    already; wait until the server has received every byte, so that stop() finds data only
    in flight towards the clients."""
    rng = random.Random(seed)
    clients = [WaitingClient(server.address, random_payloads(rng, 3)) for _ in range(count)]
    for index, client in enumerate(clients):
        client.sock.sendall(client.sent)
        if index % 2:  # read the echo now: this connection is idle when stop() comes
            client.received = receive_exactly(client.sock, len(client.sent))
    total = sum(len(client.sent) for client in clients)
    manager = server.server.manager
    assert wait_until(lambda: sum(c.bytes_received for c in list(manager.live)) == total), \
        "the server did not receive every byte"
    return clients


@pytest.mark.parametrize("clients_close", [True, False],
                         ids=["clients-close-on-eof", "clients-hold-open"])
def test_stop_closes_open_connections_without_losing_data(clients_close: bool) -> None:
    """stop() with 20 connections open (half with echoes still in flight): every client reads
    all its echoed bytes and then EOF. Clients that never close their side are force-closed at
    the close deadline, after they got everything."""
    count = 20
    with ServerUnderTest(EchoHandler, workers=2, close_timeout=1.0) as server:
        clients = open_clients(server, count, seed=7)
        readers = [threading.Thread(target=client.read_rest, args=(clients_close,), daemon=True)
                   for client in clients]
        for reader in readers:
            reader.start()
        summary = server.stop(timeout=WAIT_S)
        for reader in readers:
            reader.join(WAIT_S)
            assert not reader.is_alive(), "a client saw no EOF"
    try:
        for client in clients:
            assert client.error is None, client.error
            assert client.received == client.sent
    finally:
        for client in clients:
            client.sock.close()
    total = sum(len(client.sent) for client in clients)
    assert summary.connections == count
    assert summary.bytes_received == summary.bytes_sent == total
    assert summary.accept_failures == 0
    assert summary.forced_closes == (0 if clients_close else count)
    closed = server.closed(CloseReason.GRACEFUL)
    assert closed == (count if clients_close else 0)


@support.wine_deviation("Linux enters TIME_WAIT as soon as the peer's FIN follows ours, "
                        "before the SO_LINGER {1, 0} close can turn it into a reset")
def test_stop_leaves_no_time_wait_when_the_server_closed_first() -> None:
    """stop() makes the server the active closer; once the client's FIN has come back, the
    socket is closed with a reset (rule 5), so nothing stays in TIME_WAIT on its port."""
    with ServerUnderTest(EchoHandler, workers=2) as server:
        clients = open_clients(server, 5, seed=11)
        readers = [threading.Thread(target=client.read_rest, args=(True,), daemon=True)
                   for client in clients]
        for reader in readers:
            reader.start()
        server.stop()
        for reader in readers:
            reader.join(WAIT_S)
    assert all(client.received == client.sent for client in clients)
    assert count_state(TcpState.MIB_TCP_STATE_TIME_WAIT, server.port_number) == 0


def test_stop_while_received_data_is_not_yet_handled() -> None:
    """Data a client sent before stop(), whose completion is still queued on the port when
    stop() closes the connections, must not make the handler fail.

    Made deterministic by running no worker thread: the receive completion is then dispatched
    by ``stop()`` itself (in ``close_all``, after it called ``close()``), which is exactly
    what happens when it is still queued as the workers leave.
    """
    message = b"sent before stop()"
    with ServerUnderTest(EchoHandler, workers=0, close_timeout=1.0) as server:
        manager = server.server.manager
        client = WaitingClient(server.address, [message])
        assert wait_until(lambda: manager.run_once(0.05) and manager.stats.accepted == 1)
        client.sock.sendall(client.sent)
        reader = threading.Thread(target=client.read_rest, args=(True,), daemon=True)
        reader.start()
        try:
            server.stop()  # fails: a handler error, and the connection was aborted
        finally:
            reader.join(WAIT_S)
    assert manager.stats.closed_by_reason[CloseReason.ABORTED] == 0
    assert client.error is None, client.error  # EOF, not a reset
    assert message.startswith(client.received)
