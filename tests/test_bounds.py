"""Cheap bounds (planner/pipeline/bounds.py): an impossible guest is refused at once, naming the bound and the
largest number that fits; and each bound is a true lower bound, so it never refuses a plannable guest."""

from __future__ import annotations

import time

import pytest
from conftest import nics
from guestgen import Shape, fresh_xml
from planning import plan_bytes

from planner.facts.errors import Infeasible
from planner.facts.facts import IO_UNIT
from planner.pipeline.bounds import io_lower_bound
from planner.pipeline.domain import read_problem
from planner.pipeline.prepare import prepare
from planner.xml.xmlio import parse_domain_bytes


def test_io_bound_refuses_the_271_disk_pc_guest_at_once() -> None:
    """271 virtio disks, 78 virtio-scsi and 41 virtio NICs on pc: all transitional, their legacy I/O BARs
    alone exceed SeaBIOS's I/O space. Refused in well under a second (the model is never built)."""
    data = fresh_xml(Shape("pc", disks=271, scsi=78, nics=41)).encode()
    start = time.perf_counter()
    with pytest.raises(Infeasible) as exc:
        plan_bytes(data)
    assert time.perf_counter() - start < 1.0
    reasons = exc.value.reasons
    assert reasons[0].startswith("I/O bound:") and "271 × disk virtio (128 bytes)" in reasons[0]
    # 41088 bytes needed; SeaBIOS's exact pc limit (below 0x9000) leaves 36832 in 32-byte units:
    # 34 disks of 128 bytes too many
    assert "at most 237 of the 271 × disk virtio" in reasons[1]
    assert any("q35" in r for r in reasons)


def test_io_bound_largest_number_is_right() -> None:
    """The number the I/O bound names is not refused by it (and here the solver plans it)."""
    tree, s = plan_bytes(fresh_xml(Shape("pc", disks=236, scsi=78, nics=41)).encode())
    assert s.status == "OPTIMAL"
    assert s.io_bytes is not None and s.io_budget_bytes is not None and s.io_bytes <= s.io_budget_bytes


@pytest.mark.parametrize("shape", [
    Shape("pc", nics=1000, nic_model="virtio-non-transitional"),  # modern-only: no I/O BAR anywhere
    Shape("q35", disks=400, nics=600),  # virtio on root ports is modern: no I/O BAR
    Shape("pc", disks=120, scsi=30, nics=8, nic_model="rtl8139"),
    Shape("q35", disks=40, nics=120, nic_model="e1000"),
    Shape("pc", disks=90, scsi=20, nics=4, numa=4),
], ids=lambda s: s.label)
def test_io_bound_is_a_lower_bound(shape: Shape) -> None:
    """Whatever the solver plans needs at least the bound's I/O space."""
    data = fresh_xml(shape).encode()
    need = io_lower_bound(prepare(read_problem(parse_domain_bytes(data))))[0] * IO_UNIT
    tree, s = plan_bytes(data, time_limit=30)
    assert s.io_bytes is not None and need <= s.io_bytes, (need, s.io_bytes)


def test_function_bound_refuses_more_functions_than_slots() -> None:
    """pc: every new bus is a pci-bridge with a 4 KiB I/O window, so at most 8 of them; 2400 functions
    cannot fit the root bus and 8 bridges even packed 8 to a slot."""
    data = fresh_xml(Shape("pc", nics=2400, nic_model="virtio-non-transitional")).encode()
    start = time.perf_counter()
    with pytest.raises(Infeasible) as exc:
        plan_bytes(data)
    assert time.perf_counter() - start < 5.0
    assert exc.value.reasons[0].startswith("function bound:")
    assert "pci-bridge I/O windows" in exc.value.reasons[0]
    assert "at most" in exc.value.reasons[1]


def test_bus_number_bound_for_devices_that_need_a_port_each(guest_xml) -> None:
    """300 NICs that must each be alone on a hot-pluggable PCIe port need 300 bus numbers: refused by
    the bound, and the planner still says how many can be hot-pluggable."""
    with pytest.raises(Infeasible) as exc:
        plan_bytes(guest_xml("q35", nics(300)), hotplug_kinds=frozenset({"interface"}), bus="pcie")
    text_ = " ".join(exc.value.reasons)
    assert exc.value.reasons[0].startswith("bus-number bound:")
    assert "at most" in text_ and "of the 300 devices" in text_
