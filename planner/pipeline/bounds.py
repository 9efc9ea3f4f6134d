"""Cheap lower bounds, checked before the model is built: when one of them already exceeds a limit the
guest is refused at once (exit 3), with the bound that decides it and the largest number that fits,
instead of leaving CP-SAT to search a space with no solution in it.

Every bound here is a relaxation of the solver's own model (same units, same budget), so it never
refuses a guest the solver could plan:
- I/O: the legacy I/O BARs that must be paid wherever the devices go, against the firmware's I/O space;
- functions: the PCI functions to place against what the existing buses and every bus number still
  free could offer (on machines whose new buses are all bridges, the I/O space bounds the bridges too);
- bus numbers: the new buses those functions need, against the 256 of a PCI domain."""

from __future__ import annotations

from collections import Counter

from planner.facts.errors import Infeasible, Limit, Reason, Role
from planner.facts.facts import FUNCTIONS, IO_UNIT, IO_WINDOW_UNITS, MAX_BUS_NUMBERS, PORTS, SLOTS_PER_BUS
from planner.pipeline.prepare import Group, Prepared
from planner.pipeline.solver.variables import pcie_ok


def io_free(prep: Prepared, g: Group) -> bool:
    """Can devices of this group sit somewhere without any I/O space? Only modern virtio and other
    PCIe endpoints without an I/O BAR on a root or downstream port (a transitional virtio device on the
    root bus or a conventional bus has its legacy BAR)."""
    k = g.key
    if k.io_units == 0:
        return True
    if k.io or k.integrated or k.whole_slot:
        return False
    if k.bus_pin is not None:
        return prep.problem.buses[k.bus_pin].model.name in PORTS
    return pcie_ok(prep, g)


def _slack_units(prep: Prepared) -> int:
    """Room left inside the windows the given layout already pays for: devices placed there add no
    I/O space (bridges: up to their rounded-up window; ports with an I/O device: up to 4 KiB)."""
    room = 0
    for e, st in prep.states.items():
        b = st.bus
        if e == 0 or b.droppable:
            continue
        if b.model.io_window:
            room += IO_WINDOW_UNITS * max(1, -(-st.io_units // IO_WINDOW_UNITS)) - st.io_units
        elif b.model.name in PORTS and st.io_device:
            room += max(0, IO_WINDOW_UNITS - st.io_units)
    return room


def _describe(counts: Counter, sizes: dict[str, int]) -> str:
    parts = [f"{n} × {what} ({sizes[what] * IO_UNIT} bytes)" for what, n in counts.most_common(4)]
    more = len(counts) - 4
    return ", ".join(parts) + (f" and {more} more kinds" if more > 0 else "")


def io_lower_bound(prep: Prepared) -> tuple[int, Counter, dict[str, int]]:
    """I/O space (32-byte units) every layout of this guest needs, and the I/O BARs paid for it by
    device kind: (units, counts, units each)."""
    counts: Counter = Counter()
    sizes: dict[str, int] = {}
    for g in prep.groups:
        if io_free(prep, g):
            continue
        units = g.key.io_units  # each device's io_units: the group's devices are alike in it
        for d in g.devices:
            what = f"{d.kind} {d.model}".strip()
            counts[what] += 1
            sizes[what] = max(sizes.get(what, 0), units)
    paid = sum(sizes[w] * n for w, n in counts.items())
    return prep.fixed_io_units + max(0, paid - _slack_units(prep)), counts, sizes


def io_bound(prep: Prepared) -> None:
    machine = prep.problem.machine
    fw = prep.problem.firmware
    capacity = fw.io_capacity_units() if fw is not None else 0
    if fw is None or capacity <= 0:
        return
    budget = max(capacity, prep.fixed_io_units)  # as in the model: a given layout is never made worse
    need, counts, sizes = io_lower_bound(prep)
    if need <= budget:
        return
    big, n_big = max(counts.items(), key=lambda kv: (sizes[kv[0]] * kv[1], kv[0]))
    fit = max(0, n_big - -(-(need - budget) // sizes[big]))
    acpi = "" if prep.problem.acpi or fw.uefi else " without ACPI"
    firmware = f"{fw.label} on {machine.family}{acpi}"
    io = Limit.IO_SPACE
    reasons = [
        Reason(io, f"I/O bound: the legacy I/O BARs these devices have wherever they go need at least "
               f"{need * IO_UNIT} bytes of I/O space ({_describe(counts, sizes)}; "
               f"{prep.fixed_io_units * IO_UNIT} bytes for what the guest already places); "
               f"{firmware} has {capacity * IO_UNIT} bytes"),
        Reason(io, f"at most {fit} of the {n_big} × {big} fit beside the other devices", Role.LARGEST),
    ]
    if machine.pcie:
        reasons.append(Reason(io, "suggestion: allow bus=pcie for the virtio devices (modern virtio on a "
                              "PCIe port has no I/O BAR), or use their virtio-non-transitional models",
                              Role.SUGGESTION))
    else:
        reasons.append(Reason(io, "suggestion: convert the guest to q35 (pciplan fleet --to-machine q35), "
                              "where virtio devices on PCIe ports need no I/O space", Role.SUGGESTION))
    raise Infeasible(reasons)


def _used_bus_numbers(prep: Prepared) -> int:
    return sum(b.model.buses for b in prep.problem.buses.values() if not b.droppable)


def function_bound(prep: Prepared) -> None:
    """Functions to place versus slots: existing free slots hold 8 functions each, and every new bus
    (one bus number) at most 32 slots of 8. Where every new bus is a conventional bridge with an I/O
    window (pc), the firmware's I/O space also caps how many bridges there can be."""
    machine = prep.problem.machine
    # (only a whole-slot group's devices have companions)
    functions = sum(len(g.devices) for g in prep.groups) + sum(
        len(d.companions) for g in prep.groups if g.key.whole_slot for d in g.devices)
    if not functions:
        return
    reserved = machine.reserved_slots
    free_slots = sum(len(st.free_slots(reserved)) + len(st.optional_slots()) for st in prep.states.values())
    existing = FUNCTIONS * free_slots
    bus_numbers = MAX_BUS_NUMBERS - _used_bus_numbers(prep)
    new_buses = max(0, bus_numbers)
    limit = f"{bus_numbers} bus numbers left of the {MAX_BUS_NUMBERS} of a PCI domain"
    fw = prep.problem.firmware
    capacity = fw.io_capacity_units() if fw is not None else 0
    if not machine.pcie and capacity > 0:
        bridges = max(0, capacity - prep.fixed_io_units) // IO_WINDOW_UNITS
        if bridges < new_buses:
            new_buses = bridges
            limit = (f"room for at most {bridges} more pci-bridge I/O windows of 4 KiB in the firmware's "
                     f"{capacity * IO_UNIT} bytes of I/O space")
    most = existing + FUNCTIONS * SLOTS_PER_BUS * new_buses
    if functions <= most:
        return
    raise Infeasible([
        Reason(Limit.FUNCTIONS, f"function bound: {functions} PCI functions to place; the existing buses "
               f"have {free_slots} free slot(s) and there is {limit}, so at most {most} functions fit"),
        Reason(Limit.FUNCTIONS, f"at most {most} of the {functions} devices (functions) can be placed; "
               f"remove {functions - most} of them", Role.LARGEST),
    ])


def bus_number_bound(prep: Prepared) -> None:
    """Devices that must each sit alone in a hot-pluggable PCIe port (hotplug=yes, PCIe only) need one
    bus number each: a root or downstream port is a bus."""
    alone = [g for g in prep.groups if g.key.hotplug == "yes" and g.key.bus == "pcie"]
    need = sum(g.size for g in alone)
    if not need:
        return
    free_ports = sum(1 for st in prep.states.values()
                     if st.bus.model.name in PORTS and st.bus.hotplug and not st.used)
    left = MAX_BUS_NUMBERS - _used_bus_numbers(prep)
    # a switch takes two bus numbers (root port, upstream port) before its downstream ports
    most = free_ports + max(0, left)
    if need <= most:
        return
    names = ", ".join(g.name for g in alone[:3])
    raise Infeasible([Reason(
        Limit.BUS_NUMBERS,
        f"bus-number bound: {need} devices must each sit alone in a hot-pluggable PCIe port ({names}); "
        f"a port is a bus, and {left} of the {MAX_BUS_NUMBERS} bus numbers are left ({free_ports} empty "
        f"port(s) given), so at most {most} such ports can exist",
    )])  # the planner adds the exact number that can be hot-pluggable (a relaxed solve)


def check_bounds(prep: Prepared) -> None:
    """Refuse at once what a cheap bound proves impossible (raises Infeasible)."""
    io_bound(prep)
    function_bound(prep)
    bus_number_bound(prep)
