"""The optimality certificate: a layout built without the solver, proven optimal by a lower bound on
every level of the objective, so that no CP-SAT solve (and no OR-Tools import) is needed.

For the guests it covers (below), a simple construction gives a solution of the solver's own model
(planner.pipeline.solver.solve.build, never solved here): every device that wants hot-plug alone on a new
root port (PCIe) or in a new bridge's slot (conventional, on q35) or in a root-bus slot (pc), the
spare ports the model wishes for, and the rest packed as functions of root-bus slots. It is checked
against every constraint of the model, and its levels are read from the model's own expressions.
Then a lower bound per level, argued from the guest alone (`_bounds`, each level's argument in its
docstring), must equal the layout's value on every level, in the objective's order. Lexicographically:
the bound of a level only has to hold among the layouts that are optimal on the levels above it, and
the layout meets each of those, so it is optimal on all of them. When any level falls short of its
bound, or anything is outside the covered guests, certify returns None and the solver plans as before.

Covered: no --replan, no rules, no reservations, the default objective order, and a guest whose only
PCI controller is the root (pcie-root on q35 and aarch64 virt, pci-root on pc) - the typical guest -
or whose other controllers are PCIe ports (and switches' upstream ports), with no more empty
hot-pluggable ports than PCIe devices that want one and no conventional device that wants hot-plug.
On pc, also a root bus too crowded for the devices wanting hot-plug, the packed slots and the spare
slots: as few new pci-bridges as give room (one on the root, the others nested in it) then take the
packed slots and the devices their slots have room for, the rest alone on the root. And (q35, virt)
more existing empty root ports than devices wanting one, beside at most one pack of devices without
a wish (_roomy): the devices and the pack take the ports, the rest stay empty (the spares).

Why the output is the solver's, byte for byte: on these guests every optimal solution of the model
takes the same values for what the layout is unfolded from (the bounds' arguments show that each
level is met only by the structure built here), except which conventional devices without a hot-plug
wish fill the free functions of the root bus's packed slots rather than the new bridge, which
devices take the existing empty ports (and which port the pack), and (crowded pc) which devices
wanting hot-plug stay on the root; that the solver's tie-break decides by libvirt's order
(planner.pipeline.solver.objective.libvirt_order_terms: earlier groups on existing buses of lower index first,
a sum of distinct products that one assignment maximises), and the construction does the same. The remaining
variables (empty slots counted for the spares, I/O windows) are completed to their least values, as
the solver's final tie-break (positive weights on every variable) leaves them. tests/test_certificate.py
compares certified plans with the solver's on generated guests (bytes and the whole summary), and
tests/test_recorded_outputs.py the recorded corpus's outputs with those written before.

Also covered: a guest with nothing left to place (every device addressed: a planned guest planned
again), whatever its controllers, rules or objective order; the layout is then "add nothing" but the
missing spare ports. Its result is mostly worked out from prep alone (planned_again: the same levels,
objective, I/O units and counts, without building the model, which is most of the cost of a fleet's
second pass); where that short path is not sure it answers None and the model decides as above.
tests/test_certificate.py compares the two field by field.

The typical guest (the root bus its only bus) is settled without building the model too (direct):
its variables are only numbered as the model numbers them, the same shape, construction and bounds
are used, and the model's constraints, the completion of the derived counts and the levels are
worked out for the layout's numbers; where that short path is not sure it answers None and the model
decides as above. tests/test_certificate.py compares it with by_model field by field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from planner.facts.facts import EXPANDERS, IO_WINDOW_UNITS, MAX_BUS_NUMBERS, MAX_INDEX, PORTS
from planner.facts.options import OBJECTIVE_DEFAULT, PlanOptions
from planner.pipeline.prepare import Prepared
from planner.pipeline.solver import cpmodel as cp_model
from planner.pipeline.solver.objective import MAX_CONTROLLERS as MAX_NEW
from planner.pipeline.solver.objective import (
    MAX_SHORTFALL,
    MAX_SLOTS,
    SAFE_MAGNITUDE,
    lexicographic_weights,
    pcie_on_pci_terms,
    port_fills,
    slots_used_terms,
)
from planner.pipeline.solver.pool import PoolContent, PoolSplit, split
from planner.pipeline.solver.solve import (
    Built,
    Counts,
    PortCounts,
    SolveResult,
    _exact_io_fits,
    build,
    counts_in,
    counts_of,
    pool_content,
)
from planner.pipeline.solver.variables import (
    Variables,
    conventional_ok,
    create_variables,
    hotpluggable_placements,
    needs_port_window,
    new_bridges,
    new_controllers,
    pcie_ok,
)

FUNCTIONS = 8
SLOTS_PER_BRIDGE = 31
ROOTS = ("pcie-root", "pci-root")
SWITCHES = ("pcie-root-port", "pcie-switch-downstream-port", "pcie-switch-upstream-port")


@dataclass
class Stats:
    """How often the certificate decided a plan (this process)."""

    tried: int = 0
    certified: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


STATS = Stats()


@dataclass
class _Shape:
    """The guest's groups by what they need (group indices)."""

    port: list[int] = field(default_factory=list)  # wants hot-plug, PCIe: alone on a new root port
    bridge: list[int] = field(default_factory=list)  # wants hot-plug, conventional, on a PCIe machine
    root_hot: list[int] = field(default_factory=list)  # wants hot-plug, alone in a pci-root slot (pc)
    root: list[int] = field(default_factory=list)  # no wish, only the root bus without a cost above
    either: list[int] = field(default_factory=list)  # no wish, conventional: root bus or a new bridge
    # ports to spare (_roomy): the existing empty ports, in index order, each holding one hot-plug
    # device's group index, or -1 for the one pack of the devices without a wish
    roomy: list[int] | None = None


@dataclass
class _Frame:
    """What the certificate reads of a built model (Built has the same fields): its variables and the
    spare ports and slots it wishes for. The model-free path (direct) makes one without a model."""

    vars: Variables
    spare_pcie: int
    spare_pci: int
    root_free: int  # the root bus's free slots (counted once: _construct and _bounds ask several times)


Frame = Built | _Frame


def _root_free(prep: Prepared, built: Frame) -> int:
    """How many free slots the root bus has."""
    if isinstance(built, _Frame):
        return built.root_free
    return len(prep.states[0].free_slots(prep.problem.machine.reserved_slots))


def _miss(reason: str) -> None:
    STATS.reasons[reason] = STATS.reasons.get(reason, 0) + 1


def certify(prep: Prepared, options: PlanOptions) -> SolveResult | None:
    """The solver's result for prep, proven without solving; None when the certificate does not
    apply (then solve as before)."""
    start = time.perf_counter()
    STATS.tried += 1
    why = _outside(prep, options)
    if why:
        _miss(why)
        return None
    if not prep.groups:  # a planned guest planned again: most often settled without the model
        planned = planned_again(prep, start)
        if planned is not None:
            STATS.certified += 1
            return planned
    # the typical guest (the root bus alone): settled without the model where the short path is sure
    result = _direct(prep, start)  # _outside has let it through
    if isinstance(result, str):  # by_model would not certify it either, for this reason
        _miss(result)
        return None
    result = result or by_model(prep, options, start)
    if result is not None:
        STATS.certified += 1
    return result


def by_model(prep: Prepared, options: PlanOptions, start: float | None = None) -> SolveResult | None:
    """certify through the solver's model (built, never solved) for a guest _outside lets through."""
    start = time.perf_counter() if start is None else start
    built = build(prep, options, validate=False)
    shape = _shape(prep, built)
    if shape is None:
        _miss("group")
        return None
    layout = _construct(prep, built, shape)
    if layout is None:
        _miss("room")
        return None
    return prove(prep, options, built, layout, start)


class _Numbering:
    """What create_variables needs of a model, without the model: its variables are numbered as the
    model numbers them (create_variables makes the model's first ones) and keep their upper bounds; the
    one constraint it adds is dropped (direct works that count out itself). The variables it hands out
    are shared stand-ins, one per index (direct reads nothing of them but their index)."""

    def __init__(self) -> None:
        self.upper: list[int] = []

    def NewIntVar(self, lb: int, ub: int, name: str) -> cp_model.IntVar:  # noqa: N802 (the model's name)
        upper = self.upper
        i = len(upper)
        upper.append(ub)
        standins = _STANDINS
        if i >= len(standins):
            standins = _more_standins(i)
        return standins[i]

    def NewBoolVar(self, name: str) -> cp_model.IntVar:  # noqa: N802
        return self.NewIntVar(0, 1, name)

    def Add(self, ct) -> None:  # noqa: N802
        return None


_STANDINS: list[cp_model.IntVar] = []  # _Numbering's variables: the one at position i has index i


def _more_standins(i: int) -> list[cp_model.IntVar]:
    """_STANDINS grown to hold index i: a new list, filled before it replaces the old one (so a fleet's
    threads never see one half made)."""
    global _STANDINS
    standins = [cp_model.IntVar(None, j, f"v{j}") for j in range(2 * (i + 1))]  # type: ignore[arg-type]
    _STANDINS = standins
    return standins


Terms = tuple[int, list[cp_model.IntVar], list[cp_model.IntVar]]


def _level_terms(prep: Prepared, v: Variables) -> dict[str, Terms]:
    """Each level of planner.pipeline.solver.objective.levels as (constant, variables added, variables
    subtracted), from the same term lists, for a guest without --replan (no keep variables)."""
    assert not v.keep and not v.bus_keep and v.spare_shortfall is not None
    groups = prep.groups
    preferring = {gi for gi, g in enumerate(groups) if g.key.prefers_hotplug}
    wanted = sum(groups[gi].size for gi in preferring)
    hot = hotpluggable_placements(prep, v, preferring)
    controllers = new_controllers(v)
    fills = port_fills(prep, v)
    n = sum(1 for xs in fills.values() if xs)
    return {"moved": (len(prep.lost), [], []), "hotplug": (wanted, [v.spare_shortfall], hot),
            "pcie": (0, pcie_on_pci_terms(prep, v), []), "controllers": (0, controllers, []),
            "buses": (0, controllers, []), "slots": (0, slots_used_terms(prep, v), []),
            "libvirt": (n, [], [x for xs in fills.values() for x in xs])}


def direct(prep: Prepared, options: PlanOptions, start: float | None = None) -> SolveResult | str | None:
    """by_model's result for a guest whose only bus is the root (the typical guest), worked out without
    the model: the variables numbered as create_variables makes them, the same shape, construction
    and bounds, and the model's constraints, the completion of the derived counts (_complete: empty
    slots as large, shortfalls and I/O windows as small as they can be) and the levels written out for
    these numbers. Where by_model would not certify either, the reason it would give (a string: the
    same shape or construction fails, a constraint does not hold, a level misses its bound). None
    where this short path is not sure (then by_model decides): more buses than the root, a layout
    value beyond its variable's domain, or weights that might not fit one objective stage.
    tests/test_certificate.py compares it with by_model field by field, and the reasons too."""
    start = time.perf_counter() if start is None else start
    return None if _outside(prep, options) else _direct(prep, start)


def _direct(prep: Prepared, start: float) -> SolveResult | str | None:
    """direct for a guest that _outside lets through."""
    problem = prep.problem
    if not prep.groups or len(prep.states) != 1 or len(problem.buses) != 1:
        return None
    st = prep.states[0]
    if st.optional_slots():
        return None
    numbering = _Numbering()
    v = create_variables(numbering, prep)  # type: ignore[arg-type]
    free = len(st.free_slots(problem.machine.reserved_slots))
    frame = _Frame(v, prep.spare_pcie if problem.machine.pcie else 0, prep.spare_pci, free)
    shape = _shape(prep, frame)
    if shape is None:
        return "group"
    layout = _construct(prep, frame, shape)
    if layout is None:
        return "room"
    upper = numbering.upper
    values = [0] * len(upper)
    for i, n in layout.items():
        if not 0 <= n <= upper[i]:
            return None
        values[i] = n

    def val(x) -> int:
        return values[x._index] if x is not None else 0

    def total(xs) -> int:
        return sum([values[x._index] for x in xs])

    groups = prep.groups
    placed = [0] * len(groups)  # place_every_device
    on_root = [*v.alone.items(), *v.packed.items()]
    for (_, gi), x in on_root:
        placed[gi] += values[x._index]
    pooled = [*v.pool_alone.items(), *v.pool_packed.items()]
    pools = [*v.root_ports.values(), *v.downstream.values()]
    for pool in pools:
        pooled += [*pool.alone.items(), *pool.packed.items()]
    for gi, x in pooled:
        placed[gi] += values[x._index]
    if placed != [g.size for g in groups]:
        return "infeasible"
    # existing_bus_capacity (the root bus: its free slots counted above)
    packslots = val(v.packslots[0])
    if total(v.packed.values()) > FUNCTIONS * packslots:
        return "infeasible"
    used = total(v.alone.values()) + val(v.new_pci_bridges.get(0)) + packslots
    if 0 in v.root_ports:
        ports = total(v.root_ports[0].ports()) + val(v.rp_bridge[0]) + val(v.rp_switch[0])
        if ports > FUNCTIONS * val(v.rpslots[0]) + len(st.free_root_port_functions()):
            return "infeasible"
        used += val(v.rpslots[0])
    if used > free:
        return "infeasible"
    # new_port_capacity
    for pool in pools:
        packed = total(pool.packed.values())
        packed_io = total(x for gi, x in pool.packed.items() if needs_port_window(groups[gi]))
        packs = val(pool.pack_io) + val(pool.pack_noio)
        if packed_io > FUNCTIONS * val(pool.pack_io) or packed > FUNCTIONS * packs or packs > packed:
            return "infeasible"
    for p, pool in v.downstream.items():
        if not val(v.rp_switch[p]) <= total(pool.ports()) <= 32 * val(v.rp_switch[p]):
            return "infeasible"
    bridges = total(new_bridges(v))  # the model's pool_bridges
    nested = val(v.pool_pci_bridges)
    pool_slots = total(v.pool_alone.values()) + val(v.pool_packslots) + nested
    if pool_slots > SLOTS_PER_BRIDGE * bridges or nested > 255 * (bridges - nested):
        return "infeasible"
    if total(v.pool_packed.values()) > FUNCTIONS * val(v.pool_packslots):
        return "infeasible"
    # io_window_budget: the root bus's I/O, the new ports' windows and the new bridges' (least) windows
    fw = problem.firmware
    io_used: int | None = None
    budget = 0
    windows = 0  # pool_windows: bound below by the budget's constraints only
    if fw is not None and fw.io_capacity_units() > 0:
        io_of = [g.key.io_units for g in groups]
        in_bridges = [*v.pool_alone.items(), *v.pool_packed.items()]
        io_pooled = sum(io_of[gi] * values[x._index] for gi, x in in_bridges)
        windows = max(bridges, _ceil(io_pooled, IO_WINDOW_UNITS))
        io_used = st.io_units + sum(io_of[gi] * values[x._index] for (_, gi), x in on_root)
        counted = 0
        for pool in pools:
            with_io = [x for gi, x in pool.alone.items() if needs_port_window(groups[gi])] + [pool.pack_io]
            if fw.pads_spares:
                with_io.append(pool.spare)
            counted += total(with_io)
        io_used += IO_WINDOW_UNITS * (counted + windows)
        budget = max(fw.io_capacity_units(), prep.fixed_io_units)
        if io_used > budget:
            return "infeasible"
        if fw.max_windows and counted + bridges > max(fw.max_windows, prep.fixed_io_windows):
            return "infeasible"
    # spare_ports: the root's empty slots as many as it has left, the shortfalls as small as they can be
    have_pcie = sum(val(pool.spare) for pool in pools)
    have_pci = SLOTS_PER_BRIDGE * bridges - total(v.pool_alone.values()) - val(v.pool_packslots) - nested
    if st.bus.hotplug and free:
        if st.bus.model.name in PORTS:
            have_pcie += free - used
        elif st.bus.model.conventional:
            have_pci += free - used
    short = 0
    for want, have in ((frame.spare_pcie, have_pcie), (frame.spare_pci, have_pci)):
        if want:
            short += max(0, want - have)
    # the levels, their bound and the objective in one stage (bounded by every level's own magnitude)
    assert v.spare_shortfall is not None and v.pool_bridges is not None and v.pool_windows is not None
    for x, n in ((v.spare_shortfall, short), (v.pool_bridges, bridges), (v.pool_windows, windows)):
        if n > upper[x._index]:
            return "infeasible"  # beyond the variable's domain: no completion
        values[x._index] = n
    terms = _level_terms(prep, v)
    level: dict[str, int] = {}
    magnitude: dict[str, int] = {}  # of each level's expression over the variables' domains (at most)
    for name, (const, plus, minus) in terms.items():
        level[name] = const + sum([values[x._index] for x in plus]) - sum([values[x._index] for x in minus])
        magnitude[name] = abs(const) + sum([upper[x._index] for x in [*plus, *minus]])
    # bus_number_limits (no expander bus here: no busNr ranges)
    new = level["controllers"]
    if sum(b.model.buses for b in problem.buses.values()) + new > MAX_BUS_NUMBERS:
        return "infeasible"
    if max(problem.buses) + new > MAX_INDEX:
        return "infeasible"
    bounds = _bounds(prep, frame, shape)
    order = ("moved", *prep.objective_order, "slots", "libvirt")
    for name in order:
        if level[name] != bounds[name]:
            return f"bound {name}"
    devices = sum(g.size for g in groups)
    most = {"moved": devices + MAX_NEW, "hotplug": devices + MAX_SHORTFALL, "pcie": devices,
            "controllers": MAX_NEW, "buses": MAX_NEW, "slots": MAX_SLOTS, "libvirt": terms["libvirt"][0]}
    weights = lexicographic_weights(order, most)
    # the weighted sum's magnitude (objective.magnitude, what objective_stages bounds) is at most this
    if sum(weights[name] * magnitude[name] for name in order) >= SAFE_MAGNITUDE:
        return None  # objective_stages might split the objective
    objective = sum(weights[name] * level[name] for name in order)
    if bridges:
        solver = cp_model.CpSolver()
        solver._values = values
        pool_split = split(pool_content(prep, v, solver), io_matters=io_used is not None)
    else:  # no new bridge (nor nested one: see above): split's answer for an empty pool
        pool_split = PoolSplit()
    io = None
    if io_used is not None:
        io = io_used + IO_WINDOW_UNITS * (pool_split.total_windows - windows)
        if pool_split.total_windows > windows and io > budget:
            return "io"  # _exact_io_fits
    values_of = {"addresses_moved": level["moved"], "hotplug_wanted": terms["hotplug"][0],
                 "hotplug_lost": level["hotplug"], "pcie_on_pci": level["pcie"],
                 "controllers_added": level["controllers"], "bus_numbers_added": level["buses"],
                 "root_slots_used": level["slots"], "unlike_libvirt": level["libvirt"],
                 "spare_shortfall": short}
    return SolveResult("OPTIMAL", objective, objective, 0.0, time.perf_counter() - start, values_of, None, (),
                       pool_split, io, budget, 0, counts_in(v, values))


def prove(prep: Prepared, options: PlanOptions, built: Built, layout: dict[int, int],
          start: float | None = None) -> SolveResult | None:
    """The solver's result for this layout (values of the layout variables by index, the others 0)
    when it is a solution of the model that meets every level's lower bound; else None."""
    start = time.perf_counter() if start is None else start
    shape = _shape(prep, built)
    if _outside(prep, options) or shape is None:
        return None
    values = _complete(built.model, built.vars, layout)
    if values is None:
        _miss("infeasible")
        return None
    solver = cp_model.CpSolver()
    solver._values = values  # a solution, read through the solver's interface (unfold, values)
    solver._status = cp_model.OPTIMAL
    lv = built.levels
    bounds = _bounds(prep, built, shape)
    for name in lv.order:
        if solver.Value(lv.expr(name)) != bounds[name]:
            _miss(f"bound {name}")
            return None
    v = built.vars
    pool = split(pool_content(prep, v, solver), io_matters=v.io_used is not None)
    if not _exact_io_fits(v, solver, pool):
        _miss("io")
        return None
    obj = solver.Value(built.stages[-1])
    io = None
    if v.io_used is not None:
        io = solver.Value(v.io_used) + IO_WINDOW_UNITS * (pool.total_windows - solver.Value(v.pool_windows))
    values_of = {
        "addresses_moved": solver.Value(lv.moved),
        "hotplug_wanted": lv.hotplug_wanted,
        "hotplug_lost": solver.Value(lv.hotplug_lost),
        "pcie_on_pci": solver.Value(lv.pcie_on_pci),
        "controllers_added": solver.Value(lv.controllers),
        "bus_numbers_added": solver.Value(lv.bus_numbers),
        "root_slots_used": solver.Value(lv.slots_used),
        "unlike_libvirt": solver.Value(lv.unlike_libvirt),
        "spare_shortfall": solver.Value(v.spare_shortfall),
    }
    return SolveResult("OPTIMAL", obj, obj, 0.0, time.perf_counter() - start, values_of, v, tuple(values),
                       pool, io, v.io_budget, 0, counts_of(v, solver))


def _outside(prep: Prepared, options: PlanOptions) -> str:
    """Why the guest is not one the certificate covers ('' when it is)."""
    if options.replan or prep.droppables or prep.lost or prep.removed_controllers:
        return "replan"
    if not prep.groups:
        return ""  # nothing to place (a planned guest planned again): any controllers, order, rules
    if (options.objective_order or OBJECTIVE_DEFAULT) != OBJECTIVE_DEFAULT:
        return "order"
    if prep.reserve_pcie or prep.reserve_pci:
        return "reserve"
    if prep.states[0].bus.model.name not in ROOTS:
        return "controllers"
    if any(st.bus.model.name not in SWITCHES or prep.states[0].bus.model.name != "pcie-root"
           for e, st in prep.states.items() if e != 0):
        return "controllers"  # besides the root, only PCIe ports (and switches' upstream ports)
    for g in prep.groups:
        k = g.key
        if (k.bus_pin is not None or k.numa is not None or k.connection is not None or k.bus != "default"
                or k.hotplug not in ("prefer", "none") or k.whole_slot):
            return "rules"
    return ""


def _shape(prep: Prepared, built: Frame) -> _Shape | None:
    """Each group by where it can go without a cost on a level above the root bus's slots (None when a
    group fits none of these)."""
    v = built.vars
    shape = _Shape()
    if not prep.groups:
        return shape
    root = prep.states[0].bus
    conventional_root = root.model.conventional
    pool = v.root_ports.get(0)
    for gi, g in enumerate(prep.groups):
        k = g.key
        if k.hotplug == "prefer":
            if k.integrated:
                return None
            if conventional_root:
                if not root.hotplug or (0, gi) not in v.alone:
                    return None
                shape.root_hot.append(gi)
            elif pcie_ok(prep, g) and pool is not None and gi in pool.alone:
                shape.port.append(gi)
            elif not pcie_ok(prep, g) and conventional_ok(prep, g) and gi in v.pool_alone:
                shape.bridge.append(gi)
            else:
                return None
        else:  # no hot-plug wish: packed as functions
            if (0, gi) not in v.packed:
                return None
            # in a new bridge at no cost above the root's slots: a conventional endpoint (a PCIe one
            # there is level 3's cost) that the bridges may take
            if not conventional_root and k.endpoint == "pci" and gi in v.pool_packed:
                shape.either.append(gi)
            else:
                shape.root.append(gi)
    if not conventional_root and (root.hotplug or any(e == 0 for e, _ in v.alone)):
        return None  # the bounds count pcie-root's slots as neither hot-pluggable nor taken alone
    empty = _empty_ports(prep)
    if len(prep.states) > 1 and shape.bridge:
        return None  # a new bridge could then also go on an existing port
    if any((e, gi) not in v.alone for e in empty for gi in shape.port):
        return None
    if len(empty) > sum(prep.groups[gi].size for gi in shape.port):
        shape.roomy = _roomy(prep, built, shape)
        if shape.roomy is None:
            return None  # ports left empty might take packs or be the spares: not covered
    return shape


def _roomy(prep: Prepared, built: Frame, shape: _Shape) -> list[int] | None:
    """More existing empty ports than devices wanting one: what each port holds (see _Shape.roomy) where
    every bus but pcie-root is a hot-pluggable port (empty, or with no free slot), the devices without
    a wish are at most 8 functions (one pack: in a port where every one of them may go in every empty
    port, on the root where no empty port takes them all and the root does), and the ports are enough
    for the devices, the pack and the spare ports; None elsewhere, or where the solver's tie-break
    would see a tie (the pack's weight in libvirt's order equal to a device's)."""
    v = built.vars
    groups = prep.groups
    reserved = prep.problem.machine.reserved_slots
    empty = _empty_ports(prep)
    nohot = [*shape.root, *shape.either]
    functions = sum(groups[gi].size for gi in nohot)
    devices = [gi for gi in shape.port for _ in range(groups[gi].size)]
    spare = built.spare_pcie if prep.problem.machine.pcie else 0
    if shape.bridge or functions > FUNCTIONS or any(
            not (st.bus.model.name in PORTS and st.bus.hotplug)
            or (e not in empty and st.free_slots(reserved)) for e, st in prep.states.items() if e):
        return None
    takes_all = [all((e, gi) in v.packed for gi in nohot) for e in empty]
    in_port = functions > 0 and all(takes_all)
    if functions and not in_port and (any(takes_all) or any((0, gi) not in v.packed for gi in nohot)):
        return None  # the pack would go in some ports only, or nowhere certain
    if len(empty) - len(devices) - in_port < spare:
        return None
    # libvirt's order (objective.libvirt_order_terms): a port of lower index holds more weight, the
    # weight of what it holds being (groups - gi) per device or function; pairing by rearrangement
    weight = {gi: len(groups) - gi for gi in shape.port}
    units = [(weight[gi], gi) for gi in devices]
    if in_port:
        pack = sum((len(groups) - gi) * groups[gi].size for gi in nohot)
        if pack in weight.values():
            return None
        units.append((pack, -1))
    units.sort(key=lambda u: -u[0])
    return [gi for _, gi in units]


def _empty_ports(prep: Prepared) -> list[int]:
    """The existing empty hot-pluggable PCIe ports, by index."""
    reserved = prep.problem.machine.reserved_slots
    return sorted(e for e, st in prep.states.items()
                  if st.bus.model.name in PORTS and st.bus.hotplug and st.free_slots(reserved))


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _bridge_functions(built: Frame, shape: _Shape, prep: Prepared) -> int:
    """Functions the one new bridge can take packed, beside its lone devices and the spare slots."""
    if not shape.bridge:
        return 0
    lone = sum(prep.groups[gi].size for gi in shape.bridge)
    return FUNCTIONS * max(0, SLOTS_PER_BRIDGE - lone - built.spare_pci)


def _root_packed(prep: Prepared, built: Frame, shape: _Shape) -> int:
    """Devices that must be packed on the root bus: those with no other place, and the conventional
    ones without a wish beyond what the new bridge can take."""
    forced = sum(prep.groups[gi].size for gi in shape.root)
    either = sum(prep.groups[gi].size for gi in shape.either)
    return forced + max(0, either - _bridge_functions(built, shape, prep))


def _root_ports(prep: Prepared, built: Frame, shape: _Shape) -> int:
    """New root ports: one per device wanting a PCIe hot-plug port beyond the existing empty ports,
    the spare ports, and the one that holds the new bridge."""
    spare = built.spare_pcie if prep.problem.machine.pcie else 0
    lone = sum(prep.groups[gi].size for gi in shape.port) - len(_empty_ports(prep))
    return lone + spare + (1 if shape.bridge else 0)


def _new_spares(prep: Prepared, built: Frame) -> int:
    """Spare PCIe ports wished for beyond the existing empty hot-pluggable ports."""
    reserved = prep.problem.machine.reserved_slots
    empty = sum(len(st.free_slots(reserved)) for st in prep.states.values()
                if st.bus.model.name in PORTS and st.bus.hotplug)
    return max(0, built.spare_pcie - empty)


def _spares_only(prep: Prepared, built: Frame) -> dict[int, int] | None:
    """Nothing to place: the missing spare ports as new root ports on the root bus (None where they
    could go elsewhere too: below an expander bus)."""
    spares = _new_spares(prep, built)
    if not spares:
        return {}
    v = built.vars
    st = prep.states[0]
    if set(v.root_ports) != {0}:
        return None
    rpslots = _ceil(max(0, spares - len(st.free_root_port_functions())), FUNCTIONS)
    if rpslots > len(st.free_slots(prep.problem.machine.reserved_slots)):
        return None
    out = {v.root_ports[0].spare.Index(): spares}
    if rpslots:
        out[v.rpslots[0].Index()] = rpslots
    return out


def _pc_bridge(prep: Prepared, built: Frame, shape: _Shape) -> int:
    """pc (a hot-pluggable pci-root) whose free slots are too few for every device wanting hot-plug
    alone, the packed slots and the spare slots wished for: the new pci-bridges the layout needs
    (each takes a slot and offers 31: 30 more); 0 when the root has room."""
    st = prep.states[0]
    if not st.bus.model.conventional or not st.bus.hotplug:
        return 0
    free = _root_free(prep, built)
    hot = sum(prep.groups[gi].size for gi in shape.root_hot)
    over = hot + _ceil(_root_packed(prep, built, shape), FUNCTIONS) + built.spare_pci - free
    return _ceil(over, SLOTS_PER_BRIDGE - 1) if over > 0 else 0


def _pc_on_root(prep: Prepared, built: Frame, shape: _Shape) -> int:
    """Crowded pc: the devices wanting hot-plug left alone in root slots, beside the one bridge there
    (the others nested): those the bridges' 30 c + 1 slots have no room for after the packed slots."""
    bridges = _pc_bridge(prep, built, shape)
    hot = sum(prep.groups[gi].size for gi in shape.root_hot)
    packslots = _ceil(_root_packed(prep, built, shape), FUNCTIONS)
    return max(0, hot + packslots - (SLOTS_PER_BRIDGE - 1) * bridges - 1)


def _construct_pc_bridge(prep: Prepared, built: Frame, shape: _Shape) -> dict[int, int] | None:
    """Crowded pc (_pc_bridge): c new pci-bridges, one on the root and the others nested, holding the
    packed slots and as many devices wanting hot-plug as their slots leave room for, the others alone
    in root slots, earliest groups first (the solver's tie-break, libvirt's order: earlier groups on
    existing buses); None when that does not fit or a group cannot go in a bridge."""
    v = built.vars
    free = _root_free(prep, built)
    bridges = _pc_bridge(prep, built, shape)
    packslots = _ceil(_root_packed(prep, built, shape), FUNCTIONS)
    on_root = _pc_on_root(prep, built, shape)
    bridge = v.new_pci_bridges.get(0)
    if (packslots > (SLOTS_PER_BRIDGE - 1) * bridges + 1 or 1 + on_root > free or bridge is None
            or v.pool_packslots is None or v.pool_pci_bridges is None):
        return None
    out: dict[int, int] = {bridge.Index(): 1}
    if bridges > 1:
        out[v.pool_pci_bridges.Index()] = bridges - 1
    for gi in shape.root:
        if gi not in v.pool_packed:
            return None
        out[v.pool_packed[gi].Index()] = prep.groups[gi].size
    if packslots:
        out[v.pool_packslots.Index()] = packslots
    left = on_root
    for gi in shape.root_hot:
        size = prep.groups[gi].size
        here = min(size, left)
        left -= here
        if here:
            out[v.alone[0, gi].Index()] = here
        if size > here:
            if gi not in v.pool_alone:
                return None
            out[v.pool_alone[gi].Index()] = size - here
    return out


def _construct(prep: Prepared, built: Frame, shape: _Shape) -> dict[int, int] | None:
    """Values of the layout variables (every other layout variable 0), or None when the root bus has
    no room for them."""
    if not prep.groups:
        return _spares_only(prep, built)
    if _pc_bridge(prep, built, shape):
        return _construct_pc_bridge(prep, built, shape)
    v = built.vars
    st = prep.states[0]
    root = st.bus
    free = _root_free(prep, built)
    out: dict[int, int] = {}

    def put(x, n: int) -> None:
        if n:
            out[x.Index()] = n  # a missing variable (x None) with n > 0 cannot happen: _shape checked

    if shape.roomy is not None:  # ports to spare: each holds what _roomy gives it
        for e, gi in zip(_empty_ports(prep), shape.roomy, strict=False):
            if gi >= 0:
                put(v.alone[e, gi], 1 + out.get(v.alone[e, gi].Index(), 0))
                continue
            for g in [*shape.root, *shape.either]:
                put(v.packed[e, g], prep.groups[g].size)
            put(v.packslots[e], 1)
        if -1 not in shape.roomy and (shape.root or shape.either):  # the pack on the root
            for g in [*shape.root, *shape.either]:
                put(v.packed[0, g], prep.groups[g].size)
            put(v.packslots[0], 1)
        return out
    packed = _root_packed(prep, built, shape)
    packslots = _ceil(packed, FUNCTIONS)
    for gi in shape.root:
        put(v.packed[0, gi], prep.groups[gi].size)
    # The conventional devices without a wish: those the bridge cannot take on the root bus, and the
    # root's packed slots' free functions filled too, earliest groups first (the solver's tie-break,
    # libvirt's order); the rest in the new bridge.
    either = [(gi, prep.groups[gi].size) for gi in shape.either]
    forced = sum(prep.groups[gi].size for gi in shape.root)
    left = min(sum(n for _, n in either), FUNCTIONS * packslots - forced)
    pool_packed = 0
    for gi, size in either:
        here = min(size, left)
        left -= here
        put(v.packed[0, gi], here)
        put(v.pool_packed.get(gi), size - here)
        pool_packed += size - here
    put(v.packslots[0], packslots)
    if root.model.conventional:  # pc: the devices wanting hot-plug in root slots of their own
        lone = 0
        for gi in shape.root_hot:
            put(v.alone[0, gi], prep.groups[gi].size)
            lone += prep.groups[gi].size
        if lone + packslots > free:
            return None
        return out
    ports = _root_ports(prep, built, shape)
    if ports and 0 not in v.root_ports:
        return None
    rpslots = _ceil(max(0, ports - len(st.free_root_port_functions())), FUNCTIONS)
    if rpslots + packslots > free:
        return None
    # the existing empty ports take the first devices in group order, the lowest index the earliest
    # (the solver's tie-break, libvirt's order: earlier groups on existing buses of lower index)
    existing = dict.fromkeys(shape.port, 0)
    queue = [gi for gi in shape.port for _ in range(prep.groups[gi].size)]
    for e, gi in zip(_empty_ports(prep), queue, strict=False):
        put(v.alone[e, gi], 1)
        existing[gi] += 1
    if ports:
        pool = v.root_ports[0]
        for gi in shape.port:
            put(pool.alone[gi], prep.groups[gi].size - existing[gi])
        put(pool.spare, built.spare_pcie)
        put(v.rpslots[0], rpslots)
    if shape.bridge:
        put(v.rp_bridge[0], 1)
        for gi in shape.bridge:
            put(v.pool_alone[gi], prep.groups[gi].size)
        assert v.pool_packslots is not None
        put(v.pool_packslots, _ceil(pool_packed, FUNCTIONS))
    elif pool_packed:
        return None
    return out


def _bounds(prep: Prepared, built: Frame, shape: _Shape) -> dict[str, int]:
    """A lower bound of each level, each valid among the layouts optimal on the levels above it.

    - moved: 0 (a count). Without --replan nothing given may move.
    - hotplug: 0 (devices left without a hot-pluggable place plus spare places missing: counts).
    - pcie: 0 (a count).
    - controllers: on q35/virt with only pcie-root, at hotplug = 0 every device wanting hot-plug is
      alone in a hot-pluggable place and the spare ports are there, empty; at pcie = 0 no PCIe device
      is in a bridge. The only hot-pluggable PCIe places such a guest can have are new ports (root or
      switch downstream), each a controller: one per such device plus one per spare port. A
      conventional device wanting hot-plug needs a new bridge's slot (pcie-root offers none and has no
      hot-pluggable slot), and every new bridge is a controller that sits on a port of its own, which
      is neither one of those ports nor empty (a nested pci-bridge needs a bridge that is not nested).
      The existing empty hot-pluggable ports (when there are any, there is no such conventional
      device) offer one such place each. So at least |port devices| + spare ports - existing empty
      ports + 2 if any conventional device wants hot-plug. On pc (pci-root): 0, or the bridges a crowded
      root needs (see slots).
    - buses: without --replan the model counts bus numbers by the same sum as controllers (each new
      controller is one bus), so the same bound.
    - slots (root-bus slots used): at the bounds above the new controllers are exactly those counted:
      a switch would add an upstream port and the root port holding it, both beyond the bound, so
      every port is a root port on the root bus, taking slots of 8 functions (after the free functions
      of slots that hold only root ports), apart from endpoints. Devices without a hot-plug wish are
      packed as functions: on the root bus, or in the one new bridge when there is one and they are
      conventional (a PCIe device there costs on pcie; a port of their own would be a controller
      more), up to the bridge's slots left after its lone devices and the spare slots: the rest is on
      the root bus, 8 to a slot (an existing port with hot-plug off takes 8 in its slot at the same
      cost; the empty hot-pluggable ones all hold a device at the bound above). On pc, at
      controllers = 0 every device is on pci-root: each device wanting hot-plug alone in a slot, the
      others packed 8 to a slot; a packed slot of a hot-pluggable bus counts twice (the model's cost
      for the hot-plug room it takes).
      pc whose free root slots F are too few (_pc_bridge: H devices wanting hot-plug, k = ceil(P / 8)
      packed slots for the P devices without a wish, s spare slots wished for, H + k + s > F): at
      hotplug = 0 every such device is alone in a hot-pluggable slot, every other one packed (8
      functions to a slot at most: q packed slots on the root, k' in the bridges, q + k' >= k) and s
      slots are empty. The only controllers pci-root can get are pci-bridges, r on the root and n
      nested (r + n = c; a nested one needs one that is not, so r >= 1), every one taking a slot (of
      the root or of a bridge) and offering 31: F + 30 c hot-pluggable slots in all, of which H + q +
      k' + s >= H + k + s are needed, so controllers >= c = ceil((H + k + s - F) / 30) (buses
      likewise: one bus number a bridge). At c bridges, with a devices alone on the root, the bridges
      hold H - a + k' + n <= 31 c, and the root slots counted are r + a + 2q (its packed slots count
      twice) >= r + a + q >= r + (H + k' + n - 31 c) + (k - k') = H + k - 30 c, and >= r >= 1: so slots
      >= 1 + max(0, H + k - 30 c - 1), met only with q = 0 and, where it is above 1, the bridges
      full; r > 1 trades a root device for a root bridge at the same count, which the solver's
      tie-break (libvirt's order: devices on existing buses) refuses, so r = 1, n = c - 1 and a =
      max(0, H + k - 30 c - 1), the earliest groups' devices (_pc_on_root).
    - ports to spare (_roomy: q35/virt whose buses besides pcie-root are hot-pluggable ports, E empty, H
      devices wanting one, P <= 8 functions without a wish, k = ceil(P / 8) and s spare ports with E - H
      - (1 if the pack goes in a port) >= s): the bounds 0 on the first levels are met (the H devices
      alone in ports and s ports left empty need no new controller). slots: at controllers = 0 there is
      no new bridge or port, so every device without a wish is packed, in pcie-root's slots or a port's
      one slot, and each packed slot counts one (pcie-root's are not hot-pluggable; a hot-pluggable
      port's counts once); lone devices in ports count nothing: slots >= k. libvirt: at slots = k and
      controllers = 0 a port is filled only by a device alone or one of the k packed slots (it has one
      slot), so at most H + k are filled: libvirt >= (hot-pluggable ports) - H - k, met only with the
      pack in a port. Where no empty port may take every device without a wish, the one packed slot
      holding them all is the root's: at most H ports are filled, libvirt >= (hot-pluggable ports) - H.
      Ports with no free slot are filled by nothing (their one slot is taken). Which port holds what is
      the solver's tie-break (libvirt's order: a lower index for the larger weight, a device's weight
      its group's, the pack's the sum over its functions; by rearrangement the ports of lowest index, in
      weight order; distinct weights: a tie is refused).
    - libvirt (existing hot-pluggable ports less those the plan fills): a port takes one thing (its one
      slot), so at most the empty ones are filled: their number (not more than the devices wanting a
      port, which fill them in the layout) below the number of hot-pluggable ports.

    A guest with nothing to place (every device addressed, as when a planned guest is planned again):
    levels 1-6 are sums of counts of new things, and the only new things it may need are the spare
    PCIe ports its empty hot-pluggable ports do not provide (at hotplug = 0 no spare is missing): a
    new port each, a controller and a bus number each (through a switch, two more). With no expander
    bus they are root ports on the root bus: its slots, 8 to a slot after the free functions of slots
    that hold only root ports. The last level is the number of existing hot-pluggable ports less those
    the plan fills (a device, packed functions or a new bridge on them); with no device to place, a
    packed slot of a hot-pluggable port costs on slots and a new bridge on controllers, so at their
    bounds no port is filled: the number of existing hot-pluggable ports."""
    if not prep.groups:
        ports = sum(1 for st in prep.states.values() if st.bus.model.name in PORTS and st.bus.hotplug)
        spares = _new_spares(prep, built)
        slots = _ceil(max(0, spares - len(prep.states[0].free_root_port_functions())), FUNCTIONS)
        return {"moved": 0, "hotplug": 0, "pcie": 0, "controllers": spares, "buses": spares,
                "slots": slots, "libvirt": ports}
    st = prep.states[0]
    root = st.bus
    packslots = _ceil(_root_packed(prep, built, shape), FUNCTIONS)
    twice = 2 if root.hotplug else 1
    hot = sum(prep.groups[gi].size for gi in shape.root_hot)
    crowded = _pc_bridge(prep, built, shape)
    if crowded:
        controllers = crowded
        slots = 1 + _pc_on_root(prep, built, shape)
    elif root.model.conventional:
        controllers = 0
        slots = hot + twice * packslots
    else:
        ports = _root_ports(prep, built, shape)
        controllers = ports + (1 if shape.bridge else 0)
        slots = _ceil(max(0, ports - len(st.free_root_port_functions())), FUNCTIONS) + twice * packslots
    hot_ports = sum(1 for st in prep.states.values() if st.bus.model.name in PORTS and st.bus.hotplug)
    if shape.roomy is not None:
        return {"moved": 0, "hotplug": 0, "pcie": 0, "controllers": 0, "buses": 0, "slots": packslots,
                "libvirt": hot_ports - len(shape.roomy)}
    return {"moved": 0, "hotplug": 0, "pcie": 0, "controllers": controllers, "buses": controllers,
            "slots": slots, "libvirt": hot_ports - len(_empty_ports(prep))}


def _complete(model: cp_model.CpModel, v: Variables, layout: dict[int, int]) -> list[int] | None:
    """The layout's values for every variable of the model: the layout variables as given (0 unless
    set), the assumption literals true, the empty-slot counts as large as their bus allows (so the
    spare shortfall is as small as it can be), every other variable as small as the constraints
    allow; None when the constraints cannot all hold so."""
    proto = model.Proto()
    domains = [(d.domain[0], d.domain[-1]) for d in (proto.variables[i] for i in range(len(proto.variables)))]
    layout_vars = _layout_indices(v)
    frozen = set(layout_vars) | set(model._assumptions)
    largest = {i for i, var in enumerate(model._vars) if var.Name().startswith("empty_slots_b")}
    values = [domains[i][1] if i in largest else domains[i][0] for i in range(len(domains))]
    for i in layout_vars:
        values[i] = layout.get(i, 0)
    for i in model._assumptions:
        values[i] = 1
    if any(i not in layout_vars and i >= 0 for i in layout):
        return None
    constraints = proto.constraints
    for _ in range(64):
        changed = False
        for c in constraints:
            state = _enforced(c, values, frozen)
            if state is None:
                return None
            if not state:
                continue
            if c.bool_or is not None:
                if not any(_literal(values, i) for i in c.bool_or):
                    return None
                continue
            total = sum(k * values[i] for i, k in zip(c.vars, c.coeffs, strict=True))
            if _within(total, c.domain):
                continue
            if len(c.domain) != 2:
                return None
            lo, hi = c.domain
            need = lo - total if total < lo else hi - total  # the change the sum needs
            movable = [(i, k) for i, k in zip(c.vars, c.coeffs, strict=True) if i not in frozen
                       and ((i in largest) == ((k > 0) != (need > 0)))]
            if len(movable) != 1:
                return None
            i, k = movable[0]
            step = -(-abs(need) // abs(k))
            values[i] += step if (i not in largest) else -step
            if not domains[i][0] <= values[i] <= domains[i][1]:
                return None
            changed = True
        if not changed:
            return values
    return None


def _literal(values: list[int], lit: int) -> bool:
    return values[lit] == 1 if lit >= 0 else values[-lit - 1] == 0


def _enforced(c, values: list[int], frozen: set[int]) -> bool | None:
    """Whether the constraint applies (None: it hangs on a variable not yet known)."""
    for lit in c.enforcement:
        if (lit if lit >= 0 else -lit - 1) not in frozen:
            return None
        if not _literal(values, lit):
            return False
    return True


def _within(total: int, domain: list[int]) -> bool:
    return any(domain[j] <= total <= domain[j + 1] for j in range(0, len(domain), 2))


def _layout_indices(v: Variables) -> set[int]:
    """The variables a layout is unfolded from (what planner.pipeline.solver.variables decides), not the
    counts derived from them (empty slots, shortfalls, I/O windows, level values)."""
    xs = [*v.alone.values(), *v.packed.values(), *v.packslots.values(), *v.rpslots.values(),
          *v.new_pci_bridges.values(), *v.new_pcie_pci_bridge.values(), *v.rp_bridge.values(),
          *v.rp_switch.values(), *v.pool_alone.values(), *v.pool_packed.values(), v.pool_packslots,
          v.pool_pci_bridges, *v.keep.values(), *v.occupied.values()]
    for pool in [*v.root_ports.values(), *v.downstream.values()]:
        xs += [*pool.ports(), *pool.packed.values()]
    return {x.Index() for x in xs if x is not None}


def planned_again(prep: Prepared, start: float | None = None) -> SolveResult | None:
    """The certified result for a guest with nothing to place (every device addressed: a planned guest
    planned again), worked out from prep alone, without building the model: what prove would return
    for the "add nothing but the missing spare ports" layout (_spares_only), its seconds and the
    model's variables and solution aside. None where this short path does not know the answer (then
    the model decides as before): a missing conventional spare slot, a reservation, an expander bus
    with spares to add, a limit the layout breaks, or levels whose weights might not fit one stage.
    tests/test_certificate.py compares it with prove's result over many guests."""
    start = time.perf_counter() if start is None else start
    problem = prep.problem
    machine = problem.machine
    reserved = machine.reserved_slots
    if prep.groups or prep.reserve_pcie or prep.reserve_pci:
        return None
    free = {e: len(st.free_slots(reserved)) for e, st in prep.states.items()}
    hot_ports = [e for e, st in prep.states.items() if st.bus.model.name in PORTS and st.bus.hotplug]
    spare_pcie = prep.spare_pcie if machine.pcie else 0
    spares = max(0, spare_pcie - sum(free[e] for e in hot_ports))  # _new_spares: new root ports
    # the spare conventional slots wished for must be there already (else hotplug > 0: not certified)
    pci_free = sum(free[e] for e, st in prep.states.items() if st.bus.hotplug and st.bus.model.conventional
                   and st.bus.model.name not in PORTS)
    if pci_free < prep.spare_pci:
        return None
    accepts_rp = [e for e in sorted(prep.states) if "pcie-root-port" in prep.states[e].bus.model.accepts]
    rpslots = 0
    if spares:
        if accepts_rp != [0] or any(b.model.name in EXPANDERS for b in problem.buses.values()):
            return None  # they could go below an expander bus too (and its busNr range binds them)
        rpslots = _ceil(max(0, spares - len(prep.states[0].free_root_port_functions())), FUNCTIONS)
        if rpslots > free[0]:
            return None
    # bus_number_limits (nothing is droppable without --replan)
    used = sum(b.model.buses for b in problem.buses.values())
    if used + spares > MAX_BUS_NUMBERS or max(problem.buses) + spares > MAX_INDEX:
        return None
    # io_window_budget: the given layout's I/O (prepare's fixed figures: the model's at this layout)
    # and, where the firmware pads empty hot-plug ports, one window per new spare port
    fw = problem.firmware
    io_used: int | None = None
    io_budget = 0
    if fw is not None and fw.io_capacity_units() > 0:
        if any(st.bus.model.io_window and -(-st.io_units // IO_WINDOW_UNITS) > 64
               for e, st in prep.states.items() if e):
            return None  # beyond the model's window count's domain
        pads = spares if fw.pads_spares else 0
        io_used = prep.fixed_io_units + IO_WINDOW_UNITS * pads
        io_budget = max(fw.io_capacity_units(), prep.fixed_io_units)
        if io_used > io_budget:
            return None
        if fw.max_windows and prep.fixed_io_windows + pads > max(fw.max_windows, prep.fixed_io_windows):
            return None
    # the levels (objective.levels at this layout) and their weights as objective.levels makes them
    values_of = {"addresses_moved": 0, "hotplug_wanted": 0, "hotplug_lost": 0, "pcie_on_pci": 0,
                 "controllers_added": spares, "bus_numbers_added": spares, "root_slots_used": rpslots,
                 "unlike_libvirt": len(hot_ports), "spare_shortfall": 0}
    level = {"moved": 0, "hotplug": 0, "pcie": 0, "controllers": spares, "buses": spares, "slots": rpslots,
             "libvirt": len(hot_ports)}
    most = {"moved": MAX_NEW, "hotplug": MAX_SHORTFALL, "pcie": 0, "controllers": MAX_NEW,
            "buses": MAX_NEW, "slots": MAX_SLOTS, "libvirt": len(hot_ports)}
    order = ("moved", *prep.objective_order, "slots", "libvirt")
    weights = lexicographic_weights(order, most)
    # One stage (objective.objective_stages) when the weighted sum's magnitude is below SAFE_MAGNITUDE:
    # bounded here by each level's own magnitude over the variables' domains (create_variables), summed
    cap = {e: 8 * free[e] + len(prep.states[e].free_root_port_functions()) for e in accepts_rp}
    new = 103 * sum(cap.values()) + sum(free.values()) + len(free) + 255  # every controller variable
    magnitude = {"moved": 0, "hotplug": MAX_SHORTFALL, "pcie": 0, "controllers": new, "buses": new,
                 # new ports below an expander bus count on slots too (objective.levels)
                 "slots": sum(64 + 2 * n + 1 for n in free.values()) + 103 * sum(cap.values()),
                 "libvirt": 34 * len(hot_ports)}
    if sum(weights[name] * magnitude[name] for name in order) >= SAFE_MAGNITUDE:
        return None
    objective = sum(weights[name] * level[name] for name in order)
    # counts_of at this layout: every variable create_variables makes, 0 but the new spare ports
    states = sorted(prep.states.items())
    counts = Counts(
        alone={}, packed={}, packslots={e: 0 for e, _ in states},
        new_pci_bridges={e: 0 for e, st in states if "pci-bridge" in st.bus.model.accepts
                         and st.bus.model.conventional and free[e]},
        new_pcie_pci_bridge={e: 0 for e, st in states if st.bus.model.name in PORTS and free[e]
                             and "pcie-to-pci-bridge" in st.bus.model.accepts},
        root_ports={e: PortCounts({}, {}, 0, 0, spares if e == 0 else 0) for e in accepts_rp},
        rp_bridge={e: 0 for e in accepts_rp}, rp_switch={e: 0 for e in accepts_rp},
        downstream={e: PortCounts({}, {}, 0, 0, 0) for e in accepts_rp},
        pool_pci_bridges=0, keep={}, bus_keep={}, occupied={})
    pool = split(PoolContent(bridges=0, nested=0, alone=(), packed=(), packslots=0),
                 io_matters=io_used is not None)
    return SolveResult("OPTIMAL", objective, objective, 0.0, time.perf_counter() - start, values_of, None, (),
                       pool, io_used, io_budget, 0, counts)
