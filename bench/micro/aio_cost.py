"""Python cost and system calls per echoed message of an asyncio loop, with the kernel stubbed.

The Python-cost workload: winiocp.aio against the stock ProactorEventLoop, each driving the same
``asyncio.Protocol`` echo (``data_received`` -> ``transport.write``) over the same fake kernel,
so that what is timed is each loop's own Python above the Win32 functions and what is counted
is the Win32 calls each loop makes per message.

Why stubs: under Wine every real call is a wineserver round trip that drowns the Python cost;
on Windows the Python cost is what limits a loop. Why a fake *kernel* rather than fake
transports: both loops must run their real code from the transport down to the Win32 calls.

Where each loop is cut (the same boundary: the Win32 functions, nothing above them):

* stock: ``asyncio.windows_events._overlapped`` (the C module its ``IocpProactor`` calls) is
  replaced by a Python module whose ``Overlapped`` objects and ``GetQueuedCompletionStatus``
  talk to the fake kernel. Each fake method counts the Win32 calls ``Modules/overlapped.c``
  makes for it (``WSARecvInto`` -> WSARecv, plus WSAGetLastError when it is pending;
  ``getresult`` -> GetOverlappedResult; ``cancel`` of a pending one -> CancelIoEx;
  ``GetQueuedCompletionStatus`` -> GetQueuedCompletionStatus, plus GetLastError on a time-out
  or a failed packet). Anything else of ``_overlapped`` runs for real, counted.
* winiocp: ``kernel32`` / ``ws2_32`` / ``ntdll`` (cffi libraries) are replaced, in every
  ``winiocp`` module that imported them, before ``winiocp.aio`` is imported, by proxies: the
  I/O functions (WSARecv, WSASend, GetQueuedCompletionStatus(Ex), PostQueuedCompletionStatus,
  CancelIoEx, CancelIo, closesocket, Get/WSAGetOverlappedResult, GetLastError,
  WSAGetLastError) talk to the fake kernel; every other function runs for real, counted.
  ``SetFileCompletionNotificationModes`` is recorded: with FILE_SKIP_COMPLETION_PORT_ON_SUCCESS
  an operation that succeeds inline queues no packet, as on Windows.

The fake kernel (``Kernel``): a send succeeds inline (the whole buffer) and, unless the socket
skips them, queues a completion packet; a receive with no data waiting is pending until data
arrives, then it is filled, completed and its packet queued. A fake peer on each connection
sends a 64-byte message, waits for the 64 bytes of echo, and sends the next one; its message
"arrives" when the loop next waits in the kernel (a dequeue call with a non-zero time-out),
as in a real ping-pong where the peer answers while the server is idle. The loop runs in
``run_forever`` until the round's messages have been echoed (the peer calls ``loop.stop()``).
Connections: real loopback socket pairs handed to ``loop.connect_accepted_socket`` (so each
loop makes its own transport), set up before the timed rounds.

What is reported, per echoed message: the loop's Python time (``perf_counter`` over the round,
nothing blocks) less the time spent inside the stubs (each stub times itself) and one timer
read per stub call; the stubs' time beside it; and each Win32 function's call count. Calls
that never enter the kernel (GetLastError, WSAGetLastError, RtlNtStatusToDosError, a
non-waiting GetOverlappedResult) are counted but are not system calls.

Fairness, in detail: the stock loop loses all of ``_overlapped`` (its C methods, and the
construction of its ``Overlapped`` objects, are timed as stubs), winiocp loses the cffi calls
themselves (their argument conversion) but keeps what it does in Python to build their
arguments (``ffi.new``, WSABUFs, pins), which is its own layer's cost. Each loop keeps the cost
of one Python call per stubbed function (a C method call, or a cffi call, costs about as much
or more in the real loop). The calls through Python's ``socket`` module that a loop may make,
winiocp.aio's non-blocking ``recv_into`` after a receive that filled its buffer, go to the
fake kernel too (``KernelSocket``), each counted as the ``recv`` system call it is. Any
other call on the real sockets is neither stubbed nor seen: a loop that echoed that way would
never finish a round (the fake peer sees no echo), and is reported as failing.

One process per loop (the stubs are installed for the life of the process):

    python -m bench.micro.aio_cost --loop winiocp|stock [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import importlib
import io
import json
import os
import pstats
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple, cast

MESSAGE = 64
PAYLOAD = b"x" * MESSAGE
STATUS_PENDING = 0x103
STATUS_CANCELLED = 0xC0000120
WAIT_TIMEOUT = 258
ERROR_OPERATION_ABORTED = 995
ERROR_IO_INCOMPLETE = 996
ERROR_IO_PENDING = 997
ERROR_NOT_FOUND = 1168
SOCKET_ERROR = -1
FILE_SKIP_COMPLETION_PORT_ON_SUCCESS = 1
#: Win32 calls that stay in user space (counted, not system calls).
USER_SPACE = frozenset({"GetLastError", "WSAGetLastError", "SetLastError",
                        "RtlNtStatusToDosError", "GetOverlappedResult",
                        "WSAGetOverlappedResult"})
#: A loop that keeps waiting with nothing to come is broken (or took a path not stubbed).
STALL_LIMIT = 10000

perf_counter = time.perf_counter


class Packet(NamedTuple):
    key: int
    overlapped: object  # what the loop's dequeue hands back: a cdata pointer or a fake object
    address: int
    transferred: int
    status: int  # NTSTATUS


class Receive:
    """A pending receive, as the fake kernel sees it (one per loop flavour)."""

    def fill(self, data: bytes) -> int:
        raise NotImplementedError

    def finish(self, transferred: int, status: int) -> Packet:
        """Mark the operation completed; the packet the port would queue for it."""
        raise NotImplementedError


class Kernel:
    """Sockets, ports and a peer per connection; the stubs of both loops call this."""

    def __init__(self) -> None:
        self.queues: dict[int, collections.deque[Packet]] = {}
        self.association: dict[int, tuple[int, int]] = {}  # handle -> (port, key)
        self.skip: set[int] = set()
        self.receives: dict[int, Receive] = {}
        self.inbound: dict[int, bytes] = {}
        self.peers: set[int] = set()
        self.echoed: dict[int, int] = {}
        self.due: list[int] = []
        self.calls: collections.Counter[str] = collections.Counter()
        self.stub_seconds = 0.0
        self.last_error: int | None = None
        self.target = 0
        self.done = 0
        self.stalls = 0
        self.on_done: Callable[[], None] = lambda: None

    # -- ports -----------------------------------------------------------------------------
    def queue(self, handle: int, packet: Packet) -> None:
        port, key = self.association.get(handle, (0, 0))
        self.queues.setdefault(port, collections.deque()).append(packet._replace(key=key))

    def post(self, port: int, packet: Packet) -> None:
        self.queues.setdefault(port, collections.deque()).append(packet)

    def take(self, port: int, count: int, milliseconds: int) -> list[Packet]:
        """Dequeue up to ``count`` packets; a waiting call first lets the peers' messages in."""
        queue = self.queues.get(port)
        if milliseconds and not queue:
            self.deliver()
            queue = self.queues.get(port)
            if not queue:
                self.stalls += 1
                if self.stalls > STALL_LIMIT:
                    raise RuntimeError("the loop keeps waiting with nothing to come: a path "
                                       "the fake kernel does not model")
                return []
        self.stalls = 0
        if not queue:
            return []
        return [queue.popleft() for _ in range(min(count, len(queue)))]

    # -- sockets ---------------------------------------------------------------------------
    def receive(self, handle: int, operation: Receive) -> int | None:
        """Post a receive: the bytes received at once, or None if it is pending. A zero-byte
        receive completes (with 0) once data is there, and leaves it there."""
        data = self.inbound.pop(handle, None)
        if data is None:
            self.receives[handle] = operation
            return None
        got = operation.fill(data)
        if got < len(data):
            self.inbound[handle] = data[got:]
        return got

    def read_now(self, handle: int, buffer: Any) -> int:
        """A non-blocking ``recv`` into ``buffer``: what is there, or BlockingIOError."""
        start = perf_counter()
        self.calls["recv"] += 1
        try:
            data = self.inbound.pop(handle, None)
            if data is None:
                raise BlockingIOError(10035, "A non-blocking socket operation could not be "
                                             "completed immediately")
            view = memoryview(buffer)
            count = min(len(view), len(data))
            view[:count] = data[:count]
            if count < len(data):
                self.inbound[handle] = data[count:]
            return count
        finally:
            self.stub_seconds += perf_counter() - start

    def send(self, handle: int, data: bytes) -> None:
        if handle not in self.peers:
            return
        echoed = self.echoed.get(handle, 0) + len(data)
        while echoed >= MESSAGE:
            echoed -= MESSAGE
            self.done += 1
            if self.done == self.target:
                self.on_done()
            elif self.done < self.target:
                self.due.append(handle)
        self.echoed[handle] = echoed

    def cancel(self, handle: int, operation: Receive | None) -> bool:
        """Cancel the pending receive on ``handle`` (``operation`` None: whatever it is)."""
        pending = self.receives.get(handle)
        if pending is None or (operation is not None and pending is not operation):
            return False
        del self.receives[handle]
        self.queue(handle, pending.finish(0, STATUS_CANCELLED))
        return True

    def deliver(self) -> None:
        """The peers' next messages arrive."""
        due, self.due = self.due, []
        for handle in due:
            operation = self.receives.pop(handle, None)
            if operation is None:
                self.inbound[handle] = self.inbound.get(handle, b"") + PAYLOAD
            else:
                got = operation.fill(PAYLOAD)
                if got < MESSAGE:  # (a zero-byte receive: the message waits to be read)
                    self.inbound[handle] = PAYLOAD[got:]
                self.queue(handle, operation.finish(got, 0))

    def start_round(self, messages: int, on_done: Callable[[], None]) -> None:
        self.target, self.done, self.on_done = messages, 0, on_done
        self.due = sorted(self.peers)


class KernelSocket(socket.socket):
    """A socket whose non-blocking reads are the fake kernel's: winiocp.aio reads with
    ``recv_into`` (a ``recv`` system call) after a receive that filled its buffer; the stock
    loop never reads that way."""

    kernel: Kernel

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        return self.kernel.read_now(self.fileno(), buffer)


def as_int(value: Any) -> int:
    """A handle or pointer (a cdata, or already an int) as an int."""
    if isinstance(value, int):
        return value
    from winiocp.raw import ffi

    return int(ffi.cast("uintptr_t", value))


# -- winiocp: the cffi boundary ---------------------------------------------------------------

class CffiReceive(Receive):
    def __init__(self, kernel: Kernel, buffers: Any, count: int, overlapped: Any) -> None:
        self.kernel, self.buffers, self.count, self.overlapped = kernel, buffers, count, overlapped

    def fill(self, data: bytes) -> int:
        from winiocp.raw import ffi

        done = 0
        for index in range(self.count):
            wsabuf = self.buffers[index]
            take = min(int(wsabuf.len), len(data) - done)
            ffi.memmove(wsabuf.buf, data[done:done + take], take)
            done += take
        return done

    def finish(self, transferred: int, status: int) -> Packet:
        self.overlapped.Internal = status
        self.overlapped.InternalHigh = transferred
        return Packet(0, self.overlapped, as_int(self.overlapped), transferred, status)


class LibraryStub:
    """A cffi library as winiocp's modules see it: the I/O functions faked over ``Kernel``,
    the rest passed through to the real library; every call counted and timed."""

    FAKED: frozenset[str] = frozenset()

    def __init__(self, real: Any, kernel: Kernel) -> None:
        self._real, self._kernel = real, kernel

    def __getattr__(self, name: str) -> Any:
        function = getattr(self._real, name)
        if not callable(function):
            return function
        wrapper = self._wrap(name)
        setattr(self, name, wrapper)  # found directly from now on
        return wrapper

    def _wrap(self, name: str) -> Callable[..., Any]:
        function = getattr(self._real, name)
        kernel = self._kernel

        def passthrough(*args: Any) -> Any:
            start = perf_counter()
            kernel.calls[name] += 1
            kernel.last_error = None
            try:
                return function(*args)
            finally:
                kernel.stub_seconds += perf_counter() - start

        return passthrough

    def _last_error(self, name: str) -> int:
        start = perf_counter()
        kernel = self._kernel
        kernel.calls[name] += 1
        error = kernel.last_error
        if error is None:
            error = int(getattr(self._real, name)())
        kernel.stub_seconds += perf_counter() - start
        return error


class Kernel32Stub(LibraryStub):
    def GetLastError(self) -> int:
        return self._last_error("GetLastError")

    def CreateIoCompletionPort(self, handle: Any, port: Any, key: int, threads: int) -> Any:
        start = perf_counter()
        kernel = self._kernel
        kernel.calls["CreateIoCompletionPort"] += 1
        result = self._real.CreateIoCompletionPort(handle, port, key, threads)
        if as_int(port):
            kernel.association[as_int(handle)] = (as_int(port), int(key))
        kernel.last_error = None
        kernel.stub_seconds += perf_counter() - start
        return result

    def SetFileCompletionNotificationModes(self, handle: Any, flags: int) -> int:
        start = perf_counter()
        kernel = self._kernel
        kernel.calls["SetFileCompletionNotificationModes"] += 1
        result = int(self._real.SetFileCompletionNotificationModes(handle, flags))
        if result and flags & FILE_SKIP_COMPLETION_PORT_ON_SUCCESS:
            kernel.skip.add(as_int(handle))
        kernel.last_error = None
        kernel.stub_seconds += perf_counter() - start
        return result

    def GetQueuedCompletionStatus(self, port: Any, transferred: Any, key: Any, overlapped: Any,
                                  milliseconds: int) -> int:
        start = perf_counter()
        kernel = self._kernel
        kernel.calls["GetQueuedCompletionStatus"] += 1
        try:
            packets = kernel.take(as_int(port), 1, milliseconds)
            if not packets:
                overlapped[0] = self._null
                kernel.last_error = WAIT_TIMEOUT
                return 0
            packet = packets[0]
            transferred[0], key[0], overlapped[0] = packet.transferred, packet.key, \
                packet.overlapped if packet.overlapped is not None else self._null
            if packet.status:
                kernel.last_error = ERROR_OPERATION_ABORTED
                return 0
            return 1
        finally:
            kernel.stub_seconds += perf_counter() - start

    def GetQueuedCompletionStatusEx(self, port: Any, entries: Any, count: int, removed: Any,
                                    milliseconds: int, alertable: int) -> int:
        start = perf_counter()
        kernel = self._kernel
        kernel.calls["GetQueuedCompletionStatusEx"] += 1
        try:
            packets = kernel.take(as_int(port), count, milliseconds)
            for index, packet in enumerate(packets):
                entry = entries[index]
                entry.lpCompletionKey = packet.key
                entry.lpOverlapped = (packet.overlapped if packet.overlapped is not None
                                      else self._null)
                entry.Internal = packet.status
                entry.dwNumberOfBytesTransferred = packet.transferred
            removed[0] = len(packets)
            if not packets:
                kernel.last_error = WAIT_TIMEOUT
                return 0
            return 1
        finally:
            kernel.stub_seconds += perf_counter() - start

    def PostQueuedCompletionStatus(self, port: Any, transferred: int, key: int,
                                   overlapped: Any) -> int:
        start = perf_counter()
        kernel = self._kernel
        kernel.calls["PostQueuedCompletionStatus"] += 1
        address = as_int(overlapped)
        kernel.post(as_int(port), Packet(int(key), overlapped if address else None, address,
                                         int(transferred), 0))
        kernel.stub_seconds += perf_counter() - start
        return 1

    def CancelIoEx(self, handle: Any, overlapped: Any) -> int:
        start = perf_counter()
        kernel = self._kernel
        kernel.calls["CancelIoEx"] += 1
        pending = kernel.receives.get(as_int(handle))
        address = as_int(overlapped)
        ok = pending is not None and (not address or (
            isinstance(pending, CffiReceive) and as_int(pending.overlapped) == address))
        if ok:
            kernel.cancel(as_int(handle), None)
        else:
            kernel.last_error = ERROR_NOT_FOUND
        kernel.stub_seconds += perf_counter() - start
        return int(ok)

    def CancelIo(self, handle: Any) -> int:
        start = perf_counter()
        self._kernel.calls["CancelIo"] += 1
        self._kernel.cancel(as_int(handle), None)
        self._kernel.stub_seconds += perf_counter() - start
        return 1

    def GetOverlappedResult(self, handle: Any, overlapped: Any, transferred: Any,
                            wait: int) -> int:
        return _overlapped_result(self._kernel, "GetOverlappedResult", overlapped, transferred)

    @property
    def _null(self) -> Any:
        from winiocp.raw import ffi

        return ffi.NULL


def _overlapped_result(kernel: Kernel, name: str, overlapped: Any, transferred: Any) -> int:
    start = perf_counter()
    kernel.calls[name] += 1
    status = int(overlapped.Internal)
    transferred[0] = int(overlapped.InternalHigh)
    result = 1
    if status == STATUS_PENDING:
        kernel.last_error, result = ERROR_IO_INCOMPLETE, 0
    elif status:
        kernel.last_error, result = ERROR_OPERATION_ABORTED, 0
    kernel.stub_seconds += perf_counter() - start
    return result


class Ws2Stub(LibraryStub):
    def WSAGetLastError(self) -> int:
        return self._last_error("WSAGetLastError")

    def WSARecv(self, handle: int, buffers: Any, count: int, received: Any, flags: Any,
                overlapped: Any, routine: Any) -> int:
        start = perf_counter()
        kernel = self._kernel
        kernel.calls["WSARecv"] += 1
        try:
            operation = CffiReceive(kernel, buffers, count, overlapped)
            handle = as_int(handle)
            got = kernel.receive(handle, operation)
            if got is None:
                overlapped.Internal = STATUS_PENDING
                kernel.last_error = ERROR_IO_PENDING
                return SOCKET_ERROR
            packet = operation.finish(got, 0)
            if as_int(received):
                received[0] = got
            if handle not in kernel.skip:
                kernel.queue(handle, packet)
            return 0
        finally:
            kernel.stub_seconds += perf_counter() - start

    def WSASend(self, handle: int, buffers: Any, count: int, sent: Any, flags: int,
                overlapped: Any, routine: Any) -> int:
        start = perf_counter()
        kernel = self._kernel
        kernel.calls["WSASend"] += 1
        from winiocp.raw import ffi

        handle = as_int(handle)
        data = b"".join(ffi.buffer(buffers[i].buf, buffers[i].len)[:] for i in range(count))
        kernel.send(handle, data)
        overlapped.Internal, overlapped.InternalHigh = 0, len(data)
        if as_int(sent):
            sent[0] = len(data)
        if handle not in kernel.skip:
            kernel.queue(handle, Packet(0, overlapped, as_int(overlapped), len(data), 0))
        kernel.stub_seconds += perf_counter() - start
        return 0

    def WSAGetOverlappedResult(self, handle: int, overlapped: Any, transferred: Any,
                               wait: int, flags: Any) -> int:
        return _overlapped_result(self._kernel, "WSAGetOverlappedResult", overlapped,
                                  transferred)

    def closesocket(self, handle: int) -> int:
        # Windows completes a closed socket's pending operations (WSA_OPERATION_ABORTED).
        start = perf_counter()
        self._kernel.cancel(as_int(handle), None)
        self._kernel.stub_seconds += perf_counter() - start
        return int(self._wrap("closesocket")(handle))


class NtdllStub(LibraryStub):
    pass


def _symbol(library: Any, name: str) -> object:
    try:
        return cast(object, getattr(library, name))
    except Exception:  # one ffi for every DLL: a symbol of another DLL is not found here
        return None


def install_winiocp(kernel: Kernel) -> Callable[[], asyncio.AbstractEventLoop]:
    """Replace winiocp's libraries by the stubs, then import winiocp.aio; its factory."""
    raw = importlib.import_module("winiocp.raw")
    stubs: dict[str, LibraryStub] = {
        "kernel32": Kernel32Stub(raw.kernel32, kernel), "ws2_32": Ws2Stub(raw.ws2_32, kernel),
        "ntdll": NtdllStub(raw.ntdll, kernel)}
    reals = {name: getattr(raw, name) for name in stubs}

    def sweep() -> None:
        for name, module in list(sys.modules.items()):
            if name != "winiocp" and not name.startswith("winiocp."):
                continue
            for attribute, stub in stubs.items():
                if getattr(module, attribute, None) is reals[attribute]:
                    setattr(module, attribute, stub)

    sweep()
    aio = importlib.import_module("winiocp.aio")
    sweep()  # whatever winiocp.aio imported that was not loaded yet
    functions = {id(function) for library in reals.values() for name in dir(library)
                 if isinstance(function := _symbol(library, name), raw.ffi.CData)}
    bound = [f"{name}.{attribute}" for name, module in list(sys.modules.items())
             if name.startswith("winiocp") for attribute, value in vars(module).items()
             if id(value) in functions]
    if bound:
        raise RuntimeError(f"winiocp binds cffi functions at import ({', '.join(bound)}): "
                           "they cannot be stubbed at the module boundary")
    return cast(Callable[[], asyncio.AbstractEventLoop], aio.new_event_loop)


# -- the stock loop: _overlapped ------------------------------------------------------------------

class StockOverlappedModule:
    """``_overlapped`` as ``asyncio.windows_events`` sees it."""

    def __init__(self, real: Any, kernel: Kernel) -> None:
        self._real, self._kernel = real, kernel
        self.Overlapped = _fake_overlapped_class(kernel)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._real, name)
        if not callable(value) or isinstance(value, type):
            return value
        kernel = self._kernel

        def passthrough(*args: Any) -> Any:
            start = perf_counter()
            kernel.calls[name] += 1
            try:
                return value(*args)
            finally:
                kernel.stub_seconds += perf_counter() - start

        setattr(self, name, passthrough)
        return passthrough

    def CreateIoCompletionPort(self, handle: int, port: int, key: int, threads: int) -> int:
        start = perf_counter()
        kernel = self._kernel
        kernel.calls["CreateIoCompletionPort"] += 1
        result = int(self._real.CreateIoCompletionPort(handle, port, key, threads))
        if port:
            kernel.association[int(handle)] = (int(port), int(key))
        kernel.stub_seconds += perf_counter() - start
        return result

    def GetQueuedCompletionStatus(self, port: int, milliseconds: int
                                  ) -> tuple[int, int, int, int] | None:
        start = perf_counter()
        kernel = self._kernel
        kernel.calls["GetQueuedCompletionStatus"] += 1
        try:
            packets = kernel.take(int(port), 1, milliseconds)
            if not packets:
                kernel.calls["GetLastError"] += 1
                return None
            packet = packets[0]
            error = 0
            if packet.status:
                kernel.calls["GetLastError"] += 1
                error = ERROR_OPERATION_ABORTED
            return error, packet.transferred, packet.key, packet.address
        finally:
            kernel.stub_seconds += perf_counter() - start

    def PostQueuedCompletionStatus(self, port: int, transferred: int, key: int,
                                   address: int) -> None:
        start = perf_counter()
        self._kernel.calls["PostQueuedCompletionStatus"] += 1
        self._kernel.post(int(port), Packet(key, None, address, transferred, 0))
        self._kernel.stub_seconds += perf_counter() - start


def _fake_overlapped_class(kernel: Kernel) -> type:
    class Overlapped(Receive):
        """``_overlapped.Overlapped``'s socket methods over the fake kernel, each counting the
        Win32 calls overlapped.c makes for it."""

        def __init__(self, event: int = 0) -> None:
            start = perf_counter()  # the real one is C: its construction is not the loop's
            self.event = event
            self.address = id(self)
            self.pending = False
            self.error = 0
            self._handle = 0
            self._size = 0
            self._into: Any = None
            self._result: Any = None
            kernel.stub_seconds += perf_counter() - start

        def fill(self, data: bytes) -> int:
            if self._into is None:
                self._result = data[:self._size]
                return len(self._result)
            count = min(len(self._into), len(data))
            memoryview(self._into)[:count] = data[:count]
            self._result = count
            return count

        def finish(self, transferred: int, status: int) -> Packet:
            self.pending = False
            self.error = ERROR_OPERATION_ABORTED if status else 0
            return Packet(0, self, self.address, transferred, status)

        def _receive(self, handle: int) -> None:
            kernel.calls["WSARecv"] += 1
            self._handle = handle
            got = kernel.receive(handle, self)
            if got is None:
                kernel.calls["WSAGetLastError"] += 1
                self.pending = True
            else:
                kernel.queue(handle, self.finish(got, 0))

        def WSARecv(self, handle: int, size: int, flags: int = 0) -> None:
            start = perf_counter()
            self._size = size
            self._receive(handle)
            kernel.stub_seconds += perf_counter() - start

        def WSARecvInto(self, handle: int, buffer: Any, flags: int = 0) -> None:
            start = perf_counter()
            self._into = buffer
            self._receive(handle)
            kernel.stub_seconds += perf_counter() - start

        def WSASend(self, handle: int, buffer: Any, flags: int = 0) -> None:
            start = perf_counter()
            kernel.calls["WSASend"] += 1
            self._handle = handle
            data = bytes(buffer)
            kernel.send(handle, data)
            self._result = len(data)
            kernel.queue(handle, self.finish(len(data), 0))
            kernel.stub_seconds += perf_counter() - start

        def getresult(self, wait: bool = False) -> Any:
            start = perf_counter()
            kernel.calls["GetOverlappedResult"] += 1
            try:
                if self.pending:
                    raise OSError(None, "Overlapped I/O event is not in a signaled state.",
                                  None, ERROR_IO_INCOMPLETE)
                if self.error:
                    raise OSError(None, "The I/O operation has been aborted.", None,
                                  self.error)
                return self._result
            finally:
                kernel.stub_seconds += perf_counter() - start

        def cancel(self) -> None:
            start = perf_counter()
            if self.pending:
                kernel.calls["CancelIoEx"] += 1
                kernel.cancel(self._handle, self)
            kernel.stub_seconds += perf_counter() - start

    return Overlapped


def install_stock(kernel: Kernel) -> Callable[[], asyncio.AbstractEventLoop]:
    windows_events = importlib.import_module("asyncio.windows_events")
    setattr(windows_events, "_overlapped",
            StockOverlappedModule(getattr(windows_events, "_overlapped"), kernel))
    return cast(Callable[[], asyncio.AbstractEventLoop], windows_events.ProactorEventLoop)


# -- the run ----------------------------------------------------------------------------------------

class Echo(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def timer_cost() -> float:
    """Seconds per ``perf_counter()`` read: the part of each stub's own timing that falls
    outside what it records."""
    reads = 20000
    start = perf_counter()
    for _ in range(reads):
        perf_counter()
    return (perf_counter() - start) / reads


#: winiocp's core below winiocp.aio: what it calls per operation and per dequeue. This is the
#: work the stock loop's ``_overlapped`` does in C (building and issuing each call, reading
#: each completion), timed apart so the layers above it compare with the stock loop's Python.
CORE_ENTRY_POINTS = (("winiocp.sockets", "Socket", "send"),
                     ("winiocp.sockets", "Socket", "recv_into"),
                     ("winiocp.port", "CompletionPort", "get_many"),
                     ("winiocp.port", "CompletionPort", "get_inline"))


def core_seconds(kernel: Kernel, tick: float, run: Callable[[], None]) -> float:
    """Seconds of ``run()`` spent inside CORE_ENTRY_POINTS, stubs excluded (as in the round's
    own figure: each stub's time and one timer read per stub call)."""
    spent = [0.0]
    patched: list[tuple[type, str, Any]] = []

    def timed(function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls_before = sum(kernel.calls.values())
            stub_before = kernel.stub_seconds
            start = perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = perf_counter() - start
                stubbed = kernel.stub_seconds - stub_before + tick * (
                    sum(kernel.calls.values()) - calls_before)
                spent[0] += elapsed - stubbed
        return wrapper

    for module, owner_name, name in CORE_ENTRY_POINTS:
        owner = getattr(importlib.import_module(module), owner_name)
        original = owner.__dict__[name]
        patched.append((owner, name, original))
        setattr(owner, name, timed(original))
    try:
        run()
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)
    return spent[0]


def measure(factory: Callable[[], asyncio.AbstractEventLoop], kernel: Kernel, connections: int,
            messages: int, rounds: int, profile: bool = False, layers: bool = False
            ) -> dict[str, Any]:
    loop = factory()
    pairs = [socket.socketpair() for _ in range(connections)]
    try:
        for index, (server_side, client_side) in enumerate(pairs):
            server_side = KernelSocket(fileno=server_side.detach())
            server_side.kernel = kernel
            pairs[index] = (server_side, client_side)
            kernel.peers.add(server_side.fileno())
            loop.run_until_complete(loop.connect_accepted_socket(Echo, server_side))
        for _ in range(3):
            loop.run_until_complete(asyncio.sleep(0))
        tick = timer_cost()
        samples, stubs, gross = [], [], []
        calls: collections.Counter[str] = collections.Counter()
        for number in range(rounds + 2):  # the first two warm up
            kernel.start_round(messages, loop.stop)
            before_calls, before_stub = kernel.calls.copy(), kernel.stub_seconds
            start = perf_counter()
            loop.run_forever()
            elapsed = perf_counter() - start
            if kernel.done < messages:
                raise RuntimeError(f"round ended after {kernel.done} of {messages} messages")
            if number < 2:
                continue
            round_calls = kernel.calls - before_calls
            stub = kernel.stub_seconds - before_stub + tick * sum(round_calls.values())
            gross.append(elapsed / messages)
            stubs.append(stub / messages)
            samples.append((elapsed - stub) / messages)
            calls += round_calls
        total = messages * rounds
        per_message = {name: count / total for name, count in sorted(calls.items())}
        core: list[float] = []
        if layers:
            def one_round() -> None:
                kernel.start_round(messages, loop.stop)
                loop.run_forever()
            core = [core_seconds(kernel, tick, one_round) / messages for _ in range(3)]
        summary = ""
        if profile:
            profiler = cProfile.Profile()
            kernel.start_round(messages, loop.stop)
            profiler.enable()
            loop.run_forever()
            profiler.disable()
            stream = io.StringIO()
            pstats.Stats(profiler, stream=stream).strip_dirs().sort_stats(
                getattr(pstats.SortKey, os.environ.get("AIO_COST_SORT", "TIME"))
            ).print_stats(int(os.environ.get("AIO_COST_LINES", "30")))
            summary = (f"{messages} echoed messages, {connections} connection(s), stubs "
                       "included\n" + stream.getvalue())
        return {
            "profile": summary,
            "connections": connections, "messages_per_round": messages, "rounds": rounds,
            "loop": f"{type(loop).__module__}.{type(loop).__qualname__}",
            "python_us": statistics.median(samples) * 1e6,
            "python_best_us": min(samples) * 1e6,
            "stub_us": statistics.median(stubs) * 1e6,
            **({"core_us": statistics.median(core) * 1e6} if core else {}),
            "gross_us": statistics.median(gross) * 1e6,
            "timer_us": tick * 1e6,
            "calls_per_message": per_message,
            "system_calls_per_message": sum(v for k, v in per_message.items()
                                            if k not in USER_SPACE),
            "skip_on_success": sorted(kernel.skip & kernel.peers) == sorted(kernel.peers),
        }
    finally:
        kernel.peers.clear()
        for server_side, client_side in pairs:
            client_side.close()
        loop.close()
        for server_side, _ in pairs:
            server_side.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--loop", choices=("winiocp", "stock"), required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--profile", action="store_true",
                        help="one more round of the first connection count under cProfile")
    options = parser.parse_args()
    kernel = Kernel()
    factory = (install_winiocp if options.loop == "winiocp" else install_stock)(kernel)
    messages, rounds = (512, 5) if options.quick else (2048, 15)
    results: dict[str, Any] = {"loop": options.loop, "cells": {}}
    for index, connections in enumerate(int(c) for c in options.connections.split(",")):
        results["cells"][str(connections)] = measure(
            factory, kernel, connections, messages, rounds, options.profile and index == 0,
            layers=options.loop == "winiocp")
    print("RESULT " + json.dumps(results), flush=True)
    sys.stdout.flush()
    os._exit(0)  # the stubs stay installed: skip the interpreter's teardown through them


if __name__ == "__main__":
    raise SystemExit(main())
