"""The echo handler: every byte received is sent back, zero-copy."""

from __future__ import annotations

from ..connections import CloseReason, Connection, State


class EchoHandler:
    """Sends every received byte back on the same connection."""

    def data_received(self, connection: Connection, data: bytes) -> None:
        if connection.state is State.OPEN:  # after close() (e.g. server stop) no more sends
            connection.send(data)

    def eof_received(self, connection: Connection) -> None:
        pass  # the connection closes itself once our echoes are sent

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        pass
