"""Post+GQCS drain rates: the same packet loop through five Python routes to a completion port.

Why: it isolates the cost of one trip through PostQueuedCompletionStatus and one dequeue, from
Python, with no sockets: winiocp's ``post`` + ``get``/``get_many``; the raw cffi calls
winiocp makes underneath; the stdlib's ``_overlapped`` (what asyncio's proactor uses); and
pywin32's ``win32file``. The C floor is ``bench/c/iocp_drain.c``. Under Wine each real call is
a wineserver round trip, so these rates mostly measure Wine; the difference between winiocp
and raw cffi is our own overhead.

Each cycle posts BATCH packets (NULL OVERLAPPED, key 1, 64 bytes) then dequeues all of them
with a zero time-out (the ``_overlapped`` route posts a dummy OVERLAPPED's address instead of
NULL, which its GetQueuedCompletionStatus cannot return). Prints ``RESULT {json}``: per route, packets/s of whole cycles and
microseconds per post and per dequeued packet.

    python -m bench.micro.drain [--seconds S] [--batch N]
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from winiocp.port import CompletionPort
from winiocp.raw import INVALID_HANDLE, ffi, kernel32

perf_counter = time.perf_counter
#: (post one packet, dequeue up to n packets -> how many came)
Route = tuple[Callable[[], None], Callable[[int], int]]


def measure(route: Route, seconds: float, batch: int) -> dict[str, float]:
    post, dequeue = route
    for _ in range(3):  # warm-up cycles
        for _ in range(batch):
            post()
        left = batch
        while left:
            left -= dequeue(left)
    post_time = drain_time = 0.0
    packets = 0
    end = perf_counter() + seconds
    while perf_counter() < end:
        a = perf_counter()
        for _ in range(batch):
            post()
        b = perf_counter()
        left = batch
        while left:
            left -= dequeue(left)
        c = perf_counter()
        post_time += b - a
        drain_time += c - b
        packets += batch
    return {"packets": packets, "packets_per_s": packets / (post_time + drain_time),
            "post_us": 1e6 * post_time / packets, "dequeue_us": 1e6 * drain_time / packets}


def winiocp_routes(port: CompletionPort) -> dict[str, Route]:
    def post() -> None:
        port.post(1, 64)

    def get(n: int) -> int:
        port.get(0)
        return 1

    def get_many(n: int) -> int:
        return len(port.get_many(0, n))

    return {"winiocp get": (post, get), "winiocp get_many": (post, get_many)}


def cffi_routes(handle: Any) -> dict[str, Route]:
    transferred, key = ffi.new("DWORD *"), ffi.new("ULONG_PTR *")
    overlapped = ffi.new("LPOVERLAPPED *")
    entries, removed = ffi.new("OVERLAPPED_ENTRY[]", 256), ffi.new("ULONG *")
    post_status, gqcs = kernel32.PostQueuedCompletionStatus, kernel32.GetQueuedCompletionStatus
    gqcs_ex, null = kernel32.GetQueuedCompletionStatusEx, ffi.NULL

    def post() -> None:
        post_status(handle, 64, 1, null)

    def get(n: int) -> int:
        gqcs(handle, transferred, key, overlapped, 0)
        return 1

    def get_ex(n: int) -> int:
        gqcs_ex(handle, entries, min(n, 256), removed, 0, 0)
        return int(removed[0])

    return {"raw cffi GQCS": (post, get), "raw cffi GQCSEx": (post, get_ex)}


class StdlibOverlapped(Protocol):
    """The part of the stdlib's ``_overlapped`` used here (this mypy's typeshed lacks it)."""

    INVALID_HANDLE_VALUE: int

    def CreateIoCompletionPort(self, handle: int, port: int, key: int, threads: int, /
                               ) -> int: ...
    def PostQueuedCompletionStatus(self, port: int, transferred: int, key: int,
                                   address: int, /) -> None: ...
    def GetQueuedCompletionStatus(self, port: int, milliseconds: int, /
                                  ) -> tuple[int, int, int, int] | None: ...
    def Overlapped(self, event: int = ..., /) -> Any: ...


def overlapped_route() -> tuple[Route, Callable[[], None]]:
    _overlapped = cast(StdlibOverlapped, importlib.import_module("_overlapped"))
    port = _overlapped.CreateIoCompletionPort(_overlapped.INVALID_HANDLE_VALUE, 0, 0, 0)
    # A real OVERLAPPED's address, not NULL: _overlapped.GetQueuedCompletionStatus raises
    # OSError (WinError 0) for a dequeued packet whose OVERLAPPED is NULL.
    carrier = _overlapped.Overlapped(0)
    address = int(carrier.address)

    def post() -> None:
        _overlapped.PostQueuedCompletionStatus(port, 64, 1, address)

    def get(n: int) -> int:
        return 0 if _overlapped.GetQueuedCompletionStatus(port, 0) is None else 1

    def close() -> None:
        kernel32.CloseHandle(ffi.cast("HANDLE", port))

    return (post, get), close


def pywin32_route() -> tuple[Route, Callable[[], None]]:
    from bench.servers import _pywin32

    win32file = _pywin32.load()
    port = win32file.CreateIoCompletionPort(win32file.INVALID_HANDLE_VALUE, None, 0, 0)

    def post() -> None:
        win32file.PostQueuedCompletionStatus(port, 64, 1, None)

    def get(n: int) -> int:
        rc = win32file.GetQueuedCompletionStatus(port, 0)[0]
        return 1 if rc == 0 else 0

    def close() -> None:
        win32file.CloseHandle(port)

    return (post, get), close


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    options = parser.parse_args()
    results: dict[str, Any] = {"batch": options.batch, "seconds": options.seconds}
    with CompletionPort(batch_size=256) as port:
        for name, route in winiocp_routes(port).items():
            results[name] = measure(route, options.seconds, options.batch)
    raw = kernel32.CreateIoCompletionPort(INVALID_HANDLE, ffi.NULL, 0, 0)
    try:
        for name, route in cffi_routes(raw).items():
            results[name] = measure(route, options.seconds, options.batch)
    finally:
        kernel32.CloseHandle(raw)
    for name, factory in (("_overlapped", overlapped_route), ("pywin32", pywin32_route)):
        try:
            route, close = factory()
        except ImportError as exc:
            results[name] = {"error": str(exc)}
            continue
        try:
            results[name] = measure(route, options.seconds, options.batch)
        finally:
            close()
    print("RESULT " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
