"""One test per constraint family and per objective level: each fails if its rule is ignored."""

from __future__ import annotations

import pytest
from conftest import controllers, disks, nics
from lxml import etree
from planning import errors, plan_bytes, text

from planner.checker.check import check_domain
from planner.facts.errors import Infeasible
from planner.xml.xmlio import parse_domain_bytes

Q35_BARE = "    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n"


def addr(el: etree._Element) -> tuple[int, int, int]:
    a = el.find("address")
    return int(a.get("bus"), 0), int(a.get("slot"), 0), int(a.get("function"), 0)


def bus_model(tree: etree._ElementTree, index: int) -> str:
    for c in controllers(tree):
        if int(c.get("index")) == index:
            return c.get("model")
    raise AssertionError(index)


def ifaces(tree):
    return tree.getroot().findall("devices/interface")


def test_hotplug_preference_gives_each_virtio_nic_its_own_root_port(guest_xml) -> None:
    tree, s = plan_bytes(guest_xml("q35", Q35_BARE + nics(3)))
    ports = [addr(i)[0] for i in ifaces(tree)]
    assert len(set(ports)) == 3
    assert all(bus_model(tree, b) == "pcie-root-port" for b in ports)
    assert all(addr(i)[1:] == (0, 0) for i in ifaces(tree))
    assert s.levels["hotplug_lost"] == 0


def test_hotplug_outranks_fewer_controllers(guest_xml) -> None:
    """Packing 3 NICs behind one port would need 2 controllers, not 4; level 2 must win."""
    tree, s = plan_bytes(guest_xml("q35", Q35_BARE + nics(3)))
    assert s.controllers_added == {"pcie-root-port": 4}  # 3 + the spare


def test_devices_that_cannot_be_hotplugged_become_integrated(guest_xml) -> None:
    tree, s = plan_bytes(guest_xml("q35", ""))
    usb = tree.getroot().find("devices/controller[@type='usb']")
    balloon = tree.getroot().find("devices/memballoon")
    assert addr(usb)[0] == 0 and addr(balloon)[0] == 0
    # libvirt adds 3 root ports (xhci, balloon, spare); pciplan only the spare, which stays empty
    assert s.controllers_added == {"pcie-root-port": 1}
    (port,) = controllers(tree, "pcie-root-port")
    bus = f"0x{int(port.get('index')):02x}"
    below = [d for d in tree.getroot().iter("address") if d.get("type") == "pci" and d.get("bus") == bus]
    assert below == []


def test_default_headroom_is_one_empty_hotpluggable_port(guest_xml) -> None:
    """Every q35 plan ends with an empty hot-pluggable port, whether or not it adds anything else, and
    whether or not the input had PCI controllers; --spare-pcie 0 opts out."""
    tree, s = plan_bytes(guest_xml("q35", nics(1)))
    assert s.controllers_added == {"pcie-root-port": 2}
    ports = ("<controller type='pci' index='0' model='pcie-root'/>"
             "<controller type='pci' model='pcie-root-port'/>")
    tree, s = plan_bytes(guest_xml("q35", ports + nics(2)))
    assert s.controllers_added == {"pcie-root-port": 2}  # the user's port + one new + the spare
    tree, s = plan_bytes(guest_xml("q35", ports + nics(2)), spare_pcie=0)
    assert s.controllers_added == {"pcie-root-port": 1}
    tree, s = plan_bytes(guest_xml("q35", ports + nics(1)))
    assert s.controllers_added == {"pcie-root-port": 1}  # nothing else added, the spare all the same


def test_conventional_devices_go_to_conventional_slots_on_q35(guest_xml) -> None:
    tree, s = plan_bytes(guest_xml("q35", Q35_BARE + nics(2, "e1000")))
    for i in ifaces(tree):
        assert bus_model(tree, addr(i)[0]) == "pcie-to-pci-bridge"


def test_pcie_capable_devices_stay_on_pcie_even_when_a_bridge_exists(guest_xml) -> None:
    tree, s = plan_bytes(guest_xml("q35", Q35_BARE + nics(2, "e1000") + "\n" + nics(2, "virtio", 10)))
    virtio = [i for i in ifaces(tree) if i.find("model").get("type") == "virtio"]
    assert all(bus_model(tree, addr(i)[0]) == "pcie-root-port" for i in virtio)
    assert s.levels["pcie_on_pci"] == 0


def test_io_window_budget_on_q35(guest_xml) -> None:
    """20 e1000e (I/O BAR) each alone on a root port would need 20 windows; SeaBIOS boots 14 (with
    ACPI, measured). Keeping all 20 hot-pluggable (level 2) beats keeping them on PCIe (level 3): some
    share the slots of a bridge."""
    tree, s = plan_bytes(guest_xml("q35", Q35_BARE + nics(20, "e1000e")))
    assert errors(tree) == []
    assert len({addr(i)[0] for i in ifaces(tree)}) <= 14
    assert s.levels["hotplug_lost"] == 0
    assert s.levels["pcie_on_pci"] > 0
    assert controllers(tree, "pcie-to-pci-bridge")


def test_io_window_budget_without_acpi_is_smaller(guest_xml) -> None:
    data = guest_xml("q35", Q35_BARE + nics(12, "e1000e")).replace(b"<features><acpi/></features>", b"")
    tree, s = plan_bytes(data)
    assert errors(tree) == []
    assert len({addr(i)[0] for i in ifaces(tree)}) <= 9


def test_root_bus_io_counts_too(guest_xml) -> None:
    """pc: every virtio device is transitional, with a legacy I/O BAR (32 bytes a NIC, 128 a disk).
    1000 of them need about 70 KiB of I/O space and SeaBIOS has 36 KiB: infeasible, and said so. With
    modern-only (non-transitional) virtio there are no I/O BARs and 1000 fit."""
    with pytest.raises(Infeasible) as exc:
        plan_bytes(guest_xml("pc", nics(600) + "\n" + disks(400)))
    assert any("I/O space" in r for r in exc.value.reasons)
    tree, s = plan_bytes(guest_xml("pc", nics(1000, "virtio-non-transitional")))
    assert errors(tree) == []
    assert s.status == "OPTIMAL"


def test_io_window_budget_on_pc(guest_xml) -> None:
    tree, s = plan_bytes(guest_xml("pc", nics(400)))
    assert errors(tree) == []
    assert len(controllers(tree, "pci-bridge")) <= 8


def test_bus_numbers_limit_hotpluggable_pcie_devices(guest_xml) -> None:
    """300 virtio NICs: at most 253 can sit on their own PCIe port within 256 bus numbers; the rest
    stay hot-pluggable in bridge slots (within the 9 I/O windows)."""
    tree, s = plan_bytes(guest_xml("q35", Q35_BARE + nics(300)))
    assert errors(tree) == []
    assert len(controllers(tree)) <= 256
    assert s.levels["hotplug_lost"] == 0
    on_ports = [i for i in ifaces(tree) if bus_model(tree, addr(i)[0]) in
                ("pcie-root-port", "pcie-switch-downstream-port")]
    assert len(on_ports) <= 253
    assert s.levels["pcie_on_pci"] == 300 - len(on_ports) > 0


def test_all_hotplug_impossible_beyond_bus_and_window_limits(guest_xml) -> None:
    """700 virtio NICs cannot all be hot-pluggable: ≤ 253 PCIe ports or 240 + 9 × 31 bridge slots."""
    tree, s = plan_bytes(guest_xml("q35", Q35_BARE + nics(700)), time_limit=30)
    assert errors(tree) == []
    assert s.levels["hotplug_lost"] > 0
    assert s.status == "OPTIMAL"


def test_pinned_addresses_are_kept(guest_xml) -> None:
    pinned = ("    <interface type='user'><mac address='52:54:00:aa:00:01'/><model type='e1000'/>"
              "<address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/></interface>\n")
    tree, _ = plan_bytes(guest_xml("pc", pinned + nics(40)))
    first = ifaces(tree)[0]
    assert addr(first) == (0, 7, 0)
    others = [addr(i) for i in ifaces(tree)[1:]]
    assert (0, 7, 0) not in others


def test_reserved_slots_are_never_used(guest_xml) -> None:
    for machine, slot in (("q35", 0x1F), ("pc", 0x01)):
        tree, _ = plan_bytes(guest_xml(machine, nics(230 if machine == "q35" else 200)))
        for el in tree.getroot().find("devices"):
            a = el.find("address") if isinstance(el.tag, str) else None
            if a is None or a.get("type") != "pci" or int(a.get("bus"), 0) != 0:
                continue
            if int(a.get("slot"), 0) == slot:
                assert el.tag == "controller" and el.get("type") in ("sata", "ide", "usb"), etree.tostring(el)


def test_spare_ports_option(guest_xml) -> None:
    tree, s = plan_bytes(guest_xml("q35", Q35_BARE + nics(2)), spare_pcie=3)
    ports = controllers(tree, "pcie-root-port")
    used = {addr(i)[0] for i in ifaces(tree)}
    assert len([p for p in ports if int(p.get("index")) not in used]) == 3


def test_parent_index_lower_than_child_and_contiguous(guest_xml) -> None:
    tree, _ = plan_bytes(guest_xml("q35", nics(300) + "\n" + nics(20, "e1000", 500)))
    idx = sorted(int(c.get("index")) for c in controllers(tree))
    assert idx == list(range(len(idx)))
    for c in controllers(tree):
        if c.find("address") is not None:
            assert addr(c)[0] < int(c.get("index"))


def test_multifunction_flag_on_shared_slots(guest_xml) -> None:
    tree, _ = plan_bytes(guest_xml("q35", Q35_BARE + nics(10)))
    slots: dict[tuple[int, int], list[etree._Element]] = {}
    for el in tree.getroot().find("devices"):
        a = el.find("address") if isinstance(el.tag, str) else None
        if a is not None and a.get("type") == "pci":
            slots.setdefault((int(a.get("bus"), 0), int(a.get("slot"), 0)), []).append(a)
    for members in slots.values():
        if len(members) > 1:
            fn0 = [a for a in members if int(a.get("function"), 0) == 0]
            assert fn0 and fn0[0].get("multifunction") == "on"


def test_bus_pinned_devices_stay_on_their_bus(guest_xml) -> None:
    devs = ("    <controller type='pci' index='1' model='pcie-root-port'/>\n"
            "    <controller type='pci' index='2' model='pcie-root-port'/>\n"
            "    <interface type='user'><model type='virtio'/><address type='pci' bus='0x02'/></interface>\n")
    tree, _ = plan_bytes(guest_xml("q35", devs))
    assert addr(ifaces(tree)[0]) == (2, 0, 0)


def test_infeasible_request_names_devices_and_limit(guest_xml) -> None:
    pinned = "\n".join(
        f"    <disk type='file' device='disk'><source file='/x{i}.img'/><target dev='vd{chr(97 + i)}' "
        f"bus='virtio'/><address type='pci' bus='0x01'/></disk>" for i in range(10)
    )
    devs = "    <controller type='pci' index='1' model='pcie-root-port'/>\n" + pinned
    with pytest.raises(Infeasible) as exc:
        plan_bytes(guest_xml("q35", devs))
    reasons = exc.value.reasons
    assert any("vda" in r for r in reasons), reasons
    assert any("controller pci index=1" in r and "free slot" in r for r in reasons), reasons
    assert len(reasons) <= 3, reasons


def test_aarch64_virt_keeps_virtio_on_pcie(guest_xml) -> None:
    tree, s = plan_bytes(guest_xml("virt", disks(16) + "\n" + nics(4)))
    assert errors(tree) == []
    assert s.levels["pcie_on_pci"] == 0
    assert not controllers(tree, "pcie-to-pci-bridge")


def test_thousand_devices_on_each_machine(guest_xml) -> None:
    for machine, nic in (("q35", "virtio"), ("pc", "virtio-non-transitional"), ("virt", "virtio")):
        tree, s = plan_bytes(guest_xml(machine, nics(600, nic) + "\n" + disks(400 if machine != "pc" else 0)),
                             time_limit=30)
        assert errors(tree) == [], machine
        assert len(tree.getroot().findall("devices/*/address[@type='pci']")) >= 600


def test_same_input_same_output(guest_xml) -> None:
    data = guest_xml("q35", nics(40, "virtio") + "\n" + nics(10, "e1000", 100) + "\n" + disks(30))
    first, _ = plan_bytes(data)
    second, _ = plan_bytes(data)
    assert text(first) == text(second)


def test_checker_is_independent_and_catches_a_broken_plan(guest_xml) -> None:
    tree, _ = plan_bytes(guest_xml("q35", Q35_BARE + nics(2)))
    nic = ifaces(tree)[0]
    nic.find("address").set("slot", "0x01")  # slot 1 of a root port does not exist
    assert any(v.rule == "slot-range" for v in check_domain(tree))


# ----------------------------------------------------------------- --replan


def _bridges_layout(n: int) -> str:
    """n root ports, each with a pcie-to-pci-bridge holding one e1000: n I/O windows."""
    out = ["    <controller type='sata' index='0'><address type='pci' domain='0x0000' bus='0x00' "
           "slot='0x1f' function='0x2'/></controller>",
           "    <controller type='pci' index='0' model='pcie-root'/>"]
    for i in range(n):
        slot, fn = 2 + i // 8, i % 8
        mf = " multifunction='on'" if fn == 0 else ""
        out.append(f"    <controller type='pci' index='{i + 1}' model='pcie-root-port'>"
                   f"<model name='pcie-root-port'/><target chassis='{i + 1}' port='0x{slot * 8 + fn:x}'/>"
                   f"<address type='pci' domain='0x0000' bus='0x00' slot='0x{slot:02x}' "
                   f"function='0x{fn:x}'{mf}/></controller>")
    for i in range(n):
        out.append(f"    <controller type='pci' index='{n + i + 1}' model='pcie-to-pci-bridge'>"
                   f"<model name='pcie-pci-bridge'/><address type='pci' domain='0x0000' bus='0x{i + 1:02x}' "
                   f"slot='0x00' function='0x0'/></controller>")
    for i in range(n):
        out.append(f"    <interface type='user'><mac address='52:54:00:00:10:{i:02x}'/><model type='e1000'/>"
                   f"<address type='pci' domain='0x0000' bus='0x{n + i + 1:02x}' slot='0x01' function='0x0'/>"
                   "</interface>")
    return Q35_BARE + "\n".join(out)


def test_replan_of_a_planned_guest_changes_nothing(guest_xml) -> None:
    planned, _ = plan_bytes(guest_xml("q35", nics(6) + "\n" + nics(3, "e1000", 50) + "\n" + disks(5)))
    again, s = plan_bytes(text(planned), replan=True)
    assert text(again) == text(planned)
    assert s.levels["addresses_moved"] == 0 and s.controllers_removed == 0


def test_replan_adds_spare_ports_without_moving_devices(guest_xml) -> None:
    planned, _ = plan_bytes(guest_xml("q35", Q35_BARE + nics(4)))
    before = [addr(i) for i in ifaces(planned)]
    again, s = plan_bytes(text(planned), replan=True, spare_pcie=3)
    assert [addr(i) for i in ifaces(again)] == before
    assert s.levels["addresses_moved"] == 0
    assert s.controllers_added == {"pcie-root-port": 2}


def test_replan_repairs_a_layout_that_breaks_the_io_budget_moving_fewest_devices(guest_xml) -> None:
    data = guest_xml("q35", _bridges_layout(16))  # 16 windows; SeaBIOS fits 14
    kept, s0 = plan_bytes(data)  # default mode keeps the given layout as it is (plus the empty spare)
    assert s0.controllers_added == {"pcie-root-port": 1}
    # and says so: the firmware cannot set it up, and --replan would repair it moving 2 addresses
    assert any("[io-windows]" in e for e in s0.check_errors)
    assert any("--replan" in e and "moving 2 address(es)" in e for e in s0.check_errors)
    assert [addr(i) for i in ifaces(kept)] == [addr(i) for i in ifaces(parse_domain_bytes(data))]
    tree, s = plan_bytes(data, replan=True)
    assert errors(tree) == []
    assert s.levels["addresses_moved"] == 2
    assert len(s.moved) == 2
    assert len(controllers(tree, "pcie-to-pci-bridge")) <= 14


def test_replan_removes_unaddressed_user_controllers(guest_xml) -> None:
    ports = "    <controller type='pci' model='pcie-root'/>\n" + "\n".join(
        "    <controller type='pci' model='pcie-root-port'/>" for _ in range(10))
    tree, s = plan_bytes(guest_xml("q35", Q35_BARE + ports + "\n" + nics(2)), replan=True)
    assert s.controllers_removed == 10
    assert len(controllers(tree, "pcie-root-port")) == 3
