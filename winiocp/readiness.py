"""Watching many sockets for readiness on one completion port: ``PollSet``.

``winiocp.afd`` gives one-shot polls. Both of readiness's users, the selector
(``winiocp.selectors.AfdSelector``) and the event loop's ``add_reader``/``add_writer``,
need the same thing on top: "tell me, level-triggered, which of these sockets are readable or
writable", with sockets added, changed and removed at any time, and every poll's memory owned
until its completion is dequeued. ``PollSet`` is that one mechanism:

* each watched socket is a ``Watch`` with at most one poll in flight (two polls of one socket
  confuse Windows). A wider interest while a poll is in flight cancels it; the next poll,
  with the new interest, is issued once the cancelled one's completion is dequeued. A
  narrower interest keeps the poll in flight and masks what it reports;
* ``arm()``, called before each wait, issues the polls that are due: for new watches, and
  for every watch whose poll completed since (which is what makes it level-triggered: a
  socket still ready completes again at once, and is reported again);
* a completion is routed to its ``Watch`` (the operation's context, so the port's dequeue
  routes it like any other operation) and, if the watch is still in the set, its events are
  added to ``ready`` as ``EVENT_READ``/``EVENT_WRITE`` bits (the ``selectors`` values);
* a removed watch's poll is cancelled and its completion ignored when it comes, so no event
  of a socket ever reaches a registration made after it was removed: events belong to the
  ``Watch`` object, never to a socket value (which Windows reuses);
* a socket closed while watched ends its watch (the poll reports AFD_POLL_LOCAL_CLOSE, or
  the owner's ``fileno()`` says -1 before the next poll): it reports nothing more, as epoll
  drops a closed descriptor. A poll that cannot even be issued (a value that is no socket)
  reports the watch ready once, so the caller's own I/O raises the error instead of waiting
  forever;
* polls are spread over several driver handles (``GROUP_SIZE`` sockets each, as mio does):
  cancelling a poll costs more the more polls its handle has pending. A handle with no
  watches left is closed, except the last.
"""

from __future__ import annotations

from collections.abc import Callable

from .afd import READABLE_EVENTS, WRITABLE_EVENTS, AfdDevice, AfdPollOperation, base_socket
from .constants import AfdPollEvents
from .errors import ClosedHandleError
from .port import Completion, CompletionPort

#: ``selectors.EVENT_READ`` and ``EVENT_WRITE``: the readiness bits ``PollSet`` reports.
EVENT_READ = 1
EVENT_WRITE = 2
_LOCAL_CLOSE = int(AfdPollEvents.AFD_POLL_LOCAL_CLOSE)
#: What a poll asks for, by interest (EVENT_* bits); a closed socket always ends the poll.
_ASKED = {
    0: 0,
    EVENT_READ: READABLE_EVENTS | _LOCAL_CLOSE,
    EVENT_WRITE: WRITABLE_EVENTS | _LOCAL_CLOSE,
    EVENT_READ | EVENT_WRITE: READABLE_EVENTS | WRITABLE_EVENTS | _LOCAL_CLOSE,
}


class Watch:
    """One socket in a ``PollSet``: its interest and its one poll.

    Made by ``PollSet.add``; ``data`` is the caller's. Called with a dequeued completion of
    its poll (the port routes it here, as the operation's context).
    """

    __slots__ = ("fileno", "base", "interest", "data", "live", "removed", "operation",
                 "polling", "cancelling", "is_open", "_set", "__weakref__")

    def __init__(self, poll_set: PollSet, fileno: int, base: int, interest: int,
                 data: object, operation: AfdPollOperation,
                 is_open: Callable[[], bool] | None) -> None:
        #: The socket value as the caller gave it.
        self.fileno: int = fileno
        #: The base provider's socket (what the polls name).
        self.base: int = base
        #: EVENT_READ | EVENT_WRITE bits the caller wants reported.
        self.interest: int = interest
        #: The caller's own (a selector key, the loop's handles, ...).
        self.data: object = data
        #: In the set, and its socket not known to be closed.
        self.live: bool = True
        #: Taken out of the set (``PollSet.remove``).
        self.removed: bool = False
        #: Its poll, re-armed for each poll (one at a time).
        self.operation: AfdPollOperation = operation
        #: The AFD events of the poll in flight (0: none in flight).
        self.polling: int = 0
        #: The poll in flight was asked to cancel (a wider one is due once it completes).
        self.cancelling: bool = False
        #: False once the socket's owner has closed it (None: the caller cannot tell).
        self.is_open: Callable[[], bool] | None = is_open
        self._set = poll_set

    def __repr__(self) -> str:
        return (f"<Watch of socket {self.fileno} interest={self.interest}"
                f"{'' if self.live else ' ended'}{' polling' if self.polling else ''}>")

    def __call__(self, completion: Completion) -> None:
        self._set._completed(self, completion)  # pyright: ignore[reportPrivateUsage]


class PollSet:
    """Sockets watched for readiness by AFD polls completing on ``port``.

    Call ``arm()`` before each wait on the port, route the dequeued completions (each poll's
    context is its ``Watch``: call it with the completion), then read and clear ``ready``.
    Not thread-safe: one thread (the one that waits on the port) uses it.
    """

    #: Sockets per driver handle.
    GROUP_SIZE = 32

    def __init__(self, port: CompletionPort) -> None:
        self.port: CompletionPort = port
        #: (watch, EVENT_* bits) reported since the caller last cleared it.
        self.ready: list[tuple[Watch, int]] = []
        self._due: dict[Watch, None] = {}  # an ordered set: watches whose poll is due
        self._devices: dict[AfdDevice, int] = {}  # device -> its watches
        self._device: AfdDevice | None = None  # the one new watches go to
        self._count = 0
        self.closed: bool = False

    def __len__(self) -> int:
        """How many watches are in the set."""
        return self._count

    def __repr__(self) -> str:
        return f"<PollSet of {self._count} sockets on {len(self._devices)} AFD handles>"

    # -- the caller's side ---------------------------------------------------------------

    def add(self, fileno: int, interest: int, data: object = None,
            is_open: Callable[[], bool] | None = None) -> Watch:
        """Watch socket ``fileno`` for ``interest`` (EVENT_READ | EVENT_WRITE bits).

        ``is_open`` (if given) says whether the socket's owner still has it open: checked
        before each poll, so a socket closed and its value reused is never polled for the
        old watch. Raises ``ValueError`` for an interest that is not EVENT_* bits, and the
        ``OSError`` of ``base_socket`` for a value that is not a socket.
        """
        if self.closed:
            raise RuntimeError("the PollSet is closed")
        _check_interest(interest)
        base = base_socket(fileno)
        device = self._device_for_new_watch()
        watch = Watch(self, fileno, base, interest, data, AfdPollOperation(device), is_open)
        self._devices[device] += 1
        self._count += 1
        if interest:
            self._due[watch] = None
        return watch

    def modify(self, watch: Watch, interest: int) -> None:
        """Change what ``watch`` reports; the next ``arm()`` polls for it."""
        _check_interest(interest)
        if watch._set is not self:  # pyright: ignore[reportPrivateUsage]
            raise ValueError(f"{watch!r} is not in this PollSet")
        watch.interest = interest
        if watch.live and interest:
            self._due[watch] = None

    def remove(self, watch: Watch) -> None:
        """Stop watching (idempotent). A poll in flight is cancelled; its memory stays owned
        until its completion is dequeued, and that completion reports nothing."""
        if watch._set is not self:  # pyright: ignore[reportPrivateUsage]
            raise ValueError(f"{watch!r} is not in this PollSet")
        if watch.removed:
            return
        watch.live = False
        watch.removed = True
        self._due.pop(watch, None)
        self._cancel(watch)
        self._count -= 1
        device = watch.operation.device
        self._devices[device] -= 1
        if not self._devices[device] and device is not self._device:
            del self._devices[device]
            device.close()  # its cancelled polls still complete, and stay owned till then

    def arm(self) -> None:
        """Issue the polls that are due (new watches, changed interests, and the watches
        whose last poll completed). Call it before each wait on the port."""
        if not self._due:
            return
        due, self._due = self._due, {}
        for watch in due:
            if not watch.live:
                continue
            wanted = _ASKED[watch.interest]
            if watch.polling:
                if wanted & ~watch.polling:  # wider: cancel, poll again once it completed
                    self._cancel(watch)
                continue
            if wanted:
                self._poll(watch, wanted)

    def close(self) -> None:
        """Cancel every poll and close the driver handles (idempotent). The polls' memory
        stays owned by the port until their completions are dequeued (or forever, if the
        port is closed first)."""
        if self.closed:
            return
        self.closed = True
        for device in self._devices:
            if not device.closed:
                try:
                    device.cancel()
                except ClosedHandleError:
                    pass
                device.close()
        self._devices.clear()
        self._device = None
        self._due.clear()
        self.ready.clear()

    # -- inside --------------------------------------------------------------------------

    def _device_for_new_watch(self) -> AfdDevice:
        device = self._device
        if device is None or self._devices[device] >= self.GROUP_SIZE:
            device = next((d for d, n in self._devices.items() if n < self.GROUP_SIZE), None)
            if device is None:
                device = AfdDevice.open()
                try:
                    self.port.associate(device)
                except BaseException:
                    device.close()
                    raise
                self._devices[device] = 0
            self._device = device
        return device

    def _poll(self, watch: Watch, events: int) -> None:
        if watch.is_open is not None and not watch.is_open():
            watch.live = False  # closed by its owner: the value may be another socket's now
            return
        operation = watch.operation
        try:
            operation.device.poll(watch.base, events, operation=operation, context=watch)
        except OSError:
            # Not a socket (any more): report it once, so the caller's I/O says why.
            watch.live = False
            if watch.interest:
                self.ready.append((watch, watch.interest))
            return
        watch.polling = events
        watch.cancelling = False

    def _cancel(self, watch: Watch) -> None:
        if watch.polling and not watch.cancelling:
            watch.cancelling = True
            try:
                watch.operation.device.cancel(watch.operation)
            except ClosedHandleError:
                pass  # closed with the set: closing cancelled it

    def _completed(self, watch: Watch, completion: Completion) -> None:
        watch.polling = 0
        watch.cancelling = False
        if not watch.live:
            return  # removed (or closed) meanwhile: its events are no one's
        operation = watch.operation
        if operation.error:
            if not operation.cancel_requested:  # the poll itself failed: the socket is gone
                watch.live = False
                if watch.interest:
                    self.ready.append((watch, watch.interest))
                return
            events = 0  # cancelled to widen the interest: poll again
        else:
            events = operation.events
            if events & _LOCAL_CLOSE:
                watch.live = False  # closed while watched: no more events
                return
        ready = ((EVENT_READ if events & READABLE_EVENTS else 0)
                 | (EVENT_WRITE if events & WRITABLE_EVENTS else 0)) & watch.interest
        if ready:
            self.ready.append((watch, ready))
        if watch.interest:
            self._due[watch] = None


def fileno_of(fileobj: object) -> int:
    """The socket value of ``fileobj``: an int, or what its ``fileno()`` returns. Raises
    ``ValueError`` for anything else, or a negative value (a closed socket object's -1)."""
    if isinstance(fileobj, int) and not isinstance(fileobj, bool):
        fd = fileobj
    else:
        fileno = getattr(fileobj, "fileno", None)
        if fileno is None:
            raise ValueError(f"Invalid file object: {fileobj!r}")
        try:
            fd = int(fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def still_open(fileobj: object, fd: int) -> Callable[[], bool] | None:
    """For ``PollSet.add``'s ``is_open``: whether ``fileobj`` still has socket value ``fd``
    (None for a bare int, which cannot tell)."""
    if isinstance(fileobj, int):
        return None

    def is_open() -> bool:
        try:
            return bool(fileobj.fileno() == fd)  # type: ignore[attr-defined]
        except (OSError, ValueError):
            return False
    return is_open


def _check_interest(interest: int) -> None:
    if not isinstance(interest, int) or interest not in _ASKED:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"interest must be EVENT_READ and/or EVENT_WRITE bits, got {interest!r}")
