"""The cdefs and constants, proven against the real Windows SDK headers (``tools/sdk_probe.py``).

Every struct size, alignment, member offset and size, integer signedness, constant and GUID
that winiocp states is measured inside Windows CPython (under Wine) and compared with what a
program compiled by MinGW-w64 against the SDK headers prints. Skipped only where MinGW-w64 or
Wine is missing (CI installs both).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import sdk_probe  # noqa: E402

#: Well below what the binding states today (600+), far above anything vacuous.
MINIMUM = {"layout": 300, "constant": 120, "guid": 5}

Probe = tuple[sdk_probe.BindingFacts, list[sdk_probe.Fact], sdk_probe.SdkResults]


@pytest.fixture(scope="module")
def probe() -> Probe:
    if not sdk_probe.tools_available():
        pytest.skip(f"needs {sdk_probe.GCC} and Wine")
    binding = sdk_probe.run_binding_side()
    facts = sdk_probe.facts_from_binding(binding)
    return binding, facts, sdk_probe.sdk_results(facts)


def test_binding_matches_the_sdk_headers(probe: Probe) -> None:
    _, facts, sdk = probe
    comparison = sdk_probe.compare(facts, sdk)
    assert not comparison.mismatches, (
        f"{len(comparison.mismatches)} of {len(facts)} facts differ from the SDK headers:\n"
        + "\n".join(comparison.mismatches)
    )
    for kind, least in MINIMUM.items():
        assert comparison.compared.get(kind, 0) >= least, comparison.compared


def test_a_wrong_binding_value_is_reported(probe: Probe) -> None:
    binding, _, sdk = probe
    altered = copy.deepcopy(binding)
    overlapped = next(t for t in altered["types"] if t["name"] == "OVERLAPPED")
    h_event = next(f for f in overlapped["fields"] if f["path"] == ["hEvent"])
    h_event["offset"] += 4
    dword = next(t for t in altered["types"] if t["name"] == "DWORD")
    dword["signed"] = True
    pending = next(c for c in altered["constants"] if c["name"] == "ERROR_IO_PENDING")
    pending["value"] = 996
    altered["guids"]["WSAID_CONNECTEX"] = "25a207b9-ddf3-4660-8ee9-76e58c74063f"

    comparison = sdk_probe.compare(sdk_probe.facts_from_binding(altered), sdk)

    wrong = sorted(line.split(":")[0] for line in comparison.mismatches)
    assert wrong == ["WSAID_CONNECTEX", "WinError.ERROR_IO_PENDING",
                     "offsetof(OVERLAPPED, hEvent)", "signed(DWORD)"]


def test_a_name_the_headers_lack_is_reported(probe: Probe) -> None:
    _, facts, _ = probe
    overlapped = [f for f in facts if f.subject == "OVERLAPPED"]
    invented = [
        sdk_probe.Fact("NOT_A_TYPE", "sizeof(NOT_A_TYPE)", "layout", "sizeof(NOT_A_TYPE)", 4),
        sdk_probe.Fact("OVERLAPPED", "offsetof(OVERLAPPED, NoSuchMember)", "layout",
                       "offsetof(OVERLAPPED, NoSuchMember)", 0),
        sdk_probe.Fact("NOT_A_CONSTANT", "X.NOT_A_CONSTANT", "constant", "NOT_A_CONSTANT", 1),
        sdk_probe.Fact("WSAID_NOTHING", "WSAID_NOTHING", "guid", "WSAID_NOTHING", "0-0-0-0-0"),
    ]

    comparison = sdk_probe.compare(invented + overlapped,
                                   sdk_probe.sdk_results(invented + overlapped))

    assert [line.split(":")[0] for line in comparison.mismatches] == [f.label for f in invented]
    assert all("not in the SDK headers" in line for line in comparison.mismatches)
    assert comparison.compared == {"layout": len(overlapped)}


@pytest.mark.parametrize(
    ("binding", "sdk", "size", "agree"),
    [
        (0xC0000120, -1073741536, 4, True),  # NTSTATUS: Python unsigned, C sign-extended
        ((1 << 64) - 1, -1, 8, True),  # INVALID_SOCKET: (SOCKET)~0
        (-5, 0xFFFFFFFB, 4, True),  # an int spelled negative, a C value zero-extended
        (0x8004667E, 0x8004667E, 4, True),
        (0xC0000120, -1073741536, 8, True),  # sign-extended 32-bit, though the C type is wider
        ((1 << 64) - 1, -1, 4, False),  # a 64-bit Python value for a 32-bit C one
        (0x1_0000_0005, 5, 4, False),
        (997, 996, 4, False),
        (0xC0000120, 0xC0000120 - (1 << 32) + 1, 4, False),
    ],
)
def test_constants_agree_modulo_their_width(binding: int, sdk: int, size: int,
                                            agree: bool) -> None:
    assert sdk_probe.values_agree(binding, sdk, size) is agree
