"""The readiness libraries, unchanged, on winiocp's loops: psycopg 3 (async) against a real
PostgreSQL, pyzmq's asyncio sockets (REQ/REP, PUB/SUB) and tornado (its HTTP server, its
client and a raw keep-alive client), each as users run them.

These libraries need ``add_reader``/``add_writer``, which the stock ``ProactorEventLoop``
lacks, and each decides what to do about it by one check, ``isinstance(loop,
asyncio.ProactorEventLoop)``, not by whether the loop's ``add_reader`` works:

* psycopg 3.3 refuses such a loop in ``AsyncConnection.connect`` (an ``InterfaceError``), our
  ``EventLoop`` too; on ``winiocp.aio.SelectorEventLoop`` it works.
* tornado 6.5 (``BaseAsyncIOLoop.initialize``) wraps such a loop in
  ``AddThreadSelectorEventLoop``: a second thread, "Tornado selector", runs ``select()``
  and hands the events over; pyzmq 27 (``zmq.asyncio._get_selector_windows``) does the same
  through tornado, with a ``RuntimeWarning`` (and, without tornado, raises). On our
  ``EventLoop`` both start that thread too; on ``SelectorEventLoop`` neither does.

The tests named ``..._past_its_isinstance_check`` show that the check alone is the cause:
with ``asyncio.ProactorEventLoop`` made another class for the test, each library runs the
same scenario on our ``EventLoop``, its sockets watched by ``EventLoop.add_reader`` and
``add_writer``, with no thread.

Each test checks the data exactly, which threads the library started (the threads alive
during the scenario that were not before, less the loop's default executor's workers), and
that nothing reached the loop's exception handler, a logger (WARNING and above),
``sys.unraisablehook`` or the warnings machinery beyond the warning the library is expected
to give.

The psycopg tests need a server: ``tools/winenv.py test`` starts one on loopback
(``tools/pgserver.py``) and passes its connection string in ``WINIOCP_TEST_POSTGRES``;
without it they skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import random
import sys
import threading
import warnings
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web
import zmq
import zmq.asyncio

import winiocp.aio

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
#: The bound on each scenario (seconds): far above what it takes, so only a hang reaches it.
WAIT = 60.0
MiB = 1 << 20
#: The loops: the stock proactor loop, ours, and our selector loop.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stock": asyncio.ProactorEventLoop,
    "winiocp": winiocp.aio.new_event_loop,
    "winiocp-selector": winiocp.aio.new_selector_event_loop,
}
#: The thread tornado's ``AddThreadSelectorEventLoop`` runs ``select()`` in.
SELECTOR_THREAD = "Tornado selector"
#: What pyzmq warns when it starts that thread.
PYZMQ_WARNING = ("RuntimeWarning: Proactor event loop does not implement add_reader family of "
                 "methods required for zmq. Registering an additional selector thread")
POSTGRES = os.environ.get("WINIOCP_TEST_POSTGRES", "")
needs_postgres = pytest.mark.skipif(
    not POSTGRES, reason="no PostgreSQL server: WINIOCP_TEST_POSTGRES is unset (tools/winenv.py "
    "test starts one; by hand: python3 tools/pgserver.py python3 tools/winenv.py run -- ...)")
REFUSAL = "Psycopg cannot use the 'ProactorEventLoop' to run in async mode"


def is_proactor(name: str) -> bool:
    return name != "winiocp-selector"


class NotTheProactorLoop:
    """What ``asyncio.ProactorEventLoop`` is while ``past_the_proactor_check`` is in force."""


@pytest.fixture
def past_the_proactor_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step past the libraries' one check, ``isinstance(loop, asyncio.ProactorEventLoop)``,
    by making that name another class for the test (the loops are made by our factories,
    which do not look it up): what each library does with our ``EventLoop`` when it goes by
    the loop's working ``add_reader`` instead. Not something users should do; it shows what
    the check alone costs."""
    monkeypatch.setattr(asyncio, "ProactorEventLoop", NotTheProactorLoop)


@dataclass
class Outcome:
    """What a scenario left besides its result: the threads it started (by name), the
    warnings it gave, and what went wrong outside its own checks."""

    threads: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loop_errors: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)
    unraisable: list[str] = field(default_factory=list)
    left_tasks: list[str] = field(default_factory=list)

    def assert_clean(self, expected_warnings: list[str] | None = None) -> None:
        assert self.loop_errors == []
        assert self.records == []
        assert self.unraisable == []
        assert self.left_tasks == []
        expected = expected_warnings or []
        assert len(self.warnings) == len(expected), self.warnings
        for warning, prefix in zip(self.warnings, expected):
            assert warning.startswith(prefix)


class Recording(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


def threads_started(before: set[threading.Thread]) -> list[str]:
    """The names of the threads alive now that were not in ``before``, less the default
    executor's workers (``asyncio_N``: name resolution, psycopg's ``getaddrinfo``)."""
    return sorted(thread.name for thread in threading.enumerate()
                  if thread not in before and not thread.name.startswith("asyncio_"))


@contextlib.contextmanager
def watching(outcome: Outcome) -> Iterator[None]:
    handler = Recording(outcome.records)
    root = logging.getLogger()
    root.addHandler(handler)
    hook = sys.unraisablehook

    def unraisable(info: sys.UnraisableHookArgs) -> None:
        outcome.unraisable.append(f"{info.exc_type.__name__}: {info.exc_value} "
                                  f"in {info.object!r}")

    sys.unraisablehook = unraisable
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
            gc.collect()
        outcome.warnings.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        sys.unraisablehook = hook
        root.removeHandler(handler)


def run(name: str, main: Callable[[Outcome], Coroutine[Any, Any, T]]) -> tuple[T, Outcome]:
    """Run ``main(outcome)`` on a new loop of kind ``name`` as ``asyncio.run`` would (the
    loop is the current one, its async generators and default executor are shut down before
    it closes), bounded by ``WAIT``; ``main`` records in ``outcome.threads`` the threads
    started while it ran (``threads_started``)."""
    outcome = Outcome()
    with watching(outcome):
        loop = LOOPS[name]()
        loop.set_exception_handler(
            lambda _, context: outcome.loop_errors.append(str(context.get("message"))))
        asyncio.set_event_loop(loop)
        try:
            result = loop.run_until_complete(asyncio.wait_for(main(outcome), WAIT))
            left = [task for task in asyncio.all_tasks(loop) if not task.done()]
            outcome.left_tasks.extend(repr(task) for task in left)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.wait(left))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    return result, outcome


def pattern(size: int, seed: int) -> bytes:
    """``size`` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- psycopg 3 -------------------------------------------------------------------------------

#: Rows of the COPY: (n, a text of n's own).
COPY_ROWS = 20_000
NOTIFICATIONS = 50
CONCURRENT = 5


def copy_text(number: int) -> str:
    return f"row {number} " + "abcdefghij"[number % 10] * (number % 37)


async def psycopg_scenario(outcome: Outcome) -> dict[str, object]:
    """Connect, create a table, many queries, executemany, COPY in and out, a large result,
    LISTEN/NOTIFY between two connections, a few connections at once."""
    before = set(threading.enumerate())
    table = f"winiocp_{os.getpid()}_{random.randrange(1 << 30)}"
    seen: dict[str, object] = {}
    async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as conn:
        await conn.execute(f"CREATE TABLE {table} (n integer PRIMARY KEY, t text NOT NULL)")
        try:
            async with conn.cursor() as cursor:
                doubled = []
                for number in range(300):
                    await cursor.execute("SELECT %s::integer * 2", (number,))
                    row = await cursor.fetchone()
                    assert row is not None
                    doubled.append(row[0])
                seen["queries"] = doubled == [2 * number for number in range(300)]

                await cursor.executemany(f"INSERT INTO {table} VALUES (%s, %s)",
                                         [(number, copy_text(number)) for number in range(500)])
                async with cursor.copy(f"COPY {table} (n, t) FROM STDIN") as copy:
                    for number in range(500, COPY_ROWS):
                        await copy.write_row((number, copy_text(number)))
                out = bytearray()
                async with cursor.copy(f"COPY (SELECT n, t FROM {table} ORDER BY n) "
                                       "TO STDOUT") as copy:
                    async for data in copy:
                        out += data
                expected = "".join(f"{number}\t{copy_text(number)}\n"
                                   for number in range(COPY_ROWS)).encode()
                seen["copy"] = sha(bytes(out)) == sha(expected) and len(out) == len(expected)

                await cursor.execute("SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
                rows = await cursor.fetchall()
                seen["large result"] = (len(rows) == 100_000 and rows[0][0] == 1
                                        and rows[-1] == (100_000, hashlib.md5(b"100000")
                                                         .hexdigest()))

            async with await psycopg.AsyncConnection.connect(POSTGRES,
                                                             autocommit=True) as other:
                await conn.execute("LISTEN winiocp_channel")
                payloads = [f"message {index} " + "x" * index for index in range(NOTIFICATIONS)]
                for payload in payloads:
                    await other.execute("SELECT pg_notify('winiocp_channel', %s)", (payload,))
                received = [notify.payload async for notify in
                            conn.notifies(timeout=WAIT, stop_after=NOTIFICATIONS)]
                seen["notify"] = received == payloads

            async def worker(index: int) -> list[int]:
                async with await psycopg.AsyncConnection.connect(POSTGRES) as own:
                    # Each waits a little inside the server, so the connections overlap.
                    await own.execute("SELECT pg_sleep(0.05)")
                    totals = []
                    for step in range(20):
                        cursor = await own.execute(
                            f"SELECT sum(n) FROM {table} WHERE n %% %s = %s",
                            (CONCURRENT, (index + step) % CONCURRENT))
                        row = await cursor.fetchone()
                        assert row is not None
                        totals.append(int(row[0]))
                    return totals

            results = await asyncio.gather(*(worker(index) for index in range(CONCURRENT)))
            sums = [sum(number for number in range(COPY_ROWS) if number % CONCURRENT == rest)
                    for rest in range(CONCURRENT)]
            seen["concurrent"] = results == [[sums[(index + step) % CONCURRENT]
                                              for step in range(20)]
                                             for index in range(CONCURRENT)]
        finally:
            await conn.execute(f"DROP TABLE {table}")
    outcome.threads = threads_started(before)
    return seen


ALL_CHECKS = {"queries": True, "copy": True, "large result": True, "notify": True,
              "concurrent": True}


@needs_postgres
def test_psycopg_async_on_the_selector_loop() -> None:
    seen, outcome = run("winiocp-selector", psycopg_scenario)
    assert seen == ALL_CHECKS
    assert outcome.threads == []
    outcome.assert_clean()


@pytest.mark.parametrize("name", ["stock", "winiocp"])
def test_psycopg_refuses_proactor_loops(name: str) -> None:
    """psycopg refuses any ``asyncio.ProactorEventLoop`` (``isinstance``), ours included,
    before it connects (so no server is needed to show it)."""

    async def main(outcome: Outcome) -> str:
        with pytest.raises(psycopg.InterfaceError) as raised:
            await psycopg.AsyncConnection.connect("host=127.0.0.1 port=1 connect_timeout=1")
        return str(raised.value)

    message, outcome = run(name, main)
    assert message.startswith(REFUSAL)
    outcome.assert_clean()


@needs_postgres
@pytest.mark.usefixtures("past_the_proactor_check")
def test_psycopg_works_on_our_proactor_loop_past_its_isinstance_check() -> None:
    """Only psycopg's check refuses our ``EventLoop``: past it, the same scenario runs, libpq's
    socket served by ``EventLoop.add_reader``/``add_writer``, with no thread."""
    seen, outcome = run("winiocp", psycopg_scenario)
    assert seen == ALL_CHECKS
    assert outcome.threads == []
    outcome.assert_clean()


# --- pyzmq -----------------------------------------------------------------------------------

ROUND_TRIPS = 200
PUBLISHED = 500


async def pyzmq_scenario(outcome: Outcome) -> dict[str, bool]:
    """REQ/REP round trips (a few of 1 MiB), then PUB/SUB with a topic filter."""
    before = set(threading.enumerate())
    context = zmq.asyncio.Context()
    seen: dict[str, bool] = {}
    try:
        reply = context.socket(zmq.REP)
        request = context.socket(zmq.REQ)
        port = reply.bind_to_random_port(f"tcp://{LOOPBACK}")
        request.connect(f"tcp://{LOOPBACK}:{port}")
        messages = [pattern(MiB if index % 50 == 7 else index * 13, index)
                    for index in range(ROUND_TRIPS)]

        async def serve() -> None:
            for _ in range(ROUND_TRIPS):
                frames = await reply.recv_multipart()
                await reply.send_multipart([frames[0], sha(frames[0]).encode()])

        server = asyncio.ensure_future(serve())
        answers = []
        for message in messages:
            await request.send(message)
            answers.append(await request.recv_multipart())
        await server
        seen["req/rep"] = answers == [[message, sha(message).encode()] for message in messages]

        publisher = context.socket(zmq.PUB)
        subscriber = context.socket(zmq.SUB)
        port = publisher.bind_to_random_port(f"tcp://{LOOPBACK}")
        subscriber.subscribe(b"wanted")
        subscriber.connect(f"tcp://{LOOPBACK}:{port}")
        # A subscription reaches the publisher some time after connect: publish a probe until
        # one arrives (what is published before then is dropped, by design; probes still on
        # their way are skipped below).
        while not await subscriber.poll(timeout=50):
            await publisher.send_multipart([b"wanted", b"probe"])
        for index in range(PUBLISHED):
            topic = b"wanted" if index % 2 == 0 else b"other"
            await publisher.send_multipart([topic, index.to_bytes(4, "little") * 64])
        await publisher.send_multipart([b"wanted", b"end"])
        received = []
        while (frames := await subscriber.recv_multipart())[1] != b"end":
            if frames[1] != b"probe":
                received.append(frames)
        seen["pub/sub"] = received == [[b"wanted", index.to_bytes(4, "little") * 64]
                                       for index in range(0, PUBLISHED, 2)]
        outcome.threads = threads_started(before)
        for socket in (reply, request, publisher, subscriber):
            socket.close(linger=0)
    finally:
        context.term()
    return seen


@pytest.mark.parametrize("name", LOOPS)
def test_pyzmq_req_rep_and_pub_sub(name: str) -> None:
    """On a ``ProactorEventLoop`` (stock, or ours: the same ``isinstance`` check) pyzmq runs
    tornado's selector thread and warns; on our selector loop it uses the loop itself."""
    seen, outcome = run(name, pyzmq_scenario)
    assert seen == {"req/rep": True, "pub/sub": True}
    if is_proactor(name):
        assert outcome.threads == [SELECTOR_THREAD]
        outcome.assert_clean([PYZMQ_WARNING])
    else:
        assert outcome.threads == []
        outcome.assert_clean()


@pytest.mark.usefixtures("past_the_proactor_check")
def test_pyzmq_on_our_proactor_loop_past_its_isinstance_check() -> None:
    """Past its check, pyzmq watches its sockets with ``EventLoop.add_reader``: no thread, no
    warning."""
    seen, outcome = run("winiocp", pyzmq_scenario)
    assert seen == {"req/rep": True, "pub/sub": True}
    assert outcome.threads == []
    outcome.assert_clean()


# --- tornado ---------------------------------------------------------------------------------

BIG = pattern(4 * MiB, 3)


class Small(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(b"hello from tornado")


class Echo(tornado.web.RequestHandler):
    def post(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        self.write(self.request.body)


class Big(tornado.web.RequestHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        for start in range(0, len(BIG), 256 * 1024):
            self.write(BIG[start:start + 256 * 1024])
            await self.flush()


async def tornado_scenario(outcome: Outcome) -> dict[str, bool]:
    """tornado's HTTPServer: its AsyncHTTPClient (GET, a 4 MiB POST echo, a 4 MiB response
    written in flushed pieces, 30 requests), and 50 requests on one keep-alive connection
    from a raw asyncio streams client."""
    before = set(threading.enumerate())
    app = tornado.web.Application([("/", Small), ("/echo", Echo), ("/big", Big)])
    sockets = tornado.netutil.bind_sockets(0, LOOPBACK)
    port = sockets[0].getsockname()[1]
    server = tornado.httpserver.HTTPServer(app, max_body_size=64 * MiB)
    server.add_sockets(sockets)
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    base = f"http://{LOOPBACK}:{port}"
    seen: dict[str, bool] = {}
    try:
        response = await client.fetch(f"{base}/")
        seen["get"] = response.body == b"hello from tornado"
        body = pattern(4 * MiB, 4)
        response = await client.fetch(f"{base}/echo", method="POST", body=body,
                                       headers={"Content-Type": "application/octet-stream"})
        seen["post echo"] = sha(response.body) == sha(body)
        response = await client.fetch(f"{base}/big")
        seen["big"] = sha(response.body) == sha(BIG)
        bodies = await asyncio.gather(*(client.fetch(f"{base}/") for _ in range(30)))
        seen["many"] = [b.body for b in bodies] == [b"hello from tornado"] * 30

        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        answers = []
        for index in range(50):
            payload = pattern(index * 97, index)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/octet-stream\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(payload), payload))
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            answers.append((head.split(b" ")[1], await reader.readexactly(length)))
        seen["keep-alive"] = answers == [(b"200", pattern(index * 97, index))
                                         for index in range(50)]
        writer.close()
        await writer.wait_closed()
        outcome.threads = threads_started(before)
    finally:
        client.close()
        server.stop()
        await server.close_all_connections()
    return seen


@pytest.mark.parametrize("name", LOOPS)
def test_tornado_http_server_and_clients(name: str) -> None:
    """On a ``ProactorEventLoop`` (stock, or ours) tornado's IOLoop runs its readiness in
    the "Tornado selector" thread; on our selector loop, on the loop itself."""
    seen, outcome = run(name, tornado_scenario)
    assert seen == {"get": True, "post echo": True, "big": True, "many": True,
                    "keep-alive": True}
    assert outcome.threads == ([SELECTOR_THREAD] if is_proactor(name) else [])
    outcome.assert_clean()


@pytest.mark.usefixtures("past_the_proactor_check")
def test_tornado_on_our_proactor_loop_past_its_isinstance_check() -> None:
    """Past its check, tornado's IOLoop uses ``EventLoop.add_reader``/``add_writer``
    itself: no thread."""
    seen, outcome = run("winiocp", tornado_scenario)
    assert seen == {"get": True, "post echo": True, "big": True, "many": True,
                    "keep-alive": True}
    assert outcome.threads == []
    outcome.assert_clean()
