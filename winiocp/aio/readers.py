"""``add_reader``/``add_writer`` for the proactor loop, on the loop's own completion port.

asyncio's ProactorEventLoop raises NotImplementedError for them, which is why psycopg refuses
it and pyzmq, tornado and anyio start a thread running ``select()`` beside it. Here each
socket given to them is a ``winiocp.readiness.Watch`` of the proactor's ``PollSet``: AFD
polls complete on the same port as every other operation, and the one dequeue of each loop
turn serves both. The watch's data is the socket's [reader, writer] handles; each turn, the
ones whose socket is ready are scheduled, level-triggered as on the selector loop (a reader
that leaves data unread is called again next turn).

``Readers`` is the loop's table of them; ``EventLoop`` forwards the four methods here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..readiness import EVENT_READ, EVENT_WRITE, PollSet, Watch, fileno_of, still_open

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

#: Which of a socket's two callbacks ``Readers.add``/``remove`` mean.
READER, WRITER = 0, 1


class Readers:
    """The readers and writers of one loop, watched on its proactor's ``PollSet``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, polls: Callable[[], PollSet]) -> None:
        self._loop = loop
        self._make_polls = polls  # the proactor's, made on first use
        #: The proactor's ``PollSet`` once a reader or writer was added (None before).
        self.polls: PollSet | None = None
        self._watches: dict[int, Watch] = {}

    def _polls(self) -> PollSet:
        polls = self.polls
        if polls is None:
            polls = self.polls = self._make_polls()
        return polls

    def add(self, which: int, fd: FileDescriptorLike, callback: Callable[..., object],
            args: tuple[object, ...]) -> None:
        """Call ``callback(*args)`` each turn while ``fd`` is ready for ``which`` (READER or
        WRITER), replacing the one it had. ``RuntimeError`` once the loop is closed."""
        if self._loop.is_closed():
            raise RuntimeError("Event loop is closed")
        fileno = fileno_of(fd)
        handle = asyncio.Handle(callback, args, self._loop, None)
        watch = self._watches.get(fileno)
        if watch is None:
            callbacks: list[asyncio.Handle | None] = [None, None]
            callbacks[which] = handle
            self._watches[fileno] = self._polls().add(
                fileno, _EVENT[which], callbacks, still_open(fd, fileno))
            return
        callbacks = _callbacks(watch)
        old = callbacks[which]
        if old is not None:
            old.cancel()
        callbacks[which] = handle
        self._polls().modify(watch, watch.interest | _EVENT[which])

    def remove(self, which: int, fd: FileDescriptorLike) -> bool:
        """Stop calling ``fd``'s ``which`` callback; whether it had one (False once the loop
        is closed)."""
        if self._loop.is_closed():
            return False
        try:
            fileno = fileno_of(fd)
        except ValueError:
            return False
        watch = self._watches.get(fileno)
        if watch is None:
            return False
        callbacks = _callbacks(watch)
        old = callbacks[which]
        if old is None:
            return False
        old.cancel()
        callbacks[which] = None
        interest = watch.interest & ~_EVENT[which]
        polls = self._polls()
        if interest:
            polls.modify(watch, interest)
        else:
            del self._watches[fileno]
            if not polls.closed:
                polls.remove(watch)
        return True

    def schedule_ready(self, polls: PollSet, schedule: Callable[[asyncio.Handle], None]) -> None:
        """Schedule the handles of the sockets ``polls`` found ready this turn."""
        ready, polls.ready = polls.ready, []
        for watch, events in ready:
            if watch.removed:
                continue
            callbacks = _callbacks(watch)
            for which in (READER, WRITER):
                handle = callbacks[which]
                if handle is not None and events & _EVENT[which] and not handle.cancelled():
                    schedule(handle)

    def clear(self) -> None:
        """Forget every reader and writer (the loop is closing; its proactor's ``PollSet``
        cancels the polls)."""
        for watch in self._watches.values():
            for handle in _callbacks(watch):
                if handle is not None:
                    handle.cancel()
        self._watches.clear()


_EVENT = (EVENT_READ, EVENT_WRITE)


def _callbacks(watch: Watch) -> list[asyncio.Handle | None]:
    callbacks: list[asyncio.Handle | None] = watch.data  # type: ignore[assignment]
    return callbacks
