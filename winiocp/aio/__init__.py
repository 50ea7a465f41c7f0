"""``winiocp.aio``: asyncio's Windows event loop on winiocp.

``IocpProactor`` is a drop-in for ``asyncio.windows_events.IocpProactor``; ``EventLoop`` is
``asyncio.ProactorEventLoop`` using it::

    import winiocp.aio
    winiocp.aio.run(main())                                            # or
    asyncio.run(main(), loop_factory=winiocp.aio.new_event_loop)      # 3.12+, or
    winiocp.aio.install()                                             # every new loop

Rebinding ``asyncio.windows_events.IocpProactor = winiocp.aio.IocpProactor`` makes every
``asyncio.ProactorEventLoop()`` (and so ``asyncio.run``) use it.
"""

from .loop import (
    EventLoop,
    EventLoopPolicy,
    install,
    new_event_loop,
    run,
)
from .selector_loop import SelectorEventLoop, new_selector_event_loop
from .proactor import IocpProactor

__all__ = [
    "EventLoop", "EventLoopPolicy", "IocpProactor", "SelectorEventLoop", "install",
    "new_event_loop", "new_selector_event_loop", "run",
]
