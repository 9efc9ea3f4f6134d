"""Decision variables. Everything is a count over interchangeable things (devices of one group,
identical new controllers), never a boolean per (device, slot): the model has no symmetry to break and
its size grows with the number of buses and groups, not with devices × slots."""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.facts.facts import PORTS
from planner.pipeline.prepare import Group, Prepared
from planner.pipeline.solver import cpmodel as cp_model

IntVar = cp_model.IntVar


def pcie_ok(prep: Prepared, g: Group) -> bool:
    """May the group sit on PCIe (a root/downstream port, or integrated on pcie-root)?"""
    k = g.key
    if k.bus == "pci" or not prep.problem.machine.pcie:
        return False
    return k.bus in ("pcie", "any") or k.endpoint == "pcie"


def conventional_ok(prep: Prepared, g: Group) -> bool:
    """May the group sit on conventional PCI? PCIe-capable devices then work as conventional ones,
    at a cost (level 3); never on aarch64 virt unless asked, never for modern-only virtio."""
    k = g.key
    machine = prep.problem.machine
    if k.bus == "pcie":
        return False
    if k.bus in ("pci", "any"):
        return not k.pcie_only
    # aarch64 virt keeps PCIe-capable devices on PCIe, unless the user ranks fewer controllers above
    # that: then the objective decides, over the whole space check accepts.
    pcie_always = machine.pcie_always and prep.pcie_before_controllers
    return k.endpoint == "pci" or (not k.pcie_only and machine.pcie and not pcie_always)


def group_allowed_on(prep: Prepared, g: Group, e: int) -> bool:
    """May devices of group g be placed on existing bus e? (libvirt's auto-assignment rules, plus
    integrated endpoints on pcie-root for devices that are not hot-plugged, plus the user's bus and
    hot-plug constraints.)"""
    bus = prep.problem.buses[e]
    acc = bus.model.accepts
    k = g.key
    # a bus pin or a named connection is a place the user gave: libvirt's looser rule applies
    given = bus.model.takes(f"{k.endpoint}-device", given=True)
    if k.bus_pin is not None:
        return e == k.bus_pin and given
    if k.integrated:
        return e == 0
    if k.numa is not None and prep.numa_of_hierarchy(e) != k.numa:
        return False  # only below the expander bus bound to its NUMA node
    if k.connection is not None:
        if bus.model.name != k.connection:
            return False
        return given and not (k.hotplug == "no" and bus.hotplug)
    if k.hotplug == "no" and bus.hotplug:
        return False  # it could be ejected there
    if k.whole_slot:
        return "pci-device" in acc and bus.model.conventional
    if "pcie-device" in acc and not bus.model.conventional:
        # A conventional device may be an integrated endpoint on pcie-root, as libvirt itself
        # integrates the chipset's conventional devices (VGA, ich9 sound and USB) and QEMU's
        # docs/pcie.txt recommends for legacy PCI devices; it is not hot-pluggable there.
        integrated_pci = e == 0 and k.hotplug != "yes" and k.endpoint == "pci" and k.bus != "pci"
        return pcie_ok(prep, g) or integrated_pci
    return "pci-device" in acc and conventional_ok(prep, g)


def needs_port_window(g: Group) -> bool:
    """On a root or downstream port, do devices of this group cost the port a 4 KiB I/O window?"""
    return g.key.io or (g.key.endpoint == "pci" and g.key.io_units > 0)


def on_conventional(prep: Prepared, g: Group, e: int) -> bool:
    return g.key.endpoint == "pcie" and prep.problem.buses[e].model.conventional


@dataclass
class PortPool:
    """New ports of one kind (root ports on one parent, or downstream ports of the switches on it)."""

    alone: dict[int, IntVar] = field(default_factory=dict)  # group -> ports holding one such device
    packed: dict[int, IntVar] = field(default_factory=dict)  # group -> devices packed as functions
    pack_io: IntVar | None = None  # ports holding packed devices, one of which has an I/O BAR
    pack_noio: IntVar | None = None
    spare: IntVar | None = None  # empty hot-pluggable ports

    def ports(self) -> list[IntVar]:
        return [*self.alone.values(), self.pack_io, self.pack_noio, self.spare]


@dataclass
class Variables:
    # Devices on existing buses: (bus, group) -> count
    alone: dict[tuple[int, int], IntVar] = field(default_factory=dict)
    packed: dict[tuple[int, int], IntVar] = field(default_factory=dict)
    packslots: dict[int, IntVar] = field(default_factory=dict)  # slots of bus e used as function packs
    rpslots: dict[int, IntVar] = field(default_factory=dict)  # slots of bus e given to new root ports
    # New controllers on existing buses
    new_pci_bridges: dict[int, IntVar] = field(default_factory=dict)  # conventional bus -> pci-bridges
    new_pcie_pci_bridge: dict[int, IntVar] = field(default_factory=dict)  # empty port -> 0/1 bridge
    io_new: dict[int, IntVar] = field(default_factory=dict)  # existing port gets an I/O device
    # New root ports per parent bus (pcie-root, pcie-expander-bus)
    root_ports: dict[int, PortPool] = field(default_factory=dict)
    rp_bridge: dict[int, IntVar] = field(default_factory=dict)  # root port + pcie-to-pci-bridge
    rp_switch: dict[int, IntVar] = field(default_factory=dict)  # root port + upstream port
    downstream: dict[int, PortPool] = field(default_factory=dict)
    # The conventional slots of all new bridges, pooled (they are interchangeable)
    pool_alone: dict[int, IntVar] = field(default_factory=dict)
    pool_packed: dict[int, IntVar] = field(default_factory=dict)
    pool_packslots: IntVar | None = None
    pool_pci_bridges: IntVar | None = None  # pci-bridges nested in slots of the new bridges
    spare_shortfall: IntVar | None = None
    pool_bridges: IntVar | None = None  # every new bridge (the pool's size)
    pool_windows: IntVar | None = None  # I/O windows of the new bridges (4 KiB each)
    io_used: cp_model.LinearExpr | None = None  # the firmware I/O space the plan uses (32-byte units)
    io_budget: int = 0
    # --replan: what keeps its place (devices, controllers), and which old slots stay occupied
    keep: dict[int, IntVar] = field(default_factory=dict)  # droppable -> 1 if kept in place
    bus_keep: dict[int, IntVar] = field(default_factory=dict)  # droppable bus index -> its keep
    occupied: dict[tuple[int, int], IntVar] = field(default_factory=dict)  # (bus, slot) -> still used


def _pool(model: cp_model.CpModel, prep: Prepared, name: str, cap: int, parent: int,
          port_model: str = "pcie-root-port") -> PortPool:
    """New ports: a device alone is hot-pluggable; packs of functions are not, and a pack holding a
    hotplug=no device gets its port written with hotplug='off'."""
    pool = PortPool()
    for gi, g in enumerate(prep.groups):
        k = g.key
        if not (pcie_ok(prep, g) or k.connection == port_model):
            continue
        if k.bus_pin is not None or k.integrated or k.whole_slot:
            continue
        if k.numa is not None and prep.numa_of_hierarchy(parent) != k.numa:
            continue
        if k.connection is not None and k.connection != port_model:
            continue
        if k.prefers_hotplug:
            pool.alone[gi] = model.NewIntVar(0, g.size, f"{name}_alone_g{gi}")
        if k.hotplug != "yes":
            pool.packed[gi] = model.NewIntVar(0, g.size, f"{name}_packed_g{gi}")
    pool.pack_io = model.NewIntVar(0, cap, f"{name}_pack_io")
    pool.pack_noio = model.NewIntVar(0, cap, f"{name}_pack_noio")
    pool.spare = model.NewIntVar(0, cap, f"{name}_spare")
    return pool


def create_variables(model: cp_model.CpModel, prep: Prepared) -> Variables:
    v = Variables()
    machine = prep.problem.machine
    reserved = machine.reserved_slots
    for i, drop in enumerate(prep.droppables):
        v.keep[i] = model.NewBoolVar(f"keep_{i}")
        if drop.controller is not None:
            v.bus_keep[drop.controller] = v.keep[i]
    for e, st in sorted(prep.states.items()):
        for slot in st.optional_slots():
            v.occupied[e, slot] = model.NewBoolVar(f"occupied_b{e}_s{slot}")
    for e, st in sorted(prep.states.items()):
        bus = st.bus
        free = len(st.free_slots(reserved)) + len(st.optional_slots())
        v.packslots[e] = model.NewIntVar(0, 32, f"packslots_b{e}")
        for gi, g in enumerate(prep.groups):
            if not group_allowed_on(prep, g, e):
                continue
            if g.key.whole_slot or (bus.hotplug and g.key.prefers_hotplug):
                # Domains stay at the group size: capacity lives in the (explainable) constraints.
                v.alone[e, gi] = model.NewIntVar(0, g.size, f"alone_b{e}_g{gi}")
            if not g.key.whole_slot and g.key.hotplug != "yes":
                v.packed[e, gi] = model.NewIntVar(0, g.size, f"packed_b{e}_g{gi}")
        acc = bus.model.accepts
        if "pci-bridge" in acc and bus.model.conventional and free:
            v.new_pci_bridges[e] = model.NewIntVar(0, free, f"new_pci_bridges_b{e}")
        if bus.model.name in PORTS and free and "pcie-to-pci-bridge" in acc:
            v.new_pcie_pci_bridge[e] = model.NewBoolVar(f"new_pcie_pci_bridge_b{e}")
        if bus.model.name in PORTS and not st.io_device and (free or st.optional):
            v.io_new[e] = model.NewBoolVar(f"io_new_b{e}")
        if "pcie-root-port" in acc:
            cap = 8 * free + len(st.free_root_port_functions())
            v.rpslots[e] = model.NewIntVar(0, free, f"rpslots_b{e}")
            v.root_ports[e] = _pool(model, prep, f"rp{e}", cap, e)
            v.rp_bridge[e] = model.NewIntVar(0, cap, f"rp_bridge_b{e}")
            v.rp_switch[e] = model.NewIntVar(0, cap, f"rp_switch_b{e}")
            v.downstream[e] = _pool(model, prep, f"ds{e}", 32 * cap, e, "pcie-switch-downstream-port")
    for gi, g in enumerate(prep.groups):
        k = g.key
        # bridge slots are hot-pluggable (SHPC) and cannot be switched off one by one
        if k.bus_pin is not None or k.integrated or k.hotplug == "no" or not conventional_ok(prep, g):
            continue
        if k.numa is not None or k.connection is not None:
            continue  # new bridges are pooled (pci-bridge and pcie-to-pci-bridge alike): no binding
        if k.whole_slot or k.prefers_hotplug:
            v.pool_alone[gi] = model.NewIntVar(0, g.size, f"pool_alone_g{gi}")
        if not k.whole_slot and k.hotplug != "yes":
            v.pool_packed[gi] = model.NewIntVar(0, g.size, f"pool_packed_g{gi}")
    v.pool_packslots = model.NewIntVar(0, 31 * 256, "pool_packslots")
    v.pool_pci_bridges = model.NewIntVar(0, 255, "pool_pci_bridges")
    v.spare_shortfall = model.NewIntVar(0, 2 * 255, "spare_shortfall")  # PCIe ports + conventional slots
    v.pool_bridges = model.NewIntVar(0, 512, "pool_bridges")
    model.Add(v.pool_bridges == cp_model.LinearExpr.Sum(new_bridges(v)))
    v.pool_windows = model.NewIntVar(0, 1 << 14, "pool_windows")
    return v


def hotpluggable_placements(prep: Prepared, v: Variables, groups: set[int]) -> list[IntVar]:
    """The variables counting devices of these groups placed alone in a hot-pluggable slot."""
    out = [x for (e, gi), x in v.alone.items() if gi in groups and prep.states[e].bus.hotplug]
    for pool in [*v.root_ports.values(), *v.downstream.values()]:
        out += [x for gi, x in pool.alone.items() if gi in groups]
    # --replan: a device kept alone in a hot-pluggable slot stays hot-pluggable (the device -> group
    # map only where there is something droppable: it walks every device)
    group_of = {id(d): gi for gi, g in enumerate(prep.groups) for d in g.devices} if prep.droppables else {}
    for i, drop in enumerate(prep.droppables):
        d = drop.device
        if d is None or i not in v.keep or group_of.get(id(d)) not in groups or d.address is None:
            continue
        st = prep.states[drop.bus]
        if st.bus.hotplug and d.address.function == 0 and len(st.used.get(drop.slot, {})) == 1:
            out.append(v.keep[i])
    return out + [x for gi, x in v.pool_alone.items() if gi in groups]


def new_bridges(v: Variables) -> list[IntVar]:
    nested = [v.pool_pci_bridges] if v.pool_pci_bridges is not None else []
    return [*v.new_pci_bridges.values(), *v.new_pcie_pci_bridge.values(), *v.rp_bridge.values(), *nested]


def new_controllers(v: Variables) -> list[IntVar]:
    """Every new controller counted once: root ports, upstream and downstream ports, bridges."""
    out: list[IntVar] = []
    for p, pool in v.root_ports.items():
        out += pool.ports() + [v.rp_bridge[p], v.rp_switch[p]]  # the root port itself
        out += [v.rp_switch[p]]  # the upstream port
        out += v.downstream[p].ports()
    return out + new_bridges(v)
