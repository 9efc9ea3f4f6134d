"""planner.pipeline.ties's shortcuts decide as the long way does: the dry run's early stop on libvirt's
new-controller count (greedy_plan_tree's limit) and the levels measured without reading the domain on
machines without PCIe, over the recorded corpus (shared cases, generated fleet and random guests) and
more generated fleet guests."""

from __future__ import annotations

import copy
import random
from collections import Counter

import pytest
from fleetgen import typical_guest
from lxml import etree
from recorded import corpus

import planner.pipeline.ties as ties
from planner.facts.errors import Infeasible
from planner.facts.options import PlanOptions
from planner.pipeline.metrics import DocumentViews, measure, pci_controllers, rule_errors
from planner.pipeline.plan import plan_tree
from planner.pipeline.show import build_tree, summary
from planner.xml.xmlio import InputError, parse_domain_bytes, serialize_text


def _guests() -> list[bytes]:
    out = [data for name, data in corpus() if not name.startswith("sweep/")]  # sweeps: over MAX_DEVICES
    rng = random.Random(2121)
    out += [typical_guest(n, rng).encode() for n in range(150)]
    return out


def test_the_dry_run_limit_decides_as_the_whole_dry_run(monkeypatch) -> None:
    """With the limit prefer_libvirt gives, greedy_plan_tree says ok exactly when it does without it,
    and writes the same document; the limit stopped the dry run for many guests, and many went on."""
    real = ties.greedy_plan_tree
    seen: Counter[str] = Counter()

    def both(tree, proceed, limit):
        free = copy.deepcopy(tree)
        unlimited = real(free, proceed)
        limited = real(tree, proceed, limit)
        assert limited.ok == unlimited.ok
        if limited.ok:
            assert serialize_text(tree) == serialize_text(free)
        stopped = "stopped in the dry run" in (limited.error or "")
        seen["stopped early" if stopped else "ok" if limited.ok else "not ok"] += 1
        return limited

    monkeypatch.setattr(ties, "greedy_plan_tree", both)
    monkeypatch.setattr(ties, "new_buses_at_least", lambda _problem: 0)  # the dry run for every guest
    for data in _guests():
        try:
            plan_tree(parse_domain_bytes(data), PlanOptions())
        except (InputError, Infeasible):
            continue
    assert seen["stopped early"] > 100 and seen["ok"] > 100, seen


def test_the_levels_without_pcie_are_measures(monkeypatch) -> None:
    """_comparable's shortcut on machines without PCIe gives metrics.measure's levels, for libvirt's
    layout and pciplan's alike; it met many such documents (and measure met the others)."""
    real = ties._comparable
    seen: Counter[bool] = Counter()

    def both(before, after, spare_pci, spare_pcie, pcie):
        m = measure(before, after)
        assert real(before, after, spare_pci, spare_pcie, pcie) == (
            m.controllers_total, m.bus_numbers, m.hotplug_devices, m.pcie_on_conventional,
            min(m.spare_hotplug_ports, spare_pcie), min(m.spare_hotplug_slots, spare_pci),
            tuple(m.rule_violations))
        seen[pcie] += 1
        return real(before, after, spare_pci, spare_pcie, pcie)

    monkeypatch.setattr(ties, "_comparable", both)
    # the in-place tie measures both documents (not only the checker's errors where the tree's counts
    # are kept), so that every pc tie meets the shortcut twice
    monkeypatch.setattr(ties, "_tree_counts_kept", lambda *_args: False)
    for data in _guests():
        try:
            plan_tree(parse_domain_bytes(data), PlanOptions())
        except (InputError, Infeasible):
            continue
    assert seen[False] > 100 and seen[True] > 10, seen


def test_the_lower_bound_on_libvirts_controllers_holds(monkeypatch) -> None:
    """greedy.new_buses_at_least never exceeds what the whole dry run adds at new indices (so where it
    exceeds pciplan's count, libvirt's count does too and there is no tie); it decided many guests, and
    many others went on to the greedy."""
    real_bound, real_greedy = ties.new_buses_at_least, ties.greedy_plan_tree
    bounds: list[int] = []
    seen: Counter[str] = Counter()

    def bound(problem):
        bounds.append(real_bound(problem))
        return 0  # the long way for every guest: the test compares

    def greedy(tree, proceed, limit):
        known, ours = limit
        counted: list[int] = []
        result = real_greedy(tree, lambda added: counted.append(sum(1 for i in added if i not in known))
                             is None and proceed(added))
        if counted:
            assert bounds[-1] <= counted[0]
        else:  # libvirt gave up before the end of its dry run: no tie either way
            assert not result.ok
        seen["decided by the bound" if bounds[-1] > ours else "not decided"] += 1
        if bounds[-1] > ours:
            assert not result.ok
        return result

    monkeypatch.setattr(ties, "new_buses_at_least", bound)
    monkeypatch.setattr(ties, "greedy_plan_tree", greedy)
    for data in _guests():
        try:
            plan_tree(parse_domain_bytes(data), PlanOptions())
        except (InputError, Infeasible):
            continue
    assert seen["decided by the bound"] > 50 and seen["not decided"] > 100, seen



@pytest.mark.parametrize("libvirt_loses", [False, True])
def test_the_tie_in_place_writes_what_the_trial_copy_does(monkeypatch, libvirt_loses: bool) -> None:
    """prefer_libvirt's _tie_in_place (libvirt's addresses tried on pciplan's document itself, put back
    where libvirt's layout loses) writes the same bytes and reports the same as the trial copy; it met
    many ties, and (with every comparison made to fail, as ties are the rule) many layouts it put back."""
    real = ties._tie_in_place
    seen: Counter[str] = Counter()

    def counted(*args):
        views = real(*args)
        seen["tie" if views is not None else "put back"] += 1
        return views

    monkeypatch.setattr(ties, "_tie_in_place", counted)
    if libvirt_loses:
        monkeypatch.setattr(ties, "_comparable", lambda *_args: (object(),) * 7)  # equal to nothing
        monkeypatch.setattr(ties, "rule_errors", lambda _views: [object()])  # where only errors decide
    for data in _guests():
        out = []
        for in_place in (True, False):
            monkeypatch.setattr(ties, "IN_PLACE", in_place)
            try:
                tree = parse_domain_bytes(data)
                s = plan_tree(tree, PlanOptions())
            except (InputError, Infeasible) as exc:
                out.append(type(exc))
                continue
            s.solve_seconds = 0.0
            out.append((serialize_text(tree), s))
        assert out[0] == out[1]
    assert seen["put back" if libvirt_loses else "tie"] > 100, seen


def test_the_tree_counts_kept_are_pciplans(monkeypatch) -> None:
    """Where ties._tree_counts_kept says pciplan's document has libvirt's PCI-tree counts, it has: the
    counts _comparable reads, of pciplan's addresses put on a copy, are libvirt's; it said so for many
    guests (every generated pc guest that ties without new controllers)."""
    real = ties._tree_counts_kept
    seen: Counter[bool] = Counter()
    fields = ("bus_numbers_used", "hotplug_endpoints", "spare_hotplug_ports", "spare_hotplug_slots")

    def checked(root, ours, changes, before):
        kept = real(root, ours, changes, before)
        seen[kept] += 1
        if kept:
            tree = next(iter(ours.values())).getroottree()
            mine = etree.ElementTree(copy.deepcopy(tree.getroot()))
            twin = {id(a): b for a, b in zip(tree.getroot().find("devices"), mine.getroot().find("devices"),
                                             strict=True)}
            for (k, _a, _mf), (address, multifunction) in zip(changes, before, strict=True):
                ties._set(twin[id(ours[k])], address, multifunction)
            theirs, ours_ = summary(root), summary(build_tree(mine, labels=False))
            assert [theirs[f] for f in fields] == [ours_[f] for f in fields]
            assert pci_controllers(mine) == pci_controllers(tree)
        return kept

    monkeypatch.setattr(ties, "_tree_counts_kept", checked)
    for data in _guests():
        try:
            plan_tree(parse_domain_bytes(data), PlanOptions())
        except (InputError, Infeasible):
            continue
    assert seen[True] > 100, seen


def test_the_tree_counts_are_not_kept_where_a_swap_crosses_hotplug() -> None:
    """A memballoon (never hot-plugged) and a NIC swap between the root of a pc guest without ACPI (no
    hot-plug) and a pci-bridge (hot-plug): pciplan's NIC counted as hotplug, libvirt's memballoon does
    not, so _tree_counts_kept must say no; the same swap within the bridge keeps the counts."""
    def doc(balloon: str, nic: str) -> etree._ElementTree:
        return parse_domain_bytes(f"""<domain type='kvm'><name>t</name><memory>1</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <controller type='pci' index='0' model='pci-root'/>
    <controller type='pci' index='1' model='pci-bridge'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></controller>
    <memballoon model='virtio'><address type='pci' domain='0x0000' {balloon} function='0x0'/></memballoon>
    <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/>
      <model type='virtio'/><address type='pci' domain='0x0000' {nic} function='0x0'/></interface>
  </devices></domain>""".encode())

    root, bridge, bridge2 = "bus='0x00' slot='0x05'", "bus='0x01' slot='0x01'", "bus='0x01' slot='0x02'"
    for (b0, n0), (b1, n1), kept in [((root, bridge), (bridge, root), False),
                                     ((bridge2, bridge), (bridge, bridge2), True)]:
        mine, theirs = doc(b0, n0), doc(b1, n1)
        hot = [summary(build_tree(t, labels=False))["hotplug_endpoints"] for t in (mine, theirs)]
        assert (hot[0] == hot[1]) is kept
        ours = ties._keyed(theirs)
        changes, before = [], []
        for k, el in ours.items():
            if el.tag in ("memballoon", "interface"):
                changes.append((k, *ties._pci(el)))
                before.append(ties._pci(ties._keyed(mine)[k]))
        assert ties._tree_counts_kept(build_tree(theirs, labels=False), ours, changes, before) is kept


def test_the_shortcuts_write_what_the_long_way_does(monkeypatch) -> None:
    """prefer_libvirt's shortcuts (ties.SAME_DEVICES: no keying where libvirt's <devices> is pciplan's,
    byte for byte; ties.ERRORS_KEPT: pciplan's errors not read where _errors_kept proves them none)
    write the same bytes and report the same as without them. Where _same_devices says yes, the two
    documents key alike, with the same PCI addresses, and their PCI controllers are at the same
    addresses; where _errors_kept says yes, pciplan's document (a copy with its addresses put back) has
    no checker error, as libvirt's has none. Each met many guests (generated virt and pc ones)."""
    real_same, real_kept = ties._same_devices, ties._errors_kept
    seen: Counter[str] = Counter()

    def same(tree, libvirt_tree, probe):
        answer = real_same(tree, libvirt_tree, probe)
        if answer:
            mine, theirs = ties._keyed(tree), ties._keyed(libvirt_tree)
            assert list(mine) == list(theirs)
            assert [ties._pci(el) for el in mine.values()] == [ties._pci(el) for el in theirs.values()]
            assert [ties._pci(c) for c in ties._new_controllers(tree, set())] == [
                ties._pci(c) for c in ties._new_controllers(libvirt_tree, set())]
        seen["same devices" if answer else "devices differ"] += 1
        return answer

    def kept(ours, changes, before, saved, views):
        answer = real_kept(ours, changes, before, saved, views)
        if answer:
            tree = next(iter(ours.values())).getroottree()
            assert rule_errors(DocumentViews(tree)) == []  # libvirt's: _tie_in_place asks only then
            mine = etree.ElementTree(copy.deepcopy(tree.getroot()))
            twin = {id(a): b for a, b in zip(tree.getroot().find("devices"), mine.getroot().find("devices"),
                                             strict=True)}
            for (k, _a, _mf), (address, multifunction) in zip(changes, before, strict=True):
                ties._set(twin[id(ours[k])], address, multifunction)
            assert rule_errors(DocumentViews(mine)) == []
        seen["errors kept" if answer else "errors read"] += 1
        return answer

    monkeypatch.setattr(ties, "_same_devices", same)
    monkeypatch.setattr(ties, "_errors_kept", kept)
    rng = random.Random(2122)
    for data in _guests() + [typical_guest(n, rng).encode() for n in range(150)]:
        out = []
        for on in (True, False):
            monkeypatch.setattr(ties, "SAME_DEVICES", on)
            monkeypatch.setattr(ties, "ERRORS_KEPT", on)
            try:
                tree = parse_domain_bytes(data)
                s = plan_tree(tree, PlanOptions())
            except (InputError, Infeasible) as exc:
                out.append(type(exc))
                continue
            s.solve_seconds = 0.0
            out.append((serialize_text(tree), s))
        assert out[0] == out[1]
    assert seen["same devices"] > 150 and seen["errors kept"] > 150, seen


def _pc(devices: str) -> etree._ElementTree:
    return parse_domain_bytes(f"""<domain type='kvm'><name>t</name><memory>1</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>
  <devices>
    <controller type='pci' index='0' model='pci-root'/>
    <controller type='pci' index='1' model='pci-bridge'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></controller>
    {devices}
  </devices></domain>""".encode())


def _at(bus: int, slot: int, function: int = 0, extra: str = "") -> str:
    return (f"<address type='pci' domain='0x0000' bus='0x{bus:02x}' slot='0x{slot:02x}' "
            f"function='0x{function:x}'{extra}/>")


def _nic(n: int, address: str) -> str:
    return (f"<interface type='network'><mac address='52:54:00:00:00:0{n}'/><source network='default'/>"
            f"<model type='virtio'/>{address}</interface>")


@pytest.mark.parametrize(("mine", "theirs", "kept"), [
    # a virtio IOMMU (integrated: bus 0 only) swaps places with a NIC across the bridge
    (f"<iommu model='virtio'>{_at(1, 1)}</iommu>{_nic(1, _at(0, 5))}",
     f"<iommu model='virtio'>{_at(0, 5)}</iommu>{_nic(1, _at(1, 1))}", False),
    # pciplan's function 0 of a shared slot says multifunction='off'
    (_nic(1, _at(0, 5, 0, " multifunction='off'")) + _nic(2, _at(0, 5, 1)),
     _nic(1, _at(0, 5, 1)) + _nic(2, _at(0, 5, 0)), False),
    # the IDE controller (fixed at 00:01.1) swaps places with a NIC
    (f"<controller type='ide' index='0'>{_at(0, 5)}</controller>{_nic(1, _at(0, 1, 1))}",
     f"<controller type='ide' index='0'>{_at(0, 1, 1)}</controller>{_nic(1, _at(0, 5))}", False),
    # a memballoon without a model libvirt addresses (its PCI address is stale: the checker reads no
    # place of it) swaps places with a NIC on the chipset's ACPI function
    (f"<memballoon model='none'>{_at(0, 6)}</memballoon>{_nic(1, _at(0, 1, 3))}",
     f"<memballoon model='none'>{_at(0, 1, 3)}</memballoon>{_nic(1, _at(0, 6))}", False),
    # two NICs swap places on the bridge
    (_nic(1, _at(1, 1)) + _nic(2, _at(1, 2)), _nic(1, _at(1, 2)) + _nic(2, _at(1, 1)), True),
])
def test_the_errors_are_kept_only_where_the_checker_agrees(mine: str, theirs: str, kept: bool) -> None:
    """Swaps of the same places where pciplan's document breaks a rule libvirt's keeps: _errors_kept must
    say no to each (one condition each: the bus kept, pciplan's address as written, no chipset controller,
    every element read by the checker); the same swap within one bus keeps both documents without error,
    and it says yes."""
    ours_doc, theirs_doc = _pc(mine), _pc(theirs)
    assert rule_errors(DocumentViews(theirs_doc)) == []
    assert (rule_errors(DocumentViews(ours_doc)) == []) is kept
    addresses: dict = {}
    ours = ties._keyed(theirs_doc, addresses)  # _tie_in_place asks with libvirt's addresses made
    before_at: dict = {}
    ties._keyed(ours_doc, before_at)
    changes, before, saved = [], [], []
    for k, a in addresses.items():
        if a is not None and (got := ties._pci_at(a)) != (was := ties._pci_at(before_at[k])):
            changes.append((k, *got))
            before.append(was)
            saved.append((before_at[k], before_at[k].items()))
    assert len(changes) == 2
    assert ties._errors_kept(ours, changes, before, saved, DocumentViews(theirs_doc)) is kept
