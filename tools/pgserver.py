"""A throw-away PostgreSQL server on loopback for the psycopg tests (Linux host side).

``tests/windows/test_readiness_libraries.py`` runs psycopg inside Windows CPython under Wine,
which cannot start the Linux server itself. ``tools/winenv.py test`` calls ``start()`` before
the Windows tests: it makes a cluster in a temporary folder (``initdb``, trust authentication,
user ``postgres``), starts Debian's ``postgres`` on 127.0.0.1 and a free port, puts its
connection string in the environment variable ``WINIOCP_TEST_POSTGRES`` (which Wine passes on
to the Windows tests) and stops the server and removes the folder when this process exits.
Without a PostgreSQL on the host the variable stays unset and those tests skip, saying so;
on CI (``CI`` set) that is an error instead.

By hand, around any command::

    python3 tools/pgserver.py python3 tools/winenv.py run -- python -m pytest \\
        tests/windows/test_readiness_libraries.py
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

#: The variable holding the server's libpq connection string.
VARIABLE = "WINIOCP_TEST_POSTGRES"
#: The account the server runs as when we are root (postgres refuses to run as root).
ACCOUNT = "postgres"


def log(message: str) -> None:
    print(f"[pgserver] {message}", file=sys.stderr, flush=True)


def server_bin() -> Path | None:
    """The folder of the newest installed PostgreSQL's server programs (Debian's layout, or
    ``initdb`` on the PATH), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda path: int(Path(path).parent.parent.name)
                        if Path(path).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def start() -> str | None:
    """Start the server (once per process); return its connection string, or None when the
    host has no PostgreSQL (an error on CI). The server stops when this process exits."""
    if os.environ.get(VARIABLE):
        return os.environ[VARIABLE]
    if sys.platform == "win32":
        raise RuntimeError("a Linux host's helper: on Windows, set WINIOCP_TEST_POSTGRES to "
                           "a server's connection string")
    bin_dir = server_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            raise RuntimeError("no PostgreSQL server on this host (.ci/run installs Debian's "
                               "postgresql): the psycopg tests cannot run")
        log("no PostgreSQL server installed (Debian: apt-get install postgresql): the psycopg "
            "tests will skip")
        return None
    as_account: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="winiocp-pg-"))
    if os.geteuid() == 0:
        as_account = ["runuser", "-u", ACCOUNT, "--"]
        shutil.chown(folder, ACCOUNT)
    data = folder / "data"
    port = free_port()

    def stop() -> None:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_account, str(bin_dir / "pg_ctl"), "-D", str(data), "-m",
                            "immediate", "-w", "stop"], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    subprocess.run([*as_account, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
    started = subprocess.run([*as_account, str(bin_dir / "pg_ctl"), "-D", str(data), "-l",
                              str(folder / "server.log"), "-o", options, "-w", "-t", "60",
                              "start"], check=False,
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    if started.returncode != 0:
        log_text = (folder / "server.log").read_text(errors="replace")
        raise RuntimeError(f"PostgreSQL did not start (pg_ctl exit {started.returncode}):\n"
                           f"{log_text}")
    conninfo = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    os.environ[VARIABLE] = conninfo
    log(f"PostgreSQL ({bin_dir.parent.name}) on 127.0.0.1:{port}: {VARIABLE}={conninfo}")
    return conninfo


def main(argv: list[str]) -> int:
    """Run ``argv`` with the server up (and ``WINIOCP_TEST_POSTGRES`` set)."""
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    start()
    return subprocess.run(argv, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
