"""Waking the loop from other threads (``call_soon_threadsafe``) costs at most one packet in
flight, however many calls come while the loop is busy (``winiocp.port.Wakeup``, as libuv's
``uv_async_send``), and no wake-up is ever lost.

The stock loop sends one byte per call through a socket pair instead (bounded by the socket's
buffer: it drops the bytes that do not fit); the counts here are about ours only.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

import pytest

import winiocp.aio
from winiocp.port import CompletionPort, Outcome, Wakeup

WAIT = 30.0
CALLS = 20_000


def test_wakeup_posts_one_packet_for_many_wakes() -> None:
    """The core mechanism: many ``wake()`` calls from threads queue one packet; once it is
    consumed, the next ``wake()`` posts again."""
    with CompletionPort() as port:
        wakeup = Wakeup(port)

        def wake_many() -> None:
            for _ in range(CALLS // 4):
                wakeup.wake()

        threads = [threading.Thread(target=wake_many) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert wakeup.posted == 1 and wakeup.in_flight
        completions = port.get_many(0)
        assert [(c.outcome, c.key) for c in completions] == [(Outcome.POSTED, wakeup.key)]
        assert port.get_many(0) == []
        assert wakeup.consume(completions[0]) and not wakeup.in_flight
        assert wakeup.wake() and not wakeup.wake()
        assert wakeup.posted == 2
        assert wakeup.consume(port.get(0)) and not wakeup.in_flight
        port.post(wakeup.key + 1)  # someone else's packet is not ours
        assert not wakeup.consume(port.get(0))


def test_wakeup_after_the_port_closed_is_a_no_op() -> None:
    port = CompletionPort()
    wakeup = Wakeup(port)
    port.close()
    assert not wakeup.wake() and not wakeup.in_flight


def test_wakeup_loses_no_wake_up_under_a_race() -> None:
    """Producers publish work, then wake; the consumer consumes the packet, then reads the
    work. Whenever work is published, the consumer is woken for it: it never waits out a
    long timeout with work queued."""
    producers, items = 6, 500
    work: deque[int] = deque()
    with CompletionPort() as port:
        wakeup = Wakeup(port)

        def produce() -> None:
            for item in range(items):
                work.append(item)
                wakeup.wake()

        threads = [threading.Thread(target=produce) for _ in range(producers)]
        for thread in threads:
            thread.start()
        seen = 0
        while seen < producers * items:
            completion = port.get(WAIT)
            assert completion.outcome is Outcome.POSTED, (
                f"no wake-up within {WAIT} s with {len(work)} items queued: one was lost")
            assert wakeup.consume(completion)
            while work:
                work.popleft()
                seen += 1
        for thread in threads:
            thread.join(WAIT)


def test_call_soon_threadsafe_from_a_thread_posts_one_packet_while_the_loop_is_busy(
        ) -> None:
    """A thread calls ``call_soon_threadsafe`` many times while the loop is blocked in a
    callback: the port gets one wake-up packet, not one per call, and every callback runs."""
    loop = winiocp.aio.new_event_loop()
    proactor = loop.proactor
    assert proactor is not None
    port = proactor._port  # pyright: ignore[reportPrivateUsage]
    assert port is not None
    posts = 0
    post = port.post

    def counting_post(*args: Any, **kwargs: Any) -> None:
        nonlocal posts
        posts += 1
        post(*args, **kwargs)

    setattr(port, "post", counting_post)  # (an instance attribute: only this port's)
    ran = 0

    def callback() -> None:
        nonlocal ran
        ran += 1

    def call_many() -> None:
        for _ in range(CALLS):
            loop.call_soon_threadsafe(callback)

    async def main() -> None:
        await asyncio.sleep(0)
        caller = threading.Thread(target=call_many)
        caller.start()
        caller.join(WAIT)  # blocks the loop: every call comes while it is busy
        assert not caller.is_alive()
        while ran < CALLS:
            await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    finally:
        loop.close()
    assert ran == CALLS
    assert posts <= 2, f"{posts} packets posted for {CALLS} calls"


@pytest.mark.timeout(120)
def test_call_soon_threadsafe_never_waits_for_an_unrelated_event() -> None:
    """Many threads each schedule a callback and wait (bounded) for it to run, over and over,
    while the loop has nothing else to do: a lost wake-up would leave a callback waiting for
    an event that never comes."""
    threads, rounds = 6, 150
    loop = winiocp.aio.new_event_loop()
    failures: list[str] = []

    def worker(index: int) -> None:
        for turn in range(rounds):
            ran = threading.Event()
            loop.call_soon_threadsafe(ran.set)
            if not ran.wait(WAIT):
                failures.append(f"thread {index}, round {turn}: the callback never ran")
                return

    async def main() -> None:
        workers = [threading.Thread(target=worker, args=(index,)) for index in range(threads)]
        for thread in workers:
            thread.start()
        done = loop.create_future()

        def join() -> None:
            for thread in workers:
                thread.join(WAIT * 2)
            loop.call_soon_threadsafe(done.set_result, None)

        joiner = threading.Thread(target=join)
        joiner.start()
        await done  # the loop waits with no timer: only wake-ups bring it back
        joiner.join(WAIT)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert failures == []
