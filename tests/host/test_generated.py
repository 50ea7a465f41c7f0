"""The two generated files are committed, so they must match what their generators write now.

``winiocp/_ffi.py`` (cffi's out-of-line module) and ``winiocp/_api.py`` (the typed Protocols)
are both derived from ``winiocp/cdefs/*.h``. Someone who edits a header and forgets to
regenerate would ship a binding whose C declarations, or whose types, no longer match the
headers; these tests make that a failure with the command that fixes it. Each check is also
run against a deliberately stale copy, to show it can fail at all.
"""

from __future__ import annotations

import importlib.util
import runpy
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, cast

import pytest

ROOT = Path(__file__).resolve().parents[2]
FFI_BUILD = ROOT / "winiocp" / "_ffi_build.py"
FFI_MODULE = ROOT / "winiocp" / "_ffi.py"
GEN_API = ROOT / "tools" / "gen_api.py"
API_MODULE = ROOT / "winiocp" / "_api.py"


def regenerated_ffi(target_dir: Path) -> str:
    """The text ``_ffi_build.py`` writes now.

    Loaded by path: importing the ``winiocp`` package raises ImportError off Windows.
    """
    build = runpy.run_path(str(FFI_BUILD))
    generate = cast(Callable[[Path], Path], build["generate"])
    return generate(target_dir).read_text()


def ffi_staleness(committed: Path, target_dir: Path) -> str | None:
    """Why ``committed`` is not the current ``_ffi.py``, or None when it is."""
    if committed.read_text() == regenerated_ffi(target_dir):
        return None
    return f"{committed} is stale: run python winiocp/_ffi_build.py"


def load_gen_api() -> ModuleType:
    """``tools/gen_api.py`` as a module (``tools`` is not a package), so a test can aim it elsewhere."""
    spec = importlib.util.spec_from_file_location("gen_api_under_test", GEN_API)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ffi_module_is_current(tmp_path: Path) -> None:
    problem = ffi_staleness(FFI_MODULE, tmp_path)
    assert problem is None, problem


def test_ffi_check_detects_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "committed_ffi.py"
    stale.write_text(FFI_MODULE.read_text().replace("_version = ", "_version =  ", 1))
    (tmp_path / "out").mkdir()
    problem = ffi_staleness(stale, tmp_path / "out")
    assert problem is not None and "run python winiocp/_ffi_build.py" in problem


def test_api_module_is_current() -> None:
    # The documented command itself, so its exit status is what is tested.
    result = subprocess.run(
        [sys.executable, str(GEN_API), "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{result.stderr}run python tools/gen_api.py"


def test_api_check_detects_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gen_api = load_gen_api()
    stale = tmp_path / "_api.py"
    current = API_MODULE.read_text()
    stale.write_text(current.replace("def CloseHandle(self, hObject: CData, /)",
                                     "def CloseHandle(self, hObject: int, /)", 1))
    assert stale.read_text() != current, "the edit above no longer applies: pick another line"
    monkeypatch.setattr(gen_api, "TARGET", stale)
    monkeypatch.setattr(sys, "argv", ["gen_api.py", "--check"])
    main = cast(Callable[[], int], gen_api.main)
    assert main() == 1
    assert "run python tools/gen_api.py" in capsys.readouterr().err
