"""``AfdSelector``: a ``selectors`` selector for Windows with no cap on the number of sockets.

The standard library's only selector on Windows is ``SelectSelector``, whose ``select()``
refuses more than 512 sockets per set ("too many file descriptors in select()") and scans
every registered socket on every call. ``AfdSelector`` keeps the ``selectors.BaseSelector``
contract (register / modify / unregister / select / get_map / close, level-triggered like
``select()``), with each socket watched by an AFD poll completing on a completion port of
its own (``winiocp.readiness``): a call costs what is ready, not what is registered.

Use it wherever a selector is taken: ``asyncio.SelectorEventLoop(AfdSelector())`` (or
``winiocp.aio.SelectorEventLoop``, which does that), ``selectors``-based servers, tornado's
and pyzmq's selector loops. Only sockets can be registered (as with ``select()`` on Windows).
"""

from __future__ import annotations

import math
import selectors
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from .port import CompletionPort
from .readiness import EVENT_READ, EVENT_WRITE, PollSet, Watch, fileno_of, still_open

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike
# How long close() waits for the cancelled polls' completions before leaving their memory to
# the port's orphan list (cancelling a poll completes it at once on Windows and Wine).
_CLOSE_WAIT_SECONDS = 5.0


def _check_events(events: int) -> None:
    if not isinstance(events, int) or not events or events & ~(EVENT_READ | EVENT_WRITE):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"Invalid events: {events!r}")


class _KeyMap(Mapping["FileDescriptorLike", selectors.SelectorKey]):
    """``get_map()``: file object (or descriptor) -> key, as selectors' own mapping does."""

    def __init__(self, selector: AfdSelector) -> None:
        self._selector = selector

    def __len__(self) -> int:
        return len(self._selector._keys)  # pyright: ignore[reportPrivateUsage]

    def __getitem__(self, fileobj: object) -> selectors.SelectorKey:
        fd = self._selector._lookup(fileobj)  # pyright: ignore[reportPrivateUsage]
        try:
            return self._selector._keys[fd][0]  # pyright: ignore[reportPrivateUsage]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Iterator[FileDescriptorLike]:
        return iter(self._selector._keys)  # pyright: ignore[reportPrivateUsage]


class AfdSelector(selectors.BaseSelector):
    """A selector whose sockets are watched by AFD polls on a completion port of its own.

    Level-triggered, like ``select()``: a socket is reported on every ``select()`` while it
    is ready. Unregister a socket before closing it (as with every selector). A socket
    object closed while registered reports nothing more; a bare descriptor's value must not
    be reused by a new socket while the old registration stands.
    """

    def __init__(self, polls: PollSet | None = None,
                 wait: Callable[[float | None], object] | None = None) -> None:
        """A selector on a completion port of its own; or, given ``polls`` and ``wait``, on
        ``polls``'s port, shared with whoever owns it: ``wait(timeout)`` then waits on the
        port and routes every completion dequeued (the polls' to their watches), as
        ``winiocp.aio.SelectorEventLoop`` does with its proactor's ``select``."""
        self._closed = False
        self._own_port: CompletionPort | None = None
        if polls is None:
            if wait is not None:
                raise TypeError("wait is for a shared PollSet: give polls too")
            self._own_port = CompletionPort()
            polls = PollSet(self._own_port)
            wait = self._wait
        elif wait is None:
            raise TypeError("a shared PollSet needs the wait that routes its port's completions")
        self._polls: PollSet = polls
        self._wait_for = wait
        self._keys: dict[int, tuple[selectors.SelectorKey, Watch]] = {}
        self._map = _KeyMap(self)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {len(self._keys)} registered"
                f"{' closed' if self._closed else ''}>")

    def _lookup(self, fileobj: object) -> int:
        try:
            return fileno_of(fileobj)
        except ValueError:
            # A closed socket object: find it among the registered ones, as selectors do.
            for key, _ in self._keys.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the selector is closed")

    def _wait(self, timeout: float | None) -> None:
        """Wait on the selector's own port; route the polls' completions to their watches."""
        port = self._own_port
        if port is None:
            raise RuntimeError("the selector is closed")
        completions = port.get_many(timeout)
        while completions:
            for completion in completions:
                operation = completion.operation
                if operation is not None and isinstance(operation.context, Watch):
                    operation.context(completion)
            if len(completions) < port.batch_size:
                break
            completions = port.get_many(0)

    def register(self, fileobj: FileDescriptorLike, events: int, data: object = None
                 ) -> selectors.SelectorKey:
        """Register a socket (an int or an object with ``fileno()``) for ``events``
        (EVENT_READ | EVENT_WRITE). Raises ``ValueError`` for bad events or file object,
        ``KeyError`` if it is already registered, ``OSError`` if it is not a socket."""
        self._check_open()
        _check_events(events)
        fd = fileno_of(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        watch = self._polls.add(fd, events, key, still_open(fileobj, fd))
        self._keys[fd] = (key, watch)
        return key

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        """Stop watching ``fileobj`` (it may be closed already); its key. ``KeyError`` if it
        is not registered."""
        fd = self._lookup(fileobj)
        try:
            key, watch = self._keys.pop(fd)
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if not self._polls.closed:
            self._polls.remove(watch)
        return key

    def modify(self, fileobj: FileDescriptorLike, events: int, data: object = None
               ) -> selectors.SelectorKey:
        """Change the events (and data) of a registered socket; its new key."""
        fd = self._lookup(fileobj)
        try:
            key, watch = self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        _check_events(events)
        if events == key.events and data is key.data:
            return key
        key = key._replace(events=events, data=data)
        watch.data = key
        if events != watch.interest:
            self._polls.modify(watch, events)
        self._keys[fd] = (key, watch)
        return key

    def select(self, timeout: float | None = None
               ) -> list[tuple[selectors.SelectorKey, int]]:
        """The registered sockets that are ready, with their ready events; waits up to
        ``timeout`` seconds (None: until one is; <= 0: not at all) for the first."""
        self._check_open()
        polls = self._polls
        if timeout is None:
            deadline = math.inf
        else:
            deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            polls.arm()
            wait = deadline - time.monotonic()
            if wait == math.inf:
                wait_s: float | None = None
            else:
                wait_s = max(wait, 0.0)
            self._wait_for(wait_s)
            # On a shared port other completions came too, and their owner must see them
            # now: one wait. On its own port the selector waits on until a socket is ready.
            if (polls.ready or self._own_port is None or wait_s == 0.0
                    or (wait_s is not None and time.monotonic() >= deadline)):
                break
        ready, polls.ready = polls.ready, []
        result: list[tuple[selectors.SelectorKey, int]] = []
        for watch, events in ready:
            key = watch.data
            if isinstance(key, selectors.SelectorKey) and not watch.removed:
                result.append((key, events & key.events))
        return result

    def close(self) -> None:
        """Unregister everything and release the port (idempotent). Polls still pending are
        cancelled, and their memory kept until their completions are dequeued."""
        if self._closed:
            return
        self._closed = True
        port, self._own_port = self._own_port, None
        if port is None:  # a shared PollSet: its owner closes it
            for _, watch in self._keys.values():
                if not self._polls.closed:
                    self._polls.remove(watch)
            self._keys.clear()
            return
        self._keys.clear()
        self._polls.close()
        deadline = time.monotonic() + _CLOSE_WAIT_SECONDS
        while port.pending_count and time.monotonic() < deadline:
            port.get_many(min(0.1, max(deadline - time.monotonic(), 0.0)))
        port.close()

    def get_key(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        """The key of a registered file object; ``KeyError`` if it is not registered,
        ``RuntimeError`` once the selector is closed."""
        self._check_open()
        return self._map[fileobj]

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        """The registered file objects' keys (a read-only view)."""
        return self._map

