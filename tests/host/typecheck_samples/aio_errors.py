"""Mistakes with ``winiocp.aio`` that both checkers must catch (never run).

Marked as in the other samples (tests/host/test_typecheck.py): ``# E:`` mypy's code, ``# P:``
pyright's rule. Unmarked lines are the correct forms, which both must accept.
"""

from __future__ import annotations

import asyncio

import winiocp.aio


async def main() -> int:
    await asyncio.sleep(0)
    return 1


answer: int = winiocp.aio.run(main(), debug=True)  # the result's type comes through
text: str = winiocp.aio.run(main())  # E: assignment  # P: reportAssignmentType
winiocp.aio.run(main)  # E: arg-type  # P: reportArgumentType
winiocp.aio.run(main(), debug="yes")  # E: arg-type  # P: reportArgumentType

loop = winiocp.aio.new_event_loop()
proactor_loop: asyncio.ProactorEventLoop = loop
selector_loop: asyncio.SelectorEventLoop = loop  # E: assignment  # P: reportAssignmentType
print(loop.run_until_complete(main()) + answer, proactor_loop, text, selector_loop)
loop.close()

policy: asyncio.DefaultEventLoopPolicy = winiocp.aio.EventLoopPolicy()
winiocp.aio.install()
winiocp.aio.install(winiocp.aio.EventLoop)  # E: call-arg  # P: reportCallIssue
