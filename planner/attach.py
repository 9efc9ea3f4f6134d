"""Where a device goes when it is hot-plugged into a running guest (`pciplan attach`).

A running guest's PCI tree is fixed: a hot-plugged device can only go where a hot-pluggable slot is
free already, never behind a new controller. That is an empty pcie-root-port or switch downstream port
for a PCIe device (libvirt puts PCIe-capable devices only there), and a free slot of a hot-pluggable
conventional bus (pci-bridge, pcie-to-pci-bridge, pc's pci-root with ACPI) for a conventional one.
The next cold boot can do more: `--config` plans the persistent definition with the device added.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from lxml import etree

from planner.domain import Bus, PciAddress, read_problem
from planner.xmlio import InputError

PORTS = ("pcie-root-port", "pcie-switch-downstream-port")


class NotHotpluggable(Exception):
    """libvirt cannot hot-plug this kind of device at all."""


@dataclass(frozen=True)
class Place:
    address: PciAddress
    bus: str  # the controller that offers the slot

    def __str__(self) -> str:
        return f"{self.address} ({self.bus})"


@dataclass
class LivePlaces:
    device: str  # a one-line name of the device
    pcie: bool  # it goes to PCIe ports (else to conventional slots)
    places: list[Place]  # free hot-pluggable places that fit it, the one libvirt would take first


def _strip_address(el: etree._Element) -> etree._Element:
    el = copy.deepcopy(el)
    for addr in el.findall("address"):
        el.remove(addr)
    return el


def add_device(tree: etree._ElementTree, device: etree._Element) -> etree._Element:
    """Append a copy of the device (without any address it had) as the tree's last device."""
    devices = tree.getroot().find("devices")
    if devices is None:
        raise InputError("domain: no <devices> element")
    new = _strip_address(device)
    devices.append(new)
    return new


def _occupied(tree: etree._ElementTree) -> set[tuple[int, int]]:
    used = set()
    for a in tree.getroot().iterfind("devices/*/address[@type='pci']"):
        if a.get("slot") is not None:
            used.add((int(a.get("bus", "0"), 0), int(a.get("slot"), 0)))
    return used


def live_places(guest: etree._ElementTree, device: etree._Element) -> LivePlaces:
    """The free hot-pluggable places of a running guest that fit the device, in libvirt's order (lowest
    controller index first, then lowest slot)."""
    tree = copy.deepcopy(guest)
    new = add_device(tree, device)
    given = set(tree.getroot().iterfind("devices/*"))  # not the implicit devices read_problem adds
    problem = read_problem(tree)
    dev = next((d for d in problem.devices if d.element is new), None)
    if dev is None:
        raise InputError(f"<{device.tag}>: this device takes no PCI address; nothing to place")
    for d in problem.devices:
        if d is not dev and d.element in given and d.address is None:
            raise InputError(f"{d.label}: has no PCI address: attach needs the running guest's XML "
                             "(virsh dumpxml NAME), or a planned one (pciplan plan)")
    if not dev.hotplug:
        raise NotHotpluggable(f"{dev.kind} ({dev.model}): libvirt cannot hot-plug a device of this kind; "
                              "add it to the persistent definition (--config) and restart the guest")
    used = _occupied(tree)
    pcie = dev.endpoint == "pcie"  # domain.endpoint_of: PCIe devices on PCIe machines only
    places: list[Place] = []
    for b in sorted(problem.buses.values(), key=lambda b: b.index):
        places += _free_slots(problem.machine.reserved_slots, b, used, pcie)
    return LivePlaces(f"{dev.kind} ({dev.model})", pcie, places)


@dataclass(frozen=True)
class Headroom:
    """What a planned guest can still take live: empty PCIe hot-plug ports (each one PCIe device) and
    free slots of hot-pluggable conventional buses (each one conventional device)."""

    pcie_ports: int
    pci_slots: int

    def __str__(self) -> str:
        return f"{self.pcie_ports} PCIe device(s), {self.pci_slots} conventional PCI device(s)"

    def as_json(self) -> dict[str, int]:
        return {"pcie_ports": self.pcie_ports, "pci_slots": self.pci_slots}


def headroom(tree: etree._ElementTree) -> Headroom:
    """The live hot-plug places of an addressed guest, by kind of place."""
    problem = read_problem(etree.ElementTree(copy.deepcopy(tree.getroot())))  # only read: no text layer
    used = _occupied(problem.tree)
    reserved = problem.machine.reserved_slots
    ports = slots = 0
    for b in problem.buses.values():
        ports += len(_free_slots(reserved, b, used, pcie=True))
        slots += len(_free_slots(reserved, b, used, pcie=False))
    return Headroom(ports, slots)


def _free_slots(reserved: frozenset[int], b: Bus, used: set[tuple[int, int]], pcie: bool) -> list[Place]:
    if not b.hotplug:
        return []
    if pcie:
        if b.model.name in PORTS and (b.index, 0) not in used:
            return [Place(PciAddress(b.index, 0, 0), b.label)]
        return []
    if not b.model.conventional:
        return []
    return [Place(PciAddress(b.index, slot, 0), b.label)
            for slot in range(b.model.first_slot, b.model.last_slot + 1)
            if (b.index, slot) not in used and not (b.index == 0 and slot in reserved)]
