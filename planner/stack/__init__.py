"""Prove a domain XML on the real stack: libvirt's embedded QEMU driver, QEMU itself and the guest's
firmware (SeaBIOS, OVMF, AAVMF).

By concern: ``driver`` (the process's embedded libvirt and the adapter), ``boot`` (a bootable copy of
the XML and QEMU's device tree), ``firmware`` (what the firmware set up), ``diff`` (what libvirt
changed) and ``model`` (shared records and XML helpers). The libvirt binding is imported lazily, so
this package imports without it.
"""

from planner.stack.boot import (
    QtreeDevice,
    compare_placements,
    hotplug_targets,
    parse_qtree,
    prepare_for_boot,
)
from planner.stack.diff import diff_layouts
from planner.stack.driver import EmbeddedLibvirt, StackReport, default_root, shared_stack, verify
from planner.stack.model import (
    BootResult,
    Change,
    DefineResult,
    FirmwareResult,
    StackUnavailable,
    emulator_for,
)

__all__ = [
    "BootResult", "Change", "DefineResult", "EmbeddedLibvirt", "FirmwareResult", "QtreeDevice",
    "StackReport", "StackUnavailable", "compare_placements", "default_root", "diff_layouts",
    "emulator_for", "hotplug_targets", "parse_qtree", "prepare_for_boot", "shared_stack", "verify",
]
