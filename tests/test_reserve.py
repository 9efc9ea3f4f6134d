"""--reserve: free hot-pluggable places kept by kind of device, as hard constraints."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import disks, nics
from planning import errors, plan_bytes, text
from realstack import real_stack_fixture  # noqa: F401

from planner.facts.errors import Infeasible
from planner.xml.xmlio import InputError

NS = "xmlns:pciplan='urn:pciplan:constraints:1'"


def test_pcie_reservations_keep_empty_ports(guest_xml) -> None:
    tree, summary = plan_bytes(guest_xml("q35", devices=nics(2)), reserve=(("interface", 4), ("disk", 2)))
    assert summary.headroom is not None and summary.headroom.pcie_ports >= 6
    assert errors(tree) == []


def test_conventional_reservations_keep_bridge_slots(guest_xml) -> None:
    _, plain = plan_bytes(guest_xml("q35", devices=nics(2)))
    assert plain.headroom is not None and plain.headroom.pci_slots == 0
    tree, summary = plan_bytes(guest_xml("q35", devices=nics(2)), reserve=(("interface:e1000", 40),))
    assert summary.headroom is not None and summary.headroom.pci_slots >= 40  # more than one bridge
    assert summary.controllers_added.get("pcie-to-pci-bridge", 0) + summary.controllers_added.get(
        "pci-bridge", 0) >= 2
    assert errors(tree) == []


def test_pc_reservations_are_conventional(guest_xml) -> None:
    _, summary = plan_bytes(guest_xml("pc", devices=nics(20)), reserve=(("interface", 30),))
    assert summary.headroom is not None and summary.headroom.pcie_ports == 0
    assert summary.headroom.pci_slots >= 30


def test_reservations_from_metadata_and_policy(guest_xml, tmp_path: Path) -> None:
    meta = (f"<metadata><pciplan:constraints {NS}><pciplan:reserve kind='interface' count='3'/>"
            "<pciplan:reserve kind='disk' model='virtio' count='2'/></pciplan:constraints></metadata>")
    _, from_metadata = plan_bytes(guest_xml("q35", devices=nics(1), extra=meta))
    policy = tmp_path / "policy.toml"
    policy.write_text('[reserve]\ninterface = 3\n"disk:virtio" = 2\n')
    _, from_policy = plan_bytes(guest_xml("q35", devices=nics(1)), policy=str(policy))
    _, from_flags = plan_bytes(guest_xml("q35", devices=nics(1)),
                               reserve=(("interface", 3), ("disk:virtio", 2)))
    assert from_metadata.headroom == from_policy.headroom == from_flags.headroom
    assert from_flags.headroom is not None and from_flags.headroom.pcie_ports == 5


def test_impossible_reservations_say_how_many_fit(guest_xml) -> None:
    with pytest.raises(Infeasible) as exc:
        plan_bytes(guest_xml("q35", devices=disks(10)), reserve=(("interface", 255), ("disk", 100)))
    text_ = "\n".join(exc.value.reasons)
    assert "reserve (disk=100, interface=255): 355 empty hot-pluggable PCIe ports" in text_
    assert "at most" in text_ and "lower --reserve" in text_


def test_reserving_what_libvirt_cannot_hot_plug_is_bad_input(guest_xml) -> None:
    with pytest.raises(InputError, match="cannot hot-plug"):
        plan_bytes(guest_xml("q35", devices=nics(1)), reserve=(("video", 1),))


@pytest.mark.realstack
def test_reserved_ports_take_hot_plugged_devices(real_stack, guest_xml) -> None:
    """The reserved places are real: libvirt defines the plan unchanged, QEMU runs it, SeaBIOS sets it
    up, and a NIC hot-plugs live into every empty port and into the bridge (the probe tries each empty
    port and one free slot per bridge)."""
    from planner.stack import verify

    tree, summary = plan_bytes(guest_xml("q35", devices=nics(2)),
                               reserve=(("interface", 3), ("interface:e1000", 2)))
    assert summary.headroom is not None and summary.headroom.pcie_ports >= 3
    report = verify(text(tree).decode(), boot=True, firmware=True, hotplug=True, seconds=20.0)
    assert report.define.ok and report.changes == [], report.summary_lines()
    assert report.boot is not None and report.boot.started, report.summary_lines()
    probes = report.boot.hotplug_probes
    assert sum("empty pcie-root-port" in p for p in probes) >= 3, probes
    assert any("pci-bridge" in p for p in probes), probes
    assert report.hotplug_failures == [], report.summary_lines()


def test_under_ovmf_a_reserved_port_costs_its_padding_window(guest_xml) -> None:
    """OVMF pads every empty hot-plug port with an I/O window and sets up 8 on q35: a reserved port it
    would not pad is no place, so 12 reserved ports are refused with the firmware named."""
    efi = guest_xml("q35", devices=nics(1)).replace(b"<os>", b"<os firmware='efi'>")
    _, ok = plan_bytes(efi, reserve=(("interface", 4),))
    assert ok.headroom is not None and ok.headroom.pcie_ports == 4
    with pytest.raises(Infeasible) as exc:
        plan_bytes(efi, reserve=(("interface", 12),))
    reasons = "\n".join(exc.value.reasons)
    assert "OVMF on q35 sets up at most 8 bridge/port I/O windows" in reasons
    assert "at most 8 of the 12 reserved empty PCIe ports fit" in reasons
