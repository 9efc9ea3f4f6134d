"""The planning pipeline: read → prepare → solve → unfold → render. One function for the CLI and tests."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from lxml import etree

from planner.domain import read_problem
from planner.layout import unfold
from planner.options import PlanOptions
from planner.prepare import CHIPSET, prepare
from planner.render import render
from planner.solver import solve


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
            "notes": self.notes,
        }


def plan_tree(tree: etree._ElementTree, options: PlanOptions | None = None) -> PlanSummary:
    """Plan tree in place (it becomes the output document) and return what was done."""
    options = options or PlanOptions()
    problem = read_problem(tree)
    prep = prepare(problem, replan=options.replan, no_hotplug=options.no_hotplug_kinds)
    result = solve(prep, options)
    layout = unfold(prep, result)
    chipset = {(0, slot) for (slot, _fn) in CHIPSET.get(problem.machine.family, {})}
    render(problem, layout, chipset)
    added = Counter(n.model for n in layout.new_controllers)
    total = sum(1 + len(d.companions) for d in problem.devices)
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
        levels=result.values,
        notes=problem.notes,
        moved=layout.moved,
        controllers_removed=len(layout.dropped_controllers) + len(prep.removed_controllers),
    )
