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
    hotplug_kinds: frozenset[str] = frozenset()  # device kinds that must be hot-pluggable (hard)
    no_hotplug_kinds: frozenset[str] = frozenset()  # device kinds that must not be ejectable (hard)
    bus: str = "default"  # pcie | pci | any: where devices may go (default: libvirt's classification)
    policy: str | None = None  # a TOML policy file of rules (lowest precedence)
    use_metadata: bool = True  # read rules from the domain's <metadata>
    host_numa: bool = False  # --host-numa auto: place host devices on their host node's guest cell
    to_machine: str | None = None  # "q35": convert a pc guest first (planner.pipeline.convert)
    relax_hotplug: bool = False  # treat hotplug=yes as a wish (to find how many can be)
    firmware: str | None = None  # seabios | ovmf | aavmf | none: plan for it (None: the guest's own)
    reserve: tuple[tuple[str, int], ...] = ()  # --reserve KIND[:MODEL]=N: free hot-plug places (hard)
    objective_order: tuple[str, ...] | None = None  # the order of the middle levels (None: metadata,
    # policy, else OBJECTIVE_DEFAULT)


# The objective's levels the user may order (planner/pipeline/solver/objective.py); keeping the input's
# addresses always comes first, the tie-breaks always last.
OBJECTIVE_DEFAULT = ("hotplug", "pcie", "controllers", "buses")


# Kinds of <devices> children that can take a PCI address (the vocabulary of --hotplug and friends).
DEVICE_KINDS = frozenset({
    "interface", "disk", "hostdev", "controller", "video", "sound", "watchdog", "memballoon", "rng",
    "vsock", "input", "filesystem", "memory", "shmem", "serial", "iommu",
})
BUS_CHOICES = ("default", "pcie", "pci", "any", "mmio")  # mmio: virtio-mmio (aarch64/riscv64 virt)

# What a reservation without a model reserves for: the model management tools hot-plug by default.
RESERVE_DEFAULT_MODEL = {"interface": "virtio", "disk": "virtio", "hostdev": "pci"}
