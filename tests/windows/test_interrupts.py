"""Ctrl-C right after a dequeue returns must not lose what it dequeued.

Python raises KeyboardInterrupt at the first bytecode boundary after a C call returns; if that
call was GetQueuedCompletionStatus(Ex), the packets it took are gone from the port. Seen in
CPython's test_asyncio (``ProactorLoopCtrlC.test_ctrl_c``): the self-pipe receive's completion
was lost, so closing the loop waited for an operation that had long completed. The dequeue now
keeps such packets for the next call. The interrupt is injected by a kernel32 stand-in that
makes the real call, then raises.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

import winiocp.port
import winiocp.raw
from winiocp import CompletionPort, Outcome, Socket

WAIT = 10.0


class InterruptAfter:
    """``kernel32`` whose dequeue functions raise KeyboardInterrupt once they returned."""

    def __init__(self, real: object) -> None:
        self._real = real

    def GetQueuedCompletionStatus(self, *args: Any) -> int:  # noqa: N802 - the Win32 name
        self._real.GetQueuedCompletionStatus(*args)  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    def GetQueuedCompletionStatusEx(self, *args: Any) -> int:  # noqa: N802
        self._real.GetQueuedCompletionStatusEx(*args)  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("dequeue", ["get", "get_many"])
def test_an_interrupt_right_after_a_dequeue_keeps_its_completion(
        monkeypatch: pytest.MonkeyPatch, dequeue: str) -> None:
    with CompletionPort() as port, socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname(), timeout=WAIT)
        accepted, _ = listener.accept()
        sock = Socket.from_stdlib(accepted)
        try:
            port.associate(sock)
            receiving = sock.recv(100)
            peer.sendall(b"arrived")
            real = winiocp.raw.kernel32
            monkeypatch.setattr(winiocp.port, "kernel32", InterruptAfter(real))
            with pytest.raises(KeyboardInterrupt):
                if dequeue == "get":
                    port.get(WAIT)
                else:
                    port.get_many(WAIT)
            monkeypatch.setattr(winiocp.port, "kernel32", real)
            completions = [port.get(1.0)] if dequeue == "get" else port.get_many(1.0)
            assert [c.outcome for c in completions] == [Outcome.COMPLETED]
            assert completions[0].operation is receiving and receiving.data == b"arrived"
            assert port.pending_count == 0
        finally:
            sock.close()
            peer.close()
