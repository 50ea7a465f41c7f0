"""``CompletionPort`` itself: arguments, closing, association, and many threads on one port."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers_net import net  # noqa: F401 - a pytest fixture
from helpers_net import (
    WAIT,
    Network,
    assert_quiet,
    complete,
    dequeue,
    recv_exact,
)

from winiocp import (
    ClosedHandleError,
    Completion,
    CompletionPort,
    Operation,
    OpKind,
    Outcome,
    PortClosedError,
    RecvOperation,
    SendOperation,
    Socket,
)

pytestmark = pytest.mark.timeout(120)

MAX_KEY = (1 << 64) - 1
WORKERS = 4


# -- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [0, 1, 2, WORKERS, 64, 0xFFFFFFFF])
def test_concurrency_values_make_working_ports(concurrency: int) -> None:
    with CompletionPort(concurrency) as port:
        port.post(concurrency, 1)
        completion = port.get(WAIT)
        assert (completion.outcome, completion.key) == (Outcome.POSTED, concurrency)


@pytest.mark.parametrize("concurrency", [-1, 1 << 32, -(1 << 70)])
def test_bad_concurrency_raises(concurrency: int) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        CompletionPort(concurrency)


@pytest.mark.parametrize("batch_size", [0, -1, 0x10000])
def test_bad_batch_size_raises(batch_size: int) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        CompletionPort(batch_size=batch_size)


BAD_TIMEOUTS = [-1.0, -0.001, -1, math.nan, -math.inf]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
@pytest.mark.parametrize("call", ["get", "get_many"])
def test_bad_timeout_raises(call: str, timeout: float) -> None:
    with CompletionPort() as port:
        port.post(1)  # a packet is there: the check must come first, and not eat it
        dequeue_call: Callable[[float], object] = getattr(port, call)
        with pytest.raises(ValueError, match="timeout"):
            dequeue_call(timeout)
        assert port.get(0).outcome is Outcome.POSTED


def test_huge_timeout_is_clamped() -> None:
    with CompletionPort() as port:
        port.post(5)
        assert port.get(1e300).key == 5
        port.post(6)
        assert [c.key for c in port.get_many(1e300)] == [6]


@pytest.mark.parametrize("call", ["get", "get_many"])
def test_infinite_timeout_is_clamped(call: str) -> None:
    """float('inf') is >= 0: it waits as long as a finite wait can (it used to overflow)."""
    with CompletionPort() as port:
        port.post(5)
        dequeue_call: Callable[[float], object] = getattr(port, call)
        result = dequeue_call(math.inf)
        completion = result[0] if isinstance(result, list) else result
        assert isinstance(completion, Completion) and completion.key == 5


@pytest.mark.parametrize(("key", "count"), [(MAX_KEY + 1, 0), (-1, 0), (0, -1), (0, 1 << 32)])
def test_bad_post_arguments_raise(key: int, count: int) -> None:
    with CompletionPort() as port:
        with pytest.raises(ValueError):
            port.post(key, count)
        assert_quiet(port, 0.05)  # nothing was posted


@pytest.mark.parametrize("key", [MAX_KEY + 1, -1])
def test_bad_association_key_raises_and_changes_nothing(key: int) -> None:
    with CompletionPort() as port, Socket() as sock:
        with pytest.raises(ValueError, match="key"):
            port.associate(sock, key)
        assert sock.port is None
        assert port.associate(sock, MAX_KEY) == MAX_KEY == sock.key


def test_max_entries_range() -> None:
    with CompletionPort(batch_size=4) as port:
        for bad in (0, -1, 5):
            with pytest.raises(ValueError, match="max_entries"):
                port.get_many(0, max_entries=bad)
        for key in range(10):
            port.post(key)
        assert [c.key for c in port.get_many(WAIT)] == [0, 1, 2, 3]  # default: batch_size
        assert [c.key for c in port.get_many(WAIT, max_entries=1)] == [4]
        assert [c.key for c in port.get_many(WAIT, max_entries=4)] == [5, 6, 7, 8]
        assert [c.key for c in dequeue(port, 1, "get")] == [9]


# -- closing -------------------------------------------------------------------------------------


def test_close_is_idempotent() -> None:
    port = CompletionPort()
    assert not port.closed and "pending" in repr(port)
    port.close()
    assert port.closed and "closed" in repr(port)
    port.close()
    assert port.closed
    with pytest.raises(ClosedHandleError):
        port.handle  # noqa: B018


def test_context_manager_closes_even_on_error() -> None:
    with CompletionPort() as port:
        assert not port.closed
    assert port.closed
    with pytest.raises(KeyError), CompletionPort() as other:
        raise KeyError("boom")
    assert other.closed


def test_use_after_close() -> None:
    port = CompletionPort()
    port.post(1)  # a packet still queued when the port closes is gone with it
    port.close()
    start = time.monotonic()
    assert port.get(WAIT).outcome is Outcome.PORT_CLOSED
    assert port.get(None).outcome is Outcome.PORT_CLOSED
    assert time.monotonic() - start < 1.0  # no waiting on a closed port
    with pytest.raises(PortClosedError):
        port.get_many(WAIT)
    with pytest.raises(ClosedHandleError):
        port.post(1)
    with Socket() as sock, pytest.raises(ClosedHandleError):
        port.associate(sock)


# -- association ---------------------------------------------------------------------------------


def test_socket_cannot_join_two_ports(net: Network) -> None:
    sock, peer = net.pair()
    with CompletionPort() as other:
        with pytest.raises(ValueError, match="already associated"):
            other.associate(sock)
        with pytest.raises(ValueError, match="already associated"):
            net.port.associate(sock)  # nor the same port twice
        recv = sock.recv(10)  # still completes on its first port, and only there
        peer.sendall(b"first")
        assert complete(net.port, recv).operation is recv and recv.data == b"first"
        assert other.get(0.05).outcome is Outcome.TIMED_OUT


def test_association_keys_are_fresh_or_given(net: Network) -> None:
    """Default keys are never reused in the process (rule 6: they name connections, not
    recycled handle values); an explicit key comes back in the completions."""
    keys = set()
    for _ in range(5):
        with Socket() as sock:
            keys.add(net.port.associate(sock))
            assert sock.key in keys
    assert len(keys) == 5 and 0 not in keys
    with Socket() as sock, socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert net.port.associate(sock, 424242) == 424242
        connect = sock.connect(server.getsockname())
        completion = complete(net.port, connect)
        assert completion.outcome is Outcome.COMPLETED and completion.key == 424242


# -- many threads ----------------------------------------------------------------------------------


STOP = MAX_KEY


class WorkerPool:
    """Threads that dequeue from ``port`` with get() until a STOP packet each."""

    def __init__(self, port: CompletionPort, handle: Callable[[Completion], None],
                 workers: int = WORKERS) -> None:
        self.port = port
        self.handle = handle
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        try:
            while True:
                completion = self.port.get(WAIT)
                assert completion.outcome is not Outcome.TIMED_OUT, "a worker starved"
                if completion.outcome is Outcome.POSTED and completion.key == STOP:
                    return
                self.handle(completion)
        except BaseException as error:  # noqa: BLE001 - reported by stop()
            self.errors.append(error)

    def stop(self, timeout: float = 30.0) -> None:
        """Post one STOP per worker (after everything already queued) and join them."""
        for _ in self.threads:
            self.port.post(STOP)
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in self.threads), "a worker is stuck"
        assert not self.errors, self.errors


def test_four_workers_share_100000_posted_completions() -> None:
    total = 100_000
    seen: list[list[tuple[int, int]]] = [[] for _ in range(WORKERS)]
    by_thread: dict[int, list[tuple[int, int]]] = {}
    lock = threading.Lock()

    def handle(completion: Completion) -> None:
        assert completion.outcome is Outcome.POSTED and completion.operation is None
        mine = by_thread.get(threading.get_ident())
        if mine is None:
            with lock:
                mine = by_thread[threading.get_ident()] = seen[len(by_thread)]
        mine.append((completion.key, completion.bytes_transferred))

    with CompletionPort() as port:
        pool = WorkerPool(port, handle)
        for key in range(1, total + 1):
            port.post(key, key * 7 & 0xFFFFFFFF)
        pool.stop(timeout=60.0)
        assert_quiet(port, 0.05)
    everything = [entry for entries in seen for entry in entries]
    assert len(everything) == total
    assert sorted(everything) == [(key, key * 7 & 0xFFFFFFFF) for key in range(1, total + 1)]
    # Each worker dequeues in FIFO order: its keys only grow.
    for entries in seen:
        keys = [key for key, _ in entries]
        assert keys == sorted(keys)
    assert sum(1 for entries in seen if entries) >= 2, "one worker did all the work"


def test_four_workers_share_real_socket_traffic(net: Network) -> None:
    """Peers send numbered messages and read back the echo; 4 workers receive (one receive
    pending per connection, re-armed with reuse=), echo with fresh sends, and count."""
    connections, messages, size = 8, 250, 48
    pairs = [net.pair() for _ in range(connections)]
    by_key = {sock.key: index for index, (sock, _) in enumerate(pairs)}
    received: list[bytearray] = [bytearray() for _ in pairs]
    closed = [threading.Event() for _ in pairs]
    sends: list[Operation] = []
    sends_done: Counter[int] = Counter()
    workers_used: Counter[int] = Counter()
    lock = threading.Lock()

    def expected(index: int) -> bytes:
        return b"".join(f"{index:03d}:{n:05d}|".encode().ljust(size, b".")
                        for n in range(messages))

    def handle(completion: Completion) -> None:
        workers_used[threading.get_ident()] += 1
        operation = completion.operation
        index = by_key[completion.key]
        sock = pairs[index][0]
        assert operation is not None and operation.owner is sock, completion
        if completion.outcome is Outcome.PEER_CLOSED:
            closed[index].set()
            return
        assert completion.outcome is Outcome.COMPLETED, completion
        if isinstance(operation, SendOperation):
            with lock:
                sends_done[id(operation)] += 1
            assert completion.bytes_transferred == len(b"".join(operation.buffers))
            return
        assert isinstance(operation, RecvOperation) and operation.kind is OpKind.RECV
        data = operation.data
        received[index] += data
        send = sock.send(data)
        with lock:
            sends.append(send)
        sock.recv(256, reuse=operation)  # rule 11: the same OVERLAPPED, serially

    def peer(index: int) -> bytes:
        client = pairs[index][1]
        payload = expected(index)
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        return recv_exact(client, len(payload), timeout=30.0)

    pool = WorkerPool(net.port, handle)
    for sock, _ in pairs:
        sock.recv(256)
    with ThreadPoolExecutor(connections) as executor:
        echoes = list(executor.map(peer, range(connections)))
    for index in range(connections):
        assert closed[index].wait(WAIT), f"connection {index} saw no graceful close"
        assert bytes(received[index]) == expected(index)
        assert echoes[index] == expected(index)
    deadline = time.monotonic() + WAIT
    while net.port.pending_count and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.stop()
    assert net.port.pending_count == 0
    assert len({id(send) for send in sends}) == len(sends)
    assert sorted(sends_done) == sorted(id(send) for send in sends)
    assert set(sends_done.values()) == {1}  # every send completed once: none lost, none twice
    # every byte came in several receives per connection, shared by the workers
    assert len(sends) >= 2 * connections
    assert sum(workers_used.values()) == 2 * len(sends) + connections


def test_waiting_workers_release_the_gil() -> None:
    """4 threads blocked in get(): the main thread keeps running Python code meanwhile."""

    def count_for(seconds: float) -> int:
        counter = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            counter += 1
        return counter

    baseline = count_for(0.3)
    with CompletionPort() as port:
        results: list[Completion] = []
        threads = [threading.Thread(target=lambda: results.append(port.get(10.0)), daemon=True)
                   for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        time.sleep(0.1)
        counted = count_for(0.3)
        assert all(thread.is_alive() for thread in threads) and not results, "not waiting"
        assert counted > baseline // 10, (counted, baseline)
        for key in range(WORKERS):
            port.post(key)
        for thread in threads:
            thread.join(WAIT)
        assert sorted(c.key for c in results) == list(range(WORKERS))
        assert all(c.outcome is Outcome.POSTED for c in results)
