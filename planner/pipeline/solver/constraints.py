"""Constraint families, one function each. Every family is enforced under an assumption literal so
that an infeasible request can be explained by the smallest set of families at fault."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from planner.facts.errors import Limit, Reason
from planner.facts.facts import (
    EXPANDERS,
    FUNCTIONS,
    IO_WINDOW_UNITS,
    MAX_BUS_NUMBERS,
    MAX_INDEX,
    PORTS,
    SLOTS_PER_BRIDGE,
)
from planner.pipeline.prepare import Prepared
from planner.pipeline.solver import cpmodel as cp_model
from planner.pipeline.solver.variables import Variables, needs_port_window, new_bridges, new_controllers


@dataclass
class Assumptions:
    """Assumption literal -> the reason shown when it is part of an infeasible core: the limit it
    enforces, typed here where the constraint is added, and its plain words."""

    literals: dict[int, Reason] = field(default_factory=dict)
    groups: dict[int, int] = field(default_factory=dict)  # literal -> the device group it places
    full_buses: dict[int, str] = field(default_factory=dict)  # literal -> a bus with no free slot
    model: cp_model.CpModel | None = None

    def new(self, limit: Limit, reason: str) -> cp_model.IntVar:
        assert self.model is not None
        lit = self.model.NewBoolVar(f"assume_{len(self.literals)}")
        self.literals[lit.Index()] = Reason(limit, reason)
        return lit


def _sum(xs) -> cp_model.LinearExpr:
    return cp_model.LinearExpr.Sum(list(xs))


def place_every_device(model, prep: Prepared, v: Variables, why: Assumptions) -> None:
    """Each device of each group is placed exactly once."""
    # each group's terms in the order of the variables (existing buses, new ports, new bridges)
    terms_of: dict[int, list] = defaultdict(list)
    for (_, i), x in [*v.alone.items(), *v.packed.items()]:
        terms_of[i].append(x)
    for pool in [*v.root_ports.values(), *v.downstream.values()]:
        for i, x in [*pool.alone.items(), *pool.packed.items()]:
            terms_of[i].append(x)
    for i, x in [*v.pool_alone.items(), *v.pool_packed.items()]:
        terms_of[i].append(x)
    for gi, g in enumerate(prep.groups):
        terms = terms_of.get(gi, [])
        lit = why.new(Limit.PLACEMENT, f"{g.name}: {', '.join(d.label for d in g.devices[:4])}"
                      + (" …" if g.size > 4 else "") + " must each get a place")
        kept = [v.keep[i] for i in (prep.droppable_of(d) for d in g.devices) if i is not None]
        model.Add(_sum(terms) + _sum(kept) == g.size).OnlyEnforceIf(lit)
        why.groups[lit.Index()] = gi


def keep_in_place(model, prep: Prepared, v: Variables) -> None:
    """--replan: a kept device needs its controller kept; dropped controllers form an index suffix;
    an old slot stays occupied while anything in it is kept."""
    for i, drop in enumerate(prep.droppables):
        if drop.bus in v.bus_keep:
            model.Add(v.keep[i] <= v.bus_keep[drop.bus])
    kept_buses = [v.bus_keep[c] for c in sorted(v.bus_keep)]
    for lower, higher in zip(kept_buses, kept_buses[1:], strict=False):
        model.Add(lower >= higher)
    for (e, slot), occ in v.occupied.items():
        members = [v.keep[i] for i in prep.states[e].optional_slots()[slot]]
        for k in members:
            model.Add(occ >= k)
        model.Add(occ <= _sum(members))


def bus_capacity_left(prep: Prepared, v: Variables, e: int):
    """Free slots of existing bus e: the fixed ones plus old slots whose occupants all moved away."""
    st = prep.states[e]
    free = len(st.free_slots(prep.problem.machine.reserved_slots))
    opt = [v.occupied[e, s] for s in st.optional_slots()]
    return free + len(opt) - _sum(opt), free + len(opt)


def existing_bus_capacity(model, prep: Prepared, v: Variables, why: Assumptions) -> None:
    """Free slots of each existing bus: one per lone device or whole-slot child, 8 functions per
    packed slot; new root ports may also fill free functions of slots that hold only root ports."""
    alone_on: dict[int, list] = defaultdict(list)  # by bus, in the variables' order
    for (b, _), x in v.alone.items():
        alone_on[b].append(x)
    packed_on: dict[int, list] = defaultdict(list)
    for (b, _), x in v.packed.items():
        packed_on[b].append(x)
    for e, st in prep.states.items():
        free, most = bus_capacity_left(prep, v, e)
        alone = alone_on.get(e, [])
        packed = packed_on.get(e, [])
        whole_children = []
        if e in v.new_pci_bridges:
            whole_children.append(v.new_pci_bridges[e])
        if e in v.new_pcie_pci_bridge:
            whole_children.append(v.new_pcie_pci_bridge[e])
        lit = why.new(Limit.SLOTS, f"{st.bus.label} has {most} free slot(s)")
        if most == 0:
            why.full_buses[lit.Index()] = st.bus.label
        slots = _sum(alone + whole_children) + v.packslots[e]
        model.Add(_sum(packed) <= FUNCTIONS * v.packslots[e]).OnlyEnforceIf(lit)
        if e in v.root_ports:
            # Root ports get slots of their own, 8 to a slot, after the free functions of slots that
            # already hold only root ports; endpoints never share a slot with root ports.
            ports = v.root_ports[e].ports() + [v.rp_bridge[e], v.rp_switch[e]]
            extra = len(st.free_root_port_functions())
            model.Add(_sum(ports) <= FUNCTIONS * v.rpslots[e] + extra).OnlyEnforceIf(lit)
            slots += v.rpslots[e]
        model.Add(slots <= free).OnlyEnforceIf(lit)
        if e in v.bus_keep:  # a controller that goes holds nothing new
            model.Add(slots <= 32 * v.bus_keep[e])
            model.Add(_sum(packed) <= 256 * v.bus_keep[e])
        # A port with hot-plug off holds its devices as functions; so does a port holding a bridge.
        if e in v.new_pcie_pci_bridge:
            model.Add(v.packslots[e] == 0).OnlyEnforceIf(v.new_pcie_pci_bridge[e])


def new_port_capacity(model, prep: Prepared, v: Variables, why: Assumptions) -> None:
    """New root/downstream ports: one lone device, or up to 8 packed functions; the packs that hold
    an I/O-BAR device are counted apart (they cost a firmware I/O window)."""
    io_groups = {gi for gi, g in enumerate(prep.groups) if needs_port_window(g)}
    for p in v.root_ports:
        for pool in (v.root_ports[p], v.downstream[p]):
            packed = list(pool.packed.values())
            packed_io = [x for gi, x in pool.packed.items() if gi in io_groups]
            model.Add(_sum(packed_io) <= FUNCTIONS * pool.pack_io)
            model.Add(_sum(packed) <= FUNCTIONS * (pool.pack_io + pool.pack_noio))
            # no empty packs: an empty port is a spare, counted as such
            model.Add(pool.pack_io + pool.pack_noio <= _sum(packed))
        ds = v.downstream[p].ports()
        model.Add(_sum(ds) <= 32 * v.rp_switch[p])
        model.Add(v.rp_switch[p] <= _sum(ds))  # a switch without downstream ports is waste
    lit = why.new(Limit.SLOTS, "new bridges offer 31 slots each")
    nb = new_bridges(v)
    # A pci-bridge nested in a slot of a new bridge takes that slot and offers 31 more; nesting needs
    # at least one bridge that is not nested (any number can then hang below it).
    pool_slots = _sum(v.pool_alone.values()) + v.pool_packslots + v.pool_pci_bridges
    model.Add(pool_slots <= SLOTS_PER_BRIDGE * _sum(nb)).OnlyEnforceIf(lit)
    outer = [x for x in nb if x is not v.pool_pci_bridges]
    model.Add(v.pool_pci_bridges <= 255 * _sum(outer))
    model.Add(_sum(v.pool_packed.values()) <= FUNCTIONS * v.pool_packslots)


def io_window_budget(model, prep: Prepared, v: Variables, why: Assumptions) -> None:
    """The guest firmware places every I/O BAR in a small I/O space (models/firmware.toml): each
    bridge gets a 4 KiB-aligned window holding its devices' BARs, each root/downstream port with an
    I/O-BAR device a 4 KiB window, and root-bus devices their BARs directly (integrated virtio is
    transitional and has one). Counted in 32-byte units; a 4 KiB window is 128. UEFI firmware also
    pads every empty hot-plug port with a window, and plans to at most max_windows windows."""
    fw = prep.problem.firmware
    capacity = fw.io_capacity_units() if fw is not None else 0
    if fw is None or capacity <= 0:
        return
    win = IO_WINDOW_UNITS
    io_of = {gi: g.key.io_units for gi, g in enumerate(prep.groups)}
    port_io = {gi for gi, g in enumerate(prep.groups) if needs_port_window(g)}
    placed = [*v.alone.items(), *v.packed.items()]

    def placed_io(e: int):
        return _sum(io_of[gi] * x for (b, gi), x in placed if b == e)

    def kept_io(e: int):
        return _sum(d.io_units * v.keep[i] for i, d in enumerate(prep.droppables) if d.bus == e)

    fixed = 0
    terms = []
    counts = []  # the windows, one each (a bridge's window may span several 4 KiB)
    for e, st in prep.states.items():
        model_e = st.bus.model
        if e == 0:
            fixed += st.io_units
            terms += [placed_io(0), kept_io(0)]
        elif model_e.io_window:
            windows = model.NewIntVar(0, 64, f"io_windows_b{e}")
            model.Add(win * windows >= st.io_units + placed_io(e) + kept_io(e))
            # an empty bridge still gets 4 KiB; one with a child bridge holds that child's window
            if not st.window_child:
                child = v.new_pci_bridges.get(e, 0)
                model.Add(windows + child >= v.bus_keep.get(e, 1))
            terms.append(win * windows)
            counts.append(v.bus_keep.get(e, 1))
        elif model_e.name in PORTS and st.io_device:
            fixed += win
            counts.append(1)
        elif model_e.name in PORTS and fw.pads_spares and st.bus.hotplug and not st.used:
            # an empty port keeps its padding unless the plan puts something there
            pad = model.NewBoolVar(f"io_pad_b{e}")
            below = [x for (b, _), x in placed if b == e]
            below += [x for b, x in v.new_pcie_pci_bridge.items() if b == e]
            model.Add(pad + _sum(below) >= 1)
            if e in v.io_new:
                model.Add(pad + v.io_new[e] <= 1)  # the device's window replaces the padding
            terms.append(win * pad)
            counts.append(pad)
    for e, flag in v.io_new.items():
        on_port = [x for (b, gi), x in placed if b == e and gi in port_io]
        kept = [v.keep[i] for i, d in enumerate(prep.droppables) if d.bus == e and d.io]
        for k in kept:
            model.Add(flag >= k)
        if on_port:
            model.Add(_sum(on_port) <= FUNCTIONS * flag)
        if on_port or kept:
            terms.append(win * flag)
            counts.append(flag)
        else:
            model.Add(flag == 0)
    for p in v.root_ports:
        for pool in (v.root_ports[p], v.downstream[p]):
            with_io = [x for gi, x in pool.alone.items() if gi in port_io] + [pool.pack_io]
            if fw.pads_spares:
                with_io.append(pool.spare)
            terms += [win * x for x in with_io]
            counts += with_io
    terms.append(_pool_io_units(model, v, io_of))
    counts += new_bridges(v)
    budget = max(capacity, prep.fixed_io_units)  # never make a given layout worse than it is
    acpi = "" if prep.problem.acpi or fw.uefi else " without ACPI"
    lit = why.new(Limit.IO_SPACE, f"the firmware's I/O space ({fw.io_max} bytes for bridge windows and I/O "
                  f"BARs, {fw.label} on {prep.problem.machine.family}{acpi}; "
                  f"{prep.fixed_io_units * 32} used by the given layout)")
    v.io_used = fixed + _sum(terms)
    v.io_budget = budget
    model.Add(v.io_used <= budget).OnlyEnforceIf(lit)
    if fw.max_windows:
        pads = ", empty hot-plug ports included: each gets one as padding" if fw.pads_spares else ""
        lit = why.new(Limit.IO_WINDOWS, f"{fw.label} on {prep.problem.machine.family} sets up at most "
                      f"{fw.max_windows} bridge/port I/O windows{pads} ({prep.fixed_io_windows} used by the "
                      "given layout)")
        model.Add(_sum(counts) <= max(fw.max_windows, prep.fixed_io_windows)).OnlyEnforceIf(lit)


def _pool_io_units(model, v: Variables, io_of: dict[int, int]):
    """I/O space of the new bridges: one 4 KiB window each at least, and room for every I/O BAR in
    them. This is a relaxation of how the devices can really be split over the bridges (slots are
    per bridge); the solver checks the real split after solving and cuts off a plan whose split
    needs more than the budget (planner.pipeline.solver.pool)."""
    assert v.pool_bridges is not None and v.pool_windows is not None
    total = _sum(io_of[gi] * x for gi, x in [*v.pool_alone.items(), *v.pool_packed.items()])
    # Each bridge has a window of its own. (A parent of nested bridges that holds no device of its
    # own needs none beyond theirs; the split knows that, the model keeps the simpler count.)
    model.Add(v.pool_windows >= v.pool_bridges)
    model.Add(IO_WINDOW_UNITS * v.pool_windows >= total)
    return IO_WINDOW_UNITS * v.pool_windows


def loose_pool_windows(model, prep: Prepared, v: Variables) -> None:
    """The fallback when cuts do not settle the split: a bound every split of the new bridges meets
    (the largest slot first to the emptiest bridge leaves no bridge more than one slot of 8 BARs of
    at most 8 units above the mean, so T + 191 units a bridge cover the windows rounded up)."""
    assert v.pool_windows is not None and v.pool_bridges is not None
    io_of = {gi: g.key.io_units for gi, g in enumerate(prep.groups)}
    total = _sum(io_of[gi] * x for gi, x in [*v.pool_alone.items(), *v.pool_packed.items()])
    heavy = model.NewBoolVar("pool_io_heavy")
    model.Add(v.pool_windows >= v.pool_bridges)
    model.Add(IO_WINDOW_UNITS * v.pool_windows >= total + (IO_WINDOW_UNITS + 63) * v.pool_bridges
              ).OnlyEnforceIf(heavy)
    model.Add(total <= 64 * v.pool_bridges).OnlyEnforceIf(heavy.Not())


def bus_number_limits(model, prep: Prepared, v: Variables, why: Assumptions) -> None:
    """256 bus numbers per PCI domain and controller index ≤ 255; with expander buses, each hierarchy
    must fit in its busNr range."""
    buses = prep.problem.buses
    used = sum(b.model.buses for b in buses.values() if not b.droppable)
    new = new_controllers(v) + [buses[c].model.buses * k for c, k in v.bus_keep.items()]
    lit = why.new(Limit.BUS_NUMBERS, f"a PCI domain has {MAX_BUS_NUMBERS} bus numbers ({used} already used)")
    model.Add(used + _sum(new) <= MAX_BUS_NUMBERS).OnlyEnforceIf(lit)
    top = max([i for i, b in buses.items() if not b.droppable])
    lit = why.new(Limit.CONTROLLER_INDEX, f"controller indices end at {MAX_INDEX} (highest given: {top})")
    model.Add(top + _sum(new_controllers(v)) + _sum(v.bus_keep.values()) <= MAX_INDEX).OnlyEnforceIf(lit)
    _bus_nr_partition(model, prep, v, why)


def bus_nr_of(prep: Prepared) -> dict[int, int]:
    """busNr of every expander bus, with libvirt's defaults (254, 252, … below the lowest given)."""
    out: dict[int, int] = {}
    pxbs = sorted(b.index for b in prep.problem.buses.values()
                  if b.model.name in EXPANDERS)
    for i in pxbs:
        if prep.problem.buses[i].bus_nr is not None:
            out[i] = prep.problem.buses[i].bus_nr  # type: ignore[assignment]
    for i in pxbs:
        if i not in out and not prep.problem.buses[i].new_expander:  # ours get theirs after solving
            out[i] = min(out.values(), default=256) - 2
    return out


def _bus_nr_partition(model, prep: Prepared, v: Variables, why: Assumptions) -> None:
    nrs = bus_nr_of(prep)
    if not nrs:
        return
    starts = sorted(set(nrs.values()))
    limit = {0: starts[0]}
    # expander buses pciplan adds get busNr ranges below the lowest given one, after the root's
    ours = [b.index for b in prep.problem.buses.values() if b.new_expander]
    for i, n in nrs.items():
        higher = [s for s in starts if s > n]
        limit[i] = (higher[0] if higher else MAX_BUS_NUMBERS) - n
    count: dict[int, list] = defaultdict(list)
    fixed: dict[int, int] = defaultdict(int)
    for b in prep.problem.buses.values():
        if b.droppable:
            count[prep.hierarchy_of(b.index)] += [v.bus_keep[b.index]] * b.model.buses
        else:
            fixed[prep.hierarchy_of(b.index)] += b.model.buses
    for e, x in [*v.new_pci_bridges.items(), *v.new_pcie_pci_bridge.items()]:
        count[prep.hierarchy_of(e)].append(x)
    count[0].append(v.pool_pci_bridges)  # nested bridges: counted with the root hierarchy
    for p in v.root_ports:
        h = prep.hierarchy_of(p)
        count[h] += v.root_ports[p].ports() + v.downstream[p].ports()
        count[h] += [v.rp_bridge[p], v.rp_bridge[p], v.rp_switch[p], v.rp_switch[p]]
    for h in ours:
        count[0] += count.pop(h, [])
        fixed[0] += fixed.pop(h, 0)
    for h, lim in limit.items():
        name = "the root bus" if h == 0 else prep.problem.buses[h].label
        lit = why.new(Limit.BUS_NR_RANGE, f"bus numbers of {name} must fit its busNr range ({lim})")
        # A given layout that already overflows its range is the user's; we only add nothing there.
        model.Add(fixed[h] + _sum(count[h]) <= max(lim, fixed[h])).OnlyEnforceIf(lit)


def spare_ports(model, prep: Prepared, v: Variables, spare_pcie: int, spare_pci: int,
                why: Assumptions | None = None) -> None:
    """Keep empty hot-pluggable ports (PCIe) or slots (conventional) for later hot-plug; a shortfall is
    allowed but costs as much as a device that could not stay hot-pluggable. Reservations (--reserve)
    are hard: that many empty PCIe ports and free conventional slots, or no layout."""
    empty_ports = []
    free_pci_slots = []
    for e, st in prep.states.items():
        bus = st.bus
        free, most = bus_capacity_left(prep, v, e)
        if not bus.hotplug or most == 0:
            continue
        used = [x for (b, _), x in v.alone.items() if b == e] + [v.packslots[e]]
        if e in v.rpslots:
            used.append(v.rpslots[e])
        used += [x for b, x in v.new_pci_bridges.items() if b == e]
        used += [x for b, x in v.new_pcie_pci_bridge.items() if b == e]
        empty = model.NewIntVar(0, most, f"empty_slots_b{e}")
        model.Add(empty <= free - _sum(used))
        if e in v.bus_keep:  # a controller that goes offers no spare slot
            model.Add(empty <= most * v.bus_keep[e])
        if bus.model.name in PORTS:
            empty_ports.append(empty)
        elif bus.model.conventional:
            free_pci_slots.append(empty)
    for p in v.root_ports:
        empty_ports += [v.root_ports[p].spare, v.downstream[p].spare]
    nb = new_bridges(v)
    free_pci_slots.append(SLOTS_PER_BRIDGE * _sum(nb) - _sum(v.pool_alone.values()) - v.pool_packslots
                          - v.pool_pci_bridges)
    shortfalls = []
    for want, have, name in ((spare_pcie, empty_ports, "pcie"), (spare_pci, free_pci_slots, "pci")):
        if want:
            short = model.NewIntVar(0, want, f"spare_{name}_shortfall")
            model.Add(_sum(have) + short >= want)
            shortfalls.append(short)
    for need, have, what in ((prep.reserve_pcie, empty_ports, "empty hot-pluggable PCIe ports"),
                             (prep.reserve_pci, free_pci_slots, "free hot-pluggable conventional PCI slots")):
        if need and why is not None:
            lit = why.new(Limit.RESERVE, f"reserve ({prep.reserve_what}): {need} {what}")
            model.Add(_sum(have) >= need).OnlyEnforceIf(lit)
    assert v.spare_shortfall is not None
    model.Add(v.spare_shortfall == _sum(shortfalls))
