"""An aiohttp web app served on ``winiocp.aio``: only the event loop changes.

``web.run_app`` takes the loop to run on (``loop=``; aiohttp 3.14, the version tested)::

    web.run_app(app, loop=winiocp.aio.new_event_loop())

uvicorn takes a loop factory by its import string instead, on the command line
(``uvicorn module:app --loop winiocp.aio:new_event_loop``) or in Python
(``uvicorn.run(app, loop="winiocp.aio:new_event_loop")``): see ``uvicorn_app.py``.

``python aiohttp_app.py --serve`` serves on http://127.0.0.1:8080 until Ctrl-C. Without it, a
client in a thread makes one request, and the app stops after it, as Ctrl-C would stop it.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import urllib.request

from aiohttp import web

import winiocp.aio


def greeting(loop_class: type[asyncio.AbstractEventLoop]) -> str:
    return f"Hello from aiohttp on {loop_class.__module__}.{loop_class.__qualname__}"


async def hello(request: web.Request) -> web.Response:
    return web.Response(text=greeting(type(asyncio.get_running_loop())))


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello)
    return app


def stop() -> None:
    """What Ctrl-C does: ``run_app`` catches GracefulExit, then shuts the app down."""
    raise web.GracefulExit()


def ask_once(url: str, loop: asyncio.AbstractEventLoop, answers: list[str]) -> None:
    """One GET (the listener is up: the connection waits in its backlog), then stop the app."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            answers.append(response.read().decode())
    finally:
        loop.call_soon_threadsafe(stop)   # raised in the loop: run_app returns


def main(argv: list[str] | None = None) -> int:
    loop = winiocp.aio.new_event_loop()
    if "--serve" in (sys.argv[1:] if argv is None else argv):
        web.run_app(make_app(), host="127.0.0.1", port=8080, loop=loop)
        return 0
    # Listen first, on any free port, so the client knows where to connect.
    listener = socket.create_server(("127.0.0.1", 0))
    answers: list[str] = []
    client = threading.Thread(target=ask_once, args=(
        "http://127.0.0.1:%d/" % listener.getsockname()[1], loop, answers))
    client.start()
    web.run_app(make_app(), sock=listener, loop=loop, shutdown_timeout=5)  # closes the loop
    asyncio.set_event_loop(None)   # run_app made it the current loop: leave none behind
    client.join(10)
    print("client got:", answers)
    return 0 if answers == [greeting(winiocp.aio.EventLoop)] else 1


if __name__ == "__main__":
    sys.exit(main())
