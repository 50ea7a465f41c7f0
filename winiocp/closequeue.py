"""Deadline queues: the close queue (rule 4), the idle deadlines and the accept back-off.

A graceful close waits for the peer, and a peer may never answer. Every closing connection is
put in a queue with a deadline; the dequeue loop asks how long it may wait
(``seconds_until_next``) and, after each wait, takes what has expired (``expired``) to
force-close it. No timer thread, no thread per connection.

Items leave early all the time (a connection that finished closing, or closed while idle), so
removal must not keep them alive. The heap holds only ``(deadline, ticket)`` pairs; the item
itself sits in a dict by ticket and leaves it at once on ``discard``. Stale heap pairs are
skipped when they reach the top, and the heap is rebuilt from the live tickets whenever stale
pairs outnumber live ones: memory stays proportional to what is live, whatever the order in
which deadlines and removals come.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

T = TypeVar("T")

#: Stale heap pairs tolerated beyond the live count before the heap is rebuilt.
_SLACK = 64


class CloseQueue(Generic[T]):
    """A deadline-ordered set of items; each item is in it at most once. Thread-safe."""

    def __init__(self, timeout: float = 5.0) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        #: The delay ``add`` uses when it is given none.
        self.timeout = timeout
        self._heap: list[tuple[float, int]] = []  # (deadline, ticket)
        self._items: dict[int, T] = {}  # ticket -> item, only while it is queued
        #: The queued items by ticket, read-only and live: its truth value says whether
        #: anything is queued at the cost of a C call (``len(queue)`` is a Python frame), for
        #: a loop that checks its queues every turn.
        self.queued: Mapping[int, T] = MappingProxyType(self._items)
        self._tickets: dict[int, int] = {}  # id(item) -> its current ticket
        self._next_ticket = itertools.count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return id(item) in self._tickets

    @property
    def heap_size(self) -> int:
        """Heap pairs, live and stale (bounded by twice the live count plus a constant)."""
        return len(self._heap)

    def add(self, item: T, now: float | None = None, delay: float | None = None) -> float:
        """Track ``item`` until ``now + delay`` (default: ``timeout``), replacing any deadline
        it had; return the new deadline."""
        deadline = ((time.monotonic() if now is None else now)
                    + (self.timeout if delay is None else delay))
        with self._lock:
            self._forget(item)
            ticket = next(self._next_ticket)
            self._tickets[id(item)] = ticket
            self._items[ticket] = item
            heapq.heappush(self._heap, (deadline, ticket))
            self._compact()
        return deadline

    def discard(self, item: T) -> None:
        """``item`` is done: forget it now (no reference to it is kept)."""
        if not self._items:
            return
        with self._lock:
            self._forget(item)
            self._compact()

    def _forget(self, item: object) -> None:
        ticket = self._tickets.pop(id(item), None)
        if ticket is not None:
            del self._items[ticket]

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self._items) + _SLACK:
            self._heap = [pair for pair in self._heap if pair[1] in self._items]
            heapq.heapify(self._heap)

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and heap[0][1] not in self._items:
            heapq.heappop(heap)

    def seconds_until_next(self, now: float | None = None) -> float | None:
        """How long until the nearest deadline (0 if one passed); None if the queue is empty."""
        if not self._items:  # the common case, checked without the lock
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            self._drop_stale_top()
            if not self._heap:
                return None
            return max(0.0, self._heap[0][0] - now)

    def expired(self, now: float | None = None) -> list[T]:
        """Remove and return every item whose deadline has passed, earliest first."""
        if not self._items:
            return []
        now = time.monotonic() if now is None else now
        due: list[T] = []
        with self._lock:
            heap = self._heap
            while heap and heap[0][0] <= now:
                _, ticket = heapq.heappop(heap)
                item = self._items.pop(ticket, None)
                if item is not None:
                    del self._tickets[id(item)]
                    due.append(item)
        return due
