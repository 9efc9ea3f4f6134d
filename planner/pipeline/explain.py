"""What an infeasible plan is told beyond the limits in conflict: the largest number that fits each
limit no reason answers yet, and whether --replan would plan the guest.

The reasons arrive typed (planner.facts.errors.Limit, set where the bound or the constraint is made:
planner.pipeline.bounds, planner.pipeline.prepare, planner.pipeline.solver.constraints); this is the one place
that reads them, by type, never by their text."""

from __future__ import annotations

import copy
from dataclasses import replace

from lxml import etree

from planner.facts.errors import Infeasible, InternalError, Limit, Reason, Role
from planner.facts.facts import ROOTS
from planner.facts.options import PlanOptions
from planner.pipeline.bounds import check_bounds
from planner.pipeline.domain import Problem
from planner.pipeline.prepare import Prepared, prepare
from planner.pipeline.rules import read_with_rules
from planner.pipeline.solver import solve
from planner.pipeline.solver.solve import hotpluggable_count
from planner.xml.xmlio import InputError


def explain(exc: Infeasible, original: etree._ElementTree, prep: Prepared, options: PlanOptions) -> None:
    """Add to exc what further solves of the input as given (original) can tell: how many devices can
    be hot-pluggable, how many I/O-BAR devices fit the firmware, how many reserved places can be kept,
    and the --replan hint."""
    problem = prep.problem
    if any(d.hotplug_rule == "yes" for d in problem.devices):
        exc.add([_hotplug_limit(original, options)])
    elif problem.firmware is not None and exc.unanswered(Limit.IO_SPACE):
        exc.add([_firmware_limit(original, problem, options)])
    if exc.unanswered(Limit.RESERVE):
        exc.add(_reserve_limits(prep, options))
    exc.add(_replan_hint(original, options))


def _hotplug_limit(tree: etree._ElementTree, options: PlanOptions) -> Reason:
    """For an infeasible hotplug=yes request: the largest number that can be hot-pluggable, found by
    solving again with hot-plug only preferred."""
    relaxed = replace(options, relax_hotplug=True)
    problem = read_with_rules(copy.deepcopy(tree), relaxed)[0]
    prep = prepare(problem, relaxed)
    wanted = [gi for gi, g in enumerate(prep.groups) if any(d.hotplug_rule == "yes" for d in g.devices)]
    total = sum(prep.groups[gi].size for gi in wanted)
    try:
        result = solve(prep, relaxed)
    except Infeasible:
        return Reason(Limit.HOTPLUG, "even with hot-plug only preferred the guest cannot be planned",
                      Role.LARGEST)
    best = hotpluggable_count(prep, result, set(wanted))
    return Reason(Limit.HOTPLUG, f"at most {best} of the {total} devices that must be hot-pluggable can be; "
                  f"allow hotplug=no (or drop the hotplug=yes rule) for {total - best} of them", Role.LARGEST)


def _firmware_limit(tree: etree._ElementTree, problem: Problem, options: PlanOptions) -> Reason:
    """For a guest whose I/O-BAR devices do not fit the firmware: the largest number of them (the
    last ones in document order go first) with which the guest plans, found by bisection."""
    wanted = [i for i, d in enumerate(problem.devices) if d.address is None and d.io_units]
    fw = problem.firmware
    assert fw is not None

    def fits(keep: int) -> bool:
        trial = copy.deepcopy(tree)
        try:
            first = read_with_rules(trial, options)[0]  # the same devices, in the same order, in the copy
            for d in [d for d in first.devices if d.address is None and d.io_units][keep:]:
                d.element.getparent().remove(d.element)
            p, o, _w = read_with_rules(trial, options)
            solve(prepare(p, o), replace(o, time_limit=min(o.time_limit, 2.0)))
        except (Infeasible, InputError):
            return False
        return True

    low, high = 0, len(wanted)  # fits(low) is assumed; fits(high) failed
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    windows = f", {fw.max_windows} windows" if fw.max_windows else ""
    return Reason(Limit.IO_SPACE, f"at most {low} of the {len(wanted)} devices with an I/O BAR fit "
                  f"{fw.label}'s I/O space ({fw.io_max} bytes{windows}); use modern-only models "
                  "(virtio-non-transitional: no I/O BAR) for the rest, or --firmware if the guest boots "
                  "another one", Role.LARGEST)


def _reserve_limits(prep: Prepared, options: PlanOptions) -> list[Reason]:
    """For reservations that cannot all be kept: the largest number of each kind of place that can
    (a binary search over short solves, the other reservation held)."""
    out = []
    for attr, what in (("reserve_pcie", "empty PCIe ports"), ("reserve_pci", "free conventional slots")):
        want = getattr(prep, attr)
        if not want:
            continue
        lo, hi = 0, want - 1  # lo: the largest known to fit (0 unless even that fails)
        if not _fits(replace(prep, **{attr: 0}), options):
            continue
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _fits(replace(prep, **{attr: mid}), options):
                lo = mid
            else:
                hi = mid - 1
        if lo < want:
            out.append(Reason(Limit.RESERVE, f"at most {lo} of the {want} reserved {what} fit; lower "
                              "--reserve (or the reservation in the metadata or the policy)", Role.LARGEST))
    return out


def _fits(prep: Prepared, options: PlanOptions) -> bool:
    try:
        solve(prep, options)
    except Infeasible:
        return False
    return True


def _replan_hint(original: etree._ElementTree, options: PlanOptions) -> list[Reason]:
    """For an infeasible plan of a guest with given addresses: whether --replan would plan it."""
    if options.replan or (original.getroot().find("devices/*/address[@type='pci']") is None and not any(
            c.get("model") not in ROOTS
            for c in original.getroot().iterfind("devices/controller[@type='pci']"))):
        return []
    try:  # a plain solve: the explanations of a failing re-plan would cost many more
        trial = replace(options, replan=True, to_machine=None)
        problem, replan, _warnings = read_with_rules(copy.deepcopy(original), trial)
        prep = prepare(problem, replan)
        check_bounds(prep)
        result = solve(prep, replan)
    except (Infeasible, InputError, InternalError):
        return []
    assert result.counts is not None
    removed = len(prep.removed_controllers) + sum(not kept for kept in result.counts.bus_keep.values())
    change = replan_change(result.values["addresses_moved"], removed, "of the given address(es)")
    if change is None:
        return []
    return [Reason(Limit.GIVEN_ADDRESSES, f"suggestion: `pciplan plan --replan` plans this guest by {change}",
                   Role.SUGGESTION)]


def replan_change(moved: int, removed: int, addresses: str = "address(es)") -> str | None:
    """What --replan changes of the given layout, in words ("moving 0 addresses" told nothing when it
    removes controllers); None when it changes neither, and then no hint suggests it."""
    if moved:
        return f"moving {moved} {addresses}"
    if removed:
        return f"removing {removed} of the given PCI controller(s), moving no device address"
    return None
