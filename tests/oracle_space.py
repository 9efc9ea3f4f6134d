"""The oracle's own valid space, written from libvirt's and QEMU's rules (../shared/pci-rules.md:
the controller table, "Devices", "Hot-plug"), not from models/space.toml or the model's catalogues.

It is libvirt 9.0's rule for addresses a user gives (any bus that takes endpoints takes conventional and
PCIe ones, and a pci-bridge goes wherever an endpoint may) with QEMU 7.2's refusals. pciplan plans over a
smaller space; every placement only the model excludes is named in MODEL_EXCLUDES with its reason. A
layout that beats pciplan must use one of them, or the oracle fails.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BusModel:
    slots: tuple[int, int]  # first and last slot of its bus
    hotplug: bool  # its slots take hot-plugged devices (a hotplug='off' port says no)
    conventional: bool  # a conventional PCI bus (a PCIe device there is on conventional PCI)
    endpoints: bool  # endpoints may sit on it
    bus_numbers: int


# pci-rules.md, "Controllers": slots, hot-plug, bus type. pci-root is hot-pluggable with ACPI.
BUS_MODELS: dict[str, BusModel] = {
    "pci-root": BusModel((1, 31), True, True, True, 1),
    "pcie-root": BusModel((1, 31), False, False, True, 1),
    "pcie-root-port": BusModel((0, 0), True, False, True, 1),
    "pcie-switch-upstream-port": BusModel((0, 31), False, False, False, 1),
    "pcie-switch-downstream-port": BusModel((0, 0), True, False, True, 1),
    "pcie-to-pci-bridge": BusModel((1, 31), True, True, True, 1),
    "dmi-to-pci-bridge": BusModel((0, 31), False, True, True, 1),
    "pci-bridge": BusModel((1, 31), True, True, True, 1),
    "pci-expander-bus": BusModel((0, 31), False, True, True, 2),  # its root bus and internal bridge
    "pcie-expander-bus": BusModel((0, 31), False, False, False, 1),
}
ENDPOINT_BUSES = frozenset(m for m, b in BUS_MODELS.items() if b.endpoints)
# pci-rules.md, "plugs into" (upstream port and pcie-to-pci-bridge: [seen] rejected on pcie-root).
PLUGS_INTO: dict[str, frozenset[str]] = {
    "pcie-root-port": frozenset({"pcie-root", "pcie-expander-bus"}),
    "pcie-switch-upstream-port": frozenset({"pcie-root-port", "pcie-switch-downstream-port"}),
    "pcie-switch-downstream-port": frozenset({"pcie-switch-upstream-port"}),
    "pcie-to-pci-bridge": frozenset({"pcie-root-port", "pcie-switch-downstream-port"}),
    "dmi-to-pci-bridge": frozenset({"pcie-root", "pcie-expander-bus"}),
    "pci-bridge": ENDPOINT_BUSES,  # "any conventional PCI slot", and libvirt: wherever an endpoint may
    "pci-expander-bus": frozenset({"pci-root"}),
    "pcie-expander-bus": frozenset({"pcie-root"}),
}
PCIE_PORTS = frozenset({"pcie-root-port", "pcie-switch-downstream-port"})
PCIE_BUSES = frozenset({"pcie-root", "pcie-root-port", "pcie-switch-downstream-port"})
EXPANDERS = frozenset({"pci-expander-bus", "pcie-expander-bus"})

# Placements libvirt and QEMU accept that pciplan's model never plans, with the reason. The oracle
# tags every layout with the ones it uses.
MODEL_EXCLUDES: dict[str, str] = {
    "conventional-in-pcie-port": "a conventional endpoint in a root or downstream port: libvirt accepts "
                                 "it, QEMU's docs/pcie.txt calls it not always working (space.toml)",
    "pci-bridge-on-pcie": "a pci-bridge on pcie-root or a PCIe port: libvirt accepts it, QEMU's "
                          "docs/pcie.txt starts conventional hierarchies with a pcie-pci-bridge (space.toml)",
    "expander-without-numa": "a pci-expander-bus / pcie-expander-bus: pciplan adds one only for a numa "
                             "rule (README: on pc, hotplug=no beyond pci-root is not implemented)",
}


def controller_tags(model: str, parent_model: str) -> set[str]:
    tags = set()
    if model == "pci-bridge" and parent_model in PCIE_BUSES:
        tags.add("pci-bridge-on-pcie")
    if model in EXPANDERS:
        tags.add("expander-without-numa")
    return tags


def device_tags(conventional: bool, bus_model: str) -> set[str]:
    return {"conventional-in-pcie-port"} if conventional and bus_model in PCIE_PORTS else set()
