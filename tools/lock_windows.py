"""Write ``tools/requirements-windows-hashes.txt``: the pins of ``requirements-windows.txt``
with the sha256 of every win_amd64 wheel they name for CPython 3.10-3.13.

``tools/winenv.py`` installs the Windows tests' wheels from that file with pip's
``--require-hashes --no-deps``, so every wheel it downloads is the one pinned here. Run this
after any change to ``requirements-windows.txt``:

    python3 tools/lock_windows.py

It downloads the wheels for each supported version (with their dependencies, so a dependency
that is not pinned is reported) with the host venv's pip, and fails unless every version
resolves to exactly the pinned packages.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import winenv

HASHES = winenv.WINDOWS_HASHES


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: Path) -> dict[str, str]:
    """``name -> version`` of each ``name==version`` line."""
    found: dict[str, str] = {}
    for line in requirements.read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if not requirement:
            continue
        name, separator, version = requirement.partition("==")
        if not separator or not re.fullmatch(r"[\w.]+", version.strip()):
            raise SystemExit(f"{requirements}: not pinned with ==: {line!r}")
        found[canonical(name.strip().split("[")[0])] = version.strip()
    return found


def main() -> int:
    wanted = pins(winenv.WINDOWS_REQUIREMENTS)
    hashes: dict[str, set[str]] = {name: set() for name in wanted}
    python = str(winenv.host_python())
    with tempfile.TemporaryDirectory() as scratch:
        for version, (_, interpreter) in winenv.PYTHONS.items():
            folder = Path(scratch) / version
            subprocess.run(
                [python, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                 "-d", str(folder), "--platform", "win_amd64", "--python-version", interpreter,
                 "--implementation", "cp", "--only-binary=:all:",
                 "-r", str(winenv.WINDOWS_REQUIREMENTS)], check=True)
            got: dict[str, str] = {}
            for wheel in folder.glob("*.whl"):
                name, wheel_version = wheel.name.split("-")[:2]
                got[canonical(name)] = wheel_version
                if canonical(name) in hashes:
                    hashes[canonical(name)].add(hashlib.sha256(wheel.read_bytes()).hexdigest())
            if got != wanted:
                extra = sorted(f"{n}=={v}" for n, v in got.items() if wanted.get(n) != v)
                raise SystemExit(f"CPython {version} resolves to other packages than "
                                 f"{winenv.WINDOWS_REQUIREMENTS.name} pins: {extra}")
    lines = [f"# Written by tools/lock_windows.py from {winenv.WINDOWS_REQUIREMENTS.name}: "
             "do not edit.", "# The win_amd64 wheels for CPython 3.10-3.13, each by sha256."]
    for name in sorted(wanted):
        lines.append(f"{name}=={wanted[name]} \\")
        lines.extend(f"    --hash=sha256:{digest} \\" for digest in sorted(hashes[name]))
        lines[-1] = lines[-1].removesuffix(" \\")
    HASHES.write_text("\n".join(lines) + "\n")
    print(f"wrote {HASHES} ({len(wanted)} packages, "
          f"{sum(map(len, hashes.values()))} wheels)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
