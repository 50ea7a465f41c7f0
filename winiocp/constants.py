"""Windows constants used with completion ports and Winsock, as typed Python names.

Each member is named exactly as the Windows SDK spells the macro, and
``tests/host/test_sdk_layout.py`` compares every one with the value the real SDK headers
give (compiled with MinGW-w64, run under Wine). This module imports nothing from cffi, so
tools can read it on any OS.
"""

from __future__ import annotations

import struct
import uuid
from enum import IntEnum, IntFlag

_POINTER_BITS = struct.calcsize("P") * 8

INFINITE = 0xFFFFFFFF
#: WaitForSingleObject: the object is signalled.
WAIT_OBJECT_0 = 0
SOCKET_ERROR = -1
#: ``(SOCKET)(~0)``: pointer-sized, all bits set.
INVALID_SOCKET = (1 << _POINTER_BITS) - 1
#: The integer value of ``(HANDLE)-1``; ``raw.INVALID_HANDLE`` is the pointer itself.
INVALID_HANDLE_VALUE = (1 << _POINTER_BITS) - 1
#: WSAPROTOCOL_INFOW.dwServiceFlags1 bit: the provider's sockets are real IFS handles.
XP1_IFS_HANDLES = 0x00020000
HANDLE_FLAG_INHERIT = 0x00000001
MAKEWORD_2_2 = 0x0202


class WinError(IntEnum):
    """Win32 and Winsock error codes (winerror.h) that completion-port code meets."""

    ERROR_SUCCESS = 0
    ERROR_ACCESS_DENIED = 5
    ERROR_INVALID_HANDLE = 6
    ERROR_NOT_ENOUGH_MEMORY = 8
    ERROR_INVALID_DATA = 13
    ERROR_HANDLE_EOF = 38
    ERROR_NETNAME_DELETED = 64
    ERROR_INVALID_PARAMETER = 87
    ERROR_BROKEN_PIPE = 109
    ERROR_SEM_TIMEOUT = 121
    ERROR_INSUFFICIENT_BUFFER = 122
    ERROR_NO_DATA = 232
    ERROR_PIPE_NOT_CONNECTED = 233
    ERROR_MORE_DATA = 234
    WAIT_TIMEOUT = 258
    ERROR_PIPE_CONNECTED = 535
    ERROR_HANDLES_CLOSED = 676
    ERROR_ABANDONED_WAIT_0 = 735
    ERROR_OPERATION_ABORTED = 995
    ERROR_IO_INCOMPLETE = 996
    ERROR_IO_PENDING = 997
    ERROR_NOT_FOUND = 1168
    ERROR_NETWORK_UNREACHABLE = 1231
    ERROR_HOST_UNREACHABLE = 1232
    ERROR_PORT_UNREACHABLE = 1234
    ERROR_CONNECTION_REFUSED = 1225
    ERROR_GRACEFUL_DISCONNECT = 1226
    ERROR_CONNECTION_INVALID = 1229
    ERROR_CONNECTION_ABORTED = 1236
    WSA_INVALID_HANDLE = 6
    WSA_INVALID_PARAMETER = 87
    WSA_OPERATION_ABORTED = 995
    WSA_IO_INCOMPLETE = 996
    WSA_IO_PENDING = 997
    WSAEINTR = 10004
    WSAEBADF = 10009
    WSAEACCES = 10013
    WSAEFAULT = 10014
    WSAEINVAL = 10022
    WSAEMFILE = 10024
    WSAEWOULDBLOCK = 10035
    WSAEINPROGRESS = 10036
    WSAEALREADY = 10037
    WSAENOTSOCK = 10038
    WSAEDESTADDRREQ = 10039
    WSAEMSGSIZE = 10040
    WSAEPROTOTYPE = 10041
    WSAENOPROTOOPT = 10042
    WSAEPROTONOSUPPORT = 10043
    WSAESOCKTNOSUPPORT = 10044
    WSAEOPNOTSUPP = 10045
    WSAEPFNOSUPPORT = 10046
    WSAEAFNOSUPPORT = 10047
    WSAEADDRINUSE = 10048
    WSAEADDRNOTAVAIL = 10049
    WSAENETDOWN = 10050
    WSAENETUNREACH = 10051
    WSAENETRESET = 10052
    WSAECONNABORTED = 10053
    WSAECONNRESET = 10054
    WSAENOBUFS = 10055
    WSAEISCONN = 10056
    WSAENOTCONN = 10057
    WSAESHUTDOWN = 10058
    WSAETIMEDOUT = 10060
    WSAECONNREFUSED = 10061
    WSAEHOSTUNREACH = 10065
    WSANOTINITIALISED = 10093


class NtStatus(IntEnum):
    """NTSTATUS values (ntstatus.h) seen in ``OVERLAPPED.Internal``, as unsigned numbers."""

    STATUS_SUCCESS = 0x00000000
    STATUS_PENDING = 0x00000103
    STATUS_CANCELLED = 0xC0000120
    STATUS_LOCAL_DISCONNECT = 0xC000013B
    STATUS_REMOTE_DISCONNECT = 0xC000013C
    STATUS_CONNECTION_RESET = 0xC000020D
    STATUS_CONNECTION_REFUSED = 0xC0000236
    STATUS_CONNECTION_ABORTED = 0xC0000241


class AddressFamily(IntEnum):
    """``AF_*`` (winsock2.h): the address family of WSASocketW and of a ``sockaddr``."""

    AF_UNSPEC = 0
    AF_INET = 2
    AF_INET6 = 23


class SocketType(IntEnum):
    """``SOCK_*`` (winsock2.h): the socket type of WSASocketW."""

    SOCK_STREAM = 1
    SOCK_DGRAM = 2


class IPProto(IntEnum):
    """``IPPROTO_*`` (winsock2.h): the protocol argument of WSASocketW."""

    IPPROTO_IP = 0
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IPPROTO_IPV6 = 41


class SocketLevel(IntEnum):
    """The ``level`` of setsockopt/getsockopt (winsock2.h): ``SOL_SOCKET`` or a protocol."""

    SOL_SOCKET = 0xFFFF
    IPPROTO_TCP = 6
    IPPROTO_IPV6 = 41


class SocketOption(IntEnum):
    """Options at level ``SOL_SOCKET`` (winsock2.h; the ``SO_UPDATE_*`` ones mswsock.h)."""

    SO_ACCEPTCONN = 0x0002
    SO_REUSEADDR = 0x0004
    SO_KEEPALIVE = 0x0008
    SO_LINGER = 0x0080
    SO_SNDBUF = 0x1001
    SO_RCVBUF = 0x1002
    SO_ERROR = 0x1007
    SO_TYPE = 0x1008
    SO_PROTOCOL_INFOW = 0x2005
    SO_UPDATE_ACCEPT_CONTEXT = 0x700B
    SO_CONNECT_TIME = 0x700C
    SO_UPDATE_CONNECT_CONTEXT = 0x7010
    SO_EXCLUSIVEADDRUSE = ~0x0004


class TcpOption(IntEnum):
    """Options at level ``IPPROTO_TCP`` (winsock2.h), for setsockopt/getsockopt."""

    TCP_NODELAY = 0x0001


class Ipv6Option(IntEnum):
    """Options at level ``IPPROTO_IPV6`` (ws2ipdef.h), for setsockopt/getsockopt."""

    IPV6_V6ONLY = 27


class Shutdown(IntEnum):
    """``SD_*`` (winsock2.h): the ``how`` of shutdown()."""

    SD_RECEIVE = 0
    SD_SEND = 1
    SD_BOTH = 2


class TransmitFileFlags(IntFlag):
    """``TF_*`` (mswsock.h): the flags of TransmitFile and DisconnectEx."""

    TF_USE_DEFAULT_WORKER = 0x00
    TF_DISCONNECT = 0x01
    TF_REUSE_SOCKET = 0x02
    TF_WRITE_BEHIND = 0x04
    TF_USE_SYSTEM_THREAD = 0x10
    TF_USE_KERNEL_APC = 0x20


class WSASocketFlags(IntFlag):
    """``WSA_FLAG_*`` (winsock2.h): the ``dwFlags`` of WSASocketW."""

    WSA_FLAG_OVERLAPPED = 0x01
    WSA_FLAG_NO_HANDLE_INHERIT = 0x80


class CompletionNotificationModes(IntFlag):
    """The flags of SetFileCompletionNotificationModes (winbase.h)."""

    FILE_SKIP_COMPLETION_PORT_ON_SUCCESS = 0x1
    FILE_SKIP_SET_EVENT_ON_HANDLE = 0x2


class WaitFlags(IntFlag):
    """Flags of RegisterWaitForSingleObject (``WT_*``, winnt.h)."""

    WT_EXECUTEDEFAULT = 0x0
    WT_EXECUTEINWAITTHREAD = 0x4
    WT_EXECUTEONLYONCE = 0x8


class IoControl(IntEnum):
    """Control codes for WSAIoctl and ioctlsocket (winsock2.h, mswsock.h, mstcpip.h)."""

    FIONBIO = 0x8004667E
    FIONREAD = 0x4004667F
    SIO_GET_EXTENSION_FUNCTION_POINTER = 0xC8000006
    SIO_BSP_HANDLE_SELECT = 0x4800001C
    SIO_BSP_HANDLE_POLL = 0x4800001D
    SIO_BASE_HANDLE = 0x48000022
    SIO_UDP_CONNRESET = 0x9800000C
    #: TCP_INFO_v0 of a connected socket (Windows 10 1703+).
    SIO_TCP_INFO = 0xD8000027


class MsgFlags(IntFlag):
    """``MSG_*`` (winsock2.h): the flags of WSASend/WSARecv and their -To/-From forms."""

    MSG_OOB = 0x1
    MSG_PEEK = 0x2
    MSG_PARTIAL = 0x8000


class TcpInfoState(IntEnum):
    """``TCPSTATE`` (mstcpip.h): ``TCP_INFO_v0.State``, what SIO_TCP_INFO says of a socket."""

    TCPSTATE_CLOSED = 0
    TCPSTATE_LISTEN = 1
    TCPSTATE_SYN_SENT = 2
    TCPSTATE_SYN_RCVD = 3
    TCPSTATE_ESTABLISHED = 4
    TCPSTATE_FIN_WAIT_1 = 5
    TCPSTATE_FIN_WAIT_2 = 6
    TCPSTATE_CLOSE_WAIT = 7
    TCPSTATE_CLOSING = 8
    TCPSTATE_LAST_ACK = 9
    TCPSTATE_TIME_WAIT = 10


class TcpState(IntEnum):
    """``MIB_TCP_STATE``: the state column of the TCP table (GetTcpTable2)."""

    MIB_TCP_STATE_CLOSED = 1
    MIB_TCP_STATE_LISTEN = 2
    MIB_TCP_STATE_SYN_SENT = 3
    MIB_TCP_STATE_SYN_RCVD = 4
    MIB_TCP_STATE_ESTAB = 5
    MIB_TCP_STATE_FIN_WAIT1 = 6
    MIB_TCP_STATE_FIN_WAIT2 = 7
    MIB_TCP_STATE_CLOSE_WAIT = 8
    MIB_TCP_STATE_CLOSING = 9
    MIB_TCP_STATE_LAST_ACK = 10
    MIB_TCP_STATE_TIME_WAIT = 11
    MIB_TCP_STATE_DELETE_TCB = 12


class FileAccess(IntFlag):
    """``GENERIC_*`` (winnt.h): the ``dwDesiredAccess`` of CreateFileW."""

    GENERIC_READ = 0x80000000
    GENERIC_WRITE = 0x40000000


class FileShare(IntFlag):
    """``FILE_SHARE_*`` (winnt.h): the ``dwShareMode`` of CreateFileW."""

    FILE_SHARE_READ = 0x1
    FILE_SHARE_WRITE = 0x2
    FILE_SHARE_DELETE = 0x4


class FileCreation(IntEnum):
    """The ``dwCreationDisposition`` of CreateFileW (fileapi.h)."""

    CREATE_NEW = 1
    CREATE_ALWAYS = 2
    OPEN_EXISTING = 3
    OPEN_ALWAYS = 4


class FileFlags(IntFlag):
    """``FILE_ATTRIBUTE_*`` (winnt.h) and ``FILE_FLAG_*`` (winbase.h): the
    ``dwFlagsAndAttributes`` of CreateFileW and the open mode of CreateNamedPipeW."""

    FILE_ATTRIBUTE_NORMAL = 0x80
    FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
    FILE_FLAG_DELETE_ON_CLOSE = 0x04000000
    FILE_FLAG_OVERLAPPED = 0x40000000


class PipeMode(IntFlag):
    """``PIPE_*`` (winbase.h): the open mode, pipe mode and instance limit of
    CreateNamedPipeW."""

    PIPE_ACCESS_INBOUND = 0x1
    PIPE_ACCESS_OUTBOUND = 0x2
    PIPE_ACCESS_DUPLEX = 0x3
    PIPE_TYPE_BYTE = 0x0
    PIPE_TYPE_MESSAGE = 0x4
    PIPE_REJECT_REMOTE_CLIENTS = 0x8
    PIPE_UNLIMITED_INSTANCES = 255


#: DeviceIoControl's code for the AFD driver's poll (``winiocp.afd``). Not in any SDK header:
#: ``_AFD_CONTROL_CODE(AFD_POLL=9, METHOD_BUFFERED)`` as ReactOS's afd/shared.h builds it, the
#: value Wine, wepoll, mio and libuv use.
IOCTL_AFD_POLL = 0x00012024


class AfdPollEvents(IntFlag):
    """The events of an AFD poll (``AFD_POLL_*``): asked for in ``AFD_POLL_HANDLE_INFO.Events``
    and reported in the same field. Not in any SDK header: the bit values of ReactOS's
    afd/shared.h and Wine's include/wine/afd.h (wepoll, mio and libuv use the same)."""

    #: Data to read (or a datagram).
    AFD_POLL_RECEIVE = 0x0001
    #: Out-of-band data to read.
    AFD_POLL_RECEIVE_EXPEDITED = 0x0002
    #: Room in the send buffer.
    AFD_POLL_SEND = 0x0004
    #: The peer shut its side down (a FIN).
    AFD_POLL_DISCONNECT = 0x0008
    #: The connection was reset or aborted.
    AFD_POLL_ABORT = 0x0010
    #: The socket was closed (closesocket) while the poll was pending.
    AFD_POLL_LOCAL_CLOSE = 0x0020
    #: A connection is waiting on a listening socket.
    AFD_POLL_ACCEPT = 0x0080
    #: A connect failed.
    AFD_POLL_CONNECT_FAIL = 0x0100


#: The extension functions' GUIDs (mswsock.h), for SIO_GET_EXTENSION_FUNCTION_POINTER.
WSAID_ACCEPTEX = uuid.UUID("b5367df1-cbac-11cf-95ca-00805f48a192")
WSAID_GETACCEPTEXSOCKADDRS = uuid.UUID("b5367df2-cbac-11cf-95ca-00805f48a192")
WSAID_TRANSMITFILE = uuid.UUID("b5367df0-cbac-11cf-95ca-00805f48a192")
WSAID_CONNECTEX = uuid.UUID("25a207b9-ddf3-4660-8ee9-76e58c74063e")
WSAID_DISCONNECTEX = uuid.UUID("7fda2e11-8630-436f-a031-f536a6eec157")

#: Every enum above: what the SDK check compares, member by member.
ENUMS: tuple[type[IntEnum] | type[IntFlag], ...] = (
    WinError, NtStatus, AddressFamily, SocketType, IPProto, SocketLevel, SocketOption,
    TcpOption, Ipv6Option, Shutdown, TransmitFileFlags, WSASocketFlags,
    CompletionNotificationModes, WaitFlags, IoControl, MsgFlags, TcpInfoState, TcpState, FileAccess, FileShare,
    FileCreation, FileFlags, PipeMode,
)
#: Plain module constants the SDK check compares too (name -> value).
SCALARS: dict[str, int] = {
    "INFINITE": INFINITE,
    "WAIT_OBJECT_0": WAIT_OBJECT_0,
    "SOCKET_ERROR": SOCKET_ERROR,
    "INVALID_SOCKET": INVALID_SOCKET,
    "INVALID_HANDLE_VALUE": INVALID_HANDLE_VALUE,
    "XP1_IFS_HANDLES": XP1_IFS_HANDLES,
    "HANDLE_FLAG_INHERIT": HANDLE_FLAG_INHERIT,
}
GUIDS: dict[str, uuid.UUID] = {
    "WSAID_ACCEPTEX": WSAID_ACCEPTEX,
    "WSAID_GETACCEPTEXSOCKADDRS": WSAID_GETACCEPTEXSOCKADDRS,
    "WSAID_TRANSMITFILE": WSAID_TRANSMITFILE,
    "WSAID_CONNECTEX": WSAID_CONNECTEX,
    "WSAID_DISCONNECTEX": WSAID_DISCONNECTEX,
}
