"""Readiness on Windows: ``AfdSelector`` vs ``select()``, and ``add_reader`` on each loop.

Why: winiocp watches sockets for readiness with AFD polls on a completion port
(``winiocp.readiness``), in a selector (``winiocp.selectors.AfdSelector``) and inside the
proactor loop (``winiocp.aio.EventLoop.add_reader``). The stock alternatives are the
stdlib's ``selectors.SelectSelector`` (``select()``: at most 512 sockets per set, every
registered socket scanned by every call) and, for a ProactorEventLoop user, tornado's
``AddThreadSelectorEventLoop`` (a thread running ``select()`` beside the loop, handing ready
sockets over with ``call_soon_threadsafe``). Everything here is in one process, over
``socket.socketpair()`` pairs; the variants of one cell are timed in turns (the order
alternating from round to round) so that other load on the machine hits them alike, and
each cell is the median of its rounds.

``--part selectors``: N registered sockets (one end of N pairs; each selector its own N),
K of them ready (a byte sent by the peer and left unread: both selectors are level-triggered
and report them on every call): microseconds per ``select(0)`` call. Then the round trip: one socket becomes
ready (its peer sends a byte), ``select()`` reports it, it is read; microseconds per trip.
N = 2000 for ``AfdSelector`` alone (``SelectSelector`` refuses more than 512).

``--part loops``: a ping-pong driven by ``add_reader`` callbacks over 1 and 10 socket pairs
(both ends of each pair watched; the reader reads the 64-byte message and writes it back,
so one message per pair is always in flight): callbacks (hops) per second on
``winiocp.aio.EventLoop``, tornado's ``AddThreadSelectorEventLoop`` around the stock
``ProactorEventLoop``, ``winiocp.aio.SelectorEventLoop`` (AfdSelector) and the stock
``asyncio.SelectorEventLoop`` (SelectSelector).

Prints ``RESULT {json}``.

    python -m bench.micro.readiness --part selectors|loops [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import selectors
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from winiocp.aio import EventLoop, SelectorEventLoop
from winiocp.selectors import AfdSelector

perf_counter = time.perf_counter
Pair = tuple[socket.socket, socket.socket]
SELECT_LIMIT = 500  # SelectSelector: select() takes at most 512 sockets per set on Windows


def make_pairs(count: int) -> list[Pair]:
    pairs = []
    for _ in range(count):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        pairs.append((a, b))
    return pairs


def close_pairs(pairs: list[Pair]) -> None:
    for a, b in pairs:
        a.close()
        b.close()


def drain(sock: socket.socket) -> None:
    while True:
        try:
            if not sock.recv(65536):
                return
        except BlockingIOError:
            return


def wait_reported(selector: selectors.BaseSelector, wanted: int, timeout: float = 10.0) -> None:
    """Wait until ``selector`` reports ``wanted`` ready sockets at once."""
    deadline = time.monotonic() + timeout
    while len(selector.select(0.05)) != wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{type(selector).__name__} did not report {wanted} ready "
                               "sockets in time")


# -- selectors ------------------------------------------------------------------------------------

def time_select(selector: selectors.BaseSelector, ready: int, seconds: float
                ) -> tuple[float, int]:
    """(us per select(0) call over ``seconds``, calls that did not report ``ready`` sockets)."""
    select = selector.select
    calls = short = 0
    began = perf_counter()
    end = began + seconds
    while True:
        for _ in range(10):
            if len(select(0)) != ready:
                short += 1
        calls += 10
        now = perf_counter()
        if now >= end:
            return 1e6 * (now - began) / calls, short


def time_round_trip(selector: selectors.BaseSelector, pairs: list[Pair], seconds: float,
                    start: int) -> tuple[float, int, int]:
    """(us per trip over ``seconds``, next socket index, other sockets reported): a peer
    sends one byte, select() reports its socket, the socket reads it. The socket changes
    every trip (a stride through all N)."""
    count = len(pairs)
    stride = 7 if count % 7 else 11
    index = start
    trips = others = 0
    select = selector.select
    deadline = time.monotonic() + seconds + 30.0
    began = perf_counter()
    end = began + seconds
    while True:
        a, b = pairs[index]
        b.send(b"x")
        while True:
            events = select(1.0)
            others += sum(1 for key, _ in events if key.fileobj is not a)
            if any(key.fileobj is a for key, _ in events):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{type(selector).__name__}: a ready socket not reported")
        a.recv(16)
        trips += 1
        index = (index + stride) % count
        now = perf_counter()
        if now >= end:
            return 1e6 * (now - began) / trips, index, others


def bench_selectors(quick: bool) -> dict[str, Any]:
    counts = (10, 100, 500, 2000)
    readies = (1, 10)
    rounds = 5 if quick else 15
    batch = 0.03 if quick else 0.04
    began = time.monotonic()
    pairs = make_pairs(max(counts))
    setup_s = time.monotonic() - began
    cells: dict[str, dict[str, Any]] = {}
    trips: dict[str, dict[str, Any]] = {}
    for count in counts:
        variants: dict[str, selectors.BaseSelector] = {"afd": AfdSelector()}
        # Each selector watches sockets of its own (from either end of the pairs): a round
        # trip of one must not make ready, then read, sockets the other is watching.
        mine: dict[str, list[Pair]] = {"afd": pairs[:count]}
        if count <= SELECT_LIMIT:
            variants["select"] = selectors.SelectSelector()
            mine["select"] = pairs[len(pairs) - count:]
        for name, selector in variants.items():
            for a, _ in mine[name]:
                selector.register(a, selectors.EVENT_READ)
        try:
            for ready in readies:
                chosen = [pair for name in variants
                          for pair in (mine[name][i * count // ready] for i in range(ready))]
                for _, b in chosen:
                    b.send(b"x")
                for selector in variants.values():
                    wait_reported(selector, ready)
                samples: dict[str, list[float]] = {name: [] for name in variants}
                short = {name: 0 for name in variants}
                for repeat in range(rounds):
                    names = list(variants)
                    for name in names if repeat % 2 == 0 else names[::-1]:
                        per_call, missed = time_select(variants[name], ready, batch)
                        samples[name].append(per_call)
                        short[name] += missed
                for a, _ in chosen:
                    drain(a)
                cells[f"{count}/{ready}"] = {
                    name: {"us_per_call": statistics.median(values),
                           "runs_us": [round(v, 2) for v in values],
                           "short_calls": short[name]}
                    for name, values in samples.items()}
                log_cell(f"select(0) N={count} K={ready}", cells[f"{count}/{ready}"])
            for selector in variants.values():
                # Nothing is ready now: let the reports of polls still in flight go by.
                for _ in range(20):
                    if not selector.select(0.05):
                        break
            trip_samples: dict[str, list[float]] = {name: [] for name in variants}
            position = {name: 0 for name in variants}
            spurious = {name: 0 for name in variants}
            for repeat in range(rounds):
                names = list(variants)
                for name in names if repeat % 2 == 0 else names[::-1]:
                    per_trip, position[name], others = time_round_trip(
                        variants[name], mine[name], batch, position[name])
                    trip_samples[name].append(per_trip)
                    spurious[name] += others
            trips[str(count)] = {name: {"us_per_trip": statistics.median(values),
                                        "runs_us": [round(v, 2) for v in values],
                                        "other_sockets_reported": spurious[name]}
                                 for name, values in trip_samples.items()}
            log_cell(f"round trip N={count}", trips[str(count)])
        finally:
            for selector in variants.values():
                selector.close()
    close_pairs(pairs)
    return {"select": cells, "round_trip": trips, "rounds": rounds, "batch_s": batch,
            "pairs_setup_s": round(setup_s, 2)}


# -- loops ----------------------------------------------------------------------------------------

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def tornado_loop() -> asyncio.AbstractEventLoop:
    """tornado's AddThreadSelectorEventLoop around a stock ProactorEventLoop (what tornado
    itself does on Windows when add_reader is needed)."""
    module: Any = importlib.import_module("tornado.platform.asyncio")
    loop: asyncio.AbstractEventLoop = module.AddThreadSelectorEventLoop(
        asyncio.ProactorEventLoop())
    return loop


LOOPS: dict[str, LoopFactory] = {
    "winiocp": EventLoop,
    "tornado": tornado_loop,
    "winiocp-selector": SelectorEventLoop,
    "selector": asyncio.SelectorEventLoop,
}


def pingpong(loop: asyncio.AbstractEventLoop, pairs: int, warmup: float, seconds: float
             ) -> float:
    """Hops per second: ``pairs`` socket pairs, a 64-byte message bouncing in each, every
    hop one add_reader callback (read it, write it back)."""
    sockets = make_pairs(pairs)
    hops = 0
    marks: list[tuple[float, int]] = []

    def reader(sock: socket.socket) -> Callable[[], None]:
        def on_readable() -> None:
            nonlocal hops
            try:
                data = sock.recv(64)
            except BlockingIOError:
                return
            hops += 1
            sock.send(data)
        return on_readable

    async def run() -> None:
        for a, b in sockets:
            loop.add_reader(a, reader(a))
            loop.add_reader(b, reader(b))
        for a, _ in sockets:
            a.send(b"m" * 64)
        await asyncio.sleep(warmup)
        marks.append((perf_counter(), hops))
        await asyncio.sleep(seconds)
        marks.append((perf_counter(), hops))
        for a, b in sockets:
            loop.remove_reader(a)
            loop.remove_reader(b)
        # Let the loop take the removals in before the sockets are closed: tornado's select()
        # thread may still be waiting on them (a closed socket there can end that thread).
        await asyncio.sleep(0.05)

    try:
        loop.run_until_complete(run())
    finally:
        close_pairs(sockets)
    (t0, h0), (t1, h1) = marks
    if h1 == h0:
        raise RuntimeError(f"no message moved in {t1 - t0:.1f} s"
                           + (f" ({THREAD_ERRORS[-1]})" if THREAD_ERRORS else ""))
    return (h1 - h0) / (t1 - t0)


#: Exceptions that ended a thread (tornado's select() thread), for the skip reason.
THREAD_ERRORS: list[str] = []


def _thread_died(args: threading.ExceptHookArgs) -> None:
    THREAD_ERRORS.append(f"thread {args.thread.name if args.thread else '?'} died: "
                         f"{args.exc_type.__name__}: {args.exc_value}")
    print(THREAD_ERRORS[-1], file=sys.stderr, flush=True)


def bench_loops(quick: bool) -> dict[str, Any]:
    rounds = 3 if quick else 11
    seconds = 0.5
    warmup = 0.1
    threading.excepthook = _thread_died
    loops: dict[str, asyncio.AbstractEventLoop] = {}
    skipped: dict[str, str] = {}
    for name, factory in LOOPS.items():
        try:
            loops[name] = factory()
        except (ImportError, OSError, RuntimeError) as error:
            skipped[name] = f"{type(error).__name__}: {error}"
    cells: dict[str, dict[str, Any]] = {}
    try:
        for pairs in (1, 10):
            samples: dict[str, list[float]] = {name: [] for name in loops}
            for repeat in range(rounds):
                names = [name for name in loops if name not in skipped]
                for name in names if repeat % 2 == 0 else names[::-1]:
                    try:
                        samples[name].append(pingpong(loops[name], pairs, warmup, seconds))
                    except (OSError, RuntimeError, ValueError) as error:
                        skipped[name] = f"{type(error).__name__}: {error}"
            cells[str(pairs)] = {name: {"hops_per_s": statistics.median(values),
                                        "runs": [round(v) for v in values]}
                                 for name, values in samples.items()
                                 if values and name not in skipped}
            print(f"loops {pairs} pair(s): " + ", ".join(
                f"{name} {cell['hops_per_s']:,.0f}/s" for name, cell in cells[str(pairs)].items()),
                file=sys.stderr, flush=True)
    finally:
        for loop in loops.values():
            loop.close()
    return {"cells": cells, "skipped": skipped, "rounds": rounds, "seconds": seconds,
            "warmup": warmup}


def log_cell(title: str, cell: dict[str, dict[str, Any]]) -> None:
    print(f"{title}: " + ", ".join(
        f"{name} {next(v for k, v in values.items() if k.startswith('us_per')):.1f} us"
        for name, values in cell.items()), file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--part", choices=("selectors", "loops"), required=True)
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    if options.part == "selectors":
        result = bench_selectors(options.quick)
    else:
        result = bench_loops(options.quick)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
