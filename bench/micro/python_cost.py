"""winiocp's own Python cost per completion and per submission, with the system calls stubbed.

Why: under Wine every real IOCP call costs tens of microseconds in wineserver, which hides
what our Python layer adds. Here the kernel is taken out at the cffi boundary:

* dequeue side: pre-filled ``OVERLAPPED_ENTRY`` arrays (or a stubbed
  GetQueuedCompletionStatus / GetQueuedCompletionStatusEx that hands out prepared
  OVERLAPPEDs at once) pointing at operations registered with the port, timed through
  ``_classify_entries``, ``get()``, ``ConnectionManager.dispatch`` and
  ``ConnectionManager.run_once`` (the Server's loop, which dequeues in batches: the stub hands
  each call up to ``BATCH`` entries, as a loaded server's GetQueuedCompletionStatusEx does;
  ``echo_turn_single_us`` is the same turn with one entry per call, the unloaded case);
* submit side: ``winiocp.sockets.ws2_32`` replaced by an object whose WSARecv/WSASend return
  SOCKET_ERROR with WSAGetLastError() == WSA_IO_PENDING; the operations are unregistered
  afterwards (untimed).
* ``echo_turn_inline_us``: the echo turn with the send done at once, as a loopback WSASend
  with room in the socket's buffer is: the stub returns 0 with the OVERLAPPED filled in, and
  since ``ConnectionManager.add`` put the sockets in FILE_SKIP_COMPLETION_PORT_ON_SUCCESS
  mode, the send's completion comes from the port's own queue, with no dequeue call.

* ``echo_floor_us``: the same turn's necessary work written flat (``echo_floor``), with the
  same stubs, locks and objects but none of the layers: what ``echo_turn_us`` adds to it is
  what the layering costs.

The stubs' own cost (a Python call) is measured and subtracted where a stub sits inside the
timed path; a real cffi call's overhead is measured too (GetLastError, which never leaves user
space) for reference. Prints ``RESULT {json}``; with ``--profile``, a cProfile summary of the
echo turn as well.

    python -m bench.micro.python_cost [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import winiocp.port as port_module
import winiocp.sockets as sockets_module
from winiocp.port import _ENTRY  # pyright: ignore[reportPrivateUsage]  # the record's layout
from winiocp._cdata import CData
from winiocp.connections import Connection, NullHandler
from winiocp.constants import SOCKET_ERROR, WinError
from winiocp.manager import ConnectionManager
from winiocp.operations import Operation, OpKind, RecvOperation
from winiocp.port import CompletionPort
from winiocp.raw import ffi, kernel32
from winiocp.servers import EchoHandler
from winiocp.sockets import Socket

from .echo_floor import floor_echo_turn_us

BATCH = 64
PAYLOAD = b"x" * 64
perf_counter = time.perf_counter


class PendingWinsock:
    """``ws2_32`` as ``winiocp.sockets`` sees it, with WSARecv/WSASend answering "pending"."""

    def __init__(self, real: object) -> None:
        self._real = real
        #: WSASend succeeds at once (0), with the OVERLAPPED as the kernel leaves it.
        self.sends_at_once = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def WSARecv(self, *args: object) -> int:
        return SOCKET_ERROR

    def WSASend(self, socket: int, wsabufs: CData, count: int, sent: CData, flags: int,
                overlapped: CData, routine: CData) -> int:
        if self.sends_at_once:  # STATUS_SUCCESS, all bytes (one buffer in this benchmark)
            overlapped.Internal = 0
            overlapped.InternalHigh = wsabufs[0].len
            return 0
        return SOCKET_ERROR

    def WSAGetLastError(self) -> int:
        return WinError.WSA_IO_PENDING


class DequeueStub:
    """``kernel32`` as ``winiocp.port`` sees it: GetQueuedCompletionStatus(Ex) hands out the
    next prepared OVERLAPPED(s) at once (TRUE, 64 bytes each) instead of waiting in the kernel;
    the Ex form at most ``per_call`` entries a call."""

    def __init__(self, real: object) -> None:
        self._real = real
        self.queue: list[tuple[CData, int]] = []
        self.index = 0
        self.entries = b""  # the queue as OVERLAPPED_ENTRY records
        self.per_call = BATCH

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def load(self, operations: list[Operation], transferred: int = 64,
             per_call: int = BATCH) -> None:
        self.queue = [(op.overlapped, transferred) for op in operations]
        self.index = 0
        self.entries = b"".join(_ENTRY.pack(1, op.address, 0, transferred)
                                for op in operations)
        self.per_call = per_call

    @property
    def left(self) -> int:
        return len(self.queue) - self.index

    def GetQueuedCompletionStatusEx(self, port: CData, entries: CData, count: int,
                                    removed: CData, milliseconds: int, alertable: int) -> int:
        take = min(count, self.per_call, len(self.queue) - self.index)
        if not take:
            raise AssertionError("the benchmark dequeued more than it loaded")
        size = _ENTRY.size
        ffi.memmove(entries, self.entries[self.index * size:(self.index + take) * size],
                    take * size)
        self.index += take
        removed[0] = take
        return 1

    def GetQueuedCompletionStatus(self, port: CData, transferred: CData, key: CData,
                                  overlapped: CData, milliseconds: int) -> int:
        ov, count = self.queue[self.index]
        self.index += 1
        transferred[0] = count
        key[0] = 1
        overlapped[0] = ov
        return 1


#: The fastest round of each measurement (us per item), reported next to the medians.
BEST: dict[str, float] = {}


def median_us(round_seconds: Callable[[], float], items: int, rounds: int,
              name: str = "") -> float:
    """Median over ``rounds`` of one round's time per item, in microseconds (after a warm-up);
    the fastest round goes to ``BEST[name]`` (the least disturbed by other processes)."""
    for _ in range(3):
        round_seconds()
    samples = [round_seconds() / items for _ in range(rounds)]
    if name:
        BEST[name] = min(samples) * 1e6
    return statistics.median(samples) * 1e6


def make_entries(operations: list[Operation], transferred: int = 64) -> CData:
    entries = ffi.new("OVERLAPPED_ENTRY[]", len(operations))
    for index, op in enumerate(operations):
        entries[index].lpOverlapped = op.overlapped
        entries[index].lpCompletionKey = 1
        entries[index].dwNumberOfBytesTransferred = transferred
    return entries


def pending_of_kind(port: CompletionPort, kind: OpKind) -> list[Operation]:
    return [op for op in port.pending_operations() if op.kind is kind]


def run(rounds: int, profile: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"batch": BATCH, "rounds": rounds}
    real_ws2 = getattr(sockets_module, "ws2_32")
    real_k32 = getattr(port_module, "kernel32")
    winsock, dequeue = PendingWinsock(real_ws2), DequeueStub(real_k32)
    setattr(sockets_module, "ws2_32", winsock)
    setattr(port_module, "kernel32", dequeue)
    port = CompletionPort()
    sockets = [Socket() for _ in range(BATCH)]
    try:
        for sock in sockets:
            port.associate(sock)
        sock = sockets[0]

        # -- reference: a real cffi call that stays in user space; the stubs' own cost -----
        def cffi_round() -> float:
            get_last_error = kernel32.GetLastError
            start = perf_counter()
            for _ in range(BATCH):
                get_last_error()
            return perf_counter() - start
        results["cffi_call_us"] = median_us(cffi_round, BATCH, rounds, "cffi_call_us")

        probe_ops: list[Operation] = [RecvOperation(OpKind.RECV, sock) for _ in range(BATCH)]
        out = (ffi.new("DWORD *"), ffi.new("ULONG_PTR *"), ffi.new("LPOVERLAPPED *"))

        def stub_round() -> float:
            dequeue.load(probe_ops)
            gqcs, handle = dequeue.GetQueuedCompletionStatus, port.handle
            start = perf_counter()
            for _ in range(BATCH):
                gqcs(handle, out[0], out[1], out[2], 0)
            return perf_counter() - start
        stub_us = median_us(stub_round, BATCH, rounds, "gqcs_stub_us")
        results["gqcs_stub_us"] = stub_us
        entries_out = (ffi.new("OVERLAPPED_ENTRY[]", BATCH), ffi.new("ULONG *"))

        def stub_ex_round(per_call: int) -> float:
            dequeue.load(probe_ops, per_call=per_call)
            gqcs_ex, handle = dequeue.GetQueuedCompletionStatusEx, port.handle
            start = perf_counter()
            while dequeue.left:
                gqcs_ex(handle, entries_out[0], BATCH, entries_out[1], 0, 0)
            return perf_counter() - start
        # Per completion: a batch's share of one call, and one call per completion.
        ex_us = median_us(lambda: stub_ex_round(BATCH), BATCH, rounds, "gqcs_ex_stub_us")
        ex_single_us = median_us(lambda: stub_ex_round(1), BATCH, rounds,
                                 "gqcs_ex_single_stub_us")
        results["gqcs_ex_stub_us"] = ex_us
        results["gqcs_ex_single_stub_us"] = ex_single_us

        # -- dequeue side --------------------------------------------------------------------
        recv_ops: list[Operation] = []
        for index in range(BATCH):
            op = RecvOperation(OpKind.RECV, sockets[index])
            op.set_buffers([bytearray(64)], writable=True)
            recv_ops.append(op)
        entries = make_entries(recv_ops)

        def classify_round() -> float:
            for op in recv_ops:
                port.register(op)
            start = perf_counter()
            list(port._classify_entries(entries, BATCH))
            return perf_counter() - start
        results["classify_us"] = median_us(classify_round, BATCH, rounds, "classify_us")

        def get_round() -> float:
            for op in recv_ops:
                port.register(op)
            dequeue.load(recv_ops)
            get = port.get
            start = perf_counter()
            for _ in range(BATCH):
                get(0.5)
            return perf_counter() - start
        results["get_us"] = median_us(get_round, BATCH, rounds, "get_us") - stub_us

        manager = ConnectionManager(port)
        connections: list[Connection] = [manager.add(s, NullHandler()) for s in sockets]

        def send_completions() -> list[Operation]:
            for connection in connections:
                connection.send(PAYLOAD)
            return pending_of_kind(port, OpKind.SEND)

        def classify_dispatch_round() -> float:
            sends = send_completions()
            send_entries = make_entries(sends)
            dispatch = manager.dispatch
            start = perf_counter()
            for completion in port._classify_entries(send_entries, len(sends)):
                dispatch(completion)
            return perf_counter() - start
        results["classify_dispatch_us"] = median_us(classify_dispatch_round, BATCH, rounds,
                                                    "classify_dispatch_us")

        def run_once_round() -> float:
            sends = send_completions()
            dequeue.load(sends)
            run_once = manager.run_once
            start = perf_counter()
            while dequeue.left:
                run_once(0.5)
            return perf_counter() - start
        results["run_once_us"] = median_us(run_once_round, BATCH, rounds,
                                           "run_once_us") - ex_us

        # -- submit side ---------------------------------------------------------------------
        buffers = [[bytearray(65536)] for _ in range(BATCH)]
        reusable: list[RecvOperation | None] = [None] * BATCH

        def recv_round() -> float:
            start = perf_counter()
            for index in range(BATCH):
                reusable[index] = sockets[index].recv_into(buffers[index],
                                                           reuse=reusable[index])
            elapsed = perf_counter() - start
            for op in reusable:
                assert op is not None
                port.unregister(op, 0)
            return elapsed
        results["submit_recv_us"] = median_us(recv_round, BATCH, rounds, "submit_recv_us")

        def send_round() -> float:
            start = perf_counter()
            ops = [sockets[index].send(PAYLOAD) for index in range(BATCH)]
            elapsed = perf_counter() - start
            for op in ops:
                port.unregister(op, 0)
            return elapsed
        results["submit_send_us"] = median_us(send_round, BATCH, rounds, "submit_send_us")

        def connection_send_round() -> float:
            start = perf_counter()
            for connection in connections:
                connection.send(PAYLOAD)
            elapsed = perf_counter() - start
            sends = pending_of_kind(port, OpKind.SEND)  # complete them through the layer
            for completion in port._classify_entries(make_entries(sends), len(sends)):
                manager.dispatch(completion)
            return elapsed
        results["connection_send_us"] = median_us(connection_send_round, BATCH, rounds,
                                                  "connection_send_us")

        # -- a whole echo turn through the Server's loop: recv completion -> EchoHandler ->
        #    send + re-posted receive; then the send completion --------------------------------
        for connection in connections:
            connection.handler = EchoHandler()

        def echo_round(per_call: int = BATCH) -> float:
            recvs = pending_of_kind(port, OpKind.RECV)
            dequeue.load(recvs, per_call=per_call)
            run_once = manager.run_once
            start = perf_counter()
            while dequeue.left:
                run_once(0.5)
            middle = perf_counter()
            sends = pending_of_kind(port, OpKind.SEND)
            dequeue.load(sends, per_call=per_call)
            restart = perf_counter()
            while dequeue.left:
                run_once(0.5)
            return (middle - start) + (perf_counter() - restart)
        echo_us = median_us(echo_round, BATCH, rounds, "echo_turn_us") - 2 * ex_us
        BEST["echo_turn_us"] -= 2 * BEST["gqcs_ex_stub_us"]
        results["echo_turn_us"] = echo_us
        results["echo_ceiling_msgs_per_s"] = 1e6 / echo_us
        results["echo_turn_single_us"] = median_us(
            lambda: echo_round(1), BATCH, rounds, "echo_turn_single_us") - 2 * ex_single_us
        BEST["echo_turn_single_us"] -= 2 * BEST["gqcs_ex_single_stub_us"]

        # -- the same turn with the send done at once (skip-on-success) ------------------------
        inline = port._inline  # pyright: ignore[reportPrivateUsage]  # its own queue

        def inline_echo_round() -> float:
            recvs = pending_of_kind(port, OpKind.RECV)
            dequeue.load(recvs)
            run_once = manager.run_once
            start = perf_counter()
            while dequeue.left or inline:
                run_once(0.5)
            return perf_counter() - start

        sending = RecvOperation(OpKind.RECV, sock)  # any operation with one WSABUF will do
        sending.set_buffers([bytearray(64)], writable=True)

        def send_stub_round() -> float:
            wsa_send, wsabufs, overlapped = winsock.WSASend, sending.wsabufs, sending.overlapped
            start = perf_counter()
            for _ in range(BATCH):
                wsa_send(0, wsabufs, 1, ffi.NULL, 0, overlapped, ffi.NULL)
            return perf_counter() - start

        if all(connection.sock.skips_on_success for connection in connections):
            winsock.sends_at_once = True
            try:
                send_stub_us = median_us(send_stub_round, BATCH, rounds, "send_stub_us")
                results["echo_turn_inline_us"] = median_us(
                    inline_echo_round, BATCH, rounds, "echo_turn_inline_us"
                ) - ex_us - send_stub_us
                BEST["echo_turn_inline_us"] -= BEST["gqcs_ex_stub_us"] + BEST["send_stub_us"]
            finally:
                winsock.sends_at_once = False

        # -- the same turn's necessary work written flat (echo_floor): what the layers add --
        results["echo_floor_us"] = floor_echo_turn_us(sockets, winsock, median_us, rounds)

        results["best_round_us"] = dict(BEST)
        if profile:
            turns = max(50, rounds)
            stream = io.StringIO()
            stats = profiled(echo_round, turns, stream)
            stats.print_stats(25)
            results["profile_echo_turn"] = stream.getvalue()
            results["calls_per_echo_turn"] = stats.total_calls / (turns * BATCH)  # type: ignore[attr-defined]
            if "echo_turn_inline_us" in results:
                winsock.sends_at_once = True
                try:
                    stats = profiled(inline_echo_round, turns, io.StringIO())
                finally:
                    winsock.sends_at_once = False
                results["calls_per_echo_turn_inline"] = (
                    stats.total_calls / (turns * BATCH))  # type: ignore[attr-defined]
    finally:
        setattr(sockets_module, "ws2_32", real_ws2)
        setattr(port_module, "kernel32", real_k32)
        for leftover in port.pending_operations():
            port.unregister(leftover, 0)
        for s in sockets:
            s.close()
        port.close()
    return results


def profiled(round_: Callable[[], float], rounds: int, stream: io.StringIO) -> pstats.Stats:
    """``rounds`` runs of ``round_`` under cProfile, sorted by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(rounds):
        round_()
    profiler.disable()
    return pstats.Stats(profiler, stream=stream).strip_dirs().sort_stats(pstats.SortKey.TIME)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    options = parser.parse_args()
    results = run(60 if options.quick else 300, options.profile)
    print("RESULT " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
