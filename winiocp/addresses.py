"""Socket addresses: stdlib-style tuples to ``struct sockaddr`` bytes and back.

Winsock wants and returns raw ``sockaddr_in`` / ``sockaddr_in6`` structures; Python code wants
``(host, port)`` and ``(host, port, flowinfo, scope_id)`` tuples, as the ``socket`` module uses.
Name resolution and text conversion are the stdlib's (``getaddrinfo``, ``inet_pton``,
``inet_ntop``); this module only lays out the bytes.

A literal address (``"127.0.0.1"``, ``"::1"``, ``""`` for the wildcard) is parsed with
``inet_pton`` and never reaches ``getaddrinfo``: a sendto per datagram must not cost a
resolver call, nor block on DNS. Only what is not a literal (a host name, an IPv6 address
with a ``%zone``, an IPv4 shorthand) is resolved.
"""

from __future__ import annotations

import socket
import struct

from ._cdata import CData
from .constants import AddressFamily
from .raw import ffi

Address = tuple[str, int] | tuple[str, int, int, int]

SOCKADDR_STORAGE_SIZE = 128
_IN4 = struct.Struct("<H2s4s8x")
_IN6 = struct.Struct("<H2s4s16sI")


def _port_bytes(port: int) -> bytes:
    if not 0 <= port <= 0xFFFF:
        raise OverflowError(f"port must be 0-65535, not {port}")
    return port.to_bytes(2, "big")


def encode(family: int, address: tuple[object, ...]) -> bytes:
    """``address`` (a stdlib-style tuple) as the bytes of a sockaddr for ``family``.

    Literal addresses are parsed; host names are resolved with ``socket.getaddrinfo``.
    Raises ``TypeError`` for a malformed tuple, ``ValueError`` for a family other than
    AF_INET/AF_INET6, ``OverflowError`` for a port outside 0-65535, and ``socket.gaierror``
    for a name that does not resolve.
    """
    # Checked at run time too: untyped callers pass anything.
    if (not isinstance(address, tuple)  # pyright: ignore[reportUnnecessaryIsInstance]
            or len(address) < 2):
        raise TypeError(f"address must be a (host, port) tuple, not {address!r}")
    host, port = address[0], address[1]
    if not isinstance(host, str) or not isinstance(port, int):
        raise TypeError(f"address must be (str, int), not {address!r}")
    if family == AddressFamily.AF_INET:
        stdlib_family = socket.AF_INET
    elif family == AddressFamily.AF_INET6:
        stdlib_family = socket.AF_INET6
    else:
        raise ValueError(f"unsupported address family {family}")
    if host == "":  # as in the socket module: the wildcard address
        host = "0.0.0.0" if family == AddressFamily.AF_INET else "::"
    resolved_scope = 0
    try:
        packed = socket.inet_pton(stdlib_family, host)
    except (OSError, ValueError):  # not a literal of this family: resolve it
        resolved = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4]
        packed = socket.inet_pton(stdlib_family, str(resolved[0]).split("%")[0])
        resolved_scope = int(resolved[3]) if len(resolved) > 3 else 0
    if family == AddressFamily.AF_INET:
        return _IN4.pack(family, _port_bytes(port), packed)
    flowinfo = address[2] if len(address) > 2 else 0
    scope_id = address[3] if len(address) > 3 else resolved_scope
    if not isinstance(flowinfo, int) or not isinstance(scope_id, int):
        raise TypeError(f"flowinfo and scope_id must be int: {address!r}")
    return _IN6.pack(family, _port_bytes(port), flowinfo.to_bytes(4, "big"), packed, scope_id)


class Sockaddr:
    """A ``struct sockaddr`` in cffi-owned memory; keep this object alive while Winsock
    may read ``pointer`` (a cast pointer does not keep its memory alive by itself).

    ``storage`` owns the memory, ``pointer`` is it cast to ``struct sockaddr *`` and
    ``length`` the size of the encoded address. Raises as ``encode`` does.
    """

    __slots__ = ("storage", "pointer", "length")

    def __init__(self, family: int, address: tuple[object, ...]) -> None:
        data = encode(family, address)
        self.storage: CData = ffi.new("struct sockaddr_storage *")
        ffi.memmove(self.storage, data, len(data))
        self.pointer: CData = ffi.cast("struct sockaddr *", self.storage)
        self.length: int = len(data)


def decode(raw: bytes) -> Address:
    """Parse the bytes of a sockaddr_in or sockaddr_in6 into a stdlib-style tuple.

    ``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6; raises
    ``ValueError`` for too few bytes or another family.
    """
    if len(raw) < 2:
        raise ValueError("sockaddr too short")
    family = int.from_bytes(raw[:2], "little")
    if family == AddressFamily.AF_INET and len(raw) >= _IN4.size:
        _, port, host = _IN4.unpack_from(raw)[:3]
        return socket.inet_ntop(socket.AF_INET, host), int.from_bytes(port, "big")
    if family == AddressFamily.AF_INET6 and len(raw) >= _IN6.size:
        _, port, flowinfo, host, scope_id = _IN6.unpack_from(raw)
        return (socket.inet_ntop(socket.AF_INET6, host), int.from_bytes(port, "big"),
                int.from_bytes(flowinfo, "big"), scope_id)
    raise ValueError(f"unsupported sockaddr family {family} ({len(raw)} bytes)")


def decode_cdata(pointer: CData, length: int) -> Address:
    """``decode`` of the ``length`` bytes at ``pointer`` (copied out: the result owns nothing)."""
    return decode(ffi.buffer(pointer, length)[:])
