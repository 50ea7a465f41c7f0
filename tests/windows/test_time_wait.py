"""TIME_WAIT under many short connections (rule 5), read from the OS's own TCP table.

Each scenario runs thousands of short request/response connections against a
``ConnectionManager`` and then counts, through ``winiocp.tcptable`` (GetTcpTable2), the
TIME_WAIT entries whose local port is the server's port:

(a) the peer closes first: the server is the passive closer and never enters TIME_WAIT;
(b) the server closes first with the orderly sequence: every byte is delivered, and with
    ``time_wait_avoidance`` the final close is abortive so Windows leaves no TIME_WAIT. Linux,
    and so Wine, enters TIME_WAIT as soon as the peer's FIN arrives after ours, before the
    close: that assertion is a strict Wine-only xfail. Without the avoidance TIME_WAIT entries
    appear on every platform;
(c) an abortive close right after the last send, skipping the orderly exchange, makes the peer
    see a reset (or lose data): why the library never does that by itself.

Measured under Wine on the development machine (8 client threads): 2,000 connections take
4-7 s per scenario, and reading the TCP table 1-6 s more (Wine's GetTcpTable2 slows down with
thousands of rows); the whole module about 60 s. TIME_WAIT on the server port: (a) 0; (b) 2,000
with the avoidance (the Wine deviation) and 2,000 without; (c) 0.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import support
from helpers_conn import (
    BULK_WAIT,
    WAIT,
    CloseReason,
    Exchange,
    PeerRead,
    Server,
    closed_states,
    connect,
    digest,
    payload,
    read_to_end,
    reset_via,
    time_wait_on,
)

#: Short connections per scenario.
CONNECTIONS = 2000
#: Connections for (c), which probes each peer once more after it read.
ABORT_CONNECTIONS = 300
CLIENT_THREADS = 8
REQUEST = b"GET /short HTTP/1.0\r\n\r\n" + b"." * 77
RESPONSE = payload(8192)


@dataclass
class Outcome:
    """One scenario: what the clients saw and what the server's port was left with."""

    reads: list[PeerRead]
    resets: list[str | None]
    time_wait: int
    closed: dict[CloseReason, int]
    seconds: float


def client_reads_response_then_closes(address: tuple[str, int]) -> tuple[PeerRead, None]:
    """(a): request, read exactly the response, close first (the server then closes)."""
    with connect(address) as peer:
        peer.sendall(REQUEST)
        read = read_to_end(peer, WAIT, limit=len(RESPONSE))
    return read, None


def client_reads_until_eof_then_closes(address: tuple[str, int]) -> tuple[PeerRead, None]:
    """(b): request, read until the server's FIN, then close (our FIN comes second)."""
    with connect(address) as peer:
        peer.sendall(REQUEST)
        read = read_to_end(peer, WAIT)
    return read, None


def client_reads_until_eof_then_probes(address: tuple[str, int]) -> tuple[PeerRead, str | None]:
    """(c): as (b), then ask whether the stream ended with a reset."""
    with connect(address) as peer:
        peer.sendall(REQUEST)
        read = read_to_end(peer, WAIT)
        return read, reset_via(peer, read)


def run_scenario(client: object, count: int, *, close_after: bool = False,
                 abort_after: bool = False, time_wait_avoidance: bool = True) -> Outcome:
    assert callable(client)
    with Server(lambda: Exchange(len(REQUEST), RESPONSE, close_after=close_after,
                                 abort_after=abort_after),
                accepts=16, time_wait_avoidance=time_wait_avoidance) as server:
        server.serve()
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENT_THREADS) as executor:
            results = list(executor.map(lambda _: client(server.address), range(count),
                                        timeout=BULK_WAIT * 2))
        server.wait(lambda: server.manager.stats.connections_closed == count, BULK_WAIT,
                    f"the server to close all {count} connections")
        seconds = time.monotonic() - started
        # Counted while the server still listens: TIME_WAIT lasts far longer than this.
        time_wait = time_wait_on(server.address[1])
        closed = closed_states(server.manager)
        assert server.manager.stats.accepted == count
        assert server.manager.stats.handler_errors == 0
        server.assert_drained()
    outcome = Outcome([read for read, _ in results], [via for _, via in results], time_wait,
                      closed, seconds)
    print(f"\n{count} connections, close_after={close_after} abort_after={abort_after} "
          f"avoidance={time_wait_avoidance}: {seconds:.1f} s, TIME_WAIT on the server port: "
          f"{time_wait}, closed: {closed}")
    return outcome


def assert_every_byte_delivered(outcome: Outcome, ending: str = "eof") -> None:
    seen = Counter((read.received, read.sha256, read.ending) for read in outcome.reads)
    assert seen == {(len(RESPONSE), digest(RESPONSE), ending): len(outcome.reads)}


# -- (a) the peer closes first ---------------------------------------------------------------


def test_peer_closes_first_leaves_no_time_wait_on_the_server() -> None:
    outcome = run_scenario(client_reads_response_then_closes, CONNECTIONS)
    assert_every_byte_delivered(outcome, ending="eof")
    assert outcome.closed == {CloseReason.GRACEFUL: CONNECTIONS}
    assert outcome.time_wait == 0


# -- (b) the server closes first ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server_first() -> Outcome:
    return run_scenario(client_reads_until_eof_then_closes, CONNECTIONS, close_after=True)


@pytest.fixture(scope="module")
def server_first_unprotected() -> Outcome:
    return run_scenario(client_reads_until_eof_then_closes, CONNECTIONS, close_after=True,
                        time_wait_avoidance=False)


def test_server_closes_first_delivers_every_byte(server_first: Outcome) -> None:
    assert_every_byte_delivered(server_first)
    assert server_first.closed == {CloseReason.GRACEFUL: CONNECTIONS}


@support.wine_deviation("Linux enters TIME_WAIT when the peer's FIN arrives after ours; "
                        "Windows keeps the connection on the socket until closesocket, so the "
                        "abortive close removes it")
def test_server_closes_first_leaves_no_time_wait_with_the_avoidance(server_first: Outcome
                                                                    ) -> None:
    assert server_first.time_wait == 0, (
        f"{server_first.time_wait} TIME_WAIT entries on the server port after "
        f"{CONNECTIONS} orderly closes with time_wait_avoidance")


def test_server_closes_first_without_the_avoidance_leaves_time_wait(
        server_first_unprotected: Outcome) -> None:
    assert_every_byte_delivered(server_first_unprotected)
    assert server_first_unprotected.closed == {CloseReason.GRACEFUL: CONNECTIONS}
    assert server_first_unprotected.time_wait > 0


# -- (c) an abortive close right after the last send -------------------------------------------


def test_abortive_close_right_after_the_last_send_resets_the_peer() -> None:
    outcome = run_scenario(client_reads_until_eof_then_probes, ABORT_CONNECTIONS,
                           abort_after=True)
    assert outcome.closed == {CloseReason.ABORTED: ABORT_CONNECTIONS}
    for read, via in zip(outcome.reads, outcome.resets):
        lost = read.received < len(RESPONSE) or read.sha256 != digest(RESPONSE)
        assert via is not None or lost, (
            "the peer got the whole response and a clean end of stream after an abortive close")
    assert outcome.time_wait == 0
    print(f"resets seen via: {Counter(outcome.resets)}; responses cut short: "
          f"{sum(1 for read in outcome.reads if read.received < len(RESPONSE))}")


# -- a half-closing peer -----------------------------------------------------------------------


@pytest.mark.parametrize("avoidance", [True, False])
def test_half_closing_peer_gets_the_whole_response(avoidance: bool) -> None:
    """A client that sends its request and shuts down its sending side at once (as HTTP/1.0
    clients may), then reads. The peer's FIN came first, so the server is the passive closer
    and must close gracefully: no TIME_WAIT is at stake. A 256 KiB response fits the send
    buffer (its send completes at once) but not the peer's window, so part of it is still
    unsent when the peer's FIN is dequeued and the socket closed."""
    response = payload(256 * 1024)
    with Server(lambda: Exchange(len(REQUEST), response, close_after=True),
                time_wait_avoidance=avoidance) as server:
        server.serve()
        reads = []
        flags = []
        for _ in range(5):
            with connect(server.address) as peer:
                peer.sendall(REQUEST)
                peer.shutdown(socket.SHUT_WR)
                time.sleep(0.3)  # the peer reads late: the response waits in the buffers
                reads.append(read_to_end(peer, WAIT))
            connection = server.next_connection()
            server.wait(lambda: connection.close_reason is not None)
            flags.append(connection.we_closed_first)
        received = [read.received for read in reads]
        assert received == [len(response)] * 5, (
            f"bytes received {received} of {len(response)}; we_closed_first: {flags}")
        assert {read.sha256 for read in reads} == {digest(response)}
        assert {read.ending for read in reads} == {"eof"}
