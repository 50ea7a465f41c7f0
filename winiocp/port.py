"""The completion port: associate handles, post packets, and dequeue classified completions.

GetQueuedCompletionStatus says what happened through two things at once, its return value and
whether ``lpOverlapped`` came back NULL (rule 2 of the notes; Boost.Asio's three cases):

=========  ==============  ================================================================
returns    lpOverlapped    meaning
=========  ==============  ================================================================
TRUE       non-NULL        an operation completed (0 bytes on a receive: the peer closed)
FALSE      non-NULL        that one operation failed; GetLastError says why
TRUE       NULL            a packet posted with PostQueuedCompletionStatus
FALSE      NULL            nothing dequeued: WAIT_TIMEOUT, or the port closed, or a port error
=========  ==============  ================================================================

``CompletionPort.get`` turns each case into a ``Completion`` with an ``Outcome``; ``get_many``
does the same per entry of a GetQueuedCompletionStatusEx batch, where each entry's status is the
NTSTATUS left in its OVERLAPPED's ``Internal`` field.

The port also keeps the registry of pending operations (OVERLAPPED address -> Operation). An
operation enters it just before its call is issued, because another thread may dequeue the
completion before the issuing call returns, and leaves it when its completion is dequeued. The
registry is what keeps the operation's memory alive while only the kernel refers to it. If the
port is closed while operations are pending, their memory is never freed (it moves to a
process-wide list): the kernel may still write it, and no completion will ever say when it
stopped.

Some completions never reach the kernel's queue. A socket in FILE_SKIP_COMPLETION_PORT_ON_SUCCESS
mode (``Socket.set_skip_on_success``) gets no packet for a call that succeeds at once; the
operation then goes to the port's own queue of inline completions (``complete_inline``), and
``get()``/``get_many()`` hand those out first, without a system call, classified as a packet
would be (its status and byte count are in the OVERLAPPED, where the kernel left them). Two
rules keep that fair and prompt: a dequeue that served only inline completions is followed by
one that also asks the kernel (others' packets never starve behind a socket that always has
data), and an inline completion issued by a thread that never dequeues from the port is posted
as a real packet instead, so a thread blocked in the kernel gets it.

Every use of the port's handle (a dequeue, ``post()``, ``associate()``) counts itself in use
first; ``close()`` closes the handle itself only when nobody is using it, and otherwise leaves
that to the last user out. So no call ever passes a value Windows may have given to another
object since. ``close()`` posts one wake-up packet per thread in use; a batch dequeue that
takes more than one of them puts the rest back, so each waiter takes only its own.

Dequeuing is exception-safe: the kernel has removed a packet from the queue before any Python
code sees it, so a dequeued completion must reach the caller whatever happens while it is
classified. An operation's post-processing cannot raise (its exception fails that operation
alone, see ``operations.py``); if an interrupt (KeyboardInterrupt, SystemExit) strikes in the
middle of a batch, every entry of the batch is still classified, the completions wait in the
port, and the next ``get()``/``get_many()`` hands them out before dequeuing anything new;
then the interrupt propagates.
"""

from __future__ import annotations

import itertools
import socket as _stdlib_socket
import struct
import threading
from collections import deque
from enum import Enum
from types import TracebackType
from collections.abc import Callable
from typing import Protocol

from ._cdata import CData
from .constants import INFINITE, WinError
from .errors import (
    ClosedHandleError,
    Failure,
    PortClosedError,
    classify_failure,
    exception_for,
)
from .operations import Operation, OpState, RecvOperation
from .raw import INVALID_HANDLE, ffi, kernel32, ntdll

#: Longest single wait when the caller asked for no time-out: Python sees Ctrl-C between waits.
INTERRUPT_CHECK_SECONDS = 0.5
_INTERRUPT_CHECK_MS = int(INTERRUPT_CHECK_SECONDS * 1000)
MAX_WAIT_MS = INFINITE - 1
_LONGEST_WAIT_SECONDS = MAX_WAIT_MS / 1000
_WAIT_TIMEOUT = int(WinError.WAIT_TIMEOUT)  # a plain int: compared on every empty dequeue
_PORT_CLOSED_ERRORS = frozenset({WinError.ERROR_ABANDONED_WAIT_0, WinError.ERROR_INVALID_HANDLE})
# Operations of closed ports that may still be written by the kernel: never freed.
_ORPHANED: list[dict[int, Operation]] = []
_keys = itertools.count(1)
# What close() posts to wake the threads waiting on the port; never registered, never written.
_WAKE_OVERLAPPED = ffi.new("OVERLAPPED *")
_WAKE_ADDRESS = int(ffi.cast("uintptr_t", _WAKE_OVERLAPPED))
# OVERLAPPED_ENTRY as Python's struct sees it: key, lpOverlapped, Internal, byte count.
_ENTRY = struct.Struct("QQQI4x" if ffi.sizeof("void *") == 8 else "IIII")
assert _ENTRY.size == ffi.sizeof("OVERLAPPED_ENTRY")


class Outcome(Enum):
    """What one dequeue produced."""

    #: TRUE, non-NULL: an operation completed.
    COMPLETED = "completed"
    #: TRUE, non-NULL, a receive of 0 bytes into non-empty buffers: the peer's graceful close.
    PEER_CLOSED = "peer closed"
    #: FALSE, non-NULL: that operation failed; see ``Completion.failure`` and ``.error``.
    FAILED = "failed"
    #: TRUE, NULL: a packet queued by PostQueuedCompletionStatus (``CompletionPort.post``).
    POSTED = "posted"
    #: FALSE, NULL, WAIT_TIMEOUT: nothing came in time.
    TIMED_OUT = "timed out"
    #: FALSE, NULL, ERROR_ABANDONED_WAIT_0 / ERROR_INVALID_HANDLE: the port was closed.
    PORT_CLOSED = "port closed"


# Module globals for what is tested or made on every call issued and completion: one load
# instead of two (an enum member is an attribute of its class).
_PENDING = OpState.PENDING
_COMPLETED, _FAILED, _PEER_CLOSED = Outcome.COMPLETED, Outcome.FAILED, Outcome.PEER_CLOSED


class Completion:
    """One dequeued completion packet, classified.

    Made by ``CompletionPort.get``/``get_many``. It holds the finished operation (its
    results stay readable; the kernel no longer owns any of its memory).
    """

    __slots__ = ("outcome", "key", "bytes_transferred", "operation", "error", "failure",
                 "overlapped")

    def __init__(self, outcome: Outcome, key: int = 0, bytes_transferred: int = 0,
                 operation: Operation | None = None, error: int = 0,
                 failure: Failure | None = None, overlapped: int = 0) -> None:
        #: Which of the dequeue's cases this is.
        self.outcome: Outcome = outcome
        #: The completion key: the associated handle's key, or what was posted.
        self.key: int = key
        #: The packet's byte count (for a posted packet: what was posted).
        self.bytes_transferred: int = bytes_transferred
        #: The operation this completes (None for posted packets and unknown OVERLAPPEDs).
        self.operation: Operation | None = operation
        #: The Windows error (0 unless the outcome is FAILED).
        self.error: int = error
        #: What kind of failure ``error`` is (None unless the outcome is FAILED).
        self.failure: Failure | None = failure
        #: The OVERLAPPED address the packet carried (0 for NULL).
        self.overlapped: int = overlapped

    def __repr__(self) -> str:
        detail = f" {self.failure.value} ({self.error})" if self.failure else ""
        return (f"<Completion {self.outcome.value}{detail} key={self.key} "
                f"bytes={self.bytes_transferred} {self.operation!r}>")

    def exception(self) -> OSError | None:
        """The exception a caller would raise for this completion (None unless FAILED)."""
        if self.outcome is not Outcome.FAILED:
            return None
        operation = self.operation
        if operation is None:
            return exception_for(self.error, "operation")
        error = exception_for(self.error, operation.kind.value)
        error.__cause__ = operation.cause  # what its post-processing raised, if that failed it
        return error

    def raise_for_failure(self) -> Completion:
        """Raise ``exception()`` if the outcome is FAILED; else return this completion."""
        error = self.exception()
        if error is not None:
            raise error
        return self


class Associable(Protocol):
    """A socket or handle that can be associated with a port (an ``OverlappedOwner``)."""

    def _associate(self, port: CompletionPort, key: int,
                   call: Callable[[CData], None]) -> None:
        """Make ``call(handle)`` with the value read under the owner's lock; remember
        ``port`` and ``key`` (the owner's half of ``CompletionPort.associate``)."""
        ...


class _DequeueBuffers:
    """One thread's out-parameters and entry array, allocated once (no per-call allocation)."""

    __slots__ = ("bytes", "key", "address", "overlapped", "entries", "entries_view",
                 "capacity", "removed", "dequeues", "kernel_due")

    def __init__(self) -> None:
        self.bytes = ffi.new("DWORD *")
        self.key = ffi.new("ULONG_PTR *")
        # The dequeued OVERLAPPED's address, read as an int without a cast per completion;
        # `overlapped` is the same memory typed as GQCS wants it (`address` owns it).
        self.address = ffi.new("uintptr_t *")
        self.overlapped = ffi.cast("LPOVERLAPPED *", self.address)
        self.entries: CData = ffi.NULL
        self.entries_view: memoryview | None = None
        self.capacity = 0
        self.removed = ffi.new("ULONG *")
        #: This thread dequeues from the port: inline completions it issues wait for it.
        self.dequeues = False
        #: The last dequeue of this thread served inline completions only: ask the kernel now.
        self.kernel_due = False


class _PerThread(threading.local):
    """Each thread's ``_DequeueBuffers``. A plain slotted object behind one thread-local
    attribute: every read of a ``threading.local``'s attribute costs a per-thread lookup, and a
    dequeue reads the buffers' fields several times."""

    def __init__(self) -> None:
        self.buffers = _DequeueBuffers()


class CompletionPort:
    """An I/O completion port. Several threads may wait on it at once; the GIL is released.

    It owns the port's handle (``close()``, or leaving a ``with`` block, closes it once) and
    the registry of pending operations, which keeps each one's memory alive until its
    completion is dequeued; operations still pending when the port closes are kept for the
    life of the process. ``concurrency`` is CreateIoCompletionPort's thread limit (0: one per
    CPU), ``batch_size`` the most entries one ``get_many`` dequeues. Raises ``TypeError``
    for either not an int, ``ValueError`` for either out of range, and the ``OSError`` of
    CreateIoCompletionPort's error.
    """

    def __init__(self, concurrency: int = 0, *, batch_size: int = 64) -> None:
        for name, value in (("concurrency", concurrency), ("batch_size", batch_size)):
            if (not isinstance(value, int)  # pyright: ignore[reportUnnecessaryIsInstance]
                    or isinstance(value, bool)):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if not 0 <= concurrency <= 0xFFFFFFFF:
            raise ValueError(f"concurrency must be 0 (one per CPU) or a positive DWORD, got {concurrency}")
        if not 1 <= batch_size <= 0xFFFF:
            raise ValueError(f"batch_size must be 1-65535, got {batch_size}")
        handle = kernel32.CreateIoCompletionPort(INVALID_HANDLE, ffi.NULL, 0, concurrency)
        if handle == ffi.NULL:
            raise exception_for(kernel32.GetLastError(), "CreateIoCompletionPort")
        #: The port's handle while it is open for new work (None once close() was called).
        self._handle: CData | None = handle
        #: The handle as the OS has it: closed only when no thread is inside a dequeue, so a
        #: waiter never passes a value Windows may already have given to another object.
        self._os_handle: CData | None = handle
        #: Threads using the handle now (dequeuing, posting, associating).
        self._waiters = 0
        self._batch_size = batch_size
        self._pending: dict[int, Operation] = {}
        #: Completions dequeued and classified but not yet handed out (an interrupt struck).
        self._ready: deque[Completion] = deque()
        #: Operations that completed at once with no packet (skip-on-success), and their keys.
        self._inline: deque[tuple[Operation, int]] = deque()
        self._threads = _PerThread()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"{len(self._pending)} pending"
        return f"<CompletionPort {state}>"

    def __enter__(self) -> CompletionPort:
        return self

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self.close()  # pending operations move to the orphan list, never freed

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._handle is None

    @property
    def batch_size(self) -> int:
        """The most completions one ``get_many`` returns."""
        return self._batch_size

    @property
    def handle(self) -> CData:
        """The port's HANDLE, for raw calls (raises once the port is closed)."""
        handle = self._handle
        if handle is None:
            raise ClosedHandleError("completion port")
        return handle

    # -- registry ------------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        """Operations issued on handles of this port whose completions are not dequeued."""
        return len(self._pending)

    def pending_operations(self) -> list[Operation]:
        """A snapshot of the pending operations (the registry itself keeps them alive)."""
        return list(self._pending.values())

    def register(self, operation: Operation) -> None:
        """Record ``operation`` as pending; call just before issuing it.

        Raises ``RuntimeError`` if it is pending already, ``ClosedHandleError`` once the
        port is closed (nothing would ever dequeue its completion).
        """
        state = operation.state
        if state is _PENDING:
            raise RuntimeError(f"{operation!r} is already pending")
        # No lock (this runs for every call issued): entered first, checked after. close()
        # marks the port closed before it moves the registry to the orphans, so an entry made
        # before that mark is orphaned with the rest, and one made after it sees the mark.
        operation.state = _PENDING
        pending = self._pending
        pending[operation.address] = operation
        if self._handle is None:
            pending.pop(operation.address, None)
            operation.state = state
            raise ClosedHandleError("completion port")  # nothing would ever dequeue it

    def unregister(self, operation: Operation, error: int, issued: bool = True) -> None:
        """The call failed at once (or, with ``issued=False``, was never made): no packet
        will come, the memory is ours again."""
        self._pending.pop(operation.address, None)
        if not issued:
            operation.abandon()
            return
        operation.finish(error, 0)

    # -- association and posting -----------------------------------------------------------

    def associate(self, target: Associable, key: int | None = None) -> int:
        """Associate a socket or handle; return its completion key.

        Without ``key``, a fresh number is used, never reused for the life of the process, so a
        key names one connection, not a handle value the OS may recycle (rule 6).

        Raises ``TypeError`` for a target that is not a winiocp ``Socket`` or ``Handle`` (a
        ``socket.socket`` must be wrapped: ``Socket.from_stdlib`` or ``Socket.borrow``),
        ``ValueError`` for a key that does not fit a ULONG_PTR or a target already
        associated, ``ClosedHandleError`` if the port or the target is closed, and the
        ``OSError`` of CreateIoCompletionPort's error.
        """
        if not hasattr(target, "_associate"):  # not a Socket or Handle (the Associable hook)
            raise TypeError(_not_associable(target))
        key = next(_keys) if key is None else key
        if not 0 <= key < 1 << (8 * ffi.sizeof("ULONG_PTR")):
            raise ValueError(f"key must fit in a ULONG_PTR, got {key}")
        port_handle = self._enter()
        if port_handle is None:
            raise ClosedHandleError("completion port")

        def call(handle: CData) -> None:
            if kernel32.CreateIoCompletionPort(handle, port_handle, key, 0) == ffi.NULL:
                raise exception_for(kernel32.GetLastError(),
                                    f"CreateIoCompletionPort (associate {target!r})")

        try:
            # The owner's half of association (a protected hook of OverlappedOwner).
            target._associate(self, key, call)  # pyright: ignore[reportPrivateUsage]
        finally:
            self._leave()
        return key

    def post(self, key: int = 0, bytes_transferred: int = 0) -> None:
        """Queue a packet (PostQueuedCompletionStatus with a NULL OVERLAPPED).

        Raises ``ClosedHandleError`` once the port is closed; if ``close()`` races this call,
        the handle is closed only after the call is out (by whoever leaves last)."""
        if not 0 <= bytes_transferred <= 0xFFFFFFFF:
            raise ValueError("bytes_transferred must fit in a DWORD")
        if not 0 <= key < 1 << (8 * ffi.sizeof("ULONG_PTR")):
            raise ValueError(f"key must fit in a ULONG_PTR, got {key}")
        handle = self._enter()
        if handle is None:
            raise ClosedHandleError("completion port")
        try:
            if not kernel32.PostQueuedCompletionStatus(handle, bytes_transferred, key, ffi.NULL):
                raise exception_for(kernel32.GetLastError(), "PostQueuedCompletionStatus")
        finally:
            self._leave()

    def post_completion(self, operation: Operation, bytes_transferred: int = 0,
                        key: int = 0) -> bool:
        """Complete a registered ``operation`` with a posted packet (its OVERLAPPED as
        lpOverlapped): it is dequeued as that operation's COMPLETED completion, with
        ``bytes_transferred``. For work that finishes outside the kernel's I/O (a wait on
        the thread pool, a wake-up) and should be routed like any I/O. Safe from any
        thread; False if the port is already closed (the operation is then orphaned with it).
        """
        handle = self._enter()
        if handle is None:
            return False
        try:
            return bool(kernel32.PostQueuedCompletionStatus(
                handle, bytes_transferred & 0xFFFFFFFF, key, operation.overlapped))
        finally:
            self._leave()

    def complete_inline(self, operation: Operation, key: int) -> None:
        """``operation`` (registered) succeeded at once on a handle that queues no packet for
        that (FILE_SKIP_COMPLETION_PORT_ON_SUCCESS): queue its completion here, to be handed
        out by the next ``get()``/``get_many()`` as if the kernel had queued it. Called by
        ``OverlappedOwner.issue``; ``key`` is the handle's completion key.

        A thread that has never dequeued from this port may never come back for it, while
        others wait in the kernel: its completion is posted to the port as a packet instead.
        """
        if self._threads.buffers.dequeues:
            self._inline.append((operation, key))
            return
        # The status is success (the call returned it); the byte count is InternalHigh,
        # which the system sets for a request completed without errors (OVERLAPPED's docs).
        self.post_completion(operation, int(operation.overlapped.InternalHigh), key)
        # (False: the port closed meanwhile, and the operation is orphaned with the rest.)

    def finish_inline(self, operation: Operation) -> None:
        """``operation`` (registered) succeeded at once on a handle that queues no packet for
        that, and its caller takes the result now (``issue(..., finish_inline=True)``): it
        leaves the registry finished, from the status and byte count the kernel left in its
        OVERLAPPED, and no dequeue ever hands it out. Its ``context`` is cleared: nothing will
        be routed to it (so a finished operation whose context is still set was dequeued, by
        another thread perhaps, and its completion is on its way). Called by
        ``OverlappedOwner.issue``."""
        self._pending.pop(operation.address, None)
        operation.context = None
        overlapped = operation.overlapped
        status = int(overlapped.Internal) & 0xFFFFFFFF  # as _entry_error(), inline
        error = 0 if status < 0x80000000 else ntdll.RtlNtStatusToDosError(status - (1 << 32))
        operation.finish(error, int(overlapped.InternalHigh) & 0xFFFFFFFF)

    def get_inline(self, max_entries: int | None = None) -> list[Completion]:
        """Only the completions already waiting in user space (inline completions, and any an
        interrupt left), up to ``max_entries`` (default: ``batch_size``): never a system call,
        never a wait. For a loop that has just run its handlers and wants what they
        completed at once before it waits again."""
        count = self._batch_size if max_entries is None else max_entries
        if self._ready:
            return self._take_ready(count)
        return self._take_inline(count) if self._inline else []

    def _take_inline(self, count: int) -> list[Completion]:
        """Up to ``count`` inline completions, classified (exception-safe, as a batch is)."""
        taken: list[Completion] = []
        inline = self._inline
        while len(taken) < count:
            try:
                operation, key = inline.popleft()
            except IndexError:  # empty, or another thread took the last one
                break
            address = operation.address
            transferred = error = 0
            try:
                self._pending.pop(address, None)
                overlapped = operation.overlapped
                transferred = int(overlapped.InternalHigh) & 0xFFFFFFFF
                status = int(overlapped.Internal) & 0xFFFFFFFF  # as _entry_error(), inline
                error = (0 if status < 0x80000000
                         else ntdll.RtlNtStatusToDosError(status - (1 << 32)))
                taken.append(self._classify(operation, address, key, transferred, error))
            except BaseException:  # an interrupt: nothing taken so far is lost
                self._ready.extend(taken)
                self._ready.append(self._salvage(operation, address, key, transferred, error))
                raise
        return taken

    # -- dequeue ---------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Completion:
        """Dequeue one completion, waiting up to ``timeout`` seconds (None: until one comes).

        Never raises for an operation's failure (that is a FAILED completion); raises only for
        a failure of the port itself, and ``TypeError`` / ``ValueError`` for a ``timeout``
        that is not a number of seconds >= 0. With ``timeout=None`` the wait is sliced so
        Ctrl-C works.
        """
        if self._ready:
            try:
                return self._ready.popleft()
            except IndexError:  # another thread took it
                pass
        out = self._threads.buffers
        out.dequeues = True
        if self._inline:
            if out.kernel_due:  # the last call served inline only: the kernel's turn first
                out.kernel_due = False
                completion = self._get_once(0)
                if completion.outcome is not Outcome.TIMED_OUT:
                    return completion
            taken = self._take_inline(1)
            if taken:
                out.kernel_due = True
                return taken[0]
        out.kernel_due = False
        if timeout is not None:
            return self._get_once(_milliseconds(timeout))
        slice_ms = _INTERRUPT_CHECK_MS
        while True:
            completion = self._get_once(slice_ms)
            if completion.outcome is not Outcome.TIMED_OUT:
                return completion
            if self._inline:  # queued by another thread meanwhile
                taken = self._take_inline(1)
                if taken:
                    return taken[0]

    def _get_once(self, milliseconds: int) -> Completion:
        handle = self._enter()
        if handle is None:
            return Completion(Outcome.PORT_CLOSED)
        try:
            out = self._threads.buffers
            out.address[0] = 0
            try:
                ok = kernel32.GetQueuedCompletionStatus(handle, out.bytes, out.key,
                                                        out.overlapped, milliseconds)
            except BaseException:
                self._salvage_interrupted_get(out)  # as in _get_many_once
                raise
            address = out.address[0]
            if not address:
                if ok:
                    return Completion(Outcome.POSTED, out.key[0], out.bytes[0])
                error = kernel32.GetLastError()
                if error == _WAIT_TIMEOUT:
                    return Completion(Outcome.PORT_CLOSED if self._handle is None
                                      else Outcome.TIMED_OUT)
                if error in _PORT_CLOSED_ERRORS:
                    return Completion(Outcome.PORT_CLOSED, error=error)
                raise exception_for(error, "GetQueuedCompletionStatus")
            if address == _WAKE_ADDRESS:
                return Completion(Outcome.PORT_CLOSED, error=WinError.ERROR_ABANDONED_WAIT_0)
            error = 0 if ok else kernel32.GetLastError()
            operation = self._pending.pop(address, None)
            try:
                return self._classify(operation, address, out.key[0], out.bytes[0], error)
            except BaseException:  # an interrupt: keep the completion for the next call
                self._ready.append(self._salvage(operation, address, out.key[0], out.bytes[0],
                                                 error))
                raise
        finally:
            self._leave()

    def _enter(self) -> CData | None:
        """The handle to wait on, counted as in use; None once the port is closing."""
        with self._lock:
            handle = self._handle
            if handle is not None:
                self._waiters += 1
            return handle

    def _leave(self) -> None:
        with self._lock:
            self._waiters -= 1
            handle = None
            if self._handle is None and self._waiters == 0:
                handle, self._os_handle = self._os_handle, None
        if handle is not None:
            kernel32.CloseHandle(handle)  # the last waiter out of a closed port closes it

    def get_many(self, timeout: float | None = None, max_entries: int | None = None
                 ) -> list[Completion]:
        """Dequeue up to ``max_entries`` (default: ``batch_size``) completions at once.

        Uses GetQueuedCompletionStatusEx into a per-thread array allocated once. Returns an
        empty list on time-out; raises ``PortClosedError`` if the port is closed.
        """
        count = batch = self._batch_size
        if max_entries is not None:
            if not 1 <= max_entries <= batch:
                raise ValueError(f"max_entries must be 1-{batch}, got {max_entries}")
            count = max_entries
        if self._ready:
            return self._take_ready(count)
        out = self._threads.buffers
        if out.capacity < batch:  # this thread's first get_many (or a bigger batch)
            out.dequeues = True
            out.entries = ffi.new("OVERLAPPED_ENTRY[]", batch)
            out.entries_view = memoryview(ffi.buffer(out.entries))  # type: ignore[arg-type]
            out.capacity = batch
        if self._inline:
            if out.kernel_due:  # the last call served inline only: the kernel's turn too
                out.kernel_due = False
                completions = self._get_many_once(out, count, 0)
                if len(completions) < count:
                    completions.extend(self._take_inline(count - len(completions)))
                if completions:
                    return completions
            else:
                completions = self._take_inline(count)
                if completions:
                    out.kernel_due = True
                    return completions
        if out.kernel_due:
            out.kernel_due = False
        if timeout is not None:
            try:
                common = 0 < timeout < _LONGEST_WAIT_SECONDS  # _milliseconds()'s, inline
            except TypeError:  # not a number: _milliseconds() says so
                common = False
            if common:
                return self._get_many_once(out, count, int(timeout * 1000 + 0.999))
            return self._get_many_once(out, count, 0 if timeout == 0 else _milliseconds(timeout))
        slice_ms = _INTERRUPT_CHECK_MS  # sliced, as in get(), for Ctrl-C
        while True:
            completions = self._get_many_once(out, count, slice_ms)
            if not completions and self._inline:  # queued by another thread meanwhile
                completions = self._take_inline(count)
            if completions:
                return completions

    def _get_many_once(self, out: _DequeueBuffers, count: int, milliseconds: int
                       ) -> list[Completion]:
        with self._lock:  # _enter(), inline: this runs once per loop turn
            handle = self._handle
            if handle is None:
                raise PortClosedError(None, "completion port is closed", None,
                                      WinError.ERROR_INVALID_HANDLE)
            self._waiters += 1
        try:
            out.removed[0] = 0
            try:
                ok = kernel32.GetQueuedCompletionStatusEx(handle, out.entries, count,
                                                          out.removed, milliseconds, 0)
            except BaseException:
                # An interrupt (Ctrl-C) is raised as soon as the call returns: the packets it
                # dequeued are gone from the port, so they are kept for the next call.
                removed = out.removed[0]
                if removed:
                    raw = (out.entries_view if out.entries_view is not None else memoryview(
                        ffi.buffer(out.entries)))[:removed * _ENTRY.size]  # type: ignore[arg-type]
                    self._salvage_batch(raw, [], None)
                raise
            if not ok:
                error = kernel32.GetLastError()
                if error == _WAIT_TIMEOUT and self._handle is not None:
                    return []
                if error in _PORT_CLOSED_ERRORS or self._handle is None:
                    raise PortClosedError(None, "completion port was closed", None, error)
                raise exception_for(error, "GetQueuedCompletionStatusEx")
            completions = self._classify_entries(out.entries, out.removed[0], out.entries_view)
        finally:
            self._leave()
        if not completions and self._handle is None:  # only close()'s wake-up packet came
            raise PortClosedError(None, "completion port was closed", None,
                                  WinError.ERROR_ABANDONED_WAIT_0)
        return completions

    def _classify_entries(self, entries: CData, count: int,
                          view: memoryview | None = None) -> list[Completion]:
        """Classify ``count`` OVERLAPPED_ENTRY records (read in one go, as plain integers)."""
        raw = (view if view is not None
               else memoryview(ffi.buffer(entries)))[:count * _ENTRY.size]  # type: ignore[arg-type]
        completions: list[Completion] = []
        append, classify, pending = completions.append, self._classify, self._pending
        wakes = 0
        operation = None
        try:
            for key, address, internal, transferred in _ENTRY.iter_unpack(raw):
                if not address:
                    append(Completion(Outcome.POSTED, key, transferred))
                    continue
                if address == _WAKE_ADDRESS:
                    wakes += 1  # close() woke this waiter: the caller learns on its next call
                    continue
                operation = pending.pop(address, None)
                status = internal & 0xFFFFFFFF  # as _entry_error(), inline: once per packet
                error = (0 if status < 0x80000000
                         else ntdll.RtlNtStatusToDosError(status - (1 << 32)))
                append(classify(operation, address, key, transferred, error))
        except BaseException:
            self._salvage_batch(raw, completions, operation)
            raise
        if wakes > 1:
            self._repost_wakes(wakes - 1)
        return completions

    def _salvage_batch(self, raw: memoryview, completions: list[Completion],
                       interrupted: Operation | None) -> None:
        """An interrupt struck while a batch was classified: classify the rest of it (the
        kernel has dequeued those packets), and keep everything for the next calls."""
        records = list(_ENTRY.iter_unpack(raw))
        classified = len(completions)
        self._ready.extend(completions)
        wakes = 0
        for key, address, internal, transferred in records:
            if address == _WAKE_ADDRESS:
                wakes += 1
            elif classified:  # handed a Completion already (they come in entry order)
                classified -= 1
            elif not address:
                self._ready.append(Completion(Outcome.POSTED, key, transferred))
            else:
                operation = self._pending.pop(address, None)
                if operation is None and interrupted is not None and \
                        interrupted.address == address:
                    operation = interrupted  # taken out of the registry before the interrupt
                self._ready.append(self._salvage(operation, address, key, transferred,
                                                 _entry_error(internal)))
        if wakes > 1:
            self._repost_wakes(wakes - 1)

    def _salvage_interrupted_get(self, out: _DequeueBuffers) -> None:
        """An interrupt right after GetQueuedCompletionStatus returned: if it dequeued one of
        our operations, keep its completion (its status is the one the kernel left in the
        OVERLAPPED's Internal, documented as the request's status code)."""
        address = out.address[0]
        if not address or address == _WAKE_ADDRESS:
            return  # nothing, a posted packet, or our own wake-up: nothing to keep
        operation = self._pending.pop(address, None)
        if operation is None:
            return  # a raw post's pointer: nothing of ours to keep
        error = _entry_error(int(operation.overlapped.Internal))
        self._ready.append(self._salvage(operation, address, out.key[0], out.bytes[0], error))

    def _salvage(self, operation: Operation | None, address: int, key: int, transferred: int,
                 error: int) -> Completion:
        """Classify again what an interrupt cut short (finishing twice is harmless)."""
        try:
            return self._classify(operation, address, key, transferred, error)
        except BaseException:  # a second interrupt: hand it back unclassified, never lose it
            if operation is not None:
                operation.state = OpState.DONE
            return Completion(Outcome.FAILED, key, transferred, operation,
                              WinError.ERROR_OPERATION_ABORTED, Failure.OTHER, address)

    def _take_ready(self, count: int) -> list[Completion]:
        taken: list[Completion] = []
        ready = self._ready
        try:
            while len(taken) < count:
                taken.append(ready.popleft())
        except IndexError:  # emptied (another thread may have taken some)
            pass
        return taken

    def _repost_wakes(self, count: int) -> None:
        """Give back wake-up packets meant for other waiters (the caller is counted in use,
        so the handle is still open)."""
        handle = self._os_handle
        if handle is None:
            return
        for _ in range(count):
            kernel32.PostQueuedCompletionStatus(handle, 0, 0, _WAKE_OVERLAPPED)

    def _classify(self, operation: Operation | None, address: int, key: int, transferred: int,
                  error: int) -> Completion:
        """The completion of ``operation`` (taken out of the registry already), classified."""
        if operation is None:  # an OVERLAPPED posted by raw code, not one of ours
            outcome = Outcome.FAILED if error else Outcome.COMPLETED
            failure = classify_failure(error, False) if error else None
            return Completion(outcome, key, transferred, None, error, failure, address)
        error = operation.finish(error, transferred)  # (finishing may fail it)
        if error:
            return Completion(_FAILED, key, transferred, operation, error,
                              operation.failure, address)
        if transferred == 0 and isinstance(operation, RecvOperation) and operation.peer_closed:
            return Completion(_PEER_CLOSED, key, 0, operation, 0, None, address)
        return Completion(_COMPLETED, key, transferred, operation, 0, None, address)

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the port (idempotent). Pending operations' memory is kept, never freed.

        Threads waiting on the port are woken (each gets PORT_CLOSED) and the handle is closed
        by the last of them to leave, so none ever waits on a recycled handle value.
        """
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            for operation, _ in list(self._inline):  # done already: the kernel holds none
                self._pending.pop(operation.address, None)
                operation.state = OpState.DONE
            self._inline.clear()
            if self._pending:
                orphaned, self._pending = self._pending, {}
                _ORPHANED.append(orphaned)
                # A snapshot: other threads may still enter or take operations meanwhile.
                for operation in list(orphaned.values()):
                    # Only the memory the kernel may write is kept: no completion will be
                    # routed, so whatever the context leads to (a connection, an event loop
                    # and all it holds) is let go.
                    operation.context = None
            if self._waiters:
                for _ in range(self._waiters):  # under the lock: the handle is still open
                    kernel32.PostQueuedCompletionStatus(handle, 0, 0, _WAKE_OVERLAPPED)
                return
            self._os_handle = None
        kernel32.CloseHandle(handle)


def _entry_error(internal: int) -> int:
    """The Windows error of an OVERLAPPED_ENTRY whose Internal is ``internal``.

    The entry's Internal is the packet's NTSTATUS (its IO_STATUS_BLOCK.Status): read there,
    not through lpOverlapped, which a raw post may point at anything.
    """
    status = internal & 0xFFFFFFFF
    # NT_SUCCESS: success and informational statuses are non-negative as 32-bit signed.
    return 0 if status < 0x80000000 else ntdll.RtlNtStatusToDosError(status - (1 << 32))


def _milliseconds(timeout: float) -> int:
    try:
        negative = timeout != timeout or timeout < 0  # NaN or negative
    except TypeError:  # not a number: no cost on the path of a number
        raise TypeError("timeout must be a number of seconds or None, not "
                        f"{type(timeout).__name__}") from None
    if negative:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout}")
    if timeout >= _LONGEST_WAIT_SECONDS:  # also infinity: the longest finite wait
        return MAX_WAIT_MS
    return int(timeout * 1000 + 0.999)


def _not_associable(target: object) -> str:
    message = f"associate() takes a winiocp Socket or Handle, not {type(target).__name__}"
    if isinstance(target, _stdlib_socket.socket):
        message += (": wrap a socket.socket with winiocp.Socket.from_stdlib(sock) (which takes "
                    "it over) or Socket.borrow(sock) (which leaves it the stdlib socket's)")
    return message


def orphaned_operation_count() -> int:
    """Operations of closed ports kept alive because the kernel might still write them."""
    return sum(len(registry) for registry in _ORPHANED)


class Wakeup:
    """Wake-ups of a thread that waits on ``port``, coalesced as libuv's ``uv_async_send``
    does it: however many threads call ``wake()``, and however often, at most one wake-up
    packet is queued at a time, so a burst of calls while the waiter is busy costs one
    packet, not one each (each would hold kernel memory until dequeued).

    The waiter hands every posted completion it dequeues to ``consume()``, which frees the
    flag for the next ``wake()``. No wake-up is ever lost, provided each side keeps its order:

    * a waker *publishes* its work (appends it to a queue the waiter reads) and then calls
      ``wake()``;
    * the waiter calls ``consume()`` on the dequeued packet and then *reads* the queue.

    The flag is a lock (an atomic test-and-set: ``acquire(blocking=False)``; ``release()``
    from the waiter's thread), and lock operations order memory on every CPython build.
    If ``wake()`` finds the flag taken, a packet is queued that the waiter has not
    consumed: the waker published before its failed acquire, which comes before the
    waiter's release in ``consume()``, which comes before the waiter reads the queue, so
    the waiter sees the work. If ``wake()`` takes the flag, it posts a packet that the
    waiter will dequeue. The worst case is a spare wake-up (a packet posted after the
    waiter already read the work it was for): one extra, empty turn.
    """

    __slots__ = ("port", "key", "posted", "_in_flight")

    def __init__(self, port: CompletionPort) -> None:
        self.port: CompletionPort = port
        #: The packet's completion key: from the keys ``associate`` hands out, so no handle
        #: associated with any port ever completes with it.
        self.key: int = next(_keys)
        #: Packets posted so far (a counter, for tests and diagnostics).
        self.posted: int = 0
        self._in_flight = threading.Lock()  # held while a packet is queued, not consumed

    def __repr__(self) -> str:
        state = "in flight" if self._in_flight.locked() else "idle"
        return f"<Wakeup key={self.key} {state} posted={self.posted}>"

    @property
    def in_flight(self) -> bool:
        """Whether a wake-up packet is queued and not yet consumed."""
        return self._in_flight.locked()

    def wake(self) -> bool:
        """Make the waiter return from its dequeue, from any thread: post the packet
        unless one is in flight already. Whether this call posted it (False also once the
        port is closed: nothing waits on it any more)."""
        if not self._in_flight.acquire(False):
            return False
        try:
            self.port.post(self.key)
        except OSError:  # closed (ClosedHandleError), or the post failed: nothing queued
            self._in_flight.release()
            return False
        except BaseException:
            self._in_flight.release()
            raise
        self.posted += 1
        return True

    def consume(self, completion: Completion) -> bool:
        """Whether ``completion`` is this wake-up's packet; if so, the next ``wake()`` posts
        again. The waiter calls it before it reads the work the wakers published."""
        if completion.key != self.key or completion.operation is not None:
            return False
        try:
            self._in_flight.release()
        except RuntimeError:  # not held: someone else posted our key; harmless
            pass
        return True
