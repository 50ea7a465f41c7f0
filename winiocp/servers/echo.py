"""The echo handler: every byte received is sent back, zero-copy.

Flow control: a peer that sends but does not read would make the echoes pile up as pending
sends. When the connection's write buffer passes its high-water mark the handler stops reading
(no receive pending: the peer's sends then block in its own TCP window), and reads again once
the echoes have drained to the low-water mark.
"""

from __future__ import annotations

from ..connections import CloseReason, Connection, State


class EchoHandler:
    """Sends every received byte back on the same connection.

    Stateless: one instance could serve every connection, but ``Server`` makes one per
    connection (``handler_factory``). It owns nothing; each echo is a send operation that the
    connection owns until its completion is dequeued.
    """

    def data_received(self, connection: Connection, data: bytes) -> None:
        """Send ``data`` back, unless the connection is already closing (then drop it)."""
        if connection.state is State.OPEN:  # after close() (e.g. server stop) no more sends
            connection.send(data)

    def eof_received(self, connection: Connection) -> None:
        """The peer closed its side: nothing to do, the connection closes itself."""
        pass  # the connection closes itself once our echoes are sent

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        """The connection ended (any ``reason``): the handler keeps no state to release."""

    def pause_writing(self, connection: Connection) -> None:
        """Echoes are piling up (above the high-water mark): stop reading from the peer."""
        connection.pause_reading()

    def resume_writing(self, connection: Connection) -> None:
        """The echoes drained to the low-water mark: read again."""
        connection.resume_reading()
