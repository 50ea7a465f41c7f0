"""Run every winiocp benchmark in one go and write the report.

    python3 bench/run.py [--quick] [--only echo,aio,wine,readiness,python,drain,churn,memory]

On the Linux host: provisions Wine, the Windows CPython and the bench-only wheels (pywin32,
winloop; through tools/winenv.py),
compiles the C programs (host gcc: the load generator; MinGW-w64: the C servers), then runs,
side by side on this machine under the same Wine and the same load generator:

1. echo messages/s and p50/p99 latency at 1, 16, 64 and 256 connections — winiocp
   (``python -m winiocp serve echo``) vs asyncio's ProactorEventLoop vs thread-per-connection
   vs pywin32 IOCP vs C IOCP;
1b. (``aio``) the same ping-pong against one asyncio echo server (a Protocol, and streams) on
   each event loop: ``winiocp.aio.EventLoop`` vs the stock ProactorEventLoop vs
   SelectorEventLoop vs winloop; then, on each loop, bulk (one connection one way, MB/s) and
   churn (connections/s), and for winiocp.aio and the stock loop the Python cost and system
   calls per echoed message over a stubbed kernel (bench/micro/aio_cost.py);
1c. (``wine``) the wineserver requests each loop makes per echoed message, per connection of
   churn and per MiB of bulk (bench/wine_requests.py): what the work costs under Wine;
1d. (``readiness``) ``winiocp.selectors.AfdSelector`` vs the stdlib's ``SelectSelector``
   (select(0) with N registered and K ready, and a one-socket round trip), and an
   ``add_reader`` ping-pong on ``winiocp.aio.EventLoop`` vs tornado's
   ``AddThreadSelectorEventLoop`` around the stock ProactorEventLoop vs
   ``winiocp.aio.SelectorEventLoop`` vs the stock SelectorEventLoop
   (bench/micro/readiness.py);
2. winiocp's own Python cost per completion and per submission (system calls stubbed), and
   Post+GQCS drain rates (winiocp, raw cffi, ``_overlapped``, pywin32, C);
3. connection churn with and without TIME_WAIT avoidance, and the TIME_WAIT left behind;
4. private bytes per idle connection at 5,000 connections, zero-byte reads vs a pinned
   64 KiB buffer.

Writes bench/results/results.json and results.md (and chart.png with matplotlib), and copies
the markdown to bench/RESULTS.md. Full run: about 16 minutes on 2 cores (the aio section
about 8 of them, readiness 1.5); --quick: about 3.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness, report, wine_requests  # noqa: E402
from bench.harness import WindowsProcess, exe_command, log, python_command  # noqa: E402

SECTIONS = ("echo", "aio", "wine", "readiness", "python", "drain", "churn", "memory")


@dataclass(frozen=True)
class Settings:
    quick: bool
    counts: tuple[int, ...] = (1, 16, 64, 256)
    workers: int = 2
    echo_seconds: float = 4.0
    warmup: float = 0.5
    echo_repeats: int = 2
    drain_seconds: float = 1.0
    drain_repeats: int = 3
    churn_seconds: float = 3.0
    churn_concurrency: int = 16
    bulk_bytes: int = 256 * 2**20
    bulk_repeats: int = 7  # a 256 MiB run lasts 0.1-0.5 s, and runs come out bimodal
    memory_connections: int = 5000
    memory_base: int = 100
    rehold: bool = True
    wait_quiet: float = 180.0  # in all, at most, waiting for other people's test runs to end
    traced_messages: int = 2000  # echoed per connection count with wineserver tracing on

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if not quick:
            return cls(quick=False)
        return cls(quick=True, echo_seconds=1.0, warmup=0.3, echo_repeats=1, drain_seconds=0.5,
                   drain_repeats=1, churn_seconds=1.0, memory_connections=2000, rehold=False,
                   wait_quiet=0.0, bulk_bytes=32 * 2**20, traced_messages=400)


# -- 1. echo ----------------------------------------------------------------------------------

def echo_servers(workers: int) -> dict[str, tuple[list[str], bool]]:
    """name -> (command, whether it stops on stdin EOF)."""
    return {
        "winiocp": (python_command("-m", "winiocp", "serve", "echo", "--port", "0", "--workers",
                                   str(workers)), False),
        "winiocp-1w": (python_command("-m", "winiocp", "serve", "echo", "--port", "0",
                                      "--workers", "1"), False),
        "asyncio": (python_command("-m", "bench.servers.asyncio_echo"), True),
        "thread": (python_command("-m", "bench.servers.thread_echo"), True),
        "pywin32": (python_command("-m", "bench.servers.pywin32_echo", "--workers",
                                   str(workers)), True),
        "c": (exe_command("iocp_echo.exe", "0", str(workers)), True),
    }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each metric over repeated runs (the runs are kept too)."""
    combined: dict[str, Any] = {"runs": runs, "connections": runs[0]["connections"]}
    for key in ("messages_per_s", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
                "server_cpu_us_per_msg", "wineserver_cpu_us_per_msg"):
        values = [float(run[key]) for run in runs if key in run]
        if values:
            combined[key] = statistics.median(values)
    combined["errors"] = sum(int(run["errors"]) for run in runs)
    # Fairness: the worst run counts (the fewest connections answered, the longest wait).
    for key, worst in (("served_connections", min), ("oldest_unanswered_us", max),
                       ("accept_queue_at_start", max), ("accept_queue_at_end", max)):
        found = [run[key] for run in runs if key in run]
        if found:
            combined[key] = worst(found)
    return combined


def pingpong_matrix(servers: dict[str, tuple[list[str], bool]], settings: Settings,
                    section: str) -> tuple[dict[str, dict[str, Any]], dict[str, str],
                                           dict[str, str]]:
    """Start every server, then ping-pong each at each connection count, interleaved.

    Returns (cells: name -> count -> combined runs, skipped: name -> why it was not measured,
    banners: name -> the server's first ``loop ...`` line if it printed one). A server that
    fails to start, or breaks the load generator, is skipped with the reason; the rest go on.
    """
    processes: dict[str, WindowsProcess] = {}
    ports: dict[str, int] = {}
    skipped: dict[str, str] = {}
    banners: dict[str, str] = {}
    samples: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {count: [] for count in settings.counts} for name in servers}
    try:
        for name, (command, _) in servers.items():
            processes[name] = WindowsProcess(command, name)
            try:
                ports[name] = processes[name].listening_port()
            except (RuntimeError, TimeoutError) as error:
                skipped[name] = f"did not start: {_last_lines(error)}"
                log(f"{section} {name}: {skipped[name]}")
                continue
            banner = next((line for line in processes[name].lines
                           if line.startswith("loop ")), "")
            if banner:
                banners[name] = banner[len("loop "):]
        log(f"{section} servers listening: {ports}")
        for repeat in range(settings.echo_repeats):
            for index, count in enumerate(settings.counts):
                # Alternate the order so no server always runs first (or right after another).
                names = [name for name in servers if name in ports and name not in skipped]
                order = names if (index + repeat) % 2 == 0 else names[::-1]
                for name in order:
                    try:
                        result = measure_pingpong(processes[name].process.pid, ports[name],
                                                  count, settings)
                    except (RuntimeError, subprocess.TimeoutExpired) as error:
                        skipped[name] = (f"failed at {count} connections: "
                                         f"{_last_lines(error)}")
                        log(f"{section} {name}: {skipped[name]}")
                        continue
                    samples[name][count].append(result)
                    log(f"{section} {name:16} {count:4} conn: "
                        f"{result['messages_per_s']:9,.0f} msg/s "
                        f"p50 {result['p50_us'] / 1000:7.2f} ms p99 "
                        f"{result['p99_us'] / 1000:7.2f} ms errors {result['errors']}")
                    time.sleep(0.3)
    finally:
        for name, process in processes.items():
            process.stop(timeout=15 if servers[name][1] else 0)
    cells = {name: {str(count): combine(runs) for count, runs in by_count.items() if runs}
             for name, by_count in samples.items() if name not in skipped}
    return cells, skipped, banners


def during(cells: dict[str, Any]) -> dict[str, float]:
    """Load seen during a ping-pong section, over every run in ``cells`` (nested by server,
    and for aio by API, down to each combined cell's ``runs``): the most foreign test
    processes at the start of a run, and the median share of the machine's CPU not ours."""
    runs: list[dict[str, Any]] = []

    def collect(node: dict[str, Any]) -> None:
        if "runs" in node:
            runs.extend(node["runs"])
            return
        for value in node.values():
            if isinstance(value, dict):
                collect(value)

    collect(cells)
    others = [float(run["other_cpu_percent"]) for run in runs if "other_cpu_percent" in run]
    return {"foreign_during": max((int(run.get("foreign_processes", 0)) for run in runs),
                                  default=0),
            "other_cpu_percent": round(statistics.median(others), 1) if others else -1.0}


def _last_lines(error: BaseException) -> str:
    """An exception's message, its last 3 lines only (server output can be long)."""
    return " / ".join(line.strip() for line in str(error).strip().splitlines()[-3:])


def measure_pingpong(pid: int, port: int, count: int, settings: Settings) -> dict[str, Any]:
    """One load-generator run, with the CPU per message of the server and its wineserver, and
    how many of other people's test processes were running when it began."""
    foreign = len(harness.foreign_test_processes())
    server_cpu = harness.process_cpu_seconds(pid)
    wineserver = harness.bench_wineserver_pid()
    wine_cpu = harness.process_cpu_seconds(wineserver) if wineserver else 0.0
    busy, loadgen = harness.busy_cpu_seconds(), harness.children_cpu_seconds()
    began = time.monotonic()
    # How many connections the server had not yet accepted when the measured window opened:
    # the usual reason a loop leaves connections unanswered (``served_connections``).
    # How many connections the server had not yet accepted when the measured window opened
    # and just before it closed: the usual reason a loop leaves connections unanswered
    # (``served_connections``), and how fast it accepts them under load.
    backlog: dict[str, int] = {}
    samplers = [threading.Timer(delay, lambda key=key: backlog.update(
                    {key: harness.accept_queue(port)}))
                for key, delay in (("accept_queue_at_start", settings.warmup),
                                   ("accept_queue_at_end",
                                    settings.warmup + 0.95 * settings.echo_seconds))]
    for sampler in samplers:
        sampler.start()
    result = harness.pingpong(port, count, settings.echo_seconds, settings.warmup)
    for sampler in samplers:
        sampler.join()
    result.update(backlog)
    if len(backlog) == 2:
        result["accept_queue_seconds"] = 0.95 * settings.echo_seconds
    wall = time.monotonic() - began
    ours = (harness.process_cpu_seconds(pid) - server_cpu + harness.children_cpu_seconds()
            - loadgen + (harness.process_cpu_seconds(wineserver) - wine_cpu if wineserver
                         else 0.0))
    # The rest of the machine's busy time: other people's work, plus what the kernel does
    # for loopback outside any process (softirq), so a few percent even on a quiet machine.
    result["other_cpu_percent"] = max(0.0, 100.0 * (harness.busy_cpu_seconds() - busy - ours)
                                      / (wall * (os.cpu_count() or 1)))
    # CPU per message over the whole run (warm-up included, at about the same rate): the
    # server process (all threads) and the wineserver.
    sent = result["messages_per_s"] * (settings.echo_seconds + settings.warmup)
    if sent > 0:
        result["server_cpu_us_per_msg"] = 1e6 * (
            harness.process_cpu_seconds(pid) - server_cpu) / sent
        result["wineserver_cpu_us_per_msg"] = 1e6 * (
            harness.process_cpu_seconds(wineserver) - wine_cpu) / sent if wineserver else 0.0
    result["foreign_processes"] = foreign
    return result


def bench_echo(settings: Settings) -> dict[str, Any]:
    cells, skipped, _ = pingpong_matrix(echo_servers(settings.workers), settings, "echo")
    if skipped:
        raise RuntimeError(f"echo servers failed: {skipped}")
    return {
        "cells": cells,
        "note": (f"Each cell: the median of {settings.echo_repeats} run(s) of "
                 f"{settings.echo_seconds:g} s (after {settings.warmup:g} s of warm-up) by "
                 "`bench/loadgen.c`, interleaved across servers. The IOCP servers (winiocp, "
                 f"pywin32, C) run {settings.workers} worker threads on one port (winiocp-1w: "
                 "the same CLI server with --workers 1, for contrast); asyncio one "
                 "thread; the thread server one thread per connection. All five servers stay "
                 "up for the whole section; only the one under load is busy."),
    }


# -- 1b. aio: asyncio event loops ---------------------------------------------------------------

AIO_LOOPS = ("winiocp", "stock", "selector", "winloop")
AIO_APIS = ("protocol", "streams")


def aio_servers() -> dict[str, tuple[list[str], bool]]:
    """``API/LOOP`` -> (command, stops on stdin EOF): bench/servers/aio_echo.py on each loop."""
    return {f"{api}/{loop}": (python_command("-m", "bench.servers.aio_echo", "--loop", loop,
                                             "--api", api), True)
            for api in AIO_APIS for loop in AIO_LOOPS}


def bench_aio(settings: Settings) -> dict[str, Any]:
    cells, skipped, banners = pingpong_matrix(aio_servers(), settings, "aio")
    by_api: dict[str, dict[str, Any]] = {api: {} for api in AIO_APIS}
    for name, by_count in cells.items():
        api, loop = name.split("/")
        by_api[api][loop] = by_count
    return {
        "cells": by_api,
        "skipped": skipped,
        "loops": banners,
        "note": (f"Each cell: the median of {settings.echo_repeats} run(s) of "
                 f"{settings.echo_seconds:g} s (after {settings.warmup:g} s of warm-up) of "
                 "64-byte ping-pong by `bench/loadgen.c`, interleaved across servers. Every "
                 "server is `bench/servers/aio_echo.py` (one thread): the same application "
                 "code on each loop, only the loop factory differs. `protocol`: an "
                 "`asyncio.Protocol` whose `data_received` calls `transport.write`; "
                 "`streams`: `asyncio.start_server`, `await reader.read(65536)`, "
                 "`writer.write`, `await writer.drain()`. All servers stay up for the whole "
                 "section; only the one under load is busy."),
    }


def start_servers(commands: dict[str, list[str]], section: str
                  ) -> tuple[dict[str, WindowsProcess], dict[str, int], dict[str, str]]:
    """Start every server; returns (processes, name -> port, name -> why it did not start).
    The caller stops the processes."""
    processes: dict[str, WindowsProcess] = {}
    ports: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for name, command in commands.items():
        processes[name] = WindowsProcess(command, name)
    for name, process in processes.items():
        try:
            ports[name] = process.listening_port()
        except (RuntimeError, TimeoutError) as error:
            skipped[name] = f"did not start: {_last_lines(error)}"
            log(f"{section} {name}: {skipped[name]}")
    return processes, ports, skipped


def server_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of a server process and of the bench's wineserver."""
    wineserver = harness.bench_wineserver_pid()
    return (harness.process_cpu_seconds(pid),
            harness.process_cpu_seconds(wineserver) if wineserver else 0.0)


def bench_aio_bulk(settings: Settings) -> dict[str, Any]:
    """The bulk workload: one connection, ``bulk_bytes`` client -> server, MB/s, into a
    Protocol and into a BufferedProtocol on each loop (bench/servers/aio_bulk.py)."""
    commands = {loop: python_command("-m", "bench.servers.aio_bulk", "--loop", loop)
                for loop in AIO_LOOPS}
    processes, ports, skipped = start_servers(commands, "aio bulk")
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        api: {loop: [] for loop in AIO_LOOPS} for api in ("protocol", "buffered")}
    failures: list[str] = []
    try:
        buffered_ports = {}
        for loop in ports:
            line = next(x for x in processes[loop].lines if x.startswith("buffered on "))
            buffered_ports[loop] = int(line.rsplit(":", 1)[1])
        for repeat in range(settings.bulk_repeats):
            for index, api in enumerate(("protocol", "buffered")):
                names = [loop for loop in AIO_LOOPS if loop in ports and loop not in skipped]
                for loop in names if (index + repeat) % 2 == 0 else names[::-1]:
                    port = ports[loop] if api == "protocol" else buffered_ports[loop]
                    pid = processes[loop].process.pid
                    before = server_cpu(pid)
                    try:
                        result = harness.loadgen("bulk", "127.0.0.1", str(port),
                                                 str(settings.bulk_bytes), timeout=300)
                    except (RuntimeError, subprocess.TimeoutExpired) as error:
                        # One failed run is reported; a second one ends this loop's runs.
                        failures.append(f"{loop}, into a {api}, run {repeat + 1}: "
                                        f"{_last_lines(error)}")
                        log(f"aio bulk: {failures[-1]}")
                        if sum(1 for f in failures if f.startswith(f"{loop},")) > 1:
                            skipped[loop] = "bulk failed twice (see the failures)"
                        continue
                    after = server_cpu(pid)
                    megabytes = settings.bulk_bytes / 1e6
                    result["server_cpu_ms_per_mb"] = 1e3 * (after[0] - before[0]) / megabytes
                    result["wineserver_cpu_ms_per_mb"] = 1e3 * (after[1] - before[1]) / megabytes
                    samples[api][loop].append(result)
                    log(f"aio bulk {api:8} {loop:9} {result['mb_per_s']:8.1f} MB/s "
                        f"({result['seconds']:.2f} s)")
                    time.sleep(0.3)
    finally:
        for process in processes.values():
            process.stop(timeout=15)
    cells: dict[str, dict[str, Any]] = {api: {} for api in samples}
    for api, by_loop in samples.items():
        for loop, runs in by_loop.items():
            if runs:
                cells[api][loop] = {"runs": runs, **{
                    key: statistics.median(float(run[key]) for run in runs)
                    for key in ("mb_per_s", "server_cpu_ms_per_mb", "wineserver_cpu_ms_per_mb")}}
    return {
        "cells": cells, "skipped": skipped, "failures": failures,
        "bytes": settings.bulk_bytes,
        "note": (f"One connection sends {settings.bulk_bytes / 2**20:g} MiB to the server "
                 "(`loadgen bulk`: blocking 256 KiB writes, then shutdown(SHUT_WR)); the "
                 "server (`bench/servers/aio_bulk.py`) counts and discards, answers the EOF "
                 "with the count and closes; MB/s (10^6 bytes) from the connect to the close, "
                 f"the median of {settings.bulk_repeats} runs. `protocol`: "
                 "`asyncio.Protocol.data_received`; `buffered`: `asyncio.BufferedProtocol` "
                 "into a 256 KiB buffer of its own. CPU: the server process and its "
                 "wineserver, ms per MB."),
    }


def bench_aio_churn(settings: Settings) -> dict[str, Any]:
    """The churn workload: connect, one 64-byte exchange, close (the client first), at a
    fixed concurrency, against the Protocol echo on each loop; connections/s."""
    commands = {loop: python_command("-m", "bench.servers.aio_echo", "--loop", loop, "--api",
                                     "protocol") for loop in AIO_LOOPS}
    processes, ports, skipped = start_servers(commands, "aio churn")
    samples: dict[str, list[dict[str, Any]]] = {loop: [] for loop in AIO_LOOPS}
    try:
        for repeat in range(settings.echo_repeats):
            names = [loop for loop in AIO_LOOPS if loop in ports and loop not in skipped]
            for loop in names if repeat % 2 == 0 else names[::-1]:
                try:
                    result = harness.churn(ports[loop], settings.churn_concurrency,
                                           settings.churn_seconds, "client")
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    skipped[loop] = f"churn failed: {_last_lines(error)}"
                    log(f"aio churn {loop}: {skipped[loop]}")
                    continue
                samples[loop].append(result)
                log(f"aio churn {loop:9} {result['connections_per_s']:8,.0f} conn/s "
                    f"errors {result['errors']}")
                time.sleep(1.0)  # the last closes
    finally:
        for process in processes.values():
            process.stop(timeout=15)
    cells = {loop: {"runs": runs, "errors": sum(int(run["errors"]) for run in runs), **{
        key: statistics.median(float(run[key]) for run in runs)
        for key in ("connections_per_s", "p50_us", "p99_us")}}
        for loop, runs in samples.items() if runs and loop not in skipped}
    return {
        "cells": cells, "skipped": skipped,
        "note": (f"{settings.churn_concurrency} concurrent clients for "
                 f"{settings.churn_seconds:g} s (`loadgen churn ... client`): connect, one "
                 "64-byte exchange with the Protocol echo of `bench/servers/aio_echo.py`, "
                 f"close (the client first); the median of {settings.echo_repeats} run(s)."),
    }


#: Processes per loop for the stubbed Python cost (at least; ``echo_repeats`` if more). A
#: process's rounds agree with each other, but processes do not: on the shared 2-core machines
#: the same loop measured 12.8 to 24 us per message from one process to the next, in two
#: clusters. The lowest of several alternating processes is what each loop costs.
AIO_COST_PROCESSES = 4


def bench_aio_cost(settings: Settings) -> dict[str, Any]:
    """The Python-cost workload: Python cost and system calls per echoed message, kernel
    stubbed (bench/micro/aio_cost.py), winiocp.aio and the stock loop, one process each,
    ``AIO_COST_PROCESSES`` times (one in a quick run) in alternating order; per loop and
    connection count the run least disturbed by other processes (the lowest median) is kept,
    every run's median beside it."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"winiocp": {}, "stock": {}}
    skipped: dict[str, str] = {}
    profiles: dict[str, str] = {}
    processes = settings.echo_repeats if settings.quick else max(settings.echo_repeats,
                                                                 AIO_COST_PROCESSES)
    for repeat in range(processes):
        for loop in list(runs) if repeat % 2 == 0 else list(runs)[::-1]:
            if loop in skipped:
                continue
            args = ["-m", "bench.micro.aio_cost", "--loop", loop] + (
                ["--profile"] if repeat == 0 else []) + (["--quick"] if settings.quick else [])
            try:
                cells = harness.run_json(python_command(*args), f"aio_cost {loop}",
                                         timeout=600)["cells"]
            except (RuntimeError, TimeoutError, KeyError) as error:
                skipped[loop] = _last_lines(error)
                log(f"aio cost {loop}: not measured: {skipped[loop]}")
                continue
            for count, cell in cells.items():
                text = cell.pop("profile", "")
                if text:
                    profiles[f"aio stubbed echo on {loop}, {count} connection(s), cProfile by "
                             "own time (bench/micro/aio_cost.py --profile)"] = text
                runs[loop].setdefault(count, []).append(cell)
                log(f"aio cost {loop:8} {count:>3} conn: {cell['python_us']:6.2f} us Python "
                    f"+ {cell['stub_us']:5.2f} us stubs per message, "
                    f"{cell['system_calls_per_message']:.2f} system calls")
    kept: dict[str, dict[str, Any]] = {}
    for loop, by_count in runs.items():
        for count, cells in by_count.items():
            best = min(cells, key=lambda cell: float(cell["python_us"]))
            kept.setdefault(loop, {})[count] = {
                **best, "runs_python_us": [cell["python_us"] for cell in cells]}
    return {"cells": kept, "skipped": skipped, "profiles": profiles}

def bench_aio_wine_requests(settings: Settings) -> dict[str, Any]:
    """Wineserver requests per unit of work on each loop (bench/wine_requests.py): per echoed
    message of the Protocol echo at 1 and 16 connections, per connection of churn, per MiB
    of bulk into a Protocol and a BufferedProtocol. A server that fails is reported."""
    echo = {"pingpong 1": wine_requests.pingpong(1, settings.traced_messages),
            "pingpong 16": wine_requests.pingpong(16, settings.traced_messages),
            "churn": wine_requests.churn(settings.traced_messages // 10)}
    mebibytes = max(1, settings.bulk_bytes >> 23)  # an eighth of the bulk section's transfer
    sinks = {"bulk protocol": wine_requests.bulk(mebibytes),
             "bulk buffered": wine_requests.bulk(mebibytes, "buffered on ")}
    cells: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for loop in AIO_LOOPS:
        servers = {"aio_echo": ("--api", "protocol"), "aio_bulk": ()}
        for (server, extra), workloads in zip(servers.items(), (echo, sinks)):
            command = python_command("-m", f"bench.servers.{server}", "--loop", loop, *extra)
            try:
                cells.setdefault(loop, {}).update(
                    wine_requests.count_requests(command, loop, workloads))
            except (RuntimeError, TimeoutError, OSError, StopIteration) as error:
                skipped[f"{loop} ({server})"] = _last_lines(error)
                log(f"aio wine requests {loop} {server}: not measured: {_last_lines(error)}")
    return {
        "cells": cells, "skipped": skipped,
        "note": (f"Each server alone on the bench's wineserver restarted with "
                 "`WINEDEBUG=+server`, every request it served during the workload counted by "
                 "name (`bench/wine_requests.py` explains what each Win32 call costs in them). "
                 f"Ping-pong: {settings.traced_messages} 64-byte messages echoed by the "
                 "Protocol echo of `bench/servers/aio_echo.py` (a host client, one message per "
                 "connection at a time, connections made before counting); churn: "
                 f"{settings.traced_messages // 10} connections one after another (connect, "
                 "one exchange, close, the client first); bulk: one connection sends "
                 f"{mebibytes} MiB to `bench/servers/aio_bulk.py`'s sinks."),
    }


def profile_echo_server(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The winiocp echo server's dequeue loop under cProfile while 64 connections ping-pong."""
    seconds = max(2.0, settings.echo_seconds)
    command = python_command("-m", "bench.servers.winiocp_echo", "--profile",
                             str(seconds + 30))
    with WindowsProcess(command, "winiocp profile") as process:
        port = process.listening_port()
        load = harness.pingpong(port, 64, seconds, settings.warmup)
        process.stop(timeout=60)
    text = "\n".join(process.lines)
    start, end = text.find("PROFILE-BEGIN"), text.find("PROFILE-END")
    summary = text[start + len("PROFILE-BEGIN"):end].strip() if start >= 0 else text[-4000:]
    return summary, load


def profile_aio_server(settings: Settings, loop: str) -> tuple[str, dict[str, Any]]:
    """The Protocol echo on ``loop`` under cProfile while 64 connections ping-pong."""
    command = python_command("-m", "bench.servers.aio_echo", "--loop", loop, "--api",
                             "protocol", "--profile")
    with WindowsProcess(command, f"aio {loop} profile") as process:
        port = process.listening_port()
        load = harness.pingpong(port, 64, max(2.0, settings.echo_seconds), settings.warmup)
        process.stop(timeout=60)
    text = "\n".join(process.lines)
    start, end = text.find("PROFILE-BEGIN"), text.find("PROFILE-END")
    summary = text[start + len("PROFILE-BEGIN"):end].strip() if start >= 0 else text[-4000:]
    return summary, load


# -- 1d. readiness: AfdSelector and add_reader -----------------------------------------------

def bench_readiness(settings: Settings) -> dict[str, Any]:
    """``bench/micro/readiness.py``'s two parts, one Windows process each (the variants
    alternate inside them, round by round): the selectors, then the loops' add_reader
    ping-pong. A part that fails is reported, the other is kept."""
    results: dict[str, Any] = {"skipped": {}}
    for part in ("selectors", "loops"):
        args = ["-m", "bench.micro.readiness", "--part", part] + (
            ["--quick"] if settings.quick else [])
        try:
            results[part] = harness.run_json(python_command(*args), f"readiness {part}",
                                             timeout=300)
        except (RuntimeError, TimeoutError) as error:
            results["skipped"][part] = _last_lines(error)
            log(f"readiness {part}: not measured: {results['skipped'][part]}")
            continue
        if part == "selectors":
            for cell, by_variant in results[part]["select"].items():
                log(f"readiness select(0) N/K {cell:8} " + ", ".join(
                    f"{name} {value['us_per_call']:8.1f} us" for name, value in
                    by_variant.items()))
            for count, by_variant in results[part]["round_trip"].items():
                log(f"readiness round trip N {count:5} " + ", ".join(
                    f"{name} {value['us_per_trip']:8.1f} us" for name, value in
                    by_variant.items()))
        else:
            for pairs, by_loop in results[part]["cells"].items():
                log(f"readiness add_reader ping-pong {pairs:>2} pair(s): " + ", ".join(
                    f"{name} {value['hops_per_s']:,.0f}/s" for name, value in by_loop.items()))
    results["note"] = (
        "One Windows process per part (`bench/micro/readiness.py`), over "
        "`socket.socketpair()` pairs; the variants of each cell are timed in turns, the order "
        "alternating from round to round, so other load on the machine (shared with other "
        "engineers' Wine runs) hits them alike; each cell is the median of its rounds. "
        "**Under Wine each AFD poll is a wineserver round trip** (AfdSelector re-issues one "
        "per reported socket per call, and dequeues each completion with another), while "
        "`select()` is one poll request over the whole set (Wine implements it with one "
        "IOCTL_AFD_POLL), whose wineserver work grows with the set: small-N figures favour "
        "`select()` here, and large-N figures show the per-socket scan. On Windows the cost "
        "model differs: an AFD poll is a system call into afd.sys with no server process in "
        "between, and `select()` has the kernel poll every socket of the set on every call.")
    return results


# -- 2. Python cost and drain rates -----------------------------------------------------------

def bench_python_cost(settings: Settings) -> dict[str, Any]:
    args = ["-m", "bench.micro.python_cost", "--profile"] + (["--quick"] if settings.quick else [])
    return harness.run_json(python_command(*args), "python_cost", timeout=600)


def bench_drain(settings: Settings) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(settings.drain_repeats):
        python = harness.run_json(
            python_command("-m", "bench.micro.drain", "--seconds", str(settings.drain_seconds)),
            "drain", timeout=300)
        c_result = harness.run_json(exe_command("iocp_drain.exe", str(settings.drain_seconds),
                                                "64"), "iocp_drain", timeout=120)
        routes = {name: value for name, value in python.items() if isinstance(value, dict)}
        routes["C GQCS"] = c_result["gqcs"]
        routes["C GQCSEx"] = c_result["gqcs_ex"]
        for name, value in routes.items():
            runs.setdefault(name, []).append(value)
    combined: dict[str, dict[str, Any]] = {}
    for name, values in runs.items():
        good = [v for v in values if "packets_per_s" in v]
        if not good:
            combined[name] = values[0]
            continue
        combined[name] = {key: statistics.median(float(v[key]) for v in good)
                          for key in ("packets_per_s", "post_us", "dequeue_us")}
    log("drain: " + ", ".join(f"{n} {v.get('packets_per_s', 0):,.0f}/s"
                              for n, v in combined.items()))
    return {
        "routes": combined, "batch": 64, "seconds": settings.drain_seconds,
        "repeats": settings.drain_repeats,
        "notes": [
            "winiocp routes: `CompletionPort.post` + `get(0)` / `get_many(0, n)`; raw cffi: the "
            "same kernel32 calls through `winiocp.raw` with preallocated out-parameters.",
            "`_overlapped` (what asyncio's proactor uses) posts a dummy OVERLAPPED's address: "
            "its GetQueuedCompletionStatus raises `OSError: [WinError 0]` for a dequeued packet "
            "whose OVERLAPPED is NULL (CPython's overlapped.c treats every NULL-OVERLAPPED "
            "result as an error unless it is WAIT_TIMEOUT).",
            "winiocp get vs raw cffi GQCS is our wrapper's cost per packet; the C rows are "
            "Wine's own floor.",
        ],
    }


# -- 3. churn ---------------------------------------------------------------------------------

def server_summary(process: WindowsProcess) -> dict[str, int]:
    for line in reversed(process.lines):
        if line.startswith("connections="):
            return {k: int(v) for k, v in (item.split("=") for item in line.split())}
    return {}


def bench_churn(settings: Settings) -> dict[str, Any]:
    variants = [
        ("server", True), ("server", False), ("client", True), ("client", False),
    ]
    rows = []
    for closer, avoidance in variants:
        flags = (["--close-after-echo"] if closer == "server" else []) + (
            [] if avoidance else ["--no-time-wait-avoidance"])
        command = python_command("-m", "bench.servers.winiocp_echo", *flags)
        with WindowsProcess(command, f"churn {closer} {avoidance}") as process:
            port = process.listening_port()
            result = harness.churn(port, settings.churn_concurrency, settings.churn_seconds,
                                   closer)
            time.sleep(1.0)  # let the last closes finish before counting
            time_wait = harness.time_wait_counts(port)
            process.stop(timeout=30)
        row = {"server": "winiocp (bench/servers/winiocp_echo.py"
                         + (", --close-after-echo)" if closer == "server" else ")"),
               "closer": closer, "avoidance": avoidance, "port": port,
               "time_wait": time_wait, "summary": server_summary(process), **result}
        rows.append(row)
        log(f"churn closer={closer} avoidance={avoidance}: "
            f"{result['connections_per_s']:,.0f} conn/s, TIME_WAIT {time_wait}, "
            f"errors {result['errors']}")
    return {
        "rows": rows,
        "note": (f"{settings.churn_concurrency} concurrent clients for "
                 f"{settings.churn_seconds:g} s; TIME_WAIT counted with `ss -tan state "
                 "time-wait` 1 s after the run, by the server's port (server side: local port; "
                 "client side: remote port). `server` closes first: the server echoes once then "
                 "closes (`--close-after-echo`), the case TIME_WAIT avoidance is for; with "
                 "`client`, the plain EchoHandler, the client closes first and the server is "
                 "the passive closer (no TIME_WAIT on its side either way)."),
    }


# -- 4. memory --------------------------------------------------------------------------------

def rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def bench_memory(settings: Settings) -> dict[str, Any]:
    core = ["-m", "bench.servers.winiocp_echo", "--workers", str(settings.workers)]
    aio = ["-m", "bench.servers.aio_echo", "--api", "protocol", "--loop"]
    variants = [
        ("zero_byte_reads", "winiocp server, zero-byte reads (recv_size 64 KiB, the default)",
         [*core, "--zero-byte-reads"]),
        ("pinned_64k", "winiocp server, pinned 64 KiB receive buffer", core),
        ("zero_byte_reads_4k", "diagnostic: winiocp server, zero-byte reads, recv_size 4 KiB",
         [*core, "--zero-byte-reads", "--recv-size", "4096"]),
        ("aio_winiocp", "asyncio Protocol echo on winiocp.aio", [*aio, "winiocp"]),
        ("aio_stock", "asyncio Protocol echo on the stock ProactorEventLoop", [*aio, "stock"]),
        ("aio_winloop", "asyncio Protocol echo on winloop", [*aio, "winloop"]),
    ]
    rows = []
    notes: list[str] = []
    for key, title, arguments in variants:
        target = settings.memory_connections
        while True:
            try:
                rows.append(measure_memory(key, title, arguments, target, settings))
                break
            except (RuntimeError, TimeoutError) as error:
                if target <= 500:
                    raise
                notes.append(f"{title}: {target} connections failed ({str(error)[:200]}); "
                             f"retried with {target // 2}")
                target //= 2
        row = rows[-1]
        log(f"memory {key}: {row['bytes_per_connection'] / 1024:.1f} KiB per connection "
            f"at {row['connections']} connections")
    source = rows[0]["source"] if rows else ""
    return {
        "rows": rows,
        "notes": notes,
        "note": (f"Each server (bench/servers/winiocp_echo.py with {settings.workers} workers; "
                 "bench/servers/aio_echo.py on each event loop) is "
                 f"given {settings.memory_base} connections (the base), then more up to N, each "
                 "after one 64-byte exchange so its receive is re-posted, then idle. Per "
                 "connection = (private bytes at N - at the base) / (N - base). Private bytes "
                 f"come from K32GetProcessMemoryInfo: {source}; Wine 8 leaves PrivateUsage 0, "
                 "and PagefileUsage (the same commit charge on Windows) is the Linux process's "
                 "RssAnon, cross-checked from the host's /proc. Re-hold: the extra connections "
                 "closed, then opened again; growth near 0 means the memory is reused (heap "
                 "retention, not a leak)." + (" " + " ".join(notes) if notes else "")),
    }


def measure_memory(key: str, title: str, arguments: list[str], target: int,
                   settings: Settings) -> dict[str, Any]:
    command = python_command(*arguments)
    extra = target - settings.memory_base
    with WindowsProcess(command, f"memory {key}") as process:
        port = process.listening_port()
        pid = process.process.pid

        def counters() -> dict[str, Any]:
            process.send("mem")
            return dict(json.loads(process.expect("RESULT ", 30)[len("RESULT "):]))

        base = harness.Holder(port, settings.memory_base)
        base.ready(120)
        time.sleep(0.5)
        before, host_before = counters(), rss_anon(pid)
        more = harness.Holder(port, extra)
        try:
            _, seconds = more.ready(300)
            time.sleep(0.5)
            after, host_after = counters(), rss_anon(pid)
            if int(after.get("connections", 0)) < target:
                raise RuntimeError(f"server holds {after.get('connections')} of {target}")
            rehold = None
            if settings.rehold:
                more.release()
                time.sleep(2.0)
                released = counters()
                more = harness.Holder(port, extra)
                more.ready(300)
                time.sleep(0.5)
                again = counters()
                rehold = (int(again["private_bytes"]) - int(released["private_bytes"])) / extra
        finally:
            more.release()
            base.release()
        process.stop(timeout=60)
    return {
        "variant": key, "title": title, "connections": target, "base": settings.memory_base,
        "connect_seconds": seconds,
        "base_private_bytes": int(before["private_bytes"]),
        "private_bytes": int(after["private_bytes"]),
        "bytes_per_connection": (int(after["private_bytes"]) - int(before["private_bytes"]))
        / extra,
        "host_rss_anon_per_connection": (host_after - host_before) / extra,
        "rehold_bytes_per_connection": rehold,
        "source": str(after.get("source", "")),
        "server_status": after,
    }


# -- findings -----------------------------------------------------------------------------------

def findings(results: dict[str, Any]) -> list[str]:
    """Observations that follow from the numbers (each only when the data shows it)."""
    found: list[str] = []
    memory = {row["variant"]: row for row in results.get("memory", {}).get("rows", [])}
    zero, pinned = memory.get("zero_byte_reads"), memory.get("pinned_64k")
    small = memory.get("zero_byte_reads_4k")
    if zero and pinned and zero["bytes_per_connection"] > 0.7 * pinned["bytes_per_connection"]:
        found.append(
            "**Zero-byte reads save no memory.** With `zero_byte_reads=True` an idle connection "
            f"costs {zero['bytes_per_connection'] / 1024:.1f} KiB, the same as the pinned 64 KiB "
            f"buffer ({pinned['bytes_per_connection'] / 1024:.1f} KiB): `Connection.__init__` "
            "(winiocp/connections.py) allocates `self._buffer = bytearray(recv_size)` whatever "
            "the mode, so the 64 KiB is committed (bytearray zero-fills it) for the connection's "
            "whole life even though only a 0-byte WSABUF is pinned while idle."
            + (f" With recv_size=4096 it is {small['bytes_per_connection'] / 1024:.1f} KiB: the "
               "rest is the per-connection Python objects (Connection, Socket, RecvOperation and "
               "its cffi OVERLAPPED/WSABUF/DWORD allocations, RLock, registry and set entries) "
               "plus Wine's per-socket state." if small else "")
            + " Fix (in winiocp, not done here): allocate the buffer lazily when the probe "
            "completes (or borrow one from a shared pool per worker) and drop it after the "
            "real receive.")
    for row in results.get("churn", {}).get("rows", []):
        if row["closer"] == "server" and row["avoidance"] and row["time_wait"]["server_side"]:
            found.append(
                "**TIME_WAIT avoidance has no effect under Wine**: with it on, "
                f"{row['time_wait']['server_side']} server-side sockets were still in "
                f"TIME_WAIT after {row['connections']} server-closed connections. As "
                "connections.py's docstring predicts, Linux (so Wine) moves the socket to "
                "TIME_WAIT as soon as the peer's FIN arrives after ours, before closesocket "
                "can apply SO_LINGER {1,0}; the RST trick only works on Windows, which keeps "
                "the connection attached to the socket until closesocket. Not measurable "
                "here.")
            break
    cells = results.get("echo", {}).get("cells", {})
    ours, c_cells = cells.get("winiocp", {}).get("64"), cells.get("c", {}).get("64")
    if ours and c_cells and "server_cpu_us_per_msg" in ours and "server_cpu_us_per_msg" in c_cells:
        found.append(
            "**Where the echo gap to C comes from.** At 64 connections the winiocp server "
            f"process burns {ours['server_cpu_us_per_msg']:.0f} us of CPU per echoed message "
            f"against C's {c_cells['server_cpu_us_per_msg']:.0f} us, while their wineservers "
            f"burn about the same ({ours.get('wineserver_cpu_us_per_msg', 0):.0f} vs "
            f"{c_cells.get('wineserver_cpu_us_per_msg', 0):.0f} us): both make the same four "
            "Wine calls per message (GQCS, WSASend, GQCS, WSARecv), and the difference is "
            "interpreter work in the server. Server, wineserver and load generator share the "
            "2 cores, so every extra microsecond of Python per message lowers messages/s. "
            "The stubbed echo turn (section 2) accounts for "
            f"{results.get('python_cost', {}).get('echo_turn_us', 0):.0f} us of it; the rest is "
            "cffi argument conversion and GIL release/re-acquire around each real call, and "
            "thread wake-ups between the workers.")
    one = cells.get("winiocp-1w", {}).get("1")
    two = cells.get("winiocp", {}).get("1")
    if one and two and one["messages_per_s"] > 1.2 * two["messages_per_s"]:
        found.append(
            f"**A second worker hurts at low concurrency**: at 1 connection `--workers 1` "
            f"echoes {one['messages_per_s']:,.0f} msg/s against {two['messages_per_s']:,.0f} "
            "with 2 workers (each completion tends to wake the other thread: a cross-thread "
            "hand-off per message; the C server shows the same effect). The CLI's default is 4.")
    found.extend(aio_findings(results))
    found.extend(readiness_findings(results))
    cost = results.get("python_cost", {})
    turns = {key: cost[key] for key in ("echo_turn_us", "echo_turn_inline_us") if key in cost}
    floor = cost.get("echo_floor_us")
    if turns and floor and max(turns.values()) > report.TARGET_ECHO_TURN_FLOOR_RATIO * floor \
            and {"run_once_us", "submit_recv_us", "connection_send_us"} <= cost.keys():
        found.append(echo_turn_finding(cost))
    if cost and cost.get("run_once_us", 0) > report.TARGET_COMPLETION_US:
        found.append(
            "**Per-completion Python cost is over budget.** `run_once` costs "
            f"{cost['run_once_us']:.2f} us per completion against the 1.5 us target "
            f"({cost['classify_us']:.2f} us of it is `_classify_entries`/`_complete` "
            "alone); one echoed message costs "
            f"{cost['echo_turn_us']:.2f} us of Python, i.e. a ceiling of "
            f"{cost['echo_ceiling_msgs_per_s']:,.0f} messages/s per core before any system "
            "call. See the profiles below for the split.")
    return found


def readiness_findings(results: dict[str, Any]) -> list[str]:
    """Where AfdSelector overtakes select(), and add_reader on winiocp.aio against tornado's
    select() thread (section 1d)."""
    readiness = results.get("readiness", {})
    found: list[str] = []
    cells: dict[str, dict[str, Any]] = readiness.get("selectors", {}).get("select", {})
    compared = [(int(cell.split("/")[0]), int(cell.split("/")[1]),
                 float(by["select"]["us_per_call"]) / float(by["afd"]["us_per_call"]))
                for cell, by in cells.items() if {"afd", "select"} <= by.keys()]
    if compared:
        faster = [f"N={n} K={k} {ratio:.1f}x" for n, k, ratio in compared if ratio > 1]
        slower = [f"N={n} K={k} {1 / ratio:.1f}x" for n, k, ratio in compared if ratio <= 1]
        found.append(
            "**AfdSelector against select() under Wine** (`select(0)`, section 1d): "
            + (f"AfdSelector faster at {', '.join(faster)}" if faster else "never faster")
            + (f"; SelectSelector faster at {', '.join(slower)}" if slower else "")
            + ". AfdSelector's call costs what is ready (one AFD poll re-issued per reported "
            "socket, a wineserver round trip each here), select()'s what is registered (one "
            "poll request over the whole set, the 512-socket cap): the crossover under Wine "
            "says little about Windows, where neither call involves a server process.")
    loops: dict[str, dict[str, Any]] = readiness.get("loops", {}).get("cells", {})
    parts = []
    for pairs, by_loop in loops.items():
        ours, theirs = by_loop.get("winiocp"), by_loop.get("tornado")
        if ours and theirs:
            parts.append(f"{pairs} pair(s): {ours['hops_per_s']:,.0f} vs "
                         f"{theirs['hops_per_s']:,.0f} messages/s "
                         f"({ours['hops_per_s'] / theirs['hops_per_s']:.2f}x)")
    if parts:
        behind = any(by.get("winiocp", {}).get("hops_per_s", 0)
                     < by.get("tornado", {}).get("hops_per_s", 0) for by in loops.values())
        found.append(
            "**add_reader on winiocp.aio.EventLoop against tornado's select() thread beside "
            "the stock proactor loop** (ping-pong, section 1d): " + "; ".join(parts) + "."
            + (" Where tornado leads, it is batching: its thread's one select() reports every "
               "ready socket of the turn at once, while the loop's port re-issues one AFD poll "
               "per socket it reported (a wineserver round trip each under Wine). With one pair "
               "there is nothing to batch, and the thread's hand-off to the loop "
               "(call_soon_threadsafe, then its waker) is what it pays on top."
               if behind else ""))
    return found


def aio_findings(results: dict[str, Any]) -> list[str]:
    """What the aio section's numbers show about winiocp.aio against the stock loop."""
    return (aio_cost_findings(results) + aio_cpu_findings(results) + aio_wine_findings(results)
            + aio_bulk_findings(results) + fairness_findings(results))


def echo_turn_finding(cost: dict[str, Any]) -> str:
    """Why the core echo turn is over its target: its measured parts, and the flat
    floor of the same work (``bench/micro/echo_floor.py``) that shows what the layers cost."""
    parts = cost["run_once_us"] + cost["connection_send_us"] + cost["submit_recv_us"]
    calls = cost.get("calls_per_echo_turn")
    inline = cost.get("echo_turn_inline_us")
    floor = cost.get("echo_floor_us")
    text = (
        f"**The core echo turn is over its target ({report.TARGET_ECHO_TURN_FLOOR_RATIO:g}x the "
        "flat floor of the same run)**: "
        f"{cost['echo_turn_us']:.2f} us stubbed with the send pending"
        + (f", {inline:.2f} us with the send finished inline (as skip-on-success finishes a "
           "loopback send with room in the socket buffer)" if inline is not None else "")
        + f"; one entry per dequeue: {cost.get('echo_turn_single_us', 0):.2f} us. Its parts, "
        "each measured on its own in section 2: the send's completion through the Server's "
        f"loop ({cost['run_once_us']:.2f} us), `Connection.send` "
        f"({cost['connection_send_us']:.2f} us: the spare SendOperation re-armed, the pin, the "
        f"issue) and the re-armed receive ({cost['submit_recv_us']:.2f} us) make {parts:.2f} "
        "us; the receive's completion, the echo handler and the data hand-off the rest. "
        + (f"The turn (send pending) is {calls:.0f} Python calls (cProfile's count), six of "
           "them lock acquisitions that make the core safe with several threads on one port "
           "(the connection's four times, the socket's twice). " if calls else ""))
    if floor is not None:
        target = report.TARGET_ECHO_TURN_FLOOR_RATIO * floor
        text += (
            f"The same turn's necessary work written flat (`bench/micro/echo_floor.py`: the "
            "same stubs, registry, locks, OVERLAPPED re-arms, pins and Completion objects, "
            f"a function per step and two closures) costs {floor:.2f} us: the other "
            f"{cost['echo_turn_us'] - floor:.2f} us are the layers (Socket.send/recv_into "
            "with their checks, the port's registration, the connection's delivery queue and "
            "flow control, one function per job). "
            f"{report.TARGET_ECHO_TURN_FLOOR_RATIO:g}x the floor ({target:.2f} us) needs "
            f"{(cost['echo_turn_us'] - target) / (cost['echo_turn_us'] - floor):.0%}"
            " of that layering gone, i.e. a flatter hot path through the core, not a faster "
            "part.")
    return text


def fairness_findings(results: dict[str, Any]) -> list[str]:
    """Servers that left connections unanswered for the whole measured window (echo and aio
    sections), and how many connections they had not even accepted when it opened."""
    echo_cells: dict[str, dict[str, Any]] = results.get("echo", {}).get("cells", {})
    aio_cells: dict[str, dict[str, dict[str, Any]]] = results.get("aio", {}).get("cells", {})
    grids: list[tuple[str, str, dict[str, Any]]] = [
        (report.SERVER_TITLES.get(name, name), "echo", by_count)
        for name, by_count in echo_cells.items()]
    for api, by_loop in aio_cells.items():
        grids += [(report.AIO_LOOP_TITLES.get(loop, loop), report.AIO_API_TITLES.get(api, api),
                   by_count) for loop, by_count in by_loop.items()]
    found: list[str] = []
    for title, workload, by_count in grids:
        for count, cell in by_count.items():
            served = cell.get("served_connections")
            if served is None or served >= int(count):
                continue
            queued = cell.get("accept_queue_at_start")
            left = cell.get("accept_queue_at_end", queued)
            rates = [(run["accept_queue_at_start"] - run["accept_queue_at_end"])
                     / run["accept_queue_seconds"] for run in cell["runs"]
                     if "accept_queue_seconds" in run]
            rate = statistics.median(rates) if queued and rates else None
            found.append(
                f"**{title} leaves connections unanswered** ({workload}, {count} "
                f"connections): only {served} had a message answered in the measured "
                f"window; the longest wait still open at its end was "
                f"{cell.get('oldest_unanswered_us', 0) / 1e6:.1f} s, which its p99 counts."
                + (f" {queued} connections were still in the listen socket's accept queue "
                   f"when the window opened (`ss -ltn` Recv-Q), {left} still at its end"
                   + (f" (accepted under load at {rate:.0f} connections/s)"
                      if rate is not None else "") + "." if queued else "")
                + (" asyncio's proactor loop keeps one AcceptEx pending and posts the next "
                   "from a callback, so it accepts at most one connection per loop turn; "
                   "winiocp.aio keeps `ACCEPTS_PER_LISTENER` pending, each re-posted as "
                   "soon as its connection is handed out, and doubles the pool (up to the "
                   "listen backlog) when one iteration used them all."
                   if "ProactorEventLoop" in title and queued else ""))
    return found


def aio_cost_findings(results: dict[str, Any]) -> list[str]:
    """The stubbed run: where winiocp.aio's Python per message stands against its calls."""
    cost = results.get("aio", {}).get("cost", {})
    ours_cells = cost.get("cells", {}).get("winiocp", {})
    stock_cells = cost.get("cells", {}).get("stock", {})
    counts = [c for c in ours_cells if c in stock_cells]
    dearer = [c for c in counts
              if ours_cells[c]["python_us"] > stock_cells[c]["python_us"]]
    if not dearer:
        return []
    per_call = []
    for loop in ("winiocp", "stock"):
        for title, text in cost.get("profiles", {}).items():
            match = re.search(r"(\d+) echoed messages.*?(\d+) function calls", text, re.S)
            if title.startswith(f"aio stubbed echo on {loop},") and match:
                per_call.append(f"{loop} {int(match.group(2)) / int(match.group(1)):.0f}")
    calls = (" Python function calls per echoed message under cProfile, the stubs' own "
             f"included: {', '.join(per_call)} (profiles below)." if len(per_call) == 2 else "")
    cells = "; ".join(
        f"{c} conn {ours_cells[c]['python_us']:.1f} vs {stock_cells[c]['python_us']:.1f} us, "
        f"system calls {ours_cells[c]['system_calls_per_message']:.2f} vs "
        f"{stock_cells[c]['system_calls_per_message']:.2f}" for c in counts)
    split = [(c, ours_cells[c]["core_us"], ours_cells[c]["python_us"] - ours_cells[c]["core_us"],
              stock_cells[c]["python_us"]) for c in counts if "core_us" in ours_cells[c]]
    why = ""
    if split:
        why = (
            " **Why (measured):** the cost is in winiocp's core, below winiocp.aio: building, "
            "issuing and finishing each WSARecv/WSASend and classifying each dequeued "
            "completion, which is the stock loop's `_overlapped`, compiled C that the stubbed "
            "run does not count. Per message: " + "; ".join(
                f"{c} conn: core {core:.1f} us, everything above it (asyncio's `_run_once`, "
                f"routing, transport, protocol) {above:.1f} us, against {stock:.1f} us for "
                f"all of the stock loop's Python ({above / stock:.2f}x)"
                for c, core, above, stock in split)
            + ". " + (f"Above the core, winiocp.aio is within the {report.AIO_PYTHON_RATIO:g}x "
                      "target at every count; "
                      if all(above <= report.AIO_PYTHON_RATIO * stock
                             for _, _, above, stock in split) else "") +
            "the core's per-operation Python alone is most of the stock loop's whole budget, "
            f"so {report.AIO_PYTHON_RATIO:g}x of the stock loop's Python would need that "
            "per-operation work in compiled code, which an ABI-mode binding does not ship.")
    where = ("" if len(dearer) == len(counts)
             else " at " + ", ".join(f"{c} connection(s)" for c in dearer))
    return [
        "**With the kernel stubbed, winiocp.aio runs more Python per echoed message than the "
        "stock loop" + where + "** (winiocp.aio vs stock: " + cells + "). The system calls are what Wine "
        "charges for, so under Wine fewer calls can still win end to end; on Windows, where a "
        "call is cheap, the Python per message is what limits a loop." + why + calls]


def aio_cpu_findings(results: dict[str, Any]) -> list[str]:
    """Server CPU per message in the ping-pong (winiocp.aio vs the stock loop)."""
    protocol = results.get("aio", {}).get("cells", {}).get("protocol", {})
    ours, stock = protocol.get("winiocp", {}), protocol.get("stock", {})
    counts = [c for c in ours if c in stock and "server_cpu_us_per_msg" in ours[c]
              and "server_cpu_us_per_msg" in stock[c]]
    if not counts:
        return []
    dearer = [c for c in counts
              if ours[c]["server_cpu_us_per_msg"] > 1.15 * stock[c]["server_cpu_us_per_msg"]]
    if len(dearer) * 2 <= len(counts):
        return []
    cells = "; ".join(
        f"{c} conn {ours[c]['server_cpu_us_per_msg']:.0f} + "
        f"{ours[c].get('wineserver_cpu_us_per_msg', 0):.0f} vs "
        f"{stock[c]['server_cpu_us_per_msg']:.0f} + "
        f"{stock[c].get('wineserver_cpu_us_per_msg', 0):.0f}" for c in counts)
    per_message = {}
    for title, text in results.get("profiles", {}).items():
        match = re.search(r"\((\d+) per message\)", text)
        for loop in ("winiocp", "stock"):
            if title.startswith(f"aio Protocol echo on {loop},") and match:
                per_message[loop] = int(match.group(1))
    calls = (f" Under cProfile the winiocp.aio server makes {per_message['winiocp']} Python "
             f"function calls per echoed message against the stock loop's "
             f"{per_message['stock']} (profiles below): `_overlapped`'s C methods become "
             "Python frames (IocpProactor's issue path, the operation and socket wrappers, "
             "cffi calls)." if {"winiocp", "stock"} <= per_message.keys() else "")
    return [
        "**winiocp.aio spends more server CPU per message than the stock loop** (Protocol "
        "echo, us per echoed message, server process + its wineserver, winiocp.aio vs stock: "
        f"{cells}). The application code is the same on both, so the difference is the "
        "loop's transports and proactor under it." + calls]


def aio_wine_findings(results: dict[str, Any]) -> list[str]:
    """What the wineserver request counts say about the ping-pong targets under Wine."""
    aio = results.get("aio", {})
    requests = results.get("wine_requests", {}).get("cells", {})
    ours_cells, stock_cells = requests.get("winiocp", {}), requests.get("stock", {})
    counts = [c for c in ours_cells if c in stock_cells and c.startswith("pingpong ")]
    if not counts:
        return []
    cost = aio.get("cost", {}).get("cells", {})
    parts = []
    for workload in counts:
        count = workload.split()[1]
        ours = float(ours_cells[workload]["requests_per_unit"])
        stock = float(stock_cells[workload]["requests_per_unit"])
        others = ", ".join(
            f"{loop} {float(requests[loop][workload]['requests_per_unit']):.1f}"
            for loop in ("winloop", "selector") if workload in requests.get(loop, {}))
        calls = ""
        if count in cost.get("winiocp", {}) and count in cost.get("stock", {}):
            calls = (f"; Win32 system calls in the stubbed run "
                     f"{cost['winiocp'][count]['system_calls_per_message']:.2f} vs "
                     f"{cost['stock'][count]['system_calls_per_message']:.2f}")
        parts.append(f"{count} conn: winiocp.aio {ours:.1f} vs stock {stock:.1f} "
                     f"({ours / stock:.2f}x){', ' + others if others else ''}{calls}")
    return [
        "**Under Wine an echoed message costs every loop about the same wineserver work**, "
        "whatever its Win32 calls (requests per message: " + "; ".join(parts) + "). Wine "
        "charges no request for what the stock loop calls on top of ours (GetOverlappedResult "
        "of a finished operation, GetLastError), and a request for much we cannot avoid: each "
        "WSARecv and WSASend also asks for the socket's descriptor (`get_handle_fd`), and a "
        "receive pending when its data arrives is finished in our process (a signal to the "
        "thread, `select` requests, one more `get_handle_fd`) before its packet is queued. "
        "So the request counts differ far less than the Win32 calls do, "
        "and with messages/s bound by these round trips and by the wake-ups between server, "
        "wineserver and client on 2 cores, no loop can lead another by 1.5x here without "
        "needing a third fewer requests. What the loop itself controls (its Python, its "
        "system calls) is what the stubbed run measures, and what counts on Windows."]


def aio_bulk_findings(results: dict[str, Any]) -> list[str]:
    """Where winiocp.aio's bulk trails winloop: its wineserver requests, or its own CPU."""
    aio = results.get("aio", {})
    bulk = aio.get("bulk", {}).get("cells", {})
    requests = results.get("wine_requests", {}).get("cells", {})
    found = []
    for api, title in (("protocol", "Protocol"), ("buffered", "BufferedProtocol")):
        ours, theirs = bulk.get(api, {}).get("winiocp"), bulk.get(api, {}).get("winloop")
        ours_requests = requests.get("winiocp", {}).get(f"bulk {api}")
        their_requests = requests.get("winloop", {}).get(f"bulk {api}")
        if not (ours and theirs and ours_requests and their_requests) \
                or ours["mb_per_s"] >= theirs["mb_per_s"]:
            continue
        ours_runs = [float(run["mb_per_s"]) for run in ours.get("runs", [])]
        their_runs = [float(run["mb_per_s"]) for run in theirs.get("runs", [])]
        spread = (f"the runs of the two overlap (winiocp.aio {min(ours_runs):,.0f}-"
                  f"{max(ours_runs):,.0f}, winloop {min(their_runs):,.0f}-"
                  f"{max(their_runs):,.0f} MB/s): which median leads is run-to-run spread "
                  "more than a difference of the loops"
                  if ours_runs and their_runs and max(ours_runs) >= theirs["mb_per_s"]
                  else "")
        cause = spread or (
            "so the gap is not Wine's work: it is the server process's own CPU "
            f"({ours['server_cpu_ms_per_mb']:.2f} vs {theirs['server_cpu_ms_per_mb']:.2f} ms "
            f"per MB, wineserver {ours['wineserver_cpu_ms_per_mb']:.2f} vs "
            f"{theirs['wineserver_cpu_ms_per_mb']:.2f}): our Python per receive (issue, "
            "completion, routing, the protocol's callback) against libuv's C"
            if ours_requests["requests_per_unit"] <= 1.1 * their_requests["requests_per_unit"]
            else "so Wine's work is part of the gap: our receives bring less per request")
        found.append(
            f"**Bulk into a {title}: winiocp.aio trails winloop** ({ours['mb_per_s']:,.0f} vs "
            f"{theirs['mb_per_s']:,.0f} MB/s) with {ours_requests['requests_per_unit']:.1f} "
            f"wineserver requests per MiB against winloop's "
            f"{their_requests['requests_per_unit']:.1f}; {cause}.")
    return found


# -- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run winiocp's benchmarks.")
    parser.add_argument("--quick", action="store_true", help="short runs (about 3 minutes)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--no-copy", action="store_true",
                        help="do not copy the markdown to bench/RESULTS.md")
    parser.add_argument("--merge", action="store_true",
                        help="re-measure only the --only sections and keep the others from "
                             "the existing bench/results/results.json (the command line and "
                             "the load table record it)")
    parser.add_argument("--wait-quiet", type=float, default=None, metavar="SECONDS",
                        help="wait at most this long in all for other test runs on this "
                             "machine to end (default: 180 full, 0 --quick)")
    options = parser.parse_args(argv)
    sections = [s for s in options.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    settings = Settings.make(options.quick)
    if options.wait_quiet is not None:
        settings = Settings(**{**asdict(settings), "wait_quiet": options.wait_quiet})
    began = time.monotonic()
    command = "python3 bench/run.py" + "".join(
        f" {shlex.quote(arg)}" for arg in (sys.argv[1:] if argv is None else argv))
    harness.provision()
    revision = harness.take_snapshot()
    results: dict[str, Any] = {
        "command": command,
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": asdict(settings),
        "machine": harness.machine(),
    }
    results["machine"]["winiocp_revision"] = (
        f"{revision} (HEAD, run from a `git archive` snapshot: edits in progress excluded)")
    log(f"machine: {results['machine']}")
    load: dict[str, Any] = {}
    results["load"] = load
    previous: dict[str, Any] = {}
    previous_path = harness.RESULTS / "results.json"
    if options.merge and previous_path.exists():
        previous = json.loads(previous_path.read_text())
        keys = {"echo": "echo", "aio": "aio", "wine": "wine_requests", "readiness": "readiness",
                "python": "python_cost", "drain": "drain",
                "churn": "churn", "memory": "memory"}
        for section, key in keys.items():
            if section not in sections and key in previous:
                results[key] = previous[key]
                if section in previous.get("load", {}):
                    load[section] = previous["load"][section]
        results["command"] = f"{previous.get('command', '?')} && {command}"
        results["started"] = previous.get("started", results["started"])
        results["settings"] = previous.get("settings", results["settings"])
        measured = previous.get("machine", {}).get("winiocp_revision", "?")
        if not measured.startswith(revision):
            kept = measured if " for " in measured else f"{measured} for the kept sections"
            results["machine"]["winiocp_revision"] = f"{kept}; {revision} for {', '.join(sections)}"
    quiet_budget = settings.wait_quiet

    def before(section: str) -> None:
        """Sample (and if need be wait out) other people's load before a section."""
        nonlocal quiet_budget
        sample = harness.wait_for_quiet(quiet_budget)
        quiet_budget = max(0.0, quiet_budget - float(sample["waited_s"]))
        load[section] = sample
        if not sample["quiet"]:
            log(f"{section}: machine not quiet ({sample['busy_percent']}% CPU busy, "
                f"{len(sample['foreign'])} foreign test processes); measuring anyway")

    if "echo" in sections:
        before("echo")
        results["echo"] = bench_echo(settings)
        load["echo"].update(during(results["echo"]["cells"]))
    if "aio" in sections:
        before("aio")
        results["aio"] = bench_aio(settings)
        load["aio"].update(during(results["aio"]["cells"]))
        results["aio"]["bulk"] = bench_aio_bulk(settings)
        results["aio"]["churn"] = bench_aio_churn(settings)
        results["aio"]["cost"] = bench_aio_cost(settings)
    if "wine" in sections:
        results["wine_requests"] = bench_aio_wine_requests(settings)  # counts, not timings
    if "readiness" in sections:
        before("readiness")
        results["readiness"] = bench_readiness(settings)
    if "python" in sections:
        before("python")
        results["python_cost"] = bench_python_cost(settings)
        log("python cost: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                        results["python_cost"].items()
                                        if isinstance(v, float) and k.endswith("_us")))
    if "drain" in sections:
        before("drain")
        results["drain"] = bench_drain(settings)
    if "churn" in sections:
        before("churn")
        results["churn"] = bench_churn(settings)
    if "memory" in sections:
        before("memory")
        results["memory"] = bench_memory(settings)
    results["targets"] = report.evaluate(results)
    profiles: dict[str, str] = {}
    if "echo" not in sections:
        profiles.update({title: text for title, text in previous.get("profiles", {}).items()
                         if title.startswith("winiocp echo server")})
    elif any(not t["met"] for t in results["targets"] if t["area"] == "echo"):
        summary, load = profile_echo_server(settings)
        profiles[f"winiocp echo server, 1 worker, 64 connections, "
                 f"{load['messages_per_s']:,.0f} msg/s under the profiler "
                 "(cProfile, sorted by own time)"] = summary
    if "aio" not in sections:
        profiles.update({title: text for title, text in previous.get("profiles", {}).items()
                         if title.startswith("aio ")})
    elif any(not t["met"] for t in results["targets"] if t["area"] == "aio"):
        if any(not t["met"] for t in results["targets"]
               if t["area"] == "aio" and t["target"].startswith("aio stubbed")):
            profiles.update(results["aio"].get("cost", {}).get("profiles", {}))
        # Both proactor loops (the same asyncio code above different proactors), for the split.
        for loop in ("winiocp", "stock"):
            summary, measured = profile_aio_server(settings, loop)
            profiles[f"aio Protocol echo on {loop}, 64 connections, "
                     f"{measured['messages_per_s']:,.0f} msg/s under the profiler "
                     "(cProfile, sorted by own time)"] = summary
    profile_text = results.get("python_cost", {}).pop("profile_echo_turn", "")
    if "python" not in sections:
        profiles.update({title: text for title, text in previous.get("profiles", {}).items()
                         if title.startswith("stubbed echo turn")})
    elif profile_text and any(not t["met"] for t in results["targets"]
                              if t["area"] == "python"):
        profiles["stubbed echo turn (run_once: recv completion -> EchoHandler -> send + "
                 "re-posted recv, then the send completion), cProfile by own time"] = profile_text
    results["profiles"] = profiles
    results["findings"] = findings(results)
    results["elapsed_s"] = time.monotonic() - began + float(previous.get("elapsed_s", 0))
    committed = None if options.no_copy else harness.BENCH / "RESULTS.md"
    text = report.write(results, harness.RESULTS, committed)
    print(text)
    met = sum(1 for t in results["targets"] if t["met"])
    log(f"done in {results['elapsed_s']:.0f} s: {met}/{len(results['targets'])} targets met; "
        f"{harness.RESULTS / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
