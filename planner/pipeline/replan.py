"""--replan: decide what the planner may change. Device addresses become soft (moving one costs at the
top objective level); PCI controllers other than the root and the expander buses (they carry NUMA
intent and busNr) may be dropped and re-planned. Dropped controllers always form a suffix of the index
range, so kept indices stay contiguous and no device on a kept controller changes its bus number."""

from __future__ import annotations

from planner.facts.facts import EXPANDERS, ROOTS
from planner.pipeline.domain import Bus, Device, PciAddress, Problem

NOT_MANAGED = ROOTS + EXPANDERS


def mark_replan(problem: Problem) -> tuple[list[tuple[Device, PciAddress]], list[Bus]]:
    """Mark droppable controllers and devices of problem (prepare's own copy); take the controllers that
    must go out of it. Returns the devices whose address is lost whatever the plan (their controller had
    to go), with that address, and the removed controllers (their elements leave the document when it
    is written: planner.pipeline.render.apply_prepared)."""
    buses = problem.buses
    fixed_top = max((i for i, b in buses.items() if b.model.name in NOT_MANAGED), default=0)
    managed = sorted(i for i, b in buses.items() if b.model.name not in NOT_MANAGED)
    # Controllers without an address (or added by us) cannot be "kept in place": they and every
    # managed controller above them go; those below the highest expander bus must stay (no holes).
    floor = min((i for i in managed if buses[i].address is None or buses[i].added), default=256)
    removed = []
    for i in managed:
        if i >= floor and i > fixed_top:
            removed.append(i)
        elif i > fixed_top:
            buses[i].droppable = True
    gone = [buses.pop(i) for i in removed]
    lost = []
    for d in problem.devices:
        if d.bus_pin is not None and d.bus_pin in removed:
            d.bus_pin = None
        if d.address is None:
            continue
        if d.address.bus in removed:
            lost.append((d, d.address))
            d.address = None
            for m in d.companions:
                m.address = None
        elif not _machine_fixed(problem, d):
            d.droppable = True
    return lost, gone


def _machine_fixed(problem: Problem, d) -> bool:
    if d.kind != "controller":
        return False
    ctype, idx = d.element.get("type"), d.element.get("index")
    keys = (f"controller:{ctype}:{idx}:{d.model}", f"controller:{ctype}:{idx}")
    return any(k in problem.machine.fixed for k in keys)
