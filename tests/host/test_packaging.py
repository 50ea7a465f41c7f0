"""The wheel users install holds everything they need: every subpackage, the typing files and
the C declarations, with cffi as its only dependency, and no compiled code."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # Built from a fresh copy: setuptools would otherwise reuse a stale build/ directory.
    source = tmp_path_factory.mktemp("source") / "winiocp"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".winenv", "build", "dist", "*.egg-info", "results", "__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(out), str(source)], check=True, timeout=300)
    (path,) = out.glob("winiocp-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_is_pure_python(wheel: zipfile.ZipFile) -> None:
    assert wheel.filename is not None and wheel.filename.endswith("-py3-none-any.whl")
    assert not [name for name in wheel.namelist() if name.endswith((".pyd", ".so", ".dll"))]


def test_every_module_and_typing_file_ships(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    sources = {str(path.relative_to(ROOT)).replace("\\", "/")
               for path in (ROOT / "winiocp").rglob("*")
               if path.suffix in (".py", ".pyi", ".h") or path.name == "py.typed"}
    assert sources, "found no sources to compare with"
    missing = sorted(sources - names)
    assert not missing, f"missing from the wheel: {missing}"


def test_cffi_is_the_only_dependency(wheel: zipfile.ZipFile) -> None:
    (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    requirements = metadata.get_all("Requires-Dist") or []
    assert [r.split(">")[0].split("=")[0].strip() for r in requirements] == ["cffi"]
    assert "Operating System :: Microsoft :: Windows" in (metadata.get_all("Classifier") or [])
