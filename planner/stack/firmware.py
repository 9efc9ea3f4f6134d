"""Did the guest's firmware set up PCI? SeaBIOS's debug log; UEFI (OVMF/AAVMF) through QMP query-pci."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from lxml import etree

from planner.stack.model import (
    QEMU_NS,
    SEABIOS_ALLOCATED,
    SEABIOS_ALLOCATION,
    SEABIOS_FATAL,
    SEABIOS_PAST_PCI,
    FirmwareResult,
)


def _add_debugcon(root: etree._Element, log_path: Path) -> None:
    """Route SeaBIOS' debug port (0x402) to log_path through <qemu:commandline>."""
    commandline = root.find(f"{{{QEMU_NS}}}commandline")
    if commandline is None:
        commandline = etree.SubElement(root, f"{{{QEMU_NS}}}commandline", nsmap={"qemu": QEMU_NS})
    for value in ("-chardev", f"file,id=pciplan-seabios,path={log_path}",
                  "-device", "isa-debugcon,iobase=0x402,chardev=pciplan-seabios"):
        etree.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=value)


# ---------------------------------------------------------------------------------------------------


def _read_firmware_log(log_path: Path, seconds: float) -> FirmwareResult:
    """Poll SeaBIOS' debug log until PCI resource allocation succeeded, failed, or seconds passed."""
    deadline = time.monotonic() + seconds
    text = ""
    while True:
        with contextlib.suppress(FileNotFoundError):
            text = log_path.read_text(errors="replace")
        fatal = SEABIOS_FATAL.findall(text)
        allocated = SEABIOS_ALLOCATED.search(text) is not None
        past_pci = SEABIOS_PAST_PCI.search(text) is not None
        if fatal or allocated or past_pci or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    tail = "\n".join(text.splitlines()[-25:])
    if fatal:
        return FirmwareResult(True, False, [line.strip() for line in fatal], tail)
    if allocated and SEABIOS_ALLOCATION in text:
        return FirmwareResult(True, True, [], tail)
    if past_pci:
        warnings = [line for line in text.splitlines() if line.startswith("WARNING")]
        return FirmwareResult(True, False, ["SeaBIOS skipped PCI resource allocation", *warnings], tail)
    phases = re.findall(r"^=== (.+) ===$", text, re.MULTILINE)
    stalled = f" (still in '{phases[-1]}')" if phases else ""
    return FirmwareResult(
        True, False, [f"SeaBIOS did not finish PCI allocation within {seconds:g} s{stalled}"], tail
    )


# ---------------------------------------------------------------------------------------------------
