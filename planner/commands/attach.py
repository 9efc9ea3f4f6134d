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

from planner.pipeline.domain import read_problem
from planner.pipeline.metrics import Place, free_slots, occupied
from planner.xml.xmlio import InputError


class NotHotpluggable(Exception):
    """libvirt cannot hot-plug this kind of device at all."""


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
    used = occupied(tree)
    pcie = dev.endpoint == "pcie"  # domain.endpoint_of: PCIe devices on PCIe machines only
    places: list[Place] = []
    for b in sorted(problem.buses.values(), key=lambda b: b.index):
        places += free_slots(problem.machine.reserved_slots, b, used, pcie)
    return LivePlaces(f"{dev.kind} ({dev.model})", pcie, places)
