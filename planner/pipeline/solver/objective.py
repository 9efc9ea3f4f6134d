"""The lexicographic objective as one weighted sum. Each level's weight exceeds the largest possible
value of all lower levels together, so no gain below can pay for a loss above:

  L1  device addresses the input had are kept     (hard by default; with --replan, moves counted)
  L2  devices left without the hot-pluggable slot they prefer, plus missing spare ports
  L3  PCIe-capable devices put on conventional PCI
  L4  controllers added
  L5  bus numbers added
  L6  slots of existing buses consumed (tie-break: keep room on the root bus), and with --replan
      old controllers removed (no churn for nothing)
  L7  ties go to libvirt's choice: an existing empty hot-pluggable port left empty counts one (libvirt
      fills the ports a guest already has before it adds new ones)

L2 to L5 are the user's to order (--objective-order, <pciplan:objective order=…/>, a policy's
objective = "…"); the order above is the default.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.facts.facts import PORTS
from planner.facts.options import OBJECTIVE_DEFAULT
from planner.pipeline.prepare import Prepared
from planner.pipeline.solver import cpmodel as cp_model
from planner.pipeline.solver.variables import (
    Variables,
    hotpluggable_placements,
    new_controllers,
    on_conventional,
)

MAX_SLOTS = 2 * 256 * 32 + 256
MAX_CONTROLLERS = 256
MAX_SHORTFALL = 2 * MAX_CONTROLLERS  # spare ports and spare slots missing (each wish is at most 255)
# CP-SAT refuses (MODEL_INVALID) a linear expression whose terms could overflow 64 bits; below 2**53 its
# objective values (doubles) are exact too.
SAFE_MAGNITUDE = 1 << 53


@dataclass
class Levels:
    hotplug_wanted: int
    moved: cp_model.LinearExpr
    hotplug_lost: cp_model.LinearExpr
    pcie_on_pci: cp_model.LinearExpr
    controllers: cp_model.LinearExpr
    bus_numbers: cp_model.LinearExpr
    slots_used: cp_model.LinearExpr
    unlike_libvirt: cp_model.LinearExpr
    order: tuple[str, ...]  # every level, most important first
    weights: dict[str, int]
    most: dict[str, int]  # each level's largest value (the weights are built from these)

    def expr(self, name: str) -> cp_model.LinearExpr:
        return {"moved": self.moved, "hotplug": self.hotplug_lost, "pcie": self.pcie_on_pci,
                "controllers": self.controllers, "buses": self.bus_numbers, "slots": self.slots_used,
                "libvirt": self.unlike_libvirt}[name]


def lexicographic_weights(order: tuple[str, ...], most: dict[str, int]) -> dict[str, int]:
    """Weights that make a weighted sum lexicographic: each level's weight exceeds the largest
    possible total of all the levels after it (most: each level's largest value)."""
    weights: dict[str, int] = {}
    w = 1
    for name in reversed(order):
        weights[name] = w
        w *= most[name] + 1
    return weights


def levels(prep: Prepared, v: Variables, middle: tuple[str, ...] = OBJECTIVE_DEFAULT) -> Levels:
    """The objective's levels; middle orders hotplug, pcie, controllers and buses (keeping the
    input's addresses is always first, the tie-breaks always last)."""
    preferring = {gi for gi, g in enumerate(prep.groups) if g.key.prefers_hotplug}
    wanted = sum(prep.groups[gi].size for gi in preferring)
    hot = hotpluggable_placements(prep, v, preferring)
    assert v.spare_shortfall is not None
    hotplug_lost = wanted - cp_model.LinearExpr.Sum(hot) + v.spare_shortfall

    pcie_on_pci = cp_model.LinearExpr.Sum(pcie_on_pci_terms(prep, v))

    kept = list(v.bus_keep.values())  # --replan: old controllers kept count like new ones
    controllers = cp_model.LinearExpr.Sum(new_controllers(v) + kept)
    bus_numbers = cp_model.LinearExpr.Sum(
        new_controllers(v) + [prep.problem.buses[c].model.buses * k for c, k in v.bus_keep.items()])
    moved_devices = [1 - v.keep[i] for i, d in enumerate(prep.droppables) if d.device is not None]
    moved = len(prep.lost) + cp_model.LinearExpr.Sum(moved_devices)
    slots_used = cp_model.LinearExpr.Sum(slots_used_terms(prep, v))

    # L7: existing free hot-pluggable ports (one slot each) left empty, one each: libvirt fills the
    # ports a guest has before it adds any (which ones, lowest index first, the unfolding decides).
    devices = sum(g.size for g in prep.groups)
    fills = port_fills(prep, v)
    n = sum(1 for xs in fills.values() if xs)
    unlike_libvirt = n - cp_model.LinearExpr.Sum([x for xs in fills.values() for x in xs])
    assert v.spare_shortfall is not None
    most = {"moved": devices + MAX_CONTROLLERS, "hotplug": devices + MAX_SHORTFALL, "pcie": devices,
            "controllers": MAX_CONTROLLERS, "buses": MAX_CONTROLLERS, "slots": MAX_SLOTS, "libvirt": n}
    order = ("moved", *middle, "slots", "libvirt")
    return Levels(wanted, moved, hotplug_lost, pcie_on_pci, controllers, bus_numbers, slots_used,
                  unlike_libvirt, order, lexicographic_weights(order, most), most)


def pcie_on_pci_terms(prep: Prepared, v: Variables) -> list[cp_model.IntVar]:
    """L3's terms: PCIe devices placed on a conventional bus, or in the new bridges."""
    placed = [*v.alone.items(), *v.packed.items()]
    on_pci = [x for (e, gi), x in placed if on_conventional(prep, prep.groups[gi], e)]
    pooled = [*v.pool_alone.items(), *v.pool_packed.items()]
    return on_pci + [x for gi, x in pooled if prep.groups[gi].key.endpoint == "pcie"]


def hotplug_ports(prep: Prepared) -> list[int]:
    """The existing hot-pluggable ports (PCIe root and downstream ports), by index."""
    return [e for e, st in prep.states.items() if st.bus.model.name in PORTS and st.bus.hotplug]


def slots_used_terms(prep: Prepared, v: Variables) -> list:
    """L6's terms: slots of existing buses consumed (and with --replan, old controllers removed)."""
    # The one slot of an existing port is no room worth keeping: whether it is filled is L7's business.
    ports = hotplug_ports(prep)
    used = [x for e, x in v.packslots.items() if e not in ports] + list(v.rpslots.values())
    used += [x for (e, _), x in v.alone.items() if e not in ports] + list(v.new_pci_bridges.values())
    used += [x for e, x in v.new_pcie_pci_bridge.items() if e not in ports]
    # A hot-pluggable slot given to devices packed as functions costs more: it is hot-plug room lost.
    used += [x for e, x in v.packslots.items() if prep.states[e].bus.hotplug]
    used += [1 - k for k in v.bus_keep.values()]  # --replan: churn in controllers, last of all
    # New ports below an expander bus only where a NUMA rule needs them (libvirt would not put them
    # there either while the root bus has room)
    for p, pool in v.root_ports.items():
        if prep.hierarchy_of(p) != 0:
            used += pool.ports() + [v.rp_bridge[p], v.rp_switch[p]] + v.downstream[p].ports()
    return used


def port_fills(prep: Prepared, v: Variables) -> dict[int, list[cp_model.IntVar]]:
    """L7's terms: for each existing hot-pluggable port, the variables that put something in it."""
    fills: dict[int, list[cp_model.IntVar]] = {e: [] for e in hotplug_ports(prep)}
    for (e, _), x in v.alone.items():
        if e in fills:
            fills[e].append(x)
    for table in (v.packslots, v.new_pcie_pci_bridge):
        for e, x in table.items():
            if e in fills:
                fills[e].append(x)
    return fills


def objective_expr(lv: Levels) -> cp_model.LinearExpr:
    return cp_model.LinearExpr.Sum([lv.weights[name] * lv.expr(name) for name in lv.order])


def magnitude(model: cp_model.CpModel, expr: cp_model.LinearExpr) -> int:
    """The largest absolute value expr's terms could reach by their variables' domains, summed: what
    CP-SAT's model validation bounds (it rejects a model where this may overflow 64 bits)."""
    variables = model.Proto().variables
    terms, const = _flat(expr)
    total = abs(const)
    for index, coeff in terms:
        domain = variables[index].domain
        total += abs(coeff) * max(abs(domain[0]), abs(domain[-1]))
    return total


def _flat(expr) -> tuple[list[tuple[int, int]], int]:
    """(variable index, coefficient) pairs and the constant of an expression of
    planner.pipeline.solver.cpmodel, or of OR-Tools' own cp_model (which tests/test_cpmodel.py builds the same
    models with)."""
    if hasattr(expr, "_terms"):
        return list(expr._terms.items()), expr._const
    from ortools.sat.python import cp_model_helper

    flat = cp_model_helper.FlatIntExpr(expr)
    return [(var.index, coeff) for var, coeff in zip(flat.vars, flat.coeffs, strict=True)], flat.offset


def objective_stages(model: cp_model.CpModel, lv: Levels) -> list[cp_model.LinearExpr]:
    """The objective as one weighted sum when CP-SAT can take it (every guest of ordinary size), else
    as stages solved one after the other, most important first, each fixed before the next.

    On large guests (hundreds of devices and buses) the lexicographic weights multiply past 64 bits.
    Then each level becomes a variable bounded by the level's largest value (so no coefficient of its
    definition is large), and consecutive levels share a stage while their weights still fit."""
    whole = objective_expr(lv)
    if magnitude(model, whole) < SAFE_MAGNITUDE:
        return [whole]
    bounded: dict[str, tuple[cp_model.IntVar, int]] = {}
    for name in lv.order:
        expr = cp_model.LinearExpr.Sum([lv.expr(name)])
        top = max(0, min(lv.most[name], magnitude(model, expr)))
        level = model.NewIntVar(0, top, f"level_{name}")
        model.Add(level == expr)
        bounded[name] = (level, top)
    chunks: list[list[str]] = [[]]
    size = 1
    for name in lv.order:
        top = bounded[name][1]
        if chunks[-1] and size * (top + 1) >= SAFE_MAGNITUDE:
            chunks.append([])
            size = 1
        chunks[-1].append(name)
        size *= top + 1
    stages = []
    for chunk in chunks:
        weights = lexicographic_weights(tuple(chunk), {name: bounded[name][1] for name in chunk})
        stages.append(cp_model.LinearExpr.Sum([weights[name] * bounded[name][0] for name in chunk]))
    return stages


def libvirt_order_terms(prep: Prepared, v: Variables) -> list[tuple[int, cp_model.IntVar]]:
    """Among equally good layouts, earlier devices on the existing buses of lowest index, as libvirt's
    one-device-at-a-time assignment puts them (groups are numbered in document order; new
    controllers come after every existing bus). Maximising the sum of products pairs the largest
    factors (rearrangement inequality): early groups with low indices. (coefficient, variable) pairs."""
    groups = len(prep.groups)
    placed = [*v.alone.items(), *v.packed.items()]
    return [(-(groups - gi) * (256 - e), x) for (e, gi), x in placed]


def libvirt_order(prep: Prepared, v: Variables) -> cp_model.LinearExpr:
    return cp_model.LinearExpr.Sum([c * x for c, x in libvirt_order_terms(prep, v)])


def canonical_weights(model: cp_model.CpModel) -> list[tuple[int, cp_model.IntVar]]:
    """A fixed weighting of every variable, used to pick one layout among equally good ones.

    Among optimal solutions CP-SAT returns whichever its search meets first, and that changes between
    OR-Tools versions. Minimising this sum over the optimal solutions picks the same one everywhere:
    distinct pseudo-random weights (a fixed LCG) make two different solutions with the same sum
    practically impossible. (weight, variable) pairs."""
    proto = model.Proto()
    terms = []
    state = 12345
    for index in range(len(proto.variables)):
        state = (state * 1103515245 + 12345) % (1 << 31)
        weight = (state >> 8) % 65521 + 1
        terms.append((weight, model.GetIntVarFromProtoIndex(index)))
    return terms


def canonical_tiebreak(model: cp_model.CpModel) -> cp_model.LinearExpr:
    return cp_model.LinearExpr.Sum([w * x for w, x in canonical_weights(model)])
