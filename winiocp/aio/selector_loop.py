"""``SelectorEventLoop``: asyncio's selector loop on AFD polls, with subprocesses and pipes.

Some libraries refuse any ``ProactorEventLoop`` (psycopg 3) or start a ``select()`` thread
beside one (pyzmq, tornado): they want a selector loop. asyncio's own on Windows is capped at
512 sockets by ``select()`` and cannot run subprocesses or pipes (those need the proactor).
This one is asyncio's ``SelectorEventLoop`` with ``winiocp.selectors.AfdSelector`` as its
selector, sharing one completion port with an ``IocpProactor``: the selector's waits are the
proactor's, so one dequeue per loop turn serves the sockets' readiness (AFD polls) and the
proactor's operations, which carry what the selector loop lacks: subprocesses (their pipes
and their exit, a thread-pool wait posting to the port) and pipe transports, as on the
proactor loop. Sockets stay the selector loop's own (readiness, non-blocking calls).
"""

from __future__ import annotations

import asyncio
from asyncio import proactor_events, windows_events
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..selectors import AfdSelector
from .proactor import IocpProactor

if TYPE_CHECKING:
    import selectors


class SelectorEventLoop(asyncio.SelectorEventLoop):
    """``asyncio.SelectorEventLoop`` on ``AfdSelector`` (no cap on the number of sockets),
    with subprocesses and pipes served by an ``IocpProactor`` on the same port."""

    def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
        #: Serves the subprocesses and pipes; its port is the selector's.
        self._proactor: IocpProactor | None = None
        if selector is None:
            proactor = self._proactor = IocpProactor()
            selector = AfdSelector(proactor.polls, proactor.select)
        super().__init__(selector)
        if self._proactor is not None:
            self._proactor.set_loop(self)

    def _checked_proactor(self) -> IocpProactor:
        proactor = self._proactor
        if proactor is None:
            raise NotImplementedError(
                "subprocesses and pipes need the loop's own AfdSelector (none was given)")
        return proactor

    def _make_read_pipe_transport(self, pipe: object, protocol: asyncio.BaseProtocol,
                                  waiter: asyncio.Future[None] | None = None,
                                  extra: dict[str, object] | None = None
                                  ) -> asyncio.ReadTransport:
        self._checked_proactor()
        make = cast("Callable[..., asyncio.ReadTransport]",
                    proactor_events._ProactorReadPipeTransport)  # pyright: ignore[reportPrivateUsage]
        return make(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe: object, protocol: asyncio.BaseProtocol,
                                   waiter: asyncio.Future[None] | None = None,
                                   extra: dict[str, object] | None = None
                                   ) -> asyncio.WriteTransport:
        self._checked_proactor()
        make = cast("Callable[..., asyncio.WriteTransport]",
                    proactor_events._ProactorWritePipeTransport)  # pyright: ignore[reportPrivateUsage]
        return make(self, pipe, protocol, waiter, extra)

    async def _make_subprocess_transport(
            self, protocol: asyncio.BaseProtocol, args: object, shell: bool, stdin: object,
            stdout: object, stderr: object, bufsize: int,
            extra: dict[str, object] | None = None, **kwargs: object
    ) -> asyncio.SubprocessTransport:
        """The proactor loop's subprocess transport (its pipes and its exit wait go through
        the proactor), on this loop."""
        self._checked_proactor()
        started = self.create_future()
        make = cast("Callable[..., asyncio.SubprocessTransport]",
                    windows_events._WindowsSubprocessTransport)  # type: ignore[attr-defined]
        transport = make(self, protocol, args, shell, stdin, stdout, stderr, bufsize,
                         waiter=started, extra=extra, **kwargs)
        try:
            await started
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await cast("Callable[[], asyncio.Future[object]]",
                       transport._wait)()  # type: ignore[attr-defined]
            raise
        return transport

    def close(self) -> None:
        """Close the loop, then its proactor (cancelling what is still pending and waiting
        for those completions: their memory is never freed early)."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        try:
            super().close()
        finally:
            proactor, self._proactor = self._proactor, None
            if proactor is not None:
                proactor.close()


def new_selector_event_loop() -> SelectorEventLoop:
    """A new ``SelectorEventLoop`` (a loop factory, as ``new_event_loop`` is)."""
    return SelectorEventLoop()


