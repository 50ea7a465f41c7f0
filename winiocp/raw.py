"""The raw layer: cffi's ``ffi``, the loaded DLLs and the Winsock extension functions, typed.

Everything here is the C API as Windows defines it, callable from Python and checked by mypy
through the generated Protocols in ``_api.py``. Nothing here adds policy; the typed wrappers
(``port``, ``sockets``, ...) are built on it.

>>> from winiocp.raw import INVALID_HANDLE, ffi, kernel32
>>> port = kernel32.CreateIoCompletionPort(INVALID_HANDLE, ffi.NULL, 0, 0)
>>> port != ffi.NULL
True
>>> kernel32.CloseHandle(port)
1

The extension functions (AcceptEx, ConnectEx, ...) are not exported by any DLL: Winsock hands
out a pointer per provider through ``WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)``.
``extension_functions(sock)`` looks them up once per provider (keyed by the provider's catalog
entry) and caches them.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import cast

from . import _api
from ._cdata import CData, TypedFFI
from ._ffi import ffi as _ffi
from .constants import (
    GUIDS,
    MAKEWORD_2_2,
    SOCKET_ERROR,
    IoControl,
    SocketLevel,
    SocketOption,
)

#: cffi's ``FFI`` for every type in ``cdefs/*.h``: ``ffi.new("OVERLAPPED *")``, ``ffi.cast``, ...
ffi: TypedFFI = _ffi

#: kernel32.dll: completion ports, handles, files and pipes, ``GetLastError``.
kernel32: _api.Kernel32 = cast(_api.Kernel32, ffi.dlopen("kernel32.dll"))
#: ntdll.dll: ``RtlNtStatusToDosError`` (a batch entry's NTSTATUS to a Windows error).
ntdll: _api.Ntdll = cast(_api.Ntdll, ffi.dlopen("ntdll.dll"))
#: ws2_32.dll: Winsock, started (WSAStartup 2.2) when this module is imported.
ws2_32: _api.Ws2_32 = cast(_api.Ws2_32, ffi.dlopen("ws2_32.dll"))
#: iphlpapi.dll: the TCP table (``GetTcpTable2``).
iphlpapi: _api.Iphlpapi = cast(_api.Iphlpapi, ffi.dlopen("iphlpapi.dll"))

#: ``INVALID_HANDLE_VALUE`` as the pointer Windows returns (compare with ``==``).
INVALID_HANDLE: CData = ffi.cast("HANDLE", -1)


def _startup() -> None:
    data = ffi.new("WSADATA *")
    code = ws2_32.WSAStartup(MAKEWORD_2_2, data)
    if code != 0:
        raise OSError(0, f"WSAStartup failed (Winsock error {code})", None, code)


# Winsock keeps a reference count: this start-up lasts for the life of the process.
_startup()


def guid(value: uuid.UUID) -> CData:
    """A new ``GUID *`` holding ``value``; it owns its memory (keep it while it is used)."""
    return ffi.new(
        "GUID *",
        {
            "Data1": value.fields[0],
            "Data2": value.fields[1],
            "Data3": value.fields[2],
            "Data4": list(value.bytes[8:]),
        },
    )


@dataclass(frozen=True)
class ExtensionFunctions:
    """The Microsoft extension functions of one Winsock provider.

    Function pointers, called like the DLLs' functions; each returns a C ``BOOL`` (FALSE with
    ``WSAGetLastError() == WSA_IO_PENDING`` means the overlapped call started). They stay
    valid for the life of the process.
    """

    #: Accept a connection into a socket created beforehand, optionally with its first data.
    AcceptEx: _api.LPFN_ACCEPTEX
    #: Split the address buffer an AcceptEx filled into the local and remote addresses.
    GetAcceptExSockaddrs: _api.LPFN_GETACCEPTEXSOCKADDRS
    #: Connect a bound socket, overlapped, optionally sending data.
    ConnectEx: _api.LPFN_CONNECTEX
    #: Close a connection, optionally keeping the socket for reuse (TF_REUSE_SOCKET).
    DisconnectEx: _api.LPFN_DISCONNECTEX
    #: Send a file's contents (with optional head and tail buffers) on a connected socket.
    TransmitFile: _api.LPFN_TRANSMITFILE


_EXTENSIONS: dict[tuple[int, ...], ExtensionFunctions] = {}
_EXTENSIONS_LOCK = threading.Lock()


def provider_info(sock: int) -> CData:
    """``WSAPROTOCOL_INFOW *`` of the provider behind ``sock`` (getsockopt SO_PROTOCOL_INFOW).

    The result owns its memory. Raises ``OSError`` (with ``winerror``) if the call fails,
    e.g. WSAENOTSOCK for a value that is not an open socket.
    """
    info = ffi.new("WSAPROTOCOL_INFOW *")
    size = ffi.new("int *", ffi.sizeof("WSAPROTOCOL_INFOW"))
    buffer = ffi.cast("char *", info)
    if ws2_32.getsockopt(sock, SocketLevel.SOL_SOCKET, SocketOption.SO_PROTOCOL_INFOW, buffer,
                         size) == SOCKET_ERROR:
        code = ws2_32.WSAGetLastError()
        raise OSError(0, f"getsockopt(SO_PROTOCOL_INFOW) failed: {ffi.getwinerror(code)[1]}",
                      None, code)
    return info


def _lookup(sock: int, name: str) -> CData:
    pointer = ffi.new("void **")
    returned = ffi.new("DWORD *")
    wanted = guid(GUIDS["WSAID_" + name.upper()])
    if ws2_32.WSAIoctl(sock, IoControl.SIO_GET_EXTENSION_FUNCTION_POINTER, wanted,
                       ffi.sizeof("GUID"), pointer, ffi.sizeof("void *"), returned, ffi.NULL,
                       ffi.NULL) == SOCKET_ERROR:
        code = ws2_32.WSAGetLastError()
        raise OSError(0, f"WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER, {name}) failed: "
                      f"{ffi.getwinerror(code)[1]}", None, code)
    return ffi.cast("LPFN_" + name.upper(), pointer[0])


def extension_functions(sock: int) -> ExtensionFunctions:
    """The extension functions for ``sock``'s provider, looked up once per provider.

    Winsock hands them out per provider (``WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)``);
    the cache is keyed by the provider's catalog entry, family, type and protocol, so an IPv4
    and an IPv6 socket may get different pointers. Thread-safe. Raises ``OSError`` (with
    ``winerror``) when ``sock`` is not an open socket or its provider has no such function.
    """
    info = provider_info(sock)
    key = (info.dwCatalogEntryId, info.iAddressFamily, info.iSocketType, info.iProtocol)
    with _EXTENSIONS_LOCK:
        found = _EXTENSIONS.get(key)
        if found is None:
            found = ExtensionFunctions(
                AcceptEx=cast(_api.LPFN_ACCEPTEX, _lookup(sock, "AcceptEx")),
                GetAcceptExSockaddrs=cast(
                    _api.LPFN_GETACCEPTEXSOCKADDRS, _lookup(sock, "GetAcceptExSockaddrs")
                ),
                ConnectEx=cast(_api.LPFN_CONNECTEX, _lookup(sock, "ConnectEx")),
                DisconnectEx=cast(_api.LPFN_DISCONNECTEX, _lookup(sock, "DisconnectEx")),
                TransmitFile=cast(_api.LPFN_TRANSMITFILE, _lookup(sock, "TransmitFile")),
            )
            _EXTENSIONS[key] = found
        return found


def lookups_done() -> int:
    """How many providers' extension functions are cached (tests show the cache works)."""
    return len(_EXTENSIONS)
