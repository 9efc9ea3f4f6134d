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
from planner.pipeline.metrics import measure, pci_controllers
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
