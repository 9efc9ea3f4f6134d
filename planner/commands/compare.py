"""Optimal versus greedy: plan a guest with pciplan and with libvirt's greedy assignment (the built-in
re-implementation or real libvirt) and measure both layouts the same way."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from planner.facts.errors import Infeasible
from planner.facts.options import OBJECTIVE_DEFAULT
from planner.pipeline.domain import read_problem
from planner.pipeline.metrics import LayoutMetrics, measure, objective_vector
from planner.pipeline.plan import objective_order_of, plan_tree
from planner.xml.xmlio import InputError, parse_domain_bytes


@dataclass
class Comparison:
    source: str
    machine: str
    devices: int
    pciplan: LayoutMetrics
    greedy: LayoutMetrics
    greedy_kind: str
    order: tuple[str, ...] = OBJECTIVE_DEFAULT  # the objective's levels 2-5 as the plan used them

    @property
    def controllers_saved(self) -> int | None:
        if not (self.pciplan.ok and self.greedy.ok):
            return None
        return sum(self.greedy.controllers_added.values()) - sum(self.pciplan.controllers_added.values())

    def levels(self, m: LayoutMetrics) -> dict[str, int] | None:
        """m's objective levels, by name, in the order used; None when m failed."""
        if not m.ok:
            return None
        vector = dict(zip(OBJECTIVE_DEFAULT, objective_vector(m, self.machine), strict=True))
        return {name: vector[name] for name in self.order}

    def verdict(self) -> str:
        """Which layout the objective prefers, and at which level."""
        ours, theirs = self.levels(self.pciplan), self.levels(self.greedy)
        if ours is None or theirs is None:
            return "–"
        if self.greedy.rule_violations and not self.pciplan.rule_violations:
            return "pciplan (the greedy's layout breaks a rule)"
        for name in self.order:
            if ours[name] != theirs[name]:
                return f"{'pciplan' if ours[name] < theirs[name] else 'greedy'} ({LEVEL_NAMES[name]})"
        return "equal"

    def as_json(self) -> dict:
        out = asdict(self)
        out["controllers_saved"] = self.controllers_saved
        out["objective"] = {"order": list(self.order), "pciplan": self.levels(self.pciplan),
                            "greedy": self.levels(self.greedy), "better": self.verdict()}
        return out


def _greedy(kind: str):
    if kind == "libvirt":
        from planner.stack import shared_stack

        stack = shared_stack()

        def run_libvirt(xml: str) -> tuple[bool, str | None, str | None]:
            r = stack.define(xml)
            return r.ok, r.error, r.xml

        return run_libvirt
    from planner.pipeline.greedy import greedy_plan

    def run_builtin(xml: str) -> tuple[bool, str | None, str | None]:
        r = greedy_plan(xml)
        return r.ok, r.error, r.xml

    return run_builtin


def compare(data: bytes, source: str, greedy: str = "builtin", time_limit: float = 10.0,
            firmware: str | None = None) -> Comparison:
    """Plan data both ways. InputError propagates (bad input is bad for both)."""
    from planner.facts.options import PlanOptions

    before = parse_domain_bytes(data, source)
    machine = read_problem(parse_domain_bytes(data, source))
    devices = sum(1 + len(d.companions) for d in machine.devices)
    tree = parse_domain_bytes(data, source)
    start = time.perf_counter()
    try:
        s = plan_tree(tree, PlanOptions(time_limit=time_limit, firmware=firmware))
        ours = measure(before, tree, firmware)
        ours.status = s.status.lower()
    except Infeasible as exc:
        ours = LayoutMetrics(ok=False, error="; ".join(exc.reasons))
    ours.seconds = time.perf_counter() - start
    start = time.perf_counter()
    ok, error, xml = _greedy(greedy)(data.decode())
    seconds = time.perf_counter() - start
    if ok and xml is not None:
        theirs = measure(before, parse_domain_bytes(xml.encode(), source), firmware)
    else:
        theirs = LayoutMetrics(ok=False, error=error)
    theirs.seconds = seconds
    kind = "libvirt 9.0 (embedded driver)" if greedy == "libvirt" else "built-in greedy (libvirt's algorithm)"
    order = objective_order_of(parse_domain_bytes(data, source), PlanOptions())
    return Comparison(source, machine.machine.family, devices, ours, theirs, kind, order)


def versus_greedy(c: Comparison) -> str | None:
    """fewer / equal / more controllers than the greedy, where both plan and the greedy's layout passes
    the checker (same firmware budget); None otherwise."""
    if not (c.pciplan.ok and c.greedy.ok) or c.greedy.rule_violations:
        return None
    saved = c.controllers_saved or 0
    return "fewer" if saved > 0 else "equal" if saved == 0 else "more"


ROWS = [
    ("succeeds", lambda m: "yes" if m.ok else "FAILS"),
    ("controllers added", lambda m: sum(m.controllers_added.values()) if m.ok else "–"),
    ("  by model", lambda m: ", ".join(f"{n} {k}" for k, n in m.controllers_added.items()) or "none"
     if m.ok else "–"),
    ("bus numbers used", lambda m: m.bus_numbers if m.ok else "–"),
    ("devices in hot-pluggable slots", lambda m: m.hotplug_devices if m.ok else "–"),
    ("PCIe-capable devices on conventional PCI", lambda m: m.pcie_on_conventional if m.ok else "–"),
    ("spare hot-plug ports / slots", lambda m: f"{m.spare_hotplug_ports} / {m.spare_hotplug_slots}"
     if m.ok else "–"),
    ("rule / firmware violations", lambda m: len(m.rule_violations) if m.ok else "–"),
    ("time (s)", lambda m: f"{m.seconds:.3f}"),
]


# What each objective level counts (objective_vector; smaller is better).
LEVEL_NAMES = {
    "hotplug": "hot-plug: minus devices in hot-pluggable slots, plus 1 without a spare port/slot",
    "pcie": "PCIe-capable devices on conventional PCI",
    "controllers": "controllers added",
    "buses": "bus numbers used",
}


def table_rows(c: Comparison) -> list[tuple[str, str, str]]:
    ours, theirs = c.levels(c.pciplan), c.levels(c.greedy)
    rows = [("objective, level by level in the order used (smaller wins)", "", "")]
    for i, name in enumerate(c.order, start=2):
        rows.append((f"  L{i} {LEVEL_NAMES[name]}", str(ours[name]) if ours else "–",
                     str(theirs[name]) if theirs else "–"))
    rows.append(("  better by the objective", c.verdict(), ""))
    rows += [(name, str(get(c.pciplan)), str(get(c.greedy))) for name, get in ROWS]
    if c.pciplan.status:
        rows.insert(len(c.order) + 3, ("solver status", c.pciplan.status, "–"))
    for who, m in (("pciplan", c.pciplan), ("greedy", c.greedy)):
        if not m.ok:
            rows.append((f"{who} error", (m.error or "")[:200], ""))
    return rows


def load_and_compare(path: str, greedy: str, time_limit: float, firmware: str | None = None) -> Comparison:
    from pathlib import Path

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    return compare(data, path, greedy, time_limit, firmware)


def plot(comparisons: list[Comparison], path: str) -> None:
    """Controllers added per guest, both planners side by side, and the distribution of the saving."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.source.rsplit("/", 1)[-1].removesuffix(".xml") for c in comparisons]
    ours = [sum(c.pciplan.controllers_added.values()) if c.pciplan.ok else 0 for c in comparisons]
    theirs = [sum(c.greedy.controllers_added.values()) if c.greedy.ok else 0 for c in comparisons]
    height = max(4.0, 0.28 * len(names) + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(13, height), gridspec_kw={"width_ratios": [3, 1]})
    ys = range(len(names))
    axes[0].barh([y + 0.2 for y in ys], ours, height=0.4, label="pciplan", color="tab:blue")
    axes[0].barh([y - 0.2 for y in ys], theirs, height=0.4, label="greedy", color="tab:orange")
    for y, c in zip(ys, comparisons, strict=True):
        if not c.greedy.ok:
            axes[0].text(0.5, y - 0.2, "greedy fails", va="center", fontsize=7, color="tab:red")
    axes[0].set_yticks(list(ys), names, fontsize=7)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("PCI controllers added")
    axes[0].legend(loc="lower right")
    saved = [c.controllers_saved for c in comparisons if c.controllers_saved is not None]
    if saved:
        axes[1].hist(saved, bins=range(min(saved), max(saved) + 2), color="tab:green", align="left")
    axes[1].set_xlabel("controllers saved by pciplan")
    axes[1].set_ylabel("guests")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
