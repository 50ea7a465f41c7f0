"""Helpers for the server tests: in-process servers, stdlib clients, and the CLI's output.

The servers run in the test process (``ServerUnderTest``); their peers are stdlib sockets and
``http.client`` in threads of the same process, on 127.0.0.1 only. Every wait is bounded: a
lost byte or a connection that never closes fails a test instead of hanging it.

The part that reads and parses ``python -m winiocp serve``'s output (``LineReader``,
``LISTENING``, ``parse_summary``) and the HTTP response parser are stdlib-only, so the
host-side test (native Linux Python, where winiocp cannot be imported) shares them; winiocp is
imported only on Windows.
"""

from __future__ import annotations

import http.client
import io
import queue
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from types import TracebackType
from typing import IO, TypeVar

if sys.platform == "win32":
    from winiocp.connections import CloseReason, Handler
    from winiocp.servers import Server, ServerSummary

LOOPBACK = "127.0.0.1"
#: Upper bound of any wait for something that must happen (a byte, an EOF, a close).
WAIT_S = 10.0
#: Upper bound of a whole batch of concurrent clients.
BATCH_S = 60.0
#: What the HTTP handler serves by default.
HTTP_BODY = b"Hello from winiocp\n"
#: ``python -m winiocp serve``'s first line.
LISTENING = re.compile(r"^listening on (?P<host>[0-9.]+):(?P<port>[0-9]+)$")
#: ``python -m winiocp serve``'s last line (``ServerSummary.line()``).
SUMMARY = re.compile(r"^connections=(?P<connections>\d+) bytes_in=(?P<bytes_in>\d+) "
                     r"bytes_out=(?P<bytes_out>\d+) forced_closes=(?P<forced_closes>\d+) "
                     r"accept_failures=(?P<accept_failures>\d+)$")

Address = tuple[str, int]
T = TypeVar("T")


# -- waiting -------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S,
               interval: float = 0.02) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(interval)
    return True


def run_concurrently(work: Callable[[T], object], items: Sequence[T],
                     timeout: float = BATCH_S) -> None:
    """Run ``work(item)`` for every item, each in its own thread, all at once; re-raise the
    first failure. Fails if the batch is not done within ``timeout`` (without waiting for the
    stragglers: the threads are daemons, and every client socket has a time-out)."""
    deadline = time.monotonic() + timeout
    pool = ThreadPoolExecutor(max_workers=max(1, len(items)))
    try:
        futures = [pool.submit(work, item) for item in items]
        for future in futures:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                raise AssertionError(f"clients still running after {timeout} s") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def call_bounded(function: Callable[[], T], timeout: float) -> T:
    """``function()`` in a daemon thread; fails if it has not returned within ``timeout``."""
    results: list[T] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(function())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    if errors:
        raise errors[0]
    if not results:
        raise AssertionError(f"{function!r} did not return within {timeout} s")
    return results[0]


# -- stdlib clients ------------------------------------------------------------------------------


def connect(address: Address, timeout: float = WAIT_S) -> socket.socket:
    return socket.create_connection(address, timeout=timeout)


def reset(sock: socket.socket) -> None:
    """Close ``sock`` abortively: SO_LINGER {1, 0} makes the close send RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("hh", 1, 0))
    sock.close()


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes (each recv bounded by the socket's time-out)."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError(f"EOF with {remaining} of {size} bytes missing")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_to_eof(sock: socket.socket, timeout: float = WAIT_S) -> bytes:
    """Everything until the peer's FIN. A reset raises; so does missing the deadline."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no EOF within {timeout} s ({sum(map(len, chunks))} bytes read)")
        sock.settimeout(remaining)
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def exchange(address: Address, request: bytes, timeout: float = WAIT_S) -> bytes:
    """Send ``request`` on a new connection and return all the server sends until it closes."""
    with connect(address, timeout) as sock:
        sock.sendall(request)
        return read_to_eof(sock, timeout)


def random_payloads(rng: random.Random, count: int,
                    sizes: Sequence[int] = (1, 7, 200, 1400, 4096, 16384, 65536, 200_000)
                    ) -> list[bytes]:
    """``count`` random payloads, their sizes drawn from ``sizes`` (small to several buffers)."""
    return [rng.randbytes(rng.choice(sizes)) for _ in range(count)]


def echo_round_trips(address: Address, payloads: Iterable[bytes]) -> int:
    """One connection: send each payload, check its echo byte for byte; close first.
    Return the number of bytes verified."""
    verified = 0
    with connect(address) as sock:
        for payload in payloads:
            sock.sendall(payload)
            echoed = receive_exactly(sock, len(payload))
            assert echoed == payload, f"wrong echo of a {len(payload)}-byte payload"
            verified += len(payload)
    return verified


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def parse_responses(data: bytes, methods: Sequence[str]) -> list[HttpReply]:
    """Split ``data`` into one response per request method (HEAD responses have no body);
    fails unless it holds exactly those responses, nothing more."""
    replies: list[HttpReply] = []
    offset = 0
    for method in methods:
        end = data.find(b"\r\n\r\n", offset)
        assert end >= 0, f"response {len(replies) + 1} is incomplete: {data[offset:][:200]!r}"
        status_line, _, header_block = data[offset:end + 4].partition(b"\r\n")
        version, status, _reason = status_line.decode("ascii").split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = http.client.parse_headers(io.BytesIO(header_block))
        length = 0 if method == "HEAD" else int(headers["Content-Length"])
        body = data[end + 4:end + 4 + length]
        assert len(body) == length, f"response {len(replies) + 1}: body cut short"
        replies.append(HttpReply(int(status), headers, body))
        offset = end + 4 + length
    assert offset == len(data), f"unexpected bytes after the responses: {data[offset:][:200]!r}"
    return replies


def http_get(address: Address, path: str = "/", timeout: float = WAIT_S) -> tuple[int, bytes]:
    """One GET with http.client on a connection of its own."""
    connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def assert_http_served(address: Address, body: bytes = HTTP_BODY) -> None:
    """A well-behaved client still gets its answer."""
    assert http_get(address) == (200, body)


# -- a server in this process --------------------------------------------------------------------


class ServerUnderTest:
    """A started ``Server``; stopped (once) by ``stop()`` or on leaving the ``with`` block.

    With ``workers=0`` no worker thread is started: the server accepts, and the test drives
    the port itself (``manager.run_once``), so it decides when each completion is handled.
    """

    def __init__(self, factory: Callable[[], Handler], *, workers: int = 2,
                 close_timeout: float = 5.0, idle_timeout: float | None = None,
                 zero_byte_reads: bool = False) -> None:
        self.server = Server(factory, LOOPBACK, 0, workers=max(1, workers),
                             close_timeout=close_timeout, idle_timeout=idle_timeout,
                             zero_byte_reads=zero_byte_reads)
        self.address: Address = (str(self.server.address[0]), int(self.server.address[1]))
        self.summary: ServerSummary | None = None
        if workers:
            self.server.start()
        else:
            self.server.manager.listen(self.server.listener, factory)

    @property
    def port_number(self) -> int:
        return self.address[1]

    def live(self) -> int:
        return len(self.server.manager.live)

    def closed(self, reason: CloseReason) -> int:
        return self.server.manager.stats.closed_by_reason[reason]

    def wait_idle(self, timeout: float = WAIT_S) -> None:
        """Wait until every connection the server accepted has finished closing."""
        assert wait_until(lambda: self.live() == 0, timeout), \
            f"{self.live()} connections still open after {timeout} s"

    def stop(self, timeout: float = WAIT_S) -> ServerSummary:
        """Stop (bounded) and check what must hold after any stop: no handler failed, no
        operation is left pending on the port."""
        if self.summary is None:
            self.summary = call_bounded(self.server.stop, timeout)
        manager = self.server.manager
        assert manager.stats.handler_errors == 0, manager.stats
        assert manager.port.pending_count == 0, manager.port.pending_operations()
        assert not manager.live, manager.live
        return self.summary

    def __enter__(self) -> ServerUnderTest:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.summary is None:
            if exc is None:
                self.stop()
            else:  # the test failed already: just release the server, bounded
                threading.Thread(target=self.server.stop, daemon=True).start()


# -- a process's output --------------------------------------------------------------------------


class LineReader:
    """Reads a pipe's lines in a thread, so that waiting for the next one can be bounded
    (Windows pipes cannot be polled with select)."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        #: What ended the reading, if not EOF (e.g. an OSError of the pipe).
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._lines.put(line.rstrip("\r\n"))
        except BaseException as exc:  # kept for the failure's message; the reader sees EOF
            self.error = exc
        finally:
            self._lines.put(None)

    def next_line(self, timeout: float = WAIT_S) -> str | None:
        """The next line; None at EOF. Fails if none comes within ``timeout``."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s; so far: {self.seen}") from None
        if line is not None:
            self.seen.append(line)
        else:
            self._lines.put(None)  # stay at EOF
        return line

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Skip lines until one matches ``pattern``; fails at EOF or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"EOF before a line matching {pattern.pattern!r}: {self.seen}")
            match = pattern.match(line)
            if match:
                return match

    def rest(self, timeout: float = WAIT_S) -> list[str]:
        """Every remaining line up to EOF."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while (line := self.next_line(max(0.0, deadline - time.monotonic()))) is not None:
            lines.append(line)
        return lines


def listening_address(line: str | None) -> Address:
    assert line is not None, "the server printed nothing"
    match = LISTENING.match(line)
    assert match, f"not a `listening on` line: {line!r}"
    port = int(match["port"])
    assert 0 < port < 65536, line
    return match["host"], port


def parse_summary(line: str) -> dict[str, int]:
    match = SUMMARY.match(line)
    assert match, f"not a summary line: {line!r}"
    return {name: int(value) for name, value in match.groupdict().items()}


def finish(process: subprocess.Popen[str], timeout: float) -> int:
    """Wait (bounded) for ``process`` to exit; kill it if it does not."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(WAIT_S)
        raise AssertionError(f"{process.args!r} did not exit within {timeout} s") from None
