"""Writes ``winiocp/_api.py``: the typed interface of the DLLs declared in ``winiocp/cdefs``.

cffi's ``ffi.dlopen`` returns an untyped library object, so mypy could not check a single raw
call. This tool reads the same C declarations that ``winiocp/_ffi_build.py`` feeds to cffi and
writes one ``typing.Protocol`` per DLL (and one per function-pointer type), so a wrong argument
count, or an int passed where a pointer belongs, is a type error. Parsing is pycparser's (a cffi
dependency), the same parser cffi uses. Each DLL method gets a docstring naming its DLL and
saying what the function does (``SUMMARIES``; one without an entry gets a pointer to
Microsoft's documentation instead), so the API reference documents every raw function.

    python tools/gen_api.py            # rewrite winiocp/_api.py
    python tools/gen_api.py --check    # exit 1 if winiocp/_api.py is stale
"""

from __future__ import annotations

import argparse
import re
import runpy
import sys
import textwrap
from pathlib import Path
from typing import Callable, cast

from pycparser import c_ast, c_parser

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "winiocp" / "_api.py"

# cffi knows these without a typedef; pycparser needs one. Only their kind (integer) matters.
CFFI_BUILTINS = "".join(
    f"typedef int {name};\n" for name in ("wchar_t", "uintptr_t", "intptr_t", "uint64_t", "int64_t")
)

#: The longest line a generated docstring may make.
WIDTH = 96

DLL_CLASSES = {"kernel32": "Kernel32", "ntdll": "Ntdll", "ws2_32": "Ws2_32", "iphlpapi": "Iphlpapi"}

#: What each declared function does, in a line, for its generated docstring. An entry whose
#: function is no longer declared fails the generator (the table must not describe ghosts).
SUMMARIES = {
    # kernel32.dll
    "CancelIo": "cancel the I/O the calling thread issued on a handle.",
    "DeviceIoControl": "send a control code to a device driver; overlapped on a handle opened "
                       "with FILE_FLAG_OVERLAPPED (winiocp uses it for the AFD driver's poll).",
    "CancelIoEx": "cancel one overlapped operation on a handle (by its OVERLAPPED), or every "
                  "one (NULL), from any thread; the completions still come.",
    "CloseHandle": "close a kernel object handle.",
    "ConnectNamedPipe": "wait for a client to connect to the server end of a named pipe "
                        "(overlapped: it completes on the pipe's port).",
    "CreateFileW": "open or create a file, pipe or device; INVALID_HANDLE_VALUE on failure.",
    "CreateIoCompletionPort": "create a completion port (given INVALID_HANDLE_VALUE), or "
                              "associate a handle and a completion key with an existing one.",
    "CreateNamedPipeW": "create an instance of a named pipe (its server end); "
                        "INVALID_HANDLE_VALUE on failure.",
    "GetCurrentProcess": "a pseudo-handle for the current process (never closed).",
    "GetLastError": "the calling thread's last-error code; called through cffi, the code the "
                    "previous cffi call on this thread left.",
    "GetOverlappedResult": "the result of an overlapped operation on a file, pipe or device; "
                           "with ``bWait``, after waiting for it.",
    "GetQueuedCompletionStatus": "dequeue one completion packet from a port, waiting up to "
                                 "``dwMilliseconds``; the result and whether the OVERLAPPED "
                                 "pointer is NULL tell the cases apart.",
    "GetQueuedCompletionStatusEx": "dequeue up to ``ulCount`` completion packets at once into "
                                   "an OVERLAPPED_ENTRY array.",
    "K32GetProcessMemoryInfo": "a process's memory counters (psapi's GetProcessMemoryInfo, "
                               "as kernel32 exports it).",
    "PostQueuedCompletionStatus": "queue a completion packet with the given byte count, key "
                                  "and OVERLAPPED pointer.",
    "ReadFile": "read from a file or pipe (overlapped: it completes on the handle's port).",
    "RegisterWaitForSingleObject": "have a thread-pool thread call a callback when an object "
                                   "is signalled or a time-out passes.",
    "SetFileCompletionNotificationModes": "change how a handle's completions are reported "
                                          "(e.g. no packet for a call that succeeds at once).",
    "SetHandleInformation": "set a handle's flags (e.g. whether it is inherited).",
    "UnregisterWaitEx": "cancel a registered wait; given INVALID_HANDLE_VALUE, return only "
                        "once no callback of it is running.",
    "WaitForSingleObject": "wait until an object is signalled or the time-out passes.",
    "WriteFile": "write to a file or pipe (overlapped: it completes on the handle's port).",
    # ntdll.dll
    "RtlNtStatusToDosError": "the Win32 error code for an NTSTATUS.",
    # ws2_32.dll
    "WSACleanup": "undo one WSAStartup of this process (Winsock is released after the "
                  "last).",
    "WSAGetLastError": "the calling thread's last Winsock error code.",
    "WSAGetOverlappedResult": "the result of an overlapped operation on a socket.",
    "WSAIoctl": "send a control code (``SIO_*``) to a socket: set a mode, ask a question, or "
                "get an extension function's pointer.",
    "WSARecv": "receive into an array of WSABUF (overlapped: it completes on the socket's "
               "port).",
    "WSARecvFrom": "receive a datagram into an array of WSABUF, and its sender's address.",
    "WSASend": "send from an array of WSABUF (overlapped: it completes on the socket's port).",
    "WSASendTo": "send a datagram from an array of WSABUF to an address.",
    "WSAEnumProtocolsW": "the installed transport providers (base and layered) as "
                         "WSAPROTOCOL_INFOW records; WSAENOBUFS gives the size needed.",
    "WSASocketW": "create a socket (WSA_FLAG_OVERLAPPED for overlapped I/O); INVALID_SOCKET "
                  "on failure.",
    "WSAStartup": "start this process's use of Winsock, at the version asked for.",
    "bind": "give a socket its local address.",
    "closesocket": "close a socket (pending operations on it complete as aborted).",
    "connect": "connect a socket to an address (blocking, unless the socket is "
               "non-blocking).",
    "getpeername": "the address a socket is connected to.",
    "getsockname": "a socket's local address.",
    "getsockopt": "read a socket option.",
    "ioctlsocket": "set or query a socket's I/O mode (e.g. FIONBIO, FIONREAD).",
    "listen": "make a bound stream socket accept connections.",
    "setsockopt": "set a socket option.",
    "shutdown": "stop sending (a FIN follows the queued data), receiving, or both.",
    # iphlpapi.dll
    "GetTcpTable2": "the IPv4 TCP connection table, with each connection's owning process.",
}


def load_headers() -> list[tuple[str, str | None, str]]:
    build = runpy.run_path(str(ROOT / "winiocp" / "_ffi_build.py"))
    read_cdefs = cast(Callable[[], list[tuple[str, str | None, str]]], build["read_cdefs"])
    return read_cdefs()


class TypeNamer:
    """Turns a C type into the Python annotation a caller must pass (or receives)."""

    def __init__(self) -> None:
        self.typedefs: dict[str, c_ast.Node] = {}

    def resolve(self, node: c_ast.Node) -> c_ast.Node:
        while isinstance(node, c_ast.TypeDecl) and isinstance(node.type, c_ast.IdentifierType):
            name = " ".join(node.type.names)
            if name not in self.typedefs:
                return node
            node = self.typedefs[name]
        return node

    def spelled_names(self, node: c_ast.Node) -> list[str]:
        """Every name a type is spelled with along its typedef chain (LPCWSTR -> wchar_t)."""
        names: list[str] = []
        while isinstance(node, c_ast.TypeDecl) and isinstance(node.type, c_ast.IdentifierType):
            name = " ".join(node.type.names)
            names.append(name)
            if name not in self.typedefs:
                break
            node = self.typedefs[name]
        return names

    def is_const(self, node: c_ast.Node) -> bool:
        """Whether a type is const-qualified anywhere along its typedef chain."""
        while isinstance(node, c_ast.TypeDecl):
            if "const" in node.quals:
                return True
            if not isinstance(node.type, c_ast.IdentifierType):
                break
            name = " ".join(node.type.names)
            if name not in self.typedefs:
                break
            node = self.typedefs[name]
        return False

    def annotation(self, node: c_ast.Node, *, is_return: bool = False) -> str:
        node = self.resolve(node)
        if isinstance(node, c_ast.PtrDecl):
            # cffi converts bytes (char *) and str (wchar_t *) arguments itself, but hands C a
            # pointer into the bytes object: only a const pointee (C only reads) may take one.
            base = self.spelled_names(node.type)
            if not is_return and self.is_const(node.type) and "char" in base:
                return "CData | bytes"
            if not is_return and self.is_const(node.type) and "wchar_t" in base:
                return "CData | str"
            return "CData"
        if isinstance(node, c_ast.TypeDecl):
            inner = node.type
            if isinstance(inner, c_ast.IdentifierType):
                return "None" if inner.names == ["void"] else "int"
            return "CData"  # a struct passed or returned by value
        raise TypeError(f"unsupported C type: {node!r}")

    def signature(self, func: c_ast.FuncDecl) -> tuple[list[str], str]:
        params: list[str] = []
        for index, param in enumerate(func.args.params if func.args else []):
            if not isinstance(param, c_ast.Decl):  # f(void)
                continue
            name = param.name or f"arg{index}"
            params.append(f"{name}: {self.annotation(param.type)}")
        return params, self.annotation(func.type, is_return=True)


def method(name: str, params: list[str], result: str, indent: str = "    ",
           doc: str | None = None) -> str:
    """A Protocol method: a stub on one line, or, with ``doc``, a docstring and ``...``."""
    args = ", ".join(["self", *params, "/"]) if params else "self"
    signature = f"{indent}def {name}({args}) -> {result}:"
    if doc is None:
        return f"{signature} ...\n"
    body = indent * 2
    one_line = f'{body}"""{doc}"""'
    if len(one_line) <= WIDTH:
        text = one_line
    else:
        text = textwrap.fill(doc, WIDTH, initial_indent=f'{body}"""',
                             subsequent_indent=body) + f'\n{body}"""'
    return f"{signature}\n{text}\n{body}...\n"


def summary(name: str, dll: str) -> str:
    """The docstring of DLL function ``name``: what it does, from ``SUMMARIES``, or else
    where to read about it."""
    what = SUMMARIES.get(name)
    if what is None:
        return f"``{name}``, from {dll}.dll; see Microsoft's documentation of it."
    return f"``{name}`` ({dll}.dll): {what}"


def generate() -> str:
    namer = TypeNamer()
    parser = c_parser.CParser()
    by_dll: dict[str, list[str]] = {}
    sources: dict[str, list[str]] = {}
    pointer_types: list[str] = []
    headers = load_headers()
    dll_of = {file_name: dll for file_name, dll, _ in headers}
    # One parse of every header; cpp line markers keep each declaration's file name.
    text = '# 1 "<cffi builtins>"\n' + CFFI_BUILTINS + "".join(
        f'# 1 "{file_name}"\n' + re.sub(r"/\*.*?\*/", lambda m: "\n" * m[0].count("\n"), body, flags=re.S)
        for file_name, _, body in headers
    )
    for decl in parser.parse(text.replace("WINAPI", "")).ext:
        file_name = decl.coord.file
        if isinstance(decl, c_ast.Typedef):
            namer.typedefs[decl.name] = decl.type
            target = decl.type
            if isinstance(target, c_ast.PtrDecl) and isinstance(target.type, c_ast.FuncDecl):
                params, result = namer.signature(target.type)
                pointer_types.append(
                    f"class {decl.name}(Protocol):\n"
                    f'    """``{decl.name}``, from cdefs/{file_name}."""\n\n'
                    + method("__call__", params, result)
                )
        elif isinstance(decl, c_ast.Decl) and isinstance(decl.type, c_ast.FuncDecl):
            dll = dll_of[file_name]
            assert dll is not None, f"{file_name} declares {decl.name} but names no DLL"
            params, result = namer.signature(decl.type)
            by_dll.setdefault(dll, []).append(
                method(decl.name, params, result, doc=summary(decl.name, dll)))
            if file_name not in sources.setdefault(dll, []):
                sources[dll].append(file_name)
    declared = {name for methods in by_dll.values() for name in map(_method_name, methods)}
    ghosts = sorted(set(SUMMARIES) - declared)
    if ghosts:
        raise SystemExit(f"gen_api: SUMMARIES describes functions no cdef declares: {ghosts}")
    out = [
        '"""The typed interface of the DLLs and function-pointer types in ``winiocp/cdefs``.\n\n'
        "Generated by ``tools/gen_api.py`` from the same declarations cffi reads; do not edit.\n"
        '"""\n\n'
        "from __future__ import annotations\n\n"
        "from typing import Protocol\n\n"
        "from ._cdata import CData\n\n"
    ]
    for dll, methods in by_dll.items():
        files = ", ".join(f"cdefs/{name}" for name in sources[dll])
        doc = textwrap.fill(
            f"``{dll}.dll``, as declared in {files}. Each method is the DLL function of that "
            "name, called through cffi; Microsoft's documentation of the function is the "
            "reference.", WIDTH, initial_indent='    """', subsequent_indent="    ")
        out.append(f"\nclass {DLL_CLASSES[dll]}(Protocol):\n{doc}\n    \"\"\"\n\n"
                   + "\n".join(sorted(methods)))
    for text in pointer_types:
        out.append("\n" + text)
    out.append(
        "\n\nDLL_INTERFACES: dict[str, type] = {\n"
        + "".join(f'    "{dll}": {DLL_CLASSES[dll]},\n' for dll in by_dll)
        + "}\n"
    )
    return "\n".join(out).replace("\n\n\n\n", "\n\n\n")


def _method_name(text: str) -> str:
    return text.split("def ", 1)[1].split("(", 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    options = parser.parse_args()
    text = generate()
    if options.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is stale: run python tools/gen_api.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
