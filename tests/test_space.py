"""The valid space (models/space.toml): what the model plans over, what it excludes and why. The
checker reads the same file on its own and warns about every excluded placement libvirt accepts."""

from __future__ import annotations

import copy

import pytest
from lxml import etree
from planning import errors, plan_bytes
from realstack import real_stack_fixture  # noqa: F401

from planner.checker.check import RULES, SPACE_EXCLUDED, SPACE_RULES, WARNING_RULES, check_domain
from planner.facts.facts import controller_models, space_exclusions
from planner.pipeline.metrics import measure, objective_vector
from planner.stack import diff_layouts
from planner.xml.xmlio import parse_domain_bytes, serialize

DISKS = "".join(f"<disk type='file' device='disk'><source file='/var/lib/libvirt/images/s{i}.img'/>"
                f"<target dev='vd{c}' bus='virtio'/></disk>" for i, c in enumerate("abcd"))
NICS = "".join(f"<interface type='user'><mac address='52:54:00:15:00:0{i}'/><model type='virtio'/>"
               "</interface>" for i in range(4))
# The first shape: 8 virtio devices and a conventional i6300esb watchdog on q35.
WATCHDOG_GUEST = f"""<domain type='qemu'>
  <name>space-watchdog</name>
  <memory unit='MiB'>256</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <devices>{DISKS}{NICS}<watchdog model='i6300esb' action='reset'/></devices>
</domain>""".encode()


def test_checker_and_model_read_the_same_space() -> None:
    assert set(SPACE_EXCLUDED) == set(space_exclusions())
    assert SPACE_RULES <= WARNING_RULES and all(RULES[r].startswith("warning: ") for r in SPACE_RULES)
    # The model's candidate space (controllers.toml's accepts) contains no excluded placement.
    for name, m in controller_models().items():
        assert not [c for c in m.accepts if (name, c) in space_exclusions()], name


def _pci(tree: etree._ElementTree) -> dict[int, etree._Element]:
    return {int(c.get("index")): c for c in tree.getroot().iter("controller") if c.get("type") == "pci"}


def _addr(elem: etree._Element, bus: int, slot: int) -> None:
    a = elem.find("address")
    a.attrib.clear()
    a.attrib.update({"type": "pci", "domain": "0x0000", "bus": f"{bus:#04x}", "slot": f"{slot:#04x}",
                     "function": "0x0"})


def _hand_layouts(planned: etree._ElementTree) -> dict[str, etree._ElementTree]:
    """The issue's two better hand layouts, made from the plan: the watchdog alone in the root port
    that held its pcie-to-pci-bridge, or behind a pci-bridge plugged straight into pcie-root."""
    ctrls = _pci(planned)
    (bridge,) = [c for c in ctrls.values() if c.get("model") == "pcie-to-pci-bridge"]
    port = int(bridge.find("address").get("bus"), 16)
    out = {}

    in_port = copy.deepcopy(planned)
    b = _pci(in_port)[int(bridge.get("index"))]
    b.getparent().remove(b)
    _addr(in_port.getroot().find("devices/watchdog"), port, 0)
    out["conventional-in-pcie-port"] = in_port

    on_root = copy.deepcopy(planned)
    c = _pci(on_root)
    used = {int(x.get("slot"), 16) for x in on_root.getroot().iter("address")
            if x.get("type") == "pci" and int(x.get("bus"), 16) == 0}
    b = c[int(bridge.get("index"))]
    b.set("model", "pci-bridge")
    b.find("model").set("name", "pci-bridge")
    _addr(b, 0, min(set(range(1, 0x1f)) - used))
    # The root port that held the bridge is dropped; the last index takes its number (no index gap).
    c[port].getparent().remove(c[port])
    last = max(c)
    if last != port:
        c[last].set("index", str(port))
        for a in on_root.getroot().iter("address"):
            if a.get("type") == "pci" and int(a.get("bus"), 16) == last:
                a.set("bus", f"{port:#04x}")
        t = c[last].find("target")
        if t is not None and c[last].get("model") == "pcie-root-port":
            t.set("chassis", str(port))
    out["pci-bridge-on-pcie"] = on_root
    return out


def test_watchdog_guest_hand_layouts_are_outside_the_space() -> None:
    before = parse_domain_bytes(WATCHDOG_GUEST)
    planned, _ = plan_bytes(WATCHDOG_GUEST)
    assert not {v.rule for v in check_domain(planned)} & SPACE_RULES
    ours = objective_vector(measure(before, planned), "q35")
    for rule, hand in _hand_layouts(planned).items():
        assert errors(hand) == [], rule
        assert rule in {v.rule for v in check_domain(hand)}, rule
        theirs = objective_vector(measure(before, hand), "q35")
        # One controller fewer at the same hot-plug and PCIe levels: better, but only outside the space.
        assert theirs[:2] == ours[:2] and theirs[2] == ours[2] - 1, (rule, theirs, ours)


@pytest.mark.realstack
def test_libvirt_defines_the_excluded_hand_layouts_unchanged(real_stack) -> None:
    planned, _ = plan_bytes(WATCHDOG_GUEST)
    for rule, hand in _hand_layouts(planned).items():
        xml = serialize(hand).decode()
        r = real_stack.define(xml)
        assert r.ok, (rule, r.error)
        assert diff_layouts(xml, r.xml) == [], rule
