"""CPython's own ``test.test_asyncio``, inside Windows CPython under Wine: stock loop against ours.

The proof that ``winiocp.aio`` is a drop-in for asyncio's Windows event loop is CPython's own
asyncio test suite. The embeddable Windows CPython ships without the ``test`` package, so this
tool takes it from Debian (the test files are pure Python and the same for every platform):
bookworm's ``libpython3.11-testsuite`` + ``libpython3.11-stdlib`` and trixie's
``libpython3.13-*``, fetched with a private apt configuration (the system's sources and lists
are never touched) and merged into ``.winenv/cpython-tests/<version>/test``.

Each version runs the whole package three times, each in a process of its own:

* ``stock``: nothing swapped;
* ``proactor``: ``asyncio.windows_events.IocpProactor`` is ``winiocp.aio.IocpProactor`` before
  any test module loads, so every ``ProactorEventLoop()`` builds ours;
* ``loop``: ``asyncio.ProactorEventLoop`` (and ``windows_events``' name for it, and the Windows
  policy's ``_loop_factory``) is ``winiocp.aio.EventLoop``; several test modules call
  ``asyncio.ProactorEventLoop()`` themselves.

The runner (``--in-windows``, executed by Windows CPython) wraps every proactor method of both
classes with a call counter, so the summary shows which proactor served each test's I/O.

``python -m test`` (regrtest) aborts under Wine 8, so the runner is plain unittest with a
watchdog: ``faulthandler.dump_traceback_later(..., exit=True)`` ends the process when one test
(or the fixtures between two tests) takes too long. Windows CPython under Wine can write regular
files (only its standard streams cannot be files), so the runner appends one JSON line per test
event to a progress file; after a watchdog exit or a crash the driver records the open test as
``hang`` (or ``crash``) and starts a new process that skips what is already recorded.

The driver then compares, per version: every swapped run must run every test the stock run ran,
and every test that fails, errors or hangs (or is skipped) with ours must not pass with stock,
unless ``tools/asyncio-expected.txt`` lists it with its reason. That file also lists the tests
skipped in every mode (they hang under Wine with the stock loop). Each such regression is then
run again on its own (``<mode>-alone``), and the report says whether it failed again there: a
hint whether it is ours alone or the load of the whole suite (it is reported either way).

    python3 tools/winenv.py asyncio-suite                       # 3.13 and 3.11, all three modes
    python3 tools/winenv.py asyncio-suite --python 3.13 --mode stock,loop
    python3 tools/asyncio_suite.py --report                     # compare the last runs again
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import unittest
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

if TYPE_CHECKING:
    from types import TracebackType

    ErrInfo = (tuple[type[BaseException], BaseException, TracebackType]
               | tuple[None, None, None])

ROOT = Path(__file__).resolve().parent.parent
WINENV = ROOT / ".winenv"
TESTS_HOME = WINENV / "cpython-tests"
RESULTS_HOME = WINENV / "asyncio-suite"
APT_HOME = WINENV / "apt"
EXPECTED = ROOT / "tools" / "asyncio-expected.txt"
#: Each test that fails with ours and passes with stock, with its error (git-ignored).
FAILURES_REPORT = RESULTS_HOME / "failures.md"
MODES = ("stock", "proactor", "loop", "selector")
#: The test packages every mode loads: asyncio's, and the selectors module's (the selector mode
#: puts ``winiocp.selectors.AfdSelector`` behind ``selectors.DefaultSelector``).
PACKAGES = ("test.test_asyncio", "test.test_selectors")
#: The tests the selector mode runs: those whose loop or selector is ``DefaultSelector``'s
#: (the rest would only run the stock loop again). The other modes run everything.
SELECTOR_SCOPE = (
    "test.test_selectors.DefaultSelectorTestCase.*",
    "test.test_asyncio.test_events.SelectEventLoopTests.*",
    "test.test_asyncio.test_sock_lowlevel.SelectEventLoopTests.*",
    "test.test_asyncio.test_sendfile.SelectEventLoopTests.*",
    "test.test_asyncio.test_buffered_proto.BufferedProtocolSelectorTests.*",
    "test.test_asyncio.test_sslproto.SelectorStartTLSTests.*",
    "test.test_asyncio.test_selector_events.*",
)


#: test_events' readiness tests, which it skips for the proactor loop ("IocpEventLoop does not
#: have add_reader()"): the loop mode runs them on ``winiocp.aio.EventLoop`` too.
READINESS_TESTS = ("test_reader_callback", "test_reader_callback_cancel", "test_writer_callback",
                   "test_writer_callback_cancel", "test_remove_fds_after_closing")


def readiness_tests() -> unittest.TestSuite:
    """test_events' readiness tests on ``winiocp.aio.EventLoop``: its ``EventLoopTestsMixin``
    with our loop as the loop it creates (as its own test classes pick theirs)."""
    import importlib

    test_events = importlib.import_module("test.test_asyncio.test_events")
    test_utils = importlib.import_module("test.test_asyncio.utils")
    loop_class = importlib.import_module("winiocp.aio").EventLoop
    case = type("ReadinessOnWiniocpEventLoopTests",
                (test_events.EventLoopTestsMixin, test_utils.TestCase),
                {"create_event_loop": lambda self: loop_class(),
                 "__module__": "test.test_asyncio.test_events"})
    return unittest.TestSuite(case(name) for name in READINESS_TESTS if hasattr(case, name))


def in_scope(test_id: str, mode: str) -> bool:
    """Whether ``mode`` runs ``test_id``."""
    return mode != "selector" or any(fnmatch.fnmatchcase(test_id, p) for p in SELECTOR_SCOPE)
# Version -> the Debian suite whose packages carry that CPython's test package.
DEBIAN_SUITES = {"3.13": "trixie", "3.11": "bookworm"}
DEFAULT_VERSIONS = ("3.13", "3.11")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
TEST_TIMEOUT = 60.0  # seconds one test (or the fixtures between two tests) may take
MAX_PROCESSES = 40  # per run: each hang or crash costs a new process
MAX_RECHECKS = 40  # tests that failed with ours only, run again alone (more: not worth it)
# Every method BaseProactorEventLoop / ProactorEventLoop call on their proactor (3.10-3.13).
PROACTOR_METHODS = (
    "set_loop", "select", "recv", "recv_into", "recvfrom", "recvfrom_into", "send", "sendto",
    "accept", "connect", "sendfile", "accept_pipe", "connect_pipe", "wait_for_handle",
    "_wait_cancel", "_unregister", "_stop_serving", "close",
)
# The ones that start real I/O (every loop calls set_loop/select/close).
IO_METHODS = frozenset(PROACTOR_METHODS) - {"set_loop", "select", "close", "_unregister"}
BAD_OUTCOMES = frozenset({"fail", "error", "xpass", "hang", "crash"})
PASSED_OUTCOMES = frozenset({"pass", "xfail"})


# --- the committed expectations ------------------------------------------------------------

@dataclass(frozen=True)
class Expectation:
    """One line of ``tools/asyncio-expected.txt``."""

    kind: str  # "skip" (every mode, every version) or "differ" (ours may fail, stock passes)
    versions: frozenset[str]  # empty: every version
    modes: frozenset[str]  # empty: every mode
    pattern: str  # fnmatch pattern on the unittest id
    reason: str

    def applies(self, test_id: str, version: str, mode: str) -> bool:
        return ((not self.versions or version in self.versions)
                and (not self.modes or mode in self.modes)
                and fnmatch.fnmatchcase(test_id, self.pattern))


def parse_expectations(text: str) -> list[Expectation]:
    """Parse the expectations: one entry a line, each with its reason.

    ``skip <id-pattern> -- <reason>`` or ``differ <versions|*> <modes|*> <id-pattern> -- <reason>``.
    """
    expectations = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, separator, reason = line.partition(" -- ")
        words = head.split()
        if not separator or not reason.strip() or not words:
            raise ValueError(f"asyncio-expected.txt:{number}: every entry needs ' -- <reason>'")
        if words[0] == "skip" and len(words) == 2:
            expectations.append(Expectation("skip", frozenset(), frozenset(), words[1],
                                            reason.strip()))
        elif words[0] == "differ" and len(words) == 4:
            versions = frozenset() if words[1] == "*" else frozenset(words[1].split(","))
            modes = frozenset() if words[2] == "*" else frozenset(words[2].split(","))
            if not modes <= set(MODES) - {"stock"}:
                raise ValueError(f"asyncio-expected.txt:{number}: modes are proactor, loop, "
                                 "selector or *")
            expectations.append(Expectation("differ", versions, modes, words[3], reason.strip()))
        else:
            raise ValueError(f"asyncio-expected.txt:{number}: cannot parse {line!r}")
    return expectations


# --- inside Windows CPython: the runner -----------------------------------------------------

class Tracer:
    """Counts calls of the proactor methods, per class ("ours" or "stock"), per test."""

    def __init__(self, stock: type, ours: type | None) -> None:
        self.ours = ours
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self.loops: dict[int, object] = {}  # id(proactor) -> its loop (from set_loop)
        for cls in (stock, ours):
            if cls is None:
                continue
            for name in PROACTOR_METHODS:
                original = cls.__dict__.get(name)
                if callable(original):
                    setattr(cls, name, self._counting(name, original))

    def _counting(self, name: str, original: Callable[..., object]) -> Callable[..., object]:
        @functools.wraps(original)
        def counting(proactor: object, *args: object, **kwargs: object) -> object:
            ours = self.ours is not None and isinstance(proactor, self.ours)
            if name == "set_loop" and args:
                self.loops[id(proactor)] = args[0]
            counted = name
            # Every proactor loop keeps a recv pending on its self-pipe: not the test's I/O.
            if name == "recv" and args and args[0] is getattr(self.loops.get(id(proactor)),
                                                              "_ssock", None):
                counted = "recv(self-pipe)"
            self.calls["ours" if ours else "stock", counted] += 1
            return original(proactor, *args, **kwargs)
        return counting

    def take(self) -> dict[str, dict[str, int]]:
        """The calls since the last take(), as {"ours": {method: n}, "stock": {...}}."""
        taken: dict[str, dict[str, int]] = {}
        for (kind, name), count in sorted(self.calls.items()):
            taken.setdefault(kind, {})[name] = count
        self.calls.clear()
        return taken


def swap(mode: str) -> type | None:
    """Put winiocp.aio in asyncio's place for ``mode``; return our proactor class (None: stock)."""
    if mode == "stock":
        return None
    import importlib

    import asyncio
    from asyncio import windows_events

    aio = importlib.import_module("winiocp.aio")
    if mode == "selector":
        import selectors

        selectors.DefaultSelector = importlib.import_module(  # type: ignore[misc]
            "winiocp.selectors").AfdSelector
    elif mode == "proactor":
        windows_events.IocpProactor = aio.IocpProactor  # type: ignore[misc]
    else:
        loop = aio.EventLoop
        asyncio.ProactorEventLoop = loop  # type: ignore[misc]
        windows_events.ProactorEventLoop = loop  # type: ignore[misc]
        if hasattr(windows_events, "EventLoop"):  # 3.13: asyncio.EventLoop
            setattr(windows_events, "EventLoop", loop)
            setattr(asyncio, "EventLoop", loop)
        windows_events.WindowsProactorEventLoopPolicy._loop_factory = loop
        windows_events.DefaultEventLoopPolicy._loop_factory = loop
    return cast(type, aio.IocpProactor)


def iter_tests(suite: unittest.TestSuite | unittest.TestCase) -> Iterator[unittest.TestCase]:
    if isinstance(suite, unittest.TestSuite):
        for child in suite:
            yield from iter_tests(child)
    else:
        yield suite


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class RecordingResult(unittest.TestResult):
    """Appends each test's start and end to the progress file, with a watchdog around it."""

    def __init__(self, progress: TextIO, watchdog: TextIO, timeout: float,
                 tracer: Tracer) -> None:
        super().__init__()
        self.progress, self.watchdog, self.timeout = progress, watchdog, timeout
        self.tracer = tracer
        self.current: str | None = None
        self.module = ""
        self.outcome = "pass"
        self.detail = ""
        self.started = 0.0

    def write(self, record: dict[str, object]) -> None:
        self.progress.write(json.dumps(record) + "\n")
        self.progress.flush()
        os.fsync(self.progress.fileno())

    def arm(self) -> None:
        import faulthandler
        faulthandler.dump_traceback_later(self.timeout, exit=True, file=self.watchdog)

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self.tracer.take()  # calls made by fixtures count for no test
        self.current, self.outcome, self.detail = test.id(), "pass", ""
        record: dict[str, object] = {"event": "start", "id": self.current}
        module = type(test).__module__
        if module != self.module:  # what earlier modules left alive (a leak shows here)
            import gc
            gc.collect()
            record["heap"] = len(gc.get_objects())
            self.module = module
        self.write(record)
        self.started = time.monotonic()
        self.arm()

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        self.write({"event": "end", "id": test.id(), "outcome": self.outcome,
                    "seconds": round(time.monotonic() - self.started, 3),
                    "detail": self.detail, "calls": self.tracer.take()})
        self.current = None
        self.arm()  # the fixtures before the next test are watched too

    def _set(self, outcome: str, detail: str = "") -> None:
        order = ["pass", "xfail", "skip", "xpass", "fail", "error"]
        if order.index(outcome) >= order.index(self.outcome):
            self.outcome, self.detail = outcome, detail

    def _error_text(self, err: ErrInfo) -> str:
        return tail("".join(traceback.format_exception(*err)))

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)

    def addFailure(self, test: unittest.TestCase, err: ErrInfo) -> None:
        super().addFailure(test, err)
        self._set("fail", self._error_text(err))

    def addError(self, test: unittest.TestCase, err: ErrInfo) -> None:
        super().addError(test, err)
        if self.current is None or test.id() != self.current:
            # setUpClass/setUpModule and the like: no test is open; record it as one.
            self.write({"event": "end", "id": str(test), "outcome": "error", "seconds": 0,
                        "detail": self._error_text(err), "calls": self.tracer.take()})
            return
        self._set("error", self._error_text(err))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._set("skip", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: ErrInfo) -> None:
        super().addExpectedFailure(test, err)
        self._set("xfail")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._set("xpass", "unexpected success")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase,
                   err: ErrInfo | None) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None and err[0] is not None:
            failed = issubclass(err[0], test.failureException)
            self._set("fail" if failed else "error",
                      f"{subtest.id()}\n{self._error_text(err)}")


def read_progress(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass  # a line cut short by the watchdog's exit
    return records


def run_in_windows(options: argparse.Namespace) -> int:
    """The runner: load test.test_asyncio, skip what the progress file has, run the rest."""
    out = Path(options.out)
    sys.path.insert(0, options.tests)  # the embeddable build ignores PYTHONPATH
    from asyncio import windows_events

    tracer = Tracer(windows_events.IocpProactor, swap(options.mode))
    expectations = [e for e in parse_expectations(EXPECTED.read_text(encoding="utf-8"))
                    if e.kind == "skip"]
    done = {str(r["id"]) for r in read_progress(out / "progress.jsonl")}
    only = options.only.split(",") if options.only else ["*"]
    scratch = Path(tempfile.mkdtemp(prefix="work-", dir=out))
    os.chdir(scratch)  # tests create files in the current directory
    real_stdout = sys.stdout
    with open(out / "progress.jsonl", "a", encoding="utf-8") as progress, \
            open(out / "watchdog.txt", "w", encoding="utf-8") as watchdog, \
            open(out / "output.log", "a", encoding="utf-8", errors="replace") as log:
        import faulthandler
        faulthandler.enable(file=watchdog)  # a crash leaves its traceback beside the hangs'
        sys.stdout = sys.stderr = log
        result = RecordingResult(progress, watchdog, options.timeout, tracer)
        result.arm()  # importing the test modules is watched too
        loaded = unittest.defaultTestLoader.loadTestsFromNames(PACKAGES)
        if options.mode == "loop":
            loaded.addTest(readiness_tests())
        remaining = unittest.TestSuite()
        for test in iter_tests(loaded):
            test_id = test.id()
            if (test_id in done or not any(fnmatch.fnmatchcase(test_id, p) for p in only)
                    or not in_scope(test_id, options.mode)):
                continue
            listed = next((e for e in expectations if e.applies(test_id, options.version,
                                                                options.mode)), None)
            if listed is not None and not options.only:
                result.write({"event": "end", "id": test_id, "outcome": "skip", "seconds": 0,
                              "detail": f"listed in asyncio-expected.txt: {listed.reason}",
                              "calls": {}})
                continue
            remaining.addTest(test)
        remaining.run(result)
        result.write({"event": "finished"})
        faulthandler.cancel_dump_traceback_later()
        sys.stdout = real_stdout
    print(f"[asyncio-suite] {options.version} {options.mode}: process done, "
          f"{result.testsRun} tests run", flush=True)
    os._exit(0)  # threads the tests left behind must not keep the process alive


# --- the host side: provisioning ------------------------------------------------------------

def debian_mirror() -> tuple[str, str]:
    """The machine's own Debian mirror and keyring (from its apt sources), or Debian's default."""
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in sources.read_text().split("\n\n"):
            fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.MULTILINE))
            for uri in fields.get("URIs", "").split():
                if uri.rstrip("/").endswith("/debian") and "Types" in fields:
                    return uri, fields.get("Signed-By", DEFAULT_KEYRING)
    return DEFAULT_MIRROR, DEFAULT_KEYRING


def private_apt(*args: str) -> None:
    """apt-get with a configuration of its own under .winenv/apt (the system's stays as is)."""
    options = [
        "-o", "Dir::Etc::SourceList=/dev/null",
        "-o", f"Dir::Etc::SourceParts={APT_HOME / 'sources.list.d'}",
        "-o", f"Dir::State::Lists={APT_HOME / 'lists'}",
        "-o", f"Dir::Cache={APT_HOME / 'cache'}",
        "-o", "Dir::State::status=/dev/null",
        "-o", "APT::Architecture=amd64",
        "-o", "Debug::NoLocking=1",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options += ["-o", "APT::Sandbox::User=root"]  # _apt cannot write to .winenv
    subprocess.run(["apt-get", "-q", *options, *args], check=True, cwd=APT_HOME / "debs",
                   stdout=subprocess.DEVNULL)


def ensure_test_package(version: str) -> Path:
    """CPython ``version``'s test package from Debian; returns the folder that holds ``test/``."""
    target = TESTS_HOME / version
    suite = DEBIAN_SUITES[version]
    packages = [f"libpython{version}-testsuite", f"libpython{version}-stdlib"]
    mirror, keyring = debian_mirror()
    wanted = f"{suite} {mirror} {' '.join(packages)}\n"
    stamp = target / ".winenv-tests"
    if stamp.exists() and stamp.read_text() == wanted:
        return target
    log(f"fetching CPython {version}'s test package from Debian {suite} ({', '.join(packages)})")
    for folder in ("sources.list.d", "lists/partial", "cache/archives/partial", "debs"):
        (APT_HOME / folder).mkdir(parents=True, exist_ok=True)
    (APT_HOME / "sources.list.d" / f"winenv-{suite}.sources").write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: main\nSigned-By: {keyring}\n")
    private_apt("update")
    for old in (APT_HOME / "debs").glob(f"libpython{version}-*.deb"):
        old.unlink()
    private_apt("download", *packages)
    shutil.rmtree(target, ignore_errors=True)
    (target / "test").mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="debs-", dir=APT_HOME) as scratch:
        debs = sorted((APT_HOME / "debs").glob(f"libpython{version}-*.deb"))
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), scratch], check=True)
        shutil.copytree(Path(scratch) / "usr" / "lib" / f"python{version}" / "test",
                        target / "test", dirs_exist_ok=True)
    if not (target / "test" / "test_asyncio" / "__init__.py").exists():
        raise RuntimeError(f"{', '.join(packages)} carry no test/test_asyncio")
    (target / "packages.txt").write_text("".join(f"{deb.name}\n" for deb in debs))
    stamp.write_text(wanted)
    return target


def log(message: str) -> None:
    print(f"[asyncio-suite] {message}", file=sys.stderr, flush=True)


# --- the host side: runs --------------------------------------------------------------------

@dataclass
class Run:
    """One version and mode: each test's outcome, the calls our tracer saw, the wall time."""

    version: str
    mode: str
    outcomes: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    calls: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> method -> n
    durations: dict[str, float] = field(default_factory=dict)  # test id -> seconds
    heap: dict[str, int] = field(default_factory=dict)  # module -> objects alive at its start
    io_tests: dict[str, int] = field(default_factory=dict)  # kind -> tests with real I/O
    seconds: float = 0.0
    processes: int = 0
    complete: bool = False

    def count(self, *outcomes: str) -> int:
        return sum(1 for o in self.outcomes.values() if o in outcomes)


def results_dir(version: str, mode: str, only: str | None = None) -> Path:
    return RESULTS_HOME / version / (f"{mode}-alone" if only else mode)


def load_run(version: str, mode: str, only: str | None = None) -> Run:
    out = results_dir(version, mode, only)
    run = Run(version, mode)
    meta = out / "meta.json"
    if meta.exists():
        data = json.loads(meta.read_text())
        run.seconds, run.processes = float(data["seconds"]), int(data["processes"])
    calls: dict[str, collections.Counter[str]] = {}
    io_tests: collections.Counter[str] = collections.Counter()
    for record in read_progress(out / "progress.jsonl"):
        if record["event"] == "finished":
            run.complete = True
        if record["event"] == "start" and "heap" in record:
            run.heap[str(record["id"]).rsplit(".", 2)[0]] = cast(int, record["heap"])
        if record["event"] != "end":
            continue
        test_id = str(record["id"])
        run.outcomes[test_id] = str(record["outcome"])
        run.details[test_id] = str(record.get("detail", ""))
        run.durations[test_id] = float(cast(float, record.get("seconds", 0)))
        per_kind = cast("dict[str, dict[str, int]]", record.get("calls") or {})
        for kind, methods in per_kind.items():
            calls.setdefault(kind, collections.Counter()).update(methods)
            if IO_METHODS & set(methods):
                io_tests[kind] += 1
    run.calls = {kind: dict(sorted(c.items())) for kind, c in calls.items()}
    run.io_tests = dict(io_tests)
    return run


def runner_command(version: str, mode: str, tests: Path, timeout: float,
                   only: str | None) -> list[str]:
    import winenv

    def where(path: Path) -> str:
        return str(path) if winenv.ON_WINDOWS else winenv.windows_path(path)
    return ["python", where(Path(__file__)), "--in-windows", "--version", version, "--mode", mode,
            "--tests", where(tests), "--out", where(results_dir(version, mode, only)),
            "--timeout", str(timeout), *(["--only", only] if only else [])]


def close_open_test(out: Path, process: int) -> None:
    """After a process died: record its open test as hang (watchdog) or crash."""
    records = read_progress(out / "progress.jsonl")
    ended = {r["id"] for r in records if r["event"] == "end"}
    open_tests = [str(r["id"]) for r in records if r["event"] == "start" and r["id"] not in ended]
    dump_file = out / "watchdog.txt"
    dump = dump_file.read_text(encoding="utf-8", errors="replace") if dump_file.exists() else ""
    if dump:
        shutil.copy(dump_file, out / f"watchdog-{process}.txt")
    outcome = "hang" if "Timeout (" in dump else "crash"
    detail = tail(dump, 25) or "the process ended without a traceback"
    if open_tests:
        test_id = open_tests[-1]
    else:  # between two tests: a fixture or the loading; name it after the last test
        last = next((str(r["id"]) for r in reversed(records) if r["event"] == "end"), "loading")
        test_id = f"(fixtures after {last})"
    with open(out / "progress.jsonl", "a", encoding="utf-8") as progress:
        progress.write("\n" + json.dumps({"event": "end", "id": test_id, "outcome": outcome,
                                          "seconds": 0, "detail": detail, "calls": {}}) + "\n")
    log(f"{out.parent.name} {out.name}: {outcome} in {test_id}")


def run_mode(version: str, mode: str, timeout: float, only: str | None = None) -> Run:
    """Run the whole package in ``mode``, one process after another until every test has run."""
    import winenv

    tests = ensure_test_package(version)
    winenv.setup(version)
    out = results_dir(version, mode, only)
    shutil.rmtree(out, ignore_errors=True)
    if not only:  # the last recheck was of the last full run
        shutil.rmtree(results_dir(version, mode, "recheck"), ignore_errors=True)
    out.mkdir(parents=True)
    log(f"CPython {version}, {mode}: test.test_asyncio")
    started = time.monotonic()
    processes = 0
    while processes < MAX_PROCESSES:
        processes += 1
        # The watchdog bounds each test; this bounds a process that stops without it.
        winenv.run_windows(version, runner_command(version, mode, tests, timeout, only),
                           timeout=3600)
        if any(r["event"] == "finished" for r in read_progress(out / "progress.jsonl")):
            break
        close_open_test(out, processes)
    for scratch in out.glob("work-*"):
        shutil.rmtree(scratch, ignore_errors=True)
    (out / "meta.json").write_text(json.dumps(
        {"seconds": round(time.monotonic() - started, 1), "processes": processes}))
    return load_run(version, mode, only)


# --- the host side: the comparison ----------------------------------------------------------

@dataclass
class Comparison:
    """What one swapped run did worse than the stock run of the same version."""

    stock: Run
    run: Run
    regressions: dict[str, str]  # test id -> what ours did (stock passed it)
    expected: dict[str, str]  # the same, but listed in asyncio-expected.txt (id -> reason)
    missing: list[str]  # stock ran them, ours did not
    recheck: dict[str, str] = field(default_factory=dict)  # regression -> its outcome alone

    def flakes(self) -> list[str]:
        """Regressions that passed when run again on their own."""
        return [t for t in self.regressions if self.recheck.get(t) in PASSED_OUTCOMES]

    def real_regressions(self) -> list[str]:
        """Regressions that failed again alone (or were not run again)."""
        return [t for t in self.regressions if self.recheck.get(t) not in PASSED_OUTCOMES]

    def alone(self, test_id: str) -> str:
        outcome = self.recheck.get(test_id)
        return "" if outcome is None else f" (run again alone: {outcome})"


def compare(stock: Run, ours: Run, expectations: Iterable[Expectation]) -> Comparison:
    differ = [e for e in expectations if e.kind == "differ"]
    regressions, expected = {}, {}
    for test_id, outcome in sorted(ours.outcomes.items()):
        if outcome in PASSED_OUTCOMES:
            continue
        # A fixture's error or hang has an id of its own: bad with ours and absent with stock.
        absent_bad = test_id not in stock.outcomes and outcome in BAD_OUTCOMES
        if stock.outcomes.get(test_id) not in PASSED_OUTCOMES and not absent_bad:
            continue
        listed = next((e for e in differ if e.applies(test_id, ours.version, ours.mode)), None)
        if listed is None:
            regressions[test_id] = outcome
        else:
            expected[test_id] = listed.reason
    missing = sorted(t for t in set(stock.outcomes) - set(ours.outcomes)
                     if in_scope(t, ours.mode))
    recheck_dir = results_dir(ours.version, ours.mode, "recheck")
    recheck = {}
    if (recheck_dir / "meta.json").exists():
        recheck = load_run(ours.version, ours.mode, "recheck").outcomes
    return Comparison(stock, ours, regressions, expected, missing,
                      {t: recheck[t] for t in regressions if t in recheck})


def table(runs: list[Run]) -> str:
    header = ("version", "mode", "ran", "passed", "failed", "errors", "skipped", "hangs",
              "crashes", "I/O tests (ours/stock)", "time")
    rows = [header]
    for run in runs:
        rows.append((run.version, run.mode, str(len(run.outcomes)), str(run.count("pass", "xfail")),
                     str(run.count("fail", "xpass")), str(run.count("error")),
                     str(run.count("skip")),
                     str(run.count("hang")), str(run.count("crash")),
                     f"{run.io_tests.get('ours', 0)}/{run.io_tests.get('stock', 0)}",
                     f"{run.seconds:.0f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


#: The results table the documentation includes (docs/aio.md), written by a complete run.
DOCS_TABLE = ROOT / "docs" / "asyncio-suite-results.md"


def docs_table(runs: list[Run], day: str) -> str:
    """The runs as the Markdown table the documentation includes: made by the tool from its
    own results, never by hand."""
    lines = [f"Measured {day} by `python3 tools/winenv.py asyncio-suite` (a 2-core machine, "
             "under Wine); this table is written by that run.", "",
             "| version | mode | ran | passed | failed | errors | skipped | hangs "
             "| tests whose I/O our proactor served |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        served = run.io_tests.get("ours", 0)
        if run.mode == "stock":
            served_text = f"0 ({run.io_tests.get('stock', 0)} on the stock one)"
        elif run.mode == "selector":
            served_text = "- (readiness only)"
        else:
            served_text = str(served)
        lines.append(f"| {run.version} | {run.mode} | {len(run.outcomes)} "
                     f"| {run.count('pass', 'xfail')} | {run.count('fail', 'xpass')} "
                     f"| {run.count('error')} | {run.count('skip')} | {run.count('hang')} "
                     f"| {served_text} |")
    return "\n".join(lines) + "\n"


def report(runs: list[Run], expectations: list[Expectation]) -> tuple[str, list[Comparison]]:
    lines = [table(runs), ""]
    comparisons = []
    for run in runs:
        if run.mode == "stock":
            continue
        stock = next((r for r in runs if r.version == run.version and r.mode == "stock"), None)
        if stock is None:
            lines.append(f"{run.version} {run.mode}: no stock run to compare with")
            continue
        comparison = compare(stock, run, expectations)
        comparisons.append(comparison)
        ours_calls = run.calls.get("ours", {})
        lines.append(f"{run.version} {run.mode}: our proactor's calls: "
                     + (", ".join(f"{m} {n}" for m, n in ours_calls.items()) or "none"))
        if run.calls.get("stock"):
            lines.append(f"{run.version} {run.mode}: the STOCK proactor's calls: "
                         + ", ".join(f"{m} {n}" for m, n in run.calls["stock"].items()))
        if comparison.missing:
            lines.append(f"{run.version} {run.mode}: {len(comparison.missing)} tests ran with "
                         f"stock but not with ours: {', '.join(comparison.missing[:10])}")
        for test_id, reason in comparison.expected.items():
            lines.append(f"{run.version} {run.mode}: expected ({reason}): {test_id}")
        for test_id, outcome in comparison.regressions.items():
            lines.append(f"{run.version} {run.mode}: {outcome.upper()} with ours, passed with "
                         f"stock: {test_id}{comparison.alone(test_id)}")
        for test_id, outcome in sorted(stock.outcomes.items()):
            if outcome in BAD_OUTCOMES and run.outcomes.get(test_id) in PASSED_OUTCOMES:
                lines.append(f"{run.version} {run.mode}: passed with ours, {outcome} with "
                             f"stock: {test_id}")
    return "\n".join(lines), comparisons


def write_failures_report(expectations: list[Expectation]) -> None:
    """For the lead: each test that fails with ours and passes with stock, with its error.

    From the last run of every version and mode on disk, so a run of one version keeps the
    other's findings in the file.
    """
    FAILURES_REPORT.parent.mkdir(parents=True, exist_ok=True)
    runs = [load_run(version, mode) for version in DEBIAN_SUITES for mode in MODES
            if (results_dir(version, mode) / "meta.json").exists()]
    _, comparisons = report(runs, expectations)
    lines = [f"# test_asyncio: fails with winiocp.aio, passes with stock "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             "Run one again: `python3 tools/asyncio_suite.py --python V --mode M --only "
             "'<test id or fnmatch pattern>'` (the full run: `python3 tools/winenv.py "
             "asyncio-suite`).", ""]
    for comparison in comparisons:
        run = comparison.run
        lines.append(f"## {run.version} {run.mode}: {len(comparison.regressions)} "
                     f"(ran {len(run.outcomes)}, missing {len(comparison.missing)})")
        lines.append("")
        for test_id, outcome in comparison.regressions.items():
            lines += [f"### {test_id} ({outcome}{comparison.alone(test_id)})", "", "```",
                      run.details.get(test_id, "").strip() or "(no detail)", "```", ""]
        stock = comparison.stock
        slow = sorted((seconds, test_id) for test_id, seconds in run.durations.items()
                      if seconds > max(5 * stock.durations.get(test_id, seconds), 
                                       stock.durations.get(test_id, seconds) + 3))
        if slow:
            lines += [f"Much slower with ours than with stock ({run.version} {run.mode}):", ""]
            lines += [f"- {test_id}: {seconds:.1f} s (stock {stock.durations[test_id]:.1f} s)"
                      for seconds, test_id in reversed(slow)]
            lines.append("")
        if run.heap:
            lines += [f"Objects alive (after gc.collect) when each module starts, stock / ours "
                      f"({run.version} {run.mode}):", ""]
            lines += [f"- {module}: {stock.heap.get(module, 0)} / {count}"
                      for module, count in run.heap.items()]
            lines.append("")
    FAILURES_REPORT.write_text("\n".join(lines) + "\n")


def command(versions: list[str], modes: list[str], timeout: float = TEST_TIMEOUT,
            rerun: bool = True, only: str | None = None) -> int:
    """Run (or, with ``rerun=False``, reload) each version and mode, compare, print the report."""
    expectations = parse_expectations(EXPECTED.read_text(encoding="utf-8"))
    runs = []
    for version in versions:
        if version not in DEBIAN_SUITES:
            raise SystemExit(f"asyncio-suite: no Debian test package for {version} "
                             f"(choose from {', '.join(DEBIAN_SUITES)})")
        for mode in modes:
            run = run_mode(version, mode, timeout, only) if rerun else load_run(version, mode, only)
            log(f"CPython {version}, {mode}: {len(run.outcomes)} tests in {run.seconds:.0f} s")
            runs.append(run)
    for version in versions:  # swapped modes alone: compare with the last stock run
        last_stock = results_dir(version, "stock") / "meta.json"
        if not only and "stock" not in modes and last_stock.exists():
            log(f"CPython {version}: comparing with the last stock run")
            runs.append(load_run(version, "stock"))
    runs.sort(key=lambda run: (versions.index(run.version), MODES.index(run.mode)))
    if only:  # an ad hoc run: each test's outcome, nothing to compare
        for run in runs:
            for test_id, outcome in sorted(run.outcomes.items()):
                print(f"{run.version} {run.mode} {outcome}: {test_id}")
                if outcome in BAD_OUTCOMES:
                    print("    " + run.details[test_id].replace("\n", "\n    "))
        print(table(runs), flush=True)
        return 1 if any(run.count(*BAD_OUTCOMES) for run in runs) else 0
    _, comparisons = report(runs, expectations)
    if rerun:
        for comparison in comparisons:  # does each regression show again, on its own?
            if 0 < len(comparison.regressions) <= MAX_RECHECKS:
                run = comparison.run
                log(f"CPython {run.version}, {run.mode}: running the tests that failed with "
                    "ours only again, alone")
                run_mode(run.version, run.mode, timeout, ",".join(comparison.regressions))
    text, comparisons = report(runs, expectations)
    print(text, flush=True)
    write_failures_report(expectations)
    # The documentation's table, once the latest run of every version and mode is complete
    # (CI runs one version per call: the last call writes it).
    latest = [load_run(v, m) for v in DEFAULT_VERSIONS for m in MODES]
    if rerun and all(run.complete for run in latest):
        DOCS_TABLE.write_text(docs_table(latest, time.strftime("%Y-%m-%d")), encoding="utf-8")
        log(f"wrote {DOCS_TABLE.relative_to(ROOT)}")
    # A test that fails with ours in the loaded suite but passes when run again on its own is
    # reported as a load flake, not counted: stock's run of it happened at another moment.
    for comparison in comparisons:
        for test_id in comparison.flakes():
            log(f"CPython {comparison.run.version}, {comparison.run.mode}: {test_id} failed in "
                "the suite and passed when run again alone: a load flake, not counted")
    bad = [c for c in comparisons if c.real_regressions() or c.missing]
    bad_runs = [r for r in runs if not r.complete]
    if bad or bad_runs:
        log("FAILED: " + "; ".join(
            [f"{c.run.version} {c.run.mode}: {len(c.real_regressions())} fail with ours only, "
             f"{len(c.missing)} not run" for c in bad]
            + [f"{r.version} {r.mode}: did not finish" for r in bad_runs]))
        return 1
    return 0


def test_step(version: str) -> int:
    """``winenv.py test``'s step for ``version``: all three modes; a failure to provision is
    reported as the step's failure (the other steps still run)."""
    try:
        return command([version], list(MODES))
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        log(f"CPython {version}: could not run test_asyncio: {exc}")
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--python", default=",".join(DEFAULT_VERSIONS))
    parser.add_argument("--mode", default=",".join(MODES))
    parser.add_argument("--timeout", type=float, default=TEST_TIMEOUT,
                        help="seconds one test may take before it counts as a hang")
    parser.add_argument("--only", help="comma-separated fnmatch patterns: run only these tests "
                        "(listed skips included), into their own results folder, no comparison")
    parser.add_argument("--report", action="store_true",
                        help="compare the last runs again, without running anything")
    # The runner's own arguments (the driver passes them to Windows CPython).
    parser.add_argument("--in-windows", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", help=argparse.SUPPRESS)
    parser.add_argument("--tests", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.in_windows:
        return run_in_windows(options)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # for winenv
    modes = options.mode.split(",")
    if not set(modes) <= set(MODES):
        parser.error(f"--mode: choose from {', '.join(MODES)}")
    return command(options.python.split(","), modes, options.timeout, rerun=not options.report,
                   only=options.only)


if __name__ == "__main__":
    sys.exit(main())
