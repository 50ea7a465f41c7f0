"""Fixtures and helpers shared by the wrapper-level I/O tests (sockets, accept/connect, UDP,
pipes, files).

Everything runs against the real kernel32/ws2_32 (Windows, or Wine), with stdlib ``socket``
peers on the loopback interface. Every wait is bounded: port dequeues take a time-out, stdlib
peers get a socket time-out, and thread results are awaited with a time-out, so a lost
completion fails a test instead of hanging it.

Test modules import the fixtures they use explicitly (``from helpers_io import port``); pytest
finds fixtures in a module's namespace.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TypeVar

import pytest

from winiocp import (
    AcceptOperation,
    Completion,
    CompletionPort,
    Operation,
    Outcome,
    Socket,
)
from winiocp.addresses import Address
from winiocp.constants import AddressFamily, NtStatus, SocketType
from winiocp.operations import BufferLike, RecvFromOperation

T = TypeVar("T")

#: Upper bound of an ordinary wait (a completion, a peer's read, a thread's result).
WAIT_S = 5.0
#: Upper bound for bulk transfers (MiBs through loopback under Wine).
BULK_WAIT_S = 60.0
#: How long "nothing is queued" is watched for before it is believed.
QUIET_S = 0.25
LOOPBACK = {AddressFamily.AF_INET: "127.0.0.1", AddressFamily.AF_INET6: "::1"}
STDLIB_FAMILY = {AddressFamily.AF_INET: socket.AF_INET, AddressFamily.AF_INET6: socket.AF_INET6}


# -- environment --------------------------------------------------------------------------------


@functools.cache
def ipv6_loopback_available() -> bool:
    """Whether a socket can bind ``::1`` here (checked once, with a stdlib socket)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def require_family(family: AddressFamily) -> None:
    """Skip the calling test when ``family``'s loopback cannot be used."""
    if family == AddressFamily.AF_INET6 and not ipv6_loopback_available():
        pytest.skip("IPv6 loopback ::1 cannot be bound on this system")


FAMILIES = [pytest.param(AddressFamily.AF_INET, id="ipv4"),
            pytest.param(AddressFamily.AF_INET6, id="ipv6")]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def port() -> Iterator[CompletionPort]:
    """A fresh completion port, closed after the test (pending operations are kept alive)."""
    with CompletionPort() as completion_port:
        yield completion_port


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes what a test registers with it (sockets, handles, stdlib peers), last first."""
    with ExitStack() as exit_stack:
        yield exit_stack


@pytest.fixture
def listener(port: CompletionPort, stack: ExitStack) -> Socket:
    """A TCP socket listening on 127.0.0.1 (free port), associated with ``port``."""
    return make_listener(port, stack, AddressFamily.AF_INET)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for stdlib peers; their sockets have time-outs, so none can block for long."""
    executor = ThreadPoolExecutor(4, thread_name_prefix="peer")
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def make_listener(port: CompletionPort, stack: ExitStack,
                  family: AddressFamily = AddressFamily.AF_INET) -> Socket:
    require_family(family)
    sock = stack.enter_context(Socket(family))
    sock.bind((LOOPBACK[family], 0))
    sock.listen()
    port.associate(sock)
    return sock


def unique_pipe_name() -> str:
    return rf"\\.\pipe\winiocp-test-{os.getpid()}-{uuid.uuid4().hex}"


# -- dequeuing ----------------------------------------------------------------------------------


def wait_for(port: CompletionPort, operation: Operation | None,
             outcome: Outcome = Outcome.COMPLETED, timeout: float = WAIT_S) -> Completion:
    """Dequeue the next completion and check it is ``operation``'s, with ``outcome``.

    ``operation=None`` expects a packet for an OVERLAPPED the wrappers do not know (raw code).
    """
    completion = port.get(timeout)
    assert completion.outcome is not Outcome.TIMED_OUT, (
        f"no completion within {timeout} s (waiting for {operation!r})")
    assert completion.operation is operation, f"expected {operation!r}, dequeued {completion!r}"
    assert completion.outcome is outcome, f"{completion!r} (error {completion.error})"
    return completion


def wait_all(port: CompletionPort, *operations: Operation,
             timeout: float = WAIT_S) -> list[Completion]:
    """Dequeue one completion per operation, in whatever order they come; return them in the
    order of ``operations``. Each must be COMPLETED."""
    found: dict[int, Completion] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(operations):
        completion = port.get(max(0.0, deadline - time.monotonic()))
        assert completion.outcome is not Outcome.TIMED_OUT, (
            f"only {len(found)} of {len(operations)} completions within {timeout} s")
        assert completion.operation is not None, f"unexpected {completion!r}"
        assert any(completion.operation is op for op in operations), f"unexpected {completion!r}"
        assert completion.outcome is Outcome.COMPLETED, f"{completion!r}"
        found[id(completion.operation)] = completion
    return [found[id(op)] for op in operations]


def assert_nothing_queued(port: CompletionPort, quiet: float = QUIET_S) -> None:
    """Nothing is (or becomes, within ``quiet`` seconds) ready on ``port``."""
    completion = port.get(quiet)
    assert completion.outcome is Outcome.TIMED_OUT, f"unexpected {completion!r}"


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S,
               what: str = "condition") -> None:
    """Poll ``predicate`` (every 10 ms) until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.01)


def kernel_finished(operation: Operation) -> bool:
    """Whether the kernel has completed ``operation`` (its OVERLAPPED's status is no longer
    STATUS_PENDING), whether or not the completion packet has been dequeued yet."""
    return int(operation.overlapped.Internal) != NtStatus.STATUS_PENDING


# -- connections ---------------------------------------------------------------------------------


def stdlib_client(stack: ExitStack, address: Address) -> socket.socket:
    """A stdlib TCP client connected to ``address`` (IPv4 or IPv6), with a time-out."""
    client = socket.create_connection(address[:2], timeout=WAIT_S)
    return stack.enter_context(client)


def accept_client(port: CompletionPort, listener: Socket, stack: ExitStack, *,
                  recv_size: int = 0, first: bytes = b"",
                  reuse: AcceptOperation | None = None,
                  accept_socket: Socket | None = None) -> tuple[AcceptOperation, socket.socket]:
    """Post an AcceptEx, connect a stdlib client (sending ``first``), dequeue the accept."""
    operation = listener.accept(accept_socket, recv_size=recv_size, reuse=reuse)
    if accept_socket is None:
        stack.enter_context(operation.accepted)
    client = stdlib_client(stack, listener.getsockname())
    if first:
        client.sendall(first)
    wait_for(port, operation)
    return operation, client


def connected_pair(port: CompletionPort, listener: Socket, stack: ExitStack
                   ) -> tuple[Socket, socket.socket]:
    """An accepted wrapper Socket (associated with ``port``) and its stdlib client."""
    operation, client = accept_client(port, listener, stack)
    port.associate(operation.accepted)
    return operation.accepted, client


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """Read ``size`` bytes from a stdlib socket (fewer only if it reaches EOF)."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@dataclass(frozen=True)
class Digest:
    """What a reader saw: a byte count and its SHA-256."""

    size: int
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(len(data), hashlib.sha256(data).hexdigest())


def read_to_eof_digest(sock: socket.socket) -> Digest:
    """Read a stdlib socket until EOF, hashing as it goes."""
    digest = hashlib.sha256()
    size = 0
    while chunk := sock.recv(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return Digest(size, digest.hexdigest())


def read_to_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def result(future: Future[T], timeout: float = WAIT_S) -> T:
    """A thread's result, waited for at most ``timeout`` seconds."""
    return future.result(timeout=timeout)


def remaining_views(buffers: Sequence[BufferLike], filled: int) -> list[memoryview]:
    """Byte views of what is still empty in ``buffers`` after ``filled`` bytes arrived."""
    views = [memoryview(buffer).cast("B") for buffer in buffers]
    while views and filled >= len(views[0]):
        filled -= len(views.pop(0))
    if views and filled:
        views[0] = views[0][filled:]
    return views


def recv_into_fully(port: CompletionPort, sock: Socket, buffers: Sequence[BufferLike]) -> int:
    """Fill ``buffers`` completely with WSARecv scatters (TCP may deliver in pieces).

    Each round posts one scatter over what is still empty; returns the number of rounds.
    """
    views = remaining_views(buffers, 0)
    rounds = 0
    while views:
        operation = sock.recv_into(views)
        completion = wait_for(port, operation)
        rounds += 1
        assert completion.bytes_transferred > 0, "the peer closed before the buffers were full"
        views = remaining_views(views, completion.bytes_transferred)
    return rounds


def datagram(operation: RecvFromOperation) -> bytes:
    """``operation.data`` of a completed WSARecvFrom.

    ``operations.py`` shares the property as ``RecvFromOperation.data = RecvOperation.data``,
    which mypy rejects at every use on a RecvFromOperation ("Invalid self argument"): a typing
    bug of the library, reported. Read through ``getattr`` so this stays clean once it is fixed.
    """
    data = getattr(operation, "data")  # noqa: B009 - see the docstring
    assert isinstance(data, bytes)
    return data


def receive_all(port: CompletionPort, sock: Socket, size: int) -> bytes:
    """Receive exactly ``size`` bytes on a wrapper socket, one WSARecv at a time."""
    buffer = bytearray(size)
    recv_into_fully(port, sock, [buffer])
    return bytes(buffer)


def unused_tcp_port(family: AddressFamily = AddressFamily.AF_INET) -> Address:
    """A loopback address where nothing listens (bound for a moment, then released)."""
    with socket.socket(STDLIB_FAMILY[family], socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK[family], 0))
        host, number = probe.getsockname()[:2]
    return str(host), int(number)


def make_socket(stack: ExitStack, family: AddressFamily = AddressFamily.AF_INET,
                type: SocketType = SocketType.SOCK_STREAM) -> Socket:
    require_family(family)
    return stack.enter_context(Socket(family, type))
