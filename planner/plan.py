"""The planning pipeline: read → prepare → solve → unfold → render. One function for the CLI and tests."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field, replace

from lxml import etree

from planner import convert, rules
from planner.bounds import check_bounds
from planner.certificate import certify
from planner.domain import read_problem
from planner.errors import Infeasible, InternalError
from planner.facts import IO_UNIT, ROOTS
from planner.layout import unfold
from planner.metrics import Headroom, headroom
from planner.options import OBJECTIVE_DEFAULT, PlanOptions
from planner.prepare import prepare
from planner.render import render, set_virtio_mmio
from planner.solver import solve
from planner.solver.solve import hotpluggable_count
from planner.ties import prefer_libvirt
from planner.xmlio import InputError


@dataclass
class PlanSummary:
    machine: str
    status: str
    objective: int
    bound: int
    gap: float
    solve_seconds: float
    devices: int
    devices_placed: int
    controllers_added: dict[str, int]
    levels: dict[str, int]
    notes: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    controllers_removed: int = 0
    # What `pciplan check` says about the written plan: errors can only come from addresses the input
    # pinned (the solver never breaks a rule on its own); the CLI exits 4 when there are any.
    check_errors: list[str] = field(default_factory=list)
    check_warnings: list[str] = field(default_factory=list)
    headroom: Headroom | None = None  # what the planned guest can still take live (pciplan attach)
    io_bytes: int | None = None  # the firmware I/O space the plan needs, as the solver counts it
    io_budget_bytes: int | None = None
    io_cuts: int = 0

    def as_json(self) -> dict:
        return {
            "machine": self.machine,
            "status": self.status.lower(),
            "objective": self.objective,
            "bound": self.bound,
            "gap": round(self.gap, 6),
            "solve_seconds": round(self.solve_seconds, 4),
            "devices": self.devices,
            "devices_placed": self.devices_placed,
            "controllers_added": self.controllers_added,
            "objective_levels": self.levels,
            "addresses_moved": self.moved,
            "controllers_removed": self.controllers_removed,
            "io_space": None if self.io_bytes is None else {
                "needed": self.io_bytes, "budget": self.io_budget_bytes, "refinements": self.io_cuts},
            "headroom": None if self.headroom is None else self.headroom.as_json(),
            "notes": self.notes,
            "check_errors": self.check_errors,
            "check_warnings": self.check_warnings,
        }


def _hotplug_limit(tree: etree._ElementTree, options: PlanOptions) -> str:
    """For an infeasible hotplug=yes request: the largest number that can be hot-pluggable, found by
    solving again with hot-plug only preferred."""
    relaxed = replace(options, relax_hotplug=True)
    problem = _read(copy.deepcopy(tree), relaxed)[0]
    prep = prepare(problem, relaxed)
    wanted = [gi for gi, g in enumerate(prep.groups) if any(d.hotplug_rule == "yes" for d in g.devices)]
    total = sum(prep.groups[gi].size for gi in wanted)
    try:
        result = solve(prep, relaxed)
    except Infeasible:
        return "even with hot-plug only preferred the guest cannot be planned"
    best = hotpluggable_count(prep, result, set(wanted))
    return (f"at most {best} of the {total} devices that must be hot-pluggable can be; allow hotplug=no "
            f"(or drop the hotplug=yes rule) for {total - best} of them")


FIRMWARE_LIMIT = "the firmware's I/O space"  # the text of that limit in an infeasible core


def _firmware_limit(tree: etree._ElementTree, problem, options: PlanOptions) -> str:
    """For a guest whose I/O-BAR devices do not fit the firmware: the largest number of them (the
    last ones in document order go first) with which the guest plans, found by bisection."""
    wanted = [i for i, d in enumerate(problem.devices) if d.address is None and d.io_units]
    fw = problem.firmware

    def fits(keep: int) -> bool:
        trial = copy.deepcopy(tree)
        try:
            first = _read(trial, options)[0]  # the same devices, in the same order, in the copy
            for d in [d for d in first.devices if d.address is None and d.io_units][keep:]:
                d.element.getparent().remove(d.element)
            p, o, _w = _read(trial, options)
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
    return (f"at most {low} of the {len(wanted)} devices with an I/O BAR fit {fw.label}'s I/O space "
            f"({fw.io_max} bytes{f', {fw.max_windows} windows' if fw.max_windows else ''}); use modern-only "
            f"models (virtio-non-transitional: no I/O BAR) for the rest, or --firmware if the guest "
            f"boots another one")


def objective_order_of(tree: etree._ElementTree, options: PlanOptions) -> tuple[str, ...]:
    """The order of levels 2-5 a plan of tree uses: command line, else metadata, else policy, else
    the default."""
    return _read(copy.deepcopy(tree), options)[1].objective_order or OBJECTIVE_DEFAULT


def _read(tree: etree._ElementTree, options: PlanOptions):
    """The problem with the user's rules applied (policy < metadata < command line) and the spare
    counts they set."""
    problem = read_problem(tree, options.firmware)
    policy = rules.from_policy(options.policy) if options.policy else rules.RuleSet()
    metadata = rules.from_metadata(tree) if options.use_metadata else rules.RuleSet()
    flags = rules.from_flags(options.hotplug_kinds, options.no_hotplug_kinds, options.bus, options.host_numa)
    sources = [policy, metadata, flags]
    warnings = rules.apply(problem, sources)
    spare_pcie = options.spare_pcie
    spare_pci = options.spare_pci
    order = options.objective_order
    reserve = {**policy.reserve, **metadata.reserve, **dict(options.reserve)}
    for src in (metadata, policy):
        spare_pcie = src.spare_pcie if spare_pcie is None else spare_pcie
        spare_pci = src.spare_pci if spare_pci is None else spare_pci
        order = src.objective if order is None else order
    return problem, replace(options, spare_pcie=spare_pcie, spare_pci=spare_pci,
                            objective_order=order or OBJECTIVE_DEFAULT,
                            reserve=tuple(sorted(reserve.items()))), warnings


def _reserve_limits(prep, options: PlanOptions) -> list[str]:
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
            out.append(f"at most {lo} of the {want} reserved {what} fit; lower --reserve (or the "
                       "reservation in the metadata or the policy)")
    return out


def _fits(prep, options: PlanOptions) -> bool:
    try:
        solve(prep, options)
    except Infeasible:
        return False
    return True


def _number_new_expanders(prep, layout) -> None:
    """busNr for the expander buses pciplan added: each takes a range just large enough for the buses
    below it, from the top down (below the lowest busNr the guest already had)."""
    ours = sorted(b.index for b in prep.problem.buses.values() if b.new_expander)
    if not ours:
        return
    size = dict.fromkeys(ours, 0)
    for b in prep.problem.buses.values():
        h = prep.hierarchy_of(b.index)
        if h in size:
            size[h] += b.model.buses
    for node in layout.new_controllers:
        parent = node.parent
        while parent is not None and parent.index not in size:
            parent = parent.parent
        if parent is not None:
            size[parent.index] += 1
    given = [b.bus_nr for b in prep.problem.buses.values() if b.bus_nr is not None]
    upper = min(given, default=255)
    for index in ours:
        upper -= size[index]
        bus = prep.problem.buses[index]
        bus.bus_nr = upper
        target = bus.element.find("target")
        target.set("busNr", str(upper))


def _moved(layout) -> list[str]:
    """--replan: each device whose written address differs from the input's, old → new, named as
    `pciplan check` names it."""
    from planner.check import device_name

    return [f"{device_name(d.element)}: {before} → {after if after is not None else 'no PCI address'}"
            for d, before, after in layout.moved if before != after]


def _address_changes(problem, old: dict) -> list[str]:
    """After a machine conversion: every device whose address changed, old → new."""
    from planner.check import device_name

    out = []
    for d in problem.devices:
        for m in [d, *d.companions]:
            before = old.get(m.element)
            a = m.element.find("address")
            if before is None or a is None or a.get("type") != "pci":
                continue
            after = f"{int(a.get('bus'), 0):02x}:{int(a.get('slot'), 0):02x}.{int(a.get('function'), 0):x}"
            if after != before:
                out.append(f"{device_name(m.element)}: {before} → {after}")
    return out


def plan_tree(tree: etree._ElementTree, options: PlanOptions | None = None) -> PlanSummary:
    """Plan tree in place (it becomes the output document) and return what was done."""
    options = options or PlanOptions()
    converted: list[str] = []
    old: dict = {}
    if options.to_machine == "q35":
        old = convert.old_addresses(tree)
        converted = convert.to_q35(tree)
    original = etree.ElementTree(copy.deepcopy(tree.getroot()))  # the input as given: never written out
    problem, options, warnings = _read(tree, options)
    prep = prepare(problem, options)
    io_budget_dropped = False
    try:
        try:
            check_bounds(prep)  # an impossible guest is refused before any model is built
            # a layout proven optimal without the solver where the certificate covers the guest
            result = certify(prep, options) or solve(prep, options)
        except Infeasible:
            if not _given_over_budget(prep):
                raise
            # The given layout alone is more than the firmware can set up, and no plan mends that
            # without moving it: plan the rest without the budget, write it, and let the check say
            # so (exit 4, with the --replan hint), as for any other rule the given addresses break.
            result = _without_io_budget(prep, options)
            io_budget_dropped = True
    except Infeasible as exc:
        if any(d.hotplug_rule == "yes" for d in problem.devices):
            exc.reasons.append(_hotplug_limit(original, options))
        elif problem.firmware is not None and any(FIRMWARE_LIMIT in r for r in exc.reasons):
            exc.reasons.append(_firmware_limit(original, problem, options))
        if any(r.startswith("reserve (") for r in exc.reasons):
            exc.reasons += _reserve_limits(prep, options)
        exc.reasons += _replan_hint(original, options)
        raise
    layout = unfold(prep, result)
    _number_new_expanders(prep, layout)
    chipset = {(0, slot) for (slot, _fn) in problem.machine.chipset}
    render(problem, layout, chipset)
    for d in prep.mmio:
        set_virtio_mmio(d.element)
    added = Counter(n.model for n in layout.new_controllers)
    added.update(b.model.name for b in problem.buses.values() if b.new_expander or b.added)
    total = sum(1 + len(d.companions) for d in problem.devices)
    notes = converted + problem.notes + [f"warning: {w}" for w in warnings]
    tied_to_libvirt = False
    if not options.replan and not converted:
        machine = problem.machine
        spare_pci = options.spare_pci if options.spare_pci is not None else (
            machine.spare_pci_slots if problem.root.hotplug else 0)
        spare_pcie = options.spare_pcie if options.spare_pcie is not None else machine.spare_pcie_ports
        # the reservations are places the tie must keep too
        spare_pci, spare_pcie = max(spare_pci, prep.reserve_pci), max(spare_pcie, prep.reserve_pcie)
        if prefer_libvirt(tree, original, problem, spare_pci, spare_pcie):
            notes.append("ties with libvirt's own layout: libvirt's addresses written")
            tied_to_libvirt = True
            added = Counter(c.get("model") for c in tree.getroot().iterfind("devices/controller[@type='pci']")
                            if int(c.get("index"), 0) not in problem.buses)
            added.update(b.model.name for b in problem.buses.values() if b.added)
    errors, warns = _self_check(tree, problem, original, options)
    levels = dict(result.values)
    levels["hotplug_wanted"], hot = _hotplug_written(tree, prep)
    levels["hotplug_lost"] = levels["hotplug_wanted"] - hot  # devices only: spare_shortfall is its own
    io_units = result.io_units
    if (tied_to_libvirt and io_units is not None) or io_budget_dropped:
        # libvirt's layout is no worse for the objective and within the budget, but its I/O windows
        # are not the model's: report what the written layout needs
        from planner.check import io_space_needed

        written = io_space_needed(tree)
        io_units = None if written is None else -(-written[0] // IO_UNIT)
    return PlanSummary(
        machine=problem.machine.family,
        status=result.status,
        objective=result.objective,
        bound=result.bound,
        gap=result.gap,
        solve_seconds=result.seconds,
        devices=total,
        devices_placed=len(layout.devices),
        controllers_added=dict(sorted(added.items())),
        levels=levels,
        notes=notes,
        moved=_moved(layout) + _address_changes(problem, old),
        controllers_removed=len(layout.dropped_controllers) + len(prep.removed_controllers),
        check_errors=errors,
        check_warnings=warns,
        # a layout that breaks a rule (the firmware cannot set it all up) promises no place
        headroom=None if errors else headroom(tree),
        io_bytes=None if io_units is None else io_units * IO_UNIT,
        io_budget_bytes=None if io_units is None else _io_budget_units(prep, result) * IO_UNIT,
        io_cuts=result.io_cuts,
    )


def _given_over_budget(prep) -> bool:
    """Does the layout the input gives already need more I/O space or windows than the firmware has?"""
    fw = prep.problem.firmware
    if fw is None or fw.io_capacity_units() <= 0:
        return False
    windows = bool(fw.max_windows) and prep.fixed_io_windows > fw.max_windows
    return prep.fixed_io_units > fw.io_capacity_units() or windows


def _without_io_budget(prep, options: PlanOptions):
    """Plan with the firmware's I/O budget left out (raises Infeasible if even that fails)."""
    firmware = prep.problem.firmware
    prep.problem.firmware = None
    try:
        check_bounds(prep)
        return solve(prep, options)
    finally:
        prep.problem.firmware = firmware


def _io_budget_units(prep, result) -> int:
    fw = prep.problem.firmware
    return result.io_budget or (fw.io_capacity_units() if fw is not None else 0)


def _replan_hint(original: etree._ElementTree, options: PlanOptions) -> list[str]:
    """For an infeasible plan of a guest with given addresses: whether --replan would plan it."""
    if options.replan or (original.getroot().find("devices/*/address[@type='pci']") is None and not any(
            c.get("model") not in ROOTS
            for c in original.getroot().iterfind("devices/controller[@type='pci']"))):
        return []
    try:  # a plain solve: the explanations of a failing re-plan would cost many more
        trial = replace(options, replan=True, to_machine=None)
        problem, replan, _warnings = _read(copy.deepcopy(original), trial)
        prep = prepare(problem, replan)
        check_bounds(prep)
        moved = solve(prep, replan).values["addresses_moved"]
    except (Infeasible, InputError, InternalError):
        return []
    # Still says "moving 0" where --replan only removes controllers (fleetgen/infeasible-0/1 of the
    # recorded outputs, whose message bytes must not change here): _replan_change is the fix.
    return [f"suggestion: `pciplan plan --replan` plans this guest by moving {moved} of the given "
            "address(es)"]


def _replan_change(moved: int, removed: int, addresses: str = "address(es)") -> str | None:
    """What --replan changes of the given layout, in words ("moving 0 addresses" told nothing when it
    removes controllers); None when it changes neither, and then no hint suggests it."""
    if moved:
        return f"moving {moved} {addresses}"
    if removed:
        return f"removing {removed} of the given PCI controller(s), moving no device address"
    return None


def _hotplug_written(tree: etree._ElementTree, prep) -> tuple[int, int]:
    """The devices the plan placed that prefer a hot-pluggable place, and how many of them the
    written layout gives one, counted as `pciplan show` counts (whoever chose the addresses: the
    solver, the tie with libvirt, or --replan keeping them)."""
    from planner.show import ENDPOINT, build_tree

    wanting = [d for g in prep.groups if g.key.prefers_hotplug for d in g.devices]
    hot = {(n.bus, n.slot, n.function) for n in build_tree(tree).walk() if n.kind == ENDPOINT and n.hotplug}
    count = 0
    for d in wanting:
        a = d.element.find("address")
        if a is not None and a.get("type") == "pci" and (
                int(a.get("bus"), 0), int(a.get("slot"), 0), int(a.get("function", "0"), 0)) in hot:
            count += 1
    return len(wanting), count


def _self_check(tree: etree._ElementTree, problem, original: etree._ElementTree,
                options: PlanOptions) -> tuple[list[str], list[str]]:
    """Run the independent checker on the plan, so that plan says what check would say. An error there
    comes from the input's pinned addresses: name them, and say what --replan would do about it."""
    from planner.check import WARNING_RULES, check_domain

    pinned_input = original.getroot().find("devices/*/address[@type='pci']") is not None or any(
        c.get("model") not in ROOTS for c in original.getroot().iterfind(
            "devices/controller[@type='pci']"))
    found = check_domain(tree)  # warnings too, whoever chose the addresses: plan says what check says
    warns = [f"{v.element}: {v.message} [{v.rule}]" for v in found if v.rule in WARNING_RULES]
    bad = [v for v in found if v.rule not in WARNING_RULES]
    if not bad:
        return [], warns
    errors = [f"{v.element}: {v.message} [{v.rule}]" for v in bad]
    if not pinned_input:  # the solver's own choices break no rule (tests/test_cases.py proves it)
        return errors, warns
    pinned = [d.label for d in problem.devices if d.address is not None and d.address.bus != 0]
    pinned += [b.label for b in problem.buses.values() if b.address is not None and not b.added]
    if pinned:
        shown = ", ".join(pinned[:4]) + (f" and {len(pinned) - 4} more" if len(pinned) > 4 else "")
        errors.append(f"the layout is forced by the addresses the input pins: {shown}")
    if not options.replan:
        try:
            trial = copy.deepcopy(original)
            summary = plan_tree(trial, replace(options, replan=True, to_machine=None))
        except (Infeasible, InputError):
            summary = None
        change = None
        if summary is not None and not summary.check_errors:
            change = _replan_change(len(summary.moved), summary.controllers_removed)
        if change:
            errors.append(f"suggestion: `pciplan plan --replan` gives a layout without these errors by "
                          f"{change}")
    return errors, warns
