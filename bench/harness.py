"""Host-side plumbing of the benchmark: Wine processes, the load generator, provisioning.

Why a module of its own: ``run.py`` says *what* is measured; this says *how* a Windows process
is started under Wine (through ``tools/winenv.py``, loaded by path so that nothing in
``tools/`` changes), how the bench-only wheels (pywin32) get into the Wine Python's
site-packages, how the C programs are compiled, and how the native load generator is run.

Runs on the Linux host (it is also valid, though unused, on Windows: mypy checks it as win32).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, cast

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
BIN = RESULTS / "bin"
BENCH_REQUIREMENTS = BENCH / "requirements-windows.txt"
#: A Wine prefix of the bench's own, hence a wineserver of its own: test suites run under
#: tools/winenv.py at the same time (their prefix is .winenv/prefix) would otherwise share
#: our wineserver, through which every IOCP call passes, and skew every number.
BENCH_PREFIX = ROOT / ".winenv" / "prefix-bench"
#: What the Windows processes run: the committed HEAD's winiocp/ (git archive) plus this bench/.
#: Other people edit winiocp/ while the bench runs; measuring a snapshot of a commit keeps one
#: run on one identifiable version.
SNAPSHOT = ROOT / ".winenv" / "bench-snapshot"
PYTHON = "3.13"  # the Windows CPython every Python server and micro-benchmark runs in


class WinEnv(Protocol):
    """What this module uses of ``tools/winenv.py``."""

    PYTHONS: dict[str, tuple[str, str]]

    def setup(self, version: str) -> Path: ...
    def ensure_cross_compiler(self) -> None: ...
    def windows_command(self, version: str, command: list[str]
                        ) -> tuple[list[str], dict[str, str]]: ...
    def python_dir(self, version: str) -> Path: ...
    def pip(self, *args: str) -> None: ...
    def windows_path(self, path: Path) -> str: ...


def _load_winenv() -> WinEnv:
    path = ROOT / "tools" / "winenv.py"
    spec = importlib.util.spec_from_file_location("_bench_winenv", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(WinEnv, module)


winenv = _load_winenv()


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- provisioning -----------------------------------------------------------------------------

def provision() -> Path:
    """Wine + Windows CPython (winenv), pywin32 into its site-packages, the compiled programs.

    Idempotent: pywin32 is installed again only when bench/requirements-windows.txt changes
    (a stamp inside the Python's folder, so a re-provisioned Python gets it again).
    """
    exe = winenv.setup(PYTHON)
    winenv.ensure_cross_compiler()  # MinGW-w64 builds the C programs
    target = winenv.python_dir(PYTHON)
    stamp = target / ".bench-wheels"
    wanted = hashlib.sha256(BENCH_REQUIREMENTS.read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == wanted):
        log("installing bench-only win_amd64 wheels (pywin32, winloop, tornado)")
        interpreter_version = winenv.PYTHONS[PYTHON][1]
        winenv.pip("--target", str(target / "Lib" / "site-packages"), "--upgrade",
                   "--platform", "win_amd64", "--python-version", interpreter_version,
                   "--implementation", "cp", "--only-binary=:all:", "-r",
                   str(BENCH_REQUIREMENTS))
        stamp.write_text(wanted)
    build_programs()
    return exe


def _compile(compiler: str, source: Path, output: Path, *libraries: str) -> None:
    if output.exists() and output.stat().st_mtime >= source.stat().st_mtime:
        return
    if shutil.which(compiler) is None:
        raise RuntimeError(f"{compiler} is needed to build {source.name}")
    log(f"compiling {source.relative_to(ROOT)}")
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(output), str(source), *libraries],
                   check=True)


def build_programs() -> None:
    BIN.mkdir(parents=True, exist_ok=True)
    _compile("gcc", BENCH / "loadgen.c", BIN / "loadgen")
    mingw = "x86_64-w64-mingw32-gcc"
    _compile(mingw, BENCH / "c" / "iocp_echo.c", BIN / "iocp_echo.exe", "-lws2_32", "-lmswsock")
    _compile(mingw, BENCH / "c" / "iocp_drain.c", BIN / "iocp_drain.exe")


# -- the measured source -------------------------------------------------------------------------

def take_snapshot() -> str:
    """Extract HEAD's winiocp/ and examples/ into SNAPSHOT, copy bench/ beside them; return
    the commit measured."""
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    shutil.rmtree(SNAPSHOT, ignore_errors=True)
    SNAPSHOT.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD",
                              "winiocp", "examples"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(SNAPSHOT)], input=archive, check=True)
    shutil.copytree(BENCH, SNAPSHOT / "bench",
                    ignore=shutil.ignore_patterns("results", "__pycache__", "c", "*.c", "*.md"))
    return revision


# -- Windows processes --------------------------------------------------------------------------

def python_command(*args: str) -> list[str]:
    """A command for ``WindowsProcess``: the Wine-provisioned CPython with ``args``."""
    return ["python", *args]


def exe_command(name: str, *args: str) -> list[str]:
    return [str(BIN / name), *args]


#: ``python -c`` with this, the snapshot's path, the module and its arguments: ``python -m``
#: from the snapshot.
_SNAPSHOT_MAIN = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); module = sys.argv[2]; "
                  "sys.argv[1:] = sys.argv[3:]; "
                  "runpy.run_module(module, run_name='__main__', alter_sys=True)")


class WindowsProcess:
    """A Windows program under Wine with piped stdin/stdout (regular files don't work there).

    Its output lines are collected by a thread (so the pipe never fills); ``expect`` waits for
    a line with a prefix; closing stdin is how every bench server is asked to stop.
    """

    def __init__(self, command: list[str], name: str, wine_debug: str | None = None) -> None:
        """``wine_debug``: the process's WINEDEBUG (default: Wine's messages off)."""
        self.name = name
        cwd = SNAPSHOT if SNAPSHOT.is_dir() else ROOT
        if command[:2] == ["python", "-m"] and cwd == SNAPSHOT:
            # The embeddable CPython's ._pth fixes sys.path (the live checkout on it, the
            # working directory not): put the snapshot first, then run the module.
            command = ["python", "-c", _SNAPSHOT_MAIN, winenv.windows_path(SNAPSHOT),
                       *command[2:]]
        argv, env = winenv.windows_command(PYTHON, command)
        if "WINEPREFIX" in env:
            env["WINEPREFIX"] = str(BENCH_PREFIX)
        if wine_debug is not None:
            env["WINEDEBUG"] = wine_debug
        self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def expect(self, prefix: str, timeout: float = 60.0) -> str:
        """The next output line starting with ``prefix`` (earlier lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no line starting {prefix!r} in {timeout:.0f}s;"
                                   f" output so far:\n" + "\n".join(self.lines[-30:]))
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} exited (code {self.process.wait()}) before "
                                   f"{prefix!r}; output:\n" + "\n".join(self.lines[-30:]))
            if line.startswith(prefix):
                return line

    def listening_port(self, timeout: float = 60.0) -> int:
        line = self.expect("listening on ", timeout)
        return int(line.rsplit(":", 1)[1])

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def stop(self, timeout: float = 20.0) -> int:
        """Close stdin (the stop signal), wait, and kill if it does not end in time
        (``timeout=0``: kill at once, for programs that do not read stdin)."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:
            pass
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if timeout:
                log(f"{self.name} did not stop in {timeout:.0f}s: killed")
            self.process.kill()
            code = self.process.wait()
        self._reader.join(timeout=5)
        return code

    def __enter__(self) -> WindowsProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.stop()


def run_json(command: list[str], name: str, timeout: float) -> dict[str, Any]:
    """Run a Windows program to completion; parse its last line starting ``RESULT `` (or
    the last JSON line) as JSON."""
    with WindowsProcess(command, name) as process:
        try:
            code = process.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.process.kill()
            raise TimeoutError(f"{name} took more than {timeout:.0f}s") from None
        process._reader.join(timeout=5)
    for line in reversed(process.lines):
        if line.startswith("RESULT "):
            return cast(dict[str, Any], json.loads(line[len("RESULT "):]))
        if line.startswith("{"):
            return cast(dict[str, Any], json.loads(line))
    raise RuntimeError(f"{name} (exit {code}) printed no result:\n" + "\n".join(process.lines[-40:]))


# -- the load generator -----------------------------------------------------------------------

def loadgen(*args: str, timeout: float = 120.0) -> dict[str, Any]:
    result = subprocess.run([str(BIN / "loadgen"), *args], capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"loadgen {' '.join(args)} failed: {result.stderr.strip()}")
    return cast(dict[str, Any], json.loads(result.stdout.strip().splitlines()[-1]))


def pingpong(port: int, connections: int, seconds: float, warmup: float,
             size: int = 64) -> dict[str, Any]:
    return loadgen("pingpong", "127.0.0.1", str(port), str(connections), str(seconds),
                   str(warmup), str(size), timeout=seconds + warmup + 90)


def churn(port: int, concurrency: int, seconds: float, closer: str,
          size: int = 64) -> dict[str, Any]:
    return loadgen("churn", "127.0.0.1", str(port), str(concurrency), str(seconds), str(size),
                   closer, timeout=seconds + 60)


class Holder:
    """``loadgen hold``: N idle connections, one exchange each, kept until ``release()``."""

    def __init__(self, port: int, connections: int, size: int = 64) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "loadgen"), "hold", "127.0.0.1", str(port), str(connections), str(size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def ready(self, timeout: float) -> tuple[int, float]:
        """Wait for ``ready N SECONDS``; returns (connections, seconds it took)."""
        assert self.process.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(
            self.process.stdout.readline() if self.process.stdout else ""), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0].startswith("ready"):
            self.process.kill()
            error = self.process.stderr.read() if self.process.stderr else ""
            raise RuntimeError(f"loadgen hold did not get ready: {result} {error.strip()}")
        _, count, seconds = result[0].split()
        return int(count), float(seconds)

    def release(self) -> None:
        try:
            if self.process.stdin is not None:
                self.process.stdin.write("done\n")
                self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the host ----------------------------------------------------------------------------------

def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a Linux process (all its threads), in seconds; 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100.0  # USER_HZ is 100 on Linux
    except (OSError, IndexError, ValueError):
        return 0.0


def bench_wineserver_pid() -> int | None:
    """The wineserver serving BENCH_PREFIX (found by its environment), if running."""
    wanted = f"WINEPREFIX={BENCH_PREFIX}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"wineserver" not in (entry / "cmdline").read_bytes():
                continue
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except OSError:
            continue
    return None


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine (all cores) has spent not idle since boot."""
    total, idle = _cpu_times()
    return (total - idle) / 100.0


def children_cpu_seconds() -> float:
    """User + system CPU of this process's waited-for children (the load generator runs)."""
    usage = os.times()
    return usage.children_user + usage.children_system


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields), idle


def background_load(sample_seconds: float = 1.0) -> dict[str, Any]:
    """What else is running while the bench is idle: CPU busy % over ``sample_seconds``,
    the 1-minute load average, and test suites (pytest / tools/winenv.py) of other people."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(sample_seconds)
        total1, idle1 = _cpu_times()
        busy = 100.0 * (1 - (idle1 - idle0) / max(1, total1 - total0))
        loadavg = float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return {"busy_percent": -1.0, "loadavg": -1.0, "foreign": []}
    return {"busy_percent": round(busy, 1), "loadavg": loadavg,
            "foreign": foreign_test_processes()}


def foreign_test_processes() -> list[str]:
    """Command lines of other people's test suites (pytest, tools/winenv.py, the asyncio
    suite) running now:
    cheap enough (one /proc scan) to call before every measurement."""
    foreign = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                "utf-8", "replace").strip()
        except OSError:
            continue
        if any(mark in cmdline for mark in ("pytest", "tools/winenv.py", "asyncio_suite.py")):
            foreign.append(cmdline[:160])
    return foreign


def wait_for_quiet(max_seconds: float) -> dict[str, Any]:
    """Wait (up to ``max_seconds``) until no foreign test suite runs and the CPU is mostly
    idle; return the last sample, with how long we waited."""
    began = time.monotonic()
    while True:
        load = background_load()
        waited = time.monotonic() - began
        quiet = not load["foreign"] and load["busy_percent"] < 25
        if quiet or waited >= max_seconds:
            load["waited_s"] = round(waited, 1)
            load["quiet"] = quiet
            return load
        log(f"machine busy ({load['busy_percent']}% CPU, {len(load['foreign'])} foreign test "
            f"processes): waiting for quiet ({waited:.0f}/{max_seconds:.0f} s)")
        time.sleep(5)


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the socket listening on ``port`` (its
    Recv-Q in ``ss -ltn``: established by the kernel, not yet accepted by the server)."""
    output = subprocess.run(["ss", "-ltnH", f"( sport = :{port} )"], capture_output=True,
                            text=True, check=True).stdout
    return sum(int(line.split()[1]) for line in output.splitlines() if len(line.split()) > 1)


def time_wait_counts(port: int) -> dict[str, int]:
    """Sockets in TIME_WAIT whose local (server side) or remote (client side) port is
    ``port``, from ``ss -tan state time-wait`` (Wine's sockets are the host's)."""
    output = subprocess.run(["ss", "-tanH", "state", "time-wait"], capture_output=True,
                            text=True, check=True).stdout
    server_side = client_side = 0
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local, remote = fields[-2], fields[-1]
        if local.rsplit(":", 1)[-1] == str(port):
            server_side += 1
        elif remote.rsplit(":", 1)[-1] == str(port):
            client_side += 1
    return {"server_side": server_side, "client_side": client_side}


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def first_line(*argv: str) -> str:
        try:
            out = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    windows_python = "unknown"
    try:
        windows_python = run_json(
            python_command("-c", "import json, sys; print('RESULT ' + json.dumps("
                           "{'v': sys.version.split()[0] + ' ' + sys.version.split('[')[-1]"
                           ".rstrip(']')}))"), "python --version", 120)["v"]
    except (RuntimeError, TimeoutError, OSError):
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": first_line("sh", "-c", "free -h | awk '/Mem:/ {print $2}'"),
        "kernel": first_line("uname", "-r"),
        "wine": first_line("wine", "--version"),
        "host_python": sys.version.split()[0],
        "windows_python": windows_python,
        "gcc": first_line("gcc", "--version"),
        "mingw": first_line("x86_64-w64-mingw32-gcc", "--version"),
    }
