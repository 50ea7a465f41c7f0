"""Everything is in pyproject.toml but this: the wheel leaves out ``winiocp/_ffi_build.py``.

That script is for developers (it regenerates ``winiocp/_ffi.py`` from the C declarations);
nothing imports it at run time, and setuptools has no setting to leave one module of a package
out of the wheel. The sdist keeps it (MANIFEST.in).
"""

from __future__ import annotations

from setuptools import setup
from setuptools.command.build_py import build_py

#: (package, module) pairs built into no wheel.
DEVELOPER_MODULES = {("winiocp", "_ffi_build")}


class BuildPyWithoutDeveloperModules(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules: list[tuple[str, str, str]] = super().find_package_modules(  # type: ignore[no-untyped-call]
            package, package_dir)
        return [m for m in modules if (m[0], m[1]) not in DEVELOPER_MODULES]


setup(cmdclass={"build_py": BuildPyWithoutDeveloperModules})
