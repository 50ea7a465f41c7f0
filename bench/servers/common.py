"""What every bench server shares: the ``listening on`` line, the stdin control loop, the
private-bytes reading, and a watchdog.

Why: the host drives each server only through its pipes (Wine cannot give a Windows process a
regular file as stdout), so they must all speak the same tiny protocol:

* once ready, print ``listening on HOST:PORT``;
* on a stdin line ``mem``, print ``RESULT {"private_bytes": ..., ...}``;
* on EOF (or ``quit``), stop; a watchdog ends the process after ``--max-seconds`` anyway.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import sys
import threading
import time
from collections.abc import Callable


def announce(host: str, port: int) -> None:
    print(f"listening on {host}:{port}", flush=True)


def memory_counters() -> dict[str, object]:
    """Private bytes of this process from K32GetProcessMemoryInfo (PROCESS_MEMORY_COUNTERS_EX).

    ``private_bytes`` is ``PrivateUsage``; Wine 8 leaves that field 0 and fills
    ``PagefileUsage`` (with the Linux process's RssAnon + VmSwap: anonymous memory actually
    touched). On Windows both fields are the process's commit charge, so the fallback measures
    the same thing; ``source`` says which field was used.
    """
    from winiocp.raw import ffi, kernel32

    counters = ffi.new("PROCESS_MEMORY_COUNTERS_EX *")
    size = ffi.sizeof("PROCESS_MEMORY_COUNTERS_EX")
    counters.cb = size
    if not kernel32.K32GetProcessMemoryInfo(kernel32.GetCurrentProcess(), counters, size):
        raise OSError(kernel32.GetLastError(), "K32GetProcessMemoryInfo failed")
    private, pagefile = int(counters.PrivateUsage), int(counters.PagefileUsage)
    return {"private_bytes": private or pagefile,
            "source": "PrivateUsage" if private else "PagefileUsage (PrivateUsage is 0)",
            "working_set": int(counters.WorkingSetSize)}


def result(payload: dict[str, object]) -> None:
    print("RESULT " + json.dumps(payload), flush=True)


def control_loop(status: Callable[[], dict[str, object]] | None = None) -> None:
    """Serve stdin commands until EOF or ``quit``; ``mem`` prints private bytes + status()."""
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            return
        if command == "mem":
            payload = memory_counters()
            if status is not None:
                payload.update(status())
            result(payload)


def profile_summary(profile: cProfile.Profile, limit: int = 25) -> str:
    """A ``pstats`` summary, sorted by own time (what ``--profile`` servers print)."""
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    stats.strip_dirs().sort_stats(pstats.SortKey.TIME).print_stats(limit)
    return stream.getvalue()


def start_watchdog(seconds: float) -> None:
    """End the process after ``seconds`` whatever happens (a bench must always finish)."""
    def expire() -> None:
        time.sleep(seconds)
        print(f"watchdog: {seconds:.0f}s passed, exiting", flush=True)
        os._exit(3)

    threading.Thread(target=expire, name="watchdog", daemon=True).start()
