"""Shared vocabulary of the real-stack adapter: constants, result records and small XML helpers."""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from lxml import etree

from planner.xml.xmlio import parse_domain_bytes

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
EMULATORS = {
    "x86_64": "/usr/bin/qemu-system-x86_64",
    "i686": "/usr/bin/qemu-system-i386",
    "aarch64": "/usr/bin/qemu-system-aarch64",
    "riscv64": "/usr/bin/qemu-system-riscv64",
}
ROOT_ENV = "PCIPLAN_LIBVIRT_ROOT"
# QEMU's monitor socket is ROOT/lib/qemu/domain-<id>-<name, 20 chars>/monitor.sock and a UNIX socket
# path holds at most 107 bytes: keep ~60 for the part below the root.
MAX_ROOT_LENGTH = 48
# namespaces = []: QEMU runs in the host's mount namespace. Nothing here needs libvirt's private /dev,
# and building it fails outright when the host's /dev/null is not a device node.
QEMU_CONF = (
    'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nsecurity_driver = "none"\nstdio_handler = "file"\n'
    'namespaces = []\n'
)
MAX_HOTPLUG_PROBES = 16
X86_ARCHES = ("x86_64", "i686")  # SeaBIOS or OVMF; configuration ports 0xcf8/0xcfc
BINDING_MISSING = "libvirt Python binding not installed (Debian: python3-libvirt; PyPI: libvirt-python)"

# SeaBIOS 1.16.2 (measured here). pci_setup() logs "=== PCI new allocation pass #2 ===", places every
# BAR and bridge window, then initialises each device ("PCI: init bdf=00:00.0 id=8086:29c0"): that
# first init line means allocation succeeded. Device init can take minutes under TCG (1000 virtio
# NICs: not done in 60 s), so the later markers (smp_setup's "Found N cpu(s)", option ROM scan,
# boot) are not waited for. Failure: SeaBIOS panics right after pass #2 with "PCI: out of I/O
# address space" (or "... 32bit address space") and prints nothing more.
SEABIOS_ALLOCATION = "=== PCI new allocation pass #2 ==="
SEABIOS_ALLOCATED = re.compile(r"^PCI: init bdf=", re.MULTILINE)
SEABIOS_PAST_PCI = re.compile(
    r"^(?:Found \d+ cpu\(s\)|Scan for option roms|Searching bootorder|Booting from)", re.MULTILINE
)
SEABIOS_FATAL = re.compile(r"^.*(?:\bout of\b.*\bspace\b|\bpanic\b).*$", re.MULTILINE | re.IGNORECASE)

PCI_CONTROLLERS_WITH_ONE_HOTPLUG_SLOT = ("pcie-root-port", "pcie-switch-downstream-port")
PCI_BRIDGES = ("pci-bridge", "pcie-to-pci-bridge")
# Character devices whose host side needs nothing from this machine.
SELF_CONTAINED_CHARDEVS = ("pty", "null")
INTERFACE_KEPT_CHILDREN = ("mac", "model", "address", "alias", "boot", "rom", "acpi", "driver")
VIRTIO_DRIVER_ATTRIBUTES = ("iommu", "ats", "packed", "page_per_vq")


class StackUnavailable(Exception):
    """The real stack (libvirt binding, embedded QEMU driver or a QEMU emulator) is not usable here."""


@dataclass
class DefineResult:
    ok: bool
    error: str | None
    xml: str | None  # libvirt's completed inactive XML, with the caller's name/uuid/type/emulator restored


@dataclass
class Change:
    kind: str  # added-controller | added-device | moved-address | removed-device | changed-controller
    element: str
    detail: str


@dataclass
class BootResult:
    started: bool
    error: str | None
    placements: dict[str, tuple[int, int, int]]  # QEMU id -> (libvirt bus index, slot, function)
    mismatches: list[str]
    notes: list[str] = field(default_factory=list)  # what prepare_for_boot changed or dropped
    hotplug_probes: list[str] = field(default_factory=list)  # the empty slots a NIC was attached to


@dataclass
class FirmwareResult:
    ran: bool
    pci_setup_done: bool  # SeaBIOS placed every BAR and bridge window (its device init may still run)
    errors: list[str]
    log_tail: str
    name: str = "seabios"  # the firmware that ran: seabios | ovmf | aavmf | none
    label: str = "SeaBIOS"
    # It should have run but cannot here (its files are not installed, or pciplan has no recipe to boot
    # it): the check is not done, which is never a pass. Not set for "none", which has nothing to run.
    unavailable: bool = False


# ---------------------------------------------------------------------------------------------------
# The process-wide embedded driver


# XML helpers


def _parse(xml: str) -> etree._Element:
    """The <domain> root of xml; planner.xml.xmlio.InputError when it is not a domain XML."""
    return parse_domain_bytes(xml.encode()).getroot()


def _tostring(root: etree._Element) -> str:
    return etree.tostring(root, encoding="unicode")


def _arch(root: etree._Element) -> str:
    os_type = root.find("os/type")
    if os_type is not None and os_type.get("arch"):
        return os_type.get("arch")
    host = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(host, host)


def emulator_for(arch: str) -> str:
    """The local QEMU binary for arch; StackUnavailable when it is not installed."""
    path = EMULATORS.get(arch, f"/usr/bin/qemu-system-{arch}")
    if not os.access(path, os.X_OK):
        raise StackUnavailable(f"QEMU emulator {path} not found")
    return path


def _set_child_text(parent: etree._Element, tag: str, text: str) -> etree._Element:
    child = parent.find(tag)
    if child is None:
        child = etree.SubElement(parent, tag)
    child.text = text
    return child


def _remove(el: etree._Element) -> None:
    parent = el.getparent()
    if parent is not None:
        parent.remove(el)


def _int(value: str | None, default: int = 0) -> int:
    return default if value is None else int(value, 0)


def _pci_address(el: etree._Element) -> tuple[int, int, int, int] | None:
    """(domain, bus, slot, function) of a complete PCI address, else None (libvirt will assign one)."""
    addr = el.find("address")
    if addr is None or addr.get("type") != "pci" or addr.get("slot") is None:
        return None
    dom, bus, slot = _int(addr.get("domain")), _int(addr.get("bus")), _int(addr.get("slot"))
    if dom == 0 and bus == 0 and slot == 0:
        return None  # libvirt treats 0000:00:00 as "no address"
    return dom, bus, slot, _int(addr.get("function"))


def _multifunction(el: etree._Element) -> bool:
    addr = el.find("address")
    return addr is not None and addr.get("multifunction") == "on"


def _format_address(addr: tuple[int, int, int, int] | None, multifunction: bool = False) -> str:
    if addr is None:
        return "none"
    dom, bus, slot, fn = addr
    text = f"{bus:02x}:{slot:02x}.{fn:x}" if dom == 0 else f"{dom:04x}:{bus:02x}:{slot:02x}.{fn:x}"
    return text + (" multifunction=on" if multifunction else "")


def _devices(root: etree._Element) -> list[etree._Element]:
    devices = root.find("devices")
    if devices is None:
        return []
    return [el for el in devices if isinstance(el.tag, str) and el.tag != "emulator"]


def _alias(el: etree._Element) -> str | None:
    alias = el.find("alias")
    return alias.get("name") if alias is not None else None


def _describe(el: etree._Element) -> str:
    """A short human name for a device element: tag plus what identifies it."""
    parts = [el.tag]
    if el.tag == "controller":
        parts.append(f"type={el.get('type')} index={el.get('index', '0')}")
        if el.get("model"):
            parts.append(f"model={el.get('model')}")
    else:
        model = el.find("model")
        if el.get("type"):
            parts.append(f"type={el.get('type')}")
        if model is not None and (model.get("type") or model.get("name")):
            parts.append(f"model={model.get('type') or model.get('name')}")
        elif el.get("model"):
            parts.append(f"model={el.get('model')}")
    mac = el.find("mac")
    if mac is not None and mac.get("address"):
        parts.append(f"mac={mac.get('address')}")
    target = el.find("target")
    if el.tag == "disk" and target is not None and target.get("dev"):
        parts.append(f"target={target.get('dev')}")
    alias = _alias(el)
    if alias:
        parts.append(f"alias={alias}")
    return " ".join(parts)


def _pci_controller_index_by_bus_name(root: etree._Element) -> dict[str, int]:
    """QEMU bus name -> libvirt controller index: the controller's alias, else pci.N / pcie.0 / pci.0."""
    names = {"pcie.0": 0, "pci.0": 0, "pci": 0}
    for ctrl in root.iterfind("devices/controller[@type='pci']"):
        index = _int(ctrl.get("index"))
        names[f"pci.{index}"] = index
        alias = _alias(ctrl)
        if alias:
            names[alias] = index
    return names


def _import_libvirt(log_path: Path) -> tuple[ModuleType, ModuleType]:
    # libvirt reads its log settings once, when the binding loads: send its info/warning chatter
    # to a file instead of stderr, without leaking the setting into child processes.
    redirect = "libvirt" not in sys.modules and "LIBVIRT_LOG_OUTPUTS" not in os.environ
    if redirect:
        os.environ["LIBVIRT_LOG_OUTPUTS"] = f"3:file:{log_path}"
    try:
        import libvirt
        import libvirt_qemu
    except ImportError:
        raise StackUnavailable(BINDING_MISSING) from None
    finally:
        if redirect:
            del os.environ["LIBVIRT_LOG_OUTPUTS"]
    return libvirt, libvirt_qemu


def default_root() -> Path:
    """$PCIPLAN_LIBVIRT_ROOT, else ~/.cache/pciplan/libvirt-embed (or a per-user dir under /tmp)."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(cache) / "pciplan" / "libvirt-embed"
    writable = os.access(cache, os.W_OK) or os.access(os.path.dirname(cache), os.W_OK)
    if writable and len(str(root)) <= MAX_ROOT_LENGTH:
        return root
    return Path(tempfile.gettempdir()) / f"pciplan-libvirt-embed-{os.getuid()}"
