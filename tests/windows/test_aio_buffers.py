"""The caller's buffers in the proactor's socket calls: ``sock_recvfrom_into`` honours
``nbytes``, and no call keeps a caller's buffer exported (or alive) once its await returned.

The ``nbytes`` tests run on the stock ``asyncio.ProactorEventLoop`` too: it is the contract.
The others assert ours only: under Wine the stock loop keeps every one of those buffers
exported after the await returned (``BufferError`` on resizing them), as its OVERLAPPED
objects stay in its cache until their completion packets are dequeued.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import weakref
from collections.abc import Callable, Coroutine
from contextlib import ExitStack
from typing import Any

import pytest
from helpers_io import connected_pair, listener, port, stack, wait_for  # noqa: F401 - fixtures

import winiocp.aio
from winiocp.errors import OperationPendingError
from winiocp.port import CompletionPort
from winiocp.sockets import Socket

LOOPBACK = "127.0.0.1"
WAIT = 30.0
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stock": asyncio.ProactorEventLoop,
    "winiocp": winiocp.aio.new_event_loop,
}
WSAEMSGSIZE = 10040
#: asyncio's datagram socket calls (sock_recvfrom_into, sock_sendto, ...) came with 3.11.
needs_311 = pytest.mark.skipif(sys.version_info < (3, 11),
                               reason="asyncio's sock_recvfrom_into and sock_sendto are 3.11+")


class Buffer(bytearray):
    """A bytearray that can be weakly referenced (to see who keeps it alive)."""


def run(make_loop: Callable[[], asyncio.AbstractEventLoop],
        main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop = make_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    finally:
        loop.close()


def udp_pair() -> tuple[socket.socket, socket.socket]:
    """A non-blocking receiving UDP socket and a sender connected to it."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind((LOOPBACK, 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    return receiver, sender


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking TCP sockets."""
    with socket.create_server((LOOPBACK, 0)) as server:
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
    client.setblocking(False)
    accepted.setblocking(False)
    return client, accepted


@needs_311
@pytest.mark.parametrize("loop_name", LOOPS)
def test_sock_recvfrom_into_limits_the_datagram_to_nbytes(loop_name: str) -> None:
    """A 20-byte datagram into a 32-byte buffer with nbytes=8 fails as too large
    (WSAEMSGSIZE, as WSARecvFrom into 8 bytes does) and writes nothing past byte 8."""
    async def main() -> None:
        loop: Any = asyncio.get_running_loop()  # (sock_recvfrom_into etc.: 3.11+)
        receiver, sender = udp_pair()
        with receiver, sender:
            buf = bytearray(b"\xee" * 32)
            sender.send(b"d" * 20)
            with pytest.raises(OSError) as info:
                await loop.sock_recvfrom_into(receiver, buf, 8)
            assert info.value.winerror == WSAEMSGSIZE
            assert buf[8:] == b"\xee" * 24
    run(LOOPS[loop_name], main)


@needs_311
@pytest.mark.parametrize("loop_name", LOOPS)
def test_sock_recvfrom_into_with_nbytes_receives_into_the_start(loop_name: str) -> None:
    """nbytes smaller than the buffer: a datagram that fits lands at the start; nbytes=0 (the
    default) means the whole buffer."""
    async def main() -> None:
        loop: Any = asyncio.get_running_loop()  # (sock_recvfrom_into etc.: 3.11+)
        receiver, sender = udp_pair()
        with receiver, sender:
            buf = bytearray(b"\xee" * 32)
            sender.send(b"abcd")
            count, address = await loop.sock_recvfrom_into(receiver, buf, 8)
            assert (count, address) == (4, sender.getsockname())
            assert buf == b"abcd" + b"\xee" * 28
            sender.send(b"z" * 32)
            count, _ = await loop.sock_recvfrom_into(receiver, buf)
            assert (count, buf) == (32, bytearray(b"z" * 32))
    run(LOOPS[loop_name], main)


@needs_311
def test_sock_recvfrom_into_refuses_nbytes_beyond_the_buffer() -> None:
    """nbytes larger than the buffer is a ValueError, before anything is issued (as
    ``socket.recvfrom_into`` says it)."""
    async def main() -> None:
        loop: Any = asyncio.get_running_loop()  # (sock_recvfrom_into etc.: 3.11+)
        receiver, sender = udp_pair()
        with receiver, sender:
            with pytest.raises(ValueError, match="nbytes"):
                await loop.sock_recvfrom_into(receiver, bytearray(8), 9)
            sender.send(b"ok")  # the socket still works
            buf = bytearray(8)
            assert (await loop.sock_recvfrom_into(receiver, buf))[0] == 2
    run(winiocp.aio.new_event_loop, main)


def test_sock_recv_into_lets_go_of_the_buffer() -> None:
    """Once ``sock_recv_into`` returned, the caller may resize its buffer (nothing exports
    it any more), and the loop does not keep it alive."""
    async def main() -> None:
        loop: Any = asyncio.get_running_loop()  # (sock_recvfrom_into etc.: 3.11+)
        client, accepted = tcp_pair()
        with client, accepted:
            for turn in range(4):  # later reads too (an operation re-armed); some pend
                buf = Buffer(1 << 20)
                if turn % 2:
                    loop.call_later(0.05, client.send, b"hello")
                else:
                    client.send(b"hello")
                n = await loop.sock_recv_into(accepted, buf)
                del buf[n:]  # BufferError while the buffer is still exported
                assert buf == b"hello"
                ref = weakref.ref(buf)
                del buf
                gc.collect()
                assert ref() is None
    run(winiocp.aio.new_event_loop, main)


@needs_311
def test_sock_recvfrom_into_lets_go_of_the_buffer() -> None:
    async def main() -> None:
        loop: Any = asyncio.get_running_loop()  # (sock_recvfrom_into etc.: 3.11+)
        receiver, sender = udp_pair()
        with receiver, sender:
            for _ in range(2):
                buf = Buffer(64)
                sender.send(b"dgram")
                n, _ = await loop.sock_recvfrom_into(receiver, buf)
                del buf[n:]
                assert buf == b"dgram"
                ref = weakref.ref(buf)
                del buf
                gc.collect()
                assert ref() is None
    run(winiocp.aio.new_event_loop, main)


@needs_311
def test_sock_sendall_and_sendto_let_go_of_the_buffer() -> None:
    async def main() -> None:
        loop: Any = asyncio.get_running_loop()  # (sock_recvfrom_into etc.: 3.11+)
        client, accepted = tcp_pair()
        receiver, sender = udp_pair()
        with client, accepted, receiver, sender:
            data = bytearray(b"x" * 1000)
            await loop.sock_sendall(client, data)
            del data[10:]
            datagram = bytearray(b"y" * 100)
            await loop.sock_sendto(sender, datagram, receiver.getsockname())
            del datagram[10:]
            assert (await loop.sock_recvfrom(receiver, 200))[0] == b"y" * 100
    run(winiocp.aio.new_event_loop, main)


def test_pipe_reads_and_writes_let_go_of_the_buffer() -> None:
    """The proactor's ReadFile into a caller's buffer and its WriteFile of one."""
    from asyncio import windows_utils

    async def main() -> None:
        loop: Any = asyncio.get_running_loop()  # (sock_recvfrom_into etc.: 3.11+)
        proactor: Any = getattr(loop, "_proactor")
        left, right = windows_utils.pipe(overlapped=(True, True), duplex=True)
        a, b = windows_utils.PipeHandle(left), windows_utils.PipeHandle(right)
        try:
            data = bytearray(b"pipe data")
            assert await proactor.send(a, data) == 9
            del data[4:]
            buf = bytearray(64)
            n = await proactor.recv_into(b, buf)
            del buf[n:]
            assert buf == b"pipe data"
        finally:
            a.close()
            b.close()
    run(winiocp.aio.new_event_loop, main)


def test_let_go_refuses_while_pending_then_frees_the_buffer(
        port: CompletionPort, listener: Socket, stack: ExitStack) -> None:
    """The core mechanism: ``BufferOperation.let_go`` refuses while the kernel may still write
    the buffer, and afterwards leaves it neither exported nor referenced; the operation can
    be re-armed on another buffer."""
    sock, client = connected_pair(port, listener, stack)
    buf = Buffer(16)
    operation = sock.recv_into([buf])
    with pytest.raises(OperationPendingError):
        operation.let_go()
    client.send(b"abc")
    wait_for(port, operation)
    operation.let_go()
    del buf[3:]  # not exported any more
    ref = weakref.ref(buf)
    del buf
    gc.collect()
    assert ref() is None
    other = bytearray(8)
    assert sock.recv_into([other], reuse=operation) is operation
    client.send(b"de")
    assert wait_for(port, operation).bytes_transferred == 2
    assert other[:2] == b"de"
