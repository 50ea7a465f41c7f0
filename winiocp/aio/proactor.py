"""``IocpProactor``: asyncio's Windows proactor, on winiocp instead of ``_overlapped``.

asyncio's ``ProactorEventLoop`` asks its proactor for futures ("receive into this buffer",
"accept on this socket") and, once per loop iteration, for the futures that completed
(``select``). CPython's own proactor keeps a dict from OVERLAPPED address to future and
callback; this one lets winiocp do what it already does for every operation:

* each call is a winiocp ``Operation`` on a *borrowed* view of the stdlib socket or pipe
  (``Socket.borrow`` / ``Handle.borrow``): asyncio keeps owning and closing its objects, and a
  value its owner closed is never touched again;
* the operation's ``context`` is its completion handler, called with the dequeued
  ``Completion``: for asyncio's futures the ``_Pending`` record that finishes one (future +
  how to turn the completion into a result), for winiocp's own transports (``transports.py``)
  the transport's receive or send handler, which calls the protocol at once. So the dequeue
  loop routes every completion the same way and never asks what kind of operation it was;
* stream sockets are put in FILE_SKIP_COMPLETION_PORT_ON_SUCCESS mode where Windows allows it
  (``Socket.set_skip_on_success``): an operation that completes at once is handed out by the
  port itself, with no packet to dequeue, and routed the same way;
* the port's registry keeps each operation's memory (OVERLAPPED, pinned buffers, addresses)
  alive until its completion is dequeued — through cancellation, through the GC of every
  future, and through ``close()``, which cancels everything, waits for the completions, and
  leaves anything the kernel still holds to the port's orphan list instead of freeing it;
* AcceptEx always gets SO_UPDATE_ACCEPT_CONTEXT and ConnectEx SO_UPDATE_CONNECT_CONTEXT
  (winiocp's rule 7), and completions come classified (rule 2);
* ``wait_for_handle`` is ``winiocp.waits``: a thread-pool wait that posts a packet;
* ``wake()`` (the loop's ``call_soon_threadsafe``) is a ``winiocp.port.Wakeup``: at most one
  packet in flight, however many threads call it while the loop is busy;
* a caller's buffer is pinned only while its operation is pending: once the completion is
  handled the operation lets it go (``BufferOperation.let_go``), so the caller may resize it;
* ``accept()`` never fails for clients that went away, and backs off from the loop when
  AcceptEx keeps failing at once; a pending ``sendfile()`` whose connection is gone ends
  even where the TransmitFile itself never does (``_TransmitWatch``).

The results asyncio sees are the stock proactor's: the same values, the same exceptions
(ConnectionResetError for a reset or aborted receive, BrokenPipeError at once for a closed
pipe, ...), the same cancellation behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import msvcrt
import socket
import time
import weakref
from asyncio import windows_utils
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, Union, cast

from ..addresses import Address
from ..constants import INFINITE, FileAccess, FileCreation, FileFlags, WinError
from ..errors import ClosedHandleError, exception_for
from ..handles import Handle
from ..manager import ACCEPT_BACKOFF, ACCEPT_BACKOFF_MAX, ACCEPT_RETRIES
from ..operations import AddressedOperation, BufferOperation, Operation, RecvOperation
from ..owner import Lender, OverlappedOwner, weak_fileno
from ..port import MAX_WAIT_MS, Completion, CompletionPort, Outcome, Wakeup
from ..raw import INVALID_HANDLE, ffi, kernel32
from ..readiness import PollSet
from ..sockets import AcceptOperation, Socket
from ..waits import WaitOperation, wait_for_handle

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

log: logging.Logger = logging.getLogger("winiocp.aio")
T = TypeVar("T")
#: What asyncio hands its proactor: stdlib sockets, and PipeHandle objects for pipes.
Conn = Union[socket.socket, windows_utils.PipeHandle]
#: How long ``close()`` waits for cancelled operations before leaving them to the orphan list.
CLOSE_WAIT_SECONDS = 30.0
CONNECT_PIPE_INIT_DELAY = 0.001
CONNECT_PIPE_MAX_DELAY = 0.100
#: An operation that ends like this failed because the connection went away, or its socket
#: was closed under it: ConnectionResetError (as CPython's proactor reports it).
_RESET_LIKE = frozenset({
    WinError.ERROR_NETNAME_DELETED, WinError.ERROR_OPERATION_ABORTED,
    # An operation whose handle was closed under it: Windows ends it with
    # ERROR_OPERATION_ABORTED (closesocket cancels pending overlapped operations); Wine
    # may end it with ERROR_INVALID_HANDLE (a TransmitFile, long after the close).
    WinError.ERROR_INVALID_HANDLE, WinError.ERROR_HANDLES_CLOSED,
})
_ERROR_PORT_UNREACHABLE = 1234
_ERROR_PIPE_BUSY = 231
_ERROR_BROKEN_PIPE = 109


class HasFileno(Protocol):
    """A file object: what ``sendfile`` needs of it."""

    def fileno(self) -> int:
        """The C runtime file descriptor (``msvcrt.get_osfhandle`` turns it into a HANDLE)."""
        ...


class _IocpFuture(asyncio.Future[T], Generic[T]):
    """A future for one operation; cancelling it cancels the operation (CancelIoEx).

    ``_ov`` is the operation while it may still be cancelled, as asyncio's own loop code
    expects of a proactor future (it reads ``fut._ov.pending``)."""

    def __init__(self, operation: Operation | None, owner: OverlappedOwner[object] | None, *,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._ov: Operation | None = operation
        self._owner = owner

    def _cancel_operation(self) -> None:
        operation, self._ov = self._ov, None
        if operation is None or not operation.pending:
            return
        try:
            if isinstance(operation, WaitOperation):
                operation.cancel()
            elif self._owner is not None:
                self._owner.cancel(operation)
        except ClosedHandleError:
            pass  # its socket or pipe was closed, which ends (cancels) the operation anyway
        except OSError as exc:
            context: dict[str, object] = {
                "message": "Cancelling an overlapped future failed",
                "exception": exc, "future": self,
            }
            self.get_loop().call_exception_handler(context)

    @property
    def operation(self) -> Operation | None:
        """The operation that serves this future, while it may still be cancelled."""
        return self._ov

    @operation.setter
    def operation(self, operation: Operation | None) -> None:
        self._ov = operation

    def cancel(self, msg: object | None = None) -> bool:
        self._cancel_operation()
        return super().cancel(msg=msg)

    def set_exception(self, exception: type | BaseException) -> None:
        if isinstance(exception, BaseException):
            # Its traceback runs through the completion's frames, which hold this future: a
            # cycle that keeps the future (and the exception) alive until the collector runs.
            # The awaiting task adds its own frames when it raises it.
            exception = exception.with_traceback(None)
        super().set_exception(exception)
        self._cancel_operation()

    def set_result(self, result: T) -> None:
        super().set_result(result)
        self._ov = None


class _WaitCancelFuture(_IocpFuture[bool]):
    """``_wait_cancel``'s future: never cancelled; its callback runs even inside close()."""

    def __init__(self, operation: Operation, *, loop: asyncio.AbstractEventLoop,
                 done_callback: Callable[[_WaitCancelFuture], object]) -> None:
        super().__init__(operation, None, loop=loop)
        self._done_callback = done_callback

    def cancel(self, msg: object | None = None) -> bool:
        raise RuntimeError("_WaitCancelFuture must not be cancelled")

    def set_result(self, result: bool) -> None:
        super().set_result(result)
        self._done_callback(self)

    def set_exception(self, exception: type | BaseException) -> None:
        super().set_exception(exception)
        self._done_callback(self)


#: What an operation's context is on the proactor's port: called with its completion.
CompletionHandler = Callable[[Completion], None]


class _Pending(Generic[T]):
    """The completion handler of a future's operation: its future, how to turn the completion
    into a result, and the object it was issued on (kept alive until then, as asyncio's
    proactor does)."""

    __slots__ = ("future", "finish", "obj", "proactor")

    def __init__(self, future: _IocpFuture[T], finish: Callable[[Completion], T],
                 obj: object, proactor: IocpProactor) -> None:
        self.future = future
        self.finish = finish
        self.obj = obj
        self.proactor = proactor

    def __call__(self, completion: Completion) -> None:
        future = self.future
        proactor = self.proactor
        if self.obj is not None and self.obj in proactor._stopped_serving:  # pyright: ignore[reportPrivateUsage]
            future.cancel()
        elif not future.done():
            try:
                value = self.finish(completion)
            except _Reissued:
                return  # another operation serves the future now
            except OSError as exc:
                future.set_exception(exc)
            else:
                future.set_result(value)
            proactor._results.append(cast("asyncio.Future[object]", future))  # pyright: ignore[reportPrivateUsage]
        operation = completion.operation
        if isinstance(operation, BufferOperation):
            # The caller's buffer is the caller's again once the await returns: no export
            # (it may be resized) and no reference (a socket's cached receive would keep
            # it alive). The result was taken from it above.
            operation.let_go()


def failure_of(completion: Completion) -> OSError:
    """The exception asyncio sees for a failed completion (a reset or an aborted receive:
    ConnectionResetError, as CPython's proactor reports it)."""
    error = completion.error
    operation = completion.operation
    what = operation.kind.value if operation is not None else "operation"
    if error in _RESET_LIKE:
        return ConnectionResetError(None, exception_for(error, what).strerror, None, error)
    if error == WinError.ERROR_MORE_DATA and isinstance(operation, AddressedOperation):
        # A datagram larger than the buffer: the port reports the NTSTATUS warning as
        # ERROR_MORE_DATA; Winsock's name for it is WSAEMSGSIZE, what the stock proactor
        # raises (WSARecvFrom documents it for a truncated message).
        error = WinError.WSAEMSGSIZE
    return exception_for(error, what)


def _received(completion: Completion) -> bytes:
    """A receive's (or ReadFile's) data; a pipe whose writer closed reads as EOF."""
    operation = completion.operation
    assert isinstance(operation, BufferOperation)
    if completion.outcome is Outcome.FAILED:
        if not _is_eof_or_more_data(completion):
            raise failure_of(completion)
    return operation.data


def _count(completion: Completion) -> int:
    """Bytes moved (a send, a receive into a buffer, TransmitFile)."""
    if completion.outcome is Outcome.FAILED and not _is_eof_or_more_data(completion):
        raise failure_of(completion)
    return completion.bytes_transferred


def _is_eof_or_more_data(completion: Completion) -> bool:
    # ReadFile on a pipe: the writer closed (EOF), or a message longer than the buffer (its
    # first part is there): both are results, not errors, as _overlapped reports them.
    operation = completion.operation
    return (isinstance(operation, RecvOperation) and not isinstance(operation, AddressedOperation)
            and completion.error in (_ERROR_BROKEN_PIPE, WinError.ERROR_MORE_DATA))


class _Reissued(Exception):
    """Raised by a finisher that issued another operation for the same future."""


class _AcceptAttempt:
    """One ``accept()`` future and the AcceptEx currently serving it.

    A client that went away fails only the AcceptEx that took it, never the future: a
    failed completion posts the next AcceptEx, however many come; an AcceptEx that fails at
    once (it took a client that had reset in the backlog) is posted again at once, up to
    ``RETRIES_AT_ONCE`` times in a row, then after a back-off from the loop (doubling from
    ``ACCEPT_BACKOFF`` to ``ACCEPT_BACKOFF_MAX``, as the core's ``AcceptPool``), so a
    listener that keeps failing so cannot hold the loop. Any other error (the listener's,
    or a shortage: no socket could be made) is the future's."""

    #: How many AcceptEx in a row may fail at once before the next waits out a back-off.
    RETRIES_AT_ONCE = ACCEPT_RETRIES

    def __init__(self, proactor: IocpProactor, listener: socket.socket, view: Socket,
                 future: _IocpFuture[tuple[socket.socket, Address]]) -> None:
        self.proactor = proactor
        self.listener = listener
        self.view = view
        self.future = future
        self.conn: socket.socket | None = None
        self.backoff = ACCEPT_BACKOFF  # the next back-off, if AcceptEx keeps failing at once
        self.timer: asyncio.TimerHandle | None = None

    def post(self) -> None:
        """Post an AcceptEx for the future on a fresh accept socket (or, after
        ``RETRIES_AT_ONCE`` failures at once, later: see the class)."""
        proactor = self.proactor
        for _ in range(self.RETRIES_AT_ONCE):
            conn = self.conn = proactor._get_accept_socket(  # pyright: ignore[reportPrivateUsage]
                self.listener.family)
            try:
                self.future.operation = self.view.accept(
                    Socket.borrow(conn, listening=False),  # (made just now: it cannot be)
                    context=_Pending(self.future, self.finish, self.listener, proactor))
                self.backoff = ACCEPT_BACKOFF
                return
            except OSError as exc:
                conn.close()
                self.conn = None
                if exc.winerror not in _CLIENT_GONE:
                    raise
        delay, self.backoff = self.backoff, min(2 * self.backoff, ACCEPT_BACKOFF_MAX)
        log.debug("AcceptEx on %r keeps failing at once: again in %.2f s", self.listener, delay)
        self.timer = proactor._get_loop().call_later(delay, self._retry)  # pyright: ignore[reportPrivateUsage]

    def _retry(self) -> None:
        self.timer = None
        future = self.future
        if future.done():
            return
        if self.listener in self.proactor._stopped_serving:  # pyright: ignore[reportPrivateUsage]
            future.cancel()
            return
        try:
            self.post()
        except OSError as exc:
            future.set_exception(exc)

    def finish(self, completion: Completion) -> tuple[socket.socket, Address]:
        conn = self.conn
        assert conn is not None
        if completion.outcome is Outcome.FAILED:
            # The listener's own trouble shows when AcceptEx is issued; a completion that
            # fails (ERROR_NETNAME_DELETED on Windows, ERROR_UNEXP_NET_ERR under Wine) is
            # about the one client it took. Only a cancellation ends the accept.
            operation = completion.operation
            cancelled = completion.error == WinError.ERROR_OPERATION_ABORTED or (
                operation is not None and operation.cancel_requested)
            if not cancelled and self.listener.fileno() != -1:
                conn.close()
                self.conn = None
                self.post()  # the same future, a new AcceptEx
                raise _Reissued
            raise failure_of(completion)
        # SO_UPDATE_ACCEPT_CONTEXT is set already (AcceptOperation.on_success), and the
        # peer's address is AcceptEx's: no getpeername, which fails (WSAENOTCONN) if the
        # client has reset meanwhile; the transport then learns of the reset by reading.
        operation = completion.operation
        assert isinstance(operation, AcceptOperation)
        timeout = self.listener.gettimeout()
        if conn.gettimeout() != timeout:  # (each settimeout is a system call; asyncio's
            conn.settimeout(timeout)      # listeners are non-blocking, as conn is already)
        self.conn = None  # the caller's now
        address = operation.remote_address
        return conn, address if address is not None else conn.getpeername()

    def done(self, future: asyncio.Future[tuple[socket.socket, Address]]) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:  # cancelled or failed: the accept socket was never handed out
            conn.close()


#: AcceptEx failures that concern one client that went away, not the listener.
_CLIENT_GONE = frozenset({
    WinError.ERROR_NETNAME_DELETED, WinError.WSAECONNRESET, WinError.ERROR_CONNECTION_ABORTED,
    WinError.WSAECONNABORTED, 59,  # ERROR_UNEXP_NET_ERR
})


class IocpProactor:
    """A drop-in for ``asyncio.windows_events.IocpProactor`` built on winiocp."""

    def __init__(self, concurrency: int = INFINITE) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._results: list[asyncio.Future[object]] = []
        #: Completions dequeued but not yet routed (an interrupt struck in a handler).
        self._unfinished: deque[Completion] = deque()
        self._port: CompletionPort | None = CompletionPort(concurrency)
        #: ``wake()``'s packet: at most one in flight, however many threads call it.
        self.wakeup: Wakeup = Wakeup(self._port)
        self._views: weakref.WeakKeyDictionary[object, OverlappedOwner[object]] = (
            weakref.WeakKeyDictionary())
        self._stopped_serving: weakref.WeakSet[object] = weakref.WeakSet()
        # Each socket's last receive, re-armed for the next one (rule 11): asyncio reads a
        # socket serially, into the same buffer, so the OVERLAPPED, flags, WSABUF and pin
        # are made once per socket rather than once per read.
        self._receives: weakref.WeakKeyDictionary[object, RecvOperation] = (
            weakref.WeakKeyDictionary())
        #: Each socket's pending sendfile (``connection_closing``).
        self._transmits: weakref.WeakKeyDictionary[socket.socket, _IocpFuture[int]] = (
            weakref.WeakKeyDictionary())
        #: The loop's turn: each ``select`` starts the next one. A transport whose send went
        #: out at once holds later writes of the same turn back, so they leave gathered.
        self.turn: int = 0
        self._before_wait: list[Callable[[], None]] = []
        self._polls: PollSet | None = None

    @property
    def polls(self) -> PollSet:
        """The sockets watched for readiness on this proactor's port (the loop's
        ``add_reader``/``add_writer``): made on first use, re-armed before each wait."""
        polls = self._polls
        if polls is None:
            polls = self._polls = PollSet(self._check_closed())
        return polls

    def __repr__(self) -> str:
        port = self._port
        info = [f"overlapped#={port.pending_count if port is not None else 0}",
                f"result#={len(self._results)}"]
        if port is None:
            info.append("closed")
        return f"<{type(self).__name__} {' '.join(info)}>"

    def _check_closed(self) -> CompletionPort:
        port = self._port
        if port is None:
            raise RuntimeError("IocpProactor is closed")
        return port

    def set_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop whose futures this proactor creates (called by the loop itself)."""
        self._loop = loop

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            raise RuntimeError("IocpProactor.set_loop() was not called")
        return loop

    # -- the loop's side ---------------------------------------------------------------------

    def select(self, timeout: float | None = None) -> list[asyncio.Future[object]]:
        """The futures that completed, waiting up to ``timeout`` seconds for the first."""
        self.turn += 1
        if self._before_wait and self._run_before_wait():
            timeout = 0  # they scheduled callbacks: the loop has work, it must not wait
        if self._polls is not None:
            self._polls.arm()
        if not self._results:
            self._poll(timeout)
        results, self._results = self._results, []
        return results

    def call_before_wait(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the loop next asks for completions, before it waits
        (the end of the current turn: after its handlers and its ready callbacks)."""
        self._before_wait.append(callback)

    def _run_before_wait(self) -> bool:
        """Run what ``call_before_wait`` deferred; whether the loop has callbacks ready now."""
        callbacks, self._before_wait = self._before_wait, []
        for index, callback in enumerate(callbacks):
            try:
                callback()
            except BaseException:  # an interrupt: the others still run, on the next select
                self._before_wait[:0] = callbacks[index + 1:]
                raise
        ready: object = getattr(self._loop, "_ready", None)  # BaseEventLoop's ready queue
        # Work they deferred to the end of a turn (a flush's resume_writing wrote again) is
        # work too: the next turn must come at once, not after the next event.
        return bool(ready) or bool(self._before_wait)

    def _poll(self, timeout: float | None = None) -> None:
        port = self._check_closed()
        if timeout is not None:
            if timeout < 0:
                raise ValueError("negative timeout")
            if timeout > _LONGEST_TIMEOUT:  # ceil(timeout * 1e3) would reach INFINITE
                raise ValueError("timeout too big")
        if self._unfinished:  # an interrupt cut the last batch short: finish it first
            timeout = 0
        completions = port.get_many(timeout)
        while True:
            self._dispatch(completions)
            if len(completions) < port.batch_size:
                break
            completions = port.get_many(0)
        # What the handlers just completed at once (a send that went out inline) is finished
        # now, not one loop iteration later; once only, so a socket that always has data
        # cannot keep the loop here.
        inline = port.get_inline()
        if inline:
            self._dispatch(inline)

    def _dispatch(self, completions: list[Completion]) -> None:
        """Route each completion to its operation's handler (none: a wake-up, consumed here,
        or a raw post). An interrupt in a handler keeps the rest of the batch for the next
        ``select`` (``_unfinished``)."""
        unfinished = self._unfinished
        unfinished.extend(completions)
        popleft = unfinished.popleft
        while unfinished:
            completion = popleft()
            operation = completion.operation
            if operation is None:
                self.wakeup.consume(completion)
                continue
            handler: CompletionHandler | None = operation.context  # type: ignore[assignment]
            if handler is not None:
                operation.context = None  # finished: the handler may go (or re-arm it)
                handler(completion)

    def _result(self, value: T) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self._get_loop().create_future()
        future.set_result(value)
        return future

    # -- views of asyncio's objects ----------------------------------------------------------

    def _register_with_iocp(self, obj: object, *, listening: bool | None = None
                            ) -> OverlappedOwner[object]:
        """The borrowed view of ``obj`` (a stdlib socket or a PipeHandle), associated with
        our port on first use (``listening``: as ``Socket.borrow`` takes it)."""
        port = self._check_closed()
        view = self._views.get(obj)
        if view is None:  # (once its owner closes it, the view refuses every call itself)
            view = self._borrow(obj, listening)
            port.associate(view)
            if isinstance(view, Socket):
                view.set_skip_on_success()  # (only where Windows allows it)
            self._views[obj] = view
        return view

    def stream_view(self, sock: socket.socket) -> Socket:
        """The borrowed, associated view of a connected stream socket, for a transport that
        issues its own operations with completion handlers as their context (asyncio makes
        transports of connected sockets only: Windows is not asked whether it listens)."""
        return _sock(self._register_with_iocp(sock, listening=False))

    @staticmethod
    def _borrow(obj: object, listening: bool | None) -> OverlappedOwner[object]:
        if isinstance(obj, socket.socket):
            return Socket.borrow(obj, listening=listening)  # type: ignore[return-value]
        fileno = getattr(obj, "fileno", None)
        if fileno is None:
            raise TypeError(f"expected a socket or a pipe handle, not {type(obj).__name__}")
        value = int(fileno())
        return Handle.borrow(value, repr(obj),  # type: ignore[return-value]
                             weak_fileno(cast("Lender", obj)))

    def _issue(self, conn: Conn, issue: Callable[[OverlappedOwner[object], _Pending[T]], Operation],
               finish: Callable[[Completion], T]) -> _IocpFuture[T]:
        """Issue one operation on ``conn``'s view; its future is routed by the record set
        as the operation's context before the call (another thread may dequeue it first)."""
        view = self._register_with_iocp(conn)
        future: _IocpFuture[T] = _IocpFuture(None, view, loop=self._get_loop())
        future.operation = issue(view, _Pending(future, finish, conn, self))
        return future

    # -- sockets and pipes -------------------------------------------------------------------

    def recv(self, conn: Conn, nbytes: int, flags: int = 0) -> asyncio.Future[bytes]:
        """WSARecv (or ReadFile on a pipe) of up to ``nbytes``: a future of the bytes (b"" at
        the end of the stream). A reset or aborted receive raises ConnectionResetError."""
        try:
            if isinstance(conn, socket.socket):
                return self._issue(conn, lambda view, pending: _sock(view).recv_into(
                    [bytearray(nbytes)], flags=flags, context=pending), _received)
            return self._issue(conn, lambda view, pending: _handle(view).read(
                nbytes, context=pending), _received)
        except BrokenPipeError:
            return self._result(b"")

    def recv_into(self, conn: Conn, buf: WriteableBuffer, flags: int = 0
                  ) -> asyncio.Future[int]:
        """WSARecv (or ReadFile) into ``buf``, zero-copy: a future of the byte count. ``buf``
        stays pinned (owned by the operation) until the completion is dequeued."""
        try:
            if isinstance(conn, socket.socket):
                return self._issue(conn, lambda view, pending: self._receive_into(
                    conn, _sock(view), buf, flags, pending), _count)
            return self._issue(conn, lambda view, pending: _handle(view).read_into(
                buf, context=pending), _count)  # type: ignore[arg-type]
        except BrokenPipeError:
            return self._result(0)

    def _receive_into(self, conn: socket.socket, view: Socket, buf: WriteableBuffer, flags: int,
                      pending: _Pending[int]) -> RecvOperation:
        last = self._receives.get(conn)
        reuse = last if last is not None and not last.pending else None
        try:
            operation = view.recv_into([buf], flags=flags, context=pending,  # type: ignore[list-item]
                                       reuse=reuse)
        except BaseException:
            if reuse is not None and not reuse.pending:  # (failed at once: not issued)
                reuse.let_go()
            raise
        self._receives[conn] = operation
        return operation

    def recvfrom(self, conn: socket.socket, nbytes: int, flags: int = 0
                 ) -> asyncio.Future[tuple[bytes, Address | None]]:
        """WSARecvFrom: a future of ``(data, address)``; an ICMP port-unreachable reported
        by Windows gives ``(b"", None)``, as the stock proactor does."""
        try:
            return self._issue(conn, lambda view, pending: _sock(view).recvfrom(
                nbytes, context=pending), _datagram)
        except BrokenPipeError:
            return self._result((b"", None))

    def recvfrom_into(self, conn: socket.socket, buf: WriteableBuffer, nbytes: int = 0,
                      flags: int = 0) -> asyncio.Future[tuple[int, Address | None]]:
        """WSARecvFrom into the first ``nbytes`` bytes of ``buf`` (0: all of it): a future of
        ``(count, address)``. A larger datagram fails with WSAEMSGSIZE and nothing is written
        past ``nbytes`` (asyncio's ``sock_recvfrom_into`` passes ``nbytes`` third, as to the
        stock proactor). ``flags`` must be 0, as WSARecvFrom's in the stock proactor."""
        target = _first_bytes(buf, nbytes)
        if flags:
            raise ValueError(f"recvfrom_into() takes no flags, got {flags!r}")
        try:
            return self._issue(conn, lambda view, pending: _sock(view).recvfrom_into(
                target, context=pending), _datagram_count)  # type: ignore[arg-type]
        except BrokenPipeError:
            return self._result((0, None))

    def sendto(self, conn: socket.socket, buf: ReadableBuffer, flags: int = 0,
               addr: Address | None = None) -> asyncio.Future[int]:
        """WSASendTo ``addr`` (required: TypeError without one): a future of the count."""
        if not isinstance(addr, tuple):  # as _overlapped.WSASendTo: an address is required
            raise TypeError(f"sendto() needs an address tuple, not {type(addr).__name__}")
        return self._issue(conn, lambda view, pending: _sock(view).sendto(
            buf, addr, context=pending), _count)  # type: ignore[arg-type]

    def send(self, conn: Conn, buf: ReadableBuffer, flags: int = 0) -> asyncio.Future[int]:
        """WSASend (or WriteFile on a pipe) of ``buf``, zero-copy (pinned until it
        completes): a future of the byte count."""
        if isinstance(conn, socket.socket):
            return self._issue(conn, lambda view, pending: _sock(view).send(
                buf, flags, context=pending), _count)  # type: ignore[arg-type]
        return self._issue(conn, lambda view, pending: _handle(view).write(
            buf, context=pending), _count)  # type: ignore[arg-type]

    def accept(self, listener: socket.socket
               ) -> asyncio.Future[tuple[socket.socket, Address]]:
        """AcceptEx on ``listener``: a future of ``(conn, address)``.

        A client that connected and reset before it was accepted (rule 9) fails only its
        AcceptEx, not the accept: the same future goes on with a new AcceptEx on a new
        socket, so neither ``sock_accept`` nor a server's accept loop ever sees it.
        (CPython's proactor passes that error on, and asyncio's server then closes its
        listening socket for good.)"""
        view = self._register_with_iocp(listener)
        future: _IocpFuture[tuple[socket.socket, Address]] = _IocpFuture(
            None, view, loop=self._get_loop())
        attempt = _AcceptAttempt(self, listener, _sock(view), future)
        attempt.post()
        future.add_done_callback(attempt.done)
        return future

    def connect(self, conn: socket.socket, address: Address) -> asyncio.Future[socket.socket]:
        """ConnectEx to a resolved ``address`` (binding first if needed), with
        SO_UPDATE_CONNECT_CONTEXT set on success: a future of ``conn``. A datagram socket is
        connected at once."""
        if conn.type == socket.SOCK_DGRAM:
            # A datagram "connect" only sets the default peer: it completes at once.
            conn.connect(address)
            return self._result(conn)

        def finish(completion: Completion) -> socket.socket:
            if completion.outcome is Outcome.FAILED:
                raise failure_of(completion)
            return conn  # SO_UPDATE_CONNECT_CONTEXT is set already

        return self._issue(conn, lambda view, pending: _sock(view).connect(
            address, context=pending), finish)

    def sendfile(self, sock: socket.socket, file: HasFileno, offset: int, count: int
                 ) -> asyncio.Future[int]:
        """TransmitFile of ``count`` bytes (0: to the end) of ``file`` from ``offset``: a
        future of the bytes sent. ``file`` stays the caller's (a borrowed handle)."""
        value = msvcrt.get_osfhandle(file.fileno())
        file_ref = weakref.ref(file)

        def file_value() -> int:
            owner = file_ref()
            return -1 if owner is None else msvcrt.get_osfhandle(owner.fileno())

        source = Handle.borrow(value, repr(file), file_value)
        future = self._issue(sock, lambda view, pending: _sock(view).transmit_file(
            source, count, offset=offset, context=pending), _count)
        self._transmits[sock] = future
        _TransmitWatch(self, sock, _sock(self._register_with_iocp(sock)), future)
        return future

    def connection_closing(self, sock: socket.socket) -> None:
        """``sock``'s connection is being closed under a pending ``sendfile`` (a transport
        calls this before it closes its socket): the sendfile fails now, with the
        ConnectionResetError closesocket gives it on Windows, and its TransmitFile is
        cancelled while the socket is still open, so its completion comes (Wine leaves a
        TransmitFile pending when its socket is closed). The port keeps the operation's
        memory until then."""
        future = self._transmits.pop(sock, None)
        if future is not None and not future.done():
            future.set_exception(ConnectionResetError(
                None, "the connection was closed during sendfile", None,
                WinError.ERROR_OPERATION_ABORTED))

    def accept_pipe(self, pipe: windows_utils.PipeHandle
                    ) -> asyncio.Future[windows_utils.PipeHandle]:
        """ConnectNamedPipe on a server instance: a future of ``pipe`` once a client is
        connected (at once if one already is)."""
        def finish(completion: Completion) -> windows_utils.PipeHandle:
            if completion.outcome is Outcome.FAILED:
                raise failure_of(completion)
            return pipe

        future = self._issue(pipe, lambda view, pending: _handle(view).connect_pipe(
            context=pending), finish)
        operation = future.operation
        if operation is not None and not operation.pending:  # ERROR_PIPE_CONNECTED
            future.operation = None
            return self._result(pipe)
        return future

    async def connect_pipe(self, address: str) -> windows_utils.PipeHandle:
        """Open the client end of the named pipe ``address`` (overlapped), retrying while
        every server instance is busy; raises the OSError of any other failure."""
        delay = CONNECT_PIPE_INIT_DELAY
        while True:
            # There is no overlapped connect for a pipe client: CreateFile until the server
            # has a free instance.
            handle = kernel32.CreateFileW(
                address, FileAccess.GENERIC_READ | FileAccess.GENERIC_WRITE, 0, ffi.NULL,
                FileCreation.OPEN_EXISTING, FileFlags.FILE_FLAG_OVERLAPPED, ffi.NULL)
            if handle != INVALID_HANDLE:
                return windows_utils.PipeHandle(int(ffi.cast("uintptr_t", handle)))
            error = kernel32.GetLastError()
            if error != _ERROR_PIPE_BUSY:
                raise exception_for(error, f"CreateFileW({address!r})")
            delay = min(delay * 2, CONNECT_PIPE_MAX_DELAY)
            await asyncio.sleep(delay)

    # -- handles -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Make a ``select`` waiting in another thread return, from any thread; a no-op once
        closed. Coalesced (``winiocp.port.Wakeup``): at most one packet is in flight, and it
        is consumed when ``select`` dequeues it, before the loop reads its ready callbacks
        (asyncio's ``call_soon_threadsafe`` adds the callback first, then wakes)."""
        if self._port is not None:
            self.wakeup.wake()

    def wait_for_handle(self, handle: int, timeout: float | None = None
                        ) -> asyncio.Future[bool]:
        """A future whose result is True if ``handle`` is signalled when the wait ends, False
        after ``timeout`` seconds (as the stock proactor: the object is polled at the end)."""
        return self._wait_for_handle(handle, timeout, None)

    def _wait_cancel(self, event: int, done_callback: Callable[[_WaitCancelFuture], object]
                     ) -> _WaitCancelFuture:
        future = self._wait_for_handle(event, None, done_callback)
        assert isinstance(future, _WaitCancelFuture)
        return future

    def _wait_for_handle(self, handle: int, timeout: float | None,
                         done_callback: Callable[[_WaitCancelFuture], object] | None
                         ) -> _IocpFuture[bool]:
        port = self._check_closed()
        loop = self._get_loop()
        operation = wait_for_handle(port, handle, timeout)
        future: _IocpFuture[bool]
        if done_callback is not None:
            future = _WaitCancelFuture(operation, loop=loop, done_callback=done_callback)
        else:
            future = _IocpFuture(operation, None, loop=loop)
        operation.context = _Pending(future, lambda completion: operation.signaled(), None,
                                     self)
        return future

    # -- the rest of the contract ------------------------------------------------------------

    def _unregister(self, ov: object) -> None:
        """asyncio calls this for a cancelled operation whose completion it will not wait for.
        Nothing to do: the port's registry keeps the memory until the completion is dequeued
        (whoever dequeues it), and a done future ignores it."""
        self._check_closed()

    def _get_accept_socket(self, family: int) -> socket.socket:
        return _accept_socket(family)

    def _stop_serving(self, obj: object) -> None:
        # The loop closes obj next: its pending operations fail, and their futures are
        # cancelled instead of failing.
        self._stopped_serving.add(obj)

    def close(self) -> None:
        """Cancel every pending operation and wait for their completions; anything the
        kernel still holds after ``CLOSE_WAIT_SECONDS`` stays allocated (orphaned), never
        freed."""
        port = self._port
        if port is None:
            return
        if self._polls is not None:
            self._polls.close()  # cancels the polls (drained below) and closes the AFD handles
        # Completions not yet routed: the futures' still are; transports' handlers never run
        # once the loop is closing.
        self._unfinished = deque(completion for completion in self._unfinished
                                 if _pending_of(completion.operation) is not None)
        for operation in port.pending_operations():
            pending = _pending_of(operation)
            if pending is None:
                # A transport's own operation: its handler is not run any more (the loop is
                # closed); the operation is cancelled, and its memory kept until it ends.
                operation.context = None
                owner = operation.owner
                if isinstance(owner, OverlappedOwner):
                    try:
                        owner.cancel(operation)
                    except OSError:  # closed already (ClosedHandleError) or gone
                        pass
                continue
            future = pending.future
            if future.cancelled() or isinstance(future, _WaitCancelFuture):
                continue
            try:
                future.cancel()
            except OSError as exc:
                if self._loop is not None:
                    self._loop.call_exception_handler({
                        "message": "Cancelling a future failed", "exception": exc,
                        "future": future})
        start = time.monotonic()
        next_message = start + 1.0
        while port.pending_count and time.monotonic() - start < CLOSE_WAIT_SECONDS:
            if time.monotonic() >= next_message:
                log.debug("%r is running after closing for %.1f seconds", self,
                          time.monotonic() - start)
                next_message = time.monotonic() + 1.0
            self._poll(0.1)
        if port.pending_count:
            log.warning("%r: %d operations did not complete; their memory is kept",
                        self, port.pending_count)
        self._results = []
        self._port = None
        port.close()

    def __del__(self) -> None:
        if getattr(self, "_port", None) is not None:
            self.close()


#: How often the connection under a pending sendfile is checked, in seconds (``_TransmitWatch``).
TRANSMIT_CHECK_SECONDS = 1.0


class _TransmitWatch:
    """Ends a pending sendfile whose connection is gone, where the TransmitFile itself does
    not say so.

    Windows documents that TransmitFile "completes when it has sent the specified number of
    bytes, or when an error occurs" (Microsoft Learn, TransmitFile function), and that
    closesocket cancels a socket's pending overlapped operations. Wine does neither when the
    peer closed and then reset the connection, or when the socket is closed under it while
    the peer is connected: the TransmitFile stays pending, and the sendfile would wait for
    ever. So every ``TRANSMIT_CHECK_SECONDS`` while it is pending, the connection is looked
    at (one getpeername, which fails with WSAENOTCONN once it was reset): if it is gone, or
    the socket was closed, the future fails with ConnectionResetError and the TransmitFile is
    cancelled; its memory stays the port's until its completion comes (or, if it never
    does, until the port's close leaves it to the orphans). On Windows the TransmitFile
    fails first, and the check never finds anything."""

    __slots__ = ("proactor", "sock", "view", "future", "timer")

    def __init__(self, proactor: IocpProactor, sock: socket.socket, view: Socket,
                 future: _IocpFuture[int]) -> None:
        self.proactor = proactor
        self.sock = sock
        self.view = view
        self.future = future
        self.timer: asyncio.TimerHandle | None = None
        if future.done():
            self.done(future)
            return
        future.add_done_callback(self.done)
        self.schedule()

    def schedule(self) -> None:
        self.timer = self.future.get_loop().call_later(TRANSMIT_CHECK_SECONDS, self.check)

    def check(self) -> None:
        self.timer = None
        future = self.future
        if future.done():
            return
        try:
            self.view.getpeername()
        except ClosedHandleError:
            error, what = WinError.ERROR_OPERATION_ABORTED, "the socket was closed"
        except OSError as exc:
            if exc.winerror != WinError.WSAENOTCONN:
                self.schedule()
                return
            error, what = WinError.WSAECONNRESET, "the connection was reset"
        else:
            self.schedule()
            return
        future.set_exception(ConnectionResetError(None, f"{what} during sendfile", None, error))

    def done(self, future: asyncio.Future[int]) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        transmits = self.proactor._transmits  # pyright: ignore[reportPrivateUsage]
        if transmits.get(self.sock) is future:
            del transmits[self.sock]


def _pending_of(operation: Operation | None) -> _Pending[object] | None:
    """The record that finishes ``operation``'s future, if it has one."""
    pending = operation.context if operation is not None else None
    return cast("_Pending[object]", pending) if isinstance(pending, _Pending) else None


#: The longest timeout ``select`` accepts, in seconds: the port's longest finite wait.
_LONGEST_TIMEOUT = MAX_WAIT_MS / 1e3


def _accept_socket(family: int) -> socket.socket:
    """A new non-blocking socket for AcceptEx to accept into."""
    sock = socket.socket(family)
    sock.settimeout(0)
    return sock


def _first_bytes(buf: WriteableBuffer, nbytes: int) -> WriteableBuffer:
    """The first ``nbytes`` bytes of ``buf`` (all of it for 0); ValueError for a negative
    ``nbytes`` or one beyond the buffer, as ``socket.recvfrom_into`` says it."""
    if nbytes < 0:
        raise ValueError("negative buffersize in recvfrom_into")
    if not nbytes:
        return buf
    view = memoryview(buf)
    size = view.nbytes
    if nbytes > size:
        raise ValueError("nbytes is greater than the length of the buffer")
    if nbytes == size:
        return buf
    return (view if view.format == "B" and view.ndim == 1 else view.cast("B"))[:nbytes]


def _sock(view: OverlappedOwner[object]) -> Socket:
    assert isinstance(view, Socket)
    return view


def _handle(view: OverlappedOwner[object]) -> Handle:
    assert isinstance(view, Handle)
    return view


def _datagram(completion: Completion) -> tuple[bytes, Address | None]:
    operation = completion.operation
    assert isinstance(operation, AddressedOperation)
    if completion.outcome is Outcome.FAILED:
        if completion.error == _ERROR_PORT_UNREACHABLE:
            return b"", None
        raise failure_of(completion)
    return operation.data, operation.peer


def _datagram_count(completion: Completion) -> tuple[int, Address | None]:
    operation = completion.operation
    assert isinstance(operation, AddressedOperation)
    if completion.outcome is Outcome.FAILED:
        if completion.error == _ERROR_PORT_UNREACHABLE:
            return 0, None
        raise failure_of(completion)
    return completion.bytes_transferred, operation.peer
