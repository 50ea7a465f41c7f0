"""The libraries users run, unchanged, on ``winiocp.aio``: aiohttp (server and client: a small
GET, a 4 MiB POST echo, a 64 MiB streamed response, keep-alive load, connection churn, files,
HTTPS, websockets, timeouts, clients that leave), uvicorn serving a Starlette app (HTTP,
websockets, lifespan, graceful shutdown), a ``websockets`` echo (10,000 messages, some of
1 MiB, close handshakes from either side), anyio on the asyncio backend with our loop factory
(TCP echo, ``run_process`` and a dialog with a child process, threads calling back), and
asyncio's own TLS server with a self-signed certificate (``tests/windows/data``).

Every test runs the same scenario on the stock ``asyncio.ProactorEventLoop``, on
``winiocp.aio.new_event_loop`` and on ``winiocp.aio.new_selector_event_loop``, so a failure
says whether it is ours. Each checks the bytes
(or messages) exactly, by hash, that every connection closes cleanly, and that nothing
reached the loop's exception handler, a logger (WARNING and above), ``sys.unraisablehook``
or the warnings machinery, and that no task was left behind.

The whole file takes 45 to 75 s per Python under Wine on two shared cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import io
import logging
import random
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio
import pytest
import uvicorn
import websockets.asyncio.client
import websockets.asyncio.server
from aiohttp import web
from anyio.abc import SocketAttribute, SocketStream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import winiocp.aio

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
#: The bound on each scenario (seconds): far above what it takes, so only a hang reaches it.
WAIT = 120.0
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stock": asyncio.ProactorEventLoop,
    "winiocp": winiocp.aio.new_event_loop,
    "selector": winiocp.aio.new_selector_event_loop,
}
DATA = Path(__file__).resolve().parent / "data"
#: A self-signed certificate (valid until 2126) for localhost, 127.0.0.1 and ::1, and its key.
CERTIFICATE = DATA / "selfsigned.pem"
KEY = DATA / "selfsigned.key"
MiB = 1 << 20


class Trouble:
    """What went wrong outside the test's own checks while a scenario ran: contexts given to
    the loop's exception handler, log records at WARNING and above, unraisable exceptions
    (errors in ``__del__`` and callbacks nobody awaits) and warnings."""

    def __init__(self) -> None:
        self.loop_errors: list[dict[str, Any]] = []
        self.records: list[logging.LogRecord] = []
        self.unraisable: list[str] = []
        self.warnings: list[warnings.WarningMessage] = []

    def loop_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(context)

    def watch(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        loop.set_exception_handler(self.loop_handler)
        return loop

    def assert_none(self) -> None:
        assert [context.get("message") for context in self.loop_errors] == []
        assert [record.getMessage() for record in self.records] == []
        assert self.unraisable == []
        assert [f"{w.category.__name__}: {w.message}" for w in self.warnings] == []


class Recording(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def watching() -> Iterator[Trouble]:
    """Collect a scenario's trouble; the garbage of its end is collected inside."""
    trouble = Trouble()
    handler = Recording(trouble.records)
    root = logging.getLogger()
    root.addHandler(handler)
    hook = sys.unraisablehook

    def unraisable(info: sys.UnraisableHookArgs) -> None:
        trouble.unraisable.append(f"{info.exc_type.__name__}: {info.exc_value} in {info.object!r}")

    sys.unraisablehook = unraisable
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield trouble
            gc.collect()
        trouble.warnings.extend(caught)
    finally:
        sys.unraisablehook = hook
        root.removeHandler(handler)


def run(name: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on a new loop of kind ``name`` as ``asyncio.run`` would, bounded by
    ``WAIT``; fail if it left a task behind or anything went wrong outside its own checks."""
    with watching() as trouble:
        loop = trouble.watch(LOOPS[name]())
        try:
            result = loop.run_until_complete(asyncio.wait_for(main(), WAIT))
            left = [task for task in asyncio.all_tasks(loop) if not task.done()]
            if left:
                for task in left:
                    task.cancel()
                loop.run_until_complete(asyncio.wait(left))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
    assert [repr(task) for task in left] == []
    trouble.assert_none()
    return result


def pattern(size: int, seed: int) -> bytes:
    """``size`` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def closed_port() -> int:
    """A loopback port nothing listens on (it was bound a moment ago, then closed)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


# --- aiohttp ---------------------------------------------------------------------------------

#: The streamed response: STREAM_CHUNKS chunks of STREAM_CHUNK bytes, each a block of one
#: pattern with the chunk's index in its first 8 bytes (so a lost, repeated or reordered chunk
#: changes the hash).
STREAM_CHUNK = 256 * 1024
STREAM_BLOCK = pattern(STREAM_CHUNK, 64)


def stream_chunks(count: int) -> Iterator[bytes]:
    for index in range(count):
        yield index.to_bytes(8, "little") + STREAM_BLOCK[8:]


def stream_hash(count: int) -> str:
    digest = hashlib.sha256()
    for chunk in stream_chunks(count):
        digest.update(chunk)
    return digest.hexdigest()


class AiohttpServer:
    """An ``aiohttp.web`` application on 127.0.0.1, port 0: ``/`` (a small body), ``/echo``
    (POST: the request's body back), ``/stream?chunks=N`` (a chunked streamed response); it
    records the connection each request came on. ``/file`` sends ``file`` (``FileResponse``:
    ``loop.sendfile``); ``/slow`` answers after a minute. With ``ssl_context``, HTTPS; with
    ``handler_cancellation``, a handler whose client goes away is cancelled."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None,
                 handler_cancellation: bool = False) -> None:
        self.ssl_context = ssl_context
        #: The client address of each connection a request came on.
        self.connections: set[object] = set()
        self.requests = 0
        #: How each streamed response ended: "complete", or the exception its write raised.
        self.streams: list[str] = []
        self.file: Path | None = None
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_get("/", self.small)
        app.router.add_post("/echo", self.echo)
        app.router.add_get("/stream", self.stream)
        app.router.add_get("/file", self.send_file)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/ws", self.websocket)
        self.runner = web.AppRunner(app, handle_signals=False,
                                    handler_cancellation=handler_cancellation)
        self.url = ""

    def seen(self, request: web.Request) -> None:
        self.requests += 1
        assert request.transport is not None
        self.connections.add(request.transport.get_extra_info("peername"))

    async def small(self, request: web.Request) -> web.Response:
        self.seen(request)
        return web.Response(body=b"hello from aiohttp")

    async def echo(self, request: web.Request) -> web.Response:
        self.seen(request)
        return web.Response(body=await request.read())

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.seen(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for chunk in stream_chunks(int(request.query["chunks"])):
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError as error:  # the client went away
            self.streams.append(type(error).__name__)
        else:
            self.streams.append("complete")
        return response

    async def slow(self, request: web.Request) -> web.StreamResponse:
        """Sends the headers and 7 bytes, and the rest after a minute (a client's read
        timeout ends the request before then)."""
        self.seen(request)
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.streams.append("slow request cancelled")
            raise
        await response.write_eof(b"too late")
        return response

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """Echoes each message; records the close code the client sent."""
        self.seen(request)
        socket = web.WebSocketResponse(max_msg_size=2 * MiB)
        await socket.prepare(request)
        async for message in socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                await socket.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await socket.send_bytes(message.data)
        self.streams.append(f"websocket closed {socket.close_code}")
        return socket

    async def send_file(self, request: web.Request) -> web.FileResponse:
        self.seen(request)
        assert self.file is not None
        return web.FileResponse(self.file)

    async def __aenter__(self) -> AiohttpServer:
        await self.runner.setup()
        site = web.TCPSite(self.runner, LOOPBACK, 0, ssl_context=self.ssl_context)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"{'https' if self.ssl_context else 'http'}://{host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.runner.cleanup()


@pytest.mark.parametrize("name", LOOPS)
def test_aiohttp_small_get(name: str) -> None:
    async def main() -> None:
        async with AiohttpServer() as server, aiohttp.ClientSession() as session:
            async with session.get(server.url + "/") as response:
                assert response.status == 200
                assert await response.read() == b"hello from aiohttp"

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_aiohttp_post_echo_4_mib(name: str) -> None:
    body = pattern(4 * MiB, 4)

    async def main() -> None:
        async with AiohttpServer() as server, aiohttp.ClientSession() as session:
            async with session.post(server.url + "/echo", data=io.BytesIO(body)) as response:
                assert response.status == 200
                assert sha(await response.read()) == sha(body)

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_aiohttp_streamed_response(name: str) -> None:
    """A chunked response of 64 MiB, read as it streams in."""
    chunks = 256

    async def main() -> None:
        async with AiohttpServer() as server, aiohttp.ClientSession() as session:
            async with session.get(server.url + "/stream", params={"chunks": str(chunks)}
                                   ) as response:
                assert response.status == 200
                digest = hashlib.sha256()
                received = 0
                async for piece in response.content.iter_chunked(64 * 1024):
                    digest.update(piece)
                    received += len(piece)
        assert received == chunks * STREAM_CHUNK
        assert digest.hexdigest() == stream_hash(chunks)

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_aiohttp_keep_alive_load(name: str) -> None:
    """1,000 requests (GETs and small POSTs) from 32 tasks over a pool of at most 8 kept-alive
    connections: every answer right, and no more connections than the pool allows."""
    requests, tasks, pool = 1000, 32, 8

    async def main() -> None:
        async with AiohttpServer() as server, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=pool)) as session:
            async def worker(first: int) -> None:
                for index in range(first, requests, tasks):
                    if index % 2:
                        async with session.get(server.url + "/") as response:
                            assert await response.read() == b"hello from aiohttp"
                    else:
                        body = pattern(100 + index, index)
                        async with session.post(server.url + "/echo", data=body) as response:
                            assert await response.read() == body

            await asyncio.gather(*(worker(first) for first in range(tasks)))
            assert server.requests == requests
            assert 1 <= len(server.connections) <= pool

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_aiohttp_websocket_echo(name: str) -> None:
    """aiohttp's own websockets, server and client: 2,000 text and binary messages (three of
    1 MiB) echoed while more are sent, then the client's close handshake (1000 on both
    sides)."""
    messages = websocket_messages(2000)

    async def main() -> None:
        async with AiohttpServer() as server, aiohttp.ClientSession() as session:
            async with session.ws_connect(server.url + "/ws", max_msg_size=2 * MiB) as socket:
                async def send_all() -> None:
                    for message in messages:
                        if isinstance(message, str):
                            await socket.send_str(message)
                        else:
                            await socket.send_bytes(message)

                sending = asyncio.create_task(send_all())
                echoed: list[str | bytes] = []
                for _ in messages:
                    reply = await socket.receive()
                    assert reply.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
                    echoed.append(reply.data)
                await sending
                assert await socket.close()
                assert socket.close_code == 1000
            while not server.streams:
                await asyncio.sleep(0.01)
            assert server.streams == ["websocket closed 1000"]
            assert messages_hash(echoed) == messages_hash(messages)

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_aiohttp_connection_churn(name: str) -> None:
    """300 requests, each on a connection of its own (``Connection: close``), 50 at a time:
    the server accepts and closes them all, and every answer is right."""
    requests, tasks = 300, 50

    async def main() -> None:
        async with AiohttpServer() as server, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=tasks, force_close=True)) as session:
            async def worker(first: int) -> None:
                for index in range(first, requests, tasks):
                    body = pattern(index, index)
                    async with session.post(server.url + "/echo", data=body) as response:
                        assert await response.read() == body

            await asyncio.gather(*(worker(first) for first in range(tasks)))
            assert server.requests == requests
            assert len(server.connections) > tasks  # not kept alive

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_aiohttp_client_timeout(name: str) -> None:
    """A response whose body stalls past the client's read timeout: the client gets
    ``TimeoutError`` and drops the connection, the server (``handler_cancellation``) cancels
    the handler, and both go on serving on new connections."""
    async def main() -> None:
        async with AiohttpServer(handler_cancellation=True) as server, \
                aiohttp.ClientSession() as session:
            async with session.get(server.url + "/slow",
                                   timeout=aiohttp.ClientTimeout(sock_read=1.0)) as response:
                assert await response.content.readexactly(7) == b"partial"
                with pytest.raises(asyncio.TimeoutError):
                    await response.read()
            while not server.streams:
                await asyncio.sleep(0.01)
            assert server.streams == ["slow request cancelled"]
            async with session.get(server.url + "/") as response:
                assert await response.read() == b"hello from aiohttp"

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_aiohttp_client_leaves_mid_stream(name: str) -> None:
    """A client that reads 1 MiB of a 64 MiB streamed response and drops the connection: the
    server's write fails with a connection error (its handler ends), and the server goes on
    serving the next client."""
    async def main() -> None:
        async with AiohttpServer() as server:
            async with aiohttp.ClientSession() as session:
                response = await session.get(server.url + "/stream", params={"chunks": "256"})
                assert response.status == 200
                assert len(await response.content.readexactly(MiB)) == MiB
                response.close()  # drops the connection: the body is not read to its end
            while not server.streams:
                await asyncio.sleep(0.01)
            assert len(server.streams) == 1 and server.streams != ["complete"]
            async with aiohttp.ClientSession() as session, session.get(server.url + "/") as ok:
                assert await ok.read() == b"hello from aiohttp"

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_aiohttp_file_response(name: str, tmp_path: Path) -> None:
    """``web.FileResponse`` (``loop.sendfile``: TransmitFile on a proactor loop) sends an
    8 MiB file whole, then a range of it, on a kept-alive connection."""
    content = pattern(8 * MiB, 8)
    (tmp_path / "file.bin").write_bytes(content)

    async def main() -> None:
        async with AiohttpServer() as server, aiohttp.ClientSession() as session:
            server.file = tmp_path / "file.bin"
            async with session.get(server.url + "/file") as response:
                assert response.status == 200
                assert sha(await response.read()) == sha(content)
            async with session.get(server.url + "/file",
                                   headers={"Range": "bytes=1000-1999999"}) as response:
                assert response.status == 206
                assert sha(await response.read()) == sha(content[1000:2000000])
            assert len(server.connections) == 1

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_aiohttp_https(name: str) -> None:
    """aiohttp over TLS with the self-signed certificate: a small GET, a 4 MiB POST echo and a
    16 MiB streamed response."""
    server_context, client_context = tls_contexts()
    body = pattern(4 * MiB, 6)

    async def main() -> None:
        async with AiohttpServer(server_context) as server, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_context)) as session:
            async with session.get(server.url + "/") as response:
                assert await response.read() == b"hello from aiohttp"
            async with session.post(server.url + "/echo", data=io.BytesIO(body)) as response:
                assert sha(await response.read()) == sha(body)
            async with session.get(server.url + "/stream", params={"chunks": "64"}) as response:
                assert sha(await response.read()) == stream_hash(64)

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_aiohttp_client_to_localhost(name: str) -> None:
    """The client given "localhost" while the server listens on 127.0.0.1 only: whatever the
    name resolves to (::1 and 127.0.0.1 on Windows, where ::1 is refused; only 127.0.0.1
    under Wine), happy eyeballs reaches the server. A refused connection is an error."""
    async def main() -> None:
        async with AiohttpServer() as server, aiohttp.ClientSession() as session:
            url = server.url.replace(LOOPBACK, "localhost")
            for _ in range(3):
                async with session.get(url + "/", headers={"Connection": "close"}) as response:
                    assert await response.read() == b"hello from aiohttp"
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"http://{LOOPBACK}:{closed_port()}/")

    run(name, main)


# --- uvicorn with a Starlette app ------------------------------------------------------------

def starlette_app(lifespan_events: list[str]) -> Starlette:
    async def small(request: Request) -> Response:
        return PlainTextResponse("hello from starlette")

    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in stream_chunks(int(request.query_params["chunks"])):
                yield chunk

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        lifespan_events.append("startup")
        yield
        lifespan_events.append("shutdown")

    async def websocket(socket: WebSocket) -> None:
        await socket.accept()
        try:
            while True:
                message = await socket.receive()
                if message["type"] == "websocket.disconnect":
                    lifespan_events.append(f"websocket closed {message['code']}")
                    return
                if message.get("text") is not None:
                    await socket.send_text(message["text"])
                else:
                    await socket.send_bytes(message["bytes"])
        except WebSocketDisconnect as disconnect:  # a send after the peer went away
            lifespan_events.append(f"websocket lost {disconnect.code}")

    return Starlette(routes=[Route("/", small), Route("/echo", echo, methods=["POST"]),
                             Route("/stream", stream), WebSocketRoute("/ws", websocket)],
                     lifespan=lifespan)


@pytest.mark.parametrize("name", LOOPS)
def test_uvicorn_starlette(name: str) -> None:
    """uvicorn (h11) serving Starlette in-process on the loop under test, with its lifespan:
    a small GET, a 4 MiB POST echo, a streamed 8 MiB response and 100 kept-alive requests,
    then a graceful shutdown."""
    events: list[str] = []
    body = pattern(4 * MiB, 5)
    chunks = 32

    async def main() -> None:
        config = uvicorn.Config(starlette_app(events), host=LOOPBACK, port=0, loop="none",
                                http="h11", ws="none", lifespan="on", log_config=None,
                                access_log=False)
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        url = "http://%s:%d" % server.servers[0].sockets[0].getsockname()[:2]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2)) as session:
            async with session.get(url + "/") as response:
                assert response.status == 200
                assert await response.text() == "hello from starlette"
            async with session.post(url + "/echo", data=io.BytesIO(body)) as response:
                assert response.status == 200
                assert sha(await response.read()) == sha(body)
            async with session.get(url + "/stream", params={"chunks": str(chunks)}) as response:
                assert response.status == 200
                digest = hashlib.sha256()
                async for piece in response.content.iter_chunked(64 * 1024):
                    digest.update(piece)
                assert digest.hexdigest() == stream_hash(chunks)

            async def get(index: int) -> None:
                async with session.get(url + "/") as response:
                    assert await response.text() == "hello from starlette"

            await asyncio.gather(*(get(index) for index in range(100)))
        server.should_exit = True
        await serving
        assert events == ["startup", "shutdown"]

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_uvicorn_shutdown_closes_idle_keep_alive(name: str) -> None:
    """uvicorn asked to exit while a client holds an idle kept-alive connection: the server
    closes it and finishes its shutdown; the client sees the connection end cleanly."""
    events: list[str] = []

    async def main() -> None:
        config = uvicorn.Config(starlette_app(events), host=LOOPBACK, port=0, loop="none",
                                http="h11", ws="none", lifespan="on", log_config=None,
                                access_log=False, timeout_keep_alive=60)
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await reader.readexactly(len("hello from starlette")) == b"hello from starlette"
        server.should_exit = True
        await serving
        assert await reader.read() == b""  # the server closed the idle connection
        writer.close()
        await writer.wait_closed()
        assert events == ["startup", "shutdown"]

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_uvicorn_starlette_websocket(name: str) -> None:
    """A Starlette websocket endpoint under uvicorn (its websockets sans-I/O protocol): 1,000
    text and binary messages (three of 1 MiB) echoed, then the client's close handshake."""
    events: list[str] = []
    messages = websocket_messages(1000)

    async def main() -> None:
        config = uvicorn.Config(starlette_app(events), host=LOOPBACK, port=0, loop="none",
                                http="h11", ws="websockets-sansio", ws_max_size=2 * MiB,
                                lifespan="on", log_config=None, access_log=False)
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        uri = "ws://%s:%d/ws" % server.servers[0].sockets[0].getsockname()[:2]
        async with websockets.asyncio.client.connect(uri, max_size=2 * MiB,
                                                     compression=None) as client:
            echoed = await echo_through(client, messages)
        assert client.close_code == 1000
        assert messages_hash(echoed) == messages_hash(messages)
        while len(events) < 2:
            await asyncio.sleep(0.01)
        server.should_exit = True
        await serving
        assert events == ["startup", "websocket closed 1000", "shutdown"]

    run(name, main)


# --- websockets ------------------------------------------------------------------------------

def websocket_messages(count: int) -> list[str | bytes]:
    """``count`` messages, text and binary, of 0 to 2,000 bytes, and three of 1 MiB."""
    rng = random.Random(count)
    messages: list[str | bytes] = []
    for index in range(count):
        size = rng.randrange(2000)
        if index % 3 == 0:
            messages.append("".join(rng.choice("abcdé€🙂") for _ in range(size // 4)))
        else:
            messages.append(rng.randbytes(size))
    for index in (count // 4, count // 2, count - 1):
        messages[index] = rng.randbytes(MiB)
    return messages


async def echo_through(client: websockets.asyncio.client.ClientConnection,
                       messages: list[str | bytes]) -> list[str | bytes]:
    """Send ``messages`` on a websockets client while its echoes are read, then close it
    (1000, "client done"); the echoes, in the order they came."""
    async def send_all() -> None:
        for message in messages:
            await client.send(message)

    sending = asyncio.create_task(send_all())
    echoed = [await client.recv() for _ in messages]
    await sending
    await client.close(1000, "client done")
    return echoed


def messages_hash(messages: list[str | bytes]) -> str:
    digest = hashlib.sha256()
    for message in messages:
        raw = message.encode() if isinstance(message, str) else message
        digest.update(b"T" if isinstance(message, str) else b"B")
        digest.update(len(raw).to_bytes(8, "little") + raw)
    return digest.hexdigest()


@pytest.mark.parametrize("name", LOOPS)
def test_websockets_echo(name: str) -> None:
    """10,000 messages of up to 2 KB and three of 1 MiB echoed, sent while the echoes are
    read; one connection closed by the client, one by the server, each with a
    complete close handshake (code 1000 and its reason seen by both sides)."""
    messages = websocket_messages(10_000)
    limit = MiB + 1024

    async def main() -> None:
        server_closes: list[tuple[int | None, str | None]] = []

        async def handler(connection: websockets.asyncio.server.ServerConnection) -> None:
            async for message in connection:
                if message == "close, please":
                    await connection.close(1000, "server done")
                    break
                await connection.send(message)
            await connection.wait_closed()
            server_closes.append((connection.close_code, connection.close_reason))

        async with websockets.asyncio.server.serve(handler, LOOPBACK, 0, max_size=limit,
                                                   compression=None) as server:
            uri = "ws://%s:%d" % next(iter(server.sockets)).getsockname()[:2]
            async with websockets.asyncio.client.connect(uri, max_size=limit,
                                                         compression=None) as client:
                echoed = await echo_through(client, messages)
            assert (client.close_code, client.close_reason) == (1000, "client done")
            assert messages_hash(echoed) == messages_hash(messages)

            async with websockets.asyncio.client.connect(uri) as client:
                await client.send("ping")
                assert await client.recv() == "ping"
                await client.send("close, please")
                with pytest.raises(websockets.ConnectionClosedOK):
                    await client.recv()
            assert (client.close_code, client.close_reason) == (1000, "server done")
            while len(server_closes) < 2:
                await asyncio.sleep(0.01)
        assert server_closes == [(1000, "client done"), (1000, "server done")]

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_websockets_both_ways_with_pings(name: str) -> None:
    """Both sides send at once: the server pushes 2,000 messages (every 500th of 1 MiB) while
    the client sends 2,000 of its own and pings; every ping is answered, every message
    arrives in order, and the close handshake completes."""
    count = 2000
    limit = MiB + 1024

    def stream(seed: int) -> list[bytes]:
        rng = random.Random(seed)
        return [rng.randbytes(MiB if index % 500 == 250 else rng.randrange(4000))
                for index in range(count)]

    pushed, sent = stream(1), stream(2)

    async def main() -> None:
        got_by_server: list[bytes] = []

        async def handler(connection: websockets.asyncio.server.ServerConnection) -> None:
            async def push() -> None:
                for message in pushed:
                    await connection.send(message)

            pushing = asyncio.create_task(push())
            async for message in connection:
                assert isinstance(message, bytes)
                got_by_server.append(message)
            await pushing

        async with websockets.asyncio.server.serve(handler, LOOPBACK, 0, max_size=limit,
                                                   compression=None) as server:
            uri = "ws://%s:%d" % next(iter(server.sockets)).getsockname()[:2]
            async with websockets.asyncio.client.connect(uri, max_size=limit,
                                                         compression=None) as client:
                async def send_and_ping() -> None:
                    for index, message in enumerate(sent):
                        await client.send(message)
                        if index % 200 == 0:
                            await asyncio.wait_for(await client.ping(), WAIT)

                sending = asyncio.create_task(send_and_ping())
                received = [await client.recv() for _ in pushed]
                await sending
                await client.close()
            assert client.close_code == 1000
            assert messages_hash(list(received)) == messages_hash(list(pushed))
        assert messages_hash(list(got_by_server)) == messages_hash(list(sent))

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_websockets_peer_vanishes(name: str) -> None:
    """A client that aborts its TCP connection (no close frame) in the middle of the server's
    1 MiB messages: the server's connection ends with ``ConnectionClosedError`` (code 1006,
    no close frame received), its handler ends, and the server serves the next client."""
    limit = MiB + 1024
    big = pattern(MiB, 11)

    async def main() -> None:
        ended: list[tuple[str, int | None]] = []

        async def handler(connection: websockets.asyncio.server.ServerConnection) -> None:
            try:
                if await connection.recv() == "flood":
                    while True:
                        await connection.send(big)
                await connection.send("hi")
                await connection.wait_closed()
            except websockets.ConnectionClosed as closed:
                ended.append((type(closed).__name__, connection.close_code))
            else:
                ended.append(("wait_closed", connection.close_code))

        async with websockets.asyncio.server.serve(handler, LOOPBACK, 0, max_size=limit,
                                                   compression=None) as server:
            uri = "ws://%s:%d" % next(iter(server.sockets)).getsockname()[:2]
            client = await websockets.asyncio.client.connect(uri, max_size=limit,
                                                             compression=None)
            await client.send("flood")
            assert await client.recv() == big
            client.transport.abort()
            await client.wait_closed()
            assert client.close_code == 1006
            while not ended:
                await asyncio.sleep(0.01)
            assert ended == [("ConnectionClosedError", 1006)]
            async with websockets.asyncio.client.connect(uri) as client:
                await client.send("hello")
                assert await client.recv() == "hi"
            while len(ended) < 2:
                await asyncio.sleep(0.01)
            assert ended[1] == ("wait_closed", 1000)

    run(name, main)


# --- anyio on the asyncio backend ------------------------------------------------------------

def run_anyio(name: str, main: Callable[[], Awaitable[T]]) -> T:
    """``anyio.run(main)`` on the asyncio backend with the loop factory under test (anyio
    takes a ``loop_factory`` on every Python, with its own Runner before 3.11)."""
    with watching() as trouble:
        def factory() -> asyncio.AbstractEventLoop:
            return trouble.watch(LOOPS[name]())

        result = anyio.run(main, backend="asyncio", backend_options={"loop_factory": factory})
    trouble.assert_none()
    return result


def assert_loop_under_test(name: str) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, winiocp.aio.EventLoop) == (name == "winiocp")


@pytest.mark.parametrize("name", LOOPS)
def test_anyio_tcp_echo(name: str) -> None:
    """anyio's TCP listener and ``connect_tcp``: 8 clients at once each send 1 MiB in pieces
    and half-close; the server echoes until end of stream and closes; each client reads the
    echo to its end."""
    clients = 8

    async def main() -> None:
        assert_loop_under_test(name)
        served: list[int] = []

        async def echo(stream: SocketStream) -> None:
            async with stream:
                total = 0
                async for data in stream:
                    total += len(data)
                    await stream.send(data)
                served.append(total)

        async def client(port: int, seed: int) -> None:
            payload = pattern(MiB, seed)
            async with await anyio.connect_tcp(LOOPBACK, port) as stream:
                async def send() -> None:
                    for offset in range(0, len(payload), 48 * 1024):
                        await stream.send(payload[offset:offset + 48 * 1024])
                    await stream.send_eof()

                chunks: list[bytes] = []
                async with anyio.create_task_group() as group:
                    group.start_soon(send)
                    async for data in stream:
                        chunks.append(data)
            assert sha(b"".join(chunks)) == sha(payload)

        listener = await anyio.create_tcp_listener(local_host=LOOPBACK)
        port = listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as serving:
            serving.start_soon(listener.serve, echo)
            async with anyio.create_task_group() as group:
                for index in range(clients):
                    group.start_soon(client, port, 100 + index)
            with anyio.fail_after(WAIT):
                while len(served) < clients:
                    await anyio.sleep(0.01)
            serving.cancel_scope.cancel()
        assert served == [MiB] * clients

    run_anyio(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_anyio_connect_tcp_to_localhost(name: str) -> None:
    """``anyio.connect_tcp("localhost", ...)`` to a listener on 127.0.0.1 only: its happy
    eyeballs gets past a refused ::1 (where localhost resolves to it: Windows, not Wine) and
    reaches the server; bytes go both ways and the stream ends cleanly. A refused connection
    is an ``OSError``."""
    async def main() -> None:
        assert_loop_under_test(name)

        async def greet(stream: SocketStream) -> None:
            async with stream:
                await stream.send(b"hello " + await stream.receive())

        listener = await anyio.create_tcp_listener(local_host=LOOPBACK)
        port = listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as serving:
            serving.start_soon(listener.serve, greet)
            for _ in range(3):
                async with await anyio.connect_tcp("localhost", port) as stream:
                    await stream.send(b"anyio")
                    assert await stream.receive() == b"hello anyio"
                    with pytest.raises(anyio.EndOfStream):
                        await stream.receive()
            with pytest.raises(OSError):
                await anyio.connect_tcp(LOOPBACK, closed_port())
            serving.cancel_scope.cancel()

    run_anyio(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_anyio_threads(name: str) -> None:
    """``anyio.to_thread.run_sync`` and, from those threads, ``anyio.from_thread.run`` back
    into the loop (``call_soon_threadsafe`` waking a loop that has no I/O pending): 50 round
    trips, then 10 at once."""
    async def main() -> None:
        assert_loop_under_test(name)

        async def double(value: int) -> int:
            await anyio.sleep(0)
            return value * 2

        def in_thread(value: int) -> int:
            return anyio.from_thread.run(double, value) + 1

        for value in range(50):
            assert await anyio.to_thread.run_sync(in_thread, value) == value * 2 + 1
        results: dict[int, int] = {}

        async def one(value: int) -> None:
            results[value] = await anyio.to_thread.run_sync(in_thread, value)

        async with anyio.create_task_group() as group:
            for value in range(10):
                group.start_soon(one, value)
        assert results == {value: value * 2 + 1 for value in range(10)}

    run_anyio(name, main)


CHILD = """
import sys
data = sys.stdin.buffer.read()
sys.stdout.buffer.write(data[::-1])
sys.stderr.write("child read %d bytes" % len(data))
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("name", LOOPS)
def test_anyio_run_process(name: str) -> None:
    """``anyio.run_process`` runs this Python: 1 MiB through its stdin, the reversed bytes back
    on its stdout, a line on its stderr, its exit status; a failing child raises
    ``CalledProcessError`` with its output."""
    data = pattern(MiB, 7)

    async def main() -> None:
        assert_loop_under_test(name)
        result = await anyio.run_process([sys.executable, "-c", CHILD, "0"], input=data)
        assert result.returncode == 0
        assert sha(result.stdout) == sha(data[::-1])
        assert result.stderr == b"child read %d bytes" % len(data)
        with pytest.raises(subprocess.CalledProcessError) as failed:
            await anyio.run_process([sys.executable, "-c", CHILD, "3"], input=b"abc")
        assert failed.value.returncode == 3
        assert failed.value.stdout == b"cba"

    run_anyio(name, main)


DIALOG = """
import sys
for line in sys.stdin.buffer:
    sys.stdout.buffer.write(line.upper())
    sys.stdout.buffer.flush()
sys.stderr.write("bye")
"""


@pytest.mark.parametrize("name", LOOPS)
def test_anyio_process_dialog(name: str) -> None:
    """``anyio.open_process``: a dialog with a child, one line written and its answer read
    before the next is written (pipes read as data comes, not at exit), then end of input,
    the child's stderr and its exit status."""
    async def main() -> None:
        assert_loop_under_test(name)
        async with await anyio.open_process([sys.executable, "-u", "-c", DIALOG]) as process:
            assert process.stdin is not None and process.stdout is not None
            assert process.stderr is not None
            for turn in range(20):
                await process.stdin.send(b"line %d\n" % turn)
                answer = b""
                while not answer.endswith(b"\n"):
                    answer += await process.stdout.receive()
                assert answer == b"LINE %d\n" % turn
            await process.stdin.aclose()
            assert await process.wait() == 0
            with pytest.raises(anyio.EndOfStream):
                await process.stdout.receive()
            assert await process.stderr.receive() == b"bye"

    run_anyio(name, main)


# --- asyncio's TLS server with a self-signed certificate -------------------------------------

def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The server's context (the self-signed certificate) and a client's that trusts it."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(CERTIFICATE, KEY)
    client = ssl.create_default_context(cafile=str(CERTIFICATE))
    return server, client


@pytest.mark.parametrize("name", LOOPS)
def test_asyncio_tls_server(name: str) -> None:
    """asyncio's TLS server and client (``ssl=``): the client verifies the certificate
    against 127.0.0.1 and against localhost; 4 MiB echoed in pieces plus 500 small
    request/response turns; one connection closed by the client, one by the server, each
    with TLS close_notify (the other side reads a clean end of stream, no error)."""
    server_context, client_context = tls_contexts()
    payload = pattern(4 * MiB, 9)

    async def main() -> None:
        assert_loop_under_test(name)
        ends: list[str] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert writer.get_extra_info("ssl_object") is not None
            try:
                while data := await reader.read(64 * 1024):
                    if data == b"close, please":
                        ends.append("server closed")
                        break
                    writer.write(data)
                    await writer.drain()
                else:
                    ends.append("client closed")
            finally:
                writer.close()
                await writer.wait_closed()

        server = await asyncio.start_server(serve, LOOPBACK, 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]

        reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=client_context)
        assert writer.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)

        async def send() -> None:
            for offset in range(0, len(payload), 100_000):
                writer.write(payload[offset:offset + 100_000])
                await writer.drain()

        sending = asyncio.create_task(send())
        echoed = await reader.readexactly(len(payload))
        await sending
        assert sha(echoed) == sha(payload)
        for turn in range(500):
            message = b"turn %d" % turn
            writer.write(message)
            assert await reader.readexactly(len(message)) == message
        writer.close()
        await writer.wait_closed()

        reader, writer = await asyncio.open_connection(
            LOOPBACK, port, ssl=client_context, server_hostname="localhost")
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        writer.write(b"close, please")
        assert await reader.read() == b""  # close_notify, then the end of the stream
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()

        while len(ends) < 2:  # the server's side of the first connection may still be closing
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        assert sorted(ends) == ["client closed", "server closed"]

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_asyncio_start_tls(name: str) -> None:
    """A plain connection upgraded to TLS on both sides (``StreamWriter.start_tls``, that is
    ``loop.start_tls``, as SMTP's STARTTLS does): the plain exchange, then 1 MiB echoed under
    TLS, then close_notify."""
    server_context, client_context = tls_contexts()
    payload = pattern(MiB, 10)
    if sys.version_info < (3, 11):
        pytest.skip("StreamWriter.start_tls is new in Python 3.11")

    async def main() -> None:
        assert_loop_under_test(name)
        finished = asyncio.get_running_loop().create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                assert await reader.readline() == b"STARTTLS\r\n"
                writer.write(b"220 go ahead\r\n")
                await writer.drain()
                await writer.start_tls(server_context)  # type: ignore[attr-defined,unused-ignore]
                assert writer.get_extra_info("ssl_object") is not None
                while data := await reader.read(64 * 1024):
                    writer.write(data)
                    await writer.drain()
                writer.close()
                await writer.wait_closed()
                finished.set_result(None)
            except BaseException as error:
                finished.set_exception(error)
                raise

        server = await asyncio.start_server(serve, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(b"STARTTLS\r\n")
        assert await reader.readline() == b"220 go ahead\r\n"
        await writer.start_tls(client_context,  # type: ignore[attr-defined,unused-ignore]
                               server_hostname="localhost")
        writer.write(payload)
        assert sha(await reader.readexactly(len(payload))) == sha(payload)
        writer.close()
        await writer.wait_closed()
        await finished
        server.close()
        await server.wait_closed()

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_asyncio_tls_peer_aborts(name: str) -> None:
    """A TLS client that aborts its connection (no close_notify) while the server streams
    to it: the server's write fails with a connection error (or, before 3.12, its
    reading side is told the connection is lost), nothing reaches the loop's exception
    handler or a logger, and the server serves the next client."""
    server_context, client_context = tls_contexts()
    block = pattern(256 * 1024, 12)

    async def main() -> None:
        assert_loop_under_test(name)
        ended: list[str] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if await reader.readexactly(5) == b"flood":
                    for _ in range(1024):  # 256 MiB: far more than the client reads
                        # Before 3.12, drain() does not raise once the connection is lost
                        # and returns at once (asyncio's TLS layer takes the writes and
                        # drops them), on any loop: give the loop a turn and stop on what
                        # the reading side was told, as a careful server does.
                        await asyncio.sleep(0)
                        if reader.at_eof() or reader.exception() is not None:
                            ended.append("connection lost")
                            return
                        writer.write(block)
                        await writer.drain()
                    ended.append("all written")
                    return
                writer.write(b"hello")
                await writer.drain()
                await reader.read()
                ended.append("clean")
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                ended.append("failed")
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.wait_closed()

        server = await asyncio.start_server(serve, LOOPBACK, 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=client_context)
        writer.write(b"flood")
        assert await reader.readexactly(len(block)) == block
        writer.transport.abort()
        while not ended:
            await asyncio.sleep(0.01)
        assert ended in (["failed"], ["connection lost"])
        reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=client_context)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        writer.close()
        await writer.wait_closed()
        while len(ended) < 2:
            await asyncio.sleep(0.01)
        assert ended[1:] == ["clean"]
        server.close()
        await server.wait_closed()

    run(name, main)


@pytest.mark.parametrize("name", LOOPS)
def test_asyncio_tls_many_clients(name: str) -> None:
    """40 TLS clients at once (handshakes racing on the accepting server), each echoing
    256 KiB and closing with close_notify."""
    server_context, client_context = tls_contexts()
    clients = 40

    async def main() -> None:
        assert_loop_under_test(name)
        served: list[int] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            total = 0
            while data := await reader.read(64 * 1024):
                total += len(data)
                writer.write(data)
                await writer.drain()
            served.append(total)
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(serve, LOOPBACK, 0, ssl=server_context,
                                            backlog=clients)
        port = server.sockets[0].getsockname()[1]

        async def client(seed: int) -> None:
            payload = pattern(256 * 1024, seed)
            reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=client_context)
            writer.write(payload)
            assert sha(await reader.readexactly(len(payload))) == sha(payload)
            writer.close()
            await writer.wait_closed()

        await asyncio.gather(*(client(seed) for seed in range(clients)))
        while len(served) < clients:
            await asyncio.sleep(0.01)
        assert served == [256 * 1024] * clients
        server.close()
        await server.wait_closed()

    run(name, main)
