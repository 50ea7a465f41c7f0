"""Type-checks winiocp and small user programs against it, the way users' checkers see them.

The point of the generated Protocols (``winiocp/_api.py``) is that a wrong raw call is a type
error, not a crash or silent memory corruption at run time. That is only true if the checker,
given a user's program, reports exactly the mistakes in it: a missed error means a hole in the
types, a spurious one means the types reject correct code. Users check with mypy or with
pyright (Pylance, in VS Code), so both are held to it.

Each file in ``typecheck_samples/`` is such a program. A line that must be reported carries a
trailing mark per checker: ``# E: <mypy error code>`` and ``# P: <pyright rule>`` (several:
``# E: arg-type, call-arg``). Every deliberate mistake is marked for both, so neither checker
may miss what the other finds. A new sample file is picked up without touching this module. The
folder is excluded from the repository-wide mypy run (pyproject.toml), since the error samples
are meant to fail; pyright's repository configuration covers only ``winiocp/``.

The package itself must be clean under strict pyright (its ``[tool.pyright]`` configuration),
and ``pyright --verifytypes`` must find every exported symbol's type known: a symbol it calls
ambiguous (an unannotated attribute, say) is one whose type another checker may infer
differently. pyright is a host requirement (tools/requirements-host.txt), so a missing pyright
fails these tests instead of skipping them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = Path(__file__).resolve().with_name("typecheck_samples")
SAMPLE_FILES = sorted(SAMPLES.glob("*.py"))
MARKS = {"mypy": "E", "pyright": "P"}
MARK = re.compile(r"#\s*(?P<checker>[EP]):\s*(?P<codes>[\w-]+(?:\s*,\s*[\w-]+)*)")
PYRIGHT_RULE = re.compile(r"report[A-Z]\w+")
PYRIGHT_TIMEOUT = 240.0

Errors = set[tuple[int, str]]


def expected_errors(sample: Path, checker: str) -> Errors:
    """The (line, code) pairs a sample's trailing marks declare for ``checker``."""
    expected: Errors = set()
    for number, line in enumerate(sample.read_text().splitlines(), start=1):
        for mark in MARK.finditer(line):
            if mark["checker"] == MARKS[checker]:
                expected.update((number, code.strip()) for code in mark["codes"].split(","))
    return expected


def mismatch(sample: Path, expected: Errors, reported: Errors, said: Iterable[str]) -> str:
    """An empty string if the sets agree, else what was missed and what was not marked."""
    missed = sorted(expected - reported)
    spurious = sorted(reported - expected)
    if not missed and not spurious:
        return ""
    return (f"{sample.name}: expected but not reported {missed}; reported but not marked "
            f"{spurious}\nthe checker said:\n" + "\n".join(said))


# --- mypy -----------------------------------------------------------------------------------

def run_mypy(sample: Path, cache_dir: Path) -> tuple[Errors, list[str]]:
    """mypy's errors in ``sample`` as (line, code), and every message as text for reports.

    Run in a subprocess from the repository root with the repository's config (mypy finds
    ``winiocp`` there), strict and for win32 whatever the host. Only the sample's own errors
    count: a user's mypy does not report errors inside an installed package either, and the
    package itself is checked by the repository-wide run.
    """
    command = [
        sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
        "--strict", "--platform", "win32", "--output", "json",
        "--cache-dir", str(cache_dir), str(sample.relative_to(ROOT)),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    errors: Errors = set()
    messages: list[str] = []
    for raw in result.stdout.splitlines():
        if not raw.strip():  # a clean run prints one empty line
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:  # a crash or a blocking error is not JSON
            pytest.fail(f"mypy did not run cleanly (exit {result.returncode}):\n"
                        f"{result.stdout}{result.stderr}")
        messages.append(f"{record['file']}:{record['line']}: {record['severity']}: "
                        f"{record['message']}  [{record['code']}]")
        if record["severity"] == "error" and (ROOT / record["file"]).resolve() == sample:
            errors.add((int(record["line"]), str(record["code"])))
    assert result.returncode in (0, 1), result.stderr
    return errors, messages


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for all samples: the first run pays for the standard library, the rest reuse it."""
    return tmp_path_factory.mktemp("mypy-cache")


# --- pyright --------------------------------------------------------------------------------

# pyright's JSON report, as parsed: the tests below read the fields they need.
Report = Any
Diagnostic = dict[str, Any]


def run_pyright(*args: str, env: Mapping[str, str] | None = None) -> Report:
    """Run pyright (the pinned host requirement) from the repository root; its JSON report.

    ``--pythonpath`` makes pyright take its import paths from this interpreter (where the host
    requirements are installed), not from whichever ``python`` is first on PATH.
    """
    if importlib.util.find_spec("pyright") is None:
        pytest.fail("pyright is not installed: it is a host requirement "
                    "(pip install -r tools/requirements-host.txt)")
    command = [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable,
               *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            timeout=PYRIGHT_TIMEOUT, env=None if env is None else dict(env))
    # 0: no errors, 1: errors reported; anything else (2 fatal, 3 config, 4 usage) is no report.
    if result.returncode not in (0, 1):
        pytest.fail(f"pyright did not run (exit {result.returncode}):\n"
                    f"{result.stdout}{result.stderr}")
    return json.loads(result.stdout)


def diagnostics(report: Report) -> list[Diagnostic]:
    found: list[Diagnostic] = report.get("generalDiagnostics", [])
    return found


def diagnostic_line(entry: Diagnostic) -> int:
    """The 1-based line of a diagnostic (pyright's JSON counts from 0; 0 if it has none)."""
    return int(entry["range"]["start"]["line"]) + 1 if "range" in entry else 0


def describe(entry: Diagnostic) -> str:
    """``file:line: severity: message [rule]``, the message's first line only."""
    path = Path(entry.get("file") or "?")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    first_line = str(entry.get("message", "")).splitlines()[0]
    rule = f"  [{entry['rule']}]" if entry.get("rule") else ""
    return f"{shown}:{diagnostic_line(entry)}: {entry.get('severity')}: {first_line}{rule}"


@pytest.fixture(scope="module")
def pyright_samples(tmp_path_factory: pytest.TempPathFactory) -> list[Diagnostic]:
    """pyright's diagnostics for every sample, from one run, as a user's strict pyright sees them.

    The configuration is a user's, not the repository's: strict, for Windows, with the checkout
    on the import path (``extraPaths``) as an installed winiocp would be. pyright reports only
    the files it is given, so the package's own code does not add to a sample's errors.
    """
    config = tmp_path_factory.mktemp("pyright") / "pyrightconfig.json"
    config.write_text(json.dumps({
        "typeCheckingMode": "strict", "pythonPlatform": "Windows", "pythonVersion": "3.10",
        "extraPaths": [str(ROOT)],
    }))
    report = run_pyright("--project", str(config), *(str(path) for path in SAMPLE_FILES))
    return diagnostics(report)


# --- the samples ----------------------------------------------------------------------------

def test_there_is_a_clean_sample_and_an_error_sample() -> None:
    # Guards the glob: an empty folder would make the parametrized tests below vacuous.
    kinds = {bool(expected_errors(sample, "mypy")) for sample in SAMPLE_FILES}
    assert kinds == {False, True}, f"samples in {SAMPLES}: {SAMPLE_FILES}"


@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=[path.name for path in SAMPLE_FILES])
def test_every_mistake_is_marked_for_both_checkers(sample: Path) -> None:
    mypy_lines = {line for line, _ in expected_errors(sample, "mypy")}
    pyright_lines = {line for line, _ in expected_errors(sample, "pyright")}
    assert mypy_lines == pyright_lines, (
        f"{sample.name}: lines marked only for mypy {sorted(mypy_lines - pyright_lines)}, "
        f"only for pyright {sorted(pyright_lines - mypy_lines)}")
    typos = sorted(code for _, code in expected_errors(sample, "pyright")
                   if not PYRIGHT_RULE.fullmatch(code))
    assert not typos, f"{sample.name}: not pyright rule names: {typos}"


@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=[path.name for path in SAMPLE_FILES])
def test_mypy_reports_exactly_the_marked_errors(sample: Path, mypy_cache: Path) -> None:
    reported, messages = run_mypy(sample, mypy_cache)
    problem = mismatch(sample, expected_errors(sample, "mypy"), reported, messages)
    assert not problem, problem


@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=[path.name for path in SAMPLE_FILES])
def test_pyright_reports_exactly_the_marked_errors(
        sample: Path, pyright_samples: list[Diagnostic]) -> None:
    mine = [entry for entry in pyright_samples
            if Path(str(entry.get("file", ""))).resolve() == sample]
    # A diagnostic without a rule (a syntax error, say) is reported with rule "" and so can
    # never match a mark; warnings count as much as errors, as they would in a user's editor.
    reported = {(diagnostic_line(entry), str(entry.get("rule", ""))) for entry in mine}
    problem = mismatch(sample, expected_errors(sample, "pyright"), reported,
                       [describe(entry) for entry in mine])
    assert not problem, problem


# --- the package ----------------------------------------------------------------------------

def test_pyright_strict_is_clean_on_the_package() -> None:
    report = run_pyright()  # the [tool.pyright] configuration of pyproject.toml
    found = diagnostics(report)
    assert not found, f"{len(found)} pyright diagnostics:\n" + "\n".join(map(describe, found))
    assert report["summary"]["filesAnalyzed"] >= 10, report["summary"]  # the configuration did include winiocp/


def test_verifytypes_finds_every_exported_type_known() -> None:
    # verifytypes looks the package up as an installed one; PYTHONPATH puts the checkout on the
    # path of the interpreter pyright asks. The platform must be given on the command line:
    # verifytypes ignores the configuration's, and on any other platform the package's import
    # guard makes everything after it unreachable (so the score could never be 100%).
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    report = run_pyright("--verifytypes", "winiocp", "--pythonplatform", "Windows", env=env)
    completeness = report["typeCompleteness"]
    assert Path(completeness["packageRootDirectory"]) == ROOT / "winiocp", completeness
    symbols: list[dict[str, Any]] = completeness["symbols"]
    names = {symbol["name"] for symbol in symbols}
    assert {"winiocp.Socket", "winiocp.CompletionPort", "winiocp.raw.kernel32"} <= names
    problems = sorted({
        f"{symbol['name']}: {describe(entry)}"
        for symbol in symbols if symbol["isExported"] and not symbol["isTypeKnown"]
        for entry in symbol["diagnostics"] if entry["severity"] == "error"
    })
    counts = completeness["exportedSymbolCounts"]
    assert counts["withAmbiguousType"] == 0 and counts["withUnknownType"] == 0, (
        f"type completeness {completeness['completenessScore']:.1%}: {counts}\n"
        + "\n".join(problems))
    assert completeness["completenessScore"] == 1.0
