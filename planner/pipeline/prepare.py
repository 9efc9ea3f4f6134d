"""Turn a Problem into what the solver needs: the occupancy of existing buses, user controllers
placed where libvirt would put them, conventional places taken, and the devices left to place grouped
into interchangeable groups (identical requirements), which is what keeps the model free of symmetry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from lxml import etree

from planner.facts.errors import Infeasible, Limit, Reason
from planner.facts.facts import EXPANDERS, IO_UNIT, IO_WINDOW_UNITS, PORTS, controller_models, device_class
from planner.facts.options import OBJECTIVE_DEFAULT, RESERVE_DEFAULT_MODEL, PlanOptions
from planner.pipeline.domain import Bus, Device, PciAddress, Problem, endpoint_of
from planner.pipeline.replan import mark_replan
from planner.xml.xmlio import InputError


@dataclass
class Droppable:
    """--replan: something with an address the plan may change (a device) or remove (a controller)."""

    bus: int
    slot: int
    device: Device | None = None
    controller: int | None = None  # its index
    io: bool = False  # a device with an I/O BAR on a PCIe port
    io_units: int = 0  # its I/O space (32-byte units)


@dataclass
class BusState:
    bus: Bus
    used: dict[int, dict[int, str]] = field(default_factory=dict)  # slot -> function -> occupant
    root_port_slots: set[int] = field(default_factory=set)  # slots holding only root ports
    io_device: bool = False  # a device with an I/O BAR sits directly on this bus
    io_units: int = 0  # I/O space of the devices that stay on this bus (32-byte units)
    pinned_slots: set[int] = field(default_factory=set)  # slots with an occupant that must stay
    optional: dict[int, list[int]] = field(default_factory=dict)  # slot -> droppables in it (replan)
    window_child: bool = False  # a bridge with an I/O window of its own sits below (and stays)

    def optional_slots(self) -> dict[int, list[int]]:
        """Slots whose occupants may all go (--replan), with those occupants."""
        if not self.optional:  # (all but --replan: asked of every bus, by every stage)
            return {}
        return {s: d for s, d in sorted(self.optional.items()) if s not in self.pinned_slots}

    def occupy(self, slot: int, function: int, who: str, droppable: int | None = None) -> None:
        if droppable is None:
            self.pinned_slots.add(slot)
        else:
            self.optional.setdefault(slot, []).append(droppable)
        fns = self.used.setdefault(slot, {})
        if function in fns:
            raise InputError(
                f"{who}: attempted double use of PCI address {self.bus.index:02x}:{slot:02x}.{function:x} "
                f"(already {fns[function]})"
            )
        fns[function] = who

    def free_slots(self, reserved: frozenset[int]) -> list[int]:
        m = self.bus.model
        taken = self.used.keys() | reserved if self.bus.index == 0 else self.used  # (one test a slot)
        return [s for s in range(m.first_slot, m.last_slot + 1) if s not in taken]

    def free_root_port_functions(self) -> list[tuple[int, int]]:
        return [(s, f) for s in sorted(self.root_port_slots) for f in range(8) if f not in self.used[s]]


@dataclass(frozen=True)
class GroupKey:
    endpoint: str  # pcie | pci
    hotplug: str  # prefer (soft wish) | yes (must) | no (must not be ejectable) | none (no wish)
    io: bool  # I/O BAR even on a PCIe port
    pcie_only: bool
    integrated: bool  # bus 0 only
    whole_slot: bool  # a USB2 companion set: one slot, several functions
    bus_pin: int | None
    io_units: int = 0  # I/O space as a conventional or integrated device (32-byte units)
    bus: str = "default"  # pcie | pci | any | default (libvirt's classification decides)
    numa: int | None = None  # guest NUMA node: only below an expander bus bound to it
    connection: str | None = None  # only on buses of this controller model

    @property
    def prefers_hotplug(self) -> bool:
        return self.hotplug in ("prefer", "yes")


@dataclass
class Group:
    key: GroupKey
    devices: list[Device]

    @property
    def size(self) -> int:
        return len(self.devices)

    @property
    def name(self) -> str:
        kinds = sorted({d.kind for d in self.devices})
        k = self.key
        bits = [k.endpoint, {"prefer": "hot-plug", "yes": "hotplug=yes", "no": "hotplug=no",
                             "none": "fixed"}[k.hotplug]]
        if k.bus != "default":
            bits.append(f"bus={k.bus}")
        if k.numa is not None:
            bits.append(f"numa={k.numa}")
        if k.connection is not None:
            bits.append(f"connection={k.connection}")
        if k.bus_pin is not None:
            bits.append(f"bus {k.bus_pin}")
        return f"{len(self.devices)} × {'/'.join(kinds)} ({', '.join(bits)})"


@dataclass(frozen=True)
class Prepared:
    """What the solver is given. Its problem is prepare's own copy of the one it was handed (marked for
    --replan, devices on virtio-mmio left out, expander buses added); no later stage changes it."""

    problem: Problem
    states: dict[int, BusState]
    groups: list[Group]
    device_places: dict[int, PciAddress]  # id(device) -> address chosen before solving (conventions)
    controller_places: dict[int, PciAddress]  # bus index -> address chosen for unplaced user controllers
    fixed_io_units: int  # I/O space the given layout needs (32-byte units)
    fixed_io_windows: int  # bridge/port I/O windows the given layout needs
    droppables: list[Droppable] = field(default_factory=list)
    mmio: list[Device] = field(default_factory=list)  # bus=mmio: rendered with a virtio-mmio address
    # --replan: devices that had to move whatever the plan, with their old address
    lost: list[tuple[Device, PciAddress]] = field(default_factory=list)
    removed_controllers: list[int] = field(default_factory=list)  # --replan: dropped before solving
    reserve_pcie: int = 0  # --reserve: empty hot-pluggable PCIe ports to keep (hard)
    reserve_pci: int = 0  # --reserve: free hot-pluggable conventional slots to keep (hard)
    reserve_what: str = ""  # the reservations in words, for messages
    objective_order: tuple[str, ...] = OBJECTIVE_DEFAULT  # levels 2-5, resolved once (options, rules)
    spare_pcie: int = 0  # empty hot-pluggable PCIe ports wished for (the option, else the machine's)
    spare_pci: int = 0  # free hot-pluggable conventional slots wished for (likewise)
    # --replan: elements of the controllers removed before solving, taken out when the plan is written
    removed_elements: tuple[etree._Element, ...] = ()

    @property
    def pcie_before_controllers(self) -> bool:
        """Does the objective order rank "pcie" above "controllers"?"""
        return self.objective_order.index("pcie") < self.objective_order.index("controllers")

    def hierarchy_of(self, index: int) -> int:
        """The expander bus (or 0 for the root) whose bus-number range holds this bus."""
        buses = self.problem.buses
        seen = set()
        while index != 0 and index not in seen:
            seen.add(index)
            b = buses[index]
            if b.model.name in EXPANDERS:
                return index
            a = b.address or self.controller_places.get(index)
            index = a.bus if a is not None else 0
        return 0

    def numa_of_hierarchy(self, index: int) -> int | None:
        h = self.hierarchy_of(index)
        return self.problem.buses[h].numa_node if h else None

    def droppable_of(self, d: Device) -> int | None:
        for i, x in enumerate(self.droppables):
            if x.device is d:
                return i
        return None


def _device_connect(d: Device) -> str:
    return "pcie-device" if d.endpoint == "pcie" else "pci-device"


def _check_slot(parent: Bus, a: PciAddress, who: str) -> None:
    m = parent.model
    if a.slot < m.first_slot:
        raise InputError(f"{who}: invalid PCI address {a}: slot must be >= {m.first_slot} on {parent.label}")
    if a.slot > m.last_slot:
        raise InputError(f"{who}: invalid PCI address {a}: slot must be <= {m.last_slot} on {parent.label}")


def _occupy_given(problem: Problem, states: dict[int, BusState], drops: list[Droppable]) -> None:
    machine = problem.machine
    root = states[0]
    for (slot, fn), what in machine.chipset.items():
        if (slot, fn) not in machine.chipset_owner:
            root.occupy(slot, fn, what)
    for b in sorted(problem.buses.values(), key=lambda b: b.index):
        if b.address is None:
            continue
        parent = problem.buses.get(b.address.bus)
        if parent is None:
            raise InputError(f"{b.label}: its address names bus {b.address.bus}, which no controller has")
        if not parent.model.takes(b.model.plugs_into, given=True):
            raise InputError(
                f"{b.label}: cannot be plugged into {parent.label}; it requires a controller that "
                f"accepts a {b.model.plugs_into}"
            )
        _check_slot(parent, b.address, b.label)
        if parent.index >= b.index:
            raise InputError(
                f"{b.label}: plugs into bus {parent.index}, which is not lower than its own index "
                + ("(libvirt: index must be larger than bus)" if b.model.name == "pci-bridge"
                   else "(QEMU creates controllers in index order and refuses to start)")
            )
        drop = None
        if b.droppable:
            drop = len(drops)
            drops.append(Droppable(parent.index, b.address.slot, controller=b.index))
        states[parent.index].occupy(b.address.slot, b.address.function, b.label, drop)
        if b.model.aggregate and not b.droppable:
            st = states[parent.index]
            if all(o.startswith("controller pci") and "pcie-root-port" in o
                   for o in st.used[b.address.slot].values()):
                st.root_port_slots.add(b.address.slot)
    for d in problem.devices:
        drop = None
        if d.droppable and d.address is not None:
            drop = len(drops)
            io = any(m.io_on_port for m in [d, *d.companions])
            drops.append(Droppable(d.address.bus, d.address.slot, device=d, io=io, io_units=d.io_units))
        for member in [d, *d.companions] if d.companions else (d,):
            a = member.address
            if a is None:
                continue
            parent = problem.buses.get(a.bus)
            if parent is None:
                raise InputError(f"{member.label}: its address names bus {a.bus}, which no controller has")
            if not parent.model.takes(_device_connect(member), given=True):
                raise InputError(
                    f"{member.label}: the device at PCI address {a} cannot be plugged into {parent.label}"
                )
            if d.facts.integrated and a.bus != 0:
                raise InputError(f"{member.label}: needs to be an integrated device (bus=0)")
            _check_slot(parent, a, member.label)
            st = states[a.bus]
            owner = machine.chipset_owner.get((a.slot, a.function)) if a.bus == 0 else None
            if owner is not None and f"{member.kind}:{member.element.get('type')}" != owner:
                raise InputError(f"{member.label}: PCI address {a} belongs to the chipset "
                                 f"({machine.chipset[a.slot, a.function]})")
            st.occupy(a.slot, a.function, member.label, drop)
            st.root_port_slots.discard(a.slot)
            if drop is None and member.io_on_port:
                st.io_device = True
            if drop is None:
                st.io_units += member.facts.io_units


def _place_user_controllers(problem: Problem, states: dict[int, BusState]) -> dict[int, PciAddress]:
    """User controllers without an address go where libvirt would put them: the first bus of lower
    index that accepts them, lowest free slot (root ports share slots as functions)."""
    placed: dict[int, PciAddress] = {}
    reserved = problem.machine.reserved_slots
    dmi_slots = problem.machine.conventions.get("dmi_to_pci_bridge", ())
    for b in sorted(problem.buses.values(), key=lambda b: b.index):
        if not b.floating:
            continue
        candidates = [p for p in sorted(problem.buses.values(), key=lambda p: p.index)
                      if p.index < b.index and (b.bus_pin is None or p.index == b.bus_pin)
                      and p.model.takes(b.model.plugs_into, given=b.bus_pin is not None)]
        address = None
        for p in candidates:
            st = states[p.index]
            if b.model.name == "dmi-to-pci-bridge" and p.index == 0:
                free = [s for s in dmi_slots if s not in st.used]
                if free:
                    address = PciAddress(0, free[0], 0)
                    break
            if b.model.aggregate:
                funcs = st.free_root_port_functions()
                if funcs:
                    address = PciAddress(p.index, *funcs[0])
                    break
            slots = st.free_slots(reserved)
            if slots:
                address = PciAddress(p.index, slots[0], 0)
                if b.model.aggregate:
                    st.root_port_slots.add(slots[0])
                break
        if address is None:
            raise InputError(
                f"{b.label}: no free slot on a bus of lower index that accepts a {b.model.plugs_into}"
                + (f" (its address names bus {b.bus_pin})" if b.bus_pin is not None else "")
            )
        states[address.bus].occupy(address.slot, address.function, b.label)
        placed[b.index] = address
    return placed


def _place_conventions(problem: Problem, states: dict[int, BusState]) -> dict[int, PciAddress]:
    """Devices libvirt puts at a conventional root-bus slot (primary video, ich9 sound and USB) go there."""
    places: dict[int, PciAddress] = {}
    root = states[0]
    for d in problem.devices:
        if d.address is not None or d.bus_pin is not None or not d.convention:
            continue
        for slot in d.convention:
            if slot in root.used:
                continue
            for member in [d, *d.companions]:
                a = PciAddress(0, slot, member.function)
                root.occupy(slot, member.function, member.label)
                root.io_units += member.facts.io_units  # its I/O BAR is paid on the root bus
                places[id(member)] = a
            break
    return places


def _mark_pinned_io(problem: Problem, states: dict[int, BusState]) -> None:
    """A device pinned to a port by bus only still costs that port an I/O window: the user chose it."""
    for d in problem.devices:
        if d.address is None and d.bus_pin is not None and d.bus_pin in states and d.io_on_port:
            states[d.bus_pin].io_device = True


def _hotplug_mode(d: Device, options: PlanOptions, hotplug_possible: bool) -> str:
    if d.hotplug_rule == "yes" and not (d.address is not None and not d.droppable):
        why = f"hotplug=yes for {d.label} ({d.hotplug_rule_from})"
        if not d.hotplug or d.companions:
            raise Infeasible([Reason(Limit.HOTPLUG, f"{why}: libvirt cannot hot-plug a {d.kind} of this "
                                     "model")])
        if not hotplug_possible:
            raise Infeasible([Reason(Limit.HOTPLUG, f"{why}: this pc guest has no <acpi/>, so its root bus "
                                     "cannot hot-plug; add <features><acpi/></features>")])
        return "prefer" if options.relax_hotplug else "yes"
    if d.hotplug_rule == "no":
        return "no"
    return "prefer" if hotplug_possible and d.hotplug and not d.companions else "none"


def _group_key(d: Device, hotplug: str) -> tuple:
    """The fields of d's GroupKey, in GroupKey's order (hotplug: its _hotplug_mode). A plain tuple: it
    hashes in C, and prepare builds a GroupKey only once per group, not once per device."""
    facts = d.facts
    plain = d.bus_pin is None and not facts.integrated and not d.companions
    return (d.endpoint, hotplug, facts.io, facts.pcie_only, facts.integrated, bool(d.companions), d.bus_pin,
            d.io_units, (d.bus_rule or "default") if plain else "default", d.numa_rule if plain else None,
            d.connection_rule if plain else None)


def _mark_window_children(problem: Problem, states: dict[int, BusState],
                          places: dict[int, PciAddress]) -> None:
    """SeaBIOS sizes a bridge's window as the sum of everything below it, child bridges' windows
    included, rounded up to 4 KiB; only an empty bridge gets its minimal 4 KiB. So a bridge with a
    child bridge pays just its own BARs on top of the child's window."""
    for b in problem.buses.values():
        a = b.address or places.get(b.index)
        if a is not None and b.model.io_window and not b.droppable and a.bus in states:
            states[a.bus].window_child = True


def _fixed_io(problem: Problem, states: dict[int, BusState]) -> tuple[int, int]:
    """I/O space (32-byte units) and bridge/port windows the given layout already needs from the
    firmware: root-bus BARs, one 4 KiB window per port with an I/O device (and, where the firmware
    pads hot-plug ports, per empty port), and each bridge's window rounded up to 4 KiB (the windows of
    bridges below it count in their own right, so the nesting adds up)."""
    units = states[0].io_units
    windows = 0
    pads = problem.firmware is not None and problem.firmware.pads_spares
    for b in problem.buses.values():
        st = states[b.index]
        if b.droppable or b.index == 0:
            continue  # a droppable controller's window is counted in the model, if it is kept
        port = b.model.name in PORTS
        if b.model.io_window:
            least = 0 if st.window_child else 1
            units += IO_WINDOW_UNITS * max(least, -(-st.io_units // IO_WINDOW_UNITS))
            windows += 1
        elif port and (st.io_device or (pads and b.hotplug and not st.used)):
            units += IO_WINDOW_UNITS
            windows += 1
    return units, windows


def _add_expander_buses(problem: Problem) -> None:
    """An expander bus bound to each guest NUMA node a numa rule names, unless the guest has one; it is
    placed like a user controller, and its busNr is chosen after solving (planner.pipeline.render). Its
    element joins the document when the plan is written (planner.pipeline.render.apply_prepared)."""
    machine = problem.machine
    wanted = sorted({d.numa_rule for d in problem.devices if d.numa_rule is not None and d.address is None})
    have = {b.numa_node for b in problem.buses.values() if b.model.name in EXPANDERS}
    for node in wanted:
        if node in have:
            continue
        if not machine.pxb:
            who = next(d.label for d in problem.devices if d.numa_rule == node)
            raise Infeasible([Reason(Limit.NUMA, f"numa={node} for {who}: machine family {machine.family} "
                                     "has no expander bus to bind devices to a NUMA node")])
        index = max(problem.buses) + 1
        model = controller_models()[machine.pxb]
        el = etree.Element("controller", type="pci", index=str(index), model=machine.pxb)
        etree.SubElement(el, "model", name=model.qemu)
        target = etree.SubElement(el, "target")
        etree.SubElement(target, "node").text = str(node)
        label = f"controller pci index={index} ({machine.pxb}, NUMA node {node})"
        problem.buses[index] = Bus(index, model, el, None, model.hotplug, label, None, added=True,
                                   numa_node=node, new_expander=True)
        problem.notes.append(f"added {machine.pxb} index={index} for guest NUMA node {node}")


def _move_to_mmio(problem: Problem) -> list[Device]:
    """bus=mmio: the devices that leave PCI for a virtio-mmio transport (virt machines, virtio devices);
    QEMU's virt machine has a fixed number of them."""
    moved = []
    for d in problem.devices:
        if d.bus_rule != "mmio" or (d.address is not None and not d.droppable):
            continue
        if not problem.machine.mmio_transports:
            raise InputError(f"{d.label}: bus=mmio needs an aarch64 or riscv64 virt machine")
        if d.facts.cls != "virtio":
            if d.bus_rule_from.startswith("--bus"):
                d.bus_rule = None  # the flag speaks of every device; only virtio ones can follow it
                continue
            raise InputError(f"{d.label}: bus=mmio ({d.bus_rule_from}) is for virtio devices only")
        moved.append(d)
    total = len(problem.mmio_devices) + len(moved)
    if total > problem.machine.mmio_transports:
        raise Infeasible([Reason(
            Limit.VIRTIO_MMIO, f"{total} devices on virtio-mmio ({', '.join(d.label for d in moved[:3])}"
            f"{' …' if len(moved) > 3 else ''}); QEMU's virt machine on this architecture has "
            f"{problem.machine.mmio_transports} virtio-mmio transports")])
    return moved


def check_options(options: PlanOptions) -> None:
    """Numbers the model is built from must be in range, whoever set them (the CLI, a policy, the
    metadata, a caller of plan_tree): the solver is never handed a domain it cannot take."""
    counts = [("--spare-pcie", options.spare_pcie), ("--spare-pci", options.spare_pci)]
    counts += [(f"--reserve {kind}={n}", n) for kind, n in options.reserve]
    for what, n in counts:
        if n is not None and not 0 <= n <= MAX_SPARE:
            raise InputError(f"{what}: {n} is out of range (0-{MAX_SPARE})")
    if not options.time_limit > 0:
        raise InputError(f"--time-limit: {options.time_limit:g} is not a positive number of seconds")
    if options.workers < 1:
        raise InputError(f"workers: {options.workers} is not a positive number")


MAX_SPARE = 255  # as the policy and the metadata allow (a PCI domain has 256 bus numbers)


T = TypeVar("T")


def _copy(obj: T) -> T:
    """copy.copy of a plain dataclass instance (a Bus, a Device) without copy's generic protocol:
    prepare copies every bus and device of every guest."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    return new


def _with(problem: Problem, **changes) -> Problem:
    """dataclasses.replace(problem, **changes) without replace's walk over the fields and the frozen
    __init__ (a Problem has no __post_init__ nor init=False field: a copy of its fields is the same)."""
    new = _copy(problem)
    new.__dict__.update(changes)
    return new


def _working_copy(problem: Problem) -> Problem:
    """prepare's own copy of the problem, which it marks and changes; the caller's stays as read. The
    XML elements are shared: only render writes the document."""
    buses = {i: _copy(b) for i, b in problem.buses.items()}
    devices = []
    for d in problem.devices:
        d = _copy(d)
        d.companions = [_copy(m) for m in d.companions] if d.companions else []
        devices.append(d)
    return _with(problem, buses=buses, devices=devices, notes=list(problem.notes),
                 mmio_devices=list(problem.mmio_devices))


def prepare(problem: Problem, options: PlanOptions | None = None) -> Prepared:
    """The solver's view of problem (which is left as it is) under options; options.objective_order is
    read here once."""
    options = options or PlanOptions()
    check_options(options)
    problem = _working_copy(problem)
    lost, gone = mark_replan(problem) if options.replan else ([], [])
    mmio = _move_to_mmio(problem)
    if mmio:  # else the working copy's own lists already are what these would be
        problem = _with(problem, devices=[d for d in problem.devices if d not in mmio],
                        mmio_devices=problem.mmio_devices + [d.label for d in mmio])
    _add_expander_buses(problem)
    states = {i: BusState(b) for i, b in problem.buses.items()}
    drops: list[Droppable] = []
    _occupy_given(problem, states, drops)
    # the chipset's own functions (not in the XML) take root-bus I/O too
    states[0].io_units += -(-problem.machine.chipset_io_bytes // IO_UNIT)
    hotplug_possible = not (problem.machine.acpi_root_hotplug and not problem.acpi)
    # an impossible hot-plug wish fails before any place is taken
    modes = [_hotplug_mode(d, options, hotplug_possible) for d in problem.devices]
    # libvirt reserves the conventional places (primary video ...) before it places controllers
    device_places = _place_conventions(problem, states)
    controller_places = _place_user_controllers(problem, states)
    _mark_pinned_io(problem, states)
    _mark_window_children(problem, states, controller_places)
    groups: dict[tuple, Group] = {}  # GroupKey's fields -> the group
    # pc without ACPI has no hot-plug on its root bus: the guest was made without it, so nothing asks
    # for it (as with libvirt, which then adds no bridge for hot-plug either)
    for d, mode in zip(problem.devices, modes, strict=True):
        if (d.address is not None and not d.droppable) or id(d) in device_places:
            continue
        for member in d.companions:
            if member.address is not None:
                raise InputError(f"{member.label}: a USB companion has an address but its set's first "
                                 f"member {d.label} has none; give all or none")
        fields = _group_key(d, mode)
        group = groups.get(fields)
        if group is None:
            group = groups[fields] = Group(GroupKey(*fields), [])
        group.devices.append(d)
    ordered = sorted(groups.values(), key=lambda g: g.devices[0].order)
    reserve_pcie, reserve_pci = reserved_places(problem, options.reserve)
    what = ", ".join(f"{k}={n}" for k, n in options.reserve)
    machine = problem.machine
    # Hot-plug headroom by default: every q35/virt plan ends with an empty hot-pluggable port, whether
    # or not anything else is added (libvirt leaves one whenever it adds ports); a spare conventional
    # slot only where hot-plug works. --spare-pcie 0 / --spare-pci 0 opt out.
    spare_pcie = machine.spare_pcie_ports if options.spare_pcie is None else options.spare_pcie
    spare_pci = options.spare_pci
    if spare_pci is None:
        spare_pci = machine.spare_pci_slots if problem.root.hotplug else 0
    return Prepared(problem, states, ordered, device_places, controller_places,
                    *_fixed_io(problem, states), drops, mmio, lost, [b.index for b in gone], reserve_pcie,
                    reserve_pci, what, objective_order=options.objective_order or OBJECTIVE_DEFAULT,
                    spare_pcie=spare_pcie, spare_pci=spare_pci,
                    removed_elements=tuple(b.element for b in gone if b.element is not None))


def reserved_places(problem: Problem, reserve: tuple[tuple[str, int], ...]) -> tuple[int, int]:
    """(empty PCIe ports, free conventional slots) that the reservations need: each reserved device
    takes the kind of place libvirt would hot-plug it into."""
    pcie = pci = 0
    for key, n in reserve:
        kind, _, model = key.partition(":")
        model = model or RESERVE_DEFAULT_MODEL.get(kind, "")
        facts = device_class(kind, model)
        if facts.cls == "none":
            raise InputError(f"reserve {key}: a {kind} ({model or 'default model'}) takes no PCI address")
        if not facts.hotplug:
            raise InputError(f"reserve {key}: libvirt cannot hot-plug a {kind} ({model or 'default model'})")
        if endpoint_of(problem.machine, facts) == "pcie":
            pcie += n
        else:
            pci += n
    return pcie, pci
