"""Importing winiocp anywhere but Windows fails at once, with one line that says why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(sys.platform == "win32", reason="the guard is for other platforms")
def test_import_on_this_platform_raises_a_one_line_import_error() -> None:
    result = subprocess.run([sys.executable, "-c", "import winiocp"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == (f"ImportError: winiocp binds Windows I/O completion ports: it needs "
                         f"Windows, not {sys.platform}")
