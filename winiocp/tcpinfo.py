"""A connection's TCP state, asked of its socket with SIO_TCP_INFO (Windows 10 1703+).

The close sequence of ``connections.py`` needs one fact it cannot see in its completions: who
sent the first FIN. The documented answer is the state of the connection itself.
``WSAIoctl(SIO_TCP_INFO)`` returns a ``TCP_INFO_v0`` whose ``State`` is the TCP state machine's
state (RFC 793): after both FINs have been exchanged, ``TCPSTATE_TIME_WAIT`` means our FIN went
first and the peer acknowledged it, ``TCPSTATE_LAST_ACK`` / ``TCPSTATE_CLOSED`` mean the peer's
came first. Where the control code is not supported (Windows before 1703, Wine), the answer is
``None``: the caller must then assume the unsafe case away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import SOCKET_ERROR, IoControl, TcpInfoState
from .raw import ffi, ws2_32

if TYPE_CHECKING:
    from .sockets import Socket

_TCP_INFO_SIZE = ffi.sizeof("TCP_INFO_v0")


def tcp_state(sock: Socket) -> TcpInfoState | None:
    """The TCP state of ``sock``'s connection, or None if it cannot be known.

    None when SIO_TCP_INFO is not supported, the socket is closed or not a connected TCP
    socket. Never raises for those: callers use it to choose between two safe actions.
    """
    version = ffi.new("DWORD *", 0)  # TCP_INFO_v0
    info = ffi.new("TCP_INFO_v0 *")
    returned = ffi.new("DWORD *")
    # The value is read and used under the socket's own lock (as Socket's methods do), so
    # close() cannot hand it to Windows for reuse meanwhile: friend access, one package.
    with sock._lock:  # pyright: ignore[reportPrivateUsage]
        handle = sock._handle  # pyright: ignore[reportPrivateUsage]
        if handle is None:
            return None
        result = ws2_32.WSAIoctl(handle, IoControl.SIO_TCP_INFO, version, ffi.sizeof("DWORD"),
                                 info, _TCP_INFO_SIZE, returned, ffi.NULL, ffi.NULL)
    if result == SOCKET_ERROR or returned[0] < ffi.sizeof("TCPSTATE"):
        return None
    try:
        return TcpInfoState(info.State)
    except ValueError:
        return None
