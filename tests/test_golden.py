"""Golden outputs, one or more per machine type: the planned XML, byte for byte. A change to the
planner's output shows up here as a diff to review; regenerate with PCIPLAN_UPDATE_GOLDEN=1."""

from __future__ import annotations

import os

import pytest
from conftest import GUESTS, REPO
from planning import plan_file, text

INPUTS = [
    REPO / "examples" / "q35-desktop.xml",
    REPO / "examples" / "q35-server.xml",
    REPO / "examples" / "pc-40-nics.xml",
    REPO / "examples" / "aarch64-virt.xml",
    GUESTS / "pc-virt-manager-classic.xml",
    GUESTS / "riscv64-headless.xml",
    GUESTS / "q35-pcie-switch.xml",
    GUESTS / "q35-legacy-devices.xml",
]
GOLDEN = REPO / "tests" / "golden"


@pytest.mark.parametrize("source", INPUTS, ids=lambda p: p.name)
def test_golden(source) -> None:
    tree, _ = plan_file(source)
    got = text(tree)
    golden = GOLDEN / source.name
    if os.environ.get("PCIPLAN_UPDATE_GOLDEN") == "1":
        golden.write_bytes(got)
    assert golden.exists(), f"no golden file {golden}; run with PCIPLAN_UPDATE_GOLDEN=1 and review it"
    assert got == golden.read_bytes()
