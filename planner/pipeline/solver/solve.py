"""Build the model, solve it, and return counts with the solver's status and bound."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from planner.facts.errors import Infeasible, InternalError, Limit, Reason, Role
from planner.facts.facts import IO_WINDOW_UNITS
from planner.facts.options import PlanOptions
from planner.pipeline.prepare import Prepared
from planner.pipeline.solver import constraints as c
from planner.pipeline.solver import cpmodel as cp_model
from planner.pipeline.solver.objective import (
    Levels,
    canonical_weights,
    levels,
    libvirt_order_terms,
    objective_stages,
)
from planner.pipeline.solver.pool import PoolContent, PoolSplit, split
from planner.pipeline.solver.variables import Variables, create_variables, hotpluggable_placements

MAX_CUTS = 8


@dataclass(frozen=True)
class PortCounts:
    """New ports of one kind, as solved (planner.pipeline.solver.variables.PortPool's values)."""

    alone: dict[int, int]
    packed: dict[int, int]
    pack_io: int
    pack_noio: int
    spare: int

    def ports(self) -> list[int]:
        return [*self.alone.values(), self.pack_io, self.pack_noio, self.spare]


@dataclass(frozen=True)
class Counts:
    """What the layout is unfolded from: the solution's counts, plain numbers (the fields of
    planner.pipeline.solver.variables.Variables that say what goes where), with no model or solver behind
    them."""

    alone: dict[tuple[int, int], int]
    packed: dict[tuple[int, int], int]
    packslots: dict[int, int]
    new_pci_bridges: dict[int, int]
    new_pcie_pci_bridge: dict[int, int]
    root_ports: dict[int, PortCounts]
    rp_bridge: dict[int, int]
    rp_switch: dict[int, int]
    downstream: dict[int, PortCounts]
    pool_pci_bridges: int
    keep: dict[int, int]
    bus_keep: dict[int, int]
    occupied: dict[tuple[int, int], int]


def counts_of(v: Variables, solver: cp_model.CpSolver) -> Counts:
    def val(x) -> int:
        return int(solver.Value(x)) if x is not None else 0

    return _counts(v, val, lambda xs: {k: val(x) for k, x in xs.items()})


def counts_in(v: Variables, values: list[int]) -> Counts:
    """counts_of for a solution given as every variable's value by index (no solver): on the
    certificate's path for every typical guest, so each value is read by index, not through val."""

    def val(x: cp_model.IntVar | None) -> int:
        return values[x._index] if x is not None else 0

    return _counts(v, val, lambda xs: {k: values[x._index] for k, x in xs.items()})


def _counts(v: Variables, val: Callable[[cp_model.IntVar | None], int],
            each: Callable[[dict], dict]) -> Counts:
    """The counts, given a variable's value (0 for none) and a dict of variables' values."""

    def ports(pools: dict) -> dict[int, PortCounts]:
        return {p: PortCounts(each(pool.alone), each(pool.packed), val(pool.pack_io), val(pool.pack_noio),
                              val(pool.spare)) for p, pool in pools.items()}

    return Counts(each(v.alone), each(v.packed), each(v.packslots), each(v.new_pci_bridges),
                  each(v.new_pcie_pci_bridge), ports(v.root_ports), each(v.rp_bridge), each(v.rp_switch),
                  ports(v.downstream), val(v.pool_pci_bridges), each(v.keep), each(v.bus_keep),
                  each(v.occupied))


@dataclass
class SolveResult:
    status: str  # OPTIMAL | FEASIBLE
    objective: int
    bound: int
    gap: float
    seconds: float
    values: dict[str, int] = field(default_factory=dict)  # per objective level
    vars: Variables | None = None  # the model's variables: names of the quantities in the solution
    solution: tuple[int, ...] = ()  # every variable's value, by index (no solver is kept)
    pool: PoolSplit | None = None  # how the new bridges share the pooled devices
    io_units: int | None = None  # firmware I/O space the layout needs (32-byte units; None: no budget)
    io_budget: int = 0
    io_cuts: int = 0  # plans cut off because their new bridges' real I/O windows did not fit
    counts: Counts | None = None  # what goes where: the layout is unfolded from this alone

    def value(self, x) -> int:
        assert self.solution
        return int(cp_model.value_in(self.solution, x)) if x is not None else 0


def _minimal_core(model: cp_model.CpModel, core: list[int], options: PlanOptions) -> list[int]:
    """Shrink an infeasible set of assumptions until every member is needed (deletion filter), so the
    explanation names only the rules at fault. The model is small; each check is a short solve."""
    model.ClearObjective()
    keep = list(core)
    start = time.perf_counter()
    for lit in list(core):
        if time.perf_counter() - start > options.time_limit:
            break  # a large core: what is left is still a core, only not proven minimal
        trial = [x for x in keep if x != lit]
        model.ClearAssumptions()
        model.AddAssumptions([model.GetBoolVarFromProtoIndex(i) for i in trial])
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(1.0, options.time_limit / 10)
        solver.parameters.num_workers = 1
        if solver.Solve(model) == cp_model.INFEASIBLE:
            keep = trial
    return keep


def _core_reasons(why: c.Assumptions, core: list[int]) -> list[Reason]:
    """The reasons of a core's literals; many full buses in a core are one limit: named once (with
    the first few of them)."""
    full = [why.full_buses[i] for i in core if i in why.full_buses]
    if len(full) <= 3:
        return [why.literals[i] for i in core]
    shown = ", ".join(full[:3]) + f" and {len(full) - 3} more"
    rest = [why.literals[i] for i in core if i not in why.full_buses]
    return rest + [Reason(Limit.SLOTS, f"{len(full)} existing buses have no free slot ({shown})")]


def _relaxations(prep: Prepared, groups: list[int]) -> list[Reason]:
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
    return [Reason(Limit.PLACEMENT, text, Role.SUGGESTION) for text in out]


@dataclass
class Built:
    """The model of one plan, ready to solve: validated (CP-SAT would accept it)."""

    model: cp_model.CpModel
    why: c.Assumptions
    vars: Variables
    levels: Levels
    stages: list[cp_model.LinearExpr]  # objectives solved in turn (one unless the weights are huge)
    spare_pcie: int = 0  # the empty hot-pluggable PCIe ports and conventional slots the model wishes for
    spare_pci: int = 0


def build(prep: Prepared, options: PlanOptions, validate: bool = True) -> Built:
    """The CP-SAT model of prep, checked with CP-SAT's own validation (InternalError if it fails;
    validate=False skips it, and with it the import of OR-Tools: planner.pipeline.certificate only reads the
    model)."""
    spare_pcie = prep.spare_pcie if prep.problem.machine.pcie else 0  # the spares prepare resolved
    spare_pci = prep.spare_pci
    model = cp_model.CpModel()
    why = c.Assumptions(model=model)
    v = create_variables(model, prep)
    c.place_every_device(model, prep, v, why)
    c.keep_in_place(model, prep, v)
    c.existing_bus_capacity(model, prep, v, why)
    c.new_port_capacity(model, prep, v, why)
    c.io_window_budget(model, prep, v, why)
    c.bus_number_limits(model, prep, v, why)
    c.spare_ports(model, prep, v, spare_pcie, spare_pci, why)
    lv = levels(prep, v, prep.objective_order)  # resolved once, by prepare
    stages = objective_stages(model, lv)
    model.Minimize(stages[0])
    model.AddAssumptions([model.GetBoolVarFromProtoIndex(i) for i in why.literals])
    for x in v.keep.values():  # --replan: start the search from the layout as given
        model.AddHint(x, 1)
    if validate:
        _validate(model)
    return Built(model, why, v, lv, stages, spare_pcie, spare_pci)


def solve(prep: Prepared, options: PlanOptions) -> SolveResult:
    built = build(prep, options)
    model, why, v, lv, stages = built.model, built.why, built.vars, built.levels, built.stages

    start = time.perf_counter()
    cuts = 0
    exact = True  # every cut came from a proven-minimal split of the new bridges
    solver = cp_model.CpSolver()
    status = cp_model.UNKNOWN
    pool = PoolSplit()
    proven = True  # every earlier stage was proven optimal
    for number, stage in enumerate(stages):
        if number:  # the stage before is settled: keep its value, start from its solution
            model.Add(stages[number - 1] == solver.Value(stages[number - 1]))
            model.ClearHints()
            for index in range(len(model.Proto().variables)):
                var = model.GetIntVarFromProtoIndex(index)
                model.AddHint(var, solver.Value(var))
            proven = proven and status == cp_model.OPTIMAL
            model.Minimize(stage)
        before = solver
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = options.workers
        solver.parameters.random_seed = 0
        while True:
            left = options.time_limit - (time.perf_counter() - start)
            solver.parameters.max_time_in_seconds = max(0.5, left)
            status = solver.Solve(model)
            if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                break
            content = pool_content(prep, v, solver)
            pool = split(content, io_matters=v.io_used is not None)
            if _exact_io_fits(v, solver, pool):
                break
            # The relaxed pool windows let through a plan whose bridges really need more I/O space than
            # the firmware has: cut this pool content off at its real window count and solve again.
            _cut(model, v, content, pool.total_windows)
            cuts += 1
            exact = exact and pool.optimal
            if cuts == MAX_CUTS:
                # Cuts one content at a time do not converge here: fall back to a bound every split
                # meets. It may exclude better plans, so the result is no longer called optimal.
                c.loose_pool_windows(model, prep, v)
                exact = False
            elif cuts > MAX_CUTS or time.perf_counter() - start > options.time_limit:
                raise Infeasible([Reason(Limit.IO_SPACE, f"no layout within the firmware's I/O space found "
                                         f"after {cuts} refinements of the new bridges' I/O windows in "
                                         f"{options.time_limit:g} s; raise --time-limit")])
        if number and status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            # a later stage ran out of time: the earlier stage's layout stands, not proven best below
            solver, status, proven = before, cp_model.FEASIBLE, False
            pool = split(pool_content(prep, v, solver), io_matters=v.io_used is not None)
            break
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            break
    if status == cp_model.MODEL_INVALID:  # _validate let through what the solver refused
        raise InternalError("the solver refused the model (MODEL_INVALID); this is a defect of pciplan, "
                            "please report it")
    if status == cp_model.OPTIMAL and not proven:
        status = cp_model.FEASIBLE
    if status == cp_model.INFEASIBLE:
        core = _minimal_core(model, solver.SufficientAssumptionsForInfeasibility(), options)
        reasons = _core_reasons(why, core) or [Reason(Limit.OTHER, "the constraints admit no layout")]
        raise Infeasible(reasons + _relaxations(prep, [why.groups[i] for i in core if i in why.groups]))
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise Infeasible([Reason(Limit.TIME, f"no layout found within {options.time_limit:g} s (solver "
                                 f"status {solver.StatusName(status)}); raise --time-limit")])
    obj = solver.Value(stages[-1])  # exact: the stages stay below 2**53
    bound = int(round(solver.BestObjectiveBound()))
    gap = 0.0 if obj == 0 else abs(obj - bound) / abs(obj)
    if status == cp_model.OPTIMAL:
        chosen = _canonical(model, stages[-1], obj, solver, options, start, libvirt_order_terms(prep, v))
        if chosen is not solver:  # the tie-break's pick must fit the firmware's I/O space too
            chosen_pool = split(pool_content(prep, v, chosen), io_matters=v.io_used is not None)
            if _exact_io_fits(v, chosen, chosen_pool):
                solver, pool = chosen, chosen_pool
    seconds = time.perf_counter() - start
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
    # A cut from a split that was not proven minimal may have cut off a better plan: then say feasible.
    name = solver.StatusName(status) if exact or status != cp_model.OPTIMAL else "FEASIBLE"
    io = None
    if v.io_used is not None:
        io = solver.Value(v.io_used) + IO_WINDOW_UNITS * (pool.total_windows - solver.Value(v.pool_windows))
    every = range(len(model.Proto().variables))  # the result keeps values, not the solver
    solution = tuple(solver.Value(model.GetIntVarFromProtoIndex(i)) for i in every)
    return SolveResult(name, obj, bound, gap, seconds, values, v, solution, pool, io, v.io_budget, cuts,
                       counts_of(v, solver))


def _validate(model: cp_model.CpModel) -> None:
    """CP-SAT's own check of the model (cheap next to solving): a model it would refuse is pciplan's
    defect, never the user's and never a matter of time."""
    problem = model.Validate()
    if problem:
        raise InternalError(f"the solver model is invalid ({problem.splitlines()[0]}); this is a defect of "
                            "pciplan, please report it")


def pool_content(prep: Prepared, v: Variables, solver: cp_model.CpSolver) -> PoolContent:
    """The counts the solution puts into the new bridges."""
    val = solver.Value
    io_of = {gi: g.key.io_units for gi, g in enumerate(prep.groups)}
    return PoolContent(
        bridges=val(v.pool_bridges),
        nested=val(v.pool_pci_bridges),
        alone=tuple((gi, val(x), io_of[gi]) for gi, x in sorted(v.pool_alone.items())),
        packed=tuple((gi, val(x), io_of[gi]) for gi, x in sorted(v.pool_packed.items())),
        packslots=val(v.pool_packslots),
    )


def _exact_io_fits(v: Variables, solver: cp_model.CpSolver, pool: PoolSplit) -> bool:
    """The model's I/O total with the new bridges' windows as the split really needs them."""
    if v.io_used is None:
        return True
    relaxed = solver.Value(v.pool_windows)
    if pool.total_windows <= relaxed:
        return True
    used = solver.Value(v.io_used) + IO_WINDOW_UNITS * (pool.total_windows - relaxed)
    return used <= v.io_budget


def _cut(model: cp_model.CpModel, v: Variables, content: PoolContent, windows: int) -> None:
    """With exactly this content in the new bridges, they need this many I/O windows."""
    pairs = [(v.pool_bridges, content.bridges), (v.pool_pci_bridges, content.nested),
             (v.pool_packslots, content.packslots)]
    pairs += [(v.pool_alone[g], n) for g, n, _ in content.alone]
    pairs += [(v.pool_packed[g], n) for g, n, _ in content.packed]
    same = []
    for x, n in pairs:
        b = model.NewBoolVar("")
        model.Add(x == n).OnlyEnforceIf(b)
        model.Add(x != n).OnlyEnforceIf(b.Not())
        same.append(b)
    model.Add(v.pool_windows >= windows).OnlyEnforceIf(same)


# The two tie-breaks as one objective while its coefficients stay far from int64's limit
COMBINED_LIMIT = 1 << 60


def _span(model: cp_model.CpModel, terms: list) -> int:
    """How far sum(coefficient × variable) can range over the variables' domains."""
    variables = model.Proto().variables
    span = 0
    for coef, x in terms:
        domain = variables[x.Index()].domain
        span += abs(coef) * (domain[len(domain) - 1] - domain[0])  # (native protos index from 0 only)
    return span


def _stage_solver(model: cp_model.CpModel, best: cp_model.CpSolver, stage, options: PlanOptions,
                  start: float) -> tuple[cp_model.CpSolver, int]:
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
    return solver, solver.Solve(model)


def _canonical(model: cp_model.CpModel, objective: cp_model.LinearExpr, obj: int, first: cp_model.CpSolver,
               options: PlanOptions, start: float, order_terms: list) -> cp_model.CpSolver:
    """Among the optimal layouts, the one two fixed tie-breaks pick: libvirt's order first, then
    fixed weights on every variable, so the output does not depend on the OR-Tools version's search
    order. Both in one solve where the weighted sum fits: libvirt's order scaled past the whole range
    of the fixed weights, so minimising the sum minimises the order first and then the weights,
    exactly as the two stages one after the other; else (or when that solve is not proven in time)
    stage after stage, keeping the best solution proven so far if a stage cannot be proven in time."""
    model.Add(objective == obj)
    weights = canonical_weights(model)
    order = cp_model.LinearExpr.Sum([k * x for k, x in order_terms])
    canonical = cp_model.LinearExpr.Sum([w * x for w, x in weights])
    scale = _span(model, weights) + 1
    if _span(model, order_terms) * scale + scale < COMBINED_LIMIT:
        both = cp_model.LinearExpr.Sum([*(k * scale * x for k, x in order_terms),
                                        *(w * x for w, x in weights)])
        solver, status = _stage_solver(model, first, both, options, start)
        if status == cp_model.OPTIMAL:
            return solver
    best = first
    for stage in (order, canonical):
        solver, status = _stage_solver(model, best, stage, options, start)
        if status != cp_model.OPTIMAL:
            return best
        model.Add(stage == int(round(solver.ObjectiveValue())))
        best = solver
    return best


def hotpluggable_count(prep: Prepared, result: SolveResult, groups: set[int]) -> int:
    """How many devices of these groups the solution puts alone in a hot-pluggable slot."""
    assert result.vars is not None
    return sum(result.value(x) for x in hotpluggable_placements(prep, result.vars, groups))
