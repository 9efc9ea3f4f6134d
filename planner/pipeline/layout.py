"""Unfold the solver's counts into a concrete layout: every new controller with its index and
address, every device with its address. Deterministic: same counts, same layout."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from planner.facts.errors import InternalError
from planner.facts.facts import FUNCTIONS, PORTS
from planner.pipeline.domain import Device, PciAddress, address_of
from planner.pipeline.prepare import Prepared
from planner.pipeline.solver.solve import PortCounts, SolveResult
from planner.pipeline.solver.variables import group_allowed_on, needs_port_window


@dataclass(eq=False)
class BusNode:
    """A bus of the final topology: an existing controller or one pciplan adds."""

    model: str
    index: int | None  # None until numbered (new controllers)
    parent: BusNode | None = None
    slot: int = 0
    function: int = 0
    children: list[BusNode] = field(default_factory=list)
    new: bool = False
    free: list[int] = field(default_factory=list)  # whole free slots, ascending
    rp_functions: list[tuple[int, int]] = field(default_factory=list)
    stream: tuple[int, int] | None = None  # (slot, next function) of the open endpoint pack
    rp_stream: tuple[int, int] | None = None  # (slot, next function) of the open root-port slot
    hotplug_off: bool = False  # a new port holding a device that must not be ejectable


@dataclass
class Target:
    bus: BusNode
    slot: int
    function: int


@dataclass
class Layout:
    devices: dict[int, PciAddress] = field(default_factory=dict)  # id(device element) -> address
    controllers: dict[int, PciAddress] = field(default_factory=dict)  # user controller index -> address
    new_controllers: list[BusNode] = field(default_factory=list)  # in index order
    dropped_controllers: list[int] = field(default_factory=list)  # --replan: indices removed
    # --replan: devices whose address changed: (device, old address, new address or None)
    moved: list[tuple[Device, PciAddress, PciAddress | None]] = field(default_factory=list)


def _count(x: int | None) -> int:
    return x or 0


class _Unfolder:
    def __init__(self, prep: Prepared, result: SolveResult):
        self.prep = prep
        self.r = result
        assert result.counts is not None
        self.v = result.counts  # plain numbers: the layout never reads the model or the solver
        self.nodes: dict[int, BusNode] = {}
        reserved = prep.problem.machine.reserved_slots
        self.dropped = {c for c, k in self.v.bus_keep.items() if not k}
        for i, st in sorted(prep.states.items()):
            if i in self.dropped:
                continue
            freed = [s for s in st.optional_slots() if not self.v.occupied[i, s]]
            self.nodes[i] = BusNode(st.bus.model.name, i, free=sorted(st.free_slots(reserved) + freed),
                                    rp_functions=st.free_root_port_functions())
        for i, b in prep.problem.buses.items():
            if i in self.dropped:
                continue
            a = b.address or prep.controller_places.get(i)
            if a is not None:
                node = self.nodes[i]
                node.parent, node.slot, node.function = self.nodes[a.bus], a.slot, a.function
                self.nodes[a.bus].children.append(node)
        self.wanted: dict[int, list[Target]] = {}  # group -> targets
        self.bridges: list[BusNode] = []
        self.pool_free: list[tuple[BusNode, int]] = []

    # -- slot allocation on one bus
    def whole_slot(self, bus: BusNode) -> int:
        return bus.free.pop(0)

    def function(self, bus: BusNode, root_port: bool) -> tuple[int, int]:
        if root_port:
            if bus.rp_functions:
                return bus.rp_functions.pop(0)
            if bus.rp_stream is None or bus.rp_stream[1] == FUNCTIONS:
                bus.rp_stream = (bus.free.pop(0), 0)
            slot, fn = bus.rp_stream
            bus.rp_stream = (slot, fn + 1)
            return slot, fn
        if bus.stream is None or bus.stream[1] == FUNCTIONS:
            bus.stream = (bus.free.pop(0), 0)
        slot, fn = bus.stream
        bus.stream = (slot, fn + 1)
        return slot, fn

    def add_controller(self, model: str, parent: BusNode, slot: int, fn: int) -> BusNode:
        node = BusNode(model, None, parent, slot, fn, new=True)
        parent.children.append(node)
        return node

    def want(self, gi: int, bus: BusNode, slot: int, fn: int) -> None:
        self.wanted.setdefault(gi, []).append(Target(bus, slot, fn))

    # -- ports (root or downstream) and what they hold
    def fill_ports(self, pool: PortCounts, make_port) -> None:
        val = _count
        for gi, x in sorted(pool.alone.items()):
            for _ in range(val(x)):
                self.want(gi, make_port(), 0, 0)
        io_groups = {gi for gi in pool.packed if needs_port_window(self.prep.groups[gi])}
        packed = [gi for gi in sorted(pool.packed, key=lambda g: (g not in io_groups, g))
                  for _ in range(val(pool.packed[gi]))]
        ports = val(pool.pack_io) + val(pool.pack_noio)
        for p in range(ports):
            port = make_port()
            for fn, gi in enumerate(packed[p * FUNCTIONS:(p + 1) * FUNCTIONS]):
                self.want(gi, port, 0, fn)
                port.hotplug_off |= self.prep.groups[gi].key.hotplug == "no"
        for _ in range(val(pool.spare)):
            make_port()

    def _alone_lowest_ports_first(self) -> dict[tuple[int, int], int]:
        """The solver's (bus, group) -> devices alone there, with the devices it put on existing ports
        moved, among interchangeable ports, to the lowest indices: libvirt's first fit. Interchangeable:
        same model, hot-plug setting and bus-number hierarchy, nothing else on them; groups pinned to
        a bus stay."""
        v, val = self.v, _count
        alone = {k: val(x) for k, x in v.alone.items() if val(x)}
        busy = {e for e, x in v.packslots.items() if val(x)}
        busy |= {e for e, x in v.new_pcie_pci_bridge.items() if val(x)}
        busy |= {e for e, pool in v.root_ports.items() if any(val(x) for x in pool.ports())}

        def klass(e: int) -> tuple | None:
            st = self.prep.states.get(e)
            if st is None or e in busy or e not in self.nodes or not self.nodes[e].free:
                return None
            if st.bus.model.name not in PORTS or len(self.nodes[e].free) != 1:
                return None
            return (st.bus.model.name, st.bus.hotplug, self.prep.hierarchy_of(e))

        classes: dict[tuple, list[int]] = {}
        for e in self.nodes:
            c = klass(e)
            if c is not None:
                classes.setdefault(c, []).append(e)
        for ports in classes.values():
            movable = [(e, gi) for (e, gi), n in sorted(alone.items()) if e in ports and n == 1
                       and self.prep.groups[gi].key.bus_pin is None]
            if any(alone[(e, gi)] != 1 for (e, gi) in alone if e in ports):
                continue
            if not all(group_allowed_on(self.prep, self.prep.groups[gi], p) for _, gi in movable
                       for p in ports):
                continue
            held = {e for e, _ in movable}
            fixed = {e for (e, _gi) in alone if e in ports} - held
            targets = [e for e in sorted(ports) if e not in fixed][: len(movable)]
            for key in movable:
                del alone[key]
            for (_, gi), t in zip(movable, targets, strict=True):
                alone[(t, gi)] = 1
        return alone

    def unfold(self) -> None:
        v, val = self.v, _count
        alone = sorted(self._alone_lowest_ports_first().items())
        packed = sorted(v.packed.items())
        for e in sorted(self.nodes):
            node = self.nodes[e]
            for _ in range(val(v.new_pci_bridges.get(e))):
                self.bridges.append(self.add_controller("pci-bridge", node, self.whole_slot(node), 0))
            if val(v.new_pcie_pci_bridge.get(e)):
                self.bridges.append(self.add_controller("pcie-to-pci-bridge", node, self.whole_slot(node), 0))
            if e in v.root_ports:
                self._root_ports(e, node)
            for (b, gi), x in packed:
                if b == e:
                    for _ in range(val(x)):
                        self.want(gi, node, *self.function(node, root_port=False))
            for (b, gi), n in alone:
                if b == e:
                    for _ in range(n):
                        self.want(gi, node, self.whole_slot(node), 0)
        self._pool()

    def _root_ports(self, e: int, parent: BusNode) -> None:
        v, val = self.v, _count

        def root_port() -> BusNode:
            return self.add_controller("pcie-root-port", parent, *self.function(parent, root_port=True))

        switches = [self.add_controller("pcie-switch-upstream-port", root_port(), 0, 0)
                    for _ in range(val(v.rp_switch[e]))]
        for _ in range(val(v.rp_bridge[e])):
            self.bridges.append(self.add_controller("pcie-to-pci-bridge", root_port(), 0, 0))
        self.fill_ports(v.root_ports[e], root_port)
        count = [0]

        def downstream_port() -> BusNode:
            k = count[0]
            count[0] += 1
            return self.add_controller("pcie-switch-downstream-port", switches[k // 32], k % 32, 0)

        if switches:
            self.fill_ports(v.downstream[e], downstream_port)

    def _pool(self) -> None:
        """Fill the new bridges: nested pci-bridges first (each in the first bridge with a free slot),
        then each bridge with the devices the solver's split gives it (planner.pipeline.solver.pool: the split
        with the fewest I/O windows)."""
        v, val = self.v, _count
        free = {id(b): list(range(1, 32)) for b in self.bridges}
        bridges = list(self.bridges)
        for _ in range(val(v.pool_pci_bridges)):
            parent = next(b for b in bridges if free[id(b)])
            nested = self.add_controller("pci-bridge", parent, free[id(parent)].pop(0), 0)
            bridges.append(nested)
            free[id(nested)] = list(range(1, 32))
        pool = self.r.pool  # the split solve checked against the firmware's I/O space
        if pool is None or len(pool.alone) != len(bridges):
            raise InternalError(f"the solver's split of the new bridges has {len(pool.alone) if pool else 0} "
                                f"bridge(s), the layout {len(bridges)}; please report it")
        for k, bridge in enumerate(bridges):
            items: list[list[int]] = [[gi] for gi, n in sorted(pool.alone[k].items()) for _ in range(n)]
            packed = [gi for gi, n in sorted(pool.packed[k].items()) for _ in range(n)]
            items += [packed[i:i + FUNCTIONS] for i in range(0, len(packed), FUNCTIONS)]
            # inside a bridge, slots follow the order of the devices in the XML
            for item in sorted(items, key=lambda it: it[0]):
                slot = free[id(bridge)].pop(0)
                for fn, gi in enumerate(item):
                    self.want(gi, bridge, slot, fn)

    def number(self) -> list[BusNode]:
        """Index new controllers breadth-first from the root: a parent always has the lower index."""
        nxt = max(self.nodes) + 1
        out = []
        queue = deque([self.nodes[0]])
        while queue:
            node = queue.popleft()
            if not node.children:
                continue
            for child in sorted(node.children, key=lambda c: (c.slot, c.function)):
                if child.new:
                    child.index = nxt
                    nxt += 1
                    out.append(child)
                queue.append(child)
        return out


def unfold(prep: Prepared, result: SolveResult) -> Layout:
    u = _Unfolder(prep, result)
    u.unfold()
    layout = Layout(new_controllers=u.number(), dropped_controllers=sorted(u.dropped))
    layout.controllers = dict(prep.controller_places)
    assert result.counts is not None
    keep = {id(d.device): result.counts.keep[i]
            for i, d in enumerate(prep.droppables) if d.device is not None}
    for gi, targets in u.wanted.items():
        group = prep.groups[gi]
        moving = [d for d in group.devices if not keep.get(id(d), 0)] if keep else group.devices
        assert len(targets) == len(moving), (group.name, len(targets))
        placed = {(t.bus.index, t.slot, t.function) for t in targets}
        # A device that had to move but finds its old address among the targets takes it back.
        rest = []
        for dev in moving:
            old = dev.address
            if old is not None and (old.bus, old.slot, old.function) in placed:
                placed.remove((old.bus, old.slot, old.function))
                _place(layout, dev, old)
            else:
                rest.append(dev)
        # the free targets in address order (no two targets share an address: these are theirs)
        for dev, (bus, slot, function) in zip(rest, sorted(placed), strict=True):
            assert bus is not None
            a = address_of(bus, slot, function)
            if dev.address is not None and dev.address != a:
                layout.moved.append((dev, dev.address, a))
            _place(layout, dev, a)
    lost = [(dev, old, layout.devices.get(id(dev.element))) for dev, old in prep.lost]
    layout.moved = lost + layout.moved
    if prep.device_places:
        for d in prep.problem.devices:
            for m in [d, *d.companions] if d.companions else (d,):
                if id(m) in prep.device_places:
                    layout.devices[id(m.element)] = prep.device_places[id(m)]
    return layout


def _place(layout: Layout, dev: Device, a: PciAddress) -> None:
    layout.devices[id(dev.element)] = a
    for m in dev.companions:
        layout.devices[id(m.element)] = address_of(a.bus, a.slot, m.function)

