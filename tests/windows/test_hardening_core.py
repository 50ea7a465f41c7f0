"""Core hardening: each test shows a defect of the port, owner, socket, address and error
layers against real Winsock (or Wine), fixed:

* a send that fails at once with a warning code (WSAEMSGSIZE) raises, and keeps nothing
  registered: only receive kinds get a packet after a warning status;
* whatever one entry of a dequeue raises, every dequeued completion is handed back;
* post() and associate() count themselves as users of the port handle, and associate()
  reads the owner's value under its lock, so a racing close() never recycles either;
* close()'s wake-ups reach every waiter, re-armed datagram receives start clean, a
  truncated datagram says who sent it, unreachable errors get their own failure and errno,
  SIO_UDP_CONNRESET can be turned off, literal addresses never reach getaddrinfo.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

import support
import winiocp.operations as operations_module
import winiocp.port as port_module
from helpers_io import (
    FAMILIES,
    LOOPBACK,
    QUIET_S,
    STDLIB_FAMILY,
    WAIT_S,
    datagram,
    kernel_finished,
    make_socket,
    require_family,
    stack,
    wait_for,
    wait_until,
)
from winiocp import ClosedHandleError, Completion, CompletionPort, Failure, Outcome, Socket
from winiocp import addresses
from winiocp.constants import AddressFamily, MsgFlags, SocketType, WinError
from winiocp.errors import PortClosedError, classify_failure, exception_for
from winiocp.operations import OpState, RecvFromOperation
from winiocp.raw import ffi, kernel32

__all__ = ["stack"]  # the fixture, imported for pytest

#: A datagram no UDP socket can send (the IPv4 maximum is 65,507 bytes of payload).
OVERSIZED = 70000


@pytest.fixture
def port() -> Iterator[CompletionPort]:
    with CompletionPort() as completion_port:
        yield completion_port


def udp_socket(port: CompletionPort, stack: ExitStack,
               family: AddressFamily = AddressFamily.AF_INET) -> Socket:
    sock = make_socket(stack, family, SocketType.SOCK_DGRAM)
    sock.bind((LOOPBACK[family], 0))
    port.associate(sock)
    return sock


def stdlib_udp(stack: ExitStack, family: AddressFamily = AddressFamily.AF_INET
               ) -> socket.socket:
    peer = stack.enter_context(socket.socket(STDLIB_FAMILY[family], socket.SOCK_DGRAM))
    peer.bind((LOOPBACK[family], 0))
    peer.settimeout(WAIT_S)
    return peer


class KernelSpy:
    """Stands in for ``kernel32`` in one module: the named functions are replaced, the rest
    are the real ones."""

    def __init__(self, real: Any, **replacements: Callable[..., Any]) -> None:
        self._real = real
        self._replacements = replacements

    def __getattr__(self, name: str) -> Any:
        replacement = self._replacements.get(name)
        return replacement if replacement is not None else getattr(self._real, name)


def handle_value(handle: Any) -> int:
    return int(ffi.cast("uintptr_t", handle))


def collect(port: CompletionPort, count: int, timeout: float = WAIT_S) -> list[Completion]:
    """``count`` completions, dequeued in batches."""
    found: list[Completion] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(found)} of {count} completions came: {found}"
        found += port.get_many(remaining)
    return found


# -- 3: a send's warning code is a failure, not "a packet comes" ---------------------------------


def drain_wine_send_packet(port: CompletionPort) -> None:
    """Windows queues nothing for a send that failed at once. Wine queues a packet (see
    ``test_an_oversized_sendto_queues_no_packet``): the operation is kept until it is
    dequeued, and it comes as the failed send's own, never as another operation's."""
    completion = port.get(QUIET_S)
    if completion.outcome is not Outcome.TIMED_OUT:
        assert support.UNDER_WINE, completion
        assert completion.outcome is Outcome.FAILED and completion.operation is not None
        assert completion.operation.kind.name == "SENDTO"
        assert completion.failure is Failure.TOO_LARGE


def test_an_oversized_sendto_raises_and_keeps_nothing_registered(
        port: CompletionPort, stack: ExitStack) -> None:
    sock = udp_socket(port, stack)
    with pytest.raises(OSError) as raised:
        sock.sendto(b"x" * OVERSIZED, sock.getsockname())
    assert raised.value.winerror == WinError.WSAEMSGSIZE
    drain_wine_send_packet(port)
    assert port.pending_count == 0, port.pending_operations()


@support.wine_deviation("Wine fails the send with STATUS_BUFFER_OVERFLOW, a warning status, "
                        "and queues a packet for it; Windows fails it with no packet")
def test_an_oversized_sendto_queues_no_packet(port: CompletionPort, stack: ExitStack) -> None:
    sock = udp_socket(port, stack)
    with pytest.raises(OSError):
        sock.sendto(b"x" * OVERSIZED, sock.getsockname())
    assert port.pending_count == 0
    completion = port.get(QUIET_S)
    assert completion.outcome is Outcome.TIMED_OUT, completion


def test_the_socket_still_works_after_an_oversized_sendto(port: CompletionPort,
                                                          stack: ExitStack) -> None:
    sock = udp_socket(port, stack)
    peer = stdlib_udp(stack)
    with pytest.raises(OSError):
        sock.sendto(b"x" * OVERSIZED, peer.getsockname())
    drain_wine_send_packet(port)
    wait_for(port, sock.sendto(b"small", peer.getsockname()))
    assert peer.recvfrom(100) == (b"small", sock.getsockname())


# -- 6: a dequeue is exception-safe ---------------------------------------------------------------


def queued_datagrams(port: CompletionPort, stack: ExitStack, count: int
                     ) -> list[RecvFromOperation]:
    """``count`` WSARecvFroms, each completed by the kernel (packets queued, none dequeued)."""
    sock = udp_socket(port, stack)
    peer = stdlib_udp(stack)
    receives = [sock.recvfrom(64) for _ in range(count)]
    for index in range(count):
        peer.sendto(b"datagram %d" % index, sock.getsockname())
    wait_until(lambda: all(kernel_finished(op) for op in receives), what="all datagrams")
    return receives


def decode_raising(monkeypatch: pytest.MonkeyPatch, exception: BaseException,
                   on_call: int = 2) -> None:
    """Make the ``on_call``-th sockaddr decode of a completed WSARecvFrom raise ``exception``."""
    real = addresses.decode_cdata  # what operations.py imported
    calls = 0

    def decode(pointer: Any, length: int) -> Any:
        nonlocal calls
        calls += 1
        if calls == on_call:
            raise exception
        return real(pointer, length)

    monkeypatch.setattr(operations_module, "decode_cdata", decode)


def test_a_post_processing_error_fails_only_its_operation_in_a_batch(
        port: CompletionPort, stack: ExitStack, monkeypatch: pytest.MonkeyPatch) -> None:
    receives = queued_datagrams(port, stack, 4)
    decode_raising(monkeypatch, ValueError("a sockaddr nobody can decode"))
    completions = collect(port, 4)
    assert sorted(id(c.operation) for c in completions) == sorted(id(op) for op in receives)
    failed = [c for c in completions if c.outcome is Outcome.FAILED]
    assert len(failed) == 1 and failed[0].error == WinError.ERROR_INVALID_DATA, completions
    exception = failed[0].exception()
    assert exception is not None and isinstance(exception.__cause__, ValueError)
    assert all(op.state is OpState.DONE for op in receives)
    assert port.pending_count == 0
    assert sum(c.outcome is Outcome.COMPLETED for c in completions) == 3


def test_an_interrupt_in_a_batch_hands_back_every_completion(
        port: CompletionPort, stack: ExitStack, monkeypatch: pytest.MonkeyPatch) -> None:
    receives = queued_datagrams(port, stack, 4)
    decode_raising(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        port.get_many(WAIT_S, max_entries=4)
    # Whatever had been dequeued comes back from the next calls, the interrupted one too.
    completions = collect(port, 4)
    assert sorted(id(c.operation) for c in completions) == sorted(id(op) for op in receives)
    assert all(c.outcome is Outcome.COMPLETED for c in completions), completions
    assert sorted(datagram(op) for op in receives) == [b"datagram %d" % i for i in range(4)]
    assert port.pending_count == 0
    assert port.get(QUIET_S).outcome is Outcome.TIMED_OUT


def test_get_contains_post_processing_errors_and_interrupts(
        port: CompletionPort, stack: ExitStack, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = queued_datagrams(port, stack, 2)
    decode_raising(monkeypatch, MemoryError(), on_call=1)
    completion = port.get(WAIT_S)
    assert completion.operation is first and completion.outcome is Outcome.FAILED
    assert completion.error == WinError.ERROR_NOT_ENOUGH_MEMORY
    decode_raising(monkeypatch, KeyboardInterrupt(), on_call=1)
    with pytest.raises(KeyboardInterrupt):
        port.get(WAIT_S)
    assert second.state is OpState.DONE  # finished, and kept for the next call
    completion = port.get(WAIT_S)
    assert completion.operation is second and completion.outcome is Outcome.COMPLETED
    assert datagram(second) == b"datagram 1" and second.peer is not None
    assert port.pending_count == 0


# -- 7: nothing passes a port or socket value a racing close() may have recycled --------------------


def test_post_counts_itself_as_a_user_of_the_port_handle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """close() runs between post() reading the handle and the call (a spy widens the
    window): the handle post() passes must still be the port's, never a recycled value."""
    port = CompletionPort()
    real = kernel32
    victims: list[CompletionPort] = []
    passed: list[int] = []

    def racing_post(handle: Any, count: int, key: int, overlapped: Any) -> Any:
        if key == 4242 and not victims:
            port.close()
            victims.extend(CompletionPort() for _ in range(8))  # take any freed value
            passed.append(handle_value(handle))
        return real.PostQueuedCompletionStatus(handle, count, key, overlapped)

    monkeypatch.setattr(port_module, "kernel32",
                        KernelSpy(real, PostQueuedCompletionStatus=racing_post))
    try:
        try:
            port.post(4242)
        except ClosedHandleError:
            pass
        monkeypatch.undo()
        assert passed and passed[0] not in {handle_value(v.handle) for v in victims}
        for victim in victims:
            assert victim.get(0).outcome is Outcome.TIMED_OUT, "posted to a recycled handle"
    finally:
        for victim in victims:
            victim.close()


def test_associate_counts_itself_as_a_user_of_the_port_handle(
        monkeypatch: pytest.MonkeyPatch, stack: ExitStack) -> None:
    port = CompletionPort()
    real = kernel32
    victims: list[CompletionPort] = []
    passed: list[int] = []

    def racing_associate(file: Any, existing: Any, key: int, threads: int) -> Any:
        if existing != ffi.NULL and not victims:
            port.close()
            victims.extend(CompletionPort() for _ in range(8))
            passed.append(handle_value(existing))
        return real.CreateIoCompletionPort(file, existing, key, threads)

    monkeypatch.setattr(port_module, "kernel32",
                        KernelSpy(real, CreateIoCompletionPort=racing_associate))
    sock = make_socket(stack)
    try:
        try:
            port.associate(sock)
        except ClosedHandleError:
            pass
        monkeypatch.undo()
        assert passed and passed[0] not in {handle_value(v.handle) for v in victims}
    finally:
        for victim in victims:
            victim.close()


def test_associate_reads_the_socket_value_under_its_lock(
        port: CompletionPort, monkeypatch: pytest.MonkeyPatch, stack: ExitStack) -> None:
    """Another thread closes the socket while associate() is on its way to the call: the
    close must wait, so the value associated is still the socket's, not a recycled one."""
    sock = Socket()
    real = kernel32
    seen: list[bool] = []
    newcomers: list[Socket] = []

    def racing_associate(file: Any, existing: Any, key: int, threads: int) -> Any:
        if existing != ffi.NULL and not seen:
            closer = threading.Thread(target=sock.close)
            closer.start()
            closer.join(0.5)  # finishes at once unless associate() holds the socket's lock
            newcomers.extend(stack.enter_context(Socket()) for _ in range(4))
            seen.append(sock.closed)
        return real.CreateIoCompletionPort(file, existing, key, threads)

    monkeypatch.setattr(port_module, "kernel32",
                        KernelSpy(real, CreateIoCompletionPort=racing_associate))
    try:
        port.associate(sock)
    except ClosedHandleError:
        pass
    finally:
        monkeypatch.undo()
    wait_until(lambda: sock.closed, what="the racing close")
    assert seen == [False], "the socket's value was closed while it was being associated"


def test_posts_and_associations_racing_close_succeed_or_say_closed() -> None:
    for _ in range(5):
        port = CompletionPort()
        errors: list[BaseException] = []
        start = threading.Barrier(5)

        def hammer(kind: str) -> None:
            start.wait(WAIT_S)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline and not port.closed:
                try:
                    if kind == "post":
                        port.post(1)
                    else:
                        with Socket() as sock:
                            port.associate(sock)
                except ClosedHandleError:
                    return
                except BaseException as exc:  # noqa: BLE001 - collected for the assert
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=hammer, args=(kind,))
                   for kind in ("post", "post", "associate", "associate")]
        for thread in threads:
            thread.start()
        start.wait(WAIT_S)
        time.sleep(0.05)
        port.close()
        for thread in threads:
            thread.join(WAIT_S)
            assert not thread.is_alive()
        assert not errors, errors


# -- 10a: close() wakes every waiter ------------------------------------------------------------------


def test_a_batch_waiter_takes_only_its_own_wake_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two waiters are counted when close() posts two wake-ups, and the batch waiter reaches
    the queue first: it must leave the other wake-up for the other waiter."""
    port = CompletionPort()
    real = kernel32
    entered = {name: threading.Event() for name in ("batch", "single")}
    go = {name: threading.Event() for name in ("batch", "single")}

    def gated(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            entered[name].set()
            go[name].wait(WAIT_S * 4)
            return function(*args)
        return call

    monkeypatch.setattr(port_module, "kernel32", KernelSpy(
        real, GetQueuedCompletionStatusEx=gated("batch", real.GetQueuedCompletionStatusEx),
        GetQueuedCompletionStatus=gated("single", real.GetQueuedCompletionStatus)))
    results: dict[str, object] = {}
    single_wait_s = 15.0

    def batch() -> None:
        try:
            results["batch"] = port.get_many(single_wait_s)
        except PortClosedError as exc:
            results["batch"] = exc

    def single() -> None:
        started = time.monotonic()
        results["single"] = port.get(single_wait_s).outcome
        results["single_s"] = time.monotonic() - started

    threads = {"batch": threading.Thread(target=batch), "single": threading.Thread(target=single)}
    for thread in threads.values():
        thread.start()
    for event in entered.values():
        assert event.wait(WAIT_S)
    port.close()  # two waiters: two wake-up packets
    go["batch"].set()
    threads["batch"].join(WAIT_S)
    assert isinstance(results.get("batch"), PortClosedError), results
    go["single"].set()
    threads["single"].join(single_wait_s + WAIT_S)
    assert results.get("single") is Outcome.PORT_CLOSED, results
    assert float(results["single_s"]) < single_wait_s / 2, (  # type: ignore[arg-type]
        "the single waiter slept until its own time-out: its wake-up was swallowed")


def test_close_wakes_every_waiter_of_both_kinds() -> None:
    port = CompletionPort()
    long_wait_s = 30.0
    done: list[str] = []

    def batch() -> None:
        try:
            port.get_many(long_wait_s)
        except PortClosedError:
            done.append("batch")

    def single() -> None:
        if port.get(long_wait_s).outcome is Outcome.PORT_CLOSED:
            done.append("single")

    threads = [threading.Thread(target=target, daemon=True)
               for target in (batch, batch, batch, single, single, single)]
    for thread in threads:
        thread.start()
    wait_until(lambda: port._waiters == len(threads), what="every thread waiting")
    port.close()
    deadline = time.monotonic() + 10.0
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert sorted(done) == ["batch"] * 3 + ["single"] * 3, done


# -- 10b, 10c: datagram receives ---------------------------------------------------------------------


def test_a_reused_recvfrom_starts_with_clear_flags(port: CompletionPort,
                                                   stack: ExitStack) -> None:
    """WSARecvFrom's flags word is in/out: a value left in it (here MSG_PEEK) must not turn
    the next receive into a peek that leaves the datagram queued."""
    sock = udp_socket(port, stack)
    peer = stdlib_udp(stack)
    receive = sock.recvfrom(64)
    peer.sendto(b"one", sock.getsockname())
    wait_for(port, receive)
    receive.flags[0] = MsgFlags.MSG_PEEK
    again = sock.recvfrom(64, reuse=receive)
    assert again.flags[0] == 0
    peer.sendto(b"two", sock.getsockname())
    wait_for(port, again)
    assert datagram(again) == b"two"
    peer.sendto(b"three", sock.getsockname())
    wait_for(port, sock.recvfrom(64, reuse=again))
    assert datagram(again) == b"three"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("queued_first", [False, True], ids=["completion", "at-once"])
def test_a_truncated_datagram_says_who_sent_it(port: CompletionPort, stack: ExitStack,
                                               family: AddressFamily,
                                               queued_first: bool) -> None:
    require_family(family)
    sock = udp_socket(port, stack, family)
    peer = stdlib_udp(stack, family)
    old = sock.recvfrom(64)
    peer.sendto(b"earlier", sock.getsockname())
    wait_for(port, old)
    if queued_first:  # WSARecvFrom then reports the truncation at once, and a packet comes
        peer.sendto(b"y" * 100, sock.getsockname())
        time.sleep(0.2)
        receive = sock.recvfrom(10, reuse=old)
    else:
        receive = sock.recvfrom(10, reuse=old)
        peer.sendto(b"y" * 100, sock.getsockname())
    completion = wait_for(port, receive, Outcome.FAILED)
    assert receive.peer is not None and receive.peer[:2] == peer.getsockname()[:2]
    assert datagram(receive) == b"y" * 10
    assert completion.error in (WinError.WSAEMSGSIZE, WinError.ERROR_MORE_DATA)
    assert completion.failure is Failure.TOO_LARGE
    assert port.pending_count == 0


# -- 10d: unreachable and not-connected errors ----------------------------------------------------------


@pytest.mark.parametrize(("code", "failure", "exception_type", "errno_value"), [
    (WinError.ERROR_HOST_UNREACHABLE, "UNREACHABLE", OSError, errno.EHOSTUNREACH),
    (WinError.WSAEHOSTUNREACH, "UNREACHABLE", OSError, errno.EHOSTUNREACH),
    (WinError.ERROR_NETWORK_UNREACHABLE, "UNREACHABLE", OSError, errno.ENETUNREACH),
    (WinError.WSAENETUNREACH, "UNREACHABLE", OSError, errno.ENETUNREACH),
    (WinError.ERROR_PORT_UNREACHABLE, "REFUSED", ConnectionRefusedError,
     errno.ECONNREFUSED),
    (WinError.ERROR_CONNECTION_INVALID, "NOT_CONNECTED", OSError, errno.ENOTCONN),
    (WinError.WSAENOTCONN, "NOT_CONNECTED", OSError, errno.ENOTCONN),
    (WinError.WSAEMSGSIZE, "TOO_LARGE", OSError, errno.EMSGSIZE),
], ids=lambda value: getattr(value, "name", None) if isinstance(value, WinError) else None)
def test_unreachable_errors_have_their_own_failure_and_errno(
        code: WinError, failure: str, exception_type: type[OSError], errno_value: int) -> None:
    assert classify_failure(code, False) is Failure[failure]
    exception = exception_for(code, "WSASendTo")
    assert type(exception) is exception_type
    assert exception.winerror == code and exception.errno == errno_value, exception


# -- 10e: SIO_UDP_CONNRESET ------------------------------------------------------------------------------


def unused_udp_address(family: AddressFamily = AddressFamily.AF_INET) -> tuple[str, int]:
    with socket.socket(STDLIB_FAMILY[family], socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK[family], 0))
        host, number = probe.getsockname()[:2]
    return str(host), int(number)


def receive_after_unreachable(port: CompletionPort, sock: Socket) -> Completion | OSError:
    """Send to a port nobody listens on, then receive: what the receive gives."""
    wait_for(port, sock.sendto(b"anyone?", unused_udp_address()))
    time.sleep(0.2)  # the ICMP port-unreachable comes back on loopback meanwhile
    try:
        receive = sock.recvfrom(64)
    except OSError as exc:
        return exc
    return port.get(QUIET_S * 4)


def test_udp_connreset_can_be_turned_off(port: CompletionPort, stack: ExitStack) -> None:
    sock = udp_socket(port, stack)
    sock.set_udp_connreset(False)
    result = receive_after_unreachable(port, sock)
    assert isinstance(result, Completion) and result.outcome is Outcome.TIMED_OUT, result
    peer = stdlib_udp(stack)
    peer.sendto(b"still receiving", sock.getsockname())
    completion = port.get(WAIT_S)
    assert completion.outcome is Outcome.COMPLETED, completion
    assert isinstance(completion.operation, RecvFromOperation)
    assert datagram(completion.operation) == b"still receiving"
    sock.set_udp_connreset(True)  # and on again: accepted


@support.wine_deviation("Wine does not report ICMP port-unreachable to a UDP socket")
def test_udp_connreset_is_on_by_default(port: CompletionPort, stack: ExitStack) -> None:
    """Windows' default: the next receive after an ICMP port-unreachable fails."""
    result = receive_after_unreachable(port, udp_socket(port, stack))
    if isinstance(result, OSError):
        assert isinstance(result, (ConnectionResetError, ConnectionRefusedError)), result
    else:
        assert result.outcome is Outcome.FAILED, result
        assert result.failure in (Failure.RESET, Failure.REFUSED), result


def test_udp_connreset_needs_a_datagram_socket(stack: ExitStack) -> None:
    with pytest.raises(ValueError):
        make_socket(stack).set_udp_connreset(False)


# -- 10f: literal addresses never reach getaddrinfo -----------------------------------------------------


class ResolverCalled(Exception):
    pass


@pytest.mark.parametrize("family", FAMILIES)
def test_literal_addresses_are_not_resolved(port: CompletionPort, stack: ExitStack,
                                            monkeypatch: pytest.MonkeyPatch,
                                            family: AddressFamily) -> None:
    require_family(family)
    peer = stdlib_udp(stack, family)
    with socket.socket(STDLIB_FAMILY[family], socket.SOCK_STREAM) as server:
        server.bind((LOOPBACK[family], 0))
        server.listen()
        target = server.getsockname()

        def no_dns(*args: object, **kwargs: object) -> Any:
            raise ResolverCalled(args)

        monkeypatch.setattr(socket, "getaddrinfo", no_dns)
        udp = make_socket(stack, family, SocketType.SOCK_DGRAM)
        udp.bind(("", 0))  # the wildcard is a literal too
        port.associate(udp)
        wait_for(port, udp.sendto(b"literal", peer.getsockname()))
        tcp = make_socket(stack, family)
        tcp.bind((LOOPBACK[family], 0))
        port.associate(tcp)
        wait_for(port, tcp.connect(target))
        with pytest.raises(ResolverCalled):  # a host name is still resolved
            udp.sendto(b"by name", ("localhost", peer.getsockname()[1]))
        monkeypatch.undo()
        accepted, _ = server.accept()
        accepted.close()
    assert peer.recvfrom(64)[0] == b"literal"
