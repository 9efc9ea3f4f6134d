"""Read a libvirt domain XML into a planning problem: machine, existing buses, devices to place.

This room only reads (and materialises libvirt's implicit devices, as libvirt itself would on define);
it knows nothing of the solver.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from lxml import etree

from planner.facts.facts import (
    EXPANDERS,
    MAX_INDEX,
    ROOTS,
    ControllerModel,
    DeviceClass,
    Firmware,
    Machine,
    controller_models,
    device_class,
    firmware,
    firmware_arches,
    firmware_for_loader,
    machine_for,
)
from planner.xml.xmlio import InputError, remove_element

USB_SET_FUNCTION = {"ich9-uhci1": 0, "ich9-uhci2": 1, "ich9-uhci3": 2, "ich9-ehci1": 7}


@dataclass(frozen=True, order=True)
class PciAddress:
    bus: int
    slot: int
    function: int

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.slot:02x}.{self.function:x}"


@dataclass
class Bus:
    """An existing PCI controller (index 0 is the machine's root)."""

    index: int
    model: ControllerModel
    element: etree._Element | None
    address: PciAddress | None  # where it plugs in; None for the root or an unplaced controller
    hotplug: bool  # its slots are hot-pluggable
    label: str
    bus_nr: int | None = None
    added: bool = False  # added by us to fill an index gap, as libvirt would
    bus_pin: int | None = None  # partial address: the parent bus only
    droppable: bool = False  # --replan: the planner may remove it (at no cost in moved addresses)
    numa_node: int | None = None  # <target><node> of an expander bus
    new_expander: bool = False  # an expander bus pciplan adds for a numa rule (busNr set after solving)

    @property
    def floating(self) -> bool:
        return self.index != 0 and self.address is None


@dataclass
class Device:
    """An element that takes a guest PCI address."""

    element: etree._Element
    kind: str
    model: str
    label: str
    order: int
    endpoint: str  # "pcie" or "pci" on this machine
    facts: DeviceClass
    address: PciAddress | None = None  # full address the input gives
    bus_pin: int | None = None  # partial address: bus only
    companions: list[Device] = field(default_factory=list)  # USB2 companions sharing this slot
    function: int = 0  # function inside a companion set
    convention: tuple[int, ...] = ()  # root-bus slots libvirt uses first for this device
    mirrors: list[etree._Element] = field(default_factory=list)  # <console> sharing a serial's address
    droppable: bool = False  # --replan: its address may change, at a cost
    hotplug_rule: str | None = None  # the user's constraint: yes (must) | no (must not be ejectable)
    hotplug_rule_from: str = ""  # where the rule came from, for messages
    bus_rule: str | None = None  # the user's constraint: pcie | pci | any | mmio
    bus_rule_from: str = ""
    numa_rule: int | None = None  # the user's constraint: the guest NUMA node it must sit on
    connection_rule: str | None = None  # the user's constraint: the controller model to plug into

    @property
    def hotplug(self) -> bool:
        return self.facts.hotplug

    @property
    def io_on_pcie(self) -> bool:
        return self.facts.io

    @property
    def io_on_port(self) -> bool:
        """On a root or downstream port, does it need the port's I/O window? Devices with an I/O BAR
        even on PCIe, and conventional devices that have one (intel-hda and i6300esb have none)."""
        return self.io_on_pcie or (self.endpoint == "pci" and self.facts.io_units > 0)

    @property
    def io_units(self) -> int:
        """Its I/O BAR (as a conventional or integrated device) and its companions', in 32-byte units."""
        units = self.facts.io_units
        return units + sum(m.facts.io_units for m in self.companions) if self.companions else units


@dataclass(frozen=True)  # read once; prepare plans on its own copy (planner.pipeline.prepare._working_copy)
class Problem:
    machine: Machine
    tree: etree._ElementTree
    arch: str
    buses: dict[int, Bus]
    devices: list[Device]  # every PCI device, placed or not; companions are inside their master
    acpi: bool
    numa_cells: int
    notes: list[str] = field(default_factory=list)
    user_pci_controllers: bool = False  # the input had PCI controllers besides the root
    mmio_devices: list[str] = field(default_factory=list)  # devices on virtio-mmio transports
    firmware: Firmware | None = None  # the guest's firmware and its budget on this machine

    @property
    def root(self) -> Bus:
        return self.buses[0]


# ---------------------------------------------------------------- small XML helpers


@functools.lru_cache(maxsize=4096)  # a document repeats the same few values many times
def _number(value: str) -> int:
    return int(value, 0)


@functools.lru_cache(maxsize=4096)  # so are the addresses (a PciAddress is immutable: it can be shared)
def _address(bus: str, slot: str, function: str) -> PciAddress:
    return address_of(_number(bus), _number(slot), _number(function))


@functools.lru_cache(maxsize=4096)  # a layout names the same few addresses guest after guest
def address_of(bus: int, slot: int, function: int) -> PciAddress:
    """PciAddress(bus, slot, function), shared (the frozen dataclass's __init__ is the dearer part)."""
    return PciAddress(bus, slot, function)


def _int(value: str | None, what: str) -> int:
    try:
        return _number(value or "0")
    except ValueError:
        raise InputError(f"{what}: '{value}' is not a number") from None


def find(el: etree._Element, *tags: str) -> etree._Element | None:
    """el.find("a/b") as find(el, "a", "b"), for plain tags: the first b under the first a that has
    one. lxml's ElementPath takes these same iterchildren(tag) steps, after parsing the path in Python
    on every call (a guest's read asks dozens of times)."""
    for c in el.iterchildren(tags[0]):
        found = c if len(tags) == 1 else find(c, *tags[1:])
        if found is not None:
            return found
    return None


def count(el: etree._Element, *tags: str) -> int:
    """len(el.findall("a/b")) as count(el, "a", "b"), for plain tags (the same steps as find)."""
    if len(tags) == 1:
        return sum(1 for _ in el.iterchildren(tags[0]))
    return sum(count(c, *tags[1:]) for c in el.iterchildren(tags[0]))


def _devices_element(tree: etree._ElementTree) -> etree._Element:
    devices = find(tree.getroot(), "devices")
    if devices is None:
        devices = etree.SubElement(tree.getroot(), "devices")
    return devices


def first_children(el: etree._Element) -> dict:
    """Each child tag -> the first child with that tag: what el.find(tag) returns, for every tag from
    one pass over the children (a device's children are asked for several times while it is read)."""
    kids: dict = {}
    for c in el:
        kids.setdefault(c.tag, c)
    return kids


def read_pci_address(el: etree._Element, label: str) -> tuple[PciAddress | None, int | None, bool]:
    """(full address, bus-only pin, has-non-pci-address) of a device element."""
    return _pci_address(find(el, "address"), label)


def _pci_address(addr: etree._Element | None, label: str) -> tuple[PciAddress | None, int | None, bool]:
    """read_pci_address, given the device's <address> element (or None)."""
    if addr is None:
        return None, None, False
    get = addr.get
    if get("type") != "pci":
        return None, None, True
    domain = get("domain")
    if domain is not None and _int(domain, label) != 0:
        raise InputError(f"{label}: PCI domain {domain}: only PCI domain 0 is available")
    bus = get("bus")
    slot = get("slot")
    if slot is None:
        return None, (_int(bus, label) if bus is not None else None), False
    function = get("function")
    try:
        a = _address(bus or "0", slot or "0", function or "0")
    except ValueError:  # say which value is not a number
        a = PciAddress(_int(bus, label), _int(slot, label), _int(function, label))
    if a.bus == 0 and a.slot == 0:
        return None, None, False  # libvirt treats 0000:00:00 as "no address"
    if not (0 <= a.bus <= 255 and 0 <= a.slot <= 31 and 0 <= a.function <= 7):
        raise InputError(f"{label}: PCI address {a} is out of range "
                         "(bus <= 0xff, slot <= 0x1f, function <= 7)")
    return a, None, False


def describe(el: etree._Element, kind: str, position: int, kids: dict | None = None) -> str:
    """A one-line human name for a device element (kids: its first_children, if the caller has them)."""
    kids = first_children(el) if kids is None else kids
    bits = []
    if kind == "interface":
        mac = kids.get("mac")
        model = kids.get("model")
        if model is not None and (mtype := model.get("type")):
            bits.append(mtype)
        if mac is not None and (address := mac.get("address")):
            bits.append(f"mac {address}")
    elif kind == "disk":
        tgt = kids.get("target")
        if tgt is not None and (dev := tgt.get("dev")):
            return f"disk {dev}"
    elif kind == "controller":
        return f"controller {el.get('type')} index={el.get('index', '?')}" + (
            f" ({el.get('model')})" if el.get("model") else ""
        )
    elif kind == "hostdev":
        src = find(el, "source", "address")
        if src is not None:
            bits.append(
                "host "
                + ":".join(
                    str(src.get(k, "0")).removeprefix("0x") for k in ("domain", "bus", "slot")
                )
                + "."
                + str(src.get("function", "0")).removeprefix("0x")
            )
    alias = kids.get("alias")
    if alias is not None and (name := alias.get("name")):
        bits.append(f"alias {name}")
    return f"{kind}[{position}] ({', '.join(bits)})" if bits else f"{kind}[{position}]"


# ---------------------------------------------------------------- machine


def _machine(tree: etree._ElementTree) -> tuple[Machine, str]:
    ostype = find(tree.getroot(), "os", "type")
    if ostype is None:
        raise InputError("os/type: missing; cannot tell the machine type")
    arch = ostype.get("arch") or "x86_64"
    # Without a machine attribute libvirt takes QEMU's default: pc on x86, virt elsewhere.
    name = ostype.get("machine") or ("pc" if arch in ("x86_64", "i686") else "virt")
    machine = machine_for(arch, name)
    if machine is None:
        raise InputError(
            f"os/type: machine '{name}' on arch '{arch}' is not supported "
            "(q35, pc/i440fx on x86_64; virt on aarch64 and riscv64)"
        )
    return machine, arch


def guest_firmware_name(root: etree._Element, machine: Machine, arch: str) -> str:
    """The firmware the guest boots: <os firmware='efi|bios'>, else the <loader> file's name (or a
    pflash loader: UEFI), else the machine's default. riscv64 virt enumerates no PCI in firmware, and
    neither does aarch64 virt booting a <kernel> directly (on x86 SeaBIOS still runs first)."""
    if machine.default_firmware == "none":
        return "none"
    uefi = "aavmf" if arch == "aarch64" else "ovmf"
    os_el = find(root, "os")
    wanted = os_el.get("firmware") if os_el is not None else None
    if wanted == "efi":
        return uefi
    if wanted == "bios":
        if not machine.x86:
            raise InputError(f"os: firmware 'bios' is x86 only, not {arch}")
        return "seabios"
    if wanted is not None:
        raise InputError(f"os: firmware '{wanted}' is not 'efi' or 'bios'")
    loader = find(root, "os", "loader")
    if loader is not None:
        named = firmware_for_loader((loader.text or "").strip())
        if named is None and loader.get("type") == "pflash":
            named = uefi
        if named is not None and arch in firmware_arches(named):
            return named
        if named is not None:
            raise InputError(f"os/loader: '{(loader.text or '').strip()}' is {named} firmware, "
                             f"not for {arch}")
    if arch == "aarch64" and find(root, "os", "kernel") is not None:
        return "none"  # direct kernel boot: QEMU starts the kernel itself, which numbers the buses
    return machine.default_firmware


def firmware_by_name(name: str, machine: Machine, arch: str, acpi: bool) -> Firmware:
    """The budget of a firmware for this guest; InputError when it cannot boot this architecture."""
    if arch not in firmware_arches(name):
        raise InputError(f"firmware: {name} does not boot {arch} guests")
    return firmware(name, machine.family, acpi)


# ---------------------------------------------------------------- implicit devices


def _insert_device(devices: etree._Element, new: etree._Element, after_tags: tuple[str, ...]) -> None:
    """Insert new after the last child whose tag is in after_tags (else after the last element, else at
    the end). Its line and indentation are the serializer's business (planner/xml/xmltext.py), not the
    tree's whitespace. new is made by devices.makeelement: in the document already, where etree.Element
    would make a document of its own for it (twice the cost)."""
    last = None
    for c in reversed(devices):  # from the end: the anchor is mostly near it
        if isinstance(c.tag, str):
            if c.tag in after_tags:
                c.addnext(new)
                return
            last = last if last is not None else c
    if last is None:
        devices.append(new)
    else:
        last.addnext(new)


_CONTROLLER_AFTER = ("emulator", "disk", "controller")
_BALLOON_AFTER = (
    "emulator", "disk", "controller", "lease", "filesystem", "interface", "smartcard", "serial", "parallel",
    "console", "channel", "input", "tpm", "graphics", "sound", "audio", "video", "hostdev", "redirdev",
    "redirfilter", "hub", "watchdog",
)


DRIVES_PER_CONTROLLER = {"scsi": 7, "sata": 6, "ide": 4}


def disk_name_index(dev: str) -> int:
    """libvirt's virDiskNameToIndex: sda → 0, sdz → 25, sdaa → 26."""
    letters = dev.lstrip("abcdefghijklmnopqrstuvwxyz")
    name = dev[: len(dev) - len(letters)] if letters else dev
    for prefix in ("sd", "hd", "vd", "xvd", "ubd", "fd"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    idx = 0
    for ch in name:
        idx = idx * 26 + (ord(ch) - ord("a") + 1)
    return max(idx - 1, 0)


def set_index(el: etree._Element, index: int) -> None:
    """Set index right after type, where libvirt writes it."""
    items = [(k, v) for k, v in el.attrib.items() if k != "index"]
    el.attrib.clear()
    for k, v in items:
        el.set(k, v)
        if k == "type":
            el.set("index", str(index))
    if "index" not in el.attrib:
        el.set("index", str(index))


def _controllers(devices: etree._Element, ctype: str) -> list[etree._Element]:
    return [c for c in devices.iterchildren("controller") if c.get("type") == ctype]


def _controllers_by_type(devices: etree._Element) -> dict[str | None, list[etree._Element]]:
    """type -> the <controller> children of that type, in document order (one pass for every type)."""
    out: dict[str | None, list[etree._Element]] = {}
    for c in devices.iterchildren("controller"):
        out.setdefault(c.get("type"), []).append(c)
    return out


def add_implicit_devices(tree: etree._ElementTree, machine: Machine,
                         controllers: dict[str | None, list[etree._Element]] | None = None) -> list[str]:
    """Add the devices libvirt adds on define, so libvirt has nothing left to add. Returns notes.
    controllers: the document's controllers by type, if the caller has them (_controllers_by_type)."""
    devices = _devices_element(tree)
    notes: list[str] = []
    by_type = _controllers_by_type(devices) if controllers is None else controllers
    indices: dict[str, set[int]] = {}  # type -> its controllers' indices, read when first asked for

    def present(ctype: str) -> set[int]:
        if ctype not in indices:
            indices[ctype] = {_int(c.get("index"), "controller") for c in by_type.get(ctype, ())
                              if c.get("index") is not None}
        return indices[ctype]

    def add_controller(ctype: str, index: int, model: str | None = None) -> None:
        el = devices.makeelement("controller", type=ctype, index=str(index))
        if model:
            el.set("model", model)
        _insert_device(devices, el, _CONTROLLER_AFTER)
        present(ctype).add(index)
        suffix = f" model={model}" if model else ""
        notes.append(f"added implicit controller {ctype} index={index}{suffix}")

    def has_controller(ctype: str, index: int) -> bool:
        return index in present(ctype)

    # The devices of each kind, in document order (devices.findall(kind) for every kind in one pass):
    # nothing added below is a kind read here, but for controllers, which present() accounts for.
    kinds: dict = {}
    for el in devices:
        kinds.setdefault(el.tag, []).append(el)

    # Controllers that disks, channels and consoles need: libvirt adds every index up to the highest
    # one a disk uses, and derives the index from the target name when the disk has no drive address.
    highest: dict[str, int] = {}
    for disk in kinds.get("disk", ()):
        tgt = find(disk, "target")
        bus = tgt.get("bus") if tgt is not None else None
        if bus not in DRIVES_PER_CONTROLLER or (bus == "ide" and machine.family != "pc"):
            continue
        addr = find(disk, "address")
        if addr is not None and addr.get("type") == "drive":
            idx = _int(addr.get("controller"), f"disk {tgt.get('dev')}")
        else:
            idx = disk_name_index(tgt.get("dev") or "") // DRIVES_PER_CONTROLLER[bus]
        highest[bus] = max(highest.get(bus, -1), idx)
    # virDomainDefMaybeAddHostdevSCSIcontroller: the same, up to the highest SCSI hostdev's controller
    for hd in kinds.get("hostdev", ()):
        if hd.get("type") == "scsi":
            addr = find(hd, "address")
            idx = _int(addr.get("controller"), "hostdev address") if addr is not None else 0
            highest["scsi"] = max(highest.get("scsi", -1), idx)
    for bus, top in sorted(highest.items()):
        for idx in range(top + 1):
            if not has_controller(bus, idx):
                add_controller(bus, idx)
    # virDomainDefMaybeAddVirtioSerialController: every virtio channel/console implies the controller
    # its virtio-serial address names (0 without one); indices in between are not filled.
    vserial: set[int] = set()
    for el in [*kinds.get("channel", ()), *kinds.get("console", ())]:
        t = find(el, "target")
        if t is None or t.get("type") != "virtio":
            continue
        addr = find(el, "address")
        on_vserial = addr is not None and addr.get("type") == "virtio-serial"
        vserial.add(_int(addr.get("controller"), f"{el.tag} address") if on_vserial else 0)
    for idx in sorted(vserial):
        if not has_controller("virtio-serial", idx):
            add_controller("virtio-serial", idx)
    # virDomainDefMaybeAddSmartcardController: the ccid controller a smartcard names (a USB device)
    for card in kinds.get("smartcard", ()):
        addr = find(card, "address")
        idx = _int(addr.get("controller"), "smartcard address") if (
            addr is not None and addr.get("type") == "ccid") else 0
        if not has_controller("ccid", idx):
            add_controller("ccid", idx)
    if machine.implicit_sata and not has_controller("sata", 0):
        add_controller("sata", 0)
    # qemuDomainDefAddDefaultDevices: the default USB controller whenever none has index 0, even
    # when other USB controllers exist.
    if machine.implicit_usb and not has_controller("usb", 0):
        add_controller("usb", 0, machine.default_usb)
    if "graphics" in kinds and "video" not in kinds:
        # libvirt gives a graphical console a video card (virDomainDefAddImplicitVideo)
        video = devices.makeelement("video")
        etree.SubElement(video, "model", type=machine.default_video)
        _insert_device(devices, video, _BALLOON_AFTER[: _BALLOON_AFTER.index("video")])
        notes.append("added implicit video for the graphical console")
    if machine.implicit_balloon and "memballoon" not in kinds:
        el = devices.makeelement("memballoon", model="virtio")
        _insert_device(devices, el, _BALLOON_AFTER)
        notes.append("added implicit memballoon model=virtio")
    return notes


# ---------------------------------------------------------------- controllers and indices


def _assign_usb_indices(devices: etree._Element, usb: list[etree._Element] | None = None) -> None:
    """Give unindexed USB controllers libvirt's indices: companions join the set before them.
    usb: the USB controllers, if the caller has them."""
    usb = _controllers(devices, "usb") if usb is None else usb
    used: dict[int, set[str]] = {}
    for c in usb:
        if c.get("index") is not None:
            used.setdefault(_int(c.get("index"), "controller usb"), set()).add(c.get("model") or "")
    last: int | None = None
    for c in usb:
        model = c.get("model") or ""
        if c.get("index") is not None:
            last = _int(c.get("index"), "controller usb")
            continue
        if (
            last is not None
            and model in USB_SET_FUNCTION
            and model not in used.get(last, set())
            and used.get(last, set()) <= set(USB_SET_FUNCTION)
        ):
            idx = last
        else:
            idx = max(used, default=-1) + 1
        set_index(c, idx)
        used.setdefault(idx, set()).add(model)
        last = idx


def _assign_indices(devices: etree._Element, ctype: str, els: list[etree._Element] | None = None) -> None:
    """Lowest unused index, in document order (libvirt's rule for unindexed controllers). els: the
    controllers of ctype, if the caller has them."""
    els = _controllers(devices, ctype) if els is None else els
    used = {_int(c.get("index"), f"controller {ctype}") for c in els if c.get("index") is not None}
    for c in els:
        if c.get("index") is None:
            idx = 0
            while idx in used:
                idx += 1
            set_index(c, idx)
            used.add(idx)


def _read_buses(tree: etree._ElementTree, devices: etree._Element, pci: list[etree._Element],
                machine: Machine, acpi: bool, notes: list[str]) -> dict[int, Bus]:
    """The PCI controllers (pci: the document's, in document order) as buses."""
    models = controller_models()
    # The root first: libvirt adds it when missing, and it must be index 0.
    for c in pci:
        if c.get("index") is None and c.get("model") in ROOTS:
            set_index(c, 0)
    _assign_indices(devices, "pci", pci)
    buses: dict[int, Bus] = {}
    for c in pci:
        idx = _int(c.get("index"), "controller pci")
        model_name = c.get("model")
        label = f"controller pci index={idx}" + (f" ({model_name})" if model_name else "")
        if idx in buses:
            raise InputError(f"{label}: multiple 'pci' controllers with index '{idx}'")
        if idx > MAX_INDEX:
            raise InputError(f"{label}: PCI controller index {idx} too high, maximum is {MAX_INDEX}")
        if idx == 0:
            if model_name != machine.root:
                raise InputError(
                    f"{label}: the PCI controller with index='0' must be model='{machine.root}' "
                    f"for machine family {machine.family}, but model='{model_name}' was found"
                )
        elif model_name is None:
            raise InputError(f"{label}: a PCI controller needs a model")
        elif model_name not in models or model_name in ROOTS:
            raise InputError(f"{label}: unknown or misplaced PCI controller model '{model_name}'")
        model = models[model_name]
        if model_name in EXPANDERS and machine.pxb != model_name:
            raise InputError(f"{label}: {model_name} is not supported with machine family {machine.family}")
        kids = first_children(c)
        addr, bus_pin, other = _pci_address(kids.get("address"), label)
        if other:
            raise InputError(f"{label}: a PCI controller needs a PCI address")
        hotplug = model.hotplug
        tgt = kids.get("target")
        if tgt is not None and tgt.get("hotplug") == "off":
            hotplug = False
        if idx == 0 and machine.acpi_root_hotplug and not acpi:
            hotplug = False  # pci-root hot-plug goes through ACPI
        bus_nr = None
        if tgt is not None and tgt.get("busNr") is not None:
            bus_nr = _int(tgt.get("busNr"), label)
        node = find(c, "target", "node") if tgt is not None else None
        if node is not None:
            cells = count(tree.getroot(), "cpu", "numa", "cell")
            if model_name not in EXPANDERS:
                raise InputError(f"{label}: <target><node> is valid only on an expander bus")
            if _int(node.text, label) >= cells:
                raise InputError(f"{label}: configured for NUMA node {node.text.strip()}, but the domain's "
                                 f"<cpu><numa> has {cells} cell(s)")
        buses[idx] = Bus(idx, model, c, addr, hotplug, label, bus_nr, bus_pin=bus_pin,
                         numa_node=_int(node.text, label) if node is not None else None)
    if 0 not in buses:
        root = devices.makeelement("controller", type="pci", index="0", model=machine.root)
        _insert_device(devices, root, _CONTROLLER_AFTER)
        model = controller_models()[machine.root]
        hotplug = model.hotplug and not (machine.acpi_root_hotplug and not acpi)
        buses[0] = Bus(0, model, root, None, hotplug, f"controller pci index=0 ({machine.root})")
        notes.append(f"added implicit controller pci index=0 model={machine.root}")
    return buses


def _fill_index_gaps(devices: etree._Element, machine: Machine, buses: dict[int, Bus],
                     referenced: int, notes: list[str]) -> None:
    """libvirt fills every missing index below the highest one with a default controller: do it here."""
    top = max(max(buses), referenced)
    default = machine.gap_controller
    for idx in range(1, top + 1):
        if idx in buses:
            continue
        el = devices.makeelement("controller", type="pci", index=str(idx), model=default)
        _insert_device(devices, el, _CONTROLLER_AFTER)
        model = controller_models()[default]
        buses[idx] = Bus(idx, model, el, None, model.hotplug, f"controller pci index={idx} ({default})",
                         added=True)
        notes.append(f"added {default} index={idx}: libvirt fills every missing controller index")


# ---------------------------------------------------------------- devices


def _model_of(el: etree._Element, kind: str, machine: Machine, kids: dict) -> tuple[str, str]:
    """(lookup kind, model) for the device table; ('', '') when the element never takes a PCI address.
    kids: the element's first_children."""
    if kind == "interface":
        if el.get("type") == "hostdev":
            return "hostdev", "pci"
        m = kids.get("model")
        model = (m.get("type") if m is not None else None) or machine.default_net
        lower = model.lower()
        return "interface", lower if lower.startswith("virtio") else model
    if kind == "disk":
        tgt = kids.get("target")
        if tgt is None or tgt.get("bus") != "virtio":
            return "", ""
        return "disk", el.get("model") or "virtio"
    if kind == "controller":
        ctype = el.get("type") or ""
        if ctype == "pci":
            return "", ""
        model = el.get("model")
        if ctype == "usb":
            model = model or machine.default_usb
        elif ctype == "scsi":
            model = model or machine.default_scsi
        elif ctype in ("sata", "ide", "virtio-serial"):
            model = model or "*"
            if ctype == "ide" and machine.family != "pc":
                return "", ""
        else:
            return f"controller:{ctype}", model or ""  # ccid, fdc, xenbus, isa: no PCI form
        return f"controller:{ctype}", model
    if kind == "hostdev":
        if el.get("mode", "subsystem") != "subsystem":
            return "", ""
        t = el.get("type")
        if t == "pci":
            return "hostdev", "pci"
        if t == "scsi_host":
            transitional = el.get("model") == "virtio-transitional"
            return "hostdev", "scsi_host-transitional" if transitional else "scsi_host"
        if t == "mdev" and el.get("model") == "vfio-pci":
            return "hostdev", "mdev"
        return "", ""
    if kind == "video":
        m = kids.get("model")
        return "video", (m.get("type") if m is not None and m.get("type") else machine.default_video)
    if kind == "sound":
        return "sound", el.get("model") or ""
    if kind == "watchdog":
        return "watchdog", el.get("model") or ""
    if kind == "memballoon":
        return "memballoon", el.get("model") or "virtio"
    if kind in ("rng", "vsock"):
        return kind, el.get("model") or "virtio"
    if kind == "input":
        if el.get("bus") != "virtio":
            return f"input:{el.get('bus') or 'ps2'}", ""
        return "input", el.get("model") or "virtio"
    if kind == "filesystem":
        drv = kids.get("driver")
        if el.get("model") == "virtio-transitional":
            return "filesystem", "virtio-transitional"
        return "filesystem", (drv.get("type") if drv is not None and drv.get("type") else "9p")
    if kind == "memory":
        return "memory", el.get("model") or ""
    if kind == "shmem":
        return "shmem", "ivshmem"
    if kind == "serial":
        tgt = kids.get("target")
        return ("serial", "pci-serial") if tgt is not None and tgt.get("type") == "pci-serial" else ("", "")
    if kind == "crypto":
        return "crypto", el.get("model") or "virtio"
    if kind == "iommu":
        return "iommu", el.get("model") or ""
    if kind == "panic":
        return "panic", el.get("model") or ""
    if kind == "pstore":
        return "pstore", el.get("backend") or ""
    return "", ""


# Children of <devices> that are no device at all.
NEVER_DEVICES = frozenset({"emulator", "console"})
# A device libvirt never addresses but whose given PCI address it keeps and reserves (a sound sb16, a
# ps2 input): it is planned around like a pinned conventional device that can never move.
RESERVED = DeviceClass(key="reserved", cls="pci", hotplug=False)


def _stale_pci_address(addr: etree._Element | None, label: str, facts: DeviceClass,
                       notes: list[str]) -> str | None:
    """A PCI address (addr: the device's <address>) on a kind that never takes one: do what libvirt 9.0
    does. Returns "keep" when the address stays (reserved), None when there is nothing to plan; refuses
    what libvirt refuses and what the catalogue does not know."""
    if addr is None or addr.get("type") != "pci":
        return None
    where = " ".join(f"{k}={addr.get(k)}" for k in ("bus", "slot", "function") if addr.get(k) is not None)
    if facts.pci_address == "drop":
        remove_element(addr)
        notes.append(f"warning: dropped the stale PCI address ({where}) of {label}: libvirt never gives "
                     "this device a PCI address and drops it too")
        return None
    if facts.pci_address == "keep":
        return "keep"
    if facts.pci_address == "refuse":
        raise InputError(f"{label}: has a PCI address, but {facts.reason}")
    what = facts.key.removesuffix(":")
    raise InputError(f"{label}: has a PCI address, but pciplan does not know '{what}' as a PCI device; "
                     "remove the address, or describe the kind in models/devices.toml")


def endpoint_of(machine: Machine, facts: DeviceClass) -> str:
    """"pcie" where libvirt puts the device on PCIe (virtio and PCIe devices on PCIe machines)."""
    return "pcie" if machine.pcie and facts.cls in ("virtio", "pcie") else "pci"


def _read_devices(devices_el: etree._Element, machine: Machine, mmio: list[str],
                  notes: list[str]) -> list[Device]:
    out: list[Device] = []
    counters: dict[str, int] = {}
    serials: list[Device] = []
    for order, el in enumerate(devices_el):
        kind = el.tag
        if not isinstance(kind, str):
            continue
        position = counters.get(kind, 0)
        counters[kind] = position + 1
        if kind == "console":
            # libvirt writes the first serial's address on a console that mirrors it
            tgt = find(el, "target")
            mirrors = tgt is None or tgt.get("type") in (None, "serial")
            if serials and mirrors and position == 0 and find(el, "address") is not None:
                serials[0].mirrors.append(el)
            continue
        if kind in NEVER_DEVICES or (kind == "controller" and el.get("type") == "pci"):
            continue
        kids = first_children(el)
        lookup, model = _model_of(el, kind, machine, kids)
        if not lookup:
            lookup, model = kind, ""  # no PCI form on this machine: the catalogue's "kind:*" says more
        facts = device_class(lookup, model)
        address = kids.get("address")
        if facts.cls == "none" and not (facts.refused or facts.note) and (
                address is None or address.get("type") != "pci"):
            continue  # no PCI device, and nothing to say about it (below: no stale address)
        label = describe(el, kind, position + 1, kids)  # 1-based, like XPath and check
        if facts.refused:  # a guest libvirt cannot define has no plan
            raise InputError(f"{label}: {facts.reason}")
        if facts.cls == "none":
            if facts.note:  # say why a device this libvirt does not place stays unaddressed
                notes.append(f"warning: {label}: {facts.note}")
            stale = _stale_pci_address(address, label, facts, notes)
            if stale is None:
                continue
            facts = RESERVED
        addr, bus_pin, other = _pci_address(address, label) if address is not None else (None, None, False)
        if other:
            if address is not None and address.get("type") == "virtio-mmio":
                mmio.append(label)
            continue  # virtio-mmio, ccw, unassigned ...: not on PCI
        if facts is RESERVED and addr is None:
            continue  # a partial address on a kind libvirt never places: nothing to reserve
        if facts.note:
            notes.append(f"warning: {label}: {facts.note}")
        endpoint = endpoint_of(machine, facts)
        dev = Device(el, kind, model, label, order, endpoint, facts, addr, bus_pin)
        if kind == "serial":
            serials.append(dev)
        out.append(dev)
    return out


def _group_usb_sets(devices: list[Device]) -> list[Device]:
    """Fold ich9 USB2 companion controllers into their set's first member: one slot, fixed functions."""
    sets: dict[int, list[Device]] = {}
    rest: list[Device] = []
    for d in devices:
        if d.kind == "controller" and d.element.get("type") == "usb" and d.model in USB_SET_FUNCTION:
            idx = _int(d.element.get("index"), d.label)
            sets.setdefault(idx, []).append(d)
            d.function = USB_SET_FUNCTION[d.model]
        else:
            rest.append(d)
    for members in sets.values():
        members.sort(key=lambda m: m.function)
        head = members[0]
        head.companions = members[1:]
        rest.append(head)
    rest.sort(key=lambda d: d.order)
    return rest


def _apply_fixed_and_conventions(machine: Machine, devices: list[Device]) -> None:
    primary = None
    videos = []
    first_sound = None
    for d in devices:  # (one pass for both)
        if d.kind == "video":
            videos.append(d)
        elif first_sound is None and d.kind == "sound" and d.model == "ich9":
            first_sound = d
    for v in videos:
        m = find(v.element, "model")
        if m is not None and m.get("primary") == "yes":
            primary = v
    if primary is None and videos:
        primary = videos[0]
    for d in devices:
        key = None
        if d.kind == "controller":
            ctype = d.element.get("type")
            idx = d.element.get("index")
            for k in (f"controller:{ctype}:{idx}:{d.model}", f"controller:{ctype}:{idx}"):
                if k in machine.fixed:
                    key = k
                    break
        if key is not None:
            slot, fn = machine.fixed[key]
            want = PciAddress(0, slot, fn)
            if d.address is not None and d.address != want:
                raise InputError(f"{d.label}: must have PCI address 00:{slot:02x}.{fn} on this machine")
            d.address = want
            continue
        if d is primary:
            d.convention = machine.conventions.get("primary_video", ())
        elif d is first_sound:
            d.convention = machine.conventions.get("first_ich9_sound", ())
        elif d.companions or (d.kind == "controller" and d.model in USB_SET_FUNCTION):
            d.convention = machine.conventions.get("ich9_usb_set", ())


def read_problem(tree: etree._ElementTree, firmware_override: str | None = None) -> Problem:
    """Build the planning problem; adds libvirt's implicit devices to the tree (the tree is the output).
    firmware_override (--firmware) replaces the firmware the XML names."""
    machine, arch = _machine(tree)
    root = tree.getroot()
    if root.get("type") not in (None, "qemu", "kvm"):
        raise InputError(f"domain: type '{root.get('type')}' is not a QEMU domain (qemu or kvm)")
    acpi = find(root, "features", "acpi") is not None
    numa_cells = count(root, "cpu", "numa", "cell")
    if count(root, "devices", "watchdog") > 1:
        raise InputError("devices/watchdog: only a single watchdog device is supported (libvirt 9.0)")
    devices_el = _devices_element(tree)
    # The user's controllers by type: implicit devices add none of type pci, and add_implicit_devices
    # keeps its own account of the others it adds.
    controllers = _controllers_by_type(devices_el)
    pci = controllers.get("pci", [])
    user_pci = any(c.get("model") not in ROOTS for c in pci)
    # Index the user's controllers first: libvirt numbers them before it adds implicit ones.
    _assign_usb_indices(devices_el, controllers.get("usb", []))
    for ctype in ("scsi", "sata", "ide", "virtio-serial"):
        _assign_indices(devices_el, ctype, controllers.get(ctype, []))
    notes = add_implicit_devices(tree, machine, controllers)
    buses = _read_buses(tree, devices_el, pci, machine, acpi, notes)
    mmio: list[str] = []
    devices = _group_usb_sets(_read_devices(devices_el, machine, mmio, notes))
    referenced = max(
        [d.address.bus for d in devices if d.address] + [d.bus_pin for d in devices if d.bus_pin is not None]
        + [b.address.bus for b in buses.values() if b.address]
        + [b.bus_pin for b in buses.values() if b.bus_pin is not None] + [0]
    )
    _fill_index_gaps(devices_el, machine, buses, referenced, notes)
    _apply_fixed_and_conventions(machine, devices)
    fw = firmware_by_name(firmware_override or guest_firmware_name(root, machine, arch), machine, arch, acpi)
    return Problem(machine, tree, arch, buses, devices, acpi, numa_cells, notes, user_pci, mmio, fw)
