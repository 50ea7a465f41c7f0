"""``CloseQueue``, the deadline queue behind the close queue, idle deadlines and accept
back-offs: order, removal that keeps nothing alive, a heap bounded by what is live, and the
``queued`` view the manager's loop tests every turn."""

from __future__ import annotations

import gc
import weakref

import pytest

from winiocp.closequeue import CloseQueue


class Item:
    """Something to queue (weakly referenceable, hashed by identity)."""


def test_expired_hands_out_only_what_is_due_earliest_first() -> None:
    queue: CloseQueue[Item] = CloseQueue(5.0)
    late, early, middle = Item(), Item(), Item()
    queue.add(late, now=0.0, delay=3.0)
    queue.add(early, now=0.0, delay=1.0)
    queue.add(middle, now=0.0, delay=2.0)
    assert queue.seconds_until_next(now=0.5) == pytest.approx(0.5)
    assert queue.expired(now=2.0) == [early, middle]
    assert queue.expired(now=2.5) == []
    assert len(queue) == 1 and late in queue
    assert queue.seconds_until_next(now=4.0) == 0.0


def test_adding_again_replaces_the_deadline() -> None:
    queue: CloseQueue[Item] = CloseQueue(5.0)
    item = Item()
    queue.add(item, now=0.0, delay=1.0)
    queue.add(item, now=0.0, delay=10.0)
    assert queue.expired(now=5.0) == []
    assert queue.expired(now=10.0) == [item]


def test_a_discarded_item_is_not_kept_alive() -> None:
    queue: CloseQueue[Item] = CloseQueue(5.0)
    item = Item()
    alive = weakref.ref(item)
    queue.add(item, now=0.0)
    queue.discard(item)
    del item
    gc.collect()
    assert alive() is None, "the queue kept a discarded item alive"
    assert queue.seconds_until_next(now=0.0) is None


def test_the_heap_stays_bounded_by_what_is_live() -> None:
    """Items that leave early leave stale heap pairs behind; those are dropped once they
    outnumber the live ones, whatever the order of deadlines and removals."""
    queue: CloseQueue[Item] = CloseQueue(5.0)
    kept = [Item() for _ in range(10)]
    for item in kept:
        queue.add(item, now=0.0)
    for round_ in range(10_000):  # short-lived items, each re-added once before it leaves
        item = Item()
        queue.add(item, now=float(round_))
        queue.add(item, now=float(round_) + 0.5)
        queue.discard(item)
    assert len(queue) == len(kept)
    assert queue.heap_size <= 2 * len(queue) + 64


def test_queued_is_a_live_read_only_view() -> None:
    queue: CloseQueue[Item] = CloseQueue(5.0)
    view = queue.queued
    assert not view
    item = Item()
    queue.add(item, now=0.0)
    assert view and list(view.values()) == [item]
    with pytest.raises(TypeError):
        view[0] = item  # type: ignore[index]
    assert queue.expired(now=10.0) == [item]
    assert not view


def test_a_timeout_that_is_not_positive_is_refused() -> None:
    for timeout in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            CloseQueue(timeout)
