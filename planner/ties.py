"""Ties go to libvirt's choice. When pciplan's objective cannot tell its own layout from the one libvirt
would write (same controllers, bus numbers, hot-pluggable devices, PCIe devices on PCIe, spare slots
and ports, no rule broken), write libvirt's: a user who compares then sees a difference only where it
buys something.

libvirt's layout comes from the built-in greedy (planner/greedy.py, libvirt 9.0's algorithm). Only the
addresses are taken over, element by element, so the user's document stays the user's document. For
now this covers plans where neither pciplan nor libvirt adds PCI controllers (typically pc guests);
where both add controllers, objective level 7 steers pciplan towards libvirt's order instead.
"""

from __future__ import annotations

import copy

from lxml import etree

from planner.domain import PciAddress, Problem
from planner.greedy import greedy_plan
from planner.render import set_pci_address
from planner.xmlio import parse_domain_bytes, serialize


def _key(el: etree._Element, primary: etree._Element | None) -> tuple:
    """What names a device across the two documents (libvirt's parser reorders controllers and disks,
    fills in default models, lists the primary video first and forgets aliases that are not ua-)."""
    alias = el.find("alias")
    if alias is not None and (alias.get("name") or "").startswith("ua-"):
        return (el.tag, "alias", alias.get("name"))
    if el.tag == "controller":
        model = el.get("model")
        companion = model if model is not None and model.startswith("ich9-") else None
        return (el.tag, el.get("type"), str(int(el.get("index") or "0", 0)), companion)
    mac = el.find("mac")
    if mac is not None and mac.get("address"):
        return (el.tag, "mac", mac.get("address").lower())
    target = el.find("target")
    if el.tag == "disk" and target is not None and target.get("dev"):
        return (el.tag, "dev", target.get("dev"))
    if el is primary:
        return (el.tag, "primary")
    return (el.tag,)


def _keyed(tree: etree._ElementTree) -> dict[tuple, etree._Element]:
    """Elements by key and occurrence, in document order."""
    out: dict[tuple, etree._Element] = {}
    seen: dict[tuple, int] = {}
    videos = tree.getroot().findall("devices/video")
    marked = [v for v in videos if v.find("model") is not None and v.find("model").get("primary") == "yes"]
    primary = (marked or videos or [None])[0]
    for el in tree.getroot().find("devices"):
        if not isinstance(el.tag, str):
            continue
        k = _key(el, primary)
        seen[k] = seen.get(k, 0) + 1
        out[(*k, seen[k])] = el
    return out


def _pci(el: etree._Element) -> tuple[PciAddress, bool] | None:
    a = el.find("address")
    if a is None or a.get("type") != "pci":
        return None
    return (PciAddress(int(a.get("bus"), 0), int(a.get("slot"), 0), int(a.get("function"), 0)),
            a.get("multifunction") == "on")


def _comparable(before: etree._ElementTree, after: etree._ElementTree, spare_pci: int, spare_pcie: int):
    """The objective's levels 2-5 as any completed layout shows them (the checker's view, not the
    solver's), plus the checker's errors."""
    from planner.compare import measure

    m = measure(before, after)
    return (m.controllers_total, m.bus_numbers, m.hotplug_devices, m.pcie_on_conventional,
            min(m.spare_hotplug_ports, spare_pcie), min(m.spare_hotplug_slots, spare_pci),
            tuple(m.rule_violations))


def prefer_libvirt(tree: etree._ElementTree, original: etree._ElementTree, problem: Problem,
                   added: int, spare_pci: int, spare_pcie: int) -> bool:
    """Rewrite the addresses pciplan chose (never one the input gave) with libvirt's when that layout
    ties with pciplan's. Returns whether it did."""
    if added or problem.mmio_devices:
        return False
    if any(d.hotplug_rule or d.bus_rule or d.numa_rule is not None or d.connection_rule
           for d in problem.devices):
        return False  # libvirt knows nothing of pciplan's rules
    greedy = greedy_plan(serialize(original).decode())
    if not greedy.ok or greedy.xml is None or any(greedy.controllers_added.values()):
        return False
    theirs = _keyed(parse_domain_bytes(greedy.xml.encode()))
    chosen = [el for d in problem.devices if d.address is None and d.bus_pin is None
              for m in [d, *d.companions] for el in [m.element, *m.mirrors]]
    chosen_ids = {id(el) for el in chosen}  # the list keeps the proxies, so ids are stable
    planned = {k for k, el in _keyed(tree).items() if id(el) in chosen_ids}
    trial = copy.deepcopy(tree)
    ours = _keyed(trial)
    changes: list[tuple[tuple, PciAddress, bool]] = []
    for k, el in ours.items():
        if k not in planned:
            continue
        mine = _pci(el)
        other = theirs.get(k)
        if mine is None or other is None or el.tag == "controller" and el.get("type") == "pci":
            continue
        got = _pci(other)
        if got is None:
            return False  # libvirt would place it elsewhere (or not at all): no clean match
        if got != mine:
            changes.append((k, *got))
    if not changes:
        return False
    for k, a, mf in changes:
        _set(ours[k], a, mf)
    spares = (spare_pci, spare_pcie)
    if _comparable(original, trial, *spares) != _comparable(original, tree, *spares):
        return False  # libvirt's layout is worse for pciplan's objective: keep pciplan's
    real = _keyed(tree)
    for k, a, mf in changes:
        _set(real[k], a, mf)
    return True


def _set(el: etree._Element, a: PciAddress, multifunction: bool) -> None:
    set_pci_address(el, a)
    addr = el.find("address")
    if "multifunction" in addr.attrib:
        del addr.attrib["multifunction"]
    if multifunction:
        addr.set("multifunction", "on")
