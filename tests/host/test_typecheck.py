"""Type-checks small user programs against winiocp, the way a user's mypy would see the package.

The point of the generated Protocols (``winiocp/_api.py``) is that a wrong raw call is a type
error, not a crash or silent memory corruption at run time. That is only true if mypy, given
a user's program, reports exactly the mistakes in it: a missed error means a hole in the types,
a spurious one means the types reject correct code. Each file in ``typecheck_samples/`` is such
a program; a line that must be reported ends with ``# E: <mypy error code>`` (several codes:
``# E: arg-type, call-arg``). A new sample file (e.g. one for the typed wrappers) is picked up
without touching this module. The folder is excluded from the repository-wide mypy run
(pyproject.toml), since the error samples are meant to fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = Path(__file__).resolve().with_name("typecheck_samples")
SAMPLE_FILES = sorted(SAMPLES.glob("*.py"))
EXPECTED_MARK = re.compile(r"#\s*E:\s*(?P<codes>[\w-]+(?:\s*,\s*[\w-]+)*)\s*$")

Errors = set[tuple[int, str]]


def expected_errors(sample: Path) -> Errors:
    """The (line, error code) pairs a sample declares with trailing ``# E:`` comments."""
    expected: Errors = set()
    for number, line in enumerate(sample.read_text().splitlines(), start=1):
        mark = EXPECTED_MARK.search(line)
        if mark:
            expected.update((number, code.strip()) for code in mark["codes"].split(","))
    return expected


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


def test_there_is_a_clean_sample_and_an_error_sample() -> None:
    # Guards the glob: an empty folder would make the parametrized test below vacuous.
    kinds = {bool(expected_errors(sample)) for sample in SAMPLE_FILES}
    assert kinds == {False, True}, f"samples in {SAMPLES}: {SAMPLE_FILES}"


@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=[path.name for path in SAMPLE_FILES])
def test_sample_reports_exactly_its_marked_errors(sample: Path, mypy_cache: Path) -> None:
    expected = expected_errors(sample)
    reported, messages = run_mypy(sample, mypy_cache)
    missed = sorted(expected - reported)
    spurious = sorted(reported - expected)
    assert not missed and not spurious, (
        f"{sample.name}: expected but not reported {missed}; reported but not marked "
        f"{spurious}\nmypy said:\n" + "\n".join(messages)
    )
