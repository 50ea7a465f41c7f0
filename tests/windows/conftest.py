"""Fixtures for the tests that run inside Windows CPython (natively, or under Wine)."""

from __future__ import annotations

import sys

import pytest

if sys.platform != "win32":
    pytest.skip("these tests run inside Windows CPython: use tools/winenv.py test",
                allow_module_level=True)
