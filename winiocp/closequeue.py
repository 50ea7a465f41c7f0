"""The close queue (rule 4): connections that started closing, each with a deadline.

A graceful close waits for the peer, and a peer may never answer. Every closing connection is
put here with a deadline; the dequeue loop asks how long it may wait (``seconds_until_next``)
and, after each wait, takes what has expired (``expired``) to force-close it. No timer thread,
no thread per connection.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class CloseQueue(Generic[T]):
    """A deadline-ordered set of items. Thread-safe."""

    def __init__(self, timeout: float = 5.0) -> None:
        if not timeout > 0:
            raise ValueError(f"close timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self._heap: list[tuple[float, int, T]] = []
        self._members: dict[int, T] = {}  # id(item) -> item; removal is lazy in the heap
        self._order = itertools.count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._members)

    def add(self, item: T, now: float | None = None) -> float:
        """Track ``item`` until ``now + timeout``; return that deadline."""
        deadline = (time.monotonic() if now is None else now) + self.timeout
        with self._lock:
            self._members[id(item)] = item
            heapq.heappush(self._heap, (deadline, next(self._order), item))
        return deadline

    def discard(self, item: T) -> None:
        """``item`` finished closing: forget it (its heap entry is skipped later)."""
        with self._lock:
            self._members.pop(id(item), None)

    def seconds_until_next(self, now: float | None = None) -> float | None:
        """How long until the nearest deadline (0 if one passed); None if the queue is empty."""
        if not self._heap:  # the common case, checked without the lock
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._heap and id(self._heap[0][2]) not in self._members:
                heapq.heappop(self._heap)
            if not self._heap:
                return None
            return max(0.0, self._heap[0][0] - now)

    def expired(self, now: float | None = None) -> list[T]:
        """Remove and return every item whose deadline has passed."""
        if not self._heap:
            return []
        now = time.monotonic() if now is None else now
        due: list[T] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                _, _, item = heapq.heappop(self._heap)
                if self._members.pop(id(item), None) is not None:
                    due.append(item)
        return due
