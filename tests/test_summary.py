"""What `plan` says matches what it writes: the hot-plug counts, the moved lines, the headroom and the
check warnings of the summary (and --json) are those of the written layout, as `pciplan show` and
`pciplan check` find them, re-plans included."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import domain_xml
from planning import plan_bytes, text
from realstack import real_stack_fixture  # noqa: F401

from planner.checker.check import WARNING_RULES, check_domain
from planner.pipeline.show import build_tree, summary
from planner.stack import diff_layouts
from planner.xml.xmlio import parse_domain_bytes

EXAMPLE = Path(__file__).parent.parent / "examples" / "q35-server.xml"


def guest(machine: str, devices: str) -> bytes:
    return domain_xml(machine, devices, name="g")


def hot_pluggable_shown(data: bytes) -> int:
    return summary(build_tree(parse_domain_bytes(data)))["hotplug_endpoints"]


@pytest.mark.parametrize("order", [None, ("controllers", "hotplug", "pcie", "buses")])
def test_replan_counts_the_hot_pluggable_devices_it_keeps(order) -> None:
    """`plan --replan planned.xml` once said "hot-pluggable: 0 of 13" (hotplug_lost 13, and 14 > 13
    wanted with controllers first) while show found the 13 devices hot-pluggable."""
    planned = text(plan_bytes(EXAMPLE.read_bytes())[0])
    tree, s = plan_bytes(planned, replan=True, objective_order=order)
    lv = s.levels
    assert 0 <= lv["hotplug_lost"] <= lv["hotplug_wanted"]
    assert lv["hotplug_wanted"] - lv["hotplug_lost"] == hot_pluggable_shown(text(tree)) == 13
    assert s.as_json()["objective_levels"]["hotplug_lost"] == 0


def test_fresh_plan_counts_as_show_does() -> None:
    tree, s = plan_bytes(EXAMPLE.read_bytes())
    assert s.levels["hotplug_wanted"] - s.levels["hotplug_lost"] == hot_pluggable_shown(text(tree))


def test_replan_moved_lines_say_from_and_to() -> None:
    """A device whose controller --replan had to drop once got "moved interface[1]" with no address."""
    data = guest("q35", "    <controller type='pci' index='1' model='pcie-root-port'/>\n"
                 "    <interface type='user'><mac address='52:54:00:00:00:09'/><model type='virtio'/>"
                 "</interface>\n"
                 "    <interface type='user'><mac address='52:54:00:00:00:01'/><model type='e1000'/>\n"
                 "      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>"
                 "</interface>\n")
    tree, s = plan_bytes(data, replan=True)
    assert s.moved == ["interface[2] (mac 52:54:00:00:00:01): 01:00.0 → "
                       + _address(tree, "52:54:00:00:00:01")]
    assert _address(tree, "52:54:00:00:00:01") != "01:00.0"


def _address(tree, mac: str) -> str:
    el = tree.getroot().find(f"devices/interface/mac[@address='{mac}']/..")
    a = el.find("address")
    return f"{int(a.get('bus'), 0):02x}:{int(a.get('slot'), 0):02x}.{int(a.get('function'), 0):x}"


def test_plan_reports_the_warnings_check_finds_on_its_output() -> None:
    """A pc guest whose only USB controller is ich9-ehci1: check warns function0 on pciplan's own
    output; plan's check_warnings were empty."""
    tree, s = plan_bytes(guest("pc", "    <controller type='usb' index='1' model='ich9-ehci1'/>\n"))
    found = [f"{v.element}: {v.message} [{v.rule}]" for v in check_domain(tree) if v.rule in WARNING_RULES]
    assert found and s.check_warnings == found


def _over_budget_guest() -> bytes:
    """A pc guest whose given layout puts an e1000 behind each of 12 pci-bridges: twelve 4 KiB I/O
    windows, more than SeaBIOS has on pc (36863 bytes); one new device to plan."""
    controllers = "".join(
        f"    <controller type='pci' index='{i}' model='pci-bridge'><model name='pci-bridge'/>"
        f"<target chassisNr='{i}'/><address type='pci' domain='0x0000' bus='0x00' slot='0x{i + 2:02x}' "
        f"function='0x0'/></controller>\n" for i in range(1, 13))
    nics = "".join(
        f"    <interface type='user'><mac address='52:54:00:00:01:{i:02x}'/><model type='e1000'/>"
        f"<address type='pci' domain='0x0000' bus='0x{i:02x}' slot='0x01' function='0x0'/></interface>\n"
        for i in range(1, 13))
    new = "    <interface type='user'><mac address='52:54:00:00:02:01'/><model type='e1000'/></interface>\n"
    return guest("pc", controllers + nics + new)


def test_a_broken_layout_promises_no_hot_plug_room() -> None:
    """An exit-4 layout (bridges SeaBIOS cannot set up) once claimed thousands of free places."""
    tree, s = plan_bytes(_over_budget_guest())
    assert s.check_errors  # the given layout is over the firmware's I/O space: exit 4
    assert s.headroom is None and s.as_json()["headroom"] is None


def test_given_layout_over_budget_is_written_with_the_replan_hint() -> None:
    """One rule for "the given layout itself is over budget": written (exit 4) with the --replan hint,
    also when the new devices need I/O space the budget has no room for (once: exit 3, "at most 0 of
    the 3 devices with an I/O BAR fit"). Here 15 root ports each hold an e1000e (an I/O BAR on a port:
    a 4 KiB window each, 61440 bytes; SeaBIOS on q35 has 61439) and three more must go on PCIe."""
    ports = "".join(
        f"    <controller type='pci' index='{i}' model='pcie-root-port'><model name='pcie-root-port'/>"
        f"<target chassis='{i}' port='0x{7 + i:x}'/><address type='pci' domain='0x0000' bus='0x00' "
        f"slot='0x{1 + (7 + i) // 8:02x}' function='0x{(7 + i) % 8:x}'/></controller>\n"
        for i in range(1, 16))
    nics = "".join(
        f"    <interface type='user'><mac address='52:54:00:00:01:{i:02x}'/><model type='e1000e'/>"
        f"<address type='pci' domain='0x0000' bus='0x{i:02x}' slot='0x00' function='0x0'/></interface>\n"
        for i in range(1, 16))
    new = "".join(f"    <interface type='user'><mac address='52:54:00:00:02:{i:02x}'/><model type='e1000e'/>"
                  "</interface>\n" for i in range(3))
    tree, s = plan_bytes(guest("q35", ports + nics + new), bus="pcie")
    assert any("[io-windows]" in e for e in s.check_errors)
    assert any(e.startswith("suggestion: `pciplan plan --replan`") for e in s.check_errors)
    assert all(el.find("address") is not None for el in tree.getroot().iterfind("devices/interface"))


def test_replan_hint_says_what_replan_changes() -> None:
    """Given controllers alone break SeaBIOS's I/O budget (15 root ports, each with a pcie-to-pci-bridge:
    15 windows on q35, 14 fit): --replan fixes it by removing controllers and moves no device address.
    The hint said "by moving 0 address(es)"; it names the controllers it removes."""
    ports = "".join(
        f"    <controller type='pci' index='{i}' model='pcie-root-port'><address type='pci' domain='0x0000' "
        f"bus='0x00' slot='0x{1 + (i - 1) // 8:02x}' function='0x{(i - 1) % 8:x}'/></controller>\n"
        for i in range(1, 16))
    bridges = "".join(
        f"    <controller type='pci' index='{15 + i}' model='pcie-to-pci-bridge'><address type='pci' "
        f"domain='0x0000' bus='0x{i:02x}' slot='0x00' function='0x0'/></controller>\n" for i in range(1, 16))
    nic = "    <interface type='user'><model type='virtio'/></interface>\n"
    data = guest("q35", "    <controller type='pci' index='0' model='pcie-root'/>\n" + ports + bridges + nic)
    _, s = plan_bytes(data)
    assert any("[io-windows]" in e for e in s.check_errors)
    hint = [e for e in s.check_errors if e.startswith("suggestion: `pciplan plan --replan`")]
    assert len(hint) == 1 and "moving 0" not in hint[0], hint
    _, replanned = plan_bytes(data, replan=True)
    assert replanned.moved == [] and replanned.controllers_removed > 0 and not replanned.check_errors
    assert hint[0].endswith(f"by removing {replanned.controllers_removed} of the given PCI controller(s), "
                            "moving no device address")


def test_gap_filling_controllers_are_written_as_libvirt_writes_them() -> None:
    tree, _ = plan_bytes(guest("q35", "    <controller type='pci' index='3' model='pcie-root-port'>"
                                      "<model name='pcie-root-port'/><target chassis='3' port='0x12'/>"
                                      "</controller>\n"))
    for index in (1, 2):
        el = tree.getroot().find(f"devices/controller[@type='pci'][@index='{index}']")
        assert el.find("model").get("name") == "pcie-root-port"
        assert el.find("target").get("chassis") == str(index) and el.find("target").get("port")


@pytest.mark.realstack
@pytest.mark.parametrize("machine,model,name", [("q35", "pcie-root-port", "pcie-root-port"),
                                                ("pc", "pci-bridge", "pci-bridge")])
def test_gap_filling_controllers_define_unchanged(real_stack, machine: str, model: str, name: str) -> None:
    """libvirt 9.0 defines the controllers pciplan adds for missing indices exactly as written: once it
    added their <model name> and <target>, and check --libvirt did not notice."""
    target = "<target chassis='3' port='0x12'/>" if machine == "q35" else "<target chassisNr='3'/>"
    tree, _ = plan_bytes(guest(machine, f"    <controller type='pci' index='3' model='{model}'>"
                                        f"<model name='{name}'/>{target}</controller>\n"))
    xml = text(tree).decode()
    result = real_stack.define(xml)
    assert result.ok, result.error
    assert diff_layouts(xml, result.xml, controllers_as_written=True) == []


def test_gap_filling_ports_take_a_chassis_no_other_port_has() -> None:
    """QEMU refuses two ports with one chassis number: a filler whose index another port already uses
    as its chassis takes the next free one."""
    tree, _ = plan_bytes(guest("q35", "    <controller type='pci' index='3' model='pcie-root-port'>"
                                      "<model name='pcie-root-port'/><target chassis='1' port='0x12'/>"
                                      "</controller>\n"))
    ports = tree.getroot().iterfind("devices/controller[@type='pci'][@model='pcie-root-port']")
    chassis = [c.find("target").get("chassis") for c in ports]
    assert len(chassis) == len(set(chassis)) >= 3


def test_summary_of_generated_guests_is_what_their_written_bytes_show() -> None:
    """plan reads its checks, hot-plug counts and headroom from views computed once (and, after a tie
    with libvirt, from the views of the equal document it measured): they must be those of the bytes
    written, read afresh. Ties must be among the guests, or the reuse is not tested."""
    import random

    from fleetgen import typical_guest

    from planner.pipeline.metrics import headroom
    from planner.pipeline.show import ENDPOINT

    rng = random.Random(11)
    tied = 0
    for n in range(36):
        tree, s = plan_bytes(typical_guest(n, rng).encode())
        tied += any("ties with libvirt" in note for note in s.notes)
        written = parse_domain_bytes(text(tree))
        found = check_domain(written)
        assert s.check_warnings == [f"{v.element}: {v.message} [{v.rule}]" for v in found
                                    if v.rule in WARNING_RULES]
        assert s.check_errors == [f"{v.element}: {v.message} [{v.rule}]" for v in found
                                  if v.rule not in WARNING_RULES]
        assert s.headroom == headroom(written)
        shown = summary(build_tree(written))["hotplug_endpoints"]
        hot = sum(1 for n in build_tree(written).walk() if n.kind == ENDPOINT and n.hotplug)
        assert shown == hot
        # every device wanting hot-plug here is a NIC or disk, all of them endpoints
        assert s.levels["hotplug_wanted"] - s.levels["hotplug_lost"] == hot
    assert tied >= 5


def test_hot_pluggable_devices_by_their_own_node_are_those_by_address(monkeypatch) -> None:
    """plan counts a device wanting hot-plug as hot-pluggable when its own node in show's tree is (its
    element's); the count it replaced matched the device's written address against the addresses of
    the tree's hot-pluggable endpoints. Both, over the corpus and generated guests, planned fresh, with
    --replan and converted to q35 (ties with libvirt among them), and with devices given hot-plug."""
    import random

    from fleetgen import typical_guest
    from recorded import corpus

    from planner.facts.errors import Infeasible
    from planner.facts.options import PlanOptions
    from planner.pipeline import plan
    from planner.pipeline.plan import plan_tree
    from planner.pipeline.show import ENDPOINT
    from planner.xml.xmlio import InputError

    def by_address(written, prep) -> tuple[int, int]:
        wanting = [d for g in prep.groups if g.key.prefers_hotplug for d in g.devices]
        hot = {(n.bus, n.slot, n.function) for n in written.pci_tree.walk()
               if n.kind == ENDPOINT and n.hotplug}
        count = 0
        for d in wanting:
            a = d.element.find("address")
            if a is not None and a.get("type") == "pci" and (
                    int(a.get("bus"), 0), int(a.get("slot"), 0), int(a.get("function", "0"), 0)) in hot:
                count += 1
        return len(wanting), count

    met = Counter()
    by_node = plan._hotplug_written

    def both(written, prep) -> tuple[int, int]:
        got, want = by_node(written, prep), by_address(written, prep)
        assert got == want
        met["wanting"] += got[0] > 0
        met["hot"] += got[1] > 0
        met["lost"] += got[1] < got[0]
        return got

    monkeypatch.setattr(plan, "_hotplug_written", both)
    rng = random.Random(3)
    guests = [data for i, (_name, data) in enumerate(corpus()) if i % 3 == 0]
    guests += [typical_guest(n, rng).encode() for n in range(60)]
    for data in guests:
        for options in (PlanOptions(), PlanOptions(replan=True), PlanOptions(to_machine="q35")):
            try:
                plan_tree(parse_domain_bytes(data), options)
            except (InputError, Infeasible):
                continue
    assert met["wanting"] > 300 and met["hot"] > 300 and met["lost"] > 10, met
