"""How good a completed layout is, whoever made it (pciplan, libvirt's greedy, the user), and what it
can still take live: the objective's levels as the checker's view of the XML measures them, and the
free hot-plug places. plan, ties, compare, show, fleet and attach all take their counts from here."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

from lxml import etree

from planner.checker.check import (
    CONVENTIONAL_BRIDGES,
    WARNING_RULES,
    Checked,
    Reading,
    Violation,
    check_document,
    io_space_needed,
    read_devices,
)
from planner.facts.facts import PORTS, ROOTS
from planner.pipeline.domain import Bus, PciAddress, Problem, read_problem
from planner.pipeline.show import BUS, ENDPOINT, Node, build_tree, summary


class DocumentViews:
    """A completed document as the checker, `pciplan show` and the domain reader see it, each view
    computed once when first asked for: valid while the document is not changed (whoever changes it
    makes new views)."""

    def __init__(self, tree: etree._ElementTree, firmware: str | None = None) -> None:
        self.tree = tree
        self.firmware = firmware

    def for_equal(self, tree: etree._ElementTree) -> DocumentViews:
        """The views of tree, a document equal to this one (the same elements, attributes and text in
        the same order), with whatever was computed here: the views read only those."""
        views = DocumentViews(tree, self.firmware)
        # (not the reading: it holds this document's elements)
        views.__dict__.update({k: v for k, v in self.__dict__.items()
                               if k not in ("tree", "firmware", "reading")})
        return views

    @cached_property
    def reading(self) -> Reading:
        """The document's devices as the check and the tree both read them (check.read_devices)."""
        return read_devices(self.tree.getroot())

    @cached_property
    def pci_tree(self) -> Node:
        """The PCI tree `pciplan show` draws, without its labels: the views count, never show."""
        return build_tree(self.tree, self.firmware, labels=False, reading=self.reading)

    @cached_property
    def problem(self) -> Problem:
        # read_problem completes the document it reads: a plain copy of the elements will do (no
        # need to write the text out and parse it again); only read, never written
        return read_problem(etree.ElementTree(copy.deepcopy(self.tree.getroot())))

    @cached_property
    def checked(self) -> Checked:
        return check_document(self.tree, firmware=self.firmware, reading=self.reading)

    @cached_property
    def violations(self) -> list[Violation]:
        """Everything `pciplan check` says of it, warnings included."""
        return self.checked.violations

    @cached_property
    def io_space_needed(self) -> tuple[int, int] | None:
        """check.io_space_needed of the document (for the views' firmware): from the check's own
        reading where that can tell, without reading the document again."""
        checked = self.checked
        return checked.io_space if checked.io_known else io_space_needed(self.tree, self.firmware)

    @cached_property
    def plain(self) -> bool:
        """The checker finds no error and no stale address here, and the PCI tree hangs every
        controller below the root: every PCI address is complete and on a bus a controller gives,
        indexes have no gaps, duplicates or loops, and the domain reader would drop no address. Then
        the tree and the domain reader see the same buses and the same occupied slots, and the counts
        below come from the tree, without reading the document again (tests/test_metrics.py compares
        both over the corpus)."""
        if any(v.rule not in WARNING_RULES or v.rule == "stale-address" for v in self.violations):
            return False
        return not any(n.kind == BUS for top in self.pci_tree.unaddressed for n in top.walk())


@dataclass
class LayoutMetrics:
    ok: bool
    error: str | None = None
    seconds: float = 0.0
    controllers_added: dict[str, int] = field(default_factory=dict)
    controllers_total: int = 0
    bus_numbers: int = 0
    hotplug_devices: int = 0
    pcie_on_conventional: int = 0
    spare_hotplug_ports: int = 0
    spare_hotplug_slots: int = 0
    rule_violations: list[str] = field(default_factory=list)  # incl. SeaBIOS I/O space
    status: str = ""  # solver status (pciplan only)


def pci_controllers(tree: etree._ElementTree) -> Counter:
    """PCI controllers by model, the root excepted (both planners add it when missing)."""
    return Counter(c.get("model") for c in tree.getroot().iter("controller")
                   if c.get("type") == "pci" and c.get("model") not in ROOTS)


def measure(before: etree._ElementTree, after: etree._ElementTree | DocumentViews,
            firmware: str | None = None, pcie: bool | None = None) -> LayoutMetrics:
    """The same metrics for any completed layout, whoever made it (judged for firmware, or the
    guest's own). after may come as its views (then judged for the views' firmware). pcie: whether
    the machine has PCIe, where the caller knows it (on one without, no device is PCIe,
    domain.endpoint_of: none is on conventional PCI, and the document need not be read for that)."""
    views = after if isinstance(after, DocumentViews) else DocumentViews(after, firmware)
    after = views.tree
    added = pci_controllers(after) - pci_controllers(before)
    counts = summary(views.pci_tree)
    on_pci = 0 if pcie is False else _pcie_on_conventional_plain(views)
    if on_pci is None:
        on_pci = pcie_on_conventional(views.problem)
    return LayoutMetrics(
        ok=True,
        controllers_added=dict(sorted(added.items())),
        controllers_total=sum(pci_controllers(after).values()),
        bus_numbers=counts["bus_numbers_used"],
        hotplug_devices=counts["hotplug_endpoints"],
        pcie_on_conventional=on_pci,
        spare_hotplug_ports=counts["spare_hotplug_ports"],
        spare_hotplug_slots=counts["spare_hotplug_slots"],
        rule_violations=rule_errors(views),
    )


def rule_errors(views: DocumentViews) -> list[str]:
    """The checker's errors (its warnings aside), as measure words them."""
    return [f"{v.rule}: {v.message}" for v in views.violations if v.rule not in WARNING_RULES]


def pcie_on_conventional(problem: Problem) -> int:
    """PCIe-capable devices (as the domain reader classes them) on a conventional bus."""
    on_pci = 0
    for d in problem.devices:
        a = d.address
        if d.endpoint == "pcie" and a is not None and problem.buses[a.bus].model.conventional:
            on_pci += 1
    return on_pci


def _pcie_on_conventional_plain(views: DocumentViews) -> int | None:
    """pcie_on_conventional without reading the document again where the answer is 0 for sure: a
    plain document on a pci-root machine (no device there is PCIe, domain.endpoint_of), or one with
    no device on a conventional bus. None where the domain reader must class the devices."""
    if not views.plain:
        return None
    root = views.pci_tree
    if root.model == "pci-root":
        return 0
    for bus in root.walk():
        if bus.kind == BUS and (bus.model in CONVENTIONAL_BRIDGES or bus.model == "pci-root") and any(
                c.kind == ENDPOINT for c in bus.children):
            return None
    return 0


def objective_vector(m: LayoutMetrics, machine: str) -> tuple[int, int, int, int]:
    """pciplan's objective levels L2–L5, measured on any layout: devices not in a hot-pluggable slot
    (as a negative count) plus a missing spare port or slot, PCIe-capable devices on conventional PCI,
    controllers added, bus numbers used. Smaller is better, compared left to right."""
    added = sum(m.controllers_added.values())
    if machine == "pc":
        short = 1 if m.spare_hotplug_slots == 0 else 0
    else:  # pciplan's default headroom: one empty hot-pluggable PCIe port, always
        short = 1 if m.spare_hotplug_ports == 0 else 0
    return (short - m.hotplug_devices, m.pcie_on_conventional, added, m.bus_numbers)


# ---------------------------------------------------------------------------------------------------
# Free hot-plug places (pciplan attach, headroom)


@dataclass(frozen=True)
class Place:
    address: PciAddress
    bus: str  # the controller that offers the slot

    def __str__(self) -> str:
        return f"{self.address} ({self.bus})"


def occupied(tree: etree._ElementTree) -> set[tuple[int, int]]:
    used = set()
    for a in tree.getroot().iterfind("devices/*/address[@type='pci']"):
        if a.get("slot") is not None:
            used.add((int(a.get("bus", "0"), 0), int(a.get("slot"), 0)))
    return used


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


def headroom(tree: etree._ElementTree | DocumentViews) -> Headroom:
    """The live hot-plug places of an addressed guest, by kind of place. Given its views, a plain
    document (DocumentViews.plain) is counted on the PCI tree, as `pciplan show` counts spare ports
    and free slots."""
    if isinstance(tree, DocumentViews) and tree.plain:
        return headroom_of_tree(tree.pci_tree)
    return headroom_of_problem((tree if isinstance(tree, DocumentViews) else DocumentViews(tree)).problem)


def headroom_of_tree(root: Node) -> Headroom:
    """Empty hot-pluggable ports and free slots of hot-pluggable conventional buses, on the tree: the
    same as headroom_of_problem where the document is plain (show's hot-pluggable buses with free
    slots are all conventional, its spare ports are the empty hot-pluggable ones)."""
    ports = slots = 0
    for n in root.walk():
        if n.kind == BUS:
            ports += 1 if n.spare else 0
            slots += n.free_slots
    return Headroom(ports, slots)


def headroom_of_problem(problem: Problem) -> Headroom:
    """The same counts as the domain reader sees the document (for any document it reads)."""
    used = occupied(problem.tree)
    reserved = problem.machine.reserved_slots
    ports = slots = 0
    for b in problem.buses.values():
        ports += len(free_slots(reserved, b, used, pcie=True))
        slots += len(free_slots(reserved, b, used, pcie=False))
    return Headroom(ports, slots)


def free_slots(reserved: frozenset[int], b: Bus, used: set[tuple[int, int]], pcie: bool) -> list[Place]:
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
