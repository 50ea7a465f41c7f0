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
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
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

# The doctest builder: every testcode block runs; the setup makes sure we are on Windows.
doctest_global_setup = "import winiocp"
doctest_test_doctest_blocks = ""

html_theme = "furo"
html_title = f"winiocp {release}"
html_static_path: list[str] = []
pygments_style = "sphinx"

myst_heading_anchors = 3
