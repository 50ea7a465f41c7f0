"""The ``aio`` section's echo server: one asyncio echo on a chosen event loop.

Why one script for every loop: the section compares event loops, not servers, so the
application code must be byte for byte the same whichever loop runs it; only the loop factory
differs. Two applications:

* ``protocol``: an ``asyncio.Protocol`` whose ``data_received`` writes the data back (what a
  library built on transports does, and the loop's own fast path);
* ``streams``: ``asyncio.start_server`` with ``StreamReader.read`` / ``StreamWriter.write`` +
  ``drain`` (what most application code does; a Task and a Future per message on top).

Loops: ``stock`` (``asyncio.ProactorEventLoop`` on CPython's ``_overlapped``), ``winiocp``
(``winiocp.aio.EventLoop``: the same loop class on winiocp's proactor), ``selector``
(``asyncio.SelectorEventLoop``: ``select()``, at most 512 sockets on Windows) and ``winloop``
(libuv, from PyPI; a bench-only wheel, imported by name so the host's mypy needs no stubs).

    python -m bench.servers.aio_echo --loop winiocp --api protocol [--profile]

Speaks the stdin/stdout protocol of bench/servers/common.py; before ``listening on`` it prints
the loop class actually running (``loop MODULE.CLASS``), which the report shows.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import pstats
import threading
from collections.abc import Callable
from typing import cast

from bench.servers.common import announce, control_loop, profile_summary, start_watchdog

LOOPS = ("stock", "winiocp", "selector", "winloop")
APIS = ("protocol", "streams")


class Echo(asyncio.Protocol):
    transport: asyncio.Transport
    #: Connections open now (the memory section checks the server holds them all).
    open_connections = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: winloop's transports do not derive from asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        Echo.open_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        Echo.open_connections -= 1

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "stock":
        return asyncio.ProactorEventLoop
    if name == "winiocp":
        from winiocp.aio import new_event_loop

        return new_event_loop
    if name == "selector":
        return asyncio.SelectorEventLoop
    if name == "winloop":
        module = importlib.import_module("winloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = module.new_event_loop
        return factory
    raise ValueError(f"unknown loop {name!r}; one of {', '.join(LOOPS)}")


async def serve(api: str) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    if api == "protocol":
        return await loop.create_server(Echo, "127.0.0.1", 0, backlog=512)
    return await asyncio.start_server(echo_stream, "127.0.0.1", 0, backlog=512)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--loop", choices=LOOPS, default="stock")
    parser.add_argument("--api", choices=APIS, default="protocol")
    parser.add_argument("--profile", action="store_true",
                        help="run the loop under cProfile; print a summary between "
                             "PROFILE-BEGIN and PROFILE-END when stdin ends")
    parser.add_argument("--max-seconds", type=float, default=1800)
    options = parser.parse_args(argv)
    start_watchdog(options.max_seconds)
    loop = loop_factory(options.loop)()
    asyncio.set_event_loop(loop)
    print(f"loop {type(loop).__module__}.{type(loop).__qualname__}", flush=True)
    server = loop.run_until_complete(serve(options.api))
    host, port = server.sockets[0].getsockname()[:2]
    announce(host, port)

    def wait_for_stdin() -> None:
        control_loop(lambda: {"connections": Echo.open_connections})
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    profile = cProfile.Profile() if options.profile else None
    try:
        if profile is not None:
            profile.enable()
        loop.run_forever()
    finally:
        if profile is not None:
            profile.disable()
        shutdown(loop, server)
    if profile is not None:
        print("PROFILE-BEGIN\n" + calls_per_message(profile, options.api) + "\n"
              + profile_summary(profile) + "PROFILE-END", flush=True)
    return 0


def calls_per_message(profile: cProfile.Profile, api: str) -> str:
    """Python function calls per echoed message: the whole profile's call count over the
    number of times our own echo ran (``Echo.data_received`` / ``echo_stream``'s writes)."""
    stats = pstats.Stats(profile)
    # pstats.Stats has always kept these (print_stats reads them); typeshed omits them.
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = getattr(
        stats, "stats")
    total = int(getattr(stats, "total_calls"))
    module, function = {"protocol": ("aio_echo.py", "data_received"),
                        "streams": ("streams.py", "write")}[api]
    echoes = 0
    for (filename, _, name), (_, calls, *_) in entries.items():
        if name == function and filename.endswith(module):
            echoes = int(calls)
    per = f"{total / echoes:.0f}" if echoes else "?"
    return f"echoed messages: {echoes}; Python function calls: {total} ({per} per message)"


def shutdown(loop: asyncio.AbstractEventLoop, server: asyncio.Server) -> None:
    """Stop accepting, cancel what still runs (the streams handlers, the accept loop), close:
    an orderly end, so the server's last lines are not pending-task warnings."""
    server.close()
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()


if __name__ == "__main__":
    raise SystemExit(main())
