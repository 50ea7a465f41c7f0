"""Sphinx configuration for winiocp's documentation.

Built inside Windows CPython (``python3 tools/winenv.py docs``): autodoc imports winiocp, which
only imports on Windows. Warnings are errors (``-W``), and the doctest builder runs every
``testcode`` block of the pages against real Winsock.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import winiocp  # noqa: E402  (after the path is set)

project = "winiocp"
author = "the winiocp authors"
copyright = "2026, the winiocp authors"
release = winiocp.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "myst_parser",
    "wine_deviations",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# asyncio-suite-results.md is not a page: docs/aio.md includes it (tools/asyncio_suite.py
# writes it from a complete run).
exclude_patterns = ["_build", "asyncio-suite-results.md"]
root_doc = "index"

# The API reference: members in source order, signatures with their annotations, and the
# annotations repeated (linked) in the parameter descriptions.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_preserve_defaults = True

# No network while building: intersphinx links only to inventories shipped with the docs, if any.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

# The doctest builder runs every testcode block, and every ``>>>`` example, docstrings included.
doctest_global_setup = "import winiocp"
doctest_test_doctest_blocks = "default"

html_theme = "furo"
html_title = f"winiocp {release}"
html_static_path = ["_static"]
html_css_files = ["winiocp.css"]
# Code blocks without a language (docstring examples, ``::`` blocks) are highlighted as Python
# when they lex as Python, and shown plain, without a warning, when they do not.
highlight_language = "default"

myst_heading_anchors = 3
# Quotes stay as typed: the pages quote code, JSON and command lines.
smartquotes = False


# -- :test:`tests/windows/test_x.py::test_name` ---------------------------------------------------
# The design essay names the tests that show each rule. The role renders the name and checks
# that the file has that test function, so a renamed or deleted test is a build warning (an
# error, under -W) instead of a stale sentence.

import re  # noqa: E402

from docutils import nodes  # noqa: E402
from docutils.parsers.rst.states import Inliner  # noqa: E402
from sphinx.application import Sphinx  # noqa: E402


def test_role(name: str, rawtext: str, text: str, lineno: int, inliner: Inliner,
              options: dict[str, object] | None = None, content: list[str] | None = None
              ) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    path, _, function = text.partition("::")
    source = ROOT / path
    messages: list[nodes.system_message] = []
    if not function or not source.is_file():
        messages.append(inliner.reporter.warning(f"no test file {path!r} (in {text!r})",
                                                 line=lineno))
    elif not re.search(rf"^(?:async )?def {re.escape(function)}\(", source.read_text("utf-8"),
                       re.MULTILINE):
        messages.append(inliner.reporter.warning(f"{path} has no test {function!r}",
                                                 line=lineno))
    node = nodes.literal(rawtext, text, classes=["test-reference"])
    return [node], messages


# -- every public module has its page -------------------------------------------------------------
# A module added to the package without an ``automodule`` in the API reference is a warning
# (an error, under -W), so the reference cannot silently fall behind the package.

import pkgutil  # noqa: E402

from sphinx.environment import BuildEnvironment  # noqa: E402
from sphinx.util import logging as sphinx_logging  # noqa: E402


def public_modules() -> set[str]:
    names = {"winiocp"}
    for module in pkgutil.walk_packages(winiocp.__path__, "winiocp."):
        if not any(part.startswith("_") for part in module.name.split(".")):
            names.add(module.name)
    return names


def check_modules_documented(app: Sphinx, env: BuildEnvironment) -> None:
    documented = set(env.get_domain("py").data["modules"])
    for name in sorted(public_modules() - documented):
        sphinx_logging.getLogger(__name__).warning(
            "public module %s has no page in the API reference (docs/api/)", name)


# -- "rule N" in a docstring links to that rule on the design page ----------------------------------
# The source says "rule 6" (the rules are numbered on docs/design.rst); the API reference
# renders it as a link to the rule.

_RULE = re.compile(r"(?<![`<\w])rule (1[01]|[1-9])\b")


def link_rules(app: Sphinx, what: str, name: str, obj: object, options: object,
               lines: list[str]) -> None:
    for index, line in enumerate(lines):
        if "``" not in line:
            lines[index] = _RULE.sub(r":ref:`rule \1 <rule-\1>`", line)


def setup(app: Sphinx) -> None:
    app.add_role("test", test_role)
    app.connect("autodoc-process-docstring", link_rules)
    app.connect("env-check-consistency", check_modules_documented)
