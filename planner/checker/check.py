"""Independent checker of a libvirt domain's PCI/PCIe layout.

Judges any domain XML against the rules of libvirt 9.0, QEMU 7.2 and SeaBIOS and lists every violation.
It deliberately shares no code or tables with the solver: it is the second opinion on the solver's output,
so it keeps its own small tables of facts (sources: /work/shared/libvirt-pci-spec.md, libvirt's
src/conf/domain_addr.c and src/qemu/qemu_domain_address.c, QEMU's docs/pcie.txt, and experiments with
the real libvirt 9.0 here). One exception: a firmware its tables do not name is judged by its entry in
models/firmware.toml, read as data (_added_firmware).

Where libvirt is permissive it is followed (user-given addresses may put a PCI device into a PCIe slot
and the reverse). Some rules are stricter than libvirt on purpose because QEMU or the firmware fails
later or because planner output must be final: "parent-index", "chassis-duplicate", "busnr-partition",
"io-windows", "mmio-count", "index-gap", "bus-missing", "multifunction" and, with
require_complete, "unaddressed", "index-missing" and "root-missing".

Warning level (see WARNING_RULES), because libvirt and QEMU accept the XML as it stands:
"multifunction-flag" (function 0 of a shared slot without multifunction='on': libvirt adds it),
"function0" (a slot without function 0: libvirt writes a lone ich9-ehci1 at function 7 itself) and
"stale-address" (a PCI address on a device libvirt never addresses: libvirt drops it).
"""

from __future__ import annotations

import contextlib
import functools
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from itertools import chain, islice
from typing import NamedTuple

from lxml import etree


@dataclass(frozen=True)
class Violation:
    element: str  # names the element, e.g. "interface[2] (mac 52:54:00:..)", "disk vdb"
    rule: str  # short stable rule id, e.g. "double-use"
    message: str  # one line, plain words


# Every rule id check_domain reports, with what it means.
RULES: dict[str, str] = {
    "machine": "machine type is not q35, pc (i440fx) or aarch64/riscv64 virt",
    "root-model": "index 0 must be the machine's root (pc: pci-root, others: pcie-root), and only index 0",
    "root-missing": "no index 0 root controller (require_complete)",
    "controller-model": "PCI controller without a model or with an unknown one",
    "model-machine": "controller model the machine does not support (pxb, pxb-pcie, IDE)",
    "index-missing": "PCI controller without index (require_complete)",
    "index-range": "PCI controller index above 255 or not a number",
    "index-duplicate": "two PCI controllers with one index",
    "index-gap": "an index below the highest is missing; libvirt would add a controller there",
    "parent-index": "a controller plugs into a bus whose index is not lower than its own; QEMU fails",
    "parent-index-bridge": "a pci-bridge plugs into a bus whose index is not lower than its own (libvirt)",
    "unaddressed": "a device that needs a PCI address has none, a partial one, or bus 0 slot 0",
    "bad-address": "a PCI address value is not a number",
    "domain": "PCI domain other than 0",
    "bus-missing": "the address names a bus no PCI controller provides",
    "slot-range": "slot outside the range of the bus model",
    "function-range": "function above 7",
    "connect-type": "the bus does not take this kind of device or controller (libvirt's given-address rules)",
    "integrated": "an integrated device (virtio iommu) off bus 0",
    "double-use": "two devices on one bus/slot/function",
    "reserved": "a device on a chipset function libvirt keeps (q35 00:1f.0/.2/.3, pc 00:01.0/.2/.3)",
    "reserved-qemu": "a device on pc 00:01.1, the PIIX3 IDE function: libvirt defines it, QEMU refuses",
    "fixed-address": "q35 SATA 0, pc IDE 0 or pc PIIX3 USB 0 away from its fixed address",
    "function0": "warning: a slot is used without function 0 (libvirt and QEMU accept it, and libvirt "
                 "itself writes a lone ich9-ehci1 at function 7; guests may not scan the slot)",
    "multifunction": "function 0 of a shared slot says multifunction='off'; QEMU fails",
    "multifunction-flag": "warning: function 0 of a shared slot lacks multifunction='on' (libvirt adds it)",
    "stale-address": "warning: a PCI address on a device libvirt never addresses (usb/memballoon/video "
                     "model 'none', graphics, audio ...); libvirt drops it, so it occupies nothing",
    "target-option": "a <target> attribute the controller model does not take",
    "target-range": "chassis, port or chassisNr out of range",
    "chassis-duplicate": "two root/downstream ports with one chassis number (defaults: chassis = index)",
    "busnr-range": "busNr outside 1-254, or none and libvirt cannot choose one",
    "busnr-duplicate": "two expander buses with one busNr",
    "busnr-partition": "bus numbers behind an expander bus, or of the root hierarchy, reach the next busNr",
    "bus-count": "more than 256 bus numbers in the PCI domain",
    "numa-node": "<node> on a controller other than an expander bus, or not below the number of NUMA cells",
    "io-windows": "more I/O space (4 KiB bridge/port windows and root-bus BARs) than SeaBIOS has",
    "mmio-count": "more virtio-mmio devices than the virt machine has transports (aarch64: 32, riscv64: 8)",
}

# Rules that describe XML libvirt accepts and silently completes; callers may treat them as warnings.
WARNING_RULES = frozenset({"multifunction-flag", "stale-address", "function0"})


def _space_exclusions() -> list[dict]:
    """Placements outside pciplan's valid space (models/space.toml), each with its reason. Read here
    on its own, not through the planner, so that the checker stays independent of the model."""
    import tomllib
    from importlib import resources

    return tomllib.loads(resources.files("planner.models").joinpath("space.toml").read_text())["exclude"]


# (bus model, connect type) -> rule id, for the placements libvirt accepts but the space excludes.
SPACE_EXCLUDED: dict[tuple[str, str], str] = {}
for _x in _space_exclusions():
    RULES[_x["rule"]] = "warning: " + _x["reason"]
    for _bus in _x["buses"]:
        SPACE_EXCLUDED[_bus, _x["connect"]] = _x["rule"]
del _x, _bus
# Warnings for placements outside the valid space: libvirt and QEMU accept them, pciplan never plans them.
SPACE_RULES = frozenset(SPACE_EXCLUDED.values())
WARNING_RULES = WARNING_RULES | SPACE_RULES

# ---------------------------------------------------------------------------------------------------
# Facts

Q35, PC, AARCH64_VIRT, RISCV64_VIRT = "q35", "pc", "aarch64-virt", "riscv64-virt"
X86_FAMILIES = frozenset({Q35, PC})
ROOT_MODEL = {PC: "pci-root", Q35: "pcie-root", AARCH64_VIRT: "pcie-root", RISCV64_VIRT: "pcie-root"}

# The guest firmware's I/O space for PCI (root-bus BARs plus 4 KiB-aligned bridge windows), by
# (firmware, machine family, <acpi/> present): (largest total in bytes, most top-level windows or 0).
# SeaBIOS 1.16.2 src/fw/pciinit.c: the total must stay below pci_io_low_end - 0x1000, where
# pci_io_low_end is 0xa000 on i440fx and, on q35, the ACPI PM base: 0x600 with ACPI (so 0x10000) and
# 0xb000 without. OVMF/AAVMF (edk2 2022.11), measured: q35 0x6000-0xffff and 9 windows set up
# reliably only to 8; pc 0xc000-0xffff, 3 windows; aarch64 virt 64 KiB, 16 windows.
FIRMWARE_IO = {
    ("seabios", PC, True): (0x9000 - 1, 0), ("seabios", PC, False): (0x9000 - 1, 0),
    ("seabios", Q35, True): (0xF000 - 1, 0), ("seabios", Q35, False): (0xA000 - 1, 0),
    ("ovmf", Q35, True): (0x9000, 8), ("ovmf", Q35, False): (0x9000, 8),
    ("ovmf", PC, True): (0x4000, 3), ("ovmf", PC, False): (0x4000, 3),
    ("aavmf", AARCH64_VIRT, True): (0x10000, 16), ("aavmf", AARCH64_VIRT, False): (0x10000, 16),
}
UEFI = frozenset({"ovmf", "aavmf"})
# I/O BARs of chipset functions QEMU builds in and the XML never lists: q35's ICH9 SMBus at 00:1f.3 has
# 64 bytes (the ICH9 SATA at 00:1f.2 is the XML's sata controller 0, counted with the devices).
CHIPSET_IO_BYTES = {Q35: 64}
FIRMWARE_LABEL = {"seabios": "SeaBIOS", "ovmf": "OVMF", "aavmf": "AAVMF", "none": "no PCI firmware"}
# The machine families' names in models/*.toml, where they differ from this module's.
MODELS_FAMILY = {AARCH64_VIRT: "virt-aarch64", RISCV64_VIRT: "virt-riscv64"}


# A firmware's measured budget is a fact users add: models/firmware.toml is the one place a new firmware
# goes, so a firmware the hand-written tables above do not name is judged by that file's entry (label,
# padding of empty ports, budgets, loader file names). The tables above stay this module's own for the
# firmware they name: reading the planner's data for those would make the checker agree with the
# planner by construction. The file is read as data; no planner code is imported.
@functools.cache
def _added_firmware() -> dict[str, dict]:
    """The firmware models/firmware.toml names beyond this module's tables, by name."""
    try:
        text = (resources.files("planner.models") / "firmware.toml").read_text()
    except (ModuleNotFoundError, OSError):
        return {}
    return {name: d for name, d in tomllib.loads(text).items() if name not in FIRMWARE_LABEL}


def firmware_budget(name: str | None, family: str | None, acpi: bool) -> tuple[int, int] | None:
    """(largest I/O total in bytes, most top-level windows or 0) of a firmware on a machine family, or
    None where no budget is known."""
    budget = FIRMWARE_IO.get((name or "", family or "", acpi))
    if budget is not None or name in FIRMWARE_LABEL:
        return budget
    d = _added_firmware().get(name or "", {}).get(MODELS_FAMILY.get(family or "", family or ""))
    if not isinstance(d, dict) or "io_max" not in d:
        return None
    return d["io_max"] if acpi else d.get("io_max_noacpi", d["io_max"]), d.get("max_windows", 0)


def firmware_label(name: str | None) -> str | None:
    """The firmware's name as people write it (OVMF); an unknown name stays as it is."""
    return FIRMWARE_LABEL.get(name or "", _added_firmware().get(name or "", {}).get("label", name))


def firmware_pads(name: str | None) -> bool:
    """The firmware gives every empty hot-plug port a 4 KiB I/O window (edk2 does)."""
    return name in UEFI or bool(_added_firmware().get(name or "", {}).get("pads_spares"))
IO_WINDOW = 4096
# I/O BAR sizes as QEMU 7.2's `info pci` shows them (a virtio device's is its legacy BAR, present when
# it is transitional: on a conventional bus or the root bus, or model virtio-transitional).
IO_BAR_BYTES = {
    ("interface", "virtio"): 32, ("interface", "virtio-transitional"): 32, ("interface", "e1000"): 64,
    ("interface", "e1000e"): 32, ("interface", "rtl8139"): 256, ("disk", "virtio"): 128,
    ("controller", "scsi"): 256, ("controller", "virtio-scsi"): 64, ("controller", "virtio-serial"): 64,
    ("controller", "usb"): 32, ("controller", "sata"): 32, ("controller", "ide"): 16,
    ("memballoon", "virtio"): 64, ("rng", "virtio"): 32, ("vsock", "virtio"): 32, ("filesystem", "9p"): 64,
    ("video", "qxl"): 32, ("serial", "pci-serial"): 8, ("hostdev", "pci"): 256, ("interface", "hostdev"): 256,
    ("hostdev", "scsi_host"): 64, ("input", "virtio-transitional"): 32,
}
NO_IO_BAR = {"watchdog", "sound", "shmem", "memory", "iommu", "crypto"}
# virtio-mmio transports QEMU 7.2's virt machines offer.
MMIO_TRANSPORTS = {AARCH64_VIRT: 32, RISCV64_VIRT: 8}

ENDPOINT = "endpoint"  # libvirt's PCI_DEVICE / PCIE_DEVICE: user-given addresses may swap the two

# What each bus model accepts downstream (libvirt virDomainPCIAddressBusSetModel), and its slot range.
BUS_ACCEPTS: dict[str, frozenset[str]] = {
    "pci-root": frozenset({ENDPOINT, "pci-bridge", "pci-expander-bus"}),
    "pcie-root": frozenset({ENDPOINT, "pcie-root-port", "dmi-to-pci-bridge", "pcie-expander-bus"}),
    "pci-bridge": frozenset({ENDPOINT, "pci-bridge"}),
    "pci-expander-bus": frozenset({ENDPOINT, "pci-bridge"}),
    "dmi-to-pci-bridge": frozenset({ENDPOINT, "pci-bridge"}),
    "pcie-to-pci-bridge": frozenset({ENDPOINT, "pci-bridge"}),
    "pcie-root-port": frozenset({ENDPOINT, "pcie-switch-upstream-port", "pcie-to-pci-bridge"}),
    "pcie-switch-downstream-port": frozenset({ENDPOINT, "pcie-switch-upstream-port", "pcie-to-pci-bridge"}),
    "pcie-switch-upstream-port": frozenset({"pcie-switch-downstream-port"}),
    "pcie-expander-bus": frozenset({"pcie-root-port", "dmi-to-pci-bridge"}),
}
SLOT_RANGE: dict[str, tuple[int, int]] = {
    "pci-root": (1, 31),  # slot 0 is the host bridge
    "pcie-root": (1, 31),
    "pci-bridge": (1, 31),  # slot 0 is the SHPC
    "pcie-to-pci-bridge": (1, 31),
    "pci-expander-bus": (0, 31),
    "dmi-to-pci-bridge": (0, 31),
    "pcie-switch-upstream-port": (0, 31),
    "pcie-expander-bus": (0, 31),
    "pcie-root-port": (0, 0),
    "pcie-switch-downstream-port": (0, 0),
}
ROOT_MODELS = frozenset({"pci-root", "pcie-root"})
PCI_CONTROLLER_MODELS = frozenset(BUS_ACCEPTS)
PXB_MODELS = frozenset({"pci-expander-bus", "pcie-expander-bus"})
PORT_MODELS = frozenset({"pcie-root-port", "pcie-switch-downstream-port"})  # one chassis namespace in QEMU
# Bridges to conventional PCI: SeaBIOS gives each an I/O window, whatever sits behind it.
CONVENTIONAL_BRIDGES = frozenset(
    {"pci-bridge", "pcie-to-pci-bridge", "dmi-to-pci-bridge", "pci-expander-bus"}
)
# Machines that accept the expander buses (libvirt 9.0: qemu_validate.c).
PXB_MACHINES = {"pci-expander-bus": frozenset({PC}), "pcie-expander-bus": frozenset({Q35, AARCH64_VIRT})}

# <target> options libvirt accepts per model (anything else: "Option ... is not valid").
TARGET_OPTIONS: dict[str, frozenset[str]] = {
    "chassis": PORT_MODELS,
    "port": PORT_MODELS,
    "chassisNr": frozenset({"pci-bridge"}),
    "busNr": PXB_MODELS,
    "hotplug": frozenset({"pci-root", "pcie-root-port", "pcie-switch-downstream-port"}),
}
TARGET_RANGE = {"chassis": (0, 255), "port": (0, 255), "chassisNr": (1, 255), "busNr": (1, 254)}

MAX_INDEX = 255
MAX_BUS_NUMBERS = 256

# Default models libvirt 9.0 fills in (seen with the embedded driver here).
DEFAULT_USB_MODEL = {
    Q35: "qemu-xhci",
    PC: "piix3-uhci",
    AARCH64_VIRT: "qemu-xhci",
    RISCV64_VIRT: "piix3-uhci",
}
DEFAULT_NET_MODEL = {Q35: "rtl8139", PC: "rtl8139", AARCH64_VIRT: "virtio", RISCV64_VIRT: "virtio"}
DEFAULT_VIDEO_MODEL = {Q35: "cirrus", PC: "cirrus", AARCH64_VIRT: "virtio", RISCV64_VIRT: "virtio"}
DEFAULT_SCSI_MODEL = "lsilogic"

USB_NO_PCI = frozenset({"none", "qusb1", "qusb2"})
USB_XHCI = frozenset({"qemu-xhci", "nec-xhci"})
SCSI_NO_PCI = frozenset({"ncr53c90", "ibmvscsi"})  # built-in ESP; spapr-vio
SOUND_PCI = frozenset({"ich6", "ich9", "ac97", "es1370"})
VIDEO_NO_PCI = frozenset({"none", "ramfb", "gop"})
# Elements whose PCI address libvirt 9.0 silently removes (or replaces with its own address type).
STALE_TAGS = frozenset({"graphics", "audio", "lease", "hub", "channel"})
VIRTIO_MODELS = frozenset({"virtio", "virtio-non-transitional"})
TRANSITIONAL = "virtio-transitional"


# ---------------------------------------------------------------------------------------------------
# Parsed domain


class PciAddress(NamedTuple):  # a tuple: made for every addressed element, a frozen dataclass costs 3x
    domain: int
    bus: int
    slot: int
    function: int
    multifunction: str | None

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"


@dataclass(frozen=True)
class DeviceKind:
    """How a device connects over PCI."""

    io_bar_on_port: bool  # has an I/O BAR when plugged into a root/downstream port
    virtio: bool = False  # libvirt would give it virtio-mmio on virt machines (address priming)
    integrated: bool = False  # must sit on bus 0
    conventional: bool = False  # libvirt's PCI_DEVICE: a conventional PCI endpoint


class PciUser:
    """One element that occupies (or needs) a PCI function: a device or a non-root PCI controller."""

    __slots__ = ("element", "_name", "connect", "kind", "address", "address_type", "incomplete", "index",
                 "kids", "position")

    def __init__(self, element: etree._Element, name: str | None, connect: str, kind: DeviceKind,
                 index: int | None = None, kids: Kids | None = None, position: int = 0) -> None:
        self.element = element
        self._name = name  # None: worded from position when first asked for (most are never named)
        self.connect = connect  # ENDPOINT or the controller model it is
        self.kind = kind
        self.address: PciAddress | None = None
        self.address_type: str | None = None  # type attribute of the <address> child, None when absent
        self.incomplete = ""  # why the PCI address is incomplete, for require_complete
        self.index = index  # the controller index when this is a PCI controller
        self.kids = kids  # the element's _kids, where read
        self.position = position  # the element's 1-based position among its tag in <devices>

    @property
    def name(self) -> str:
        """How the reports name it (_describe)."""
        if self._name is None:
            self._name = _describe(self.element, self.position, self.kids)
        return self._name


class PciController:
    __slots__ = ("element", "_name", "index", "model", "user", "target", "kids")

    def __init__(self, element: etree._Element, name: str | None, index: int, model: str,
                 user: PciUser | None, target: etree._Element | None = None,
                 kids: Kids | None = None) -> None:
        self.element = element
        self._name = name  # None: worded when first asked for
        self.index = index
        self.model = model
        self.user = user  # None for the root
        self.target = target  # its <target>, read once: several rules look at it
        self.kids = kids

    @property
    def name(self) -> str:
        if self._name is None:
            self._name = self.user.name if self.user is not None else _describe(self.element, 0, self.kids)
        return self._name


ADDRESS_FIELDS = ("domain", "bus", "slot", "function")
_new_address = tuple.__new__  # PciAddress(*fields) without the named tuple's own __new__ frame


def _used_indexes(children: list[etree._Element], ctype: str) -> set[int]:
    """The indexes the controllers of a type give (libvirt gives one without an index the lowest free)."""
    used = set()
    for elem in children:
        if elem.tag == "controller" and elem.get("type", "") == ctype:
            text = elem.get("index")
            if text is None:
                continue
            try:
                used.add(_parse_number(text))
            except ValueError:
                continue
    return used


class _Skip(Exception):
    """Internal: this element cannot be judged further."""


@functools.lru_cache(maxsize=4096)  # a document repeats the same few values ("0x00", "0x1") many times
def _parse_number(text: str) -> int:
    # libvirt reads these with strtoul base 0: 0x.. hex, leading 0 octal, else decimal.
    text = text.strip()
    if text.lower().startswith("0x"):
        return int(text[2:], 16)
    if len(text) > 1 and text.startswith("0"):
        return int(text[1:], 8)
    return int(text, 10)


def _lower(value: str | None) -> str | None:
    return value.lower() if value is not None else None


def _child(elem: etree._Element, tag: str) -> etree._Element | None:
    """elem.find(tag) for a plain tag name, without ElementPath's cost (it adds up over a fleet)."""
    return next(elem.iterchildren(tag), None)


Kids = dict  # an element's first child of each tag (_kids): the rules look up several of them


def _kids(elem: etree._Element) -> Kids:
    """{tag: first child with that tag} of elem, read in one pass: elem.find(tag) for each tag at once,
    without a search per look-up."""
    kids: Kids = {}
    for c in elem:
        tag = c.tag
        if tag not in kids:
            kids[tag] = c
    return kids


def _kid_attr(kids: Kids, child: str, attr: str) -> str | None:
    found = kids.get(child)
    return found.get(attr) if found is not None else None


def _path(root: etree._Element, first: str, second: str) -> etree._Element | None:
    """root.find("first/second") for plain tag names: the first match in document order, over every
    <first> child (not only the first one), without ElementPath's cost."""
    for parent in root.iterchildren(first):
        found = next(parent.iterchildren(second), None)
        if found is not None:
            return found
    return None


# The attributes of a <controller> a reading keeps.
CONTROLLER_ATTRS = ("type", "index", "model")
# The attributes of an <address> a reading keeps: type first (the rest only where it is 'pci').
ADDRESS_ATTRS = ("type", "domain", "bus", "slot", "function", "multifunction")


class Reading:
    """The element children of a document's first <devices>, read once: each one's children by tag
    (_kids), its tag, a <controller>'s type, index and model (CONTROLLER_ATTRS; None for other tags)
    and its <address>'s attributes (ADDRESS_ATTRS; only the type where it is not 'pci'; None
    without an address), and, by machine family, their PCI kinds (classify) once someone classified
    them (None for PCI controllers, which no one classifies). check_document and show.build_tree take
    one so that, reading one document, the second reads nothing again: valid while the document is not
    changed."""

    __slots__ = ("elements", "kids", "tags", "controllers", "addresses", "kinds")

    def __init__(self, elements: list[etree._Element]) -> None:
        self.elements = elements
        self.kids = kids = [_kids(e) for e in elements]
        self.tags = tags = [e.tag for e in elements]
        self.controllers: list[tuple[str | None, str | None, str | None] | None] = [
            (e.get("type"), e.get("index"), e.get("model")) if tag == "controller" else None
            for e, tag in zip(elements, tags, strict=True)]
        addresses: list[tuple[str | None, ...] | None] = []
        for k in kids:
            a = k.get("address")
            if a is None:
                addresses.append(None)
                continue
            get = a.get
            kind = get("type")
            addresses.append((kind,) if kind != "pci" else (
                kind, get("domain"), get("bus"), get("slot"), get("function"), get("multifunction")))
        self.addresses = addresses
        self.kinds: dict[str, list[DeviceKind | None]] = {}

    def classified(self, family: str) -> list[DeviceKind | None]:
        """classify of every element for family (None for PCI controllers), from whoever did it first."""
        found = self.kinds.get(family)
        if found is None:
            found = self.kinds[family] = [
                None if c is not None and c[0] == "pci" else classify(e, family, k)
                for e, k, c in zip(self.elements, self.kids, self.controllers, strict=True)]
        return found


def read_devices(root: etree._Element) -> Reading:
    """The Reading of a <domain>'s first <devices> (empty without one)."""
    devices = _child(root, "devices")
    return Reading([] if devices is None else [c for c in devices if isinstance(c.tag, str)])


def guest_firmware(root: etree._Element, family: str | None) -> str:
    """seabios | ovmf | aavmf | none (or a firmware models/firmware.toml adds, by its loader file names):
    what the guest boots, by <os firmware>, its <loader>, or the machine's default (x86 SeaBIOS, aarch64
    virt UEFI, riscv64 virt no PCI firmware)."""
    if family == RISCV64_VIRT or family is None:
        return "none"
    uefi = "aavmf" if family == AARCH64_VIRT else "ovmf"
    os_el = _child(root, "os")
    wanted = os_el.get("firmware") if os_el is not None else None
    if wanted in ("efi", "bios"):
        return uefi if wanted == "efi" else "seabios"
    loader = _path(root, "os", "loader")
    if loader is not None:
        path = (loader.text or "").strip().lower()
        if any(n in path for n in ("ovmf", "aavmf", "qemu_efi", "edk2")):
            return uefi
        added = next((name for name, d in _added_firmware().items()
                      if any(n.lower() in path for n in d.get("loader_names", []))), None)
        if added is not None:  # before the pflash rule: an added firmware may be a pflash image too
            return added
        if loader.get("type") == "pflash":
            return uefi
    if family == AARCH64_VIRT and _path(root, "os", "kernel") is not None:
        return "none"  # direct kernel boot: no firmware runs before the kernel
    return uefi if family == AARCH64_VIRT else "seabios"


def machine_family(root: etree._Element) -> tuple[str | None, str, str]:
    """(family or None, arch, machine) from <os><type arch machine>."""
    os_type = _path(root, "os", "type")
    arch = (os_type.get("arch") if os_type is not None else None) or "x86_64"
    machine = (os_type.get("machine") if os_type is not None else None) or ""
    if arch in ("x86_64", "i686"):
        if machine == "q35" or machine.startswith("pc-q35-"):
            return Q35, arch, machine
        # libvirt's default x86 machine is QEMU's default, an i440fx
        if machine in ("", "pc") or machine.startswith(("pc-i440fx-", "pc-0.", "pc-1.")):
            return PC, arch, machine or "pc"
    elif arch == "aarch64" and (machine in ("", "virt") or machine.startswith("virt-")):
        return AARCH64_VIRT, arch, machine or "virt"
    elif arch == "riscv64" and (machine in ("", "virt") or machine.startswith("virt-")):
        return RISCV64_VIRT, arch, machine or "virt"
    return None, arch, machine


# ---------------------------------------------------------------------------------------------------
# Device classification (libvirt qemuDomainDeviceCalculatePCIConnectFlags, plus I/O BAR facts)

# conventional PCI: assume an I/O BAR (conservative)
_CONVENTIONAL = DeviceKind(io_bar_on_port=True, conventional=True)
# *-transitional: legacy I/O BAR
_CONVENTIONAL_VIRTIO = DeviceKind(io_bar_on_port=True, virtio=True, conventional=True)
_MODERN_VIRTIO = DeviceKind(io_bar_on_port=False, virtio=True)  # modern-only on a PCIe port
_PCIE_NO_IO = DeviceKind(io_bar_on_port=False)
_PCIE_WITH_IO = DeviceKind(io_bar_on_port=True)


# Devices libvirt addresses only from some version on (libvirt's NEWS.rst, and the real stacks: 9.0
# refuses or drops them, 11.3 places them). Judged for the libvirt pciplan targets (--libvirt-version).
LIBVIRT_SINCE = {"crypto": (9, 1), "sound:virtio": (10, 4)}


LIBVIRT_DEFAULT = (9, 0)  # Debian 12's, when nothing says otherwise


def judged_libvirt() -> tuple[int, int]:
    """The libvirt the rules judge for, found by the checker itself (it imports nothing of the
    planner): $PCIPLAN_LIBVIRT_VERSION, which the planner sets for the version it plans for
    (--libvirt-version), else the installed library's version from its file name
    (libvirt.so.0.MAJOR*1000+MINOR.MICRO), else 9.0."""
    import glob
    import os
    import re

    m = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)?\s*", os.environ.get("PCIPLAN_LIBVIRT_VERSION", ""))
    if m:
        return int(m[1]), int(m[2])
    found = {int(m[1]) for d in ("/usr/lib/*-linux-gnu*", "/usr/lib64", "/usr/lib", "/usr/local/lib64",
                                 "/usr/local/lib") for path in glob.glob(f"{d}/libvirt.so.0.*")
             if (m := re.fullmatch(r".*/libvirt\.so\.0\.(\d+)\.\d+", path))}
    return divmod(found.pop(), 1000) if len(found) == 1 else LIBVIRT_DEFAULT


def _libvirt_places(what: str) -> bool:
    return judged_libvirt() >= LIBVIRT_SINCE[what]


def _virtio_kind(model: str | None) -> DeviceKind:
    return _CONVENTIONAL_VIRTIO if _lower(model) == TRANSITIONAL else _MODERN_VIRTIO


def _disk_bus(kids: Kids) -> str | None:
    target = kids.get("target")
    if target is None:
        return None
    bus = target.get("bus")
    if bus is None:
        dev = target.get("dev") or ""
        bus = "virtio" if dev.startswith("vd") else None
    return bus


def classify(elem: etree._Element, family: str, kids: Kids | None = None) -> DeviceKind | None:
    """The PCI kind of a <devices> child, or None when it does not use PCI. kids: its _kids, where the
    caller has them."""
    tag = elem.tag
    if kids is None:
        kids = _kids(elem)
    if tag == "interface":
        if elem.get("type") == "hostdev":
            return _PCIE_WITH_IO  # an assigned host function, like <hostdev>: assume an I/O BAR
        model = _lower(_kid_attr(kids, "model", "type")) or DEFAULT_NET_MODEL[family]
        if model in ("usb-net", "spapr-vlan"):
            return None
        if model in VIRTIO_MODELS or model == TRANSITIONAL:
            return _virtio_kind(model)
        return _PCIE_WITH_IO if model == "e1000e" else _CONVENTIONAL  # e1000e has an I/O BAR too
    if tag == "disk":
        return _virtio_kind(elem.get("model")) if _disk_bus(kids) == "virtio" else None
    if tag == "controller":
        return _classify_controller(elem, family)
    if tag == "hostdev":
        if elem.get("mode", "subsystem") != "subsystem":
            return None
        htype = elem.get("type")
        if htype == "pci":
            return _PCIE_WITH_IO  # host hardware: assume an I/O BAR (conservative)
        if htype == "scsi_host":
            return _virtio_kind(elem.get("model"))  # vhost-scsi is virtio-scsi to the guest
        if htype == "mdev" and elem.get("model") == "vfio-pci":
            return _PCIE_WITH_IO
        return None
    if tag == "video":
        model = _lower(_kid_attr(kids, "model", "type")) or DEFAULT_VIDEO_MODEL[family]
        if model in VIDEO_NO_PCI:
            return None
        if model == "virtio":
            return _MODERN_VIRTIO
        return _PCIE_NO_IO if model == "bochs" else _CONVENTIONAL
    if tag == "sound":
        if elem.get("model") == "virtio" and _libvirt_places("sound:virtio"):
            return _MODERN_VIRTIO
        return _CONVENTIONAL if elem.get("model") in SOUND_PCI else None
    if tag == "watchdog":
        return _CONVENTIONAL if elem.get("model") == "i6300esb" else None
    if tag in ("rng", "vsock"):
        return _virtio_kind(elem.get("model"))
    if tag == "input":
        return _virtio_kind(elem.get("model")) if elem.get("bus") == "virtio" else None
    if tag == "filesystem":
        driver = _kid_attr(kids, "driver", "type")
        if driver in (None, "path", "handle"):
            return _virtio_kind(elem.get("model"))  # virtio-9p
        return _MODERN_VIRTIO if driver == "virtiofs" else None
    if tag == "memballoon":
        model = elem.get("model", "virtio")
        if model in VIRTIO_MODELS or model == TRANSITIONAL:
            return _virtio_kind(model)
        return None  # none, xen
    if tag == "memory":
        return _MODERN_VIRTIO if elem.get("model") in ("virtio-mem", "virtio-pmem") else None
    if tag == "shmem":
        return _CONVENTIONAL  # ivshmem
    if tag == "serial":
        return _CONVENTIONAL if _kid_attr(kids, "target", "type") == "pci-serial" else None
    if tag == "crypto":
        if not _libvirt_places("crypto"):
            return None  # libvirt 9.0 has no <crypto>: it drops the element
        # libvirt calls it a conventional PCI device, but it is virtio-crypto-pci: modern on a PCIe port
        return _MODERN_VIRTIO if elem.get("model", "virtio") == "virtio" else None
    if tag == "iommu":
        if elem.get("model") == "virtio":
            return DeviceKind(io_bar_on_port=False, virtio=False, integrated=True)
        return None
    return None


def _dropped_by_libvirt(elem: etree._Element, kids: Kids) -> bool:
    """libvirt 9.0 removes a PCI address from these on define (seen on the real stack)."""
    tag = elem.tag
    if tag in STALE_TAGS:
        return True
    if tag == "controller":
        return elem.get("type") == "usb" and elem.get("model") == "none"
    if tag == "memballoon":
        return elem.get("model") == "none"
    if tag == "video":
        return _lower(_kid_attr(kids, "model", "type")) == "none"
    if tag == "memory":
        return elem.get("model") not in ("virtio-mem", "virtio-pmem")
    return False


def _classify_controller(elem: etree._Element, family: str) -> DeviceKind | None:
    ctype = elem.get("type")
    model = elem.get("model")
    if ctype == "usb":
        model = model or DEFAULT_USB_MODEL[family]
        if model in USB_NO_PCI:
            return None
        return _PCIE_NO_IO if model in USB_XHCI else _CONVENTIONAL
    if ctype == "scsi":
        model = model or DEFAULT_SCSI_MODEL
        if model in SCSI_NO_PCI:
            return None
        if model in VIRTIO_MODELS or model == "virtio-scsi":
            return _MODERN_VIRTIO
        return _CONVENTIONAL_VIRTIO if model == TRANSITIONAL else _CONVENTIONAL
    if ctype == "virtio-serial":
        return _virtio_kind(model)
    if ctype in ("sata", "ide"):
        return _CONVENTIONAL
    return None  # fdc, ccid, xenbus, isa; pci controllers are handled apart


# ---------------------------------------------------------------------------------------------------
# Naming


def device_name(elem: etree._Element) -> str:
    """The name check gives a device of <devices> (its tag's 1-based position there): the one name
    every report of a device uses, so that plan's lines match check's."""
    parent = elem.getparent()
    siblings = [] if parent is None else [c for c in parent if c.tag == elem.tag]
    return _describe(elem, next((i for i, c in enumerate(siblings, 1) if c is elem), 0))


def _describe(elem: etree._Element, position: int, kids: Kids | None = None) -> str:
    tag = elem.tag
    if kids is None:
        kids = _kids(elem)
    if tag == "interface":
        mac = _kid_attr(kids, "mac", "address")
        detail = f"mac {mac}" if mac else f"type {elem.get('type')}"
        return f"interface[{position}] ({detail})"
    if tag == "disk":
        dev = _kid_attr(kids, "target", "dev")
        return f"disk {dev}" if dev else f"disk[{position}]"
    if tag == "controller":
        index = elem.get("index", "?")
        model = elem.get("model")
        return f"controller {elem.get('type')} index={index}" + (f" ({model})" if model else "")
    if tag == "hostdev":
        source = _path(elem, "source", "address")
        if source is not None and source.get("bus") is not None:
            host = (
                ":".join(str(source.get(k, "0")) for k in ("domain", "bus", "slot"))
                + "."
                + str(source.get("function", "0"))
            )
            return f"hostdev[{position}] ({elem.get('type')} {host})"
        return f"hostdev[{position}] ({elem.get('type')})"
    model = elem.get("model") or _kid_attr(kids, "model", "type") or elem.get("type") or elem.get("bus")
    return f"{tag}[{position}]" + (f" ({model})" if model else "")


# ---------------------------------------------------------------------------------------------------
# The checker


class _Checker:
    def __init__(self, root: etree._Element, require_complete: bool, firmware: str | None = None) -> None:
        self.root = root
        self.firmware = firmware
        self.require_complete = require_complete
        self.violations: list[Violation] = []
        self.family: str | None = None
        self.users: list[PciUser] = []
        self.controllers: dict[int, PciController] = {}  # by index, first of duplicates wins
        self._numa_cells: int | None = None
        self.ide: list[etree._Element] = []  # the IDE controllers of <devices>, in document order
        # every <controller> of <devices> with its type, in document order
        self.typed_controllers: list[tuple[etree._Element, str | None]] = []
        self.io_found: tuple[int, int, int, int] | None = None  # io_space(), as the I/O rule found it
        self.skipped = False  # an address the rules could not use was set aside before io_space()

    @property
    def numa_cells(self) -> int:
        """The <cpu><numa> cells (read only where a controller names a NUMA node)."""
        if self._numa_cells is None:
            self._numa_cells = len(self.root.findall("cpu/numa/cell"))
        return self._numa_cells

    def flag(self, element: str, rule: str, message: str) -> None:
        assert rule in RULES, rule
        self.violations.append(Violation(element, rule, message))

    # -- driver --------------------------------------------------------------------------------

    def run(self, reading: Reading | None = None) -> list[Violation]:
        family, arch, machine = machine_family(self.root)
        if family is None:
            self.flag("os", "machine", f"machine '{machine}' on arch '{arch}' is not q35, pc, or virt")
            return self.violations
        self.family = family
        self.firmware = self.firmware or guest_firmware(self.root, family)
        if reading is None:
            reading = read_devices(self.root)
        children = reading.elements
        self._collect(children, reading)
        self._check_controllers()
        self._check_addresses()
        self._check_occupancy(children)
        self._check_chassis()
        self._check_bus_numbers()
        self._check_io_windows()
        self._check_mmio()
        return self.violations

    # -- collection ----------------------------------------------------------------------------

    def _collect(self, children: list[etree._Element], reading: Reading | None = None) -> None:
        """The PCI users and controllers among children, <devices>' element children (reading: their
        Reading, where the caller has it)."""
        family = self.family
        assert family is not None
        if reading is None:
            reading = Reading(children)
        positions: dict[str, int] = {}
        used_pci: set[int] | None = None  # indexes the PCI controllers give, read where one has none
        users = self.users
        kinds = reading.classified(family)
        for elem, tag, attrs, kids, address, kind in zip(children, reading.tags, reading.controllers,
                                                         reading.kids, reading.addresses, kinds, strict=True):
            position = positions[tag] = positions.get(tag, 0) + 1
            if tag == "console":
                continue  # a serial console mirrors the first <serial>: same device, same address
            if attrs is not None:  # a <controller>
                ctype, index_text, model = attrs
                self.typed_controllers.append((elem, ctype))
                if ctype == "pci":
                    if used_pci is None and index_text is None:
                        used_pci = _used_indexes(children, "pci")
                    self._collect_pci_controller(elem, kids, address, used_pci, index_text, model)
                    continue
                if ctype == "ide":
                    self.ide.append(elem)
            if kind is None:
                if address is None or address[0] != "pci":
                    continue
                if _dropped_by_libvirt(elem, kids):
                    self.flag(_describe(elem, position, kids), "stale-address", "has a PCI address libvirt "
                              "drops: this device never takes one; it occupies nothing")
                    continue
                # libvirt keeps a PCI address it did not expect and treats the device as conventional PCI
                kind = _CONVENTIONAL
            if address is not None and address[0] == "unassigned":
                continue  # hostdev given to the guest without a guest PCI address
            user = PciUser(elem, None, ENDPOINT, kind, None, kids, position)
            self._read_address(user, address)
            users.append(user)

    def _collect_pci_controller(self, elem: etree._Element, kids: Kids, address: tuple | None,
                                used: set[int] | None, index_text: str | None, model: str | None) -> None:
        name = None  # worded when first needed (_describe; most controllers are never named)
        if index_text is None:
            assert used is not None
            # libvirt gives the lowest unused index, in document order
            index = 0
            while index in used:
                index += 1
            used.add(index)
            name = _describe(elem, 0, kids).replace("index=?", f"index={index}")
            if self.require_complete:
                self.flag(
                    name, "index-missing", f"PCI controller has no index (libvirt would give it {index})"
                )
        else:
            try:
                index = _parse_number(index_text)
            except ValueError:
                self.flag(_describe(elem, 0, kids), "index-range", f"index '{index_text}' is not a number")
                return
        if model is None or model not in PCI_CONTROLLER_MODELS:
            name = name or _describe(elem, 0, kids)
            what = "has no model" if model is None else f"has unknown model '{model}'"
            if index == 0 and self.family is not None:
                self.flag(
                    name,
                    "root-model",
                    f"PCI controller index 0 {what}; this machine needs model='{ROOT_MODEL[self.family]}'",
                )
            else:
                self.flag(name, "controller-model", f"PCI controller {what}")
            return
        user = None
        if model not in ROOT_MODELS:
            user = PciUser(elem, name, model, _PCIE_NO_IO, index, kids)
            self._read_address(user, address)
            self.users.append(user)
        if index in self.controllers:
            self.flag(user.name if user is not None else name or _describe(elem, 0, kids), "index-duplicate",
                      f"PCI controller index {index} is used twice")
            return
        self.controllers[index] = PciController(elem, name, index, model, user, kids.get("target"), kids)

    def _read_address(self, user: PciUser, address: tuple | None) -> None:
        """user's address from address, its element's <address> as a Reading keeps it (or None)."""
        if address is None:
            user.incomplete = "needs a PCI address but has none"
            return
        user.address_type = address[0]
        if address[0] != "pci":
            return
        _type, domain_text, bus_text, slot_text, function_text, multifunction = address
        try:
            domain = _parse_number(domain_text or "0")
            bus = _parse_number(bus_text or "0")
            slot = _parse_number(slot_text or "0")
            function = _parse_number(function_text or "0")
        except ValueError:
            self.flag(user.name, "bad-address", "PCI address has a value that is not a number")
            user.incomplete = "has an unreadable PCI address"
            return
        if domain == 0 and bus == 0 and slot == 0:
            # libvirt treats domain=bus=slot=0 as "no address" and assigns one
            user.incomplete = "has a PCI address libvirt treats as empty (bus 0 slot 0 is the host bridge)"
            return
        if domain_text is None or bus_text is None or slot_text is None or function_text is None:
            given = (domain_text, bus_text, slot_text, function_text)
            missing = [k for k, text in zip(ADDRESS_FIELDS, given, strict=True) if text is None]
            user.incomplete = f"has an incomplete PCI address (no {', '.join(missing)})"
        user.address = _new_address(PciAddress, (domain, bus, slot, function, multifunction))

    # -- controllers ---------------------------------------------------------------------------

    def _root_model(self) -> str:
        assert self.family is not None
        return ROOT_MODEL[self.family]

    def _bus_model(self, bus: int) -> str | None:
        if bus == 0:
            return self._root_model()  # a wrong root model is flagged once, not through every device
        controller = self.controllers.get(bus)
        return controller.model if controller is not None else None

    def _check_controllers(self) -> None:
        assert self.family is not None
        root_model = self._root_model()
        root = self.controllers.get(0)
        if root is None:
            if self.require_complete:
                self.flag(
                    f"controller pci index=0 ({root_model})",
                    "root-missing",
                    f"no index 0 root controller; libvirt would add model='{root_model}'",
                )
        elif root.model != root_model:
            self.flag(
                root.name,
                "root-model",
                f"PCI controller index 0 must be model='{root_model}' on this machine, not '{root.model}'",
            )
        for index, controller in sorted(self.controllers.items()):
            if controller.model in ROOT_MODELS and index != 0:
                self.flag(controller.name, "root-model", f"{controller.model} can only have index 0")
            if index > MAX_INDEX:
                self.flag(
                    controller.name, "index-range", f"PCI controller index {index} is above {MAX_INDEX}"
                )
            machines = PXB_MACHINES.get(controller.model)
            if machines is not None and self.family not in machines:
                self.flag(
                    controller.name, "model-machine", f"{controller.model} is not supported on this machine"
                )
            self._check_target(controller)
        # root.iterfind("devices/controller[@type='ide']"): _collect met those of the first <devices>
        others = [c for d in islice(self.root.iterchildren("devices"), 1, None)
                  for c in d.iterchildren("controller") if c.get("type") == "ide"]
        for elem in self.ide + others:
            if self.family != PC:
                self.flag(
                    _describe(elem, 0), "model-machine", "IDE controllers exist only on pc (i440fx) machines"
                )
        highest = max((i for i in self.controllers if i <= MAX_INDEX), default=0)
        missing = [i for i in range(1, highest + 1) if i not in self.controllers]
        for index in missing:
            self.flag(
                f"controller pci index={index}",
                "index-gap",
                f"no PCI controller with index {index} below the highest index {highest}; "
                "libvirt would add one",
            )

    def _check_target(self, controller: PciController) -> None:
        target = controller.target
        if target is None:
            return
        given = target.keys()  # the attributes it has, read at once (a port has two of the five)
        for option, models in TARGET_OPTIONS.items():
            if option not in given:
                continue
            value = target.get(option)
            if controller.model not in models:
                self.flag(
                    controller.name, "target-option", f"<target {option}> is not valid for {controller.model}"
                )
                continue
            if option in TARGET_RANGE:
                low, high = TARGET_RANGE[option]
                try:
                    number = _parse_number(value)
                except ValueError:
                    number = -1
                if not low <= number <= high:
                    rule = "busnr-range" if option == "busNr" else "target-range"
                    self.flag(controller.name, rule, f"{option}='{value}' is out of range {low}-{high}")
        node = _child(target, "node") if len(target) else None
        if node is not None:
            if controller.model not in PXB_MODELS:
                self.flag(
                    controller.name,
                    "numa-node",
                    f"<node> is valid only on pci-expander-bus and pcie-expander-bus, not {controller.model}",
                )
            else:
                try:
                    number = _parse_number(node.text or "")
                except ValueError:
                    number = -1
                if not 0 <= number < self.numa_cells:
                    self.flag(
                        controller.name,
                        "numa-node",
                        f"NUMA node {(node.text or '').strip()} is not one of the {self.numa_cells} "
                        "<cpu><numa> cells",
                    )

    # -- addresses -----------------------------------------------------------------------------

    def _check_addresses(self) -> None:
        require_complete = self.require_complete
        root_model = self._root_model()  # _bus_model, read once
        controllers = self.controllers
        for user in self.users:
            if user.incomplete and require_complete:
                self.flag(user.name, "unaddressed", user.incomplete)
            addr = user.address
            if addr is None:
                continue
            bus = addr.bus
            if bus == 0:
                parent_model: str | None = root_model
            else:
                controller = controllers.get(bus)
                parent_model = controller.model if controller is not None else None
            try:
                self._check_address(user, addr, parent_model)
            except _Skip:
                user.address = None  # unusable for the layout checks below
                self.skipped = True

    def _check_address(self, user: PciUser, addr: PciAddress, parent_model: str | None) -> None:
        """user's address addr on a bus of parent_model (_bus_model: None where there is no such bus)."""
        if addr.domain != 0:
            self.flag(user.name, "domain", f"PCI address {addr}: only PCI domain 0 exists")
            raise _Skip
        if parent_model is None:
            self.flag(user.name, "bus-missing", f"PCI address {addr}: no PCI controller has index {addr.bus}")
            raise _Skip
        low, high = SLOT_RANGE[parent_model]
        if not low <= addr.slot <= high:
            self.flag(
                user.name,
                "slot-range",
                f"PCI address {addr}: slot must be {low}-{high} on bus {addr.bus} ({parent_model})",
            )
            raise _Skip
        if not 0 <= addr.function <= 7:
            self.flag(user.name, "function-range", f"PCI address {addr}: function must be 0-7")
            raise _Skip
        if user.kind.integrated and addr.bus != 0:
            self.flag(user.name, "integrated", f"PCI address {addr}: this device must be integrated (bus 0)")
        accepts = BUS_ACCEPTS[parent_model]
        # libvirt is permissive for user-given addresses: any endpoint slot takes PCI and PCIe endpoints,
        # and a pci-bridge may go wherever an endpoint may.
        fits = user.connect in accepts or (user.connect == "pci-bridge" and ENDPOINT in accepts)
        if not fits:
            wanted = "an endpoint" if user.connect == ENDPOINT else f"a {user.connect}"
            self.flag(
                user.name,
                "connect-type",
                f"PCI address {addr}: bus {addr.bus} ({parent_model}) does not accept {wanted}",
            )
        else:
            connect = user.connect if user.connect != ENDPOINT else (
                "pci-device" if user.kind.conventional else "pcie-device")
            excluded = SPACE_EXCLUDED.get((parent_model, connect))
            if excluded is not None:
                self.flag(user.name, excluded, f"PCI address {addr}: bus {addr.bus} ({parent_model}): "
                          + RULES[excluded].removeprefix("warning: "))
        if user.index is not None and addr.bus >= user.index:
            if user.connect == "pci-bridge":  # libvirt itself refuses this for pci-bridge only
                self.flag(user.name, "parent-index-bridge",
                          f"plugs into bus {addr.bus}, but a pci-bridge's index must be larger than its bus")
            else:
                self.flag(
                    user.name,
                    "parent-index",
                    f"plugs into bus {addr.bus}, which is not lower than its own index {user.index}; "
                    "QEMU creates controllers in index order and fails",
                )

    # -- slots and functions -------------------------------------------------------------------

    def _implicit_functions(self, children: list[etree._Element]) -> dict[tuple[int, int, int], str]:
        """Chipset functions QEMU always creates, keyed by (bus, slot, function), minus those an XML
        element stands for (that element must then sit exactly there)."""
        assert self.family is not None
        implicit: dict[tuple[int, int, int], str] = {}

        def first(ctype: str) -> etree._Element | None:
            for c, its_type in self.typed_controllers:
                if its_type != ctype:
                    continue
                try:
                    index = _parse_number(c.get("index", "0"))
                except ValueError:
                    continue
                if index == 0:
                    return c
            return None

        if self.family == Q35:
            implicit[(0, 0x1F, 0)] = "the ICH9 LPC bridge"
            implicit[(0, 0x1F, 3)] = "the ICH9 SMBus controller"
            self._fixed(first("sata"), (0, 0x1F, 2), "the primary SATA controller", implicit)
        elif self.family == PC:
            implicit[(0, 1, 0)] = "the PIIX3 ISA bridge"
            implicit[(0, 1, 3)] = "the PIIX3 ACPI controller"
            self._fixed(first("ide"), (0, 1, 1), "the PIIX3 IDE controller", implicit)
            usb0 = first("usb")
            if usb0 is not None and usb0.get("model") in (None, "piix3-uhci"):
                self._fixed(usb0, (0, 1, 2), "the PIIX3 USB controller", implicit)
            elif usb0 is None:  # libvirt adds it whenever no USB controller has index 0
                implicit[(0, 1, 2)] = "the PIIX3 USB controller libvirt adds"
        return implicit

    def _fixed(
        self,
        elem: etree._Element | None,
        where: tuple[int, int, int],
        what: str,
        implicit: dict[tuple[int, int, int], str],
    ) -> None:
        """A chipset function an XML element may stand for: then it must sit exactly there."""
        user = next((u for u in self.users if u.element is elem), None) if elem is not None else None
        if user is None or user.address is None:
            implicit[where] = what  # absent, or libvirt will put it there
            return
        addr = user.address
        if (addr.bus, addr.slot, addr.function) != where:
            bus, slot, function = where
            self.flag(
                user.name,
                "fixed-address",
                f"{what} must be at 0000:{bus:02x}:{slot:02x}.{function:x}, not {addr}",
            )
            implicit[where] = what

    def _check_occupancy(self, children: list[etree._Element]) -> None:
        implicit = self._implicit_functions(children)
        occupants: dict[tuple[int, int, int], list[PciUser]] = {}
        for user in self.users:
            a = user.address
            if a is not None:
                where = (a.bus, a.slot, a.function)
                found = occupants.get(where)
                if found is None:
                    occupants[where] = [user]
                else:
                    found.append(user)
        for where, users in occupants.items():
            if len(users) == 1 and where not in implicit:
                continue  # the usual case: nothing to say
            if where in implicit:
                # QEMU always has the PIIX3 IDE at 01.1; libvirt only notices when an IDE controller exists
                qemu_only = self.family == PC and where == (0, 1, 1) and "IDE" in implicit[where]
                for user in users:
                    self.flag(
                        user.name, "reserved-qemu" if qemu_only else "reserved",
                        f"PCI address {user.address} belongs to {implicit[where]}"
                    )
                if qemu_only:
                    for user in users[1:]:
                        self.flag(user.name, "double-use",
                                  f"PCI address {user.address} is also used by {users[0].name}")
            else:
                for user in users[1:]:
                    self.flag(
                        user.name, "double-use", f"PCI address {user.address} is also used by {users[0].name}"
                    )
        slots: dict[tuple[int, int], set[int]] = {}
        for bus, slot, function in chain(occupants, implicit):
            functions = slots.get((bus, slot))
            if functions is None:
                slots[(bus, slot)] = {function}
            else:
                functions.add(function)
        # a slot with function 0 alone is fine: the rest, in slot order
        shared = [(where, functions) for where, functions in slots.items()
                  if len(functions) > 1 or 0 not in functions]
        for (bus, slot), functions in sorted(shared):
            if 0 not in functions:
                lowest = min(f for f in functions if occupants.get((bus, slot, f)))
                user = occupants[(bus, slot, lowest)][0]
                self.flag(
                    user.name,
                    "function0",
                    f"slot {bus:02x}:{slot:02x} uses function(s) {sorted(functions)} but not "
                    "function 0; guests scan a slot from function 0",
                )
            elif len(functions) > 1 and (bus, slot, 0) not in implicit:
                first = occupants[(bus, slot, 0)][0]
                assert first.address is not None
                flag_value = first.address.multifunction
                if flag_value == "off":
                    self.flag(
                        first.name,
                        "multifunction",
                        f"slot {bus:02x}:{slot:02x} has {len(functions)} functions but function 0 says "
                        "multifunction='off'; QEMU refuses to start",
                    )
                elif flag_value != "on":
                    self.flag(
                        first.name,
                        "multifunction-flag",
                        f"slot {bus:02x}:{slot:02x} has {len(functions)} functions; function 0 lacks "
                        "multifunction='on' (libvirt adds it)",
                    )

    # -- chassis -------------------------------------------------------------------------------

    def _check_chassis(self) -> None:
        # QEMU registers root ports and downstream ports in one chassis/slot table; libvirt leaves the
        # slot at 0, so equal chassis numbers collide ("Can't add chassis slot, error -16").
        seen: dict[int, PciController] = {}
        for index, controller in sorted(self.controllers.items()):
            if controller.model not in PORT_MODELS:
                continue
            target = controller.target
            text = target.get("chassis") if target is not None else None
            try:
                chassis = _parse_number(text) if text is not None else index  # libvirt: chassis = index
            except ValueError:
                continue
            if chassis in seen:
                self.flag(
                    controller.name,
                    "chassis-duplicate",
                    f"chassis {chassis} is also used by {seen[chassis].name}; QEMU refuses to start",
                )
            else:
                seen[chassis] = controller

    # -- bus numbers ---------------------------------------------------------------------------

    def _children(self) -> dict[int, list[PciController]]:
        children: dict[int, list[PciController]] = defaultdict(list)
        for controller in self.controllers.values():
            user = controller.user
            if user is not None and user.address is not None:
                children[user.address.bus].append(controller)
        return children

    def _bus_numbers_below(
        self, controller: PciController, children: dict[int, list[PciController]], seen: set[int]
    ) -> int:
        """Bus numbers firmware gives this controller and everything behind it."""
        if controller.index in seen:  # a loop through a bad parent index; flagged elsewhere
            return 0
        seen.add(controller.index)
        own = 2 if controller.model == "pci-expander-bus" else 1  # pxb holds an internal pci-bridge
        below = children.get(controller.index, [])
        return own + sum(self._bus_numbers_below(c, children, seen) for c in below)

    def _bus_nr(self) -> dict[int, int]:
        """busNr of each expander bus by index, with libvirt's default (lowest so far - 2, from 254)."""
        result: dict[int, int] = {}
        if not any(c.model in PXB_MODELS for c in self.controllers.values()):
            return result  # only expander buses take a busNr
        lowest = 256
        for controller in self.controllers.values():
            text = controller.target.get("busNr") if controller.target is not None else None
            if text is not None:
                with contextlib.suppress(ValueError):
                    lowest = min(lowest, _parse_number(text))
        in_document_order = sorted(self.controllers.items(), key=lambda kv: kv[1].element.sourceline or 0)
        for index, controller in in_document_order:
            if controller.model not in PXB_MODELS:
                continue
            text = controller.target.get("busNr") if controller.target is not None else None
            if text is None:
                if lowest <= 2:
                    self.flag(controller.name, "busnr-range", "no busNr and libvirt cannot choose one")
                    continue
                lowest -= 2
                result[index] = lowest
            else:
                try:
                    number = _parse_number(text)
                except ValueError:
                    continue
                low, high = TARGET_RANGE["busNr"]
                if low <= number <= high:  # out-of-range values are flagged by _check_target
                    result[index] = number
        return result

    def _check_bus_numbers(self) -> None:
        total = 1 + sum(
            2 if c.model == "pci-expander-bus" else 1 for i, c in self.controllers.items() if i != 0
        )
        if total > MAX_BUS_NUMBERS:
            self.flag(
                "domain",
                "bus-count",
                f"the layout needs {total} PCI bus numbers; one PCI domain has {MAX_BUS_NUMBERS}",
            )
        bus_nr = self._bus_nr()
        owners: dict[int, PciController] = {}
        for index, number in sorted(bus_nr.items()):
            controller = self.controllers[index]
            if number in owners:
                self.flag(
                    controller.name,
                    "busnr-duplicate",
                    f"busNr {number} is also used by {owners[number].name}; QEMU refuses to start",
                )
            else:
                owners[number] = controller
        if not owners:
            return
        children = self._children()
        starts = sorted(owners)
        root_need = 1 + sum(
            self._bus_numbers_below(c, children, set())
            for c in children.get(0, [])
            if c.model not in PXB_MODELS
        )
        if root_need > starts[0]:
            self.flag(
                "controller pci index=0",
                "busnr-partition",
                f"the root hierarchy needs bus numbers 0-{root_need - 1}, but busNr {starts[0]} of "
                f"{owners[starts[0]].name} starts below that",
            )
        for position, start in enumerate(starts):
            controller = owners[start]
            limit = starts[position + 1] if position + 1 < len(starts) else MAX_BUS_NUMBERS
            need = self._bus_numbers_below(controller, children, set())
            if start + need > limit:
                self.flag(
                    controller.name,
                    "busnr-partition",
                    f"needs bus numbers {start}-{start + need - 1} but only {start}-{limit - 1} "
                    "are free before the next busNr",
                )

    # -- firmware budgets ----------------------------------------------------------------------

    def _check_io_windows(self) -> None:
        found = self.io_found = self.io_space()
        if found is None:
            return
        total, space, windows, max_windows = found
        pads = firmware_pads(self.firmware)
        label = firmware_label(self.firmware)
        if total > space:
            self.flag(
                "domain",
                "io-windows",
                f"needs {total} bytes of I/O space (bridge and port windows of 4 KiB, root-bus I/O BARs"
                f"{', empty hot-plug ports padded' if pads else ''}); {label} has {space} on this machine",
            )
        if max_windows and windows > max_windows:
            self.flag(
                "domain",
                "io-windows",
                f"needs {windows} bridge/port I/O windows{' (empty hot-plug ports padded)' if pads else ''}; "
                f"{label} sets up at most {max_windows} on this machine",
            )

    def io_space(self) -> tuple[int, int, int, int] | None:
        """Sum the I/O space the firmware must find: root-bus BARs, and for every bridge (always) and
        port (when something below needs I/O; under UEFI also when it is an empty hot-plug port, which
        edk2 pads) a window rounded up to 4 KiB around what sits below it. Returns (bytes needed,
        bytes the firmware has, top-level windows, most windows it sets up or 0), or None where no
        budget is known."""
        acpi = _path(self.root, "features", "acpi") is not None
        budget = firmware_budget(self.firmware, self.family, acpi)
        if budget is None:
            return None
        space, max_windows = budget
        pads = firmware_pads(self.firmware)
        controllers = self.controllers
        family = self.family or ""
        bars: dict[int, int] = {}  # the I/O BARs of the endpoints on each bus that has any
        for user in self.users:
            a = user.address
            if a is not None and user.connect == ENDPOINT:
                c = controllers.get(a.bus)
                port = c is not None and c.model in PORT_MODELS
                bars[a.bus] = bars.get(a.bus, 0) + _io_bar_bytes(user, on_pcie_port=port, family=family)
        children: dict[int, list[PciController]] = {}
        for c in controllers.values():
            u = c.user
            if u is not None and u.address is not None and c.index != 0:
                found_c = children.get(u.address.bus)
                if found_c is None:
                    children[u.address.bus] = [c]
                else:
                    found_c.append(c)
        seen: set[int] = set()  # never cleared: each bus is walked once, its I/O counted once
        windows: dict[int, int] = {}  # each controller's window, by index

        def need(index: int) -> int:
            if index in seen:
                return 0  # a loop, flagged elsewhere
            seen.add(index)
            total = bars.get(index, 0)
            below = children.get(index)
            if below:
                for c in below:
                    total += window(c)
            return total

        def window(c: PciController) -> int:
            below = need(c.index)
            if c.model in CONVENTIONAL_BRIDGES:
                found = max(1, -(-below // IO_WINDOW)) * IO_WINDOW  # SHPC bridges always get one
            elif c.model == "pcie-expander-bus":
                found = below  # a host bridge of its own: no window around it
            elif (pads and c.model in PORT_MODELS and not below
                  and self._empty_hotplug_port(c, bars, children)):
                found = IO_WINDOW  # edk2's padding
            else:
                found = -(-below // IO_WINDOW) * IO_WINDOW
            windows[c.index] = found
            return found

        top: list[int] = []  # windows directly on a host bridge (the root bus or an expander bus)

        def top_windows(index: int) -> None:
            for c in children.get(index, ()):
                if c.model == "pcie-expander-bus":
                    top_windows(c.index)
                else:
                    top.append(windows[c.index])

        # The walk from the root reaches each controller below it once (one parent each, and no loop
        # reaches the root; index 0 is no one's child): the top-level windows are those it found, and
        # seen holds every controller it walked, for the loop below.
        total = need(0) + CHIPSET_IO_BYTES.get(family, 0)
        top_windows(0)
        # Controllers without an address are not in the tree above; their windows count all the same
        # (in index order: one walked from another is counted with it).
        for index in sorted(i for i in controllers if i not in seen and i != 0):
            if index in seen:
                continue
            extra = window(controllers[index])
            total += extra
            top.append(extra)
        return total, space, sum(1 for w in top if w), max_windows

    def _empty_hotplug_port(self, c: PciController, on_bus: dict, children: dict) -> bool:
        """A root/downstream port with nothing below (on_bus: the buses with an endpoint; children: the
        controllers on each bus) and hot-plug on: UEFI pads it with I/O."""
        if c.index in on_bus or children.get(c.index):
            return False
        return c.target is None or c.target.get("hotplug") != "off"

    def _check_mmio(self) -> None:
        limit = MMIO_TRANSPORTS.get(self.family or "")
        if limit is None:
            return
        count = sum(1 for u in self.users if u.address_type == "virtio-mmio")
        if count:
            # one virtio-mmio address makes libvirt put every unaddressed virtio device on mmio too
            count += sum(1 for u in self.users if u.kind.virtio and u.address_type is None)
        if count > limit:
            self.flag(
                "domain",
                "mmio-count",
                f"{count} virtio-mmio devices; this machine has {limit} virtio-mmio transports",
            )


def _io_bar_bytes(user: PciUser, *, on_pcie_port: bool, family: str = "") -> int:
    """The I/O BAR of an endpoint where it sits (none for modern virtio on a PCIe port)."""
    if on_pcie_port and not user.kind.io_bar_on_port:
        return 0
    el = user.element
    tag = el.tag
    if tag in NO_IO_BAR:
        return 0
    kids = user.kids if user.kids is not None else _kids(el)
    model_type = _kid_attr(kids, "model", "type")  # each read once: the rules below look again
    if "virtio-non-transitional" in (el.get("model"), model_type, _kid_attr(kids, "driver", "model")):
        return 0  # modern-only virtio: no legacy I/O BAR anywhere
    if tag == "interface":
        model = (model_type or "rtl8139").lower()
        if el.get("type") == "hostdev":
            model = "hostdev"
        return IO_BAR_BYTES.get((tag, model), 256)
    if tag == "controller":
        ctype, model = el.get("type", ""), el.get("model", "")
        if ctype == "usb" and not model:
            model = DEFAULT_USB_MODEL.get(family, "")  # what libvirt fills in
        if ctype == "scsi" and model.startswith("virtio"):
            return IO_BAR_BYTES[(tag, "virtio-scsi")]
        if ctype == "usb" and "xhci" in model:
            return 0
        if ctype == "usb" and (model.endswith("ehci1") or model == "ehci"):
            return 0
        return IO_BAR_BYTES.get((tag, ctype), 0)
    if tag == "video":
        model = model_type or ""
        return IO_BAR_BYTES.get((tag, model), 0)  # vga/cirrus use fixed legacy ports, virtio none
    if tag == "filesystem":
        return 0 if _kid_attr(kids, "driver", "type") == "virtiofs" else IO_BAR_BYTES[(tag, "9p")]
    if tag == "hostdev":
        return IO_BAR_BYTES.get((tag, el.get("type", "")), 256)
    if tag == "input":
        return IO_BAR_BYTES.get((tag, el.get("model", "")), 0)  # virtio input is modern-only
    if tag in ("disk", "memballoon", "rng", "vsock"):
        return IO_BAR_BYTES.get((tag, "virtio"), 0)
    if tag == "serial":  # the model is the target's type; QEMU hw/char/serial-pci.c: an 8-byte I/O BAR 0
        return IO_BAR_BYTES.get((tag, _kid_attr(kids, "target", "type") or ""), 0)
    return IO_BAR_BYTES.get((tag, el.get("model", "")), 0)


def io_space_needed(tree_or_root: etree._ElementTree | etree._Element,
                    firmware: str | None = None) -> tuple[int, int] | None:
    """(bytes of I/O space the layout needs, bytes the guest's firmware has), or None where no budget
    is known."""
    root = tree_or_root.getroot() if isinstance(tree_or_root, etree._ElementTree) else tree_or_root
    checker = _Checker(root, False)
    family = machine_family(root)[0]
    if family is None:
        return None
    checker.family = family
    checker.firmware = firmware or guest_firmware(root, family)
    devices = _child(root, "devices")
    checker._collect([] if devices is None else [c for c in devices if isinstance(c.tag, str)])
    found = checker.io_space()
    return None if found is None else found[:2]


def check_domain(
    tree_or_root: etree._ElementTree | etree._Element, *, require_complete: bool = True,
    firmware: str | None = None,
) -> list[Violation]:
    """Every violation of the PCI rules in a domain XML (an lxml tree or its <domain> root element).

    With require_complete, devices that need a PCI address but have none (or a partial one), PCI
    controllers without index and a missing root controller are flagged too: planner output must be
    final. Without it only what the XML states is judged.
    """
    return check_document(tree_or_root, require_complete=require_complete, firmware=firmware).violations


@dataclass(frozen=True)
class Checked:
    """What one reading of a document gives: check_domain's violations and, where it can tell,
    io_space_needed's answer for the same firmware (io_known is False where an address the rules set
    aside, which io_space_needed still counts, makes the two readings part)."""

    violations: list[Violation]
    io_space: tuple[int, int] | None
    io_known: bool


def check_document(
    tree_or_root: etree._ElementTree | etree._Element, *, require_complete: bool = True,
    firmware: str | None = None, reading: Reading | None = None,
) -> Checked:
    """check_domain's violations, with io_space_needed's answer from the same reading. reading: the
    document's read_devices, where the caller keeps one (it is read here otherwise)."""
    root = tree_or_root.getroot() if isinstance(tree_or_root, etree._ElementTree) else tree_or_root
    checker = _Checker(root, require_complete, firmware)
    violations = checker.run(reading)
    found = checker.io_found
    return Checked(violations, None if found is None else found[:2], not checker.skipped)
