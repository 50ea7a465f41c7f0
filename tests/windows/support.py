"""Helpers shared by the Windows-side tests."""

from __future__ import annotations

import ctypes

import pytest

#: True when Windows is really Wine (its ntdll exports wine_get_version).
UNDER_WINE: bool = hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")


def wine_deviation(reason: str) -> pytest.MarkDecorator:
    """Mark a test that documents Windows behaviour Wine does not reproduce.

    Strict: if Wine ever starts to behave like Windows, the xfail turns into a failure and
    the mark is removed.
    """
    return pytest.mark.xfail(UNDER_WINE, reason=f"Wine: {reason}", strict=True)


