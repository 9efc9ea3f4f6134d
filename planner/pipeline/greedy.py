"""A re-implementation of libvirt 9.0's own PCI address assignment (its greedy planner).

Used to compare pciplan's layouts with what libvirt would do when real libvirt is not installed. The
behaviour follows libvirt/libvirt, read function by function:

- ``src/qemu/qemu_domain_address.c``: ``qemuDomainAssignPCIAddresses`` (pass 1 dry run with growth, the
  pci-root dummy slot, the spare pcie-root-port, reflecting auto-added buses into controllers, pass 2,
  controller defaults and the pci-bridge index check), ``qemuDomainPCIAddressSetCreate`` (bus table,
  default model for index gaps), ``qemuDomainCollectPCIAddress`` (user addresses),
  ``qemuDomainValidateDevicePCISlotsPIIX3`` / ``...Q35`` (chipset and conventional slots),
  ``qemuDomainAssignDevicePCISlots`` (the fixed class order), ``qemuDomainDeviceCalculatePCIConnectFlags``
  (via ``planner.pipeline.domain``'s device classes), ``qemuDomainAssignVirtioMMIOAddresses`` and
  ``qemuDomainPrimeVirtioDeviceAddresses`` (virtio-mmio on virt guests), ``qemuDomainAddressFindNewBusNr``.
- ``src/conf/domain_addr.c``: ``virDomainPCIAddressBusSetModel``, ``virDomainPCIAddressFlagsCompatible``,
  ``virDomainPCIAddressValidate``, ``virDomainPCIAddressSetGrow``, ``virDomainPCIAddressReserveAddrInternal``,
  ``virDomainPCIAddressFindUnusedFunctionOnBus``, ``virDomainPCIAddressGetNextAddr``,
  ``virDomainPCIAddressSetAllMulti``, ``virDomainPCIControllerModelToConnectType``.

Behaviour is that of libvirt 9.0 with QEMU 7.2 (pcie-root-port and pcie-pci-bridge available, transitional
virtio supported); see /shared/libvirt-pci-spec.md §7 for the measured failure points it reproduces.
pSeries isolation groups and zPCI extensions are not modelled (pciplan plans no such machines).

Also from ``src/conf/domain_conf.c``, as far as it decides the order of assignment and the output:
the parser sorts controllers and disks (``virDomainControllerInsertPreAlloced``,
``virDomainDiskInsertPreAlloced``), implicit controllers are appended (``virDomainDefAddController``,
after the QEMU driver's defaults of ``qemuDomainDefAddDefaultDevices``), the primary video is listed
first, graphics without a video get one (``virDomainDefAddImplicitVideo``), console N mirrors serial N.

``planner.pipeline.domain.read_problem`` classifies devices and adds the implicit devices; three of its gaps
are covered here: unindexed controllers are indexed before implicit ones are added, the default SCSI model
is lsilogic on every machine (QEMU 7.2 has it), transitional vhost-scsi is conventional PCI.
Where a PCI hostdev's host device exists, its PCIe-ness is read from sysfs, as libvirt does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from lxml import etree

from planner.facts.facts import ControllerModel, controller_models, device_class, given_rule
from planner.pipeline.domain import (
    Device,
    PciAddress,
    Problem,
    _assign_indices,
    _assign_usb_indices,
    _machine,
    disk_name_index,
    read_problem,
)
from planner.xml.xmlio import InputError, parse_domain_bytes, remove_element, serialize_text

# ------------------------------------------------------------------ connect flags (src/conf/domain_addr.h)

AUTOASSIGN = 1 << 0
HOTPLUGGABLE = 1 << 1
INTEGRATED = 1 << 2
AGGREGATE_SLOT = 1 << 3
PCI_DEVICE = 1 << 4
PCIE_DEVICE = 1 << 5
PCIE_ROOT_PORT = 1 << 6
PCIE_SWITCH_UPSTREAM_PORT = 1 << 7
PCIE_SWITCH_DOWNSTREAM_PORT = 1 << 8
DMI_TO_PCI_BRIDGE = 1 << 9
PCI_EXPANDER_BUS = 1 << 10
PCIE_EXPANDER_BUS = 1 << 11
PCI_BRIDGE = 1 << 12
PCIE_TO_PCI_BRIDGE = 1 << 13
TYPES_MASK = (PCI_DEVICE | PCIE_DEVICE | PCIE_ROOT_PORT | PCIE_SWITCH_UPSTREAM_PORT
              | PCIE_SWITCH_DOWNSTREAM_PORT | DMI_TO_PCI_BRIDGE | PCI_EXPANDER_BUS | PCIE_EXPANDER_BUS
              | PCI_BRIDGE | PCIE_TO_PCI_BRIDGE)
# The connect types of models/controllers.toml as libvirt's bits: the catalogue is the one source of
# what plugs where, and the algebra below is derived from it at import, as domain_addr.c keeps one.
CONNECT_FLAG = {
    "pci-device": PCI_DEVICE, "pcie-device": PCIE_DEVICE, "pcie-root-port": PCIE_ROOT_PORT,
    "pcie-switch-upstream-port": PCIE_SWITCH_UPSTREAM_PORT,
    "pcie-switch-downstream-port": PCIE_SWITCH_DOWNSTREAM_PORT, "dmi-to-pci-bridge": DMI_TO_PCI_BRIDGE,
    "pci-expander-bus": PCI_EXPANDER_BUS, "pcie-expander-bus": PCIE_EXPANDER_BUS, "pci-bridge": PCI_BRIDGE,
    "pcie-to-pci-bridge": PCIE_TO_PCI_BRIDGE,
}


def _flags(connects: frozenset[str]) -> int:
    out = 0
    for c in connects:
        out |= CONNECT_FLAG[c]
    return out


def _bus_model(m: ControllerModel) -> tuple[int, tuple[int, int], bool]:
    flags = (AUTOASSIGN if m.autoassign else 0) | _flags(m.accepts)
    return flags, (m.first_slot, m.last_slot), m.libvirt_hotplug


# What each bus offers downstream, its slot range, whether it may hot-plug (virDomainPCIAddressBusSetModel).
BUS_MODELS: dict[str, tuple[int, tuple[int, int], bool]] = {
    name: _bus_model(m) for name, m in controller_models().items()}
# What a controller model needs upstream (virDomainPCIControllerModelToConnectType).
CONTROLLER_CONNECT = {name: CONNECT_FLAG[m.plugs_into] | (AGGREGATE_SLOT if m.aggregate else 0)
                      for name, m in controller_models().items() if m.plugs_into}
# The <model name> libvirt fills in (qemuDomainPCIControllerSetDefaultModelName).
MODEL_NAMES = {name: m.qemu for name, m in controller_models().items() if m.qemu}
# libvirt's rule for a user-given address (models/space.toml [given]): a bus with one endpoint bit gets
# them all; a device with a `like` bit may also go where that type may.
_GIVEN_ENDPOINTS = _flags(given_rule()[0])
_GIVEN_LIKE = tuple((CONNECT_FLAG[c], CONNECT_FLAG[like]) for c, like in given_rule()[1].items())

# Connect-type names in libvirt's "It requires a controller that accepts a ..." message, checked in order.
_CONNECT_NAMES = (
    (PCI_DEVICE, "standard PCI device"), (PCIE_DEVICE, "PCI Express device"),
    (PCIE_ROOT_PORT, "pcie-root-port"), (PCIE_SWITCH_UPSTREAM_PORT, "pcie-switch-upstream-port"),
    (PCIE_SWITCH_DOWNSTREAM_PORT, "pcie-switch-downstream-port"), (DMI_TO_PCI_BRIDGE, "dmi-to-pci-bridge"),
    (PCIE_TO_PCI_BRIDGE, "pcie-to-pci-bridge"), (PCI_EXPANDER_BUS, "pci-expander-bus"),
    (PCIE_EXPANDER_BUS, "pcie-expander-bus"), (PCI_BRIDGE, "pci-bridge"),
)

# virDomainPCIControllerConnectTypeToModel: which model a bare connect type would be (for growth errors).
_CONNECT_TO_MODEL = (
    (PCIE_ROOT_PORT, "pcie-root-port"), (PCIE_SWITCH_UPSTREAM_PORT, "pcie-switch-upstream-port"),
    (PCIE_SWITCH_DOWNSTREAM_PORT, "pcie-switch-downstream-port"), (DMI_TO_PCI_BRIDGE, "dmi-to-pci-bridge"),
    (PCI_EXPANDER_BUS, "pci-expander-bus"), (PCIE_EXPANDER_BUS, "pcie-expander-bus"),
    (PCI_BRIDGE, "pci-bridge"),
)

# The order of qemuDomainAssignDevicePCISlots (PCI controllers come first, handled apart).
ASSIGN_ORDER = ("filesystem", "interface", "sound", "controller", "disk", "hostdev", "memballoon", "rng",
                "watchdog", "video", "shmem", "input", "serial", "iommu", "vsock", "memory", "crypto")
# The order of virDomainDeviceInfoIterate, in which user addresses are collected (decides which error
# a broken input reports first, and the growth order of the dry run).
COLLECT_ORDER = ("disk", "interface", "sound", "hostdev", "video", "controller", "serial", "input",
                 "filesystem", "watchdog", "memballoon", "rng", "shmem", "memory", "vsock", "iommu", "crypto")
IMPLICIT_ORDER = ("usb", "sata0", "pci", "scsi", "fdc", "ide", "sata", "virtio-serial")
USB2_FUNCTION = {"ich9-ehci1": 7, "ich9-uhci1": 0, "ich9-uhci2": 1, "ich9-uhci3": 2}
# Kinds qemuDomainPrimeVirtioDeviceAddresses turns into virtio-mmio on a virt guest that already has one.
_MMIO_PRIMED = ("disk", "interface", "video", "input", "controller", "hostdev", "memballoon", "rng", "memory")


@dataclass
class GreedyResult:
    ok: bool
    error: str | None  # libvirt-like message when it gives up
    xml: str | None  # the completed domain XML (addresses + added controllers)
    controllers_added: dict[str, int]  # by model
    seconds: float


class GreedyError(Exception):
    """libvirt gave up: the message is libvirt's, with the prefix of its error class."""

    def __init__(self, message: str, prefix: str = "internal error: ") -> None:
        super().__init__(prefix + message)


XML_ERROR = "XML error: "  # VIR_ERR_XML_ERROR: a user-given address is wrong
UNSUPPORTED = "unsupported configuration: "  # VIR_ERR_CONFIG_UNSUPPORTED


def _first(el: etree._Element, tag: str) -> etree._Element | None:
    """el.find(tag) for a plain tag: the first child of that name, without ElementPath's parsing."""
    for child in el.iterchildren(tag):
        return child
    return None


def _all(el: etree._Element, tag: str) -> list[etree._Element]:
    """el.findall(tag) for a plain tag, without ElementPath's parsing."""
    return list(el.iterchildren(tag))


def _addr_str(a: PciAddress) -> str:
    """virPCIDeviceAddressAsString."""
    return f"0000:{a.bus:02x}:{a.slot:02x}.{a.function:x}"


# ------------------------------------------------------------------ the address set (virDomainPCIAddressSet)


class _Bus:
    __slots__ = ("model", "flags", "min_slot", "max_slot", "functions", "aggregate", "used")

    def __init__(self) -> None:
        self.model: str | None = None
        self.flags = 0
        self.min_slot = 0
        self.max_slot = 31
        self.functions = [0] * 32  # per slot, a bit per function in use
        self.aggregate = 0  # a bit per slot whose first device came with AGGREGATE_SLOT
        self.used = 0  # slots in [min_slot, max_slot] with a function in use: lets the search skip full buses

    def set_model(self, model: str, hotplug: bool = True) -> None:
        flags, (lo, hi), can_hotplug = BUS_MODELS[model]
        self.model = model
        self.flags = flags | (HOTPLUGGABLE if hotplug and can_hotplug else 0)
        self.min_slot, self.max_slot = lo, hi

    def empty(self) -> bool:
        return not any(self.functions[self.min_slot:self.max_slot + 1])

    def fully_reserved(self) -> bool:
        return all(self.functions[self.min_slot:self.max_slot + 1])


def _fits(bus_index: int, bus_flags: int, dev_flags: int) -> bool:
    """_compatible for an address libvirt picks itself, without building a message (the hot path)."""
    if dev_flags & INTEGRATED:
        if bus_index != 0:
            return False
        bus_flags |= AUTOASSIGN
    if dev_flags & AUTOASSIGN and not bus_flags & AUTOASSIGN:
        return False
    if dev_flags & HOTPLUGGABLE and not bus_flags & HOTPLUGGABLE:
        return False
    return bool(dev_flags & bus_flags & TYPES_MASK)


def _at(addr: PciAddress) -> str:
    """The start of libvirt's messages about an address (made only when a message is)."""
    return f"The device at PCI address {_addr_str(addr)}"


def _compatible(addr: PciAddress, bus_flags: int, dev_flags: int, from_config: bool) -> str | None:
    """virDomainPCIAddressFlagsCompatible: None when the device may sit on the bus, else libvirt's reason."""
    if dev_flags & INTEGRATED:
        if addr.bus != 0:
            return _at(addr) + " needs to be an integrated device (bus=0)"
        bus_flags |= AUTOASSIGN  # an integrated device may sit on pcie-root
    if from_config:
        # a user-given address may put a PCI device on a PCIe slot and vice versa, a pci-bridge anywhere
        if bus_flags & _GIVEN_ENDPOINTS:
            bus_flags |= _GIVEN_ENDPOINTS
        for bit, like in _GIVEN_LIKE:
            if dev_flags & bit:
                dev_flags |= like
    elif dev_flags & AUTOASSIGN and not bus_flags & AUTOASSIGN:
        return (_at(addr) + f" was auto-assigned this address, but the PCI controller "
                f"with index='{addr.bus}' doesn't allow auto-assignment")
    if dev_flags & HOTPLUGGABLE and not bus_flags & HOTPLUGGABLE:
        return (_at(addr) + f" requires hotplug capability, but the PCI controller "
                f"with index='{addr.bus}' doesn't support hotplug")
    if not dev_flags & bus_flags & TYPES_MASK:
        wanted = next((name for bit, name in _CONNECT_NAMES if dev_flags & bit), None)
        if wanted is None:
            return (_at(addr) + " has unrecognized connection type flags "
                    f"0x{dev_flags & TYPES_MASK:02x}")
        return (_at(addr) + f" cannot be plugged into the PCI controller with "
                f"index='{addr.bus}'. It requires a controller that accepts a {wanted}.")
    return None


class _Stopped(Exception):
    """The dry run has added more buses than the caller's limit allows."""


class _AddressSet:
    def __init__(self, nbuses: int, dry_run: bool, limit: tuple[Collection[int], int] | None = None) -> None:
        self.buses = [_Bus() for _ in range(nbuses)]
        self.dry_run = dry_run
        # (indices, n): stop once more than n buses were grown at indices not among indices
        self.limit = limit
        self.grown = 0
        # (flags, function) -> the first bus reserve_next may find a place on for them: those before it
        # had none, and never will (a bus's slots only fill, and its model and flags are set before any
        # search), so each search starts where the last one with the same request stopped
        self.searched: dict[tuple[int, int], int] = {}

    # virDomainPCIAddressValidate
    def validate(self, addr: PciAddress, flags: int, from_config: bool) -> None:
        kind = XML_ERROR if from_config else "internal error: "
        if addr.bus >= len(self.buses):
            raise GreedyError(f"Invalid PCI address {_addr_str(addr)}. Only PCI buses up to "
                              f"{len(self.buses) - 1} are available", kind)
        bus = self.buses[addr.bus]
        reason = _compatible(addr, bus.flags, flags, from_config)
        if reason:
            raise GreedyError(reason, kind)
        if bus.min_slot and addr.slot < bus.min_slot:
            raise GreedyError(f"Invalid PCI address {_addr_str(addr)}. slot must be >= {bus.min_slot}", kind)
        if addr.slot > bus.max_slot:
            raise GreedyError(f"Invalid PCI address {_addr_str(addr)}. slot must be <= {bus.max_slot}", kind)
        if addr.function > 7:
            raise GreedyError(f"Invalid PCI address {_addr_str(addr)}. function must be <= 7", kind)

    def slot_in_use(self, addr: PciAddress) -> bool:
        return bool(self.buses[addr.bus].functions[addr.slot])

    # virDomainPCIAddressSetGrow
    def grow(self, addr: PciAddress, flags: int) -> PciAddress:
        """Add buses so that addr.bus exists (dry run only); returns the address, its bus maybe bumped."""
        add = addr.bus - len(self.buses) + 1
        if add <= 0:
            return addr
        need_bridge_path = False
        if flags & PCI_DEVICE:
            model = "pci-bridge"
            # A pure PCIe guest has nowhere to plug a pci-bridge: build root port + pcie-to-pci-bridge.
            need_bridge_path = not any(b.flags & PCI_BRIDGE for b in self.buses)
            if need_bridge_path and add == 1:
                add += 1
                addr = PciAddress(addr.bus + 1, addr.slot, addr.function)
        elif flags & (PCIE_DEVICE | PCIE_SWITCH_UPSTREAM_PORT):
            model = "pcie-root-port"
        else:
            existing = next((m for bit, m in _CONNECT_TO_MODEL if flags & bit), None)
            if existing:
                raise GreedyError(f"a PCI slot is needed to connect a PCI controller model='{existing}', "
                                  "but none is available, and it cannot be automatically added")
            raise GreedyError(
                f"Cannot automatically add a new PCI bus for a device with connect flags {flags:02x}")
        new = [_Bus() for _ in range(add)]
        first = 0
        if need_bridge_path:
            # This root port takes only the pcie-to-pci-bridge: the spare-port dummy must not land on it.
            new[0].set_model("pcie-root-port")
            new[0].flags = PCIE_TO_PCI_BRIDGE
            new[1].set_model("pcie-to-pci-bridge")
            first = 2
        for b in new[first:]:
            b.set_model(model)
        if self.limit is not None:
            known, most = self.limit
            for i in range(len(self.buses), len(self.buses) + add):
                if i not in known:
                    self.grown += 1
            if self.grown > most:
                raise _Stopped
        self.buses.extend(new)
        return addr

    # virDomainPCIAddressReserveAddrInternal
    def reserve(self, addr: PciAddress, flags: int, from_config: bool) -> PciAddress:
        if self.dry_run and addr.bus >= len(self.buses):
            addr = self.grow(addr, flags)
        self.validate(addr, flags, from_config)
        return self._take(addr, flags, from_config)

    def _take(self, addr: PciAddress, flags: int, from_config: bool) -> PciAddress:
        """Mark a validated address in use."""
        bus = self.buses[addr.bus]
        if bus.functions[addr.slot] & (1 << addr.function):
            raise GreedyError(f"Attempted double use of PCI Address {_addr_str(addr)}",
                              XML_ERROR if from_config else "internal error: ")
        if not bus.functions[addr.slot]:
            if flags & AGGREGATE_SLOT:  # its bit is 0 until now: a slot is taken once
                bus.aggregate |= 1 << addr.slot
            if bus.min_slot <= addr.slot <= bus.max_slot:
                bus.used += 1
        bus.functions[addr.slot] |= 1 << addr.function
        return addr

    # virDomainPCIAddressReserveNextAddr with virDomainPCIAddressGetNextAddr (isolation groups are all 0
    # outside pSeries) and virDomainPCIAddressFindUnusedFunctionOnBus
    def reserve_next(self, flags: int, function: int = -1) -> PciAddress:
        # the hot path: an address found here is one validate passes (the bus fits the flags, the slot
        # is in the bus's range, the function is 0-7), so only one on a grown bus is validated
        aggregate = flags & AGGREGATE_SLOT
        buses = self.buses
        key = (flags, function)
        start = 0 if function == -1 else function
        for index in range(self.searched.get(key, 0), len(buses)):
            bus = buses[index]
            lo, hi = bus.min_slot, bus.max_slot
            if bus.used > hi - lo and not aggregate:
                continue  # every slot taken
            if not _fits(index, bus.flags, flags):
                continue
            functions = bus.functions
            if not aggregate:  # the first slot with no function in use: there is one (used above)
                slot = functions.index(0, lo, hi + 1)
                self.searched[key] = index
                bus.used += 1
                functions[slot] = 1 << start
                return _pci_address(index, slot, start)
            for slot in range(lo, hi + 1):
                used = functions[slot]
                if used and not bus.aggregate >> slot & 1:
                    continue
                if function == -1:  # the lowest function not in use
                    found = (~used & (used + 1)).bit_length() - 1
                    if found > 7:
                        continue
                elif used & (1 << start):
                    continue
                else:
                    found = start
                self.searched[key] = index
                return self._take(_pci_address(index, slot, found), flags, False)
        self.searched[key] = len(buses)
        if self.dry_run:  # nothing free: a new bus
            a = self.grow(_pci_address(len(self.buses), 0, start), flags)
            return self.reserve(_pci_address(a.bus, self.buses[a.bus].min_slot, a.function), flags, False)
        raise GreedyError("No more available PCI slots")


_ADDRESSES: dict[tuple[int, int, int], PciAddress] = {}


def _pci_address(bus: int, slot: int, function: int) -> PciAddress:
    """PciAddress(bus, slot, function), made once (a frozen dataclass costs more to make than to find)."""
    key = (bus, slot, function)
    a = _ADDRESSES.get(key)
    if a is None:
        a = PciAddress(bus, slot, function)
        if bus < 256:  # the cache stays bounded: 256 buses of 32 slots of 8 functions
            _ADDRESSES[key] = a
    return a


# ------------------------------------------------------------------ the domain as libvirt holds it


@dataclass(eq=False, slots=True)
class _Dev:
    """One element that may take a PCI address, as libvirt's virDomainDeviceInfo."""

    element: etree._Element
    kind: str  # element tag; "interface" of type hostdev is listed with the hostdevs
    flags: int
    user: PciAddress | None  # address present in the input
    no_address: bool  # no <address> element at all (libvirt's address type NONE)
    model: str = ""
    usb_index: int | None = None
    ctype: str = ""  # controller type
    index: int | None = None  # controller index
    hostdev_net: bool = False  # <interface type='hostdev'>: assigned with the hostdevs
    assigned: PciAddress | None = None  # the address libvirt writes into the definition
    multi: bool = False  # libvirt marks its address multifunction='on'
    fresh: bool = False  # a PCI controller libvirt added: its element is made by _place_controllers

    @property
    def is_pci_controller(self) -> bool:
        return self.kind == "controller" and self.ctype == "pci"


_ADDRESSED = etree.XPath("*[address]")


def _device_flags(d: Device) -> int:
    flags = AUTOASSIGN | (PCIE_DEVICE if d.endpoint == "pcie" else PCI_DEVICE)
    if d.facts.integrated:
        flags |= INTEGRATED
    return flags


def _present(addr: PciAddress | None, bus_pin: int | None) -> PciAddress | None:
    """The element's PCI address when libvirt counts it as present (virDeviceInfoPCIAddressIsPresent),
    from read_problem's reading of its <address> (read_pci_address: its address, bus-only pin)."""
    if addr is None and bus_pin:  # a bus without slot is slot 0 of that bus for libvirt
        return PciAddress(bus_pin, 0, 0)
    return addr


SYSFS_PCI = Path("/sys/bus/pci/devices")


def _host_device_is_pcie(el: etree._Element) -> bool:
    """qemuDomainDeviceCalculatePCIConnectFlags for a PCI hostdev: PCIe unless the host device exists
    and its config space has no PCI Express capability (virPCIDeviceNew, virPCIDeviceIsPCIExpress)."""
    src = el.find("source/address")
    if src is None:
        return True
    try:
        name = "{:04x}:{:02x}:{:02x}.{:x}".format(
            *(int(src.get(k) or "0", 0) for k in ("domain", "bus", "slot", "function")))
    except ValueError:
        return True
    device = SYSFS_PCI / name
    if not device.is_dir():
        return True  # not on this host: assumed PCIe, like most assignable devices
    try:
        config = (device / "config").read_bytes()
    except OSError:
        return False
    if len(config) < 0x40 or not config[6] & 0x10:  # no capability list
        return False
    pos, seen = config[0x34] & 0xFC, 0
    while pos and pos + 1 < len(config) and seen < 48:
        if config[pos] == 0x10:  # PCI_CAP_ID_EXP
            return True
        pos, seen = config[pos + 1] & 0xFC, seen + 1
    return False


def _sorted_insert(elements: list[etree._Element],
                   key: Callable[[etree._Element], tuple[str, int]]) -> list[etree._Element]:
    """The order libvirt's parser builds its lists in (virDomainControllerInsertPreAlloced,
    virDomainDiskInsertPreAlloced): each element goes before the first one of its group with a larger
    index, else right after the last one of its group, else at the end."""
    if len(elements) < 2:
        return list(elements)  # nothing to order: spares reading the keys
    out: list[etree._Element] = []
    keys: list[tuple[str, int]] = []
    for el in elements:
        group, index = key(el)
        insert_at = -1
        for pos in range(len(out) - 1, -1, -1):
            if keys[pos][0] != group:
                continue
            if keys[pos][1] > index:
                insert_at = pos
            elif insert_at == -1:
                insert_at = pos + 1
        if insert_at == -1:
            insert_at = len(out)
        out.insert(insert_at, el)
        keys.insert(insert_at, (group, index))
    return out


def _controller_key(el: etree._Element) -> tuple[str, int]:
    return el.get("type") or "", int(el.get("index", "0"), 0)


def _disk_key(el: etree._Element) -> tuple[str, int]:
    target = _first(el, "target")
    if target is None:
        return "", 0
    return target.get("bus") or "", _disk_index(target.get("dev") or "")


_disk_index = lru_cache(maxsize=1024)(disk_name_index)  # guests name their disks alike (vda, vdb, ...)


def _has_mmio(devices: etree._Element) -> bool:
    return any(a.get("type") == "virtio-mmio" for a in devices.iter("address"))


def _mmio_primed(d: Device) -> bool:
    """Would qemuDomainPrimeVirtioDeviceAddresses give this unaddressed device a virtio-mmio address?"""
    if d.kind not in _MMIO_PRIMED:
        return False
    if d.kind == "interface":
        return d.model.startswith("virtio")
    if d.kind == "controller":
        return d.element.get("type") in ("virtio-serial", "scsi")
    if d.kind == "hostdev":
        return d.element.get("type") == "scsi_host"
    if d.kind == "video":
        return d.model == "virtio"
    return True  # disk (virtio), input (virtio), memballoon, rng, memory (virtio-*), crypto


# ------------------------------------------------------------------ the planner


class _Greedy:
    def __init__(self, tree: etree._ElementTree, original_controllers: list[etree._Element]) -> None:
        problem = read_problem(tree)
        self.devices_el = _first(tree.getroot(), "devices")
        self.pcie_root = problem.machine.pcie
        self.family = problem.machine.family
        self.implicit_sata = problem.machine.implicit_sata
        self.gap_controller = problem.machine.gap_controller  # qemuDomainPCIAddressSetCreate's default
        original = {id(el) for el in original_controllers}
        mmio = problem.machine.family.startswith("virt") and _has_mmio(self.devices_el)
        # read_problem fills index gaps itself; libvirt adds those buses on its own schedule: drop them.
        for bus in problem.buses.values():
            if bus.added and bus.element is not None:
                remove_element(bus.element)
        self.pci: dict[int, _Dev] = {}  # index -> PCI controller in def
        # the elements with an <address> (every element read here is a child of <devices>): one query
        # costs less than a look at each element
        self.addressed = set(_ADDRESSED(self.devices_el))
        for bus in problem.buses.values():
            if bus.added or bus.element is None or bus.index == 0:
                continue
            el = bus.element
            self.pci[bus.index] = _Dev(el, "controller", CONTROLLER_CONNECT[bus.model.name],
                                       _present(bus.address, bus.bus_pin), el not in self.addressed,
                                       bus.model.name, ctype="pci", index=bus.index)
        self.bus_models = {i: b.model.name for i, b in problem.buses.items() if not b.added}
        self.bus_hotplug = {
            i: not (b.element is not None and (t := _first(b.element, "target")) is not None
                    and t.get("hotplug") == "off")
            for i, b in problem.buses.items() if not b.added
        }
        self.max_idx = max(self.bus_models)
        self.added: dict[int, str] = {}  # controllers libvirt added: index -> model
        self.devs: list[_Dev] = []
        for d in problem.devices:
            if d.kind == "crypto" and device_class("crypto", d.model).cls == "none":
                continue  # libvirt before 9.1 has no <crypto> device: it drops the element on define
            for member in [d, *d.companions]:
                if member.address is None and member.bus_pin is None and mmio and _mmio_primed(member):
                    continue
                self.devs.append(self._dev(member))
        self.videos = [el for el in _all(self.devices_el, "video")]
        primary = next((v for v in self.videos if (m := _first(v, "model")) is not None
                        and m.get("primary") == "yes"), None)
        if primary is not None:  # libvirt keeps the primary video first in def->videos
            self.videos.remove(primary)
            self.videos.insert(0, primary)
        implicit = [c for c in _all(self.devices_el, "controller") if id(c) not in original]
        implicit.sort(key=self._implicit_rank)
        # The parser sorts the input's controllers; implicit ones are appended (virDomainDefAddController).
        given = [c for c in _all(self.devices_el, "controller") if id(c) in original]
        self.controller_els = _sorted_insert(given, _controller_key) + implicit
        self.disk_els = _sorted_insert(_all(self.devices_el, "disk"), _disk_key)
        self._kinds = self._make_kind_lists()
        # the devices in the order of qemuDomainPCIAddressSetCreate's collection (virDomainDeviceInfoIterate)
        # around the PCI controllers, which go first in the controller list, and of
        # qemuDomainAssignDevicePCISlots after them: the lists do not change after reading
        at = COLLECT_ORDER.index("controller")
        self._collect_head = [d for kind in COLLECT_ORDER[:at] for d in self._kind_list(kind)]
        self._collect_tail = [d for kind in COLLECT_ORDER[at:] for d in self._kind_list(kind)]
        self._assign_order = [d for kind in ASSIGN_ORDER for d in self._kind_list(kind)]

    # -------------------------------------------------------------- reading

    def _implicit_rank(self, el: etree._Element) -> int:
        """The order libvirt adds implicit controllers: the QEMU driver's defaults (USB, SATA 0 on q35,
        the PCI root) in qemuDomainDefAddDefaultDevices, then virDomainDefAddImplicitControllers'."""
        ctype = el.get("type") or ""
        if ctype == "sata" and self.implicit_sata and el.get("index") == "0":
            return 1
        return IMPLICIT_ORDER.index(ctype) if ctype in IMPLICIT_ORDER else len(IMPLICIT_ORDER)

    def _dev(self, d: Device) -> _Dev:
        el = d.element
        kind = d.kind
        dev = _Dev(el, kind, _device_flags(d), _present(d.address, d.bus_pin), el not in self.addressed,
                   d.model)
        if kind == "interface" and el.get("type") == "hostdev":
            dev.hostdev_net = True
        if kind == "controller":
            dev.ctype = el.get("type") or ""
            dev.index = int(el.get("index", "0"), 0)
            if dev.ctype == "usb":
                dev.usb_index = dev.index
            if dev.ctype == "scsi" and el.get("model") is None:
                # qemuDomainGetSCSIControllerModel: lsilogic whenever QEMU has it (x86, aarch64, riscv64
                # QEMU 7.2 all do), a conventional PCI device
                dev.model = "lsilogic"
                dev.flags = AUTOASSIGN | PCI_DEVICE
        if kind == "hostdev" and el.get("type") == "scsi_host" and el.get("model") == "virtio-transitional":
            dev.flags = AUTOASSIGN | PCI_DEVICE  # transitional vhost-scsi works only in conventional slots
        if (kind == "hostdev" or dev.hostdev_net) and self.pcie_root and d.model == "pci":
            # addressed hostdevs are taken as PCIe; otherwise libvirt asks the host's sysfs
            pcie = dev.user is not None or _host_device_is_pcie(el)
            dev.flags = AUTOASSIGN | (PCIE_DEVICE if pcie else PCI_DEVICE)
        return dev

    def _kind_list(self, kind: str) -> list[_Dev]:
        """The devices of one libvirt list, in libvirt's order (the lists do not change after reading;
        callers only read them)."""
        return self._kinds.get(kind, [])

    def _make_kind_lists(self) -> dict[str, list[_Dev]]:
        """Every libvirt list, from one pass over the devices."""
        kinds: dict[str, list[_Dev]] = {}
        for d in self.devs:  # hostdevs of <interface type='hostdev'> are inserted first, at parse time
            kinds.setdefault("hostdev-net" if d.hostdev_net else d.kind, []).append(d)
        if "hostdev-net" in kinds:
            kinds["hostdev"] = kinds.pop("hostdev-net") + kinds.get("hostdev", [])
        for kind, order in (("controller", self.controller_els), ("disk", self.disk_els),
                            ("video", self.videos)):
            if kind in kinds:
                by_el = {id(d.element): d for d in kinds[kind]}
                kinds[kind] = [by_el[id(c)] for c in order if id(c) in by_el]
        return kinds

    def _pci_controllers(self) -> list[_Dev]:
        """PCI controllers in def->controllers order: the input's by index, then those libvirt added."""
        return ([self.pci[i] for i in sorted(self.pci) if i not in self.added]
                + [self.pci[i] for i in sorted(self.added)])

    def _address(self, d: _Dev) -> PciAddress | None:
        return d.assigned if d.assigned is not None else d.user

    # -------------------------------------------------------------- the passes

    def _address_set(self, nbuses: int, dry_run: bool,
                     limit: tuple[Collection[int], int] | None = None) -> _AddressSet:
        """qemuDomainPCIAddressSetCreate: bus table + every address already in the definition."""
        addrs = _AddressSet(nbuses, dry_run, limit)
        for index, model in self.bus_models.items():
            addrs.buses[index].set_model(model, self.bus_hotplug.get(index, True))
        for index, model in self.added.items():
            addrs.buses[index].set_model(model)
        default = self.gap_controller
        for bus in addrs.buses[1:]:
            if bus.model is None:
                bus.set_model(default)
        for d in [*self._collect_head, *self._pci_controllers(), *self._collect_tail]:
            addr = d.assigned if d.assigned is not None else d.user
            if addr is None:
                continue
            if d.kind == "controller" and self._piix3_builtin(d, addr):
                continue  # reserved by the chipset step
            new = addrs.reserve(addr, d.flags, True)
            if new != addr:  # the dry run bumped the bus of a legacy device on a pure PCIe guest
                d.assigned = new
        return addrs

    def _piix3_builtin(self, d: _Dev, addr: PciAddress) -> bool:
        if d.kind != "controller" or addr.bus != 0 or addr.slot != 1 or d.index != 0:
            return False
        return ((d.ctype == "ide" and addr.function == 1)
                or (d.ctype == "usb" and d.model == "piix3-uhci" and addr.function == 2))

    def _untyped(self, d: _Dev) -> bool:
        """libvirt's address type NONE: no <address> in the input and none written since."""
        return d.no_address and d.assigned is None

    def _wanted(self, d: _Dev) -> bool:
        return self._address(d) is None

    def _reserve_next(self, addrs: _AddressSet, d: _Dev, function: int = -1) -> PciAddress:
        addr = addrs.reserve_next(d.flags, function)
        if not addrs.dry_run:  # a dry run only counts, it writes no address
            d.assigned = addr
        return addr

    def _chipset(self, addrs: _AddressSet) -> None:
        """qemuDomainValidateDevicePCISlotsPIIX3 / ...Q35: fixed slots and conventional places."""
        if self.family == "pc":
            self._chipset_piix3(addrs)
        elif self.family == "q35":
            self._chipset_q35(addrs)

    def _fix(self, d: _Dev, want: PciAddress, message: str) -> None:
        """Put a chipset device at its fixed address (written into the definition even in a dry run)."""
        have = self._address(d)
        if have is not None and have != want:
            raise GreedyError(message)
        d.assigned = want

    def _chipset_piix3(self, addrs: _AddressSet) -> None:
        flags = AUTOASSIGN | PCI_DEVICE
        for d in self._kind_list("controller"):
            if d.ctype == "ide" and d.index == 0:
                self._fix(d, _pci_address(0, 1, 1), "Primary IDE controller must have PCI address 0:0:1.1")
            elif d.ctype == "usb" and d.index == 0 and d.model == "piix3-uhci":
                self._fix(d, _pci_address(0, 1, 2),
                          "PIIX3 USB controller at index 0 must have PCI address 0:0:1.2")
            else:
                continue
            addrs.reserve(d.assigned, flags, True)  # type: ignore[arg-type]  # _fix set it
        addrs.reserve(_pci_address(0, 1, 0), flags, True)  # ISA bridge
        addrs.reserve(_pci_address(0, 1, 3), flags, True)  # ACPI / PM
        self._primary_video(addrs, _pci_address(0, 2, 0), flags)

    def _chipset_q35(self, addrs: _AddressSet) -> None:
        flags = PCIE_DEVICE
        for d in self._kind_list("controller") + self._pci_controllers():
            if d.ctype == "sata" and d.index == 0:
                # set, not reserved: slot 0x1f is reserved as a whole just below
                self._fix(d, _pci_address(0, 0x1F, 2),
                          "Primary SATA controller must have PCI address 0:0:1f.2")
            elif d.ctype == "usb" and d.model == "ich9-uhci1" and self._untyped(d):
                for slot in (0x1D, 0x1A):
                    want = _pci_address(0, slot, 0)
                    if not addrs.slot_in_use(want):
                        addrs.reserve(want, flags, True)
                        d.assigned = want
                        d.multi = True
                        break
            elif d.is_pci_controller and d.model == "dmi-to-pci-bridge" and self._untyped(d):
                want = _pci_address(0, 0x1E, 0)
                if not addrs.slot_in_use(want):
                    addrs.reserve(want, flags, True)
                    d.assigned = want
        addrs.reserve(_pci_address(0, 0x1F, 0), flags, True)  # ICH9 LPC
        addrs.reserve(_pci_address(0, 0x1F, 3), flags, True)  # SMBus
        self._primary_video(addrs, _pci_address(0, 1, 0), flags)
        want = _pci_address(0, 0x1B, 0)
        if not addrs.slot_in_use(want):
            sound = next((d for d in self._kind_list("sound") if d.model == "ich9" and self._wanted(d)), None)
            if sound is not None:
                addrs.reserve(want, flags, True)
                sound.assigned = want

    def _primary_video(self, addrs: _AddressSet, want: PciAddress, flags: int) -> None:
        if not self.videos:
            return
        first = self.videos[0]
        model = _first(first, "model")
        if model is not None and model.get("type") in ("none", "ramfb"):
            return
        video = next((d for d in self.devs if d.element is first), None)
        if video is None or not self._wanted(video):
            return
        addrs.validate(want, flags, True)
        if addrs.slot_in_use(want):
            self._reserve_next(addrs, video)
        else:
            addrs.reserve(want, flags, True)
            video.assigned = want

    def _assign_devices(self, addrs: _AddressSet) -> None:
        """qemuDomainAssignDevicePCISlots: unaddressed devices, class by class."""
        for d in self._pci_controllers():
            if self._wanted(d):
                self._reserve_next(addrs, d)
        reserve_next, write = addrs.reserve_next, not addrs.dry_run  # a dry run writes no address
        for d in self._assign_order:  # only the controller list holds controllers
            if d.assigned is not None or d.user is not None:
                continue
            if d.kind == "controller":
                if d.ctype == "ide" and d.index == 0:
                    continue
                if d.model in USB2_FUNCTION:
                    self._assign_usb2(addrs, d)
                    continue
            addr = reserve_next(d.flags)
            if write:
                d.assigned = addr

    def _assign_usb2(self, addrs: _AddressSet, d: _Dev) -> None:
        """USB2 companions share one slot, each at its fixed function."""
        function = USB2_FUNCTION[d.model]
        found = next((self._address(o) for o in self._kind_list("controller")
                      if o.model in USB2_FUNCTION and o.usb_index == d.usb_index
                      and self._address(o) is not None), None)
        if found is not None:
            addr = _pci_address(found.bus, found.slot, function)
            addrs.reserve(addr, d.flags, True)
            d.assigned = addr
        else:
            self._reserve_next(addrs, d, function)
        if d.model == "ich9-uhci1":
            d.multi = True

    def run(self, proceed: Callable[[dict[int, str]], bool] | None = None,
            limit: tuple[Collection[int], int] | None = None) -> bool:
        """qemuDomainAssignPCIAddresses. proceed: asked after the dry run with the controllers libvirt
        adds (index -> model, final: the real assignment adds no bus); False stops there, with nothing
        assigned. limit (indices, n): the dry run stops (raising _Stopped) as soon as it has grown more
        than n buses at indices not in indices. Returns whether it went on."""
        nbuses = self.max_idx + 1
        # Pass 1: a dry run that only finds out how many buses are needed.
        addrs = self._address_set(nbuses, dry_run=True, limit=limit)
        self._chipset(addrs)
        if not self.pcie_root and not all(b.fully_reserved() for b in addrs.buses):
            addrs.reserve_next(AUTOASSIGN | PCI_DEVICE)  # room for a future bridge
        self._assign_devices(addrs)
        if self.max_idx <= 0 and len(addrs.buses) > self.max_idx + 1 and self.pcie_root:
            addrs.reserve_next(AUTOASSIGN | PCIE_DEVICE)  # the spare root port for hot-plug
        index = 1
        while index < len(addrs.buses):  # reflect auto-added buses into controllers (in index order)
            if index not in self.bus_models and index not in self.added:
                model = addrs.buses[index].model
                assert model is not None
                self.added[index] = model
                addrs.reserve_next(CONTROLLER_CONNECT[model])
            index += 1
        if proceed is not None and not proceed(dict(self.added)):
            return False
        # their elements only now (nothing above reads them), in index order as libvirt adds them
        self._add_controllers()
        nbuses = len(addrs.buses)
        # Pass 2: the real assignment on the final bus count; nothing may grow now.
        addrs = self._address_set(nbuses, dry_run=False)
        self._chipset(addrs)
        self._assign_devices(addrs)
        self._write_back()
        return True

    # -------------------------------------------------------------- writing

    def _add_controllers(self) -> None:
        """The PCI controllers libvirt added, to be assigned in pass 2. Their elements are made only
        once their addresses are known (_place_controllers): nothing reads them before."""
        for index in sorted(self.added):
            model = self.added[index]
            self.pci[index] = _Dev(_UNBUILT, "controller", CONTROLLER_CONNECT[model], None, True, model,
                                   ctype="pci", index=index, fresh=True)

    def _place_controllers(self, fresh: list[_Dev]) -> None:
        """A new <controller type='pci'> for each bus libvirt added (fresh, in index order, assigned), with
        what _controller_defaults fills in, each after the last PCI controller (in document order) of a
        lower index, else after the last controller. Parsed from one text: it costs less than building
        them node by node."""
        text = "".join(_controller_text(d.model, d.index, d.assigned, d.multi)  # type: ignore[arg-type]
                       for d in fresh)
        made = list(etree.fromstring(f"<c>{text}</c>"))
        controllers = _all(self.devices_el, "controller")
        # None for a controller that is not PCI: kept beside the list, so the document is read once
        indices = [int(c.get("index", "0"), 0) if c.get("type") == "pci" else None for c in controllers]
        for d, el in zip(fresh, made, strict=True):
            index = d.index
            at = next((pos for pos in range(len(indices) - 1, -1, -1)
                       if indices[pos] is not None and indices[pos] < index), len(controllers) - 1)  # type: ignore[operator]
            if at < 0:
                self.devices_el.append(el)
            else:
                controllers[at].addnext(el)
            controllers.insert(at + 1, el)
            indices.insert(at + 1, index)
            d.element = el

    def _write_back(self) -> None:
        pci = [self.pci[i] for i in sorted(self.pci)]
        everyone = [*self.devs, *pci]
        # virDomainPCIAddressSetAllMulti: function 0 of a slot with other functions in use
        placed = [(d, d.assigned if d.assigned is not None else d.user) for d in everyone]
        shared = {(a.bus, a.slot) for _d, a in placed if a is not None and a.function}
        if shared:
            for d, a in placed:
                if a is not None and not a.function and (a.bus, a.slot) in shared:
                    d.multi = True
        fresh = [d for d in pci if d.fresh]
        if fresh:
            assert all(d.assigned is not None for d in fresh), "pass 2 places every controller it added"
            self._place_controllers(fresh)
        for d in self.devs:  # libvirt names the default USB / SCSI model it picked
            if d.kind == "controller" and d.ctype in ("usb", "scsi") and d.element.get("model") is None:
                _set_after(d.element, "index", "model", d.model)
        bare: list[_Dev] = []  # assigned, read without <address>: none yet (nothing before this adds one)
        for d in everyone:
            addr = d.assigned
            if d.fresh:
                continue  # made with its address
            if addr is not None:
                if d.no_address:
                    bare.append(d)
                else:
                    _set_address(d.element, addr, d.multi)
            elif d.multi and d.user is not None:
                a = _first(d.element, "address")
                if a is not None and a.get("multifunction") is None:
                    a.set("multifunction", "on")
        if bare:  # their <address> elements parsed from one text: it costs less than setting each attribute
            text = "".join(_address_text(d.assigned, d.multi) for d in bare)  # type: ignore[arg-type]
            for d, a in zip(bare, list(etree.fromstring(f"<c>{text}</c>")), strict=True):
                d.element.append(a)
        lowest_bus_nr = 256
        for d in pci:
            if not d.fresh and (target := _first(d.element, "target")) is not None \
                    and (bus_nr := target.get("busNr")) is not None:
                lowest_bus_nr = min(lowest_bus_nr, int(bus_nr, 0))
        for d in pci:
            index = d.index
            assert index is not None
            addr = d.assigned if d.assigned is not None else d.user
            assert addr is not None
            if not d.fresh:  # a fresh one is made with its defaults
                lowest_bus_nr = _controller_defaults(d.element, d.model, index, addr, lowest_bus_nr)
            if d.model == "pci-bridge" and index <= addr.bus:
                raise GreedyError(f"PCI controller at index {index} (0x{index:02x}) has "
                                  f"bus='0x{addr.bus:02x}', but index must be larger than bus", UNSUPPORTED)
        self._mirror_consoles()
        self._order_videos()

    def _mirror_consoles(self) -> None:
        """libvirt formats console N of an HVM guest as a copy of serial N when the console's target is
        a serial one (virDomainDefFormatInternal): it shows the serial's PCI address."""
        consoles = _all(self.devices_el, "console")
        if not consoles:
            return
        serials = _all(self.devices_el, "serial")
        serial_addr = {id(d.element): self._address(d) for d in self.devs if d.kind == "serial"}
        for n, console in enumerate(consoles):
            target = _first(console, "target")
            if n >= len(serials) or (target is not None and target.get("type") not in (None, "serial")):
                continue
            addr = serial_addr.get(id(serials[n]))
            if addr is not None:
                _set_address(console, addr, False)
            elif (a := _first(console, "address")) is not None and a.get("type") == "pci":
                remove_element(a)

    def _order_videos(self) -> None:
        """libvirt lists the primary video first."""
        if len(self.videos) < 2 or self.videos[0] is _all(self.devices_el, "video")[0]:
            return
        _all(self.devices_el, "video")[0].addprevious(self.videos[0])

    def controllers_added(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for model in self.added.values():
            out[model] = out.get(model, 0) + 1
        return out


_HEX2 = [f"0x{i:02x}" for i in range(256)]  # bus and slot as libvirt writes them
_HEX1 = [f"0x{i:x}" for i in range(8)]  # function


def _set_address(el: etree._Element, addr: PciAddress, multi: bool) -> None:
    a = _first(el, "address")
    keep_multi = None
    if a is None:
        a = etree.SubElement(el, "address")
    else:
        keep_multi = a.get("multifunction")
        a.attrib.clear()
    put = a.set
    put("type", "pci")
    put("domain", "0x0000")
    put("bus", _HEX2[addr.bus])
    put("slot", _HEX2[addr.slot])
    put("function", _HEX1[addr.function])
    if keep_multi is not None:
        put("multifunction", keep_multi)
    elif multi:
        put("multifunction", "on")


# The PCI controllers whose <target port> libvirt numbers from their address.
_PORTED = {name: m for name, m in controller_models().items() if m.target == "chassis-port"}


@cache
def _controller_parts(model: str) -> tuple[str, str, str]:
    """The text of the <controller type='pci'> libvirt adds of this model, around its index and its
    address: what _controller_defaults fills in (<model name>, <target chassisNr | chassis port>),
    attributes in libvirt's order. Returns the start up to the index, the tail of the <controller> tag,
    the <target>'s kind ("" for none). Added models have no busNr target (grow and the index gaps add
    ports and bridges): the lowest busNr in use is not known here."""
    m = controller_models()[model]
    assert m.target != "busNr", f"libvirt adds no {model}"
    name = MODEL_NAMES.get(model)
    for text in (model, name or ""):
        assert text.replace("-", "").isalnum(), f"{text!r} is written as is"
    model_el = f'<model name="{name}"/>' if name else ""
    return '<controller type="pci" index="', f'" model="{model}">{model_el}', m.target


@lru_cache(maxsize=4096)  # guests share their layouts: the same text again and again
def _controller_text(model: str, index: int, addr: PciAddress, multi: bool) -> str:
    """_controller_parts(model) at index, with its address."""
    start, tag_end, target = _controller_parts(model)
    number = str(index)
    if target == "chassisNr":
        target_el = f'<target chassisNr="{number}"/>'
    elif target == "chassis-port":
        port = _PORTED[model].port_number(addr.slot, addr.function)
        target_el = f'<target chassis="{number}" port="0x{port:x}"/>'
    else:
        target_el = ""
    return f"{start}{number}{tag_end}{target_el}{_address_text(addr, multi)}</controller>"


@lru_cache(maxsize=4096)  # guests share their layouts: the same text again and again
def _address_text(addr: PciAddress, multi: bool) -> str:
    """The <address> _set_address writes on an element without one, as text."""
    multifunction = ' multifunction="on"' if multi else ""
    return (f'<address type="pci" domain="0x0000" bus="{_HEX2[addr.bus]}" slot="{_HEX2[addr.slot]}" '
            f'function="{_HEX1[addr.function]}"{multifunction}/>')


# The element of a PCI controller libvirt added until _place_controllers makes it (nothing reads it).
_UNBUILT = etree.Element("controller")


def _child(el: etree._Element, tag: str) -> etree._Element:
    """The child element tag, created where libvirt writes it (<model> first, then <target>)."""
    child = _first(el, tag)
    if child is None:
        child = etree.Element(tag)
        model = _first(el, "model")
        el.insert(el.index(model) + 1 if tag == "target" and model is not None else 0, child)
    return child


def _set_after(el: etree._Element, after: str, name: str, value: str) -> None:
    """Set an attribute right after another one, where libvirt writes it."""
    items = list(el.attrib.items())
    el.attrib.clear()
    for k, v in items:
        el.set(k, v)
        if k == after:
            el.set(name, value)
    if el.get(name) is None:
        el.set(name, value)


def _default(el: etree._Element, name: str, value: str) -> None:
    if el.get(name) is None:
        el.set(name, value)


def _controller_defaults(el: etree._Element, model: str, index: int, addr: PciAddress,
                         lowest_bus_nr: int) -> int:
    """Model name and target values libvirt fills in; returns the lowest busNr in use."""
    name = MODEL_NAMES.get(model)
    if name and (_first(el, "model") is None or _first(el, "model").get("name") is None):
        _child(el, "model").set("name", name)
    m = controller_models()[model]
    if m.target == "chassisNr":
        tgt = _child(el, "target")
        _default(tgt, "chassisNr", str(index))
    elif m.target == "chassis-port":
        tgt = _child(el, "target")
        _default(tgt, "chassis", str(index))
        _default(tgt, "port", f"0x{m.port_number(addr.slot, addr.function):x}")
    elif m.target == "busNr":
        tgt = _child(el, "target")
        if tgt.get("busNr") is None:
            if lowest_bus_nr <= 2:
                raise GreedyError("No free busNr lower than current lowest busNr is available to auto-assign "
                                  f"to bus {addr.bus}. Must be manually assigned", UNSUPPORTED)
            lowest_bus_nr -= 2
            tgt.set("busNr", str(lowest_bus_nr))
    return lowest_bus_nr


def _add_implicit_video(devices: etree._Element, tree: etree._ElementTree) -> None:
    """virDomainDefAddImplicitVideo: graphics without a video get the machine's default video
    (read_problem does not add it)."""
    if _first(devices, "graphics") is None or _first(devices, "video") is not None:
        return
    try:
        machine, _arch = _machine(tree)
    except InputError:
        return  # read_problem refuses the machine, with its own message
    video = etree.Element("video")
    etree.SubElement(video, "model", type=machine.default_video, heads="1", primary="yes")
    after = [c for c in devices if c.tag in ("graphics", "sound", "audio")]
    after[-1].addnext(video)


def _index_controllers(devices: etree._Element) -> None:
    """Give unindexed controllers their index before implicit ones are added, as libvirt's parser does
    (read_problem adds an implicit SATA 0 before indexing a user's unindexed SATA controller)."""
    _assign_usb_indices(devices)
    for ctype in {c.get("type") or "" for c in _all(devices, "controller")} - {"usb", "pci"}:
        _assign_indices(devices, ctype)


def _plain(d: Device) -> bool:
    """Does the dry run reserve this device of pciplan's reading with reserve_next(AUTOASSIGN |
    PCI_DEVICE or PCIE_DEVICE) on a q35 guest? Unaddressed, not integrated, of a kind no override
    (_Dev: SCSI without a model, hostdevs and their interfaces), chipset step (_chipset_q35,
    _primary_video: SATA, ICH9 USB, the first ICH9 sound, the primary video) or special assignment
    (_assign_devices: IDE 0, USB2 companions) touches."""
    if d.address is not None or d.bus_pin is not None or d.facts.integrated:
        return False
    el = d.element
    if d.kind == "interface":
        return el.get("type") != "hostdev"
    if d.kind == "controller":
        ctype = el.get("type")
        return ((ctype == "usb" and d.model not in USB2_FUNCTION) or ctype == "virtio-serial"
                or (ctype == "scsi" and el.get("model") is not None))
    return d.kind in ("disk", "memballoon", "rng", "input")


def new_buses_at_least(problem: Problem) -> int:
    """A lower bound, from pciplan's reading of the guest (read_problem, prepared), on how many PCI
    controllers greedy_plan_tree's dry run adds at indices problem.buses does not have; 0 where it
    does not know one. Only for a q35 guest whose only PCI controller is the root (problem.buses is
    {0}: so no input address names another bus, read_problem would have filled it in), where it holds
    because, in the dry run:
    - the bus table starts with the root alone (every input controller index is in problem.buses), so
      every bus it grows is at an index problem.buses does not have, and becomes a controller added;
    - no user address is off bus 0, so none takes a place on a grown bus or grows one;
    - each _plain PCIe endpoint takes reserve_next(AUTOASSIGN | PCIE_DEVICE) (q35 primes no
      virtio-mmio): a free slot on a bus that fits, i.e. a pcie-root-port or downstream port (one slot
      each; pcie-root has no AUTOASSIGN), so a bus of its own, and none is there at the start: one
      grown root port each (grown one at a time, each taken by the reservation it was grown for);
    - with one grown, the spare port (run: max_idx 0, a bus grown, pcie root) is one more such
      reserve_next while every bus that fits is taken: one more root port;
    - a _plain conventional device (AUTOASSIGN | PCI_DEVICE) fits none of those (pcie-root has no
      AUTOASSIGN, root ports take no PCI device), and no bus has PCI_BRIDGE until grow builds the bridge
      path: the first reservation of a conventional device grows a root port that only fits a
      pcie-to-pci-bridge, and that bridge: two buses more, neither one the PCIe endpoints fit.
    tests/test_ties.py checks the bound against the whole dry run over the corpus."""
    if problem.machine.family != "q35" or set(problem.buses) != {0}:
        return 0
    pcie = conventional = 0
    for d in problem.devices:
        if _plain(d):
            if d.endpoint == "pcie":
                pcie += 1
            else:
                conventional += 1
    if not pcie:
        return 0
    return pcie + 1 + (2 if conventional else 0)


def greedy_plan(xml: str) -> GreedyResult:
    """Assign PCI addresses and add controllers exactly as libvirt 9.0 does on define."""
    start = time.perf_counter()
    try:
        tree = parse_domain_bytes(xml.encode())
    except InputError as exc:
        return GreedyResult(False, str(exc), None, {}, time.perf_counter() - start)
    result = greedy_plan_tree(tree)
    if result.ok:
        result.xml = serialize_text(tree)
    result.seconds = time.perf_counter() - start
    return result


def greedy_plan_tree(tree: etree._ElementTree,
                     proceed: Callable[[dict[int, str]], bool] | None = None,
                     limit: tuple[Collection[int], int] | None = None) -> GreedyResult:
    """greedy_plan on a parsed domain, completed in place (its xml stays None): for callers that go on
    with the tree, so nothing is written out and parsed again. proceed: asked after libvirt's dry run
    with the PCI controllers libvirt adds (index -> model); when it says False the plan stops there
    (not ok: a caller that only wants a layout with those controllers is spared the rest).
    limit (indices, n): stop (not ok) as soon as the dry run has added more than n buses at indices not
    in indices. Every bus the dry run grows becomes a controller libvirt adds (the dry run only ever
    adds buses), so that is as soon as proceed is sure to be given more than n such controllers."""
    start = time.perf_counter()
    try:
        devices = _first(tree.getroot(), "devices")
        if devices is not None:
            _index_controllers(devices)
            _add_implicit_video(devices, tree)
        original = list(_all(devices, "controller")) if devices is not None else []
        planner = _Greedy(tree, original)
        if not planner.run(proceed, limit):
            return GreedyResult(False, "stopped after the dry run", None, planner.controllers_added(),
                                time.perf_counter() - start)
    except _Stopped:
        return GreedyResult(False, "stopped in the dry run: more new buses than the limit", None, {},
                            time.perf_counter() - start)
    except (InputError, GreedyError) as exc:
        return GreedyResult(False, str(exc), None, {}, time.perf_counter() - start)
    return GreedyResult(True, None, None, planner.controllers_added(), time.perf_counter() - start)

