"""Machine, controller and device facts, loaded from the TOML files in models/."""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class ControllerModel:
    name: str
    plugs_into: str
    accepts: frozenset[str]
    first_slot: int
    last_slot: int
    hotplug: bool
    autoassign: bool
    conventional: bool
    buses: int
    io_window: bool
    qemu: str
    aggregate: bool = False
    target: str = ""

    @property
    def slot_count(self) -> int:
        return self.last_slot - self.first_slot + 1


@dataclass(frozen=True)
class Machine:
    family: str
    arches: tuple[str, ...]
    machine_patterns: tuple[str, ...]
    root: str
    reserved_slots: frozenset[int]
    io_window_budget: int
    io_root_allowance: int
    io_window_budget_noacpi: int
    io_root_allowance_noacpi: int
    pxb: str
    spare_pcie_ports: int
    spare_pci_slots: int
    mmio_transports: int
    acpi_root_hotplug: bool
    default_usb: str
    default_net: str
    default_scsi: str
    implicit_usb: bool
    implicit_balloon: bool
    pcie_always: bool = False
    fixed: dict[str, tuple[int, int]] = field(default_factory=dict)
    conventions: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def pcie(self) -> bool:
        return self.root == "pcie-root"

    @property
    def x86(self) -> bool:
        return self.family in ("q35", "pc")

    def io_capacity_units(self, acpi: bool) -> int:
        """SeaBIOS's I/O space for PCI, in 32-byte units (0: no budget on this machine)."""
        if acpi:
            return self.io_window_budget * IO_WINDOW_UNITS + self.io_root_allowance // IO_UNIT
        return self.io_window_budget_noacpi * IO_WINDOW_UNITS + self.io_root_allowance_noacpi // IO_UNIT


@dataclass(frozen=True)
class DeviceClass:
    key: str
    cls: str  # virtio | pcie | pci | none
    hotplug: bool = False
    io: bool = False
    pcie_only: bool = False
    integrated: bool = False
    io_bytes: int = 0  # I/O BAR as a conventional or integrated device
    # For a kind that never takes a PCI address, what libvirt 9.0 does with one it is given:
    # "drop" (it removes the address), "keep" (it keeps and reserves it), "refuse" (define fails);
    # "" for a key the catalogue does not know, which pciplan refuses too.
    pci_address: str = ""
    reason: str = ""  # why, for "refuse"
    note: str = ""  # a warning the plan carries for this kind (say, which libvirt knows it)
    known: bool = True

    @property
    def io_units(self) -> int:
        """I/O space in units of 32 bytes (the smallest BAR SeaBIOS places here; 4 KiB window = 128)."""
        return -(-self.io_bytes // IO_UNIT)


IO_UNIT = 32
IO_WINDOW_UNITS = 4096 // IO_UNIT


def _load(name: str) -> dict:
    return tomllib.loads(resources.files("models").joinpath(name).read_text())


@cache
def space_exclusions() -> dict[tuple[str, str], str]:
    """(bus model, connect type) -> why the model never plans that placement (models/space.toml),
    although libvirt accepts it at a given address."""
    return {(bus, x["connect"]): x["reason"] for x in _load("space.toml")["exclude"] for bus in x["buses"]}


@cache
def controller_models() -> dict[str, ControllerModel]:
    out = {}
    excluded = space_exclusions()
    for name, d in _load("controllers.toml").items():
        # The candidate space follows these accepts: it must not contain what the space excludes.
        clash = [c for c in d["accepts"] if (name, c) in excluded]
        if clash:
            raise ValueError(f"models/controllers.toml: {name} accepts {clash}, excluded by space.toml")
        out[name] = ControllerModel(
            name=name,
            plugs_into=d["plugs_into"],
            accepts=frozenset(d["accepts"]),
            first_slot=d["slots"][0],
            last_slot=d["slots"][1],
            hotplug=d["hotplug"],
            autoassign=d["autoassign"],
            conventional=d["conventional"],
            buses=d["buses"],
            io_window=d["io_window"],
            qemu=d["qemu"],
            aggregate=d.get("aggregate", False),
            target=d.get("target", ""),
        )
    return out


@cache
def machines() -> dict[str, Machine]:
    out = {}
    for family, d in _load("machines.toml").items():
        out[family] = Machine(
            family=family,
            arches=tuple(d["arches"]),
            machine_patterns=tuple(d["machine_patterns"]),
            root=d["root"],
            reserved_slots=frozenset(d["reserved_slots"]),
            io_window_budget=d["io_window_budget"],
            io_root_allowance=d["io_root_allowance"],
            io_window_budget_noacpi=d.get("io_window_budget_noacpi", d["io_window_budget"]),
            io_root_allowance_noacpi=d.get("io_root_allowance_noacpi", d["io_root_allowance"]),
            pxb=d["pxb"],
            spare_pcie_ports=d["spare_pcie_ports"],
            spare_pci_slots=d["spare_pci_slots"],
            mmio_transports=d["mmio_transports"],
            acpi_root_hotplug=d["acpi_root_hotplug"],
            default_usb=d["default_usb"],
            default_net=d["default_net"],
            default_scsi=d["default_scsi"],
            implicit_usb=d["implicit_usb"],
            implicit_balloon=d["implicit_balloon"],
            pcie_always=d.get("pcie_always", False),
            fixed={k: (v[0], v[1]) for k, v in d.get("fixed", {}).items()},
            conventions={k: tuple(v) for k, v in d.get("conventions", {}).items()},
        )
    return out


def machine_for(arch: str, machine: str) -> Machine | None:
    """The machine family for an <os><type arch machine>, or None when pciplan does not plan it."""
    for m in machines().values():
        if arch in m.arches and any(fnmatch.fnmatchcase(machine, p) for p in m.machine_patterns):
            return m
    return None


@cache
def _device_table() -> dict[str, DeviceClass]:
    out = {}
    for key, d in _load("devices.toml").items():
        out[key] = DeviceClass(
            key=key,
            cls=d["class"],
            hotplug=d.get("hotplug", False),
            io=d.get("io", False),
            pcie_only=d.get("pcie_only", False),
            integrated=d.get("integrated", False),
            io_bytes=d.get("io_bytes", 0),
            pci_address=d.get("pci_address", ""),
            reason=d.get("reason", ""),
            note=d.get("note", ""),
        )
    return out


def device_class(kind: str, model: str) -> DeviceClass:
    """Look up 'kind:model', then the 'kind:*' fallback (kind may itself contain ':')."""
    table = _device_table()
    for key in (f"{kind}:{model}", f"{kind}:*"):
        if key in table:
            return table[key]
    return DeviceClass(key=f"{kind}:{model}", cls="none", known=False)
