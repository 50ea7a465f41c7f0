"""Shared helpers for the completion-port tests: real sockets on 127.0.0.1, bounded waits.

Everything here drives the real kernel32/ws2_32 (natively or under Wine) through the winiocp
wrappers; the peers are stdlib ``socket`` objects. Every wait has a time-out, so a lost
completion fails a test instead of hanging it.

Fixtures (import them by name into a test module): ``port``, ``listener``, ``net``.
``Network`` is the same thing as a context manager, for code that cannot use function-scoped
fixtures (hypothesis tests).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Literal

import pytest

from winiocp import AcceptOperation, Completion, CompletionPort, Operation, Outcome, Socket
from winiocp.constants import NtStatus

LOOPBACK = "127.0.0.1"
#: Upper bound of a wait for a completion that must come.
WAIT = 5.0
#: How long to listen for a completion that must NOT come.
QUIET = 0.2

Mode = Literal["get", "get_many"]
#: The two ways to dequeue: GetQueuedCompletionStatus and GetQueuedCompletionStatusEx.
MODES: tuple[Mode, ...] = ("get", "get_many")


# -- connections -------------------------------------------------------------------------------


def reset_peer(peer: socket.socket) -> None:
    """Close ``peer`` abortively: SO_LINGER {1, 0} makes closesocket send RST (rule 5)."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("hh", 1, 0))
    peer.close()


def closed_port_address() -> tuple[str, int]:
    """A loopback address nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        address: tuple[str, int] = probe.getsockname()
    return address


def accepted_pair(port: CompletionPort, listener: Socket) -> tuple[Socket, socket.socket]:
    """Accept one connection with AcceptEx: (our accepted Socket, associated; stdlib client).

    The accept's completion must be the next packet on ``port``: call this while nothing else
    can complete on it.
    """
    host, port_number = listener.getsockname()[:2]
    accept = listener.accept()
    client = socket.create_connection((host, port_number), timeout=WAIT)
    try:
        completion = port.get(WAIT)
        assert completion.outcome is Outcome.COMPLETED, completion
        assert completion.operation is accept, completion
        assert isinstance(completion.operation, AcceptOperation)
        assert accept.context_updated
        server = accept.accepted
        port.associate(server)
    except BaseException:
        client.close()
        accept.accepted.close()
        raise
    return server, client


class Network:
    """A port, a listening socket and the connections accepted on it; closes all on exit."""

    def __init__(self, concurrency: int = 0) -> None:
        self.port = CompletionPort(concurrency)
        self.listener = Socket()
        self.listener.bind((LOOPBACK, 0))
        self.listener.listen()
        self.port.associate(self.listener)
        self.sockets: list[Socket] = []
        self.peers: list[socket.socket] = []

    def pair(self) -> tuple[Socket, socket.socket]:
        server, client = accepted_pair(self.port, self.listener)
        self.sockets.append(server)
        self.peers.append(client)
        return server, client

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        for sock in self.sockets:
            sock.close()
        self.listener.close()
        # Let the closes' completions arrive so the port's registry empties before it closes.
        drain(self.port, WAIT)
        self.port.close()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@pytest.fixture
def net() -> Iterator[Network]:
    with Network() as network:
        yield network


@pytest.fixture
def port(net: Network) -> CompletionPort:
    return net.port


@pytest.fixture
def listener(net: Network) -> Socket:
    return net.listener


# -- waiting ---------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, what: str = "condition"
               ) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def kernel_done(operation: Operation) -> bool:
    """Whether the kernel finished ``operation`` (HasOverlappedIoCompleted), dequeued or not."""
    status: int = operation.overlapped.Internal & 0xFFFFFFFF
    return status != NtStatus.STATUS_PENDING


def wait_kernel_done(*operations: Operation, timeout: float = WAIT) -> None:
    wait_until(lambda: all(kernel_done(op) for op in operations), timeout,
               f"the kernel to finish {operations!r}")


def dequeue(port: CompletionPort, count: int, mode: Mode, timeout: float = WAIT
            ) -> list[Completion]:
    """Exactly ``count`` completions, through ``get`` or ``get_many`` batches."""
    found: list[Completion] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"only {len(found)} of {count} completions within {timeout} s: {found}")
        if mode == "get":
            completion = port.get(left)
            if completion.outcome is not Outcome.TIMED_OUT:
                found.append(completion)
        else:
            found.extend(port.get_many(left, max_entries=count - len(found)))
    return found


def dequeue_one(port: CompletionPort, mode: Mode = "get", timeout: float = WAIT) -> Completion:
    return dequeue(port, 1, mode, timeout)[0]


def complete(port: CompletionPort, operation: Operation, mode: Mode = "get") -> Completion:
    """The next completion, which must be ``operation``'s."""
    completion = dequeue_one(port, mode)
    assert completion.operation is operation, f"expected {operation!r}, got {completion!r}"
    return completion


def assert_quiet(port: CompletionPort, timeout: float = QUIET) -> None:
    """No completion arrives within ``timeout``."""
    completion = port.get(timeout)
    assert completion.outcome is Outcome.TIMED_OUT, f"unexpected {completion!r}"


def drain(port: CompletionPort, timeout: float = WAIT) -> list[Completion]:
    """Dequeue until no operation is pending any more (or ``timeout``); return what came."""
    found: list[Completion] = []
    deadline = time.monotonic() + timeout
    while port.pending_count and not port.closed:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        completion = port.get(min(left, 0.25))
        if completion.outcome is Outcome.PORT_CLOSED:
            break
        if completion.outcome is not Outcome.TIMED_OUT:
            found.append(completion)
    return found


def recv_exact(peer: socket.socket, size: int, timeout: float = WAIT) -> bytes:
    """Read exactly ``size`` bytes from a stdlib peer (bounded)."""
    peer.settimeout(timeout)
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = peer.recv(remaining)
        assert chunk, f"peer saw end of stream with {remaining} bytes still expected"
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
