"""Did the guest's firmware set up PCI? SeaBIOS's debug log; UEFI (OVMF/AAVMF) through QMP query-pci."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------------------------------------------
# UEFI (OVMF, AAVMF): release builds log nothing on 0x402. Let the firmware reach its boot manager
# (PCI enumeration and resource assignment are done before BDS prints anything), pause it, and read
# what it assigned from QEMU: QMP query-pci, and raw config space where QEMU shows a BAR unmapped
# (UEFI leaves devices without a driver with decoding off, which QEMU reports as unmapped).

# Debian 12's files (packages ovmf, qemu-efi-aarch64): non-secure-boot code and a vars template.
UEFI_FILES = {
    "ovmf": ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    "aavmf": ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
}
UEFI_LABEL = {"ovmf": "OVMF", "aavmf": "AAVMF"}
# OVMF's platform boot manager connects the PCI root bridges (PciBusDxe numbers every bus and assigns
# every window and BAR in one pass) before it connects the consoles; the serial terminal's first
# output (a terminal escape sequence) therefore comes after resource assignment. Release builds print
# no DEBUG lines, so that first escape is the marker (AAVMF's "UEFI firmware (version ...)" banner
# comes from its first phase, before PCI); the boot manager proper (iPXE, the shell) follows seconds to
# minutes later, after every NIC's option ROM ran.
UEFI_CONSOLE = re.compile(r"\x1b\[")
UEFI_CRASH = re.compile(r"Synchronous Exception|ASSERT_EFI_ERROR|ASSERT \[")  # edk2's fatal messages
UEFI_SETTLE_SECONDS = 2.0  # let the console's first burst finish
UEFI_SECONDS = 120.0  # TCG: 5-60 s measured; a busy 2-core machine needs more
PCI_BAR_UNMAPPED = (-1, (1 << 64) - 1)
# QEMU virt (aarch64) ECAM: the high one (virt >= 2.12 with highmem), else the low one.
VIRT_ECAM_BASES = (0x4010000000, 0x3F000000)


def set_uefi_loader(root: etree._Element, firmware: str, workdir: Path) -> None:
    """Boot root with this machine's OVMF/AAVMF (pflash code + a fresh copy of the vars template)."""
    code, template = UEFI_FILES[firmware]
    os_el = root.find("os")
    if os_el is None:
        os_el = etree.SubElement(root, "os")
    os_el.attrib.pop("firmware", None)
    for tag in ("loader", "nvram", "firmware"):
        for el in os_el.findall(tag):
            os_el.remove(el)
    ostype = os_el.find("type")
    at = list(os_el).index(ostype) + 1 if ostype is not None else 0
    loader = etree.Element("loader", readonly="yes", type="pflash")
    loader.text = code
    nvram = etree.Element("nvram", template=template)
    nvram.text = str(workdir / "VARS.fd")
    os_el.insert(at, loader)
    os_el.insert(at + 1, nvram)


def log_serial_console(root: etree._Element, log_path: Path) -> None:
    """Send the first platform serial port (the firmware's console) to log_path."""
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    for console in devices.findall("console"):
        devices.remove(console)  # libvirt re-adds the console of serial 0 itself
    serial = next((s for s in devices.findall("serial") if s.find("address") is None
                   and (s.find("target") is None or s.find("target").get("type") in (None, "isa-serial",
                                                                                    "system-serial"))), None)
    if serial is None:
        serial = etree.SubElement(devices, "serial")
    for child in list(serial):
        if child.tag != "target":
            serial.remove(child)
    serial.set("type", "file")
    serial.insert(0, etree.Element("source", path=str(log_path)))


def wait_for_console(log_path: Path, seconds: float, state: Any = None) -> tuple[bool, str]:
    """Poll the serial log until the firmware's console speaks or it crashes; (reached, tail of the log).
    state: a callable returning a reason string when the guest stopped (QEMU internal error)."""
    deadline = time.monotonic() + seconds
    text = ""
    while True:
        with contextlib.suppress(FileNotFoundError):
            text = log_path.read_text(errors="replace")
        if UEFI_CONSOLE.search(text):
            time.sleep(UEFI_SETTLE_SECONDS)
            with contextlib.suppress(FileNotFoundError):
                text = log_path.read_text(errors="replace")
            return True, _tail(text)
        stopped = state() if state is not None else None
        if UEFI_CRASH.search(text):
            stopped = "the firmware crashed; "
        if stopped or time.monotonic() >= deadline:
            return False, (stopped or "") + _tail(text)
        time.sleep(0.5)


def _tail(text: str) -> str:
    clean = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return "\n".join(line for line in clean.splitlines()[-15:] if line.strip())


@dataclass
class PciFunction:
    bus: int
    slot: int
    function: int
    qdev_id: str
    regions: list[dict]
    bridge: dict | None  # query-pci's pci_bridge.bus: number, secondary, subordinate, *_range
    parent: PciFunction | None

    @property
    def where(self) -> str:
        name = f" ({self.qdev_id})" if self.qdev_id else ""
        return f"{self.bus:02x}:{self.slot:02x}.{self.function:x}{name}"


def flatten_query_pci(result: list[dict]) -> list[PciFunction]:
    """Every function of query-pci's tree, each with the bridge above it (None on a root bus)."""
    out: list[PciFunction] = []

    def walk(devices: list[dict], parent: PciFunction | None) -> None:
        for d in devices:
            bridge = d.get("pci_bridge")
            f = PciFunction(d["bus"], d["slot"], d["function"], d.get("qdev_id", ""), d.get("regions", []),
                            bridge.get("bus") if bridge else None, parent)
            out.append(f)
            if bridge:
                walk(bridge.get("devices", []), f)

    for bus in result:
        walk(bus.get("devices", []), None)
    return out


def _window(bridge: dict, region: dict) -> list[tuple[int, int]]:
    """The bridge windows a BAR may sit in: I/O; memory; prefetchable BARs also the prefetchable one."""
    def rng(key: str) -> tuple[int, int] | None:
        r = bridge.get(key)
        if not r or r["base"] > r["limit"]:
            return None
        return r["base"], r["limit"]
    keys = ["io_range"] if region["type"] == "io" else ["memory_range"]
    if region["type"] != "io" and region.get("prefetch"):
        keys.append("prefetchable_range")
    return [w for w in (rng(k) for k in keys) if w is not None]


def check_assignment(functions: list[PciFunction], read_bar: Any, expected_ids: set[str],
                     label: str) -> list[str]:
    """What the firmware left undone: a device QEMU has that the firmware never reached (not in the
    enumerated tree), a BAR left at 0 or at its sizing pattern, a BAR outside its bridge's windows.
    read_bar(function, bar) -> (low dword, high dword or None) reads the raw BAR (QEMU unmapped)."""
    errors = []
    seen = {f.qdev_id for f in functions}
    for missing in sorted(expected_ids - seen):
        errors.append(f"{label} did not enumerate {missing} (its bus was never numbered)")
    for f in functions:
        for r in f.regions:
            if r["bar"] >= 6:
                continue  # the expansion ROM: firmware may leave it off once it ran the ROM
            address = r["address"]
            if address in PCI_BAR_UNMAPPED:
                low, high = read_bar(f, r["bar"])
                mask = 0xFFFFFFFC if r["type"] == "io" else 0xFFFFFFF0
                sizing = (~(r["size"] - 1)) & mask
                value = low & mask
                if r.get("mem_type_64") and high is not None:
                    value |= high << 32
                    sizing_64 = (~(r["size"] - 1)) & ((1 << 64) - 16)
                    unassigned = value in (0, sizing_64)
                else:
                    unassigned = value in (0, sizing)
                if unassigned:
                    errors.append(f"{f.where}: BAR {r['bar']} ({r['type']}, {r['size']} bytes) never "
                                  f"assigned by {label} (raw {value:#x})")
                    continue
                address = value
            if f.parent is None or f.parent.bridge is None:
                continue
            end = address + r["size"] - 1
            windows = _window(f.parent.bridge, r)
            if not any(lo <= address and end <= hi for lo, hi in windows):
                errors.append(f"{f.where}: BAR {r['bar']} ({r['type']}) at {address:#x}-{end:#x} is outside "
                              f"the windows of bridge {f.parent.where}")
    return errors


def x86_config_reader(hmp: Any) -> Any:
    """read_bar through the PCI configuration ports 0xcf8/0xcfc (HMP o/i), for a paused x86 guest."""
    def dword(f: PciFunction, offset: int) -> int:
        address = 0x80000000 | (f.bus << 16) | (f.slot << 11) | (f.function << 8) | offset
        hmp(f"o /w 0xcf8 {address:#x}")
        return int(hmp("i /w 0xcfc").rsplit("=", 1)[-1].strip(), 16)

    def read_bar(f: PciFunction, bar: int) -> tuple[int, int | None]:
        if bar >= 6:  # expansion ROM (bar 6 in query-pci): config offset 0x30
            return dword(f, 0x30), None
        return dword(f, 0x10 + 4 * bar), dword(f, 0x14 + 4 * bar) if bar < 5 else None
    return read_bar


def ecam_config_reader(hmp: Any) -> Any:
    """read_bar through the virt machine's ECAM (HMP xp), for a paused aarch64 guest."""
    def xp(address: int) -> int:
        return int(hmp(f"xp /1wx {address:#x}").rsplit(":", 1)[-1].strip(), 16)

    base = next((b for b in VIRT_ECAM_BASES if xp(b) & 0xFFFF == 0x1B36), VIRT_ECAM_BASES[0])

    def dword(f: PciFunction, offset: int) -> int:
        return xp(base + ((f.bus << 20) | (f.slot << 15) | (f.function << 12) | offset))

    def read_bar(f: PciFunction, bar: int) -> tuple[int, int | None]:
        if bar >= 6:
            return dword(f, 0x30), None
        return dword(f, 0x10 + 4 * bar), dword(f, 0x14 + 4 * bar) if bar < 5 else None
    return read_bar
