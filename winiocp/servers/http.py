"""A minimal HTTP/1.1 handler: a fixed response, keep-alive, pipelining, hard limits.

Enough HTTP for load generators (curl, ApacheBench, wrk) and for showing the connection layer
under real clients: requests are framed by the blank line and ``Content-Length``; header
fields are parsed by the stdlib (``http.client.parse_headers``). Malformed requests get 400,
oversized heads 431, bodies with Transfer-Encoding 501 — and the connection is closed after
any error. ``Connection: close`` (or HTTP/1.0 without keep-alive) closes after the response.
Idle connections are closed by the server's idle deadline (``Server(idle_timeout=...)``).
"""

from __future__ import annotations

import io
from email.errors import MessageError
from http import HTTPStatus
from http.client import HTTPException, parse_headers

from ..connections import CloseReason, Connection, State

#: The longest request head (request line and header fields) served; longer gets 431.
MAX_HEAD_BYTES = 16 * 1024
#: The longest ``Content-Length`` accepted; longer gets 413.
MAX_BODY_BYTES = 1024 * 1024
#: The default response body.
BODY = b"Hello from winiocp\n"
_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"})


class BadRequest(Exception):
    """A request the handler refuses: answered with ``status``, then the connection closes."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status: HTTPStatus = status


def response(status: HTTPStatus, body: bytes, keep_alive: bool, head_only: bool = False) -> bytes:
    """The bytes of one HTTP/1.1 response (only its head when ``head_only``, as for HEAD)."""
    head = (f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode("ascii") + (b"" if head_only else body)


class HttpHandler:
    """Serves ``body`` (``BODY`` by default) to every well-formed request of one connection.

    One instance per connection (``Server(HttpHandler)`` calls the class for each). It owns
    the request bytes received but not yet answered; each batch of responses is one send,
    owned by the connection until its completion is dequeued. Bad requests are answered (400,
    413, 431, 501) and the connection is closed after the answer; nothing is raised.
    """

    def __init__(self, body: bytes = BODY) -> None:
        #: The response body every request gets.
        self.body: bytes = body
        #: Received bytes not yet framed into a request.
        self.buffer: bytearray = bytearray()
        #: Well-formed requests answered so far.
        self.requests: int = 0
        #: No more requests will be served: after an error or a non-keep-alive request.
        self.closing: bool = False

    def data_received(self, connection: Connection, data: bytes) -> None:
        """Frame and answer every complete request in the bytes so far (pipelining: all the
        answers leave in one send); on a bad request, answer it and close the connection."""
        if self.closing or connection.state is not State.OPEN:
            return  # after an error, `Connection: close` or an idle close: ignore the rest
        self.buffer += data
        replies: list[bytes] = []
        try:
            while not self.closing:
                reply = self._next_request()
                if reply is None:
                    break
                replies.append(reply)
        except BadRequest as error:
            replies.append(response(error.status, error.status.phrase.encode() + b"\n", False))
            self.closing = True
        if replies:
            connection.send(b"".join(replies))  # pipelined answers leave in one send
        if self.closing:
            connection.close()

    def _next_request(self) -> bytes | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return None
        if end > MAX_HEAD_BYTES:
            raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        line, _, header_block = bytes(self.buffer[:end + 4]).partition(b"\r\n")
        parts = line.split(b" ")
        if len(parts) != 3 or parts[0] not in _METHODS or not parts[1].startswith(b"/") \
                or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise BadRequest(HTTPStatus.BAD_REQUEST)
        try:
            headers = parse_headers(io.BytesIO(header_block))
        except (HTTPException, MessageError, UnicodeDecodeError) as exc:
            raise BadRequest(HTTPStatus.BAD_REQUEST) from exc
        if headers.defects:
            raise BadRequest(HTTPStatus.BAD_REQUEST)
        if headers.get("Transfer-Encoding") is not None:
            raise BadRequest(HTTPStatus.NOT_IMPLEMENTED)
        length_text = headers.get("Content-Length", "0").strip()
        if not (length_text.isascii() and length_text.isdigit()) or len(headers.get_all("Content-Length") or []) > 1:
            raise BadRequest(HTTPStatus.BAD_REQUEST)
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        if len(self.buffer) < end + 4 + length:
            return None  # the body is still coming
        del self.buffer[:end + 4 + length]
        connection_header = headers.get("Connection", "").lower()
        if parts[2] == b"HTTP/1.0":
            keep_alive = "keep-alive" in connection_header
        else:
            keep_alive = "close" not in connection_header
        self.requests += 1
        if not keep_alive:
            self.closing = True
        return response(HTTPStatus.OK, self.body, keep_alive, head_only=parts[0] == b"HEAD")

    def eof_received(self, connection: Connection) -> None:
        """The client closed its side: the connection closes once the answers are sent."""

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        """The connection ended: drop any unanswered request bytes."""
        self.buffer.clear()

    def pause_writing(self, connection: Connection) -> None:
        """A pipelining client that does not read its responses: stop reading requests."""
        connection.pause_reading()

    def resume_writing(self, connection: Connection) -> None:
        """The client read its responses (the buffer drained): read requests again."""
        connection.resume_reading()
