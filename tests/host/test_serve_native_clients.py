"""``python -m winiocp serve http`` inside Windows CPython, driven by native Linux clients.

Under Wine the server's sockets are real Linux loopback sockets, so the host's own clients
reach it: Python's http.client and urllib, curl, and ApacheBench when they are installed (the
parts whose tool is missing are skipped; the test installs nothing). On Windows the same test
runs the server natively.

One server process serves the whole module (it runs for ``DURATION_S`` seconds); the last
test waits for it to exit and checks its summary. The helpers that read and parse the
server's output are shared with the Windows-side tests (``tests/windows/helpers_servers.py``
is stdlib-only outside Windows).
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "windows"))

from helpers_servers import (  # noqa: E402 - found through the path above
    HTTP_BODY,
    LISTENING,
    WAIT_S,
    Address,
    LineReader,
    finish,
    parse_summary,
)

DURATION_S = 8.0
#: Wine's start-up (a cold prefix can take tens of seconds), then Python's and winiocp's.
STARTUP_S = 120.0
#: After the duration: stopping (the close deadline is 5 s), the summary, Wine's exit.
EXIT_S = DURATION_S + 60.0
#: A bound for each native client run.
CLIENT_S = 30.0
AB_REQUESTS = 500
AB_CONCURRENCY = 8


@dataclass
class Served:
    """The server process of this module, and how many connections the tests opened."""

    address: Address
    process: subprocess.Popen[str]
    output: LineReader
    connections: int = 0

    def url(self, path: str = "/") -> str:
        return f"http://{self.address[0]}:{self.address[1]}{path}"


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """The server, listening."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "winenv.py"), "run", "--", "python", "-m",
         "winiocp", "serve", "http", "--port", "0", "--duration", str(DURATION_S)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    assert process.stdout is not None
    try:
        output = LineReader(process.stdout)
        # winenv's own log lines (stderr, merged here) may come first.
        match = output.wait_for(LISTENING, STARTUP_S)
        yield Served((match["host"], int(match["port"])), process, output)
    finally:
        try:
            if process.poll() is None:
                finish(process, EXIT_S)
        finally:
            process.stdout.close()


def run_client(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=CLIENT_S)


def test_http_client_keep_alive(served: Served) -> None:
    client = http.client.HTTPConnection(*served.address, timeout=WAIT_S)
    served.connections += 1
    try:
        for method in ("GET", "HEAD", "GET", "POST", "GET"):
            client.request(method, "/", body=b"payload" if method == "POST" else None)
            response = client.getresponse()
            assert response.status == 200
            assert response.read() == (b"" if method == "HEAD" else HTTP_BODY)
            assert response.headers["Connection"] == "keep-alive"
    finally:
        client.close()


def test_urllib(served: Served) -> None:
    for path in ("/", "/index.html", "/a/b?c=d"):
        served.connections += 1
        with urllib.request.urlopen(served.url(path), timeout=WAIT_S) as response:
            assert response.status == 200
            assert response.read() == HTTP_BODY


def test_curl(served: Served) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    options = ["--silent", "--show-error", "--max-time", str(WAIT_S)]
    # Three URLs: one connection, reused.
    served.connections += 1
    result = run_client(curl, *options, "--write-out", "[%{http_code}]\n", *[served.url()] * 3)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (HTTP_BODY.decode() + "[200]\n") * 3
    served.connections += 1
    head = run_client(curl, *options, "--head", served.url())
    assert head.returncode == 0, head.stderr
    assert head.stdout.startswith("HTTP/1.1 200 OK"), head.stdout
    assert f"Content-Length: {len(HTTP_BODY)}" in head.stdout


def test_apache_bench(served: Served) -> None:
    ab = shutil.which("ab")
    if ab is None:
        pytest.skip("ApacheBench (ab, from apache2-utils) is not installed")
    served.connections += AB_CONCURRENCY
    result = run_client(ab, "-n", str(AB_REQUESTS), "-c", str(AB_CONCURRENCY), "-k",
                        "-s", str(int(WAIT_S)), served.url())
    assert result.returncode == 0, result.stdout + result.stderr
    for row, value in (("Complete requests", AB_REQUESTS), ("Failed requests", 0),
                       ("Keep-Alive requests", AB_REQUESTS)):
        assert re.search(rf"^{row}:\s+{value}$", result.stdout, re.M), result.stdout


def test_summary_after_the_duration(served: Served) -> None:
    """Last: the server exits 0 after its duration and counts every connection above."""
    assert finish(served.process, EXIT_S) == 0, served.output.seen
    lines = [line for line in served.output.rest() if not line.startswith("[winenv]")]
    assert len(lines) == 1, served.output.seen
    summary = parse_summary(lines[0])
    assert summary["connections"] >= served.connections
    assert summary["forced_closes"] == 0
    assert summary["accept_failures"] == 0
