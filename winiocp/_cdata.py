"""Static types for cffi's objects, so that raw calls type-check without cffi stubs.

cffi ships no type information. ``CData`` is a nominal class for mypy (an ``int`` is not a
``CData``, so passing a handle value where a pointer belongs is a type error); at run time it
is cffi's own ``ffi.CData`` class, so ``isinstance`` works. ``TypedFFI`` describes the
``ffi`` methods this package and its users call.

Field access on a struct (``overlapped.Internal``) is dynamic by nature: it is typed ``Any``
here and nowhere else; the typed wrappers never hand ``CData`` to users except on request.
"""

from __future__ import annotations

from collections.abc import Callable

from typing import TYPE_CHECKING, Any, Protocol, overload

from ._ffi import ffi as _untyped_ffi

if TYPE_CHECKING:

    class CData:
        """A C value owned or pointed to by cffi: a pointer, array, struct or function."""

        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: object) -> None: ...
        def __getitem__(self, index: int) -> Any: ...
        def __setitem__(self, index: int, value: object) -> None: ...
        def __add__(self, offset: int) -> CData: ...
        def __sub__(self, offset: int) -> CData: ...
        def __len__(self) -> int: ...
        def __bool__(self) -> bool: ...
        def __int__(self) -> int: ...

    class CType:
        """A C type object, as returned by ``ffi.typeof``."""

        kind: str
        cname: str
        abi: int
        args: tuple[CType, ...]
        result: CType
        item: CType
        fields: list[tuple[str, object]]
        relements: dict[str, int]  # an enum's names and values

else:
    CData = _untyped_ffi.CData
    CType = _untyped_ffi.CType


class CBuffer(Protocol):
    """What ``ffi.buffer`` returns: a view of raw C memory."""

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> bytes: ...
    def __setitem__(self, index: slice, value: bytes | bytearray | memoryview) -> None: ...
    def __len__(self) -> int: ...


class TypedFFI(Protocol):
    """The subset of cffi's ``FFI`` API used with this binding (``winiocp.raw.ffi``)."""

    #: The NULL pointer (compare pointers with ``==``, not ``is``).
    NULL: CData

    def new(self, cdecl: str, init: object = ...) -> CData:
        """Allocate a zero-filled C object of pointer or array type ``cdecl`` (``"DWORD *"``,
        ``"char[]"``), initialised from ``init``; returns a pointer to it.

        The result *owns* the memory: it is freed when that Python object is collected. So
        anything the kernel may still write (an OVERLAPPED, a buffer) must stay referenced
        until its completion is dequeued. Raises ``TypeError`` / ``OverflowError`` /
        ``ValueError`` for a bad type or initialiser.
        """
        ...

    def callback(self, cdecl: str, python_callable: Callable[..., object]) -> CData:
        """A C function pointer of type ``cdecl`` that calls ``python_callable`` (from any
        thread: cffi takes the GIL). Keep the returned object alive as long as C may call it.
        """
        ...

    def cast(self, cdecl: str, value: CData | int) -> CData:
        """``value`` as C type ``cdecl``, like a C cast (``ffi.cast("HANDLE", sock)``).

        Owns nothing: a pointer made by a cast does not keep what it points to alive.
        """
        ...

    def typeof(self, cdecl: str | CData) -> CType:
        """The C type named by ``cdecl``, or of a C object."""
        ...

    def sizeof(self, cdecl: str | CData) -> int:
        """The size in bytes of a C type, or of a C object (an array's whole length)."""
        ...

    def alignof(self, cdecl: str) -> int:
        """The alignment in bytes of a C type."""
        ...

    def offsetof(self, cdecl: str, *fields_or_indexes: str | int) -> int:
        """The byte offset of a field (or nested field, or array item) in struct ``cdecl``."""
        ...

    def addressof(self, cdata: CData, *fields_or_indexes: str | int) -> CData:
        """A pointer to a struct, or to one of its fields; it does not own the struct."""
        ...

    def from_buffer(
        self, cdecl: str, python_buffer: object, require_writable: bool = ...
    ) -> CData:
        """A ``char[]`` (or ``cdecl``) view of a Python buffer's memory, without a copy.

        The result keeps ``python_buffer`` alive and pinned: a ``bytearray`` cannot be resized
        while it exists. With ``require_writable``, a read-only buffer is refused (an error).
        """
        ...

    def buffer(self, cdata: CData, size: int = ...) -> CBuffer:
        """A Python buffer over C memory (``size`` bytes; default: the whole object).

        A view, not a copy: valid only while ``cdata`` (and what it points to) is alive.
        """
        ...

    def string(self, cdata: CData, maxlen: int = ...) -> bytes | str:
        """The NUL-terminated string ``cdata`` points to: ``bytes`` for ``char``, ``str``
        for ``wchar_t`` (at most ``maxlen`` items)."""
        ...

    def unpack(self, cdata: CData, length: int) -> bytes | str | list[object]:
        """``length`` items at ``cdata`` as ``bytes``, ``str`` or a list, by item type."""
        ...

    def memmove(self, dest: CData | bytearray, src: CData | bytes, n: int) -> None:
        """Copy ``n`` bytes from ``src`` to ``dest`` (C memory or writable Python buffers)."""
        ...

    def release(self, cdata: CData) -> None:
        """Free memory of ``new`` (or unpin a ``from_buffer``) now instead of at collection.

        Never on memory the kernel may still write: only after its completion is dequeued.
        """
        ...

    def dlopen(self, name: str, flags: int = ...) -> object:
        """Load a DLL and return an object whose attributes are its declared functions.

        Raises ``OSError`` when the DLL cannot be loaded.
        """
        ...

    def getwinerror(self, code: int = ...) -> tuple[int, str]:
        """``(code, message)`` for a Windows error code.

        Without ``code``: the ``GetLastError()`` value that cffi saved, on this thread, right
        after the last C call made through it, so other Python code in between cannot
        overwrite it.
        """
        ...

    def list_types(self) -> tuple[list[str], list[str], list[str]]:
        """The declared type names: (typedefs, structs, unions)."""
        ...
