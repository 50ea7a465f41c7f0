"""Host checks of the aio benchmark's new parts: ``loadgen bulk`` against the real bulk sinks
(bench/servers/aio_bulk.py runs on any asyncio loop, so on the host's too), the fake kernel of
bench/micro/aio_cost.py (the ping-pong it models), and the report's issue-10 rows.

Why on the host: these are the parts whose mistakes would not crash a benchmark run but make
its numbers wrong (a bulk count never checked, a peer that answers before the loop waits, a
target that reads the wrong key)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.micro.aio_cost import (  # noqa: E402
    MESSAGE,
    PAYLOAD,
    STATUS_CANCELLED,
    Kernel,
    Packet,
    Receive,
)
from bench.servers.aio_bulk import BufferedSink, Sink  # noqa: E402


# -- loadgen bulk -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build bench/loadgen.c")
    binary = tmp_path_factory.mktemp("loadgen") / "loadgen"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(ROOT / "bench" / "loadgen.c")],
                   check=True)
    return binary


class LyingSink(Sink):
    """Acknowledges one byte fewer than it received."""

    def eof_received(self) -> bool:
        self.received -= 1
        return super().eof_received()


@pytest.fixture()
def sinks() -> Iterator[dict[str, int]]:
    """Each sink on a port of its own, served by an asyncio loop in a thread."""
    loop = asyncio.new_event_loop()
    ports: dict[str, int] = {}

    async def start() -> list[asyncio.Server]:
        servers = []
        for name, factory in (("plain", Sink), ("buffered", BufferedSink),
                              ("lying", LyingSink)):
            server = await loop.create_server(factory, "127.0.0.1", 0)
            ports[name] = server.sockets[0].getsockname()[1]
            servers.append(server)
        return servers

    servers = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield ports
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        for server in servers:
            server.close()
        loop.close()


def run_bulk(loadgen: Path, port: int, size: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(loadgen), "bulk", "127.0.0.1", str(port), str(size)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("sink", ["plain", "buffered"])
def test_bulk_counts_every_byte(loadgen: Path, sinks: dict[str, int], sink: str) -> None:
    import json

    size = 8 * 2**20 + 123  # not a multiple of the 256 KiB writes
    result = run_bulk(loadgen, sinks[sink], size)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout)
    assert (line["bytes"], line["acked"], line["errors"]) == (size, size, 0)
    assert line["mb_per_s"] > 0


def test_bulk_fails_on_a_short_count(loadgen: Path, sinks: dict[str, int]) -> None:
    import json

    result = run_bulk(loadgen, sinks["lying"], 2**20)
    assert result.returncode == 3
    line = json.loads(result.stdout)
    assert (line["acked"], line["errors"]) == (2**20 - 1, 1)


# -- the fake kernel ----------------------------------------------------------------------------

class FakeReceive(Receive):
    def __init__(self) -> None:
        self.data = b""
        self.status: int | None = None

    def fill(self, data: bytes) -> int:
        self.data = data
        return len(data)

    def finish(self, transferred: int, status: int) -> Packet:
        self.status = status
        return Packet(0, self, id(self), transferred, status)


def kernel_with_one_peer() -> tuple[Kernel, list[int]]:
    kernel = Kernel()
    kernel.association[5] = (1, 77)  # socket 5 on port 1, key 77
    kernel.peers.add(5)
    stops: list[int] = []
    kernel.start_round(2, lambda: stops.append(kernel.done))
    return kernel, stops


def test_the_peer_answers_only_when_the_loop_waits() -> None:
    kernel, _ = kernel_with_one_peer()
    receive = FakeReceive()
    assert kernel.receive(5, receive) is None  # nothing has arrived: pending
    assert kernel.take(1, 16, 0) == []  # a poll does not let the peer in
    packets = kernel.take(1, 16, 1000)  # a wait does
    assert [(p.key, p.overlapped, p.transferred, p.status) for p in packets] == [
        (77, receive, MESSAGE, 0)]
    assert receive.data == PAYLOAD


def test_a_message_that_arrives_before_the_receive_completes_it_inline() -> None:
    kernel, _ = kernel_with_one_peer()
    assert kernel.take(1, 16, 1000) == []  # arrives with no receive posted
    assert kernel.receive(5, FakeReceive()) == MESSAGE


def test_the_next_message_follows_the_whole_echo_and_the_round_ends() -> None:
    kernel, stops = kernel_with_one_peer()
    kernel.receive(5, FakeReceive())
    kernel.take(1, 16, 1000)
    kernel.send(5, PAYLOAD[:10])  # a partial echo: no next message yet
    kernel.receive(5, FakeReceive())
    assert kernel.take(1, 16, 1000) == [] and kernel.done == 0
    kernel.send(5, PAYLOAD[10:])
    assert kernel.done == 1 and len(kernel.take(1, 16, 1000)) == 1
    kernel.send(5, PAYLOAD)
    assert stops == [2] and kernel.due == []  # the round's last echo stops the loop


def test_a_cancelled_receive_completes_with_a_packet() -> None:
    kernel, _ = kernel_with_one_peer()
    receive = FakeReceive()
    kernel.receive(5, receive)
    assert not kernel.cancel(5, FakeReceive())  # another operation: not found
    assert kernel.cancel(5, receive)
    assert [p.status for p in kernel.take(1, 16, 0)] == [STATUS_CANCELLED]
    assert not kernel.cancel(5, None)  # nothing pending any more


# -- the report -----------------------------------------------------------------------------------

def aio_results() -> dict[str, Any]:
    def cost(python: float, calls: float) -> dict[str, Any]:
        return {"python_us": python, "python_best_us": python, "stub_us": 1.0,
                "system_calls_per_message": calls, "skip_on_success": False,
                "calls_per_message": {"WSARecv": 1.0, "GetLastError": 2.0}}

    return {"aio": {
        "bulk": {"bytes": 2**20, "cells": {
            "protocol": {loop: {"mb_per_s": rate, "server_cpu_ms_per_mb": 1.0,
                                "wineserver_cpu_ms_per_mb": 1.0, "runs": []}
                         for loop, rate in (("winiocp", 300.0), ("stock", 200.0),
                                            ("winloop", 400.0))}}},
        "cost": {"cells": {"winiocp": {"1": cost(9.0, 3.0)}, "stock": {"1": cost(20.0, 6.0)}}},
    }}


def test_issue_10_targets_for_bulk_and_the_stubbed_run() -> None:
    targets = {t["target"]: t for t in report.evaluate(aio_results())}
    bulk = [t for name, t in targets.items() if name.startswith("aio bulk")]
    assert [(t["met"], t["value"]) for t in bulk] == [
        (True, "300 vs 200 MB/s (1.50x)"), (False, "300 vs 400 MB/s (0.75x)")]
    stubbed = [t for name, t in targets.items() if name.startswith("aio stubbed")]
    assert [(t["met"], t["value"]) for t in stubbed] == [
        (True, "9.0 vs 20.0 us (0.45x)"), (True, "3.00 vs 6.00")]


def test_the_markdown_has_the_new_tables() -> None:
    text = report.markdown(aio_results())
    assert "| Protocol | 300 MB/s; 1.0 + 1.0 ms/MB | 200 MB/s" in text
    assert "| 1 | 9.0 (9.0) | 1.0 | 3.00 | 20.0 (20.0) | 1.0 | 6.00 | 0.45x |" in text
    assert "| *GetLastError* | 2.00 | 2.00 |" in text
