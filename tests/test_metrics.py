"""planner/pipeline/metrics.py: the counts taken on the PCI tree of a plain document (DocumentViews.plain)
equal the ones the domain reader gives (a fresh copy read with read_problem), over the corpus
(tests/recorded.py) and generated guests, as given and as planned, and over variants of the planned
ones that move what the tree and the reader judge apart (hot-plug off on a port or the root, no ACPI).

CI reads a quarter of the corpus; PCIPLAN_RECORDED_FULL=1 reads all of it."""

from __future__ import annotations

import copy
import functools
import os
import random
from collections import Counter
from collections.abc import Iterator

from fleetgen import typical_guest
from lxml import etree
from recorded import corpus

from planner.checker.check import io_space_needed
from planner.facts.errors import Infeasible
from planner.facts.options import PlanOptions
from planner.pipeline.domain import read_problem
from planner.pipeline.metrics import (
    DocumentViews,
    Headroom,
    headroom,
    headroom_of_problem,
    measure,
    pcie_on_conventional,
)
from planner.pipeline.plan import plan_tree
from planner.pipeline.show import Node, build_tree
from planner.xml.xmlio import InputError, parse_domain_bytes

FULL = os.environ.get("PCIPLAN_RECORDED_FULL") == "1"


def _read(tree: etree._ElementTree) -> tuple[Headroom, int] | str:
    """The counts as they were taken before the tree was used: the domain reader's, on a copy."""
    try:
        problem = read_problem(etree.ElementTree(copy.deepcopy(tree.getroot())))
    except (InputError, ValueError) as exc:
        return type(exc).__name__
    return headroom_of_problem(problem), pcie_on_conventional(problem)


def _variants(tree: etree._ElementTree) -> Iterator[tuple[str, etree._ElementTree]]:
    """The planned document, and copies with hot-plug off on the first port or the pci-root (the tree
    and the reader each decide hot-plug their own way) or without ACPI (pc's root hot-plug)."""
    yield "planned", tree
    root = tree.getroot()
    for model in ("pcie-root-port", "pci-root"):
        if root.find(f"devices/controller[@model='{model}']") is not None:
            off = copy.deepcopy(root)
            c = off.find(f"devices/controller[@model='{model}']")
            target = c.find("target")
            if target is None:
                target = etree.SubElement(c, "target")
            target.set("hotplug", "off")
            yield f"hotplug off on {model}", etree.ElementTree(off)
    devices = root.find("devices")
    used = {(a.get("bus"), a.get("slot")) for a in root.iterfind("devices/*/address[@type='pci']")}
    # a PCI address on a device libvirt never addresses (the reader drops it): on the root's first
    # free slot and on an empty port
    free = [("0x00", f"{s:#04x}") for s in range(2, 31) if ("0x00", f"{s:#04x}") not in used]
    empty = [c.get("index") for c in root.iterfind("devices/controller[@model='pcie-root-port']")
             if (f"{int(c.get('index')):#04x}", "0x00") not in used]
    for bus, slot in free[:1] + [(f"{int(i):#04x}", "0x00") for i in empty[:1]]:
        stale = copy.deepcopy(root)
        graphics = etree.SubElement(stale.find("devices"), "graphics", type="vnc")
        etree.SubElement(graphics, "address", type="pci", domain="0x0000", bus=bus, slot=slot,
                         function="0x0")
        yield f"stale address at {bus}:{slot}", etree.ElementTree(stale)
    # a PCI controller with an address of another kind: the reader refuses it, the tree leaves it
    # unaddressed
    if devices is not None and free:
        odd = copy.deepcopy(root)
        index = 1 + max(int(c.get("index")) for c in odd.iterfind("devices/controller[@type='pci']"))
        c = etree.SubElement(odd.find("devices"), "controller", type="pci", model="pci-bridge",
                             index=str(index))
        etree.SubElement(c, "address", type="isa", iobase="0x300")
        yield "controller without a PCI address", etree.ElementTree(odd)
    if root.find("features/acpi") is not None:
        bare = copy.deepcopy(root)
        acpi = bare.find("features/acpi")
        acpi.getparent().remove(acpi)
        yield "no acpi", etree.ElementTree(bare)


def _guests() -> Iterator[tuple[str, bytes]]:
    for i, (name, data) in enumerate(corpus()):
        if FULL or name.startswith("examples/") or i % 4 == 0:
            yield name, data
    rng = random.Random(21)
    for n in range(300 if FULL else 60):
        yield f"typical/{n}", typical_guest(n, rng).encode()


@functools.cache
def _documents() -> list[tuple[str, str, etree._ElementTree]]:
    """(guest, what, document): each guest as given, as planned, and the planned one's variants."""
    out = []
    for name, data in _guests():
        try:
            given = parse_domain_bytes(data, name)
        except InputError:
            continue
        out.append((name, "given", given))
        planned = copy.deepcopy(given)
        try:
            plan_tree(planned, PlanOptions())
        except (InputError, Infeasible):
            continue
        out += [(name, what, tree) for what, tree in _variants(planned)]
    return out


def test_counts_on_the_tree_equal_the_domain_readers() -> None:
    met: Counter = Counter()
    for name, what, tree in _documents():
        want = _read(tree)
        views = DocumentViews(tree)
        try:
            got = (headroom(views), measure(tree, views).pcie_on_conventional)
        except (InputError, ValueError) as exc:
            got = type(exc).__name__
        assert got == want, f"{name} ({what}): tree {got}, domain reader {want}"
        met["stale"] += what.startswith("stale")
        if isinstance(got, str):
            met["refused"] += 1
        elif views.plain:
            met["given" if what == "given" else "planned"] += 1
            met["variant"] += what not in ("given", "planned")
            if got[0].pcie_ports and got[0].pci_slots:
                met["ports and slots"] += 1
            if got[1]:
                met["pcie on conventional"] += 1
    # the tree answered for many documents, with both kinds of place, as given, planned and varied
    assert met["planned"] > 200 and met["given"] > 0 and met["variant"] > 100, met
    assert met["ports and slots"] > 30, met
    assert met["pcie on conventional"] > 0, met  # where the reader classes the devices: it answers
    assert met["stale"] > 50 and met["refused"] > 50, met  # where the tree must not answer: it does not


def test_the_checks_io_space_is_io_space_needed() -> None:
    """DocumentViews.io_space_needed (plan's I/O space after a tie with libvirt) takes the check's own
    reading; where the check set an address aside it reads the document again: the same answer."""
    met: Counter = Counter()
    for name, what, tree in _documents():
        variants = [(tree, None, what)]
        bad = copy.deepcopy(tree)
        addresses = [a for a in bad.getroot().iterfind("devices/*/address[@type='pci']")
                     if a.getparent().tag != "controller"]
        for address in addresses:  # PCI domain 1: the rules set the devices aside, io_space_needed not
            address.set("domain", "0x0001")
        if addresses:
            variants.append((bad, None, "domain 1"))
        for document, firmware, kind in variants + [(tree, "ovmf", what + ", ovmf")]:
            views = DocumentViews(document, firmware)
            got, want = views.io_space_needed, io_space_needed(document, firmware)
            assert got == want, f"{name} ({kind}): views {got}, io_space_needed {want}"
            met["from the check" if views.checked.io_known else "read again"] += 1
            met["budget"] += views.checked.io_known and got is not None
    assert met["budget"] > 500 and met["read again"] > 50, met


def test_the_views_tree_is_shows_tree_without_labels() -> None:
    """DocumentViews.pci_tree leaves the labels out (build_tree's labels=False): everything else is the
    tree `pciplan show` draws."""

    def nodes(root: Node) -> list[dict]:
        every = list(root.walk()) + [n for top in root.unaddressed for n in top.walk()]
        return [{k: v for k, v in vars(n).items() if k not in ("label", "children", "unaddressed")}
                | {"children": len(n.children), "root": n is root}
                for n in every]

    labelled = 0
    for name, what, tree in _documents():
        shown, counted = build_tree(tree), DocumentViews(tree).pci_tree
        assert nodes(counted) == nodes(shown), f"{name} ({what})"
        assert all(n.label == "" for n in counted.walk() if n is not counted)
        labelled += sum(1 for n in shown.walk() if n.label)
    assert labelled > 1000


def test_a_shared_reading_changes_nothing() -> None:
    """The check and the tree of one document share a check.Reading (DocumentViews): whichever reads
    first classifies the devices for the other. Either way round, the same violations, I/O space and
    tree as each reading the document alone."""
    from planner.checker.check import check_document, read_devices

    def nodes(root: Node) -> list[dict]:
        every = list(root.walk()) + [n for top in root.unaddressed for n in top.walk()]
        return [{k: v for k, v in vars(n).items() if k not in ("children", "unaddressed")}
                | {"children": len(n.children)} for n in every]

    def checked(c) -> tuple:
        return [(v.element, v.rule, v.message) for v in c.violations], c.io_space, c.io_known

    def with_odd_device(tree: etree._ElementTree) -> etree._ElementTree:
        """A copy with a USB tablet given a PCI address on a port: the check takes it for conventional
        PCI (no class of its own), the tree for an endpoint without one."""
        odd = copy.deepcopy(tree)
        port = odd.getroot().find("devices/controller[@model='pcie-root-port']")
        if port is None:
            return odd
        tablet = etree.SubElement(odd.getroot().find("devices"), "input", type="tablet", bus="usb")
        etree.SubElement(tablet, "address", type="pci", domain="0x0000", bus=f"{int(port.get('index')):#04x}",
                         slot="0x00", function="0x0")
        return odd

    documents = _documents() + [(name, what + ", odd device", with_odd_device(tree))
                                for name, what, tree in _documents() if what == "planned"]
    shared = 0
    for name, what, tree in documents:
        for firmware in (None, "ovmf"):
            alone = checked(check_document(tree, firmware=firmware)), nodes(build_tree(tree, firmware, False))
            check_first = read_devices(tree.getroot())
            a = checked(check_document(tree, firmware=firmware, reading=check_first))
            b = nodes(build_tree(tree, firmware, False, reading=check_first))
            assert (a, b) == alone, f"{name} ({what}, {firmware}): the check read first"
            tree_first = read_devices(tree.getroot())
            b = nodes(build_tree(tree, firmware, False, reading=tree_first))
            a = checked(check_document(tree, firmware=firmware, reading=tree_first))
            assert (a, b) == alone, f"{name} ({what}, {firmware}): the tree read first"
            shared += bool(check_first.kinds) and bool(tree_first.kinds)
    assert shared > 500
