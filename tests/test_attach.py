"""pciplan attach: the live place of a hot-plugged device, the count, the next boot's place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, nics, subprocess_env
from planning import plan_bytes, text
from realstack import real_stack_fixture  # noqa: F401

from planner.commands.attach import NotHotpluggable, live_places
from planner.xml.xmlio import InputError, parse_xml_bytes

VIRTIO_NIC = (b"<interface type='network'>\n  <source network='default'/>\n  <model type='virtio'/>\n"
              b"</interface>\n")
E1000 = b"<interface type='network'><source network='default'/><model type='e1000'/></interface>"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.commands.cli", *args], capture_output=True,
                          cwd=REPO, env=subprocess_env(), timeout=120)


def planned(guest_xml, machine: str, devices: str, **options) -> bytes:
    tree, _ = plan_bytes(guest_xml(machine, devices=devices), **options)
    return text(tree)


def places(guest: bytes, device: bytes):
    return live_places(parse_xml_bytes(guest), parse_xml_bytes(device).getroot())


def test_pcie_device_goes_to_the_empty_root_port(guest_xml) -> None:
    guest = planned(guest_xml, "q35", nics(3), spare_pcie=2)
    found = places(guest, VIRTIO_NIC)
    assert found.pcie and len(found.places) == 2
    first = found.places[0]
    assert "pcie-root-port" in first.bus and first.address.slot == 0
    # libvirt's order: the lowest controller index first
    assert first.address.bus < found.places[1].address.bus


def test_conventional_device_goes_to_a_free_bridge_slot(guest_xml) -> None:
    guest = planned(guest_xml, "q35", nics(1, "e1000"))
    found = places(guest, E1000)
    assert not found.pcie
    assert found.places and all("pcie-to-pci-bridge" in p.bus for p in found.places)
    assert len(found.places) == 30  # 31 slots of the bridge, one taken by the first e1000


def test_pc_root_slots_are_hot_pluggable_only_with_acpi(guest_xml) -> None:
    guest = planned(guest_xml, "pc", nics(2))
    found = places(guest, VIRTIO_NIC)
    assert not found.pcie and found.places and all(p.address.bus == 0 for p in found.places)
    assert all(p.address.slot not in (0, 1) for p in found.places)  # host bridge, PIIX3
    no_acpi = guest.replace(b"<features><acpi/></features>", b"")
    assert places(no_acpi, VIRTIO_NIC).places == []


def test_a_device_libvirt_cannot_hot_plug_is_refused(guest_xml) -> None:
    guest = planned(guest_xml, "q35", nics(1))
    with pytest.raises(NotHotpluggable):
        places(guest, b"<sound model='ich9'/>")


def test_an_unplanned_guest_is_bad_input(guest_xml) -> None:
    with pytest.raises(InputError, match="has no PCI address"):
        places(guest_xml("q35", devices=nics(1)), VIRTIO_NIC)


def test_cli_attach_count_and_no_place(guest_xml, tmp_path: Path) -> None:
    guest = tmp_path / "guest.xml"
    guest.write_bytes(planned(guest_xml, "q35", nics(2), spare_pcie=1))
    nic = tmp_path / "nic.xml"
    nic.write_bytes(VIRTIO_NIC)
    r = run("attach", str(guest), str(nic), "--count")
    assert r.returncode == 0 and r.stdout.decode().splitlines()[-1] == "1"

    out = tmp_path / "nic-addressed.xml"
    r = run("attach", str(guest), str(nic), "-o", str(out))
    assert r.returncode == 0, r.stderr
    # the device file as the user wrote it, plus one address line
    added = out.read_text().splitlines()
    assert [line for line in added if line not in VIRTIO_NIC.decode().splitlines()] == [
        added[-2]] and added[-2].startswith("  <address type='pci' domain='0x0000' bus='0x")

    # with the NIC in place, nothing is left live; the message says where the next boot puts one more
    full = guest.read_text().replace("  </devices>", "    " + out.read_text().replace("\n", "\n    ").rstrip()
                                     + "\n  </devices>")
    guest.write_text(full)
    r = run("attach", str(guest), str(nic))
    assert r.returncode == 3
    assert b"no free hot-pluggable place" in r.stderr and b"the next cold boot would put it at" in r.stderr
    assert run("attach", str(guest), str(nic), "--count").stdout.decode().splitlines()[-1] == "0"

    nxt = tmp_path / "next.xml"
    r = run("attach", str(guest), str(nic), "--config", "-o", str(nxt))
    assert r.returncode == 0, r.stderr
    assert b"pcie-root-port" in r.stderr
    assert run("check", str(nxt)).returncode == 0


def test_show_reports_the_headroom(guest_xml, tmp_path: Path) -> None:
    guest = tmp_path / "g.xml"
    guest.write_bytes(planned(guest_xml, "q35", nics(2), spare_pcie=2))
    r = run("show", str(guest))
    assert r.returncode == 0 and r.stdout.decode().splitlines()[-1] == (
        "can still hot-plug: 2 PCIe device(s), 0 conventional PCI device(s)")
    import json

    shown = json.loads(run("show", str(guest), "--json").stdout)
    assert shown["headroom"] == {"pcie_ports": 2, "pci_slots": 0}


def test_plan_reports_the_headroom_attach_counts(guest_xml, tmp_path: Path) -> None:
    """plan's summary (and --json, and fleet's report) says what attach --count would: the empty PCIe
    ports and the free hot-pluggable conventional slots of the written layout."""
    tree, summary = plan_bytes(guest_xml("q35", devices=nics(3) + "\n" + nics(1, "e1000", start=3)),
                               spare_pcie=2)
    planned = text(tree)
    assert summary.headroom is not None
    assert summary.headroom.pcie_ports == len(places(planned, VIRTIO_NIC).places) == 2
    assert summary.headroom.pci_slots == len(places(planned, E1000).places) == 30
    src = tmp_path / "g.xml"
    src.write_bytes(guest_xml("q35", devices=nics(3)))
    report = tmp_path / "report.json"
    r = run("fleet", str(src), "--out", str(tmp_path / "out"), "--report", str(report))
    assert r.returncode == 0, r.stderr
    import json

    row = json.loads(report.read_text())["files"][0]
    assert row["headroom_pcie"] == 1 and row["headroom_pci"] == 0


# ---------------------------------------------------------------- live, on the real stack


def _nic(i: int) -> bytes:
    return (f"<interface type='user'><mac address='52:54:00:ff:00:{i:02x}'/><model type='virtio'/>"
            "</interface>").encode()


@pytest.mark.realstack
@pytest.mark.parametrize(("machine", "devices", "reserve", "expected"), [
    ("q35", nics(2), (("interface", 3),), 3),  # exactly the reserved ports
    ("virt", nics(2), (("interface", 2),), 2),
    ("pc", nics(22), (), None),  # pc with ACPI: the root bus's own free slots
], ids=["q35", "aarch64-virt", "pc"])
def test_attach_live_until_none_is_left(real_stack, guest_xml, machine, devices, reserve, expected) -> None:
    """A running guest takes NICs at the places attach picks, one after another, until attach says
    none is left: libvirt accepts each, QEMU shows each where the XML says, attach --count was right,
    and then libvirt's own automatic addressing finds no place either."""
    from realstack import require_emulator

    from planner.pipeline.domain import read_pci_address
    from planner.pipeline.render import set_pci_address
    from planner.xml.xmlio import serialize_text

    if machine == "virt":
        require_emulator("aarch64")
    tree, _ = plan_bytes(guest_xml(machine, devices=devices), reserve=reserve)
    with real_stack.running(text(tree).decode()) as live:
        count = len(places(live.xml().encode(), _nic(0)).places)
        assert count >= 2 and (expected is None or count == expected)
        for i in range(count):
            found = places(live.xml().encode(), _nic(i))
            assert len(found.places) == count - i
            device = parse_xml_bytes(_nic(i))
            set_pci_address(device.getroot(), found.places[0].address)
            assert live.attach(serialize_text(device)) is None
            placements, mismatches = live.placements()
            assert mismatches == []
            live_nics = parse_xml_bytes(live.xml().encode()).getroot().iterfind("devices/interface")
            mine = next(el for el in live_nics if el.find("mac").get("address") == f"52:54:00:ff:00:{i:02x}")
            where = read_pci_address(mine, "nic")[0]
            assert where == found.places[0].address
            alias = mine.find("alias").get("name")
            assert placements[alias] == (where.bus, where.slot, where.function)
        assert places(live.xml().encode(), _nic(99)).places == []
        error = live.attach(_nic(99).decode())  # libvirt's own address assignment
        assert error is not None and "PCI" in error, error
