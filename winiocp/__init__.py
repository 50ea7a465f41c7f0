"""winiocp: Windows I/O completion ports and overlapped Winsock for Python.

``winiocp.raw`` is the C API (cffi, typed); the wrappers on top encode the rules of IOCP
programming (see the README). The package re-exports what most programs need: the port
(``CompletionPort``, ``Completion``, ``Outcome``), ``Socket`` and ``create_connection``,
``Handle``, the operation classes and the exceptions. The connection layer is
``winiocp.connections`` and ``winiocp.manager``; the servers are ``winiocp.servers``.

Importing it anywhere but Windows raises ``ImportError``, saying why.
"""

import sys

if sys.platform != "win32":  # pragma: no cover - the one line a non-Windows user sees
    raise ImportError(f"winiocp binds Windows I/O completion ports: it needs Windows, not {sys.platform}")

#: The package's version (as in its metadata).
__version__ = "0.1.0"

from .errors import (
    ClosedHandleError,
    Failure,
    OperationCancelledError,
    OperationPendingError,
    PortClosedError,
)
from .handles import Handle
from .operations import Operation, OpKind, OpState, RecvOperation, SendOperation
from .port import Completion, CompletionPort, Outcome
from .sockets import AcceptOperation, ConnectOperation, Socket, create_connection

__all__ = [
    "AcceptOperation", "ClosedHandleError", "Completion", "CompletionPort", "ConnectOperation",
    "Failure", "Handle", "OpKind", "OpState", "Operation", "OperationCancelledError",
    "OperationPendingError", "Outcome", "PortClosedError", "RecvOperation", "SendOperation",
    "Socket", "create_connection",
]
