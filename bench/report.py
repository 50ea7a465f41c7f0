"""Turn the benchmark's results into judgements and a report: targets met/missed, the markdown
tables (bench/results/results.md, copied to bench/RESULTS.md), the JSON, and a PNG chart when
matplotlib is available on the host.

Why a module of its own: ``run.py`` measures; this only reads the ``results`` dict, so the
report can be regenerated from a results.json (``python3 bench/report.py results.json``)
without running anything again.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SERVERS = ["winiocp", "winiocp-1w", "asyncio", "thread", "pywin32", "c"]
SERVER_TITLES = {
    "winiocp": "winiocp (`python -m winiocp serve echo --workers 2`)",
    "winiocp-1w": "winiocp, `--workers 1`",
    "asyncio": "asyncio ProactorEventLoop",
    "thread": "thread per connection",
    "pywin32": "pywin32 IOCP",
    "c": "C IOCP (MinGW)",
}
AIO_LOOPS = ["winiocp", "stock", "selector", "winloop"]
AIO_LOOP_TITLES = {
    "winiocp": "winiocp.aio.EventLoop",
    "stock": "stock ProactorEventLoop",
    "selector": "SelectorEventLoop",
    "winloop": "winloop",
}
AIO_API_TITLES = {
    "protocol": "Protocol echo (`data_received` -> `transport.write`)",
    "streams": "Streams echo (`start_server`, `read` -> `write` + `drain`)",
}
#: The targets for winiocp.aio (messages/s ratios), measured from this baseline on.
AIO_TARGETS = {"protocol": {"stock": 1.5, "winloop": 1.0}, "streams": {"stock": 1.3}}
#: Bulk: winiocp.aio's MB/s at least each of these loops'.
AIO_BULK_TARGETS = ("stock", "winloop")
AIO_BULK_TITLES = {"protocol": "Protocol", "buffered": "BufferedProtocol"}
#: Stubbed run: winiocp.aio's Python per echoed message at most this times the stock loop's.
AIO_PYTHON_RATIO = 0.7
TARGET_COMPLETION_US = 1.5
TARGET_SUBMIT_US = 3.0
#: The core server's echo turn (stubbed) at most this times the flat floor of the same run
#: (``bench/micro/echo_floor.py``): a ratio, since absolute figures move 2x between machines.
TARGET_ECHO_TURN_FLOOR_RATIO = 1.3
TARGET_IDLE_BYTES = 4096


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target, with the measured value and met/missed."""
    targets: list[dict[str, Any]] = []

    def add(name: str, value: str, met: bool, area: str) -> None:
        targets.append({"target": name, "value": value, "met": met, "area": area})

    echo = results.get("echo", {}).get("cells", {})
    counts = sorted({int(c) for c in echo.get("winiocp", {})})
    for count in counts:
        ours = echo["winiocp"][str(count)]
        proactor = echo.get("asyncio", {}).get(str(count))
        c_server = echo.get("c", {}).get(str(count))
        if proactor:
            ratio = _ratio(ours["messages_per_s"], proactor["messages_per_s"])
            add(f"echo {count} conn: winiocp ahead of asyncio proactor", f"{ratio:.2f}x",
                ratio > 1.0, "echo")
            if count == 64:
                add("echo 64 conn: winiocp >= 2x asyncio proactor", f"{ratio:.2f}x",
                    ratio >= 2.0, "echo")
        if c_server:
            ratio = _ratio(ours["messages_per_s"], c_server["messages_per_s"])
            add(f"echo {count} conn: winiocp >= 0.8x C", f"{ratio:.2f}x", ratio >= 0.8, "echo")
            if count == 256:
                p99 = _ratio(ours["p99_us"], c_server["p99_us"])
                add("echo 256 conn: winiocp p99 <= 2x C's p99",
                    f"{ours['p99_us'] / 1000:.1f} ms vs {c_server['p99_us'] / 1000:.1f} ms "
                    f"({p99:.2f}x)", p99 <= 2.0, "echo")
    aio = results.get("aio", {}).get("cells", {})
    for api, wanted in AIO_TARGETS.items():
        loops = aio.get(api, {})
        for count in sorted(int(c) for c in loops.get("winiocp", {})):
            ours = loops["winiocp"][str(count)]
            for other, minimum in wanted.items():
                theirs = loops.get(other, {}).get(str(count))
                if theirs:
                    ratio = _ratio(ours["messages_per_s"], theirs["messages_per_s"])
                    add(f"aio {api} echo {count} conn: winiocp.aio >= {minimum:g}x "
                        f"{AIO_LOOP_TITLES[other]}", f"{ratio:.2f}x",
                        ratio >= minimum, "aio")
            if api == "protocol" and count == 256:
                for other in wanted:
                    theirs = loops.get(other, {}).get(str(count))
                    if theirs:
                        add(f"aio protocol echo 256 conn: p99 no worse than "
                            f"{AIO_LOOP_TITLES[other]}",
                            f"{ours['p99_us'] / 1000:.1f} ms vs {theirs['p99_us'] / 1000:.1f} ms",
                            ours["p99_us"] <= theirs["p99_us"], "aio")
    _aio_more_targets(results.get("aio", {}), add)
    cost = results.get("python_cost", {})
    if cost:
        for key, label in (("classify_us", "classify (get_many path)"),
                           ("run_once_us", "Server loop: get + dispatch + deadlines")):
            add(f"Python cost per dequeued completion, {label} <= {TARGET_COMPLETION_US} us",
                f"{cost[key]:.2f} us", cost[key] <= TARGET_COMPLETION_US, "python")
        for key, label in (("submit_recv_us", "WSARecv (Socket.recv_into, reused op)"),
                           ("submit_send_us", "WSASend (Socket.send)")):
            add(f"Python cost per submitted operation, {label} <= {TARGET_SUBMIT_US} us",
                f"{cost[key]:.2f} us", cost[key] <= TARGET_SUBMIT_US, "python")
        for key, label in (("echo_turn_us", "the send pending, its completion dequeued"),
                           ("echo_turn_inline_us", "the send finished inline, as skip-on-"
                            "success finishes a loopback send")):
            floor = cost.get("echo_floor_us")
            if key in cost and floor:
                ratio = _ratio(cost[key], floor)
                add(f"core echo turn through the Server's loop (stubbed; {label}) <= "
                    f"{TARGET_ECHO_TURN_FLOOR_RATIO:g}x the flat floor of the same run",
                    f"{cost[key]:.2f} vs {floor:.2f} us ({ratio:.2f}x)",
                    ratio <= TARGET_ECHO_TURN_FLOOR_RATIO, "python")
    memory_rows = {row["variant"]: row for row in results.get("memory", {}).get("rows", [])}
    for row in memory_rows.values():
        if row["variant"] == "zero_byte_reads":
            add(f"idle connection <= 4 KiB with zero-byte reads ({row['connections']} conns)",
                f"{row['bytes_per_connection'] / 1024:.1f} KiB",
                row["bytes_per_connection"] <= TARGET_IDLE_BYTES, "memory")
    ours, stock = memory_rows.get("aio_winiocp"), memory_rows.get("aio_stock")
    if ours and stock:
        add(f"winiocp.aio: idle connection at most the stock loop's ({ours['connections']} "
            "conns)", f"{ours['bytes_per_connection'] / 1024:.1f} KiB vs "
            f"{stock['bytes_per_connection'] / 1024:.1f} KiB",
            ours["bytes_per_connection"] <= stock["bytes_per_connection"], "memory")
    return targets


def _aio_more_targets(aio: dict[str, Any], add: Callable[[str, str, bool, str], None]) -> None:
    """The targets for bulk (MB/s against the stock loop and winloop), and for the
    stubbed run (Python per echoed message at most ``AIO_PYTHON_RATIO`` times the stock
    loop's; fewer system calls)."""
    for api, by_loop in aio.get("bulk", {}).get("cells", {}).items():
        ours = by_loop.get("winiocp")
        for other in AIO_BULK_TARGETS:
            theirs = by_loop.get(other)
            if ours and theirs:
                ratio = _ratio(ours["mb_per_s"], theirs["mb_per_s"])
                add(f"aio bulk into a {AIO_BULK_TITLES[api]}: winiocp.aio MB/s >= "
                    f"{AIO_LOOP_TITLES[other]}'s",
                    f"{ours['mb_per_s']:,.0f} vs {theirs['mb_per_s']:,.0f} MB/s "
                    f"({ratio:.2f}x)", ratio >= 1.0, "aio")
    cost = aio.get("cost", {}).get("cells", {})
    ours_cells, stock_cells = cost.get("winiocp", {}), cost.get("stock", {})
    for count in sorted(int(c) for c in ours_cells if c in stock_cells):
        ours, stock = ours_cells[str(count)], stock_cells[str(count)]
        ratio = _ratio(ours["python_us"], stock["python_us"])
        add(f"aio stubbed echo, {count} conn: winiocp.aio's Python per echoed message <= "
            f"{AIO_PYTHON_RATIO:g}x the stock loop's",
            f"{ours['python_us']:.1f} vs {stock['python_us']:.1f} us ({ratio:.2f}x)",
            ratio <= AIO_PYTHON_RATIO, "aio")
        ours_calls = ours["system_calls_per_message"]
        stock_calls = stock["system_calls_per_message"]
        add(f"aio stubbed echo, {count} conn: fewer system calls per echoed message than "
            "the stock loop", f"{ours_calls:.2f} vs {stock_calls:.2f}",
            ours_calls < stock_calls, "aio")


def _mark(met: bool) -> str:
    return "met" if met else "**missed**"


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def _fmt_ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def _latency(cell: dict[str, Any]) -> str:
    """``p50 / p99`` in ms, and how many connections were answered when not all of them were
    (a server that starves some connections answers the others quickly)."""
    text = f"{_fmt_ms(cell['p50_us'])} / {_fmt_ms(cell['p99_us'])}"
    served = cell.get("served_connections")
    connections = cell.get("connections", 0)
    if served is not None and served < connections:
        text += f" (**{served} of {connections} answered**)"
    return text


LATENCY_NOTE = ("Latency p50 / p99 in ms (lower is better; a message still unanswered when "
                "the run ends counts at its wait so far, and a cell says so when some "
                "connections had no message answered in the measured window):")


#: How each setting of ``bench/run.py`` reads in the report (``{}`` is its value).
_SETTING_TEXTS: dict[str, str] = {
    "quick": "quick run (`--quick`): {}",
    "counts": "connection counts of the ping-pong sections: {}",
    "workers": "worker threads of the IOCP servers: {}",
    "echo_seconds": "each ping-pong run: {} s",
    "warmup": "warm-up before each run: {} s",
    "echo_repeats": "ping-pong runs per cell (the median is shown): {}",
    "drain_seconds": "each drain run: {} s",
    "drain_repeats": "drain runs: {}",
    "churn_seconds": "each churn run: {} s",
    "churn_concurrency": "churn clients at once: {}",
    "bulk_bytes": "bytes per bulk run: {}",
    "bulk_repeats": "bulk runs per cell: {}",
    "memory_connections": "connections held in the memory section: {}",
    "memory_base": "connections of the memory section's base: {}",
    "rehold": "memory measured again after the connections are released and held again: {}",
    "wait_quiet": "longest wait in all for other test runs to end: {} s",
    "traced_messages": "messages echoed with wineserver tracing on: {}",
}


def _setting_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and value >= 2**20 and value % 2**20 == 0:
        return f"{value // 2**20} MiB"
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting_value(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _settings_lines(settings: dict[str, Any]) -> list[str]:
    """The run's settings as sentences, one per setting, in the order ``run.py`` has them."""
    return [_SETTING_TEXTS.get(key, key + ": {}").format(_setting_value(value))
            for key, value in settings.items()]


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    out = lines.append
    machine = results.get("machine", {})
    settings = results.get("settings", {})
    out("# winiocp benchmark results")
    out("")
    out(f"Command: `{results.get('command', 'python3 bench/run.py')}` "
        f"({results.get('started', '')}, {results.get('elapsed_s', 0):.0f} s in all).")
    out("")
    out("| machine | |")
    out("|---|---|")
    for key, title in (("nproc", "nproc"), ("cpu", "CPU (/proc/cpuinfo)"), ("memory", "memory"),
                       ("kernel", "Linux kernel"), ("wine", "Wine"),
                       ("windows_python", "Windows CPython (under Wine)"),
                       ("host_python", "host Python (orchestrator)"), ("gcc", "host gcc"),
                       ("mingw", "MinGW-w64 gcc"), ("winiocp_revision", "winiocp measured")):
        out(f"| {title} | {machine.get(key, '?')} |")
    out("")
    out("Everything runs on this one machine: the servers and micro-benchmarks are Windows "
        "programs under Wine, the load generator (`bench/loadgen.c`, epoll, one thread, "
        "TCP_NODELAY) is a native Linux program, loopback only. **Under Wine every real IOCP "
        "or Winsock call is a round trip to wineserver** (measured below: "
        f"{_wine_call_cost(results)}), and Wine 8's GetQueuedCompletionStatusEx removes "
        "entries one at a time, so end-to-end numbers are dominated by Wine and hide the "
        "Python layer's own overhead; the stubbed micro-benchmarks (section 2) measure that "
        "overhead alone. About 50 us per call was expected; on this machine it is less.")
    out("")
    out("Settings:")
    out("")
    for line in _settings_lines(settings):
        out(f"- {line}")
    out("")
    load = results.get("load", {})
    if load:
        out("Background load, sampled for 1 s (bench idle) before each section; the bench "
            "uses a Wine prefix (so a wineserver) of its own, but shares the 2 cores with "
            "anything else running:")
        out("")
        out("| section | CPU busy | load avg (1 min) | other test runs (pytest / winenv.py / "
            "asyncio suite) "
            "| waited for quiet | during: other test runs (most seen) | during: CPU not ours "
            "(median) |")
        out("|---|---:|---:|---:|---:|---:|---:|")
        for section, sample in load.items():
            foreign = sample.get("foreign_during")
            other = float(sample.get("other_cpu_percent", -1.0))
            out(f"| {section} | {sample['busy_percent']:.0f}% | {sample['loadavg']:.2f} | "
                f"{len(sample['foreign'])} | {sample.get('waited_s', 0):.0f} s | "
                f"{'-' if foreign is None else foreign} | "
                f"{'-' if other < 0 else f'{other:.0f}%'} |")
        out("")
        out("The \"during\" columns are measured at each load-generator run of the ping-pong "
            "sections (echo, aio): the foreign test processes when it starts, and the machine's "
            "busy CPU over it less the server's, its wineserver's and the load generator's, as "
            "a share of all cores (it also counts the kernel's loopback work done outside any "
            "process). The other columns are sampled once, before the section.")
        out("")

    # -- targets -------------------------------------------------------------------------------
    targets = results.get("targets", [])
    out("## Targets")
    out("")
    out("| target | measured | |")
    out("|---|---|---|")
    for target in targets:
        out(f"| {target['target']} | {target['value']} | {_mark(target['met'])} |")
    met = sum(1 for t in targets if t["met"])
    out("")
    out(f"{met} of {len(targets)} targets met.")
    out("")

    # -- 1. echo -------------------------------------------------------------------------------
    echo = results.get("echo", {})
    cells: dict[str, dict[str, Any]] = echo.get("cells", {})
    if cells:
        counts = sorted({int(c) for server in cells.values() for c in server})
        out("## 1. Echo: 64-byte ping-pong, messages/s and round-trip latency")
        out("")
        out(f"{echo.get('note', '')}")
        out("")
        header = "| connections | " + " | ".join(
            SERVER_TITLES[s] for s in SERVERS if s in cells) + " |"
        out("Messages per second (higher is better):")
        out("")
        out(header)
        out("|---|" + "---:|" * sum(1 for s in SERVERS if s in cells))
        for count in counts:
            row = [_fmt_rate(cells[s][str(count)]["messages_per_s"]) if str(count) in cells[s]
                   else "-" for s in SERVERS if s in cells]
            out(f"| {count} | " + " | ".join(row) + " |")
        out("")
        out(LATENCY_NOTE)
        out("")
        out(header)
        out("|---|" + "---:|" * sum(1 for s in SERVERS if s in cells))
        for count in counts:
            row = [_latency(cells[s][str(count)]) if str(count) in cells[s]
                   else "-" for s in SERVERS if s in cells]
            out(f"| {count} | " + " | ".join(row) + " |")
        out("")
        out("winiocp as a ratio of each other server (messages/s; p99 at the right):")
        out("")
        others = [s for s in SERVERS if s in cells and s != "winiocp"]
        out("| connections | " + " | ".join(f"vs {s}" for s in others) + " | p99 vs C |")
        out("|---|" + "---:|" * (len(others) + 1))
        for count in counts:
            ours = cells["winiocp"].get(str(count))
            if not ours:
                continue
            ratios = [f"{_ratio(ours['messages_per_s'], cells[s][str(count)]['messages_per_s']):.2f}x"
                      if str(count) in cells[s] else "-" for s in others]
            c_cell = cells.get("c", {}).get(str(count))
            p99 = f"{_ratio(ours['p99_us'], c_cell['p99_us']):.2f}x" if c_cell else "-"
            out(f"| {count} | " + " | ".join(ratios) + f" | {p99} |")
        out("")
        if any("server_cpu_us_per_msg" in cell for server in cells.values()
               for cell in server.values()):
            out("CPU per echoed message, us: the server process (all threads) + its wineserver "
                "(from /proc/PID/stat over each run; the load generator and the kernel's own "
                "loopback work are not included). On 2 shared cores this is what limits "
                "messages/s:")
            out("")
            out(header)
            out("|---|" + "---:|" * sum(1 for s in SERVERS if s in cells))
            for count in counts:
                row = []
                for s in SERVERS:
                    if s not in cells:
                        continue
                    cell = cells[s].get(str(count), {})
                    if "server_cpu_us_per_msg" in cell:
                        row.append(f"{cell['server_cpu_us_per_msg']:.0f} + "
                                   f"{cell.get('wineserver_cpu_us_per_msg', 0):.0f}")
                    else:
                        row.append("-")
                out(f"| {count} | " + " | ".join(row) + " |")
            out("")
        errors = {s: sum(int(v.get("errors", 0)) for v in cells[s].values()) for s in cells}
        if any(errors.values()):
            out(f"Client-side errors (broken connections): {errors}")
            out("")

    # -- 1b. aio ---------------------------------------------------------------------------------
    lines.extend(_aio_markdown(results.get("aio", {})))
    lines.extend(_aio_more_markdown(results.get("aio", {})))
    requests = results.get("wine_requests", {})
    if requests.get("cells") or requests.get("skipped"):
        lines.extend(_aio_wine_requests_markdown(requests))
    readiness = results.get("readiness", {})
    if readiness:
        lines.extend(_readiness_markdown(readiness))

    # -- 2. Python cost ------------------------------------------------------------------------
    cost = results.get("python_cost", {})
    if cost:
        out("## 2. winiocp's own Python cost (system calls stubbed)")
        out("")
        out(f"Median over {cost.get('rounds', '?')} rounds of 64 items each (the fastest round "
            "beside it is the one least disturbed by other processes). No kernel: "
            "OVERLAPPED_ENTRY arrays or a "
            "stubbed GetQueuedCompletionStatus hand out operations registered with the port, and "
            "`winiocp.sockets.ws2_32` is replaced by a stub whose WSARecv/WSASend return "
            "SOCKET_ERROR with WSA_IO_PENDING (the ops are unregistered afterwards, untimed). "
            f"The GQCS stub's own cost ({cost['gqcs_stub_us']:.2f} us) is subtracted where it "
            f"sits in the timed path; a real cffi call costs {cost['cffi_call_us']:.2f} us "
            "(GetLastError, no kernel), which the real path pays on top.")
        out("")
        best = cost.get("best_round_us", {})
        out("| path | us per item (median round) | fastest round | target (on the median) |")
        out("|---|---:|---:|---|")
        rows = [
            ("classify_us", "dequeue: `_classify_entries` (get_many path), per completion",
             TARGET_COMPLETION_US),
            ("get_us", "dequeue: `port.get()` with GQCS stubbed, per completion", None),
            ("classify_dispatch_us",
             "dequeue: `_classify_entries` + `ConnectionManager.dispatch` of a send completion",
             None),
            ("run_once_us", "dequeue: `ConnectionManager.run_once` (the Server's loop: get + "
             "dispatch + close/idle deadlines), send completion", TARGET_COMPLETION_US),
            ("submit_recv_us", "submit: `Socket.recv_into` (reused RecvOperation)",
             TARGET_SUBMIT_US),
            ("submit_send_us", "submit: `Socket.send` (new SendOperation)", TARGET_SUBMIT_US),
            ("connection_send_us", "submit: `Connection.send`", None),
            ("echo_turn_us", "one echoed message through `run_once`: recv completion -> "
             "EchoHandler -> send + re-posted recv, then the send completion", None),
            ("echo_turn_inline_us", "the same, the send finished inside `Connection.send` "
             "(skip-on-success: no send completion to dequeue)", None),
            ("echo_floor_us", "the echo turn's necessary work written flat "
             "(`bench/micro/echo_floor.py`: same stubs, registry, locks and objects, none of "
             "the layers)", None),
        ]
        for key, label, target in rows:
            if key not in cost:  # (the inline turn needs sockets in skip-on-success mode)
                continue
            mark = "" if target is None else f"<= {target} us: {_mark(cost[key] <= target)}"
            fastest = f"{best[key]:.2f}" if key in best else "-"
            out(f"| {label} | {cost[key]:.2f} | {fastest} | {mark} |")
        out("")
        out(f"Python-only ceiling of the echo path: {cost['echo_ceiling_msgs_per_s']:,.0f} "
            "messages/s on one core (1 / echo turn), before any system call.")
        out("")

    # -- 2b. drain -------------------------------------------------------------------------------
    drain = results.get("drain", {})
    if drain.get("routes"):
        out("## 2b. Post + GetQueuedCompletionStatus drain rates (no sockets)")
        out("")
        out(f"Cycles of {drain.get('batch', 64)} posts then {drain.get('batch', 64)} dequeues "
            "(zero time-out); median of "
            f"{drain.get('repeats', 1)} interleaved repetitions of {drain.get('seconds', 1)} s.")
        out("")
        out("| route | packets/s | us per post | us per dequeued packet | vs C GQCS |")
        out("|---|---:|---:|---:|---:|")
        routes: dict[str, dict[str, Any]] = drain["routes"]
        c_rate = float(routes.get("C GQCS", {}).get("packets_per_s", 0.0))
        for name, route in routes.items():
            if "packets_per_s" not in route:
                out(f"| {name} | {route.get('error', 'failed')} | | | |")
                continue
            out(f"| {name} | {_fmt_rate(route['packets_per_s'])} | {route['post_us']:.2f} | "
                f"{route['dequeue_us']:.2f} | {_ratio(route['packets_per_s'], c_rate):.2f}x |")
        out("")
        for note in drain.get("notes", []):
            out(f"- {note}")
        out("")

    # -- 3. churn --------------------------------------------------------------------------------
    churn = results.get("churn", {})
    if churn.get("rows"):
        out("## 3. Connection churn (connect, one 64-byte exchange, close)")
        out("")
        out(churn.get("note", ""))
        out("")
        out("| server | who closes first | TIME_WAIT avoidance | connections/s | p50 / p99 ms "
            "| TIME_WAIT left, server side | client side | errors |")
        out("|---|---|---|---:|---:|---:|---:|---:|")
        for row in churn["rows"]:
            out(f"| {row['server']} | {row['closer']} | {'on' if row['avoidance'] else 'off'} | "
                f"{_fmt_rate(row['connections_per_s'])} | {_fmt_ms(row['p50_us'])} / "
                f"{_fmt_ms(row['p99_us'])} | {row['time_wait']['server_side']} | "
                f"{row['time_wait']['client_side']} | {row['errors']} |")
        out("")

    # -- 4. memory ------------------------------------------------------------------------------
    memory = results.get("memory", {})
    if memory.get("rows"):
        out("## 4. Memory per idle connection (one receive pending)")
        out("")
        out(memory.get("note", ""))
        out("")
        out("| server mode | connections | private bytes at base | at N | per connection "
            "| host RssAnon per connection | re-hold growth per connection |")
        out("|---|---:|---:|---:|---:|---:|---:|")
        for row in memory["rows"]:
            regrow = row.get("rehold_bytes_per_connection")
            out(f"| {row['title']} | {row['connections']} | "
                f"{row['base_private_bytes'] / 2**20:.1f} MiB | "
                f"{row['private_bytes'] / 2**20:.1f} MiB | "
                f"**{row['bytes_per_connection'] / 1024:.1f} KiB** | "
                f"{row['host_rss_anon_per_connection'] / 1024:.1f} KiB | "
                f"{'-' if regrow is None else f'{regrow / 1024:.1f} KiB'} |")
        out("")

    # -- findings and profiles -------------------------------------------------------------------
    findings = results.get("findings", [])
    if findings:
        out("## Findings")
        out("")
        for finding in findings:
            out(f"- {finding}")
        out("")
    profiles = results.get("profiles", {})
    if profiles:
        out("## Profiles (where targets were missed)")
        out("")
        for title, text in profiles.items():
            out(f"### {title}")
            out("")
            out("```")
            out(text.strip())
            out("```")
            out("")
    chart = results.get("chart")
    out(f"Chart: {chart}" if chart else "Chart: not drawn (matplotlib is not installed on the "
        "host).")
    out("")
    return "\n".join(lines)


def _aio_markdown(aio: dict[str, Any]) -> list[str]:
    """Section 1b: one block of tables per application (protocol, streams), a column per loop."""
    by_api: dict[str, dict[str, dict[str, Any]]] = aio.get("cells", {})
    if not any(by_api.values()):
        return []
    lines = ["## 1b. asyncio event loops (`aio`): 64-byte ping-pong", "", aio.get("note", ""), ""]
    out = lines.append
    banners: dict[str, str] = aio.get("loops", {})
    classes = sorted({f"{name.split('/')[1]}: `{banner}`" for name, banner in banners.items()})
    if classes:
        out("Loop classes running (each server prints its own): " + "; ".join(classes) + ".")
        out("")
    for name, reason in aio.get("skipped", {}).items():
        out(f"- **{name} not measured**: {reason}")
    if aio.get("skipped"):
        out("")
    for api, cells in by_api.items():
        loops = [loop for loop in AIO_LOOPS if loop in cells]
        if not loops:
            continue
        counts = sorted({int(c) for loop in loops for c in cells[loop]})
        header = "| connections | " + " | ".join(AIO_LOOP_TITLES[loop] for loop in loops) + " |"
        rule = "|---|" + "---:|" * len(loops)

        def table(cell_text: Callable[[dict[str, Any]], str]) -> None:
            out(header)
            out(rule)
            for count in counts:
                row = [cell_text(cells[loop][str(count)]) if str(count) in cells[loop] else "-"
                       for loop in loops]
                out(f"| {count} | " + " | ".join(row) + " |")
            out("")

        out(f"### {AIO_API_TITLES.get(api, api)}")
        out("")
        out("Messages per second (higher is better; the median, with the range of the runs "
            "in brackets when there were several):")
        out("")
        table(_rate_with_range)
        out(LATENCY_NOTE)
        out("")
        table(_latency)
        if any("server_cpu_us_per_msg" in cell for loop in loops for cell in cells[loop].values()):
            out("CPU per echoed message, us: the server process + its wineserver (as in "
                "section 1):")
            out("")
            table(lambda cell: f"{cell['server_cpu_us_per_msg']:.0f} + "
                  f"{cell.get('wineserver_cpu_us_per_msg', 0):.0f}"
                  if "server_cpu_us_per_msg" in cell else "-")
        others = [loop for loop in loops if loop != "winiocp"]
        if "winiocp" in cells and others:
            out("winiocp.aio as a ratio of each other loop (messages/s, then p99; "
                "targets: "
                + ", ".join(f">= {v:g}x {AIO_LOOP_TITLES[k]}"
                            for k, v in AIO_TARGETS.get(api, {}).items()) + "):")
            out("")
            out("| connections | " + " | ".join(f"msg/s vs {loop}" for loop in others) + " | "
                + " | ".join(f"p99 vs {loop}" for loop in others) + " |")
            out("|---|" + "---:|" * (2 * len(others)))
            for count in counts:
                ours = cells["winiocp"].get(str(count))
                if not ours:
                    continue
                theirs = [cells[loop].get(str(count)) for loop in others]
                rates = [f"{_ratio(ours['messages_per_s'], t['messages_per_s']):.2f}x" if t
                         else "-" for t in theirs]
                p99s = [f"{_ratio(ours['p99_us'], t['p99_us']):.2f}x" if t else "-"
                        for t in theirs]
                out(f"| {count} | " + " | ".join(rates + p99s) + " |")
            out("")
        errors = {loop: sum(int(v.get("errors", 0)) for v in cells[loop].values())
                  for loop in loops}
        if any(errors.values()):
            out(f"Client-side errors (broken connections): {errors}")
            out("")
    return lines


def _aio_more_markdown(aio: dict[str, Any]) -> list[str]:
    """Section 1b, continued: bulk, churn, and the stubbed cost and system calls."""
    lines: list[str] = []
    out = lines.append
    bulk = aio.get("bulk", {})
    if any(bulk.get("cells", {}).values()) or bulk.get("skipped"):
        cells: dict[str, dict[str, Any]] = bulk.get("cells", {})
        loops = [loop for loop in AIO_LOOPS if any(loop in by_loop for by_loop in cells.values())]
        out(f"### Bulk: one connection, {bulk.get('bytes', 0) / 2**20:g} MiB client -> server")
        out("")
        out(bulk.get("note", ""))
        out("")
        for name, reason in bulk.get("skipped", {}).items():
            out(f"- **{name}: runs stopped**: {reason}")
        for failure in bulk.get("failures", []):
            out(f"- failed run (not in the medians): {failure}")
        if bulk.get("skipped") or bulk.get("failures"):
            out("")
        out("| receiver | " + " | ".join(AIO_LOOP_TITLES[loop] for loop in loops)
            + " | winiocp.aio vs stock | vs winloop |")
        out("|---|" + "---:|" * (len(loops) + 2))
        for api, by_loop in cells.items():
            row = []
            for loop in loops:
                cell = by_loop.get(loop)
                row.append("-" if not cell else
                           f"{cell['mb_per_s']:,.0f} MB/s"
                           + _range(cell, "mb_per_s")
                           + f"; {cell['server_cpu_ms_per_mb']:.1f} + "
                           f"{cell['wineserver_cpu_ms_per_mb']:.1f} ms/MB")
            ours = by_loop.get("winiocp")
            ratios = [f"{_ratio(ours['mb_per_s'], by_loop[o]['mb_per_s']):.2f}x"
                      if ours and o in by_loop else "-" for o in AIO_BULK_TARGETS]
            out(f"| {AIO_BULK_TITLES.get(api, api)} | " + " | ".join(row + ratios) + " |")
        out("")
        out("(ms/MB: CPU of the server process + its wineserver per MB received.)")
        out("")
    churn = aio.get("churn", {})
    if churn.get("cells") or churn.get("skipped"):
        out("### Churn: connect, one 64-byte exchange, close")
        out("")
        out(churn.get("note", ""))
        out("")
        for name, reason in churn.get("skipped", {}).items():
            out(f"- **{name} not measured**: {reason}")
        if churn.get("skipped"):
            out("")
        out("| loop | connections/s | p50 / p99 ms (one connection's life) | errors |")
        out("|---|---:|---:|---:|")
        for loop in AIO_LOOPS:
            cell = churn.get("cells", {}).get(loop)
            if cell:
                out(f"| {AIO_LOOP_TITLES[loop]} | {_fmt_rate(cell['connections_per_s'])}"
                    f"{_range(cell, 'connections_per_s')} | {_fmt_ms(cell['p50_us'])} / "
                    f"{_fmt_ms(cell['p99_us'])} | {cell['errors']} |")
        out("")
    cost = aio.get("cost", {})
    if cost.get("cells") or cost.get("skipped"):
        lines.extend(_aio_cost_markdown(cost))
    return lines


def _aio_wine_requests_markdown(requests: dict[str, Any]) -> list[str]:
    """Wineserver requests per unit of work by loop: the totals of every workload, then the
    ping-pong's by request."""
    cells: dict[str, dict[str, dict[str, Any]]] = requests.get("cells", {})
    lines = ["## 1c. Wineserver requests (`wine`): what a message, a connection, a MiB cost "
             "under Wine", "",
             requests.get("note", ""), ""]
    out = lines.append
    for name, reason in requests.get("skipped", {}).items():
        out(f"- **{name} not measured**: {reason}")
    if requests.get("skipped"):
        out("")
    loops = [loop for loop in AIO_LOOPS if cells.get(loop)]
    if not loops:
        return lines
    units = {"pingpong 1": "per echoed message, 1 conn", "pingpong 16":
             "per echoed message, 16 conn", "churn": "per connection (churn)",
             "bulk protocol": "per MiB into a Protocol", "bulk buffered":
             "per MiB into a BufferedProtocol"}
    out("| requests | " + " | ".join(AIO_LOOP_TITLES[loop] for loop in loops)
        + " | winiocp.aio vs stock |")
    out("|---|" + "---:|" * (len(loops) + 1))
    for workload, title in units.items():
        row = [cells[loop].get(workload) for loop in loops]
        if not any(row):
            continue
        ours, stock = cells.get("winiocp", {}).get(workload), cells.get("stock", {}).get(workload)
        ratio = (f"{_ratio(float(ours['requests_per_unit']), float(stock['requests_per_unit'])):.2f}x"
                 if ours and stock else "-")
        out(f"| {title} | " + " | ".join(
            f"{float(cell['requests_per_unit']):.2f}" if cell else "-" for cell in row)
            + f" | {ratio} |")
    out("")
    columns = [(loop, workload) for workload in ("pingpong 1", "pingpong 16") for loop in loops
               if workload in cells[loop]]
    if not columns:
        return lines
    totals: dict[str, float] = {}
    for loop, workload in columns:
        for name, value in cells[loop][workload]["by_request"].items():
            totals[name] = totals.get(name, 0.0) + float(value)
    out("Ping-pong requests per echoed message, by request:")
    out("")
    out("| request | " + " | ".join(f"{AIO_LOOP_TITLES[loop]}, {workload.split()[1]} conn"
                                    for loop, workload in columns) + " |")
    out("|---|" + "---:|" * len(columns))
    for name in sorted(totals, key=lambda n: -totals[n])[:8]:
        out(f"| `{name}` | " + " | ".join(
            f"{float(cells[loop][workload]['by_request'].get(name, 0.0)):.2f}"
            for loop, workload in columns) + " |")
    out("")
    return lines

def _aio_cost_markdown(cost: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    out = lines.append
    cells: dict[str, dict[str, dict[str, Any]]] = cost.get("cells", {})
    out("### Python cost and system calls per echoed message, kernel stubbed")
    out("")
    out("`bench/micro/aio_cost.py` (its docstring has the design): the same `asyncio.Protocol` "
        "echo on each loop over one fake kernel, cut at the Win32 functions (the stock loop: "
        "`_overlapped` replaced; winiocp.aio: `kernel32`/`ws2_32`/`ntdll` replaced in every "
        "winiocp module). A fake peer per connection sends 64 bytes when the loop next waits "
        "in the kernel and the next message once the echo is back. Python: perf_counter over "
        "the rounds, less the stubs' own time (measured inside each stub, plus one timer read "
        "per call): the median of the rounds (the fastest in brackets) of the least disturbed "
        "run, each run's median after it when there were several.")
    out("")
    for name, reason in cost.get("skipped", {}).items():
        out(f"- **{name} not measured**: {reason}")
    if cost.get("skipped"):
        out("")
    loops = [loop for loop in ("winiocp", "stock") if loop in cells]
    counts = sorted({int(c) for loop in loops for c in cells[loop]})
    if not loops:
        return lines
    out("| connections | " + " | ".join(
        f"{AIO_LOOP_TITLES[loop]}: Python us | stubs us | system calls" for loop in loops)
        + (" | Python, winiocp.aio / stock |" if len(loops) == 2 else " |"))
    out("|---|" + "---:|" * (3 * len(loops) + (1 if len(loops) == 2 else 0)))
    for count in counts:
        row = []
        for loop in loops:
            cell = cells[loop].get(str(count))
            others = cell.get("runs_python_us", []) if cell else []
            row.extend(["-"] * 3 if not cell else [
                f"{cell['python_us']:.1f} ({cell['python_best_us']:.1f})"
                + (" [" + ", ".join(f"{v:.1f}" for v in others) + "]"
                   if len(others) > 1 else ""),
                f"{cell['stub_us']:.1f}", f"{cell['system_calls_per_message']:.2f}"])
        if len(loops) == 2:
            ours, stock = cells["winiocp"].get(str(count)), cells["stock"].get(str(count))
            row.append(f"{_ratio(ours['python_us'], stock['python_us']):.2f}x"
                       if ours and stock else "-")
        out(f"| {count} | " + " | ".join(row) + " |")
    out("")
    split = [(count, cells["winiocp"][str(count)], cells["stock"][str(count)])
             for count in counts if len(loops) == 2 and str(count) in cells["winiocp"]
             and str(count) in cells["stock"] and "core_us" in cells["winiocp"][str(count)]]
    if split:
        out("Where winiocp.aio's Python goes: the core below it (`Socket.send`, "
            "`Socket.recv_into`, `CompletionPort.get_many`/`get_inline`: building and issuing "
            "each call, classifying each completion; the work the stock loop's `_overlapped` "
            "does in C, where the stubs replace it) against the layers above (asyncio's "
            "`_run_once`, the proactor's routing, the transport, the protocol), timed in three "
            "more rounds with those four functions wrapped:")
        out("")
        out("| connections | winiocp core us | winiocp above the core us | stock Python us | "
            "above the core / stock |")
        out("|---|---:|---:|---:|---:|")
        for count, ours, stock in split:
            above = ours["python_us"] - ours["core_us"]
            out(f"| {count} | {ours['core_us']:.1f} | {above:.1f} | {stock['python_us']:.1f} | "
                f"{_ratio(above, stock['python_us']):.2f}x |")
        out("")
    out("Win32 calls per echoed message, by function (user-space ones, not counted as system "
        "calls, in italics):")
    out("")
    columns = [(loop, count) for count in counts for loop in loops
               if str(count) in cells[loop]]
    functions = sorted({name for loop, count in columns
                        for name in cells[loop][str(count)]["calls_per_message"]})
    out("| function | " + " | ".join(f"{AIO_LOOP_TITLES[loop]}, {count} conn"
                                     for loop, count in columns) + " |")
    out("|---|" + "---:|" * len(columns))
    for name in functions:
        title = f"*{name}*" if name in AIO_USER_SPACE else name
        row = [f"{cells[loop][str(count)]['calls_per_message'].get(name, 0):.2f}"
               for loop, count in columns]
        out(f"| {title} | " + " | ".join(row) + " |")
    out("")
    skip = [f"{AIO_LOOP_TITLES[loop]}: {'on' if cell.get('skip_on_success') else 'off'}"
            for loop in loops for cell in list(cells[loop].values())[:1]]
    out("FILE_SKIP_COMPLETION_PORT_ON_SUCCESS on the echo sockets: " + "; ".join(skip) + ".")
    out("")
    return lines


READINESS_SELECTORS = {"afd": "`AfdSelector`", "select": "`SelectSelector`"}
READINESS_LOOPS = {
    "winiocp": "`winiocp.aio.EventLoop` (add_reader on its port)",
    "tornado": "tornado `AddThreadSelectorEventLoop` around the stock proactor loop",
    "winiocp-selector": "`winiocp.aio.SelectorEventLoop` (AfdSelector)",
    "selector": "stock `asyncio.SelectorEventLoop` (select)",
}


def _runs_range(cell: dict[str, Any], key: str, digits: int) -> str:
    values = [float(v) for v in cell.get(key, [])]
    if len(values) > 1:
        return f" ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    return ""


def _readiness_markdown(readiness: dict[str, Any]) -> list[str]:
    """Section 1d: AfdSelector vs SelectSelector, and add_reader on each loop."""
    lines = ["## 1d. Readiness (`readiness`): AfdSelector and add_reader", "",
             readiness.get("note", ""), ""]
    out = lines.append
    for part, reason in readiness.get("skipped", {}).items():
        out(f"- **{part} not measured**: {reason}")
    if readiness.get("skipped"):
        out("")
    selectors = readiness.get("selectors", {})
    if selectors.get("select"):
        out("### `select(0)` with N sockets registered, K of them ready")
        out("")
        out("Microseconds per call that reports the K ready sockets (a byte left unread in "
            "each: level-triggered, both selectors report them on every call); median of "
            f"{selectors.get('rounds', '?')} rounds of {selectors.get('batch_s', 0) * 1000:g} ms "
            "per variant (the rounds' range in brackets). Calls that reported fewer than K: "
            "counted beside. `SelectSelector` refuses more than 512 sockets, hence no N = 2000.")
        out("")
        out("| N registered | K ready | AfdSelector us/call | SelectSelector us/call | "
            "SelectSelector / AfdSelector |")
        out("|---:|---:|---:|---:|---:|")
        for cell, by_variant in selectors["select"].items():
            count, ready = cell.split("/")
            row = []
            for name in ("afd", "select"):
                value = by_variant.get(name)
                row.append("-" if not value else f"{value['us_per_call']:,.1f}"
                           + _runs_range(value, "runs_us", 0)
                           + (f", {value['short_calls']} short" if value.get("short_calls")
                              else ""))
            afd, select = by_variant.get("afd"), by_variant.get("select")
            ratio = (f"{_ratio(select['us_per_call'], afd['us_per_call']):.2f}x"
                     if afd and select else "-")
            out(f"| {count} | {ready} | " + " | ".join(row) + f" | {ratio} |")
        out("")
    if selectors.get("round_trip"):
        out("### Round trip: one socket becomes ready, `select()` reports it, it is read")
        out("")
        out("Microseconds per trip with N registered (the peer sends one byte, `select(1.0)` "
            "until the socket is reported, one `recv`; the socket changes every trip); median of "
            "the rounds. Each selector watches sockets of its own, so one variant's trips never "
            "touch the sockets the other watches. Others: sockets reported in the trips that "
            "were not the one just made ready (a check: 0 means no stale report).")
        out("")
        out("| N registered | AfdSelector us/trip | SelectSelector us/trip | "
            "SelectSelector / AfdSelector | others reported (Afd / Select) |")
        out("|---:|---:|---:|---:|---:|")
        for count, by_variant in selectors["round_trip"].items():
            afd, select = by_variant.get("afd"), by_variant.get("select")
            row = ["-" if not value else f"{value['us_per_trip']:,.1f}"
                   + _runs_range(value, "runs_us", 0) for value in (afd, select)]
            ratio = (f"{_ratio(select['us_per_trip'], afd['us_per_trip']):.2f}x"
                     if afd and select else "-")
            others = " / ".join("-" if not value else str(value.get("other_sockets_reported", 0))
                                for value in (afd, select))
            out(f"| {count} | " + " | ".join(row) + f" | {ratio} | {others} |")
        out("")
    loops = readiness.get("loops", {})
    if loops.get("cells") or loops.get("skipped"):
        out("### `add_reader` ping-pong: messages/s")
        out("")
        out("Socket pairs, both ends watched with `add_reader`; the callback reads the 64-byte "
            "message and writes it back, so each pair always has one message in flight. "
            "Messages (callbacks that read and answered) per second over "
            f"{loops.get('seconds', '?')} s after {loops.get('warmup', '?')} s of warm-up; "
            f"median of {loops.get('rounds', '?')} rounds, the loops in turns (the rounds' range "
            "in brackets). The ratio is to tornado's `AddThreadSelectorEventLoop` (a "
            "`select()` thread beside the stock ProactorEventLoop, which has no add_reader): "
            "the stock way a proactor-loop user gets readiness today.")
        out("")
        for name, reason in loops.get("skipped", {}).items():
            out(f"- **{READINESS_LOOPS.get(name, name)} not measured**: {reason}")
        if loops.get("skipped"):
            out("")
        out("| pairs | loop | messages/s | vs tornado's thread |")
        out("|---:|---|---:|---:|")
        for pairs, by_loop in loops.get("cells", {}).items():
            base = by_loop.get("tornado")
            for name, title in READINESS_LOOPS.items():
                cell = by_loop.get(name)
                if not cell:
                    continue
                ratio = (f"{_ratio(cell['hops_per_s'], base['hops_per_s']):.2f}x"
                         if base else "-")
                out(f"| {pairs} | {title} | {_fmt_rate(cell['hops_per_s'])}"
                    f"{_runs_range(cell, 'runs', 0)} | {ratio} |")
        out("")
    return lines


#: Win32 calls that stay in user space (bench/micro/aio_cost.py's USER_SPACE).
AIO_USER_SPACE = frozenset({"GetLastError", "WSAGetLastError", "SetLastError",
                            "RtlNtStatusToDosError", "GetOverlappedResult",
                            "WSAGetOverlappedResult"})


def _range(cell: dict[str, Any], key: str) -> str:
    values = [float(run[key]) for run in cell.get("runs", [])]
    if len(values) > 1:
        return f" ({min(values):,.0f}-{max(values):,.0f})"
    return ""


def _rate_with_range(cell: dict[str, Any]) -> str:
    rates = [float(run["messages_per_s"]) for run in cell.get("runs", [])]
    text = _fmt_rate(cell["messages_per_s"])
    if len(rates) > 1:
        text += f" ({_fmt_rate(min(rates))}-{_fmt_rate(max(rates))})"
    return text


def _wine_call_cost(results: dict[str, Any]) -> str:
    routes = results.get("drain", {}).get("routes", {})
    c = routes.get("C GQCS")
    if not c or "post_us" not in c:
        return "see section 2b"
    return (f"{c['post_us']:.1f} us per PostQueuedCompletionStatus and {c['dequeue_us']:.1f} us "
            "per GetQueuedCompletionStatus from C")


def chart(results: dict[str, Any], path: Path) -> bool:
    """A bar chart of echo messages/s per server and connection count (if matplotlib)."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        pyplot: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    cells = results.get("echo", {}).get("cells", {})
    servers = [s for s in SERVERS if s in cells]
    counts = sorted({int(c) for s in servers for c in cells[s]})
    figure, axes = pyplot.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(servers))
    for index, server in enumerate(servers):
        xs = [i + index * width for i in range(len(counts))]
        ys = [cells[server].get(str(c), {}).get("messages_per_s", 0) for c in counts]
        axes.bar(xs, ys, width, label=server)
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(counts))])
    axes.set_xticklabels([f"{c} conn" for c in counts])
    axes.set_ylabel("echo messages/s")
    axes.set_title("64-byte echo under Wine (same machine, same load generator)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return True


def write(results: dict[str, Any], directory: Path, committed: Path | None) -> str:
    """results.json, results.md (+ chart.png) in ``directory``; the markdown also to
    ``committed``. Returns the markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    png = directory / "chart.png"
    if chart(results, png):
        results["chart"] = str(png.relative_to(directory.parent.parent))
    (directory / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (directory / "results.md").write_text(text)
    if committed is not None:
        committed.write_text(text)
    return text


if __name__ == "__main__":
    # Re-render from a results.json (targets and findings recomputed), e.g. after improving
    # the report: python3 bench/report.py [results.json] [--write]
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench import run as _run

    arguments = [a for a in sys.argv[1:] if a != "--write"]
    source = Path(arguments[0] if arguments else root / "bench" / "results" / "results.json")
    data = json.loads(source.read_text())
    data["targets"] = evaluate(data)
    data["findings"] = _run.findings(data)
    if "--write" in sys.argv:
        write(data, root / "bench" / "results", root / "bench" / "RESULTS.md")
    print(markdown(data))
