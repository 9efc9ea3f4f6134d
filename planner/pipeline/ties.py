"""Ties go to libvirt's choice. When pciplan's objective cannot tell its own layout from the one libvirt
would write (same controllers, bus numbers, hot-pluggable devices, PCIe devices on PCIe, spare slots
and ports, no rule broken), write libvirt's: a user who compares then sees a difference only where it
buys something.

libvirt's layout comes from the built-in greedy (planner/pipeline/greedy.py, libvirt 9.0's algorithm). Only
the addresses are taken over, element by element, and libvirt's new PCI controllers replace pciplan's, so
the user's document stays the user's document.
"""

from __future__ import annotations

import copy
import functools
from collections import Counter

from lxml import etree

from planner.pipeline.domain import PciAddress, Problem
from planner.pipeline.greedy import greedy_plan_tree, new_buses_at_least
from planner.pipeline.metrics import DocumentViews, measure, rule_errors
from planner.pipeline.render import set_pci_address
from planner.pipeline.show import BUS, Node
from planner.xml.xmlio import remove_element

IN_PLACE = True  # prefer_libvirt's _tie_in_place; tests/test_ties.py turns it off to compare
ERRORS_KEPT = True  # _tie_in_place's _errors_kept; tests/test_ties.py turns it off to compare
SAME_DEVICES = True  # prefer_libvirt's shortcut on byte-equal <devices>; tests/test_ties.py compares too
MAX_DEVICES = 256  # larger guests keep pciplan's layout in a tie (libvirt's greedy grows quadratically)


def _key(el: etree._Element, primary: etree._Element | None, alias: etree._Element | None,
         mac: etree._Element | None, target: etree._Element | None) -> tuple:
    """What names a device across the two documents (libvirt's parser reorders controllers and disks,
    fills in default models, lists the primary video first and forgets aliases that are not ua-).
    alias, mac, target: el's first child of that tag, or None."""
    tag = el.tag
    if alias is not None:
        name = alias.get("name") or ""
        if name.startswith("ua-"):
            return (tag, "alias", name)
    if tag == "controller":
        model = el.get("model")
        companion = model if model is not None and model.startswith("ich9-") else None
        return (tag, el.get("type"), str(int(el.get("index") or "0", 0)), companion)
    if mac is not None and (address := mac.get("address")):
        return (tag, "mac", address.lower())
    if tag == "disk" and target is not None and (dev := target.get("dev")):
        return (tag, "dev", dev)
    if el is primary:
        return (tag, "primary")
    return (tag,)


def _keyed(tree: etree._ElementTree, addresses: dict[tuple, etree._Element | None] | None = None
           ) -> dict[tuple, etree._Element]:
    """Elements by key and occurrence, in document order. addresses, if given, gets each one's first
    <address> child (or None) by the same key: the children are read in one pass, not found by tag."""
    out: dict[tuple, etree._Element] = {}
    seen: dict[tuple, int] = {}
    videos = tree.getroot().findall("devices/video")
    marked = [v for v in videos if v.find("model") is not None and v.find("model").get("primary") == "yes"]
    primary = (marked or videos or [None])[0]
    for el in tree.getroot().find("devices"):
        if not isinstance(el.tag, str):
            continue
        alias = mac = target = address = None
        for c in el:
            t = c.tag
            if t == "address":
                if address is None:
                    address = c
            elif t == "target":
                if target is None:
                    target = c
            elif t == "mac":
                if mac is None:
                    mac = c
            elif t == "alias" and alias is None:
                alias = c
        k = _key(el, primary, alias, mac, target)
        seen[k] = seen.get(k, 0) + 1
        k = (*k, seen[k])
        out[k] = el
        if addresses is not None:
            addresses[k] = address
    return out


def _pci(el: etree._Element) -> tuple[PciAddress, bool] | None:
    return _pci_at(el.find("address"))


def _pci_at(a: etree._Element | None) -> tuple[PciAddress, bool] | None:
    """_pci of the element whose <address> is a (or that has none)."""
    if a is None or a.get("type") != "pci":
        return None
    return _address(a.get("bus"), a.get("slot"), a.get("function")), a.get("multifunction") == "on"


@functools.lru_cache(maxsize=4096)  # a fleet's documents repeat the same few places
def _address(bus: str, slot: str, function: str) -> PciAddress:
    return PciAddress(int(bus, 0), int(slot, 0), int(function, 0))


def _comparable(before: etree._ElementTree, after: DocumentViews, spare_pci: int, spare_pcie: int,
                pcie: bool):
    """The objective's levels 2-5 as any completed layout shows them (the checker's view, not the
    solver's), plus the checker's errors: metrics.measure's. pcie: the machine has PCIe (without it,
    measure need not read the domain: tests/test_ties.py compares this with measure's own answer)."""
    m = measure(before, after, pcie=pcie)
    return (m.controllers_total, m.bus_numbers, m.hotplug_devices, m.pcie_on_conventional,
            min(m.spare_hotplug_ports, spare_pcie), min(m.spare_hotplug_slots, spare_pci),
            tuple(m.rule_violations))


def prefer_libvirt(written: DocumentViews, original: etree._ElementTree, problem: Problem,
                   spare_pci: int, spare_pcie: int) -> DocumentViews | None:
    """Rewrite what pciplan chose (never an address the input gave) with libvirt's layout when that
    ties with pciplan's: device addresses, the places of the input's unaddressed controllers, and
    the new PCI controllers. written: pciplan's document and its views (measured here, so that the
    caller reads them again if the document stays). Returns the views of the document it rewrote, or
    None when it left it as it was."""
    tree = written.tree
    if problem.mmio_devices:
        return None
    if any(d.hotplug_rule or d.bus_rule or d.numa_rule is not None or d.connection_rule
           for d in problem.devices):
        return None  # libvirt knows nothing of pciplan's rules
    if any(b.new_expander for b in problem.buses.values()):
        return None
    if sum(1 + len(d.companions) for d in problem.devices) > MAX_DEVICES:
        return None  # libvirt's greedy costs more than the plan itself there, and ties are rare
    chosen = [el for d in problem.devices if d.address is None and d.bus_pin is None
              for m in [d, *d.companions] for el in [m.element, *m.mirrors]]
    chosen += [b.element for b in problem.buses.values()
               if b.index != 0 and b.address is None and b.bus_pin is None and b.element is not None]
    known = set(problem.buses)
    new_ours = _new_controllers(tree, known)
    if not chosen and not new_ours:
        # pciplan chose nothing (a planned guest planned again): no change to take over, and libvirt's
        # new controllers, if any, cannot match pciplan's none: below, that is a None too
        return None

    if new_buses_at_least(problem) > len(new_ours):
        return None  # libvirt adds more controllers than pciplan did: no tie, and no need to run it

    def as_many_new(added: dict[int, str]) -> bool:
        # libvirt's new controllers are those it adds at an index pciplan's problem does not have (the
        # input's own are all in it): fewer or more than pciplan's is no tie, so its assignment is spared
        return sum(1 for index in added if index not in known) == len(new_ours)

    libvirt_tree = etree.ElementTree(copy.deepcopy(original.getroot()))  # no text layer: never written
    # the dry run only ever adds buses, each one a controller as_many_new is given: once more than
    # pciplan's count of them are at indices the problem does not have, as_many_new is sure to say False
    if not greedy_plan_tree(libvirt_tree, as_many_new, (known, len(new_ours))).ok:
        return None
    if SAME_DEVICES and _same_devices(tree, libvirt_tree, chosen[0] if chosen else None):
        return None  # libvirt's layout is pciplan's: nothing to take over, no document keyed
    their_addresses: dict[tuple, etree._Element | None] = {}
    _keyed(libvirt_tree, their_addresses)
    chosen_ids = {id(el) for el in chosen}  # the list keeps the proxies, so ids are stable
    our_addresses: dict[tuple, etree._Element | None] = {}
    ours = _keyed(tree, our_addresses)
    planned = [k for k, el in ours.items() if id(el) in chosen_ids]  # in document order
    found = _changes(our_addresses, their_addresses, planned)
    if found is None:
        return None
    changes, before = found
    new_theirs = _new_controllers(libvirt_tree, known)
    if not changes and [_pci(c) for c in new_ours] == [_pci(c) for c in new_theirs]:
        return None
    if len(new_ours) != len(new_theirs):
        return None  # more or fewer controllers: no tie (and no need to measure)
    spares = (spare_pci, spare_pcie, problem.machine.pcie)
    if IN_PLACE and not new_ours:  # no controller to replace (new_theirs is empty too)
        return _tie_in_place(tree, original, changes, before, ours, our_addresses, written, spares)
    mine = _comparable(original, written, *spares)
    trial = etree.ElementTree(copy.deepcopy(tree.getroot()))  # only measured, never written
    # trial's device elements are tree's, copied in the same order: pair them rather than key them again
    # (ours keeps tree's proxies alive, so their ids are stable)
    twin = {id(a): b for a, b in zip(tree.getroot().find("devices"), trial.getroot().find("devices"),
                                     strict=True) if isinstance(a.tag, str)}
    _apply(trial, changes, new_theirs, known, {k: twin[id(ours[k])] for k, _a, _mf in changes})
    measured = DocumentViews(trial)
    if _comparable(original, measured, *spares) != mine:
        return None  # libvirt's layout is worse for pciplan's objective: keep pciplan's
    # the same changes on the document trial was copied from: an equal document, so trial's views
    _apply(tree, changes, new_theirs, known, ours)
    return measured.for_equal(tree)


def _same_devices(tree: etree._ElementTree, libvirt_tree: etree._ElementTree,
                  probe: etree._Element | None) -> bool:
    """Whether libvirt's <devices> are pciplan's, byte for byte (as lxml writes them). Then
    prefer_libvirt's answer is None without keying either document: all it reads of each is its
    <devices>, so _keyed pairs each of pciplan's elements with its equal, _changes finds no change
    (or None, where pciplan's is not on PCI) and the new controllers are the same at the same
    addresses. tests/test_ties.py compares this with the long way. probe: one of tree's elements,
    looked at first: where libvirt's element at its place has another <address>, the devices differ
    (where libvirt's layout is not pciplan's, that is the rule), and nothing is written out."""
    devices = tree.getroot().find("devices")
    if probe is not None and probe.getparent() is devices:
        at = devices.index(probe)
        theirs = libvirt_tree.getroot().find("devices")
        if at >= len(theirs) or _items(probe.find("address")) != _items(theirs[at].find("address")):
            return False

    def text(t: etree._ElementTree) -> list[bytes]:
        return [etree.tostring(d, with_tail=False) for d in t.getroot().iterchildren("devices")]

    return text(tree) == text(libvirt_tree)


def _items(address: etree._Element | None) -> list[tuple[str, str]] | None:
    return None if address is None else address.items()


def _address_items(a: PciAddress, multifunction: bool) -> list[tuple[str, str]]:
    """The attributes, in their order, of a complete <address> as _set writes it."""
    items = [("type", "pci"), ("domain", "0x0000"), ("bus", f"0x{a.bus:02x}"), ("slot", f"0x{a.slot:02x}"),
             ("function", f"0x{a.function:x}")]
    if multifunction:
        items.append(("multifunction", "on"))
    return items


def _tie_in_place(tree: etree._ElementTree, original: etree._ElementTree, changes: list, before: list,
                  ours: dict[tuple, etree._Element], addresses: dict[tuple, etree._Element | None],
                  written: DocumentViews, spares: tuple[int, int, bool]) -> DocumentViews | None:
    """prefer_libvirt's end where only the changed elements' addresses differ: change them in tree
    itself, measure it, and put the attributes back in their order where libvirt's layout loses (the
    same document again, so written's views hold), rather than measure a copy and apply the changes
    twice. Every changed element has its complete pci <address> (_changes): before, pciplan's of
    each; addresses, each key's <address> element (_keyed's)."""
    saved = [(a, a.items()) for k, _a, _mf in changes for a in [addresses[k]]]
    # _set's attributes, in its order, on the <address> each has (_address_items)
    theirs = [(addresses[k], _address_items(a, mf)) for k, a, mf in changes]

    def put_back() -> None:
        for a, items in saved:
            a.attrib.clear()
            a.attrib.update(items)

    def apply() -> None:  # _apply without controllers: tree has none to replace
        for a, items in theirs:
            a.attrib.clear()
            a.attrib.update(items)

    pcie = spares[2]
    mine = _comparable(original, written, *spares) if pcie else None
    apply()
    measured = DocumentViews(tree)
    if mine is None and _tree_counts_kept(measured.pci_tree, ours, changes, before):
        # the levels but the checker's errors are libvirt's (the controllers, none changed, and the
        # tree's counts: _tree_counts_kept), so the tie is the errors'; pciplan's need no reading of
        # their own where libvirt's are none and _errors_kept proves pciplan's are none too
        errors = rule_errors(measured)
        if not errors and ERRORS_KEPT and _errors_kept(ours, changes, before, saved, measured):
            return measured
        put_back()  # pciplan's own errors, of its own document
        kept = rule_errors(written) == errors
        apply()  # the document measured is back: measured's views hold
        if not kept:
            put_back()
            return None
        return measured
    if mine is None:  # pciplan's own tree, of its own document
        put_back()
        mine = _comparable(original, written, *spares)
        apply()
    if _comparable(original, measured, *spares) != mine:
        put_back()
        return None  # libvirt's layout is worse for pciplan's objective: keep pciplan's
    return measured


_FIXED_CONTROLLERS = frozenset({"ide", "usb", "sata"})  # the chipset's own: the checker's fixed addresses


def _errors_kept(ours: dict[tuple, etree._Element], changes: list, before: list,
                 saved: list[tuple[etree._Element, list]], views: DocumentViews) -> bool:
    """Whether pciplan's document (before: its addresses of the changed elements, saved: its <address>
    attributes) has no error of the checker's where libvirt's (the same document with the changes made;
    views: its views) has none, given _tree_counts_kept's: no changed element is a PCI controller and the
    changed elements' places are the same multiset. Sufficient, on the checker's reading (its rules read
    an element's place only through its <address>, and whether it reads an element at all only through the
    element itself): also the checker reads every changed element (none is a <console>, which mirrors a
    serial, and no stale-address warning in libvirt's: an element with a PCI address the checker leaves
    out is one), none is an IDE, USB or SATA controller (the chipset's functions the checker pins to fixed
    addresses), each keeps its bus, and pciplan's address of each is complete as _set writes it
    (_address_items: domain 0, hexadecimal numbers, multifunction 'on' or none; libvirt's are so written).
    Then the controllers, the chipset's reserved places and each element's bus are the same in both, and
    each bus holds the same multiset of the checker's places: the rules of one address (domain, bus, slot
    and function range, the bus's connect type, integrated, an empty address) break nowhere in pciplan's
    where they break nowhere in libvirt's, a place holds as many devices (double use, reserved places,
    functions per slot) and function 0 of a shared slot is never multifunction='off'; each bus holds the
    same devices (the I/O space behind each, empty ports); the controllers' rules read no device."""
    if any(v.rule == "stale-address" for v in views.violations):
        return False
    for (k, a, _mf), (b, multifunction), (_address, items) in zip(changes, before, saved, strict=True):
        el = ours[k]
        if a.bus != b.bus or el.tag == "console" or (
                el.tag == "controller" and el.get("type") in _FIXED_CONTROLLERS):
            return False
        if items != _address_items(b, multifunction):
            return False
    return True

def _tree_counts_kept(root: Node, ours: dict[tuple, etree._Element], changes: list,
                      before: list) -> bool:
    """Whether pciplan's document (before: its addresses of the changed elements) has the same counts
    of show.summary that _comparable reads as root, libvirt's PCI tree of the same document with the
    changes made. Sufficient, on the tree show.build_tree builds: no changed element is a PCI
    controller, so the buses, their elements and where they plug are the same, and so bus_numbers_used
    and each bus's hotplug; the changed elements' (bus, slot, function) are the same multiset, so each
    bus's children by slot are the same (_mark_hotplug's per_slot, free_slots, an empty port's spare);
    and each changed place P gives the same f(P) = "rooted on a hot-pluggable bus, alone in its slot":
    an endpoint counts as hotplug when f(its place) and its own class is pluggable, so with f the same
    for all the places the changed elements swap, hotplug_endpoints is the same whatever each is."""
    if any(ours[k].tag == "controller" and ours[k].get("type") == "pci" for k, _a, _mf in changes):
        return False
    places = Counter((a.bus, a.slot, a.function) for _k, a, _mf in changes)
    if Counter((a.bus, a.slot, a.function) for a, _mf in before) != places:
        return False
    f: dict[tuple[int, int, int], bool] = {}
    for bus in root.walk():
        if bus.kind != BUS or not bus.children:
            continue
        per_slot = Counter(c.slot for c in bus.children)
        for c in bus.children:
            if (place := (c.bus, c.slot, c.function)) in places:
                f[place] = bus.hotplug and per_slot[c.slot] == 1
    # a place not rooted (a missing bus, an incomplete address) counts no endpoint as hotplug
    return len({f.get(place, False) for place in places}) <= 1


def _changes(ours: dict[tuple, etree._Element | None], theirs: dict[tuple, etree._Element | None],
             planned: list[tuple]) -> tuple[list[tuple[tuple, PciAddress, bool]], list] | None:
    """(key, libvirt's address, multifunction) for every element pciplan placed, in planned's order
    (the document's: each key is a different element, so the order the changes are made in changes
    nothing), and pciplan's (address, multifunction) of each; None when libvirt places one of them
    differently in kind (not on PCI, or not at all). ours, theirs: each key's <address> (_keyed's
    addresses); planned: keys of ours."""
    out, before = [], []
    for k in planned:
        other = theirs.get(k, False)
        a = _pci_at(ours[k])
        if a is None or other is False:
            return None
        got = _pci_at(other)
        if got is None:
            return None
        if got != a:
            out.append((k, *got))
            before.append(a)
    return out, before


def _new_controllers(tree: etree._ElementTree, known: set[int]) -> list[etree._Element]:
    return sorted((c for c in tree.getroot().iterfind("devices/controller[@type='pci']")
                   if int(c.get("index") or "0", 0) not in known), key=lambda c: int(c.get("index"), 0))


def _apply(tree: etree._ElementTree, changes: list, controllers: list[etree._Element],
           known: set[int], keyed: dict[tuple, etree._Element]) -> None:
    """Put libvirt's new PCI controllers in place of pciplan's, after the last PCI controller the
    input had, and libvirt's addresses on the elements pciplan placed. keyed: tree's elements by key
    (_keyed) at least for the changes' keys; read before the controllers change, which changes none of
    them: the controllers replaced are PCI controllers at indices the problem does not have, never
    chosen (so never a changed key) and, without a ua- alias, keyed by their own index, so no changed
    key's occurrence count moves either."""
    for c in _new_controllers(tree, known):
        remove_element(c)
    pci = [c for c in tree.getroot().iterfind("devices/controller[@type='pci']")]
    anchor = max(pci, key=lambda c: int(c.get("index") or "0", 0)) if pci else None
    if controllers and anchor is not None:
        for c in controllers:
            el = copy.deepcopy(c)
            anchor.addnext(el)
            anchor = el
    elif controllers:
        return  # no root to anchor on cannot happen after read_problem; keep pciplan's layout then
    for k, a, mf in changes:
        _set(keyed[k], a, mf)


def _set(el: etree._Element, a: PciAddress, multifunction: bool) -> None:
    addr = set_pci_address(el, a)
    if "multifunction" in addr.attrib:
        del addr.attrib["multifunction"]
    if multifunction:
        addr.set("multifunction", "on")
