"""A Starlette app under uvicorn, on ``winiocp.aio``: uvicorn imports the loop factory by name.

uvicorn (0.54, the version tested) takes a loop factory as ``module:name``, on the command line
or in Python::

    uvicorn uvicorn_app:app --loop winiocp.aio:new_event_loop
    uvicorn.run(app, loop="winiocp.aio:new_event_loop")

``python uvicorn_app.py --serve`` does the second, on http://127.0.0.1:8000, until Ctrl-C.
Without it, the same ``Config`` runs in a ``Server`` (what ``uvicorn.run`` makes) that a
client thread stops after one request.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import urllib.request

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import winiocp.aio

LOOP = "winiocp.aio:new_event_loop"


def greeting(loop_class: type[asyncio.AbstractEventLoop]) -> str:
    return f"Hello from uvicorn on {loop_class.__module__}.{loop_class.__qualname__}"


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(greeting(type(asyncio.get_running_loop())))


app = Starlette(routes=[Route("/", hello)])


def ask_once(url: str, server: uvicorn.Server, answers: list[str]) -> None:
    """One GET (the listener is up: the connection waits in its backlog), then stop."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            answers.append(response.read().decode())
    finally:
        server.should_exit = True           # what Ctrl-C sets: uvicorn shuts down gracefully


def main(argv: list[str] | None = None) -> int:
    if "--serve" in (sys.argv[1:] if argv is None else argv):
        uvicorn.run(app, host="127.0.0.1", port=8000, loop=LOOP)
        return 0
    listener = socket.create_server(("127.0.0.1", 0))   # any free port, known before serving
    server = uvicorn.Server(uvicorn.Config(app, loop=LOOP, log_config=None))
    answers: list[str] = []
    client = threading.Thread(target=ask_once, args=(
        "http://127.0.0.1:%d/" % listener.getsockname()[1], server, answers))
    client.start()
    server.run(sockets=[listener])          # runs a new winiocp.aio loop until should_exit
    client.join(10)
    print("client got:", answers)
    return 0 if answers == [greeting(winiocp.aio.EventLoop)] else 1


if __name__ == "__main__":
    sys.exit(main())
