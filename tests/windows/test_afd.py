"""AFD polls (winiocp.afd) and the level-triggered watches built on them (winiocp.readiness).

The request's layout is in no SDK header, so the first test pins it to the one every user of
the driver agrees on. The rest drive real sockets on loopback: a poll completes on the port
like any operation, with the events that held; cancelling keeps its memory owned until the
cancelled completion is dequeued; a watch reports level-triggered readiness, never an event
of a socket to a watch made after that socket's was removed, and many sockets at once report
exactly the ready ones.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from winiocp.afd import AfdDevice, AfdPollOperation, base_socket
from winiocp.constants import AfdPollEvents
from winiocp.errors import Failure, OperationPendingError
from winiocp.port import CompletionPort, Outcome
from winiocp.raw import ffi
from winiocp.readiness import EVENT_READ, EVENT_WRITE, PollSet, Watch

from support import wine_deviation

WAIT = 10.0
RECEIVE = AfdPollEvents.AFD_POLL_RECEIVE
SEND = AfdPollEvents.AFD_POLL_SEND


@pytest.fixture
def port() -> Iterator[CompletionPort]:
    with CompletionPort() as port:
        yield port


@pytest.fixture
def device(port: CompletionPort) -> Iterator[AfdDevice]:
    device = AfdDevice.open()
    port.associate(device)
    yield device
    device.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_the_poll_request_has_the_drivers_layout() -> None:
    assert ffi.sizeof("AFD_POLL_INFO") == 32
    assert [ffi.offsetof("AFD_POLL_INFO", f) for f in ("Timeout", "NumberOfHandles",
                                                        "Exclusive", "Handles")] == [0, 8, 12, 16]
    assert [ffi.offsetof("AFD_POLL_HANDLE_INFO", f) for f in ("Handle", "Events",
                                                               "Status")] == [0, 8, 12]


def test_a_poll_completes_on_the_port_when_data_arrives(
        port: CompletionPort, device: AfdDevice, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    operation = device.poll(base_socket(a.fileno()), RECEIVE)
    assert operation.pending
    assert port.get_many(0.2) == []  # nothing to read yet: the poll waits
    b.send(b"x")
    completion = port.get(WAIT)
    assert completion.operation is operation and completion.outcome is Outcome.COMPLETED
    assert operation.events & RECEIVE
    assert not operation.pending


def test_a_poll_of_a_ready_socket_completes_at_once_and_can_be_rearmed(
        port: CompletionPort, device: AfdDevice, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    operation = device.poll(base_socket(a.fileno()), SEND)
    with pytest.raises(OperationPendingError):
        device.poll(base_socket(a.fileno()), SEND, operation=operation)
    assert port.get(WAIT).operation is operation and operation.events & SEND
    again = device.poll(base_socket(a.fileno()), SEND, operation=operation)
    assert again is operation
    assert port.get(WAIT).operation is operation and operation.events & SEND


def test_a_cancelled_poll_stays_owned_until_its_completion_is_dequeued(
        port: CompletionPort, device: AfdDevice, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    operation = device.poll(base_socket(a.fileno()), RECEIVE)
    address = operation.address
    assert device.cancel(operation)
    del operation
    gc.collect()
    # The kernel may still write the request: the port's registry keeps it alive.
    assert [op.address for op in port.pending_operations()] == [address]
    completion = port.get(WAIT)
    assert completion.operation is not None and completion.operation.address == address
    assert completion.operation.failure is Failure.CANCELLED
    assert port.pending_count == 0


def test_a_socket_closed_under_its_poll_ends_it_with_local_close(
        port: CompletionPort, device: AfdDevice) -> None:
    a, b = socket.socketpair()
    operation = device.poll(base_socket(a.fileno()),
                            RECEIVE | AfdPollEvents.AFD_POLL_LOCAL_CLOSE)
    a.close()
    completion = port.get(WAIT)
    b.close()
    assert completion.operation is operation
    assert operation.events & AfdPollEvents.AFD_POLL_LOCAL_CLOSE or operation.error


def test_bad_input_gets_a_clear_exception(device: AfdDevice,
                                          pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    with pytest.raises(TypeError):
        base_socket("3")  # type: ignore[arg-type]
    with pytest.raises(OSError):
        device.poll(123456, RECEIVE)  # not a socket: DeviceIoControl refuses the handle
    with pytest.raises(ValueError):
        device.poll(base_socket(a.fileno()), 0)
    with pytest.raises(ValueError):
        device.poll(base_socket(a.fileno()), 1 << 20)
    with pytest.raises(TypeError):
        device.poll(None, RECEIVE)  # type: ignore[arg-type]
    other = AfdPollOperation(AfdDevice.open())
    try:
        with pytest.raises(ValueError):
            device.poll(base_socket(a.fileno()), RECEIVE, operation=other)
    finally:
        other.device.close()


@wine_deviation("WSAIoctl(SIO_BASE_HANDLE) on a value that is no socket returns the value "
                "itself; Windows fails it with WSAENOTSOCK (WSAIoctl's documented errors)")
def test_the_base_socket_of_a_value_that_is_no_socket_is_refused() -> None:
    with pytest.raises(OSError):
        base_socket(123456)


# -- PollSet ------------------------------------------------------------------------------------

@pytest.fixture
def polls(port: CompletionPort) -> Iterator[PollSet]:
    polls = PollSet(port)
    yield polls
    while port.pending_count:  # the cancelled polls' completions: nothing is left owed
        port.get_many(WAIT)

def turn(port: CompletionPort, polls: PollSet, timeout: float = WAIT) -> list[tuple[Watch, int]]:
    """One wait as a selector makes it: arm, dequeue, route; what became ready."""
    polls.arm()
    for completion in port.get_many(timeout):
        assert completion.operation is not None
        handler = completion.operation.context
        assert isinstance(handler, Watch)
        handler(completion)
    ready, polls.ready = polls.ready, []
    return ready


def test_a_watch_is_level_triggered(port: CompletionPort, polls: PollSet,
                                    pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    watch = polls.add(a.fileno(), EVENT_READ, "a")
    assert turn(port, polls, 0.2) == []
    b.send(b"data")
    assert turn(port, polls) == [(watch, EVENT_READ)]
    assert turn(port, polls) == [(watch, EVENT_READ)]  # still unread: reported again
    a.recv(100)
    assert turn(port, polls, 0.3) == []


def test_widening_a_watch_replaces_its_poll_without_two_in_flight(
        port: CompletionPort, polls: PollSet, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    watch = polls.add(a.fileno(), EVENT_READ)
    assert turn(port, polls, 0.2) == []
    polls.modify(watch, EVENT_READ | EVENT_WRITE)
    polls.arm()  # cancels the read poll; the wider one waits for its completion
    assert sum(op.owner is watch.operation.device for op in port.pending_operations()) == 1
    ready: list[tuple[Watch, int]] = []
    for _ in range(3):
        ready += turn(port, polls, 1.0)
        if ready:
            break
    assert ready == [(watch, EVENT_WRITE)]


def test_a_removed_watch_never_reports_and_its_value_reused_gets_only_its_own_events(
        port: CompletionPort, polls: PollSet) -> None:
    a, b = socket.socketpair()
    old = polls.add(a.fileno(), EVENT_READ, "old")
    polls.arm()
    b.send(b"for the old socket")  # its poll completes with data: a packet is queued
    value = a.fileno()
    polls.remove(old)
    a.close()
    b.close()
    # A new socket may get the old value; whether or not it does, the old poll's event
    # belongs to the removed watch and is dropped.
    c, d = socket.socketpair()
    try:
        new = polls.add(c.fileno(), EVENT_READ, "new")
        assert turn(port, polls, 0.5) == []
        d.send(b"for the new one")
        assert turn(port, polls) == [(new, EVENT_READ)]
        assert value  # the old value, for the reader of a failure
    finally:
        c.close()
        d.close()


def test_a_socket_closed_while_watched_reports_nothing_more(port: CompletionPort,
                                                           polls: PollSet) -> None:
    a, b = socket.socketpair()
    watch = polls.add(a.fileno(), EVENT_READ, is_open=lambda: a.fileno() != -1)
    assert turn(port, polls, 0.2) == []
    a.close()
    assert turn(port, polls, 1.0) == []
    assert not watch.live
    b.close()


def test_many_sockets_report_exactly_the_ready_ones(port: CompletionPort, polls: PollSet) -> None:
    pairs = [socket.socketpair() for _ in range(1500)]
    try:
        watches = [polls.add(x.fileno(), EVENT_READ, index) for index, (x, _) in enumerate(pairs)]
        assert turn(port, polls, 0.2) == []
        chosen = {0, 31, 32, 700, 1499}
        for index in chosen:
            pairs[index][1].send(b"!")
        seen: set[int] = set()
        while len(seen) < len(chosen):
            ready = turn(port, polls)
            assert ready, "a ready socket was not reported"
            seen |= {int(str(w.data)) for w, _ in ready}
        assert seen == chosen
        assert len({w.operation.device for w in watches}) == 1500 // PollSet.GROUP_SIZE + 1
    finally:
        for x, y in pairs:
            x.close()
            y.close()


# -- random sequences ----------------------------------------------------------------------------

SOCKETS = 4
step = st.one_of(
    st.tuples(st.just("add"), st.integers(0, SOCKETS - 1), st.sampled_from([1, 2, 3])),
    st.tuples(st.just("modify"), st.integers(0, SOCKETS - 1), st.sampled_from([1, 2, 3])),
    st.tuples(st.just("remove"), st.integers(0, SOCKETS - 1), st.just(0)),
    st.tuples(st.just("send"), st.integers(0, SOCKETS - 1), st.just(0)),
    st.tuples(st.just("read"), st.integers(0, SOCKETS - 1), st.just(0)),
    st.tuples(st.just("turn"), st.just(0), st.just(0)),
    st.tuples(st.just("replace"), st.integers(0, SOCKETS - 1), st.just(0)),
)


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=30))
def test_random_sequences_keep_one_poll_per_socket_and_every_poll_owned(
        steps: list[tuple[str, int, int]]) -> None:
    """Watches added, changed and removed, sockets sent to, read, closed and replaced (their
    values free for reuse), in any order: never two polls of one watch in flight, never an
    event for a removed watch, and after closing the set every poll's completion is dequeued
    (none left to the port's orphan list)."""
    with CompletionPort() as port:
        polls = PollSet(port)
        pairs = [socket.socketpair() for _ in range(SOCKETS)]
        for a, _ in pairs:
            a.setblocking(False)
        watches: dict[int, Watch] = {}
        removed: list[Watch] = []
        try:
            for action, index, interest in steps:
                a, b = pairs[index]
                watch = watches.get(index)
                if action == "add" and watch is None:
                    watches[index] = polls.add(a.fileno(), interest, index)
                elif action == "modify" and watch is not None:
                    polls.modify(watch, interest)
                elif action in ("remove", "replace") and watch is not None:
                    polls.remove(watches.pop(index))
                    removed.append(watch)
                if action == "replace" and watch is not None:
                    a.close()
                    b.close()
                    pairs[index] = socket.socketpair()
                    pairs[index][0].setblocking(False)
                elif action == "send":
                    b.send(b"x")
                elif action == "read":
                    with contextlib.suppress(BlockingIOError):
                        a.recv(100)
                elif action == "turn":
                    for ready_watch, _ in turn(port, polls, 0.02):
                        assert ready_watch not in removed
                in_flight = collections.Counter(id(op.context) for op in port.pending_operations()
                                                if isinstance(op.context, Watch)
                                                and not op.context.removed)
                assert max(in_flight.values(), default=0) <= 1
        finally:
            polls.close()
            deadline = time.monotonic() + WAIT
            while port.pending_count and time.monotonic() < deadline:
                for completion in port.get_many(0.1):
                    assert completion.operation is not None
                    handler = completion.operation.context
                    if isinstance(handler, Watch):
                        handler(completion)
            assert port.pending_count == 0
            for a, b in pairs:
                a.close()
                b.close()
