"""`pciplan show`: the PCI tree of a domain XML, as a terminal tree and as a picture.

The tree follows libvirt's addressing: every `<controller type='pci' index=N>` is bus N, and every
`<address type='pci' bus slot function>` says which bus a device or controller plugs into. Bus numbers are
libvirt indexes, not the guest's firmware-assigned numbers. Facts (which buses hot-plug, which devices take
SeaBIOS I/O windows) come from planner.checker.check, the independent checker, so both tools judge alike.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import io
import math
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING

from lxml import etree

if TYPE_CHECKING:  # rich is imported where a tree is drawn: plan and compare only count
    from rich.text import Text
    from rich.tree import Tree

from planner.checker.check import (
    CONVENTIONAL_BRIDGES,
    DEFAULT_NET_MODEL,
    DEFAULT_VIDEO_MODEL,
    PC,
    PORT_MODELS,
    PXB_MODELS,
    Q35,
    ROOT_MODEL,
    SLOT_RANGE,
    X86_FAMILIES,
    Reading,
    classify,
    firmware_budget,
    firmware_label,
    firmware_pads,
    guest_firmware,
    machine_family,
    read_devices,
)
from planner.xml.xmlio import write_atomic

BUS = "bus"
ENDPOINT = "endpoint"

# Conventional buses whose slots take hot-plug (SHPC); ports are handled apart (one slot each).
HOTPLUG_BRIDGES = frozenset({"pci-bridge", "pcie-to-pci-bridge"})
# Device classes libvirt 9.0 never live-attaches (libvirt-pci-spec.md §3.2): they get no [hot-plug] marker
# even in a hot-pluggable slot. Controllers other than SCSI are in this set too (see _pluggable_class).
# serial: a pci-serial (the only serial with a PCI address), like the solver (devices.toml hotplug=false)
NEVER_HOTPLUG_TAGS = frozenset({"video", "sound", "memballoon", "iommu", "panic", "serial"})
# Slots of a hot-pluggable root bus the chipset owns: pc's PIIX3 sits at 00:01.
RESERVED_ROOT_SLOTS = {PC: frozenset({1})}
# QEMU device names libvirt uses by default; any other <model name> is worth showing.
DEFAULT_QEMU_MODELS = frozenset({
    "pcie-root-port", "pcie-pci-bridge", "pci-bridge", "x3130-upstream", "xio3130-downstream",
    "i82801b11-bridge", "pxb", "pxb-pcie",
})
# The picture puts a bus's entries into one table once there are more than this many.
GROUP_THRESHOLD = 8
DOT_TIMEOUT_SECONDS = 120


class PictureError(RuntimeError):
    """The picture cannot be written: unknown format, or neither Graphviz nor matplotlib works."""


@dataclass(eq=False)  # tree nodes compare by identity: a deep field comparison of subtrees is never wanted
class Node:
    """A PCI bus (a `<controller type='pci'>`, the root included) or an endpoint device.

    `hotplug` means, for a bus, that its slots are hot-pluggable; for an endpoint, that it can be hot-plugged
    and unplugged where it sits (a hot-pluggable device class, alone in a hot-pluggable slot).
    """

    kind: str  # BUS or ENDPOINT
    label: str  # what it is, without address or markers: "pcie-root-port #1 (chassis 1, port 0x10)"
    model: str = ""  # controller model ("pcie-root-port") or the device's element tag ("interface")
    bus: int | None = None  # the bus it plugs into; None for the root and unaddressed devices
    slot: int | None = None
    function: int | None = None
    index: int | None = None  # buses: the bus number (libvirt index) this controller provides
    children: list[Node] = field(default_factory=list)
    hotplug: bool = False
    numa_node: int | None = None  # pxb/pxb-pcie: <target><node>
    bus_nr: int | None = None  # pxb/pxb-pcie: <target busNr>
    io_bar: bool = False  # endpoint: has an I/O BAR when directly on a PCIe port
    io_window: bool = False  # bus: takes one of the firmware's few I/O windows
    free_slots: int = 0  # multi-slot hot-pluggable bus: slots nothing uses (spare capacity)
    note: str = ""  # unaddressed nodes: why ("virtio-mmio address", "bus 0x12 missing")
    machine: str = ""  # root only: machine family (q35, pc, aarch64-virt, ...)
    firmware: str = ""  # root only: the guest's firmware (seabios, ovmf, aavmf, none)
    padded: bool | None = None  # spare port: the firmware gives it I/O (None: no spare or no firmware)
    unaddressed: list[Node] = field(default_factory=list)  # root only: devices with no usable PCI address
    # the position of its element among <devices>' element children (None: the root): the same node
    # of any equal document (metrics.DocumentViews.for_equal shares trees between equal documents)
    position: int | None = None

    @property
    def address(self) -> str:
        """`BB:SS.F`, `bus BB` for the root, empty when unaddressed."""
        if self.bus is not None and self.slot is not None and self.function is not None:
            return f"{self.bus:02x}:{self.slot:02x}.{self.function:x}"
        if self.machine:  # only the root knows the machine
            return "bus 00"
        return ""

    @property
    def spare(self) -> bool:
        """An empty hot-pluggable PCIe port: room to hot-plug one device later."""
        return self.kind == BUS and self.model in PORT_MODELS and self.hotplug and not self.children

    def markers(self) -> list[str]:
        out: list[str] = []
        if self.spare and self.padded is False:
            out.append("empty: the firmware leaves it no I/O window, so it is no spare")
        elif self.spare:
            out.append("empty: spare hot-plug port")
        elif self.kind == BUS and not self.children and self.model in PORT_MODELS:
            out.append("empty")
        elif self.hotplug:
            out.append("hot-plug" + (f", {self.free_slots} free slots" if self.free_slots else ""))
        if self.io_window:
            out.append("I/O window")
        return out

    def line(self) -> str:
        """One line of the text tree: `BB:SS.F  what [markers]`."""
        text = f"{self.address}  {self.label}" if self.address else self.label
        if self.note:
            text += f" ({self.note})"
        return text + "".join(f" [{m}]" for m in self.markers())

    def walk(self) -> Iterator[Node]:
        """This node and everything below it, depth first, in slot order."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))


# ---------------------------------------------------------------------------------------------------
# Reading the XML


@functools.lru_cache(maxsize=4096)  # a document repeats the same few values many times
def _number(text: str | None) -> int | None:
    # libvirt reads addresses with strtoul base 0: 0x.. hex, a leading 0 octal, else decimal
    if text is None:
        return None
    text = text.strip()
    try:
        if text.lower().startswith("0x"):
            return int(text[2:], 16)
        if len(text) > 1 and text.startswith("0"):
            return int(text[1:], 8)
        return int(text, 10)
    except ValueError:
        return None


def _child(el: etree._Element, tag: str) -> etree._Element | None:
    """el.find(tag) for a plain tag name, without ElementPath's cost (a fleet reads many trees)."""
    return next(el.iterchildren(tag), None)


def _attr(el: etree._Element, tag: str, name: str) -> str | None:
    found = _child(el, tag)
    return found.get(name) if found is not None else None


def _host_address(el: etree._Element) -> str | None:
    source = _path(el, "source", "address")
    if source is None or source.get("bus") is None:
        return None
    parts = [_number(source.get(k, "0")) or 0 for k in ("domain", "bus", "slot", "function")]
    return f"{parts[0]:04x}:{parts[1]:02x}:{parts[2]:02x}.{parts[3]:x}"


def _describe_device(el: etree._Element, family: str) -> str:
    """What a device is, in a few words: `interface virtio 52:54:00:12:34:56`, `disk vda virtio`."""
    tag = el.tag
    words: list[str | None] = [tag]
    if tag == "interface":
        model = _attr(el, "model", "type") or DEFAULT_NET_MODEL.get(family, "")
        host = _host_address(el) if el.get("type") == "hostdev" else None
        words += ["hostdev" if host else model, host, _attr(el, "mac", "address")]
    elif tag == "disk":
        words += [_attr(el, "target", "dev"), el.get("model") or _attr(el, "target", "bus")]
    elif tag == "controller":
        index = el.get("index")
        words += [el.get("type"), el.get("model"), f"index {index}" if index not in (None, "0") else None]
    elif tag == "hostdev":
        host = _host_address(el)
        words += [host] if el.get("type") == "pci" and host else [el.get("type"), el.get("model"), host]
    elif tag == "video":
        words.append(_attr(el, "model", "type") or DEFAULT_VIDEO_MODEL.get(family, ""))
    else:
        words += [el.get("model") or _attr(el, "model", "type"), el.get("type") or el.get("bus")]
    text = " ".join(w for w in words if w)
    alias = _attr(el, "alias", "name")
    return text + (f" (alias {alias})" if alias else "")


def _path(el: etree._Element, first: str, second: str) -> etree._Element | None:
    """el.find("first/second") for plain tag names (the first match over every <first>), without
    ElementPath's cost."""
    for parent in el.iterchildren(first):
        found = next(parent.iterchildren(second), None)
        if found is not None:
            return found
    return None


def _controller_target(target: etree._Element | None) -> tuple[int | None, int | None]:
    """A PCI controller's NUMA node and busNr (pxb only), from its <target>."""
    if target is None:
        return None, None
    node = _child(target, "node") if len(target) else None  # most targets have no children at all
    node_text = None if node is None else node.text or ""  # as findtext: "" for an empty <node/>
    return (_number(node_text) if node_text is not None else None), _number(target.get("busNr"))


def _describe_controller(el: etree._Element, model: str, index: int,
                         kids: dict) -> tuple[str, int | None, int | None]:
    """Label of a PCI controller, with its NUMA node and busNr (pxb only)."""
    details: list[str] = []
    target = kids.get("target")
    numa_node, bus_nr = _controller_target(target)
    if target is not None:
        chassis, port = target.get("chassis"), _number(target.get("port"))
        if chassis is not None:
            details.append(f"chassis {chassis}")
        if port is not None:
            details.append(f"port {port:#x}")
        if target.get("chassisNr") is not None:
            details.append(f"chassisNr {target.get('chassisNr')}")
        if bus_nr is not None:
            details.append(f"busNr {bus_nr}")
        if numa_node is not None:
            details.append(f"NUMA node {numa_node}")
        if target.get("hotplug") == "off":
            details.append("hotplug off")
    model_el = kids.get("model")
    qemu_model = model_el.get("name") if model_el is not None else None
    name = model + (f" {qemu_model}" if qemu_model and qemu_model not in DEFAULT_QEMU_MODELS else "")
    label = f"{name} #{index}" + (f" ({', '.join(details)})" if details else "")
    return label, numa_node, bus_nr


def _read_address(address: tuple[str | None, ...] | None) -> tuple[tuple[int, int, int] | None, str]:
    """(bus, slot, function) of a device's <address> (its attributes as a check.Reading keeps them, or
    None), or None and why the device counts as unaddressed."""
    if address is None:
        return None, ""
    if address[0] != "pci":
        return None, f"{address[0]} address"
    _type, _domain, bus_text, slot_text, function_text, _multifunction = address
    bus = _number(bus_text if bus_text is not None else "0")
    slot = _number(slot_text if slot_text is not None else "0")
    function = _number(function_text if function_text is not None else "0")
    if bus is None or slot is None or function is None:
        return None, "bad PCI address"
    if slot_text is None or (bus == 0 and slot == 0):
        return None, "incomplete PCI address"  # libvirt would assign one
    return (bus, slot, function), ""


def _pluggable_class(el: etree._Element, kids: dict, tag: str) -> bool:
    """Whether libvirt can live-attach and detach this kind of device (el, its tag) at all."""
    if tag in NEVER_HOTPLUG_TAGS:
        return False
    if tag == "controller":
        return el.get("type") == "scsi"
    if tag == "filesystem":
        driver = kids.get("driver")
        return driver is not None and driver.get("type") == "virtiofs"  # 9p cannot be hot-plugged
    return True


def build_tree(tree: etree._ElementTree, firmware: str | None = None, labels: bool = True,
               reading: Reading | None = None) -> Node:
    """The PCI tree of a domain: the root node is bus 0; unaddressed devices hang on root.unaddressed.
    firmware: judge spare ports by this firmware instead of the one the XML boots. Without labels the
    nodes' labels stay empty (a tree only counted, never shown: a quarter of the work is the words).
    reading: the document's check.read_devices, where the caller keeps one (the check of the same
    document shares it). Each element is read once: a bus's hot-plug and an endpoint's class as it is
    met, the children put in slot order as they are hung."""
    domain = tree.getroot()
    family, _arch, _machine = machine_family(domain)
    if reading is None:
        reading = read_devices(domain)
    elements = reading.elements
    root_el = None  # the root: the first PCI controller with index 0 (met in the loop below)
    if family is None:  # unknown machine: guess from the root it declares
        root_el = next((el for el in elements if el.tag == "controller" and el.get("type") == "pci"
                        and _number(el.get("index")) == 0), None)
        family = PC if root_el is not None and root_el.get("model") == "pci-root" else Q35
        kinds = [None if el.tag == "controller" and el.get("type") == "pci" else classify(el, family, kids)
                 for el, kids in zip(elements, reading.kids, strict=True)]
    else:
        kinds = reading.classified(family)  # the check's, where it classified them already
    acpi = _path(domain, "features", "acpi") is not None

    buses: dict[int, Node] = {}
    built: list[tuple[Node, bool]] = []  # every node, in document order, and whether it has an address
    controllers: list[Node] = []
    pluggable: set[int] = set()  # endpoints (by id) of a class libvirt hot-plugs at all
    columns = zip(elements, reading.tags, reading.controllers, reading.kids, reading.addresses, kinds,
                  strict=True)
    for position, (el, tag, ctl, kids, attrs, kind) in enumerate(columns):
        if ctl is not None and ctl[0] == "pci":
            _type, index_text, model_text = ctl
            index = _number(index_text)
            model = model_text or ""
            if index == 0 and (root_el is None or el is root_el):
                root_el = el
                continue
            if labels:
                label, numa_node, bus_nr = _describe_controller(el, model, index if index is not None else -1,
                                                                kids)
            else:
                label, (numa_node, bus_nr) = "", _controller_target(kids.get("target"))
            node = Node(BUS, label, model=model, index=index, numa_node=numa_node, bus_nr=bus_nr,
                        position=position)
            if model in PORT_MODELS:
                target = kids.get("target")
                node.hotplug = target is None or target.get("hotplug") != "off"
            else:
                node.hotplug = model in HOTPLUG_BRIDGES
            if index is not None and index not in buses:
                buses[index] = node
            address, why = _read_address(attrs)
            node.note = why if address is None else ""
            controllers.append(node)
        else:
            address, why = _read_address(attrs)
            if address is None and kind is None:
                continue  # not a PCI device (serial, USB input, ...)
            io_bar = bool(kind and kind.io_bar_on_port)
            node = Node(ENDPOINT, _describe_device(el, family) if labels else "", model=tag, io_bar=io_bar,
                        note=why, position=position)
            if _pluggable_class(el, kids, tag):
                pluggable.add(id(node))
        if address is not None:
            node.bus, node.slot, node.function = address
        built.append((node, address is not None))

    root_model = root_el.get("model") if root_el is not None else ROOT_MODEL.get(family, "pcie-root")
    root = Node(BUS, f"{root_model} ({family})", model=root_model or "", index=0, machine=family,
                firmware=firmware or guest_firmware(domain, family))
    if root_el is not None and root_el.get("model") == "pci-root":
        root.hotplug = acpi and _attr(root_el, "target", "hotplug") != "off"
    buses[0] = root

    # Hang each node on its bus (unaddressed ones in document order); hung in slot order (a stable
    # sort: equal places keep document order), every bus's children are in slot order already.
    placed: list[tuple[tuple[int, int], Node, Node]] = []  # (slot order, node, the bus it hangs on)
    for node, addressed in built:
        if not addressed:
            root.unaddressed.append(node)
            continue
        parent = buses.get(node.bus)  # type: ignore[arg-type]
        if parent is None:
            node.note = f"bus {node.bus:#04x} missing"
            root.unaddressed.append(node)
            continue
        placed.append(((node.slot or 0, node.function or 0), node, parent))
    placed.sort(key=itemgetter(0))
    for _order, node, parent in placed:
        parent.children.append(node)
    if _may_loop(controllers):
        _break_cycles(root, controllers)
    nodes = _walked(root)  # the tree in slot order, depth first
    pads = firmware_pads(root.firmware)
    spares = _mark(root, nodes, family, pluggable, family in X86_FAMILIES or pads, pads)
    for top in root.unaddressed:
        for bus in top.walk():
            if bus.kind == BUS and bus.hotplug:
                _mark_hotplug(root, bus, family, pluggable)
    _mark_padding(root, nodes, spares, acpi, pads)
    return root


def _walked(root: Node) -> list[Node]:
    """list(root.walk()), without a generator's cost."""
    nodes = []
    stack = [root]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if node.children:
            stack.extend(reversed(node.children))
    return nodes


def _may_loop(controllers: list[Node]) -> bool:
    """Whether a controller plugs into a bus whose index is not below its own. Without one, every
    chain of parents descends in index down to the root: there is no loop for _break_cycles to cut."""
    return any(n.bus is not None and n.index is not None and n.bus >= n.index for n in controllers)


def _break_cycles(root: Node, controllers: list[Node]) -> None:
    # A controller that plugs (through others) into itself never reaches the root: list it as unaddressed.
    parent_of = {id(child): node for node in controllers + [root] for child in node.children}
    rooted: set[int] = set()  # nodes whose chain of parents ends (cutting a loop never changes that)
    for node in controllers:
        seen: set[int] = set()
        cursor: Node | None = node
        while cursor is not None and id(cursor) not in seen and id(cursor) not in rooted:
            seen.add(id(cursor))
            cursor = parent_of.get(id(cursor))
        if cursor is None or id(cursor) in rooted:
            rooted |= seen
        else:  # came back to a node already seen: a loop
            loop_parent = parent_of.pop(id(node), None)
            if loop_parent is not None:
                loop_parent.children.remove(node)
                node.note = "plugs into its own subtree"
                root.unaddressed.append(node)


def _mark(root: Node, nodes: list[Node], family: str, pluggable: set[int], io: bool,
          pads: bool) -> list[Node]:
    """Mark the tree's buses in one pass (_mark_hotplug where they hot-plug; with io, their I/O
    windows) and return its spare ports, in slot order."""
    spares = []
    for bus in nodes:
        if bus.kind != BUS:
            continue
        if bus.hotplug:
            _mark_hotplug(root, bus, family, pluggable)
            if not bus.children and bus.model in PORT_MODELS:
                spares.append(bus)  # bus.spare
        if io and bus is not root:
            _mark_io_window(bus, pads)
    return spares


def _mark_hotplug(root: Node, bus: Node, family: str, pluggable: set[int]) -> None:
    """On a hot-pluggable bus: an endpoint hot-plugs alone in a slot, if its class does; a multi-slot
    bus counts its free slots. (The buses' own hot-plug is set as they are read.)"""
    children = bus.children
    if len(children) == 1:
        only = children[0]
        if only.kind == ENDPOINT:
            only.hotplug = id(only) in pluggable
        per_slot: dict[int | None, int] = {only.slot: 1}
    else:
        per_slot = {}
        for child in children:
            per_slot[child.slot] = per_slot.get(child.slot, 0) + 1
        for child in children:
            if child.kind == ENDPOINT:
                child.hotplug = per_slot[child.slot] == 1 and id(child) in pluggable
    if bus.model not in PORT_MODELS:
        first, last = SLOT_RANGE.get(bus.model, (1, 31))
        reserved = RESERVED_ROOT_SLOTS.get(family, frozenset()) if bus is root else frozenset()
        bus.free_slots = sum(1 for s in range(first, last + 1) if s not in per_slot and s not in reserved)


def _mark_io_window(node: Node, pads: bool) -> None:
    # Same count as planner.checker.check: conventional bridges always, PCIe ports only with an I/O-BAR device
    # directly on them (nested port windows add no space); under UEFI (pads), anywhere below them.
    if node.model in CONVENTIONAL_BRIDGES:
        node.io_window = True
    elif node.model in PORT_MODELS:
        node.io_window = any(c.kind == ENDPOINT and c.io_bar for c in node.children)
        if pads and not node.io_window:
            # edk2 gives a port a window for the I/O-BAR devices anywhere below it
            node.io_window = any(c.kind == ENDPOINT and c.io_bar for c in node.walk() if c is not node)


def _mark_padding(root: Node, nodes: list[Node], spares: list[Node], acpi: bool, pads: bool) -> None:
    """Which spare ports (spares, in slot order) the firmware gives I/O. UEFI (edk2) pads every empty
    hot-plug port with a 4 KiB window while windows last and drops the whole padding of the rest;
    SeaBIOS gives an empty PCIe port memory but no I/O, and a device hot-plugged there works without
    I/O BARs. Which ports edk2 pads is its choice: the first ones in slot order are marked."""
    if not pads:
        for n in spares:
            n.padded = True if root.firmware == "seabios" else None
        return
    budget = firmware_budget(root.firmware, root.machine, acpi)
    if budget is None or not budget[1]:
        return
    # windows directly on the root bus or on an expander bus (top-level ones)
    used = sum(1 for p in nodes if p is root or p.model in PXB_MODELS
               for n in p.children if n.io_window and not n.spare)
    left = max(0, budget[1] - used)
    for i, n in enumerate(spares):
        n.padded = i < left


# ---------------------------------------------------------------------------------------------------
# Summary


def summary(root: Node) -> dict:
    """Counts for a report: controllers by model, endpoints, hot-plug capacity, bus numbers, I/O windows."""
    nodes = list(root.walk())
    buses = [n for n in nodes if n.kind == BUS]
    endpoints = [n for n in nodes if n.kind == ENDPOINT]
    x86 = root.machine in X86_FAMILIES
    budget = firmware_budget(root.firmware, root.machine, True)
    # a pci-expander-bus owns two bus numbers (its root bus and an internal bridge)
    bus_numbers = sum(2 if b.model == "pci-expander-bus" else 1 for b in buses)
    return {
        "machine": root.machine,
        "controllers": dict(sorted(Counter(b.model for b in buses).items())),
        "endpoints": len(endpoints),
        "hotplug_endpoints": sum(1 for n in endpoints if n.hotplug),
        "spare_hotplug_ports": sum(1 for b in buses if b.spare),
        "spare_hotplug_slots": sum(b.free_slots for b in buses),
        "bus_numbers_used": bus_numbers,
        "bus_indexes": sorted(b.index for b in buses if b.index is not None),
        "io_window_users": sum(1 for b in buses if b.io_window) if x86 or budget else None,
        "io_space_bytes": budget[0] if budget else None,  # with <acpi/>
        "firmware": root.firmware,
        "firmware_label": firmware_label(root.firmware),
        "firmware_max_io_windows": budget[1] if budget and budget[1] else None,
        "spare_ports": [{"port": b.label, "address": b.address, "firmware_pads_it": b.padded}
                        for b in buses if b.spare],
        "numa_nodes": sorted({b.numa_node for b in buses if b.numa_node is not None}),
        "unaddressed": sum(1 for top in root.unaddressed for _ in top.walk()),
    }


# ---------------------------------------------------------------------------------------------------
# Terminal


def _style_of(node: Node) -> str:
    if node.kind == BUS:
        return "bold cyan" if node.index == 0 else "cyan"
    return ""


def _rich_label(node: Node) -> Text:
    from rich.text import Text

    text = Text()
    if node.address:
        text.append(node.address, style="dim" if node.kind == ENDPOINT else "bold")
        text.append("  ")
    text.append(node.label, style=_style_of(node))
    if node.note:
        text.append(f" ({node.note})", style="yellow")
    for marker in node.markers():
        style = "dim italic" if marker.startswith("empty") else "red" if marker == "I/O window" else "green"
        text.append(f" [{marker}]", style=style)
    return text


def _add_branch(parent: Tree, node: Node) -> None:
    branch = parent.add(_rich_label(node))
    for child in node.children:
        _add_branch(branch, child)


def render_rich(root: Node) -> Tree:
    """The tree for a rich console; unaddressed devices come last under "unaddressed"."""
    from rich.text import Text
    from rich.tree import Tree

    tree = Tree(_rich_label(root), guide_style="dim")
    for child in root.children:
        _add_branch(tree, child)
    if root.unaddressed:
        rest = tree.add(Text(f"unaddressed ({len(root.unaddressed)})", style="bold yellow"))
        for node in root.unaddressed:
            _add_branch(rest, node)
    return tree


def render_text(root: Node, *, width: int = 100, color: bool = False) -> str:
    """The tree as text, one `BB:SS.F  what [markers]` line per node; ANSI colours only when asked."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system="standard" if color else None,
                      force_terminal=color, highlight=False, emoji=False, legacy_windows=False)
    console.print(render_rich(root))
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# Picture (Graphviz)

FONT = "DejaVu Sans"
MONO = "DejaVu Sans Mono"
HEADER_COLOURS = {  # by what a bus is, so the kinds of bridges stand apart at a glance
    "pci-root": "#c9d3e6", "pcie-root": "#c9d3e6",
    "pcie-root-port": "#d6e7f7", "pcie-switch-downstream-port": "#d6e7f7",
    "pcie-switch-upstream-port": "#e4dcf3",
    "pci-bridge": "#fbe2c2", "pcie-to-pci-bridge": "#fbe2c2", "dmi-to-pci-bridge": "#fbe2c2",
    "pci-expander-bus": "#d5eccd", "pcie-expander-bus": "#d5eccd",
}
HOTPLUG_COLOUR = "#1e7d32"
IO_COLOUR = "#b03a2e"
SPARE_FILL = "#f1f1f1"
SPARE_TEXT = "#777777"
# Row height and character width (points, at the picture's font size) used to shape entry grids.
ROW_POINTS = 15.0
CHAR_POINTS = 5.6
ASPECT = 1.6  # width : height a grid of entries aims at (a screen is about 16:10)
MAX_STACK_WIDENING = 4
COLUMN_GAP = 16  # points between the columns of a grid, so one entry's markers never touch the next address


def _html(text: str) -> str:
    return html.escape(text, quote=True)


def _markers_html(node: Node) -> str:
    parts = []
    for marker in node.markers():
        if marker.startswith("empty"):
            colour = SPARE_TEXT
        else:
            colour = IO_COLOUR if marker == "I/O window" else HOTPLUG_COLOUR
        parts.append(f' <FONT COLOR="{colour}">[{_html(marker)}]</FONT>')
    return "".join(parts)


def _line_html(node: Node) -> str:
    address = f'<FONT FACE="{MONO}">{_html(node.address)}</FONT>  ' if node.address else ""
    note = f" ({_html(node.note)})" if node.note else ""
    return f"{address}{_html(node.label)}{note}{_markers_html(node)}"


def _folds_into_entry(node: Node) -> bool:
    """A bus drawn as one entry of its parent: empty, or holding exactly one endpoint."""
    if node.kind != BUS:
        return False
    return not node.children or (len(node.children) == 1 and node.children[0].kind == ENDPOINT)


def _entry_text(node: Node) -> tuple[str, int]:
    """One entry (endpoint, or a port above its one device) as HTML, and its widest line in characters."""
    if not (node.kind == BUS and node.children):
        return _line_html(node), len(node.line())
    child = node.children[0]
    port = node
    if child.hotplug and port.hotplug:
        # the device's [hot-plug] says it already; one marker per entry keeps the cell narrow
        port = dataclasses.replace(port, hotplug=False)
    text = f'{_line_html(port)}<BR ALIGN="LEFT"/>↳ {_line_html(child)}<BR ALIGN="LEFT"/>'
    return text, max(len(port.line()), len(child.line()) + 2)


def _entry_lines(node: Node) -> int:
    return 2 if node.kind == BUS and node.children else 1


def _entry_fill(node: Node) -> str:
    return f' BGCOLOR="{SPARE_FILL}"' if node.spare else ""


def _grid_shape(count: int, chars: int, lines: int = 1, aspect: float = ASPECT) -> tuple[int, int]:
    """(rows, columns) for count entries of about chars characters and lines lines each: about aspect times
    as wide as high, never one long row nor one endless column."""
    if count <= 12:
        return count, 1
    cell_ratio = max(chars, 20) * CHAR_POINTS / (ROW_POINTS * lines)  # entry width in entry heights
    columns = max(1, round(math.sqrt(count * aspect / cell_ratio)))
    return math.ceil(count / columns), columns


class _DotWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counter = 0

    def new_id(self) -> str:
        self.counter += 1
        return f"n{self.counter}"

    def header_rows(self, chain: list[Node], span: int) -> str:
        rows = []
        for position, node in enumerate(chain, 1):
            fill = HEADER_COLOURS.get(node.model, "#e6e6e6")
            text = _line_html(node)
            if position == len(chain) and node.index and node.children:
                # indexes are decimal in the XML, bus numbers hex in addresses: name the bus listed below
                text += f'  <FONT COLOR="#555555">→ bus {node.index:02x}</FONT>'
            rows.append(f'<TR><TD COLSPAN="{span}" BGCOLOR="{fill}" ALIGN="LEFT"><B>{text}</B></TD></TR>')
        return "".join(rows)

    def bus(self, bus: Node, siblings: int = 1) -> str:
        """Emit a bus (with single-bus chains folded into its header) and everything below it.

        siblings: how many bus boxes stack in this column; each is then made wider so that the column
        does not grow into a tall strip."""
        chain = [bus]
        # a port holding only a bridge or a switch: one box with two header lines instead of two boxes
        while len(chain[-1].children) == 1 and chain[-1].children[0].kind == BUS \
                and not _folds_into_entry(chain[-1].children[0]):
            chain.append(chain[-1].children[0])
        last = chain[-1]
        entries = [c for c in last.children if c.kind == ENDPOINT or _folds_into_entry(c)]
        sub_buses = [c for c in last.children if c.kind == BUS and not _folds_into_entry(c)]
        node_id = self.new_id()
        grouped = len(entries) > GROUP_THRESHOLD
        if grouped:
            aspect = ASPECT * min(siblings, MAX_STACK_WIDENING)
            self.lines.append(f"  {node_id} [label=<{self.grid_table(chain, entries, aspect)}>];")
        else:
            self.lines.append(f"  {node_id} [label=<{self.table(chain, [])}>];")
        boxes = len(sub_buses) + (0 if grouped else len(entries))
        for child in last.children:  # in slot order: with ordering=out, boxes stack top to bottom by address
            if any(child is sub for sub in sub_buses):
                child_id = self.bus(child, boxes)
            elif grouped:
                continue
            else:
                child_id = self.new_id()
                body = f'<TR><TD ALIGN="LEFT"{_entry_fill(child)}>{_entry_text(child)[0]}</TD></TR>'
                self.lines.append(f"  {child_id} [label=<{self.table([], [body])}>];")
            self.lines.append(f"  {node_id} -> {child_id};")
        return node_id

    def table(self, chain: list[Node], body_rows: list[str]) -> str:
        return ('<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" COLOR="#555555">'
                + self.header_rows(chain, 1) + "".join(body_rows) + "</TABLE>")

    def grid_table(self, chain: list[Node], entries: list[Node], aspect: float) -> str:
        texts = [_entry_text(e) for e in entries]
        lines = max(_entry_lines(e) for e in entries)
        rows, columns = _grid_shape(len(entries), max(length for _, length in texts), lines, aspect)
        body = []
        gap = f'<TD WIDTH="{COLUMN_GAP}"></TD>'
        for r in range(rows):
            cells = []
            for c in range(columns):
                i = c * rows + r  # column-major: addresses read top to bottom, then the next column
                if i < len(entries):
                    cells.append(f'<TD ALIGN="LEFT"{_entry_fill(entries[i])}>{texts[i][0]}</TD>')
                else:
                    cells.append("<TD></TD>")
            body.append("<TR>" + gap.join(cells) + "</TR>")
        return ('<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2" COLOR="#555555">'
                + self.header_rows(chain, 2 * columns - 1) + "".join(body) + "</TABLE>")


def render_dot(root: Node) -> str:
    """Graphviz source: left-to-right, one box per bus, a bus's many entries grouped in one table."""
    writer = _DotWriter()
    writer.lines += [
        "digraph pci {",
        "  graph [rankdir=LR, ranksep=0.6, nodesep=0.15, ordering=out, bgcolor=white, pad=0.2];",
        f'  node [shape=plaintext, fontname="{FONT}", fontsize=10, margin=0];',
        # explicit sides: dot clips edges of HTML-table nodes badly otherwise (arrowheads stop short)
        '  edge [color="#666666", arrowsize=0.6, tailport=e, headport=w];',
    ]
    root_id = writer.bus(root)
    if root.unaddressed:
        rows = [f'<TR><TD ALIGN="LEFT">{_entry_text(n)[0]}</TD></TR>'
                for top in root.unaddressed for n in top.walk()]
        header = f'<TR><TD BGCOLOR="#f7e3a1" ALIGN="LEFT"><B>unaddressed ({len(rows)})</B></TD></TR>'
        table = ('<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" COLOR="#555555">'
                 + header + "".join(rows) + "</TABLE>")
        writer.lines.append(f"  unaddressed [label=<{table}>];")
        # an invisible last edge from the root puts the list below the tree, not beside the root
        writer.lines.append(f"  {root_id} -> unaddressed [style=invis];")
    writer.lines.append("}")
    return "\n".join(writer.lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Writing the picture


def _dot_binary() -> str | None:
    return shutil.which("dot") or ("/usr/bin/dot" if Path("/usr/bin/dot").exists() else None)


def _with_dot(dot: str, source: str, fmt: str) -> bytes:
    done = subprocess.run([dot, f"-T{fmt}"], input=source.encode(), capture_output=True,
                          timeout=DOT_TIMEOUT_SECONDS, check=False)
    if done.returncode != 0 or not done.stdout:
        raise PictureError(f"dot -T{fmt} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def _with_matplotlib(root: Node, fmt: str) -> bytes:
    """The text tree drawn in columns: no Graphviz, but still one picture with nothing overlapping."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as exc:
        raise PictureError("cannot draw the picture: neither Graphviz `dot` nor matplotlib is installed") \
            from exc
    lines = render_text(root, width=400).rstrip("\n").splitlines()
    longest = max(len(line) for line in lines)
    rows, columns = _grid_shape(len(lines), longest + 4)
    rows = max(rows, 1)
    font_points = 8.0
    line_inches = font_points * 1.3 / 72
    char_inches = font_points * 0.62 / 72
    column_inches = (longest + 4) * char_inches
    figure = pyplot.figure(figsize=(columns * column_inches + 0.4, rows * line_inches + 0.4))
    try:
        width, height = figure.get_size_inches()
        for i, line in enumerate(lines):
            column, row = divmod(i, rows)
            figure.text((0.2 + column * column_inches) / width, 1 - (0.2 + (row + 1) * line_inches) / height,
                        line, fontsize=font_points, family="DejaVu Sans Mono", va="baseline")
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=110)
    finally:
        pyplot.close(figure)
    return buffer.getvalue()


def write_picture(root: Node, path: str) -> None:
    """Write the tree as .svg or .png (by suffix): Graphviz `dot` when present, else matplotlib."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise PictureError(f"{path}: picture must end in .svg or .png")
    dot = _dot_binary()
    data = _with_dot(dot, render_dot(root), fmt) if dot else _with_matplotlib(root, fmt)
    write_atomic(path, data)
