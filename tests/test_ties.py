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
from recorded import corpus

import planner.pipeline.ties as ties
from planner.facts.errors import Infeasible
from planner.facts.options import PlanOptions
from planner.pipeline.metrics import measure
from planner.pipeline.plan import plan_tree
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
        monkeypatch.setattr(ties, "_comparable", lambda *_args: object())  # equal to nothing
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
