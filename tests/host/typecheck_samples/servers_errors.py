"""Mistakes with completions, handlers and servers that both checkers must catch (never run).

Marked as in the other samples (tests/host/test_typecheck.py): ``# E:`` mypy's code, ``# P:``
pyright's rule. Unmarked lines are the correct forms, which both must accept.
"""

from __future__ import annotations

from winiocp import CompletionPort, Outcome
from winiocp.connections import CloseReason, Connection
from winiocp.servers import EchoHandler, HttpHandler, Server

port = CompletionPort()
done = port.get(timeout=0)
# A posted packet or an unknown OVERLAPPED has no operation: it must be checked for None.
kind = done.operation.kind  # E: union-attr  # P: reportOptionalMemberAccess
if done.outcome == "completed":  # E: comparison-overlap  # P: reportUnnecessaryComparison
    print(kind)
if done.operation is not None and done.outcome is Outcome.COMPLETED:  # the right way
    print(done.operation.kind, done.operation.bytes_transferred)


class Upper:
    def data_received(self, connection: Connection, data: bytes) -> None:
        connection.send(data.decode().upper())  # E: arg-type  # P: reportArgumentType

    def eof_received(self, connection: Connection) -> None:
        connection.close()

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        pass


Server(Upper, "127.0.0.1", 0)
Server(EchoHandler(), "127.0.0.1", 0)  # E: arg-type  # P: reportArgumentType
HttpHandler(body="Hello")  # E: arg-type  # P: reportArgumentType
summary = Server(HttpHandler, "127.0.0.1", 0).serve(duration=0.1)
summary.connections = 0  # E: misc  # P: reportAttributeAccessIssue
requests: str = HttpHandler().requests  # E: assignment  # P: reportAssignmentType
print(summary.line())
