"""Builds ``winiocp/_ffi.py``, the out-of-line ABI-mode cffi module.

The C declarations live in ``cdefs/*.h``, one file per SDK header (or small group of
headers), read in the order below. Nothing is compiled: cffi writes a pure-Python module
that describes the types and functions, and the DLLs are opened at run time with
``ffi.dlopen``. Every function and function-pointer type is declared ``WINAPI`` so the
calling convention is right on 32-bit Windows too.

Run it from a checkout (on any OS; the output does not depend on the host):

    python winiocp/_ffi_build.py

``tools/gen_api.py`` reads the same table to write the typed interface, and
``tests/host/test_generated.py`` fails when either generated file is stale.
"""

from __future__ import annotations

from pathlib import Path

import cffi

CDEFS_DIR = Path(__file__).with_name("cdefs")

# (header file, the DLL that exports its functions). None: types only, or function-pointer
# types reached through WSAIoctl rather than exported.
HEADERS: tuple[tuple[str, str | None], ...] = (
    ("00_minwindef.h", None),
    ("01_minwinbase.h", None),
    ("10_ioapiset.h", "kernel32"),
    ("11_handleapi.h", "kernel32"),
    ("12_fileapi.h", "kernel32"),
    ("13_psapi.h", "kernel32"),
    ("14_threadpoollegacyapiset.h", "kernel32"),
    ("20_winternl.h", "ntdll"),
    ("30_ws2def.h", None),
    ("31_winsock2.h", "ws2_32"),
    ("32_mswsock.h", None),
    ("33_mstcpip.h", None),
    ("40_iphlpapi.h", "iphlpapi"),
    ("50_afd.h", None),
)


def read_cdefs() -> list[tuple[str, str | None, str]]:
    """Return (file name, DLL, text) for each header, in declaration order."""
    return [(name, dll, (CDEFS_DIR / name).read_text()) for name, dll in HEADERS]


def make_ffibuilder() -> cffi.FFI:
    builder = cffi.FFI()
    builder.cdef("\n".join(text for _, _, text in read_cdefs()))
    builder.set_source("winiocp._ffi", None)
    return builder


ffibuilder = make_ffibuilder()


def generate(target_dir: Path) -> Path:
    """Write ``_ffi.py`` into ``target_dir`` and return its path."""
    target = target_dir / "_ffi.py"
    ffibuilder.emit_python_code(str(target))
    return target


if __name__ == "__main__":
    print(generate(Path(__file__).parent))
