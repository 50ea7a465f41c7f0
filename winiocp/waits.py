"""Waiting for a kernel object (a process, an event) as if it were I/O on a port.

A completion port knows nothing of process exits or events. An event loop that waits on a
port alone (asyncio's proactor, or any winiocp loop) needs a signal to arrive as a completion
packet, routed like every other operation, with no thread per handle. Windows' thread pool
already waits for many objects per thread (RegisterWaitForSingleObject: up to 63 handles per
wait thread); its callback, run on that wait thread, posts the packet
(``CompletionPort.post_completion``). So 1,000 waits cost the pool ~16 threads, and none of
ours.

* ``wait_for_handle(port, handle, timeout)`` registers a ``WaitOperation`` in the port's
  registry before the wait exists, as every operation is; its completion is COMPLETED with
  ``timed_out`` telling the two endings apart.
* ``WaitOperation.cancel()`` unregisters the wait and blocks until a callback in progress has
  finished (UnregisterWaitEx with INVALID_HANDLE_VALUE: the GIL is released meanwhile, so the
  callback can run). Afterwards the callback either never ran (the operation is finished as
  cancelled, at once, with no packet) or has posted its packet (which is dequeued as usual).

One cffi callback serves every wait: its context is a number that finds the operation, never
a pointer to Python memory. (NtAssociateWaitCompletionPacket would need no thread at all,
but it needs Windows 8 and Wine 8 does not implement it.)
"""

from __future__ import annotations

import itertools
import math
import threading
from typing import TYPE_CHECKING

from ._cdata import CData
from .constants import INFINITE, WAIT_OBJECT_0, WaitFlags, WinError
from .errors import exception_for
from .operations import Operation, OpKind, OpState
from .raw import INVALID_HANDLE, ffi, kernel32

if TYPE_CHECKING:
    from .port import CompletionPort


class _WaitOwner:
    """What a wait operation is "issued on": nothing but the port."""

    __slots__ = ("port",)

    def __init__(self, port: CompletionPort) -> None:
        self.port: CompletionPort | None = port

    def __repr__(self) -> str:
        return "<thread-pool wait>"


class WaitOperation(Operation):
    """A RegisterWaitForSingleObject wait whose signal (or time-out) completes on a port.

    Made by ``wait_for_handle``. The port's registry keeps it alive until its completion is
    dequeued (or ``cancel()`` finished it); the thread-pool wait it registered is
    unregistered when it completes or is cancelled. It does not own the waited-for handle,
    which the caller must keep open until then.
    """

    __slots__ = ("handle", "wait_handle", "_ident", "_fired", "_unregistered", "_port")
    post_processing = True

    def __init__(self, port: CompletionPort, handle: int) -> None:
        super().__init__(OpKind.WAIT, _WaitOwner(port))
        #: The waited-for object's HANDLE value.
        self.handle: int = handle
        #: The thread pool's wait handle (NULL until RegisterWaitForSingleObject returned).
        self.wait_handle: CData = ffi.NULL
        self._ident = next(_idents)
        self._fired = False
        self._unregistered = False
        self._port = port

    @property
    def timed_out(self) -> bool:
        """After completion: the time-out passed before the object was signalled."""
        return self.bytes_transferred == 1

    def signaled(self) -> bool:
        """Whether the object is signalled right now (a zero-time WaitForSingleObject)."""
        return kernel32.WaitForSingleObject(ffi.cast("HANDLE", self.handle), 0) == WAIT_OBJECT_0

    def on_success(self) -> int:
        """Unregister the one-shot wait (without blocking); 0."""
        self._unregister(blocking=False)  # a one-shot wait still holds the pool's resources
        return 0

    def _unregister(self, blocking: bool) -> None:
        with _lock:
            if self._unregistered:
                return
            self._unregistered = True
            wait_handle = self.wait_handle
            if wait_handle == ffi.NULL:
                return  # it fired before its handle was known: wait_for_handle unregisters
        # ERROR_IO_PENDING (a callback still running) is no failure for a non-blocking one.
        kernel32.UnregisterWaitEx(wait_handle, INVALID_HANDLE if blocking else ffi.NULL)

    def cancel(self) -> bool:
        """Stop waiting. True if the wait was stopped before it fired: the operation is then
        done (cancelled) and no packet will come. False if it had fired (or ended) already:
        its packet is, or will be, in the port's queue."""
        if self.state is not OpState.PENDING:
            return False
        self.cancel_requested = True
        self._unregister(blocking=True)  # returns once no callback is running any more
        with _lock:
            _waits.pop(self._ident, None)
            fired = self._fired
        if fired:
            return False
        self._port.unregister(self, WinError.ERROR_OPERATION_ABORTED)
        return True


def wait_for_handle(port: CompletionPort, handle: int, timeout: float | None = None, *,
                    context: object = None) -> WaitOperation:
    """Wait (on the thread pool) for ``handle`` to be signalled, or ``timeout`` seconds; the
    returned operation completes on ``port``. ``handle`` must stay open until then.

    Raises ``ValueError`` for a negative or NaN ``timeout`` or a handle value of 0 or -1,
    ``ClosedHandleError`` if the port is closed, and the ``OSError`` of
    RegisterWaitForSingleObject's error (the operation is then given back, not pending).
    """
    if timeout is None:
        milliseconds = INFINITE
    else:
        if timeout != timeout or timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout}")
        milliseconds = min(math.ceil(timeout * 1000), INFINITE - 1)  # at least ``timeout``
    # Checked at run time too: untyped callers pass anything.
    if (not isinstance(handle, int)  # pyright: ignore[reportUnnecessaryIsInstance]
            or handle in (0, -1)):
        raise ValueError(f"not a valid handle: {handle!r}")
    operation = WaitOperation(port, handle)
    operation.context = context
    # This function and _fired() are WaitOperation's other half: the private fields they
    # use are the module's (hence the reportPrivateUsage ignores).
    out = ffi.new("HANDLE *")
    port.register(operation)
    with _lock:
        _waits[operation._ident] = operation  # pyright: ignore[reportPrivateUsage]
    ok = kernel32.RegisterWaitForSingleObject(
        out, ffi.cast("HANDLE", handle), _CALLBACK,
        ffi.cast("void *", operation._ident),  # pyright: ignore[reportPrivateUsage]
        milliseconds, WaitFlags.WT_EXECUTEONLYONCE | WaitFlags.WT_EXECUTEINWAITTHREAD)
    if not ok:
        error = kernel32.GetLastError()
        with _lock:
            _waits.pop(operation._ident, None)  # pyright: ignore[reportPrivateUsage]
        port.unregister(operation, error)
        raise exception_for(error, f"RegisterWaitForSingleObject({handle:#x})")
    with _lock:
        operation.wait_handle = out[0]
        # It fired and was dequeued before we got here.
        late = operation._unregistered  # pyright: ignore[reportPrivateUsage]
    if late:
        kernel32.UnregisterWaitEx(out[0], ffi.NULL)
    return operation


def pending_wait_count() -> int:
    """Waits registered and not yet fired or cancelled (for tests and diagnostics)."""
    return len(_waits)


_idents = itertools.count(1)
_waits: dict[int, WaitOperation] = {}
_lock = threading.Lock()


def _fired(context: CData, timer_or_wait_fired: int) -> None:
    """On a thread-pool wait thread: the object was signalled (or the time-out passed)."""
    ident = int(ffi.cast("uintptr_t", context))
    # Friend access to the operation's private fields: see wait_for_handle.
    with _lock:
        operation = _waits.pop(ident, None)
        if operation is None:
            return  # cancelled meanwhile
        operation._fired = True  # pyright: ignore[reportPrivateUsage]
    operation._port.post_completion(  # pyright: ignore[reportPrivateUsage]
        operation, 1 if timer_or_wait_fired else 0)


_CALLBACK = ffi.callback("WAITORTIMERCALLBACK", _fired)
