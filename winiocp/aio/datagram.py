"""winiocp.aio's datagram transport: asyncio's proactor datagram transport, its writing made
right.

``EventLoop.create_datagram_endpoint`` makes one (``EventLoop._make_datagram_transport``).
Receiving is asyncio's (one WSARecvFrom, or WSARecv when connected, through the loop's
proactor); what changes is the write side, where asyncio's ``_ProactorDatagramTransport``
goes wrong in ways this class does not:

* **Flow control.** From CPython 3.13.0 to 3.13.5, ``sendto`` adds each datagram's size plus
  8 bytes (its UDP header) to the write buffer size, and sending it subtracts only its size
  (CPython gh-135444): the size never comes back to 0, and a protocol paused with a
  high-water mark of 0 (anyio sets one) is never resumed. Here a datagram leaves the count as
  it entered it, so ``get_write_buffer_size()`` is exactly what is queued, and
  ``resume_writing`` comes once the queue is back under the low-water mark.
* **Closing.** asyncio's write loop stops as soon as the transport is closing: what was still
  queued when ``close()`` was called is never sent, and ``connection_lost`` (with the close
  of the socket) never happens (CPython gh-156920). Here ``close()`` sends what is queued
  first, then calls ``connection_lost``, as asyncio's selector transport does.
* **A failed send.** asyncio reports it to ``error_received`` and stops: the datagrams
  queued behind it wait for the next ``sendto``, and a paused protocol is never resumed
  (CPython gh-156698). Here the next datagram goes on, and the protocol is resumed once the
  queue drained.
* **Reading.** Each datagram is received into the transport's own buffer, reused by the
  next receive, where asyncio's allocates a new 256 KiB buffer per datagram; a receive that
  fails is ``error_received`` and reading goes on (asyncio stopped reading for good).
* **After the end.** A ``sendto`` on a closed or aborted transport is dropped (and counted,
  with asyncio's warning past ``LOG_THRESHOLD_FOR_CONNLOST_WRITES``), connected or not; asyncio
  queued it forever on an unconnected transport (or, once aborted, raised AttributeError).

What a version of asyncio accepts is accepted the same:
an empty datagram is sent from 3.13 on and ignored before, and the write buffer counts 8
bytes per queued datagram from 3.13 on, as asyncio counts it there.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from asyncio import constants, proactor_events
from typing import TYPE_CHECKING, Any

from ..addresses import Address

if TYPE_CHECKING:
    from .loop import EventLoop

log: logging.Logger = logging.getLogger("winiocp.aio")
#: Whether an empty datagram is sent (asyncio sends one from 3.13 on, ignores it before).
SENDS_EMPTY = sys.version_info >= (3, 13)
#: What each queued datagram adds to the write buffer size besides its bytes (its UDP
#: header, as asyncio counts it from 3.13 on).
HEADER_SIZE = 8 if sys.version_info >= (3, 13) else 0


if TYPE_CHECKING:  # typeshed leaves asyncio's proactor datagram transport out
    _Base = asyncio.DatagramTransport
else:
    _Base = proactor_events._ProactorDatagramTransport


class DatagramTransport(_Base):
    """asyncio's proactor datagram transport, with exact flow control and a close that sends
    what is queued (see the module docstring)."""

    if TYPE_CHECKING:  # asyncio's private transport state, which typeshed leaves out
        _loop: EventLoop
        _protocol: asyncio.DatagramProtocol
        _closing: bool
        _sock: socket.socket | None
        max_size: int

        def _fatal_error(self, exc: BaseException, message: str = ...) -> None: ...

        def _maybe_pause_protocol(self) -> None: ...

        def _maybe_resume_protocol(self) -> None: ...

        def _call_connection_lost(self, exc: BaseException | None) -> None: ...

    def __init__(self, loop: EventLoop, sock: socket.socket,
                 protocol: asyncio.BaseProtocol, address: Address | None = None,
                 waiter: asyncio.Future[None] | None = None,
                 extra: dict[str, object] | None = None) -> None:
        self._buffer_size = 0  # (asyncio's has no count before 3.11)
        #: What each datagram is received into, one receive at a time.
        self._read_buffer = bytearray(self.max_size)
        base: Any = super()
        base.__init__(loop, sock, protocol, address, waiter, extra)

    def get_write_buffer_size(self) -> int:
        """Bytes of the datagrams queued and not yet handed to a send (plus ``HEADER_SIZE``
        each)."""
        return self._buffer_size

    def sendto(self, data: bytes | bytearray | memoryview,  # type: ignore[override]
               addr: Address | None = None) -> None:
        """As asyncio's ``sendto``; after ``close()`` or ``abort()`` the datagram is
        dropped."""
        state: Any = self
        if not isinstance(data, (bytes, bytearray, memoryview)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if not data and not SENDS_EMPTY:
            return
        address = state._address
        if address is not None and addr not in (None, address):
            raise ValueError(f"Invalid address: must be None or {address}")
        if state._conn_lost:
            if state._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                log.warning("socket.sendto() raised exception.")
            state._conn_lost += 1
            return
        data = bytes(data)  # what is queued cannot change
        state._buffer.append((data, addr))
        state._buffer_size += len(data) + HEADER_SIZE
        if state._write_fut is None:
            self._loop_writing()
        self._maybe_pause_protocol()

    def _loop_writing(self, fut: asyncio.Future[int] | None = None) -> None:
        """Send the next queued datagram once the last send is done; once none is left, a
        closing transport's ``connection_lost``. A send that fails is the protocol's
        ``error_received``, and the next datagram goes on."""
        state: Any = self
        if fut is not None and fut is not state._write_fut:
            return  # (a send an abort cancelled)
        state._write_fut = None
        if fut is not None and not fut.cancelled():
            exc = fut.exception()
            if isinstance(exc, OSError):
                self._protocol.error_received(exc)
            elif exc is not None:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return
        buffer = state._buffer
        while True:
            if buffer is None or state._sock is None:
                return  # aborted: nothing more goes out
            if not buffer:
                self._maybe_resume_protocol()
                if self._closing:
                    self._loop.call_soon(self._call_connection_lost, None)
                return
            data, addr = buffer.popleft()
            state._buffer_size -= len(data) + HEADER_SIZE
            try:
                proactor: Any = self._loop.proactor
                if proactor is None:
                    raise ConnectionAbortedError("the event loop is closed")
                if state._address is not None:
                    sending = proactor.send(state._sock, data)
                else:
                    sending = proactor.sendto(state._sock, data, addr=addr)
            except OSError as exc:
                self._protocol.error_received(exc)
                continue  # the next datagram
            except Exception as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return
            state._write_fut = sending
            sending.add_done_callback(self._loop_writing)
            self._maybe_resume_protocol()
            return

    def _loop_reading(self, fut: asyncio.Future[Any] | None = None) -> None:
        """Deliver the datagram a receive brought, once the next receive is posted. Each
        is received into the transport's own buffer (``_read_buffer``), which the next
        receive reuses: asyncio's allocates a new 256 KiB buffer per datagram (for winiocp's
        proactor, a zeroed one). A receive that fails is the protocol's ``error_received``,
        and reading goes on (asyncio's stopped reading for good)."""
        state: Any = self
        if state._conn_lost:
            return  # closing: what a receive brings now is dropped
        if fut is not state._read_fut:
            return  # (not the receive in flight)
        state._read_fut = None
        data: bytes | None = None
        addr: Address | None = None
        if fut is not None:
            if fut.cancelled():
                return  # (cancelled by a close, which ends reading)
            exc = fut.exception()
            if exc is None:
                if state._address is not None:
                    count, addr = fut.result(), state._address
                else:
                    count, addr = fut.result()
                data = bytes(memoryview(self._read_buffer)[:count])  # before it is reused
            elif isinstance(exc, OSError):
                self._protocol.error_received(exc)
            else:
                self._fatal_error(exc, "Fatal read error on datagram transport")
                return
        try:
            proactor: Any = self._loop.proactor
            if proactor is None:
                raise ConnectionAbortedError("the event loop is closed")
            if state._address is not None:
                receiving = proactor.recv_into(state._sock, self._read_buffer)
            else:
                receiving = proactor.recvfrom_into(state._sock, self._read_buffer)
        except OSError as exc:
            self._protocol.error_received(exc)  # (as asyncio: a socket that cannot receive)
        else:
            state._read_fut = receiving
            receiving.add_done_callback(self._loop_reading)
        if data:
            self._protocol.datagram_received(data, addr)  # type: ignore[arg-type]

    def _force_close(self, exc: BaseException | None) -> None:
        state: Any = self
        state._buffer_size = 0  # (asyncio's drops the queue, not its count)
        base: Any = super()
        base._force_close(exc)
