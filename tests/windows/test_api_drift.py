"""The typed interface (``winiocp/_api.py``) and the C declarations cffi loaded cannot drift apart.

mypy checks raw calls against the generated Protocols, but cffi executes them against the
cdefs. If the two disagree (a header edited without regenerating, a hand edit, a generator
bug), code that type-checks can pass a pointer where C wants an integer or the wrong number
of arguments, and fail only at run time. Here, in Windows CPython, every Protocol method is
compared with the ctype cffi built for the function, every declared function must be in
exactly one Protocol and be exported by that Protocol's DLL, and the function-pointer
Protocols must match their typedefs (and the extension functions Winsock really hands out).
"""

from __future__ import annotations

import inspect
import typing
from collections import Counter
from typing import Callable, Protocol

from winiocp import _api, raw
from winiocp._cdata import CData, CType
from winiocp.constants import INVALID_SOCKET, AddressFamily, IPProto, SocketType, WSASocketFlags

ffi = raw.ffi
Method = Callable[..., object]

#: The libraries winiocp.raw opens, by the name DLL_INTERFACES uses.
OPENED: dict[str, object] = {
    "kernel32": raw.kernel32,
    "ntdll": raw.ntdll,
    "ws2_32": raw.ws2_32,
    "iphlpapi": raw.iphlpapi,
}

# What cffi accepts for a C scalar passed by value, when it is not an integer.
SCALAR_ANNOTATIONS: dict[str, type] = {
    "char": bytes, "wchar_t": str, "char16_t": str, "char32_t": str,
    "float": float, "double": float, "long double": float,
}


def allowed_annotations(ctype: CType, *, is_return: bool) -> list[object]:
    """The annotations a C type may have, as ``typing.get_type_hints`` evaluates them.

    cffi also takes ``bytes`` for a ``char *`` argument and ``str`` for a ``wchar_t *`` one,
    but gen_api.py offers that only when the pointee is const (C must not write into a bytes
    object), and cffi's ctypes do not record const: both spellings are allowed here.
    """
    if ctype.kind == "void":
        return [type(None)]
    if ctype.kind in ("primitive", "enum"):
        return [SCALAR_ANNOTATIONS.get(ctype.cname, int)]
    if ctype.kind == "pointer" and not is_return:
        if ctype.item.cname == "char":
            return [CData, CData | bytes]
        if ctype.item.cname == "wchar_t":
            return [CData, CData | str]
    if ctype.kind in ("pointer", "function", "struct", "union"):
        return [CData]
    raise AssertionError(f"no annotation known for C type {ctype.cname} ({ctype.kind})")


def signature_drift(where: str, method: Method, ctype: CType) -> list[str]:
    """How ``method`` (a Protocol method, ``self`` first) differs from C function type ``ctype``."""
    if ctype.kind != "function":
        return [f"{where}: C type {ctype.cname} is a {ctype.kind}, not a function"]
    hints = typing.get_type_hints(method)
    params = list(inspect.signature(method).parameters.values())[1:]
    problems = []
    if len(params) != len(ctype.args):
        problems.append(f"{where}: {len(params)} parameters, but C declares {len(ctype.args)}: "
                        f"{ctype.cname}")
    for index, (param, arg) in enumerate(zip(params, ctype.args)):
        # cffi's functions take no keywords: a keyword call mypy accepted would fail.
        if param.kind is not inspect.Parameter.POSITIONAL_ONLY:
            problems.append(f"{where}: parameter {param.name} is not positional-only")
        allowed = allowed_annotations(arg, is_return=False)
        if hints.get(param.name) not in allowed:
            problems.append(f"{where}: parameter {index} ({param.name}) is annotated "
                            f"{hints.get(param.name)!r}; C type {arg.cname} needs one of "
                            f"{allowed!r}")
    allowed = allowed_annotations(ctype.result, is_return=True)
    if hints.get("return") not in allowed:
        problems.append(f"{where}: returns {hints.get('return')!r}; C type "
                        f"{ctype.result.cname} needs one of {allowed!r}")
    return problems


def protocol_methods(protocol: type) -> dict[str, Method]:
    """The methods a Protocol class declares itself (not the dunders typing adds)."""
    return {
        name: value for name, value in vars(protocol).items()
        if inspect.isfunction(value) and not (name.startswith("__") and name.endswith("__"))
    }


def function_pointer_protocols() -> dict[str, type]:
    """The Protocols in ``_api`` that are not a DLL's: one per function-pointer typedef."""
    dll_classes = set(_api.DLL_INTERFACES.values())
    return {
        name: value for name, value in vars(_api).items()
        if inspect.isclass(value) and value.__module__ == _api.__name__
        # typing.is_protocol is 3.13+; this is the flag it reads.
        and getattr(value, "_is_protocol", False) and value not in dll_classes
    }


def dll_drift(protocol: type, lib: object) -> list[str]:
    """Every way ``protocol``'s methods disagree with ``lib`` (cffi's view of one DLL)."""
    problems = []
    for name, method in protocol_methods(protocol).items():
        where = f"{protocol.__name__}.{name}"
        try:
            function = getattr(lib, name)  # resolves the symbol: the DLL must export it
        except AttributeError as error:
            problems.append(f"{where}: {error}")
            continue
        problems += signature_drift(where, method, ffi.typeof(function))
    return problems


def test_dll_interfaces_are_the_opened_libraries() -> None:
    assert set(_api.DLL_INTERFACES) == set(OPENED)


def test_dll_protocols_match_the_declarations_and_exports() -> None:
    problems = []
    for dll, protocol in _api.DLL_INTERFACES.items():
        problems += dll_drift(protocol, OPENED[dll])
    assert not problems, "\n".join(problems)


def test_every_declared_function_is_in_exactly_one_protocol() -> None:
    # One ffi, so every library object lists every declared function, whichever DLL it is in.
    # Enum constants (TCPSTATE_*) are library attributes too; only functions are compared.
    constants = {element for name in ffi.list_types()[0] if ffi.typeof(name).kind == "enum"
                 for element in ffi.typeof(name).relements}
    listings = {dll: set(dir(lib)) - constants for dll, lib in OPENED.items()}
    declared = listings["kernel32"]
    assert all(names == declared for names in listings.values()), listings
    counts = Counter(
        name for protocol in _api.DLL_INTERFACES.values() for name in protocol_methods(protocol)
    )
    assert {name: counts[name] for name in declared if counts[name] != 1} == {}
    assert set(counts) - declared == set()


def test_function_pointer_protocols_match_the_typedefs() -> None:
    typedefs = {name for name in ffi.list_types()[0] if ffi.typeof(name).kind == "function"}
    protocols = function_pointer_protocols()
    assert set(protocols) == typedefs
    problems = []
    for name, protocol in protocols.items():
        problems += signature_drift(f"{name}.__call__", protocol.__call__, ffi.typeof(name))
    assert not problems, "\n".join(problems)


def test_extension_functions_have_the_types_they_are_annotated_with() -> None:
    hints = typing.get_type_hints(raw.ExtensionFunctions)
    assert {field: hint.__name__ for field, hint in hints.items()} == {
        field: "LPFN_" + field.upper() for field in hints
    }
    sock = raw.ws2_32.WSASocketW(AddressFamily.AF_INET, SocketType.SOCK_STREAM,
                                 IPProto.IPPROTO_TCP, ffi.NULL, 0,
                                 WSASocketFlags.WSA_FLAG_OVERLAPPED)
    assert sock != INVALID_SOCKET, raw.ws2_32.WSAGetLastError()
    try:
        functions = raw.extension_functions(sock)
    finally:
        raw.ws2_32.closesocket(sock)
    for field, hint in hints.items():
        assert hint is getattr(_api, hint.__name__)
        assert ffi.typeof(getattr(functions, field)) is ffi.typeof(hint.__name__), field


class DriftedKernel32(Protocol):
    """A kernel32 interface with one mistake per method, which the comparison must report."""

    def CloseHandle(self, hObject: CData, bForce: int, /) -> int: ...
    def CreateFileW(self, lpFileName: CData | bytes, dwDesiredAccess: int, dwShareMode: int,
                    lpSecurityAttributes: CData, dwCreationDisposition: int,
                    dwFlagsAndAttributes: int, hTemplateFile: CData, /) -> CData: ...
    def CancelIoEx(self, hFile: CData, lpOverlapped: int, /) -> int: ...
    def GetCurrentProcess(self) -> int: ...
    def SetHandleInformation(self, hObject: CData, dwMask: int, dwFlags: int) -> int: ...
    def CreateIoCompletionPortEx(self) -> CData: ...


def test_the_comparison_reports_drift() -> None:
    problems = dll_drift(DriftedKernel32, raw.kernel32)
    expected = [
        "DriftedKernel32.CloseHandle: 2 parameters, but C declares 1",
        "DriftedKernel32.CreateFileW: parameter 0 (lpFileName) is annotated",
        "DriftedKernel32.CancelIoEx: parameter 1 (lpOverlapped) is annotated <class 'int'>",
        "DriftedKernel32.GetCurrentProcess: returns <class 'int'>",
        "DriftedKernel32.SetHandleInformation: parameter hObject is not positional-only",
        "DriftedKernel32.CreateIoCompletionPortEx: ",
    ]
    unreported = [text for text in expected if not any(p.startswith(text) for p in problems)]
    assert unreported == [], "\n".join(problems)
    assert len(problems) == len(expected) + 2, "\n".join(problems)  # dwMask, dwFlags too
