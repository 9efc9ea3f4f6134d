"""Build the model, solve it, and return counts with the solver's status and bound."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from planner.errors import Infeasible
from planner.options import OBJECTIVE_DEFAULT, PlanOptions
from planner.prepare import Prepared
from planner.solver import constraints as c
from planner.solver.objective import (
    canonical_tiebreak,
    levels,
    libvirt_order,
    objective_expr,
    set_objective,
)
from planner.solver.variables import Variables, create_variables, hotpluggable_placements


@dataclass
class SolveResult:
    status: str  # OPTIMAL | FEASIBLE
    objective: int
    bound: int
    gap: float
    seconds: float
    values: dict[str, int] = field(default_factory=dict)  # per objective level
    vars: Variables | None = None
    solver: cp_model.CpSolver | None = None

    def value(self, x) -> int:
        assert self.solver is not None
        return int(self.solver.Value(x)) if x is not None else 0


def _minimal_core(model: cp_model.CpModel, core: list[int], options: PlanOptions) -> list[int]:
    """Shrink an infeasible set of assumptions until every member is needed (deletion filter), so the
    explanation names only the rules at fault. The model is small; each check is a short solve."""
    model.ClearObjective()
    keep = list(core)
    for lit in list(core):
        trial = [x for x in keep if x != lit]
        model.ClearAssumptions()
        model.AddAssumptions([model.GetBoolVarFromProtoIndex(i) for i in trial])
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(1.0, options.time_limit / 10)
        solver.parameters.num_workers = 1
        if solver.Solve(model) == cp_model.INFEASIBLE:
            keep = trial
    return keep


def _relaxations(prep: Prepared, groups: list[int]) -> list[str]:
    """What the user could allow for the groups in the infeasible core."""
    out = []
    for gi in groups:
        k = prep.groups[gi].key
        who = prep.groups[gi].name
        if k.bus == "pcie":
            out.append(f"suggestion: allow bus=any (conventional slots too) for {who}")
        if k.bus == "pci":
            out.append(f"suggestion: allow bus=any (PCIe too) for {who}")
        if k.hotplug == "no":
            hint = (" or write <target hotplug='off'/> on the pci-root controller"
                    if prep.problem.machine.acpi_root_hotplug else "")
            out.append(f"suggestion: drop hotplug=no for {who}{hint}")
        if k.connection is not None:
            out.append(f"suggestion: drop connection={k.connection} for {who}")
        if k.numa is not None:
            out.append(f"suggestion: drop numa={k.numa} for {who}")
    return out


def solve(prep: Prepared, options: PlanOptions) -> SolveResult:
    machine = prep.problem.machine
    # Hot-plug headroom by default: every q35/virt plan ends with an empty hot-pluggable port, whether
    # or not anything else is added (libvirt leaves one whenever it adds ports); a spare conventional
    # slot only where hot-plug works. --spare-pcie 0 / --spare-pci 0 opt out.
    spare_pcie = options.spare_pcie
    if spare_pcie is None:
        spare_pcie = machine.spare_pcie_ports
    spare_pci = options.spare_pci
    if spare_pci is None:
        spare_pci = machine.spare_pci_slots if prep.problem.root.hotplug else 0
    if not machine.pcie:
        spare_pcie = 0
    model = cp_model.CpModel()
    why = c.Assumptions(model=model)
    v = create_variables(model, prep)
    c.place_every_device(model, prep, v, why)
    c.keep_in_place(model, prep, v)
    c.existing_bus_capacity(model, prep, v, why)
    c.new_port_capacity(model, prep, v, why)
    c.io_window_budget(model, prep, v, why)
    c.bus_number_limits(model, prep, v, why)
    c.spare_ports(model, prep, v, spare_pcie, spare_pci)
    lv = levels(prep, v, options.objective_order or OBJECTIVE_DEFAULT)
    set_objective(model, lv)
    model.AddAssumptions([model.GetBoolVarFromProtoIndex(i) for i in why.literals])

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = options.time_limit
    solver.parameters.num_workers = options.workers
    solver.parameters.random_seed = 0
    start = time.perf_counter()
    status = solver.Solve(model)
    seconds = time.perf_counter() - start
    if status == cp_model.INFEASIBLE:
        core = _minimal_core(model, solver.SufficientAssumptionsForInfeasibility(), options)
        reasons = [why.literals[i] for i in core] or ["the constraints admit no layout"]
        raise Infeasible(reasons + _relaxations(prep, [why.groups[i] for i in core if i in why.groups]))
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise Infeasible([f"no layout found within {options.time_limit:g} s (solver status "
                          f"{solver.StatusName(status)}); raise --time-limit"])
    obj = int(round(solver.ObjectiveValue()))
    bound = int(round(solver.BestObjectiveBound()))
    if status == cp_model.OPTIMAL:
        solver = _canonical(model, lv, obj, solver, options, start, libvirt_order(prep, v))
        seconds = time.perf_counter() - start
    gap = 0.0 if obj == 0 else abs(obj - bound) / abs(obj)
    values = {
        "addresses_moved": int(solver.Value(lv.moved)),
        "hotplug_wanted": lv.hotplug_wanted,
        "hotplug_lost": int(solver.Value(lv.hotplug_lost)),
        "pcie_on_pci": int(solver.Value(lv.pcie_on_pci)),
        "controllers_added": int(solver.Value(lv.controllers)),
        "bus_numbers_added": int(solver.Value(lv.bus_numbers)),
        "root_slots_used": int(solver.Value(lv.slots_used)),
        "unlike_libvirt": int(solver.Value(lv.unlike_libvirt)),
        "spare_shortfall": int(solver.Value(v.spare_shortfall)),
    }
    return SolveResult(solver.StatusName(status), obj, bound, gap, seconds, values, v, solver)


def _canonical(model: cp_model.CpModel, lv, obj: int, first: cp_model.CpSolver, options: PlanOptions,
               start: float, order: cp_model.LinearExpr) -> cp_model.CpSolver:
    """Among the optimal layouts, the one two fixed tie-breaks pick: libvirt's order first, then
    fixed weights on every variable, so the output does not depend on the OR-Tools version's search
    order. Keeps the best solution proven so far if a stage cannot be proven in time."""
    model.Add(objective_expr(lv) == obj)
    best = first
    for stage in (order, canonical_tiebreak(model)):
        proto = model.Proto()
        model.ClearHints()
        for index in range(len(proto.variables)):
            var = model.GetIntVarFromProtoIndex(index)
            model.AddHint(var, best.Value(var))
        model.Minimize(stage)
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(1.0, options.time_limit - (time.perf_counter() - start))
        solver.parameters.num_workers = options.workers
        solver.parameters.random_seed = 0
        if solver.Solve(model) != cp_model.OPTIMAL:
            return best
        model.Add(stage == int(round(solver.ObjectiveValue())))
        best = solver
    return best


def hotpluggable_count(prep: Prepared, result: SolveResult, groups: set[int]) -> int:
    """How many devices of these groups the solution puts alone in a hot-pluggable slot."""
    assert result.vars is not None
    return sum(result.value(x) for x in hotpluggable_placements(prep, result.vars, groups))
