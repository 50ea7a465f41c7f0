"""The wheel users install holds everything they need: every subpackage, the typing files and
the C declarations, with cffi as its only dependency, and no compiled code nor the developers'
build script. The sdist holds what it takes to test: tests, examples, docs, tools, the
changelog. Both pass ``twine check``, and pyproject.toml passes ``validate-pyproject``.

The packages are built as a packager would (``python -m build``: the sdist, then the wheel from
the sdist), without build isolation, with the setuptools of tools/requirements-host.txt.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Developers' tools inside the package: in the sdist, not in the wheel.
NOT_IN_THE_WHEEL = {"winiocp/_ffi_build.py"}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build``'s output folder: one sdist and one wheel."""
    # Built from a fresh copy: setuptools would otherwise reuse a stale build/ directory.
    source = tmp_path_factory.mktemp("source") / "winiocp"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".winenv", "build", "dist", "*.egg-info", "results", "__pycache__", "_build",
        "scratch", ".mypy_cache", ".pytest_cache"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                    str(source)], check=True, timeout=300, stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> zipfile.ZipFile:
    (path,) = dist.glob("winiocp-*.whl")
    return zipfile.ZipFile(path)


@pytest.fixture(scope="module")
def sdist_names(dist: Path) -> set[str]:
    """The sdist's files, without its top folder."""
    (path,) = dist.glob("winiocp-*.tar.gz")
    with tarfile.open(path) as archive:
        return {name.partition("/")[2] for name in archive.getnames()}


def test_the_wheel_is_pure_python(wheel: zipfile.ZipFile) -> None:
    assert wheel.filename is not None and wheel.filename.endswith("-py3-none-any.whl")
    assert not [name for name in wheel.namelist() if name.endswith((".pyd", ".so", ".dll"))]


def test_every_module_and_typing_file_ships(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    sources = {str(path.relative_to(ROOT)).replace("\\", "/")
               for path in (ROOT / "winiocp").rglob("*")
               if path.suffix in (".py", ".pyi", ".h") or path.name == "py.typed"}
    sources -= NOT_IN_THE_WHEEL
    assert sources, "found no sources to compare with"
    missing = sorted(sources - names)
    assert not missing, f"missing from the wheel: {missing}"


def test_cffi_is_the_only_dependency(wheel: zipfile.ZipFile) -> None:
    (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    requirements = metadata.get_all("Requires-Dist") or []
    assert [r.split(">")[0].split("=")[0].strip() for r in requirements] == ["cffi"]
    assert "Operating System :: Microsoft :: Windows" in (metadata.get_all("Classifier") or [])


def test_the_build_script_is_not_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    assert not NOT_IN_THE_WHEEL & set(wheel.namelist())


def test_nothing_imports_the_build_script() -> None:
    importers = []
    for path in (ROOT / "winiocp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or "", *(a.name for a in node.names)]
                     if isinstance(node, ast.ImportFrom) else [])
            if any("_ffi_build" in name for name in names):
                importers.append(str(path.relative_to(ROOT)))
    assert not importers


def test_the_metadata_names_license_authors_and_addresses(wheel: zipfile.ZipFile) -> None:
    (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel.namelist())
    assert "The winiocp developers" in (metadata["Author"] or "")
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert set(urls) == {"Homepage", "Documentation", "Repository", "Issues", "Changelog"}


def test_the_sdist_carries_what_it_takes_to_test(sdist_names: set[str]) -> None:
    wanted = {
        "CHANGELOG.md", "LICENSE", "README.md", "pyproject.toml", "winiocp/_ffi_build.py",
        "tests/host/test_packaging.py", "tests/windows/conftest.py",
        "tests/windows/test_port.py", "examples/raw_echo.py", "docs/index.rst",
        "docs/conf.py", "tools/winenv.py", "tools/requirements-host.txt",
        "tools/requirements-windows.txt", "tools/requirements-docs.txt",
        "tools/asyncio-expected.txt", "stubs/pycparser/__init__.pyi",
    }
    assert not sorted(wanted - sdist_names)
    assert not [name for name in sdist_names
                if name.startswith((".winenv/", "docs/_build/", "scratch/"))
                or "__pycache__" in name or name.endswith(".pyc")]


def test_twine_accepts_both(dist: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                             *map(str, sorted(dist.iterdir()))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pyproject_is_valid() -> None:
    result = subprocess.run([sys.executable, "-m", "validate_pyproject",
                             str(ROOT / "pyproject.toml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
