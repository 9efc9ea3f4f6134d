"""The slots of the new bridges are pooled in the main model (they are interchangeable). Which bridge
gets which devices decides the firmware's I/O: each bridge's window is the sum of the I/O BARs below it
rounded up to 4 KiB (at least one window, even when empty). This module splits the pooled counts over
the bridges so that the windows are as few as possible: a small exact model of its own, solved after
the main one. A nested bridge's window lies inside its parent's, so the parent pays only its own BARs
on top. The main model counts max(bridges without nested ones, ⌈pooled BARs / 4 KiB⌉) windows, a
relaxation; when the split needs more and the budget is then exceeded, the solver adds a cut and
solves again."""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.facts.facts import FUNCTIONS, IO_WINDOW_UNITS, SLOTS_PER_BRIDGE
from planner.pipeline.solver import cpmodel as cp_model

DETERMINISTIC_LIMIT = 5.0  # CP-SAT work units (about seconds); these models settle in milliseconds


@dataclass(frozen=True)
class PoolContent:
    """What the main model put into the new bridges, as counts."""

    bridges: int  # every new conventional bridge, nested ones included
    nested: int  # pci-bridges nested in slots of the new bridges
    alone: tuple[tuple[int, int, int], ...]  # (group, devices, I/O units each): one slot each
    packed: tuple[tuple[int, int, int], ...]  # (group, devices, I/O units each): 8 to a slot
    packslots: int  # slots the main model gave to packs


@dataclass
class PoolSplit:
    """Per bridge (in unfolding order): devices alone and packed by group, pack slots, windows."""

    alone: list[dict[int, int]] = field(default_factory=list)
    packed: list[dict[int, int]] = field(default_factory=list)
    packslots: list[int] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)
    optimal: bool = True

    @property
    def total_windows(self) -> int:
        return sum(self.windows)


def rooms(bridges: int, nested: int) -> list[int]:
    """Free slots of each bridge once the nested pci-bridges took theirs: the unfolding puts each nested
    bridge in the first bridge (in creation order) that still has a slot."""
    room = [SLOTS_PER_BRIDGE] * (bridges - nested)
    for _ in range(nested):
        k = next(i for i, r in enumerate(room) if r)
        room[k] -= 1
        room.append(SLOTS_PER_BRIDGE)
    return room


def _least(room: int) -> int:
    """SeaBIOS's minimal window (4 KiB, as 1) of a bridge, unless a nested bridge took one of its slots."""
    return 1 if room == SLOTS_PER_BRIDGE else 0


def split(content: PoolContent, io_matters: bool = True) -> PoolSplit:
    """The split of the pooled devices over the bridges with the fewest I/O windows (io_matters: the
    machine has an I/O budget; without one, bridges are simply filled in order)."""
    room = rooms(content.bridges, content.nested)
    n = len(room)
    out = PoolSplit()
    if n == 0:
        return out
    loaded = any(u for _, c, u in content.alone + content.packed if c)
    if not loaded or not io_matters:  # no I/O below: any split is as good; fill in order
        return _fill_in_order(content, room)
    if n == 1:
        filled = _fill_in_order(content, room)
        if filled.windows[0] <= 2 * SLOTS_PER_BRIDGE:
            # one bridge holds everything: its window is its load rounded up, as the model below would
            # find (no solve, so a plan planner.pipeline.certificate proves needs no OR-Tools)
            return filled
    m = cp_model.CpModel()
    a = {(b, g): m.NewIntVar(0, min(c, room[b]), f"a{b}_{g}") for b in range(n) for g, c, _ in content.alone}
    p = {(b, g): m.NewIntVar(0, min(c, FUNCTIONS * room[b]), f"p{b}_{g}")
         for b in range(n) for g, c, _ in content.packed}
    s = [m.NewIntVar(0, room[b], f"s{b}") for b in range(n)]
    # a bridge holding a nested bridge holds that one's window: no minimal window of its own
    w = [m.NewIntVar(_least(room[b]), 2 * SLOTS_PER_BRIDGE, f"w{b}") for b in range(n)]
    for g, c, _ in content.alone:
        m.Add(sum(a[b, g] for b in range(n)) == c)
    for g, c, _ in content.packed:
        m.Add(sum(p[b, g] for b in range(n)) == c)
    m.Add(sum(s) <= max(content.packslots, 0))
    for b in range(n):
        m.Add(sum(a[b, g] for g, _, _ in content.alone) + s[b] <= room[b])
        m.Add(sum(p[b, g] for g, _, _ in content.packed) <= FUNCTIONS * s[b])
        load = sum(u * a[b, g] for g, _, u in content.alone) + sum(u * p[b, g] for g, _, u in content.packed)
        m.Add(load <= IO_WINDOW_UNITS * w[b])
    for b in range(n - 1):  # bridges of equal room are interchangeable: order them
        if room[b] == room[b + 1]:
            m.Add(w[b] >= w[b + 1])
    m.Minimize(sum(w))
    solver = cp_model.CpSolver()
    # a deterministic work limit, so that the same input always gives the same split
    solver.parameters.max_deterministic_time = DETERMINISTIC_LIMIT
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    status = solver.Solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return _fill_in_order(content, room, optimal=False)  # cannot happen: the main model fits the slots
    for b in range(n):
        out.alone.append({g: solver.Value(a[b, g]) for g, _, _ in content.alone})
        out.packed.append({g: solver.Value(p[b, g]) for g, _, _ in content.packed})
        out.packslots.append(solver.Value(s[b]))
        out.windows.append(solver.Value(w[b]))
    out.optimal = status == cp_model.OPTIMAL
    return out


def _fill_in_order(content: PoolContent, room: list[int], optimal: bool = True) -> PoolSplit:
    """Bridge after bridge, alone devices then packs, each bridge filled before the next."""
    out = PoolSplit(optimal=optimal)
    left = list(room)
    alone = {g: c for g, c, _ in content.alone}
    packed = {g: c for g, c, _ in content.packed}
    units = {g: u for g, _, u in content.alone + content.packed}
    for b in range(len(room)):
        here: dict[int, int] = {}
        for g in sorted(alone):
            k = min(alone[g], left[b])
            here[g], alone[g], left[b] = k, alone[g] - k, left[b] - k
        out.alone.append(here)
        in_packs: dict[int, int] = {}
        for g in sorted(packed):
            k = min(packed[g], FUNCTIONS * left[b] - sum(in_packs.values()))
            in_packs[g], packed[g] = k, packed[g] - k
        slots = -(-sum(in_packs.values()) // FUNCTIONS)
        left[b] -= slots
        out.packed.append(in_packs)
        out.packslots.append(slots)
        load = sum(units[g] * k for g, k in here.items()) + sum(units[g] * k for g, k in in_packs.items())
        out.windows.append(max(_least(room[b]), -(-load // IO_WINDOW_UNITS)))
    return out
