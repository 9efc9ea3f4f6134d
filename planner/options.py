"""Planning options (typed config, as the CP-SAT primer recommends)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlanOptions:
    spare_pcie: int | None = None  # empty hot-pluggable PCIe ports to keep (None: the machine's default)
    spare_pci: int | None = None  # free hot-pluggable conventional slots to keep (None: machine default)
    time_limit: float = 10.0  # seconds of solver time
    workers: int = 1  # 1 keeps the search deterministic: same input, same output
    replan: bool = False  # drop planner-managed addresses and controllers and plan from scratch
    no_hotplug_kinds: frozenset[str] = frozenset()  # device kinds that do not ask for a hot-pluggable slot
