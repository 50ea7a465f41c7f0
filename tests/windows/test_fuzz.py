"""Property-based: random sequences of operations on real connected sockets.

Hypothesis drives receives, sends, cancels, our closes and the peers' sends, graceful closes
and resets, with dequeues in between (``get`` and ``get_many``), on two real connections per
example. Whatever the order, the properties hold:

* nothing crashes, and every call either issues an operation or raises a documented error;
* every completion carries an operation issued on the socket its key names (no misrouting),
  exactly once (none duplicated), with an outcome that the connection's state allows;
* the bytes received on a connection are a prefix of what its peer sent (none invented,
  none reordered);
* once everything is closed and drained, no operation is left pending.
"""

from __future__ import annotations

import itertools
import socket
import time
from dataclasses import dataclass, field

import pytest
from helpers_net import WAIT, Mode, Network, reset_peer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from winiocp import (
    ClosedHandleError,
    Completion,
    Failure,
    Operation,
    OpState,
    Outcome,
    RecvOperation,
    SendOperation,
    Socket,
)

pytestmark = pytest.mark.timeout(120)

CONNECTIONS = 2
POST_KEY = 0  # associate() never hands out key 0: posted packets cannot pass for a socket's
_examples = itertools.count()

KINDS = ("recv", "recv", "send", "cancel_one", "cancel_all", "peer_send", "peer_send",
         "peer_close", "peer_reset", "close", "post", "drain_get", "drain_get_many")


@dataclass(frozen=True)
class Action:
    kind: str
    conn: int
    size: int
    data: bytes


actions = st.lists(
    st.builds(Action, kind=st.sampled_from(KINDS), conn=st.integers(0, CONNECTIONS - 1),
              size=st.integers(0, 32), data=st.binary(min_size=1, max_size=16)),
    min_size=3, max_size=40,
)


@dataclass
class Conn:
    index: int
    sock: Socket
    peer: socket.socket
    #: Operations issued and not yet dequeued, by id (each kept alive here too).
    issued: dict[int, Operation] = field(default_factory=dict)
    peer_sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    our_closed: bool = False
    peer_gone: bool = False  # the peer closed, gracefully or with a reset

    @property
    def broken(self) -> bool:
        return self.our_closed or self.peer_gone


class Model:
    """The example's connections and what they may legitimately report."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.example = next(_examples)
        self.conns = []
        for index in range(CONNECTIONS):
            sock, peer = network.pair()
            peer.settimeout(1.0)
            self.conns.append(Conn(index, sock, peer))
        self.by_key = {conn.sock.key: conn for conn in self.conns}
        self.posted = 0
        self.posted_seen = 0
        for conn in self.conns:  # rule 1: a receive is always pending on a connection
            self.track(conn, conn.sock.recv(32))

    def track(self, conn: Conn, operation: Operation) -> None:
        operation.context = (self.example, conn.index)
        conn.issued[id(operation)] = operation

    # -- actions -------------------------------------------------------------------------------

    def apply(self, action: Action) -> None:
        conn = self.conns[action.conn]
        kind = action.kind
        if kind in ("recv", "send"):
            self.issue(conn, action)
        elif kind == "cancel_one":
            pending = [op for op in conn.issued.values() if op.pending]
            if pending and not conn.our_closed:
                conn.sock.cancel(pending[0])  # True, or False if it already finished
        elif kind == "cancel_all":
            if conn.our_closed:
                with pytest.raises(ClosedHandleError):
                    conn.sock.cancel()
            else:
                conn.sock.cancel()
        elif kind == "peer_send":
            self.peer_send(conn, action.data)
        elif kind in ("peer_close", "peer_reset"):
            if not conn.peer_gone:
                if kind == "peer_close":
                    conn.peer.close()
                else:
                    reset_peer(conn.peer)
                conn.peer_gone = True
        elif kind == "close":
            conn.sock.close()
            conn.our_closed = True
        elif kind == "post":
            self.network.port.post(POST_KEY, action.size)
            self.posted += 1
        else:
            self.drain_quick("get" if kind == "drain_get" else "get_many")

    def issue(self, conn: Conn, action: Action, reuse: RecvOperation | None = None) -> None:
        before = self.network.port.pending_count
        try:
            if action.kind == "recv":
                operation: Operation = conn.sock.recv(action.size, reuse=reuse)
            else:
                operation = conn.sock.send(action.data)
        except ClosedHandleError:
            event("call on our closed socket")
            assert conn.our_closed
        except OSError as error:  # rule 10: a call on a broken connection may fail at once
            event(f"{action.kind} failed at once")
            assert conn.peer_gone, f"{action} failed on a healthy connection: {error!r}"
        else:
            assert reuse is None or operation is reuse
            self.track(conn, operation)
            return
        assert self.network.port.pending_count == before  # a failed call registers nothing

    def peer_send(self, conn: Conn, data: bytes) -> None:
        if conn.peer_gone:
            return
        try:
            conn.peer.sendall(data)
        except OSError as error:
            assert conn.our_closed, f"the peer could not send on a healthy connection: {error!r}"
            return
        conn.peer_sent += data

    # -- completions ----------------------------------------------------------------------------

    def drain_quick(self, mode: Mode) -> None:
        port = self.network.port
        while True:
            if mode == "get":
                completion = port.get(0.02)
                if completion.outcome is Outcome.TIMED_OUT:
                    return
                self.check(completion)
            else:
                batch = port.get_many(0.02)
                if not batch:
                    return
                for completion in batch:
                    self.check(completion)

    def check(self, completion: Completion) -> None:
        failure = f"/{completion.failure.name}" if completion.failure else ""
        event(f"completion {completion.outcome.name}{failure}")
        if completion.outcome is Outcome.POSTED:
            assert completion.key == POST_KEY and completion.operation is None
            self.posted_seen += 1
            return
        operation = completion.operation
        assert operation is not None, f"a completion of no operation of ours: {completion!r}"
        conn = self.by_key.get(completion.key)
        assert conn is not None, f"unknown key: {completion!r}"
        assert operation.owner is conn.sock, f"misrouted: {completion!r}"
        assert operation.context == (self.example, conn.index), f"misrouted: {completion!r}"
        assert conn.issued.pop(id(operation), None) is operation, f"twice: {completion!r}"
        assert operation.state is OpState.DONE
        assert completion.overlapped == operation.address
        if completion.outcome is Outcome.FAILED:
            self.check_failure(conn, operation, completion)
        elif completion.outcome is Outcome.PEER_CLOSED:
            assert isinstance(operation, RecvOperation) and conn.peer_gone, completion
        else:
            assert completion.outcome is Outcome.COMPLETED, completion
            if isinstance(operation, RecvOperation):
                conn.received += operation.data
                assert conn.peer_sent.startswith(conn.received), "bytes invented or reordered"
                if completion.bytes_transferred:  # keep one receive pending, same OVERLAPPED
                    self.issue(conn, Action("recv", conn.index, 32, b""), reuse=operation)
            else:
                assert isinstance(operation, SendOperation)
                assert completion.bytes_transferred == len(b"".join(operation.buffers))

    @staticmethod
    def check_failure(conn: Conn, operation: Operation, completion: Completion) -> None:
        failure = completion.failure
        assert completion.error != 0 and failure is not None
        if failure is Failure.CANCELLED:
            assert operation.cancel_requested, completion
        elif failure is Failure.RESET:
            assert conn.broken, f"a reset on a healthy connection: {completion!r}"
        else:  # CLOSED, or Wine's ERROR_HANDLES_CLOSED (OTHER): only after our own close
            assert failure in (Failure.CLOSED, Failure.OTHER), completion
            assert conn.our_closed, completion

    def finish(self) -> None:
        """Close everything, drain, and check that nothing is left pending."""
        for conn in self.conns:
            if not conn.peer_gone:
                conn.peer.close()
                conn.peer_gone = True
            conn.sock.close()
            conn.our_closed = True
        port = self.network.port
        deadline = time.monotonic() + WAIT
        while (port.pending_count or self.posted_seen < self.posted) and \
                time.monotonic() < deadline:
            completion = port.get(0.05)
            if completion.outcome is not Outcome.TIMED_OUT:
                self.check(completion)
        assert port.pending_count == 0, port.pending_operations()
        assert all(not conn.issued for conn in self.conns), [c.issued for c in self.conns]
        assert self.posted_seen == self.posted


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_random_operations_keep_the_port_consistent(steps: list[Action]) -> None:
    with Network() as network:
        model = Model(network)
        for step in steps:
            model.apply(step)
        model.finish()
