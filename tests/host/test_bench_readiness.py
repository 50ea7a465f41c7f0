"""Host checks of the bench's readiness section (section 1d): the markdown and the findings
built from ``bench/micro/readiness.py``'s results.

Why on the host: a ratio turned the wrong way round, or a loop left out of a table, would not
crash a benchmark run but would make its report wrong. The measurements themselves need
Windows (they run under Wine in ``bench/run.py --only readiness``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report, run  # noqa: E402


def _results(tornado: float = 2000.0) -> dict[str, Any]:
    return {"readiness": {
        "skipped": {},
        "note": "NOTE",
        "selectors": {
            "rounds": 15, "batch_s": 0.04,
            "select": {
                "10/1": {"afd": {"us_per_call": 100.0, "runs_us": [90, 110], "short_calls": 0},
                         "select": {"us_per_call": 25.0, "runs_us": [20, 30],
                                    "short_calls": 0}},
                "500/1": {"afd": {"us_per_call": 100.0, "runs_us": [90, 110], "short_calls": 2},
                          "select": {"us_per_call": 5000.0, "runs_us": [4000, 6000],
                                     "short_calls": 0}},
                "2000/1": {"afd": {"us_per_call": 150.0, "runs_us": [140, 160],
                                   "short_calls": 0}},
            },
            "round_trip": {
                "500": {"afd": {"us_per_trip": 400.0, "runs_us": [300, 500],
                                "other_sockets_reported": 0},
                        "select": {"us_per_trip": 8000.0, "runs_us": [7000, 9000],
                                   "other_sockets_reported": 0}},
                "2000": {"afd": {"us_per_trip": 600.0, "runs_us": [500, 700],
                                 "other_sockets_reported": 0}},
            },
        },
        "loops": {
            "rounds": 11, "seconds": 0.5, "warmup": 0.1, "skipped": {},
            "cells": {"10": {
                "winiocp": {"hops_per_s": 1000.0, "runs": [900, 1100]},
                "tornado": {"hops_per_s": tornado, "runs": [tornado]},
                "winiocp-selector": {"hops_per_s": 1500.0, "runs": [1500]},
                "selector": {"hops_per_s": 4000.0, "runs": [4000]},
            }},
        },
    }}


def test_the_selector_ratio_is_select_time_over_afd_time() -> None:
    text = report.markdown(_results())
    assert "| 10 | 1 | 100.0 (90-110) | 25.0 (20-30) | 0.25x |" in text
    assert "| 500 | 1 | 100.0 (90-110), 2 short | 5,000.0 (4,000-6,000) | 50.00x |" in text
    assert "| 2000 | 1 | 150.0 (140-160) | - | - |" in text
    assert "| 500 | 400.0 (300-500) | 8,000.0 (7,000-9,000) | 20.00x | 0 / 0 |" in text
    assert "| 2000 | 600.0 (500-700) | - | - | 0 / - |" in text


def test_every_loop_is_compared_with_tornados_thread() -> None:
    text = report.markdown(_results())
    assert "| 10 | `winiocp.aio.EventLoop` (add_reader on its port) | 1,000 (900-1,100) | 0.50x |" \
        in text
    assert "tornado `AddThreadSelectorEventLoop` around the stock proactor loop | 2,000 | 1.00x |" \
        in text
    assert "| 10 | stock `asyncio.SelectorEventLoop` (select) | 4,000 | 2.00x |" in text


def test_a_part_not_measured_says_why() -> None:
    results = _results()
    results["readiness"]["skipped"] = {"loops": "readiness loops took more than 300s"}
    del results["readiness"]["loops"]
    text = report.markdown(results)
    assert "- **loops not measured**: readiness loops took more than 300s" in text
    assert "add_reader` ping-pong" not in text


def test_the_findings_follow_the_data() -> None:
    behind = run.readiness_findings(_results(tornado=2000.0))
    assert len(behind) == 2
    assert "AfdSelector faster at N=500 K=1 50.0x" in behind[0]
    assert "SelectSelector faster at N=10 K=1 4.0x" in behind[0]
    assert "10 pair(s): 1,000 vs 2,000 messages/s (0.50x)" in behind[1]
    assert "Where tornado leads, it is batching" in behind[1]
    ahead = run.readiness_findings(_results(tornado=500.0))
    assert "(2.00x)" in ahead[1] and "batching" not in ahead[1]
    assert run.readiness_findings({}) == []
