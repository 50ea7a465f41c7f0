"""The IPv4 TCP connection table (GetTcpTable2), to count sockets left in TIME_WAIT.

The TIME_WAIT avoidance of ``connections.py`` is judged by what the OS's own table says, read
through the binding rather than by parsing ``netstat``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from .constants import TcpState, WinError
from .errors import exception_for
from .raw import ffi, iphlpapi


@dataclass(frozen=True)
class TcpRow:
    """One row of the table: addresses as (host, port), ``pid`` the owning process."""

    #: The connection's TCP state (``TcpState.MIB_TCP_STATE_TIME_WAIT``, ...).
    state: TcpState
    #: The local address, ``(dotted IPv4, port)``.
    local: tuple[str, int]
    #: The remote address (``("0.0.0.0", 0)`` for a listening socket).
    remote: tuple[str, int]
    #: The owning process's id (0 for connections no process owns any more, as in TIME_WAIT).
    pid: int


def _endpoint(address: int, port: int) -> tuple[str, int]:
    # Both are in network byte order in the row; the port sits in the low 16 bits.
    return socket.inet_ntoa(address.to_bytes(4, "little")), socket.ntohs(port & 0xFFFF)


def tcp_table() -> list[TcpRow]:
    """Every IPv4 TCP connection the OS knows, with its state (a snapshot, unsorted).

    Rows whose state is not a known ``TcpState`` are skipped. Raises the ``OSError`` of the
    Windows error if GetTcpTable2 fails, and ``RuntimeError`` if the table keeps growing
    faster than it can be read. The table's memory is owned here and released on return.
    """
    size = ffi.new("ULONG *", 0)
    storage = ffi.new("char[]", 0)  # owns the table's memory; `table` is only a view of it
    table = ffi.NULL
    for _ in range(8):  # the table can grow between the size query and the read
        result = iphlpapi.GetTcpTable2(table, size, 0)
        if result == 0:
            break
        if result != WinError.ERROR_INSUFFICIENT_BUFFER:
            raise exception_for(result, "GetTcpTable2")
        storage = ffi.new("char[]", size[0] + 4096)
        size[0] = len(storage)
        table = ffi.cast("MIB_TCPTABLE2 *", storage)
    else:  # pragma: no cover
        raise RuntimeError("GetTcpTable2 kept growing")
    if table == ffi.NULL:
        return []
    rows: list[TcpRow] = []
    # `table` is declared with one row (as in the SDK); index past it through a plain pointer.
    first_row = ffi.cast("MIB_TCPROW2 *", table.table)
    for index in range(table.dwNumEntries):
        row = first_row[index]
        try:
            state = TcpState(row.dwState)
        except ValueError:
            continue
        rows.append(TcpRow(state, _endpoint(row.dwLocalAddr, row.dwLocalPort),
                           _endpoint(row.dwRemoteAddr, row.dwRemotePort), row.dwOwningPid))
    return rows


def count_state(state: TcpState, local_port: int) -> int:
    """How many connections whose local port is ``local_port`` are in ``state``.

    E.g. ``count_state(TcpState.MIB_TCP_STATE_TIME_WAIT, 8080)``: what a server on port 8080
    left behind.
    """
    return sum(1 for row in tcp_table() if row.state == state and row.local[1] == local_port)
