"""The comparison of tools/asyncio_suite.py: what makes the test_asyncio proof fail.

The suite itself runs under Wine (``python3 tools/winenv.py asyncio-suite``); these tests pin
the host-side judgement on made-up runs: a test ours fails and stock passes is reported unless
the committed expectations list it with a reason, a test stock ran and ours did not is
reported, a test both fail is not, and the committed expectations file parses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import asyncio_suite  # noqa: E402
from asyncio_suite import Run, compare, parse_expectations  # noqa: E402

STOCK = {"t.a": "pass", "t.b": "fail", "t.c": "pass", "t.d": "skip", "t.e": "pass"}


def run(mode: str, outcomes: dict[str, str], version: str = "3.13") -> Run:
    return Run(version, mode, outcomes=dict(outcomes))


def test_a_test_ours_fails_and_stock_passes_is_a_regression() -> None:
    ours = run("proactor", {**STOCK, "t.a": "error", "t.c": "hang", "t.e": "skip"})
    comparison = compare(run("stock", STOCK), ours, [])
    assert comparison.regressions == {"t.a": "error", "t.c": "hang", "t.e": "skip"}
    assert comparison.missing == []


def test_a_fixture_that_fails_or_hangs_only_with_ours_is_a_regression() -> None:
    ours = run("proactor", {**STOCK, "setUpClass (t.C)": "error",
                            "(fixtures after t.e)": "hang", "t.f": "skip"})
    assert compare(run("stock", STOCK), ours, []).regressions == {
        "setUpClass (t.C)": "error", "(fixtures after t.e)": "hang"}


def test_a_test_both_fail_is_not_a_regression() -> None:
    ours = run("loop", {**STOCK, "t.b": "error", "t.d": "fail"})
    assert compare(run("stock", STOCK), ours, []).regressions == {}


def test_a_test_stock_ran_and_ours_did_not_is_missing() -> None:
    ours = run("loop", {k: v for k, v in STOCK.items() if k != "t.c"})
    assert compare(run("stock", STOCK), ours, []).missing == ["t.c"]


def test_a_listed_difference_is_expected_only_where_it_applies() -> None:
    listed = parse_expectations("differ 3.11 proactor t.a -- inspects _overlapped objects\n")
    failing = {**STOCK, "t.a": "fail"}
    applies = compare(run("stock", STOCK, "3.11"), run("proactor", failing, "3.11"), listed)
    assert applies.regressions == {} and applies.expected == {"t.a": "inspects _overlapped objects"}
    other_mode = compare(run("stock", STOCK, "3.11"), run("loop", failing, "3.11"), listed)
    other_version = compare(run("stock", STOCK), run("proactor", failing), listed)
    assert other_mode.regressions == other_version.regressions == {"t.a": "fail"}


@pytest.mark.parametrize("line", [
    "skip t.a",                         # no reason
    "skip t.a -- ",                     # an empty reason
    "differ * stock t.a -- reason",     # stock is what ours is compared with
    "differ * t.a -- reason",           # a field missing
    "expect * * t.a -- reason",         # no such kind
])
def test_an_expectation_without_its_reason_or_shape_is_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_expectations(line + "\n")


def test_the_committed_expectations_parse_and_each_has_a_reason() -> None:
    expectations = parse_expectations(asyncio_suite.EXPECTED.read_text(encoding="utf-8"))
    assert expectations
    assert all(e.reason for e in expectations)


def test_a_regression_that_passes_again_alone_is_a_flake_not_a_failure() -> None:
    ours = run("proactor", {**STOCK, "t.a": "fail", "t.c": "fail"})
    comparison = compare(run("stock", STOCK), ours, [])
    comparison.recheck = {"t.a": "pass", "t.c": "fail"}  # run again on their own
    assert comparison.flakes() == ["t.a"]
    assert comparison.real_regressions() == ["t.c"]
    comparison.recheck = {}
    assert comparison.real_regressions() == ["t.a", "t.c"]  # not run again: counted


def test_the_documentations_table_is_made_from_the_runs() -> None:
    runs = [Run("3.13", "stock", outcomes={"t.a": "pass", "t.b": "fail", "t.c": "skip"},
                io_tests={"stock": 2}),
            Run("3.13", "loop", outcomes={"t.a": "pass", "t.b": "pass", "t.c": "skip"},
                io_tests={"ours": 2})]
    table = asyncio_suite.docs_table(runs, "2026-12-07").splitlines()
    assert "2026-12-07" in table[0]
    assert table[-2:] == ["| 3.13 | stock | 3 | 1 | 1 | 0 | 1 | 0 | 0 (2 on the stock one) |",
                          "| 3.13 | loop | 3 | 2 | 0 | 0 | 1 | 0 | 2 |"]
