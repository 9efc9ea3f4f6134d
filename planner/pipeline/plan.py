"""The planning pipeline: read → prepare → solve → unfold → render. One function for the CLI and tests."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field, replace

from lxml import etree

from planner.facts.errors import Infeasible
from planner.facts.facts import IO_UNIT, ROOTS
from planner.facts.options import OBJECTIVE_DEFAULT, PlanOptions
from planner.pipeline import convert
from planner.pipeline.bounds import check_bounds
from planner.pipeline.certificate import certify
from planner.pipeline.explain import explain, replan_change
from planner.pipeline.layout import unfold
from planner.pipeline.metrics import DocumentViews, Headroom, headroom
from planner.pipeline.prepare import prepare
from planner.pipeline.render import apply_prepared, render, set_virtio_mmio
from planner.pipeline.rules import read_with_rules as _read
from planner.pipeline.solver import solve
from planner.pipeline.ties import prefer_libvirt
from planner.xml.xmlio import InputError


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


def objective_order_of(tree: etree._ElementTree, options: PlanOptions) -> tuple[str, ...]:
    """The order of levels 2-5 a plan of tree uses: command line, else metadata, else policy, else
    the default."""
    return _read(copy.deepcopy(tree), options)[1].objective_order or OBJECTIVE_DEFAULT


def _moved(layout) -> list[str]:
    """--replan: each device whose written address differs from the input's, old → new, named as
    `pciplan check` names it."""
    from planner.checker.check import device_name

    return [f"{device_name(d.element)}: {before} → {after if after is not None else 'no PCI address'}"
            for d, before, after in layout.moved if before != after]


def _address_changes(problem, old: dict) -> list[str]:
    """After a machine conversion: every device whose address changed, old → new."""
    from planner.checker.check import device_name

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
    problem = prep.problem  # as prepared: marked for --replan, without virtio-mmio devices, expanders added
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
        explain(exc, original, prep, options)
        raise
    layout = unfold(prep, result)
    apply_prepared(prep, layout)
    chipset = {(0, slot) for (slot, _fn) in problem.machine.chipset}
    render(problem, layout, chipset)
    for d in prep.mmio:
        set_virtio_mmio(d.element)
    added = Counter(n.model for n in layout.new_controllers)
    added.update(b.model.name for b in problem.buses.values() if b.new_expander or b.added)
    total = sum(1 + len(d.companions) for d in problem.devices)
    notes = converted + problem.notes + [f"warning: {w}" for w in warnings]
    tied_to_libvirt = False
    written = DocumentViews(tree)  # the views the tie, the check and the counts below all read
    if not options.replan and not converted:
        # the spares prepare resolved; the reservations are places the tie must keep too
        spare_pci, spare_pcie = max(prep.spare_pci, prep.reserve_pci), max(prep.spare_pcie, prep.reserve_pcie)
        rewritten = prefer_libvirt(written, original, problem, spare_pci, spare_pcie)
        if rewritten is not None:
            notes.append("ties with libvirt's own layout: libvirt's addresses written")
            tied_to_libvirt = True
            written = rewritten
            added = Counter(c.get("model") for c in tree.getroot().iterfind("devices/controller[@type='pci']")
                            if int(c.get("index"), 0) not in problem.buses)
            added.update(b.model.name for b in problem.buses.values() if b.added)
    errors, warns = _self_check(written, problem, original, options)
    levels = dict(result.values)
    levels["hotplug_wanted"], hot = _hotplug_written(written, prep)
    levels["hotplug_lost"] = levels["hotplug_wanted"] - hot  # devices only: spare_shortfall is its own
    io_units = result.io_units
    if (tied_to_libvirt and io_units is not None) or io_budget_dropped:
        # libvirt's layout is no worse for the objective and within the budget, but its I/O windows
        # are not the model's: report what the written layout needs (written's views are tree's)
        needed = written.io_space_needed
        io_units = None if needed is None else -(-needed[0] // IO_UNIT)
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
        headroom=None if errors else headroom(written),
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
    unbudgeted = replace(prep, problem=replace(prep.problem, firmware=None))
    check_bounds(unbudgeted)
    return solve(unbudgeted, options)


def _io_budget_units(prep, result) -> int:
    fw = prep.problem.firmware
    return result.io_budget or (fw.io_capacity_units() if fw is not None else 0)


def _hotplug_written(written: DocumentViews, prep) -> tuple[int, int]:
    """The devices the plan placed that prefer a hot-pluggable place, and how many of them the
    written layout gives one, counted as `pciplan show` counts (whoever chose the addresses: the
    solver, the tie with libvirt, or --replan keeping them): those whose own node in show's tree is a
    hot-pluggable endpoint (one alone in its slot: the one at its address), found by its element's
    position among <devices>' children (Node.position), without reading any address again."""
    from planner.pipeline.show import ENDPOINT

    wanting = [d for g in prep.groups if g.key.prefers_hotplug for d in g.devices]
    hot = {n.position for n in written.pci_tree.walk() if n.kind == ENDPOINT and n.hotplug}
    if not wanting or not hot:
        return len(wanting), 0
    devices = next(written.tree.getroot().iterchildren("devices"))  # the tree's: it has hot nodes
    position = {id(el): i for i, el in enumerate(el for el in devices if isinstance(el.tag, str))}
    return len(wanting), sum(1 for d in wanting if position.get(id(d.element)) in hot)


def _self_check(written: DocumentViews, problem, original: etree._ElementTree,
                options: PlanOptions) -> tuple[list[str], list[str]]:
    """Run the independent checker on the plan, so that plan says what check would say. An error there
    comes from the input's pinned addresses: name them, and say what --replan would do about it."""
    from planner.checker.check import WARNING_RULES

    found = written.violations  # warnings too, whoever chose the addresses: plan says what check says
    warns = [f"{v.element}: {v.message} [{v.rule}]" for v in found if v.rule in WARNING_RULES]
    bad = [v for v in found if v.rule not in WARNING_RULES]
    if not bad:
        return [], warns
    errors = [f"{v.element}: {v.message} [{v.rule}]" for v in bad]
    pinned_input = original.getroot().find("devices/*/address[@type='pci']") is not None or any(
        c.get("model") not in ROOTS for c in original.getroot().iterfind(
            "devices/controller[@type='pci']"))
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
            change = replan_change(len(summary.moved), summary.controllers_removed)
        if change:
            errors.append(f"suggestion: `pciplan plan --replan` gives a layout without these errors by "
                          f"{change}")
    return errors, warns
