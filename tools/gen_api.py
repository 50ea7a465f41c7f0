"""Writes ``winiocp/_api.py``: the typed interface of the DLLs declared in ``winiocp/cdefs``.

cffi's ``ffi.dlopen`` returns an untyped library object, so mypy could not check a single raw
call. This tool reads the same C declarations that ``winiocp/_ffi_build.py`` feeds to cffi and
writes one ``typing.Protocol`` per DLL (and one per function-pointer type), so a wrong argument
count, or an int passed where a pointer belongs, is a type error. Parsing is pycparser's (a cffi
dependency), the same parser cffi uses.

    python tools/gen_api.py            # rewrite winiocp/_api.py
    python tools/gen_api.py --check    # exit 1 if winiocp/_api.py is stale
"""

from __future__ import annotations

import argparse
import re
import runpy
import sys
from pathlib import Path
from typing import Callable, cast

from pycparser import c_ast, c_parser

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "winiocp" / "_api.py"

# cffi knows these without a typedef; pycparser needs one. Only their kind (integer) matters.
CFFI_BUILTINS = "".join(
    f"typedef int {name};\n" for name in ("wchar_t", "uintptr_t", "intptr_t", "uint64_t", "int64_t")
)

DLL_CLASSES = {"kernel32": "Kernel32", "ntdll": "Ntdll", "ws2_32": "Ws2_32", "iphlpapi": "Iphlpapi"}


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


def method(name: str, params: list[str], result: str, indent: str = "    ") -> str:
    args = ", ".join(["self", *params, "/"]) if params else "self"
    return f"{indent}def {name}({args}) -> {result}: ...\n"


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
            by_dll.setdefault(dll, []).append(method(decl.name, params, result))
            if file_name not in sources.setdefault(dll, []):
                sources[dll].append(file_name)
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
        out.append(
            f"\nclass {DLL_CLASSES[dll]}(Protocol):\n"
            f'    """``{dll}.dll``, as declared in {files}."""\n\n' + "".join(sorted(methods))
        )
    for text in pointer_types:
        out.append("\n" + text)
    out.append(
        "\n\nDLL_INTERFACES: dict[str, type] = {\n"
        + "".join(f'    "{dll}": {DLL_CLASSES[dll]},\n' for dll in by_dll)
        + "}\n"
    )
    return "\n".join(out).replace("\n\n\n\n", "\n\n\n")


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
