"""Prove a domain XML on the real stack: libvirt's embedded QEMU driver, QEMU itself and SeaBIOS.

No daemon is involved: ``qemu:///embed?root=DIR`` runs libvirt's QEMU driver inside this process.
libvirt allows one embedded root per process, so the first :class:`EmbeddedLibvirt` binds the
process to a root (a persistent capability cache, locked against other processes) and later
instances share it. The libvirt binding is imported lazily so this module imports without it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Any

from lxml import etree

from planner.xmlio import parse_domain_bytes

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
# namespaces = []: no private /dev mount namespace per guest. libvirt cannot set one up inside some
# containers ("Unable to move ... mount to /dev/null"), and the planner's guests use no host devices.
QEMU_CONF = (
    'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nsecurity_driver = "none"\nstdio_handler = "file"\n'
    'namespaces = []\n'
)
MAX_HOTPLUG_PROBES = 16
X86_ARCHES = ("x86_64", "i686")  # SeaBIOS machines: the only ones with a firmware check
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


# ---------------------------------------------------------------------------------------------------
# The process-wide embedded driver


@dataclass
class _ProcessDriver:
    root: Path
    wanted: Path  # the root asked for: differs from root when it was locked and a temporary one is used
    temporary: bool
    lock_file: IO[str]


_process_driver: _ProcessDriver | None = None
_process_lock = threading.Lock()
_event_loop_started = False


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


def _prepare_root(root: Path) -> None:
    for conf in (root / "etc" / "qemu.conf", root / "etc" / "qemu" / "qemu.conf"):
        conf.parent.mkdir(parents=True, exist_ok=True)
        if not conf.exists() or conf.read_text() != QEMU_CONF:
            conf.write_text(QEMU_CONF)
    (root / "log").mkdir(exist_ok=True)


def _try_lock(root: Path) -> IO[str] | None:
    root.mkdir(parents=True, exist_ok=True)
    lock_file = open(root / ".pciplan.lock", "w")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        return None
    return lock_file


def _temporary_root(seed_from: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="pciplan-libvirt-"))
    # Seed QEMU capabilities from the busy root: saves the ~4 s probe per emulator.
    with contextlib.suppress(OSError):
        capabilities = Path("cache") / "qemu" / "capabilities"
        shutil.copytree(seed_from / capabilities, root / capabilities)
    return root


def _bind_process_driver(requested: Path | None) -> _ProcessDriver:
    global _process_driver
    with _process_lock:
        if _process_driver is not None:
            bound = _process_driver
            acceptable = (bound.root.resolve(), bound.wanted.resolve())
            if requested is not None and requested.resolve() not in acceptable:
                raise StackUnavailable(
                    f"this process already uses libvirt root {bound.root}; libvirt's embedded driver allows "
                    "one root per process"
                )
            return _process_driver
        wanted = (requested or default_root()).absolute()
        if len(str(wanted)) > MAX_ROOT_LENGTH:
            raise StackUnavailable(
                f"libvirt root {wanted} is too long for QEMU's monitor socket path "
                f"(at most {MAX_ROOT_LENGTH} characters)"
            )
        lock_file = _try_lock(wanted)
        temporary = lock_file is None
        root = _temporary_root(wanted) if temporary else wanted
        if lock_file is None:
            lock_file = _try_lock(root)
            assert lock_file is not None, "a fresh temporary root cannot be locked by anyone else"
        _prepare_root(root)
        _process_driver = _ProcessDriver(root=root, wanted=wanted, temporary=temporary, lock_file=lock_file)
        return _process_driver


def _start_event_loop(libvirt: ModuleType) -> None:
    global _event_loop_started
    with _process_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _cleanup_temporary_root() -> None:
    drv = _process_driver
    if drv is not None and drv.temporary:
        shutil.rmtree(drv.root, ignore_errors=True)


atexit.register(_cleanup_temporary_root)


# ---------------------------------------------------------------------------------------------------
# XML helpers


def _parse(xml: str) -> etree._Element:
    """The <domain> root of xml; planner.xmlio.InputError when it is not a domain XML."""
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


# ---------------------------------------------------------------------------------------------------
# diff_layouts


def _device_kind(el: etree._Element) -> str:
    return f"controller[{el.get('type')}]" if el.tag == "controller" else el.tag


IDENTITY_KINDS = ("alias", "mac", "dev", "index", "index-model", "primary")  # tried in this order


def _identities(el: etree._Element) -> dict[str, str]:
    """What names a device across define: its alias, MAC, disk target, controller index."""
    found = {}
    if _alias(el):
        found["alias"] = _alias(el)
    mac = el.find("mac")
    if mac is not None and mac.get("address"):
        found["mac"] = mac.get("address").lower()
    target = el.find("target")
    if el.tag == "disk" and target is not None and target.get("dev"):
        found["dev"] = target.get("dev")
    if el.tag == "controller":
        found["index"] = str(_int(el.get("index")))
        # USB2 companions share their master's index; the model tells them apart
        found["index-model"] = f"{_int(el.get('index'))}/{el.get('model')}"
    model = el.find("model")
    if el.tag == "video" and model is not None and model.get("primary") == "yes":
        found["primary"] = "yes"  # libvirt lists the primary video first
    return found


def _match_devices(
    before: list[etree._Element], after: list[etree._Element]
) -> tuple[list[tuple[etree._Element, etree._Element]], list[etree._Element], list[etree._Element]]:
    """Pair the elements of one kind (pairs, unmatched before, unmatched after).

    An identity that is unique on both sides pairs two elements; the rest (say a NIC whose MAC
    libvirt generated) pair up in document order.
    """
    pairs: list[tuple[etree._Element, etree._Element]] = []
    left, right = list(before), list(after)
    ids_left = {id(el): _identities(el) for el in left}
    ids_right = {id(el): _identities(el) for el in right}
    for kind in IDENTITY_KINDS:
        by_value: dict[str, tuple[list[etree._Element], list[etree._Element]]] = {}
        for el in left:
            if kind in ids_left[id(el)]:
                by_value.setdefault(ids_left[id(el)][kind], ([], []))[0].append(el)
        for el in right:
            if kind in ids_right[id(el)]:
                by_value.setdefault(ids_right[id(el)][kind], ([], []))[1].append(el)
        matched = {id(b[0]): a[0] for b, a in by_value.values() if len(b) == 1 and len(a) == 1}
        if not matched:
            continue
        matched_right = {id(a) for a in matched.values()}
        pairs += [(b, matched[id(b)]) for b in left if id(b) in matched]
        left = [b for b in left if id(b) not in matched]
        right = [a for a in right if id(a) not in matched_right]
    pairs += list(zip(left, right, strict=False))
    n = min(len(left), len(right))
    return pairs, left[n:], right[n:]


def diff_layouts(before_xml: str, after_xml: str) -> list[Change]:
    """What libvirt added, changed or moved between the input XML and its completed XML (PCI only)."""
    before_root, after_root = _parse(before_xml), _parse(after_xml)
    kinds: dict[str, tuple[list[etree._Element], list[etree._Element]]] = {}
    for el in _devices(before_root):
        kinds.setdefault(_device_kind(el), ([], []))[0].append(el)
    for el in _devices(after_root):
        kinds.setdefault(_device_kind(el), ([], []))[1].append(el)

    changes: list[Change] = []
    for kind, (before, after) in kinds.items():
        pairs, removed, added = _match_devices(before, after)
        for el in added:
            is_pci_controller = kind == "controller[pci]"
            if not is_pci_controller and _pci_address(el) is None:
                continue  # libvirt's non-PCI extras (PS/2 input, audio) are not part of the PCI layout
            changes.append(
                Change(
                    "added-controller" if is_pci_controller else "added-device",
                    _describe(el),
                    f"libvirt added it at {_format_address(_pci_address(el), _multifunction(el))}",
                )
            )
        for el in removed:
            changes.append(Change("removed-device", _describe(el), "not in libvirt's completed XML"))
        for b, a in pairs:
            if kind == "controller[pci]" and b.get("model") != a.get("model"):
                changes.append(
                    Change("changed-controller", _describe(a), f"model {b.get('model')} -> {a.get('model')}")
                )
            b_addr, a_addr = _pci_address(b), _pci_address(a)
            if b_addr is None and a_addr is None:
                continue
            b_mf, a_mf = _multifunction(b), _multifunction(a)
            if b_addr is None:
                detail = f"libvirt assigned {_format_address(a_addr, a_mf)}"
            elif b_addr != a_addr:
                detail = f"libvirt moved {_format_address(b_addr, b_mf)} -> {_format_address(a_addr, a_mf)}"
            elif b_mf != a_mf:
                detail = f"libvirt set multifunction={'on' if a_mf else 'off'} at {_format_address(a_addr)}"
            else:
                continue
            changes.append(Change("moved-address", _describe(a), detail))
    return changes


# ---------------------------------------------------------------------------------------------------
# prepare_for_boot


def _empty_raw_file(workdir: Path, name: str) -> str:
    path = workdir / name
    with open(path, "wb") as fh:
        fh.truncate(1 << 20)
    return str(path)


def _prepare_disk(disk: etree._Element, workdir: Path, number: int) -> None:
    device = disk.get("device", "disk")
    source = disk.find("source")
    if device in ("cdrom", "floppy") and source is None:
        return  # an empty drive needs no backing file
    for stale in ("source", "backingStore", "mirror", "auth", "encryption"):
        for el in disk.findall(stale):
            disk.remove(el)
    disk.set("type", "file")
    if device == "lun":
        disk.set("device", "disk")  # a SCSI LUN needs a host block device
    etree.SubElement(disk, "source", file=_empty_raw_file(workdir, f"disk{number}.img"))
    driver = disk.find("driver")
    if driver is not None:
        driver.set("type", "raw")
        for attr in ("cache", "io"):  # cache='none' and io='native' need O_DIRECT, which tmpfs lacks
            driver.attrib.pop(attr, None)


UNIT_BYTES = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2,
              "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4, "tib": 1024**4,
              "tb": 1000**4}


def _size_bytes(el: etree._Element | None) -> int:
    """A libvirt scaled integer (<size unit='KiB'>...) in bytes; KiB when no unit is given."""
    if el is None or not (el.text or "").strip():
        return 0
    return int(el.text.strip()) * UNIT_BYTES.get(el.get("unit", "KiB").lower(), 1024)


def _prepare_memory_device(mem: etree._Element, workdir: Path, number: int) -> None:
    source = mem.find("source")
    if source is None:
        return
    if mem.get("model") in ("nvdimm", "virtio-pmem"):
        # Backed by a host file: an empty sparse one of the device's size.
        path = workdir / f"pmem{number}.img"
        with open(path, "wb") as fh:
            fh.truncate(_size_bytes(mem.find("target/size")))
        for child in list(source):
            source.remove(child)
        etree.SubElement(source, "path").text = str(path)
    else:
        mem.remove(source)  # host page sizes and host NUMA nodes


def _prepare_interface(iface: etree._Element) -> None:
    # User-mode networking needs no host network, bridge or tap; model and address stay.
    iface.set("type", "user")
    for child in list(iface):
        if isinstance(child.tag, str) and child.tag not in INTERFACE_KEPT_CHILDREN:
            iface.remove(child)
    driver = iface.find("driver")
    if driver is not None:
        kept = {k: v for k, v in driver.attrib.items() if k in VIRTIO_DRIVER_ATTRIBUTES}
        driver.attrib.clear()
        driver.attrib.update(kept)
        for child in list(driver):
            driver.remove(child)
    rom = iface.find("rom")
    if rom is not None:
        rom.attrib.pop("file", None)


def _prepare_chardev(dev: etree._Element) -> None:
    if dev.get("type", "pty") in SELF_CONTAINED_CHARDEVS:
        return
    dev.set("type", "null")
    for child in dev.findall("source") + dev.findall("protocol") + dev.findall("log"):
        dev.remove(child)


def _add_user_aliases(root: etree._Element) -> None:
    """Give every PCI-addressed device a ua- alias so QEMU's id for it is known in advance."""
    taken = {a for a in (_alias(el) for el in _devices(root)) if a}
    counters: dict[str, int] = {}
    for el in _devices(root):
        address = el.find("address")
        if address is None or address.get("type") != "pci" or _alias(el):
            continue
        if el.tag == "controller" and el.get("type") == "pci":
            continue  # their QEMU id names their bus: keep libvirt's pci.N
        while True:
            counters[el.tag] = counters.get(el.tag, 0) + 1
            name = f"ua-{el.tag}{counters[el.tag]}"
            if name not in taken:
                break
        taken.add(name)
        etree.SubElement(el, "alias", name=name)


def _needs_host_resources(el: etree._Element) -> bool:
    """Devices that need a display, host USB, a TPM, host input or vhost-vsock, and no PCI slot of ours."""
    if el.tag in ("graphics", "redirdev", "smartcard", "tpm"):
        return True
    if el.tag == "input":
        return el.get("type") in ("passthrough", "evdev")
    return el.tag == "vsock" and not os.path.exists("/dev/vhost-vsock")


def _prepare(xml: str, workdir: Path) -> tuple[etree._Element, list[str]]:
    """prepare_for_boot's work, plus notes on what was dropped or replaced that matters to the layout."""
    root = _parse(xml)
    notes: list[str] = []
    root.set("type", "qemu")  # TCG: no KVM is assumed here
    arch = _arch(root)
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    _set_child_text(devices, "emulator", emulator_for(arch))
    _set_child_text(root, "name", f"pciplan-{uuid.uuid4().hex[:12]}")
    fresh_uuid = str(uuid.uuid4())
    _set_child_text(root, "uuid", fresh_uuid)
    for entry in root.findall("sysinfo/system/entry[@name='uuid']"):
        entry.text = fresh_uuid  # libvirt insists that the SMBIOS uuid equals the domain's

    for el in list(root.iter("seclabel")):
        _remove(el)
    # Host-bound tuning and firmware files this machine does not have.
    for path in ("cputune", "numatune", "memtune", "blkiotune", "memoryBacking", "resource",
                 "launchSecurity", "features/kvm", "os/smbios", "os/firmware"):
        for el in root.findall(path):
            _remove(el)
    os_el = root.find("os")
    if os_el is not None:
        os_el.attrib.pop("firmware", None)
        for tag in ("loader", "nvram", "kernel", "initrd", "dtb", "cmdline"):
            for el in os_el.findall(tag):
                notes.append(f"dropped <os><{tag}>: the boot check runs the default firmware")
                os_el.remove(el)
    acpi = root.find("features/acpi")
    if acpi is not None and arch not in X86_ARCHES:
        # Off x86, libvirt ties ACPI to UEFI, whose loader was just dropped; PCI layout is unaffected.
        notes.append("dropped <features><acpi/>: it needs UEFI on this architecture")
        _remove(acpi)
    vcpu = root.find("vcpu")
    if vcpu is not None:
        for attr in ("cpuset", "placement"):
            vcpu.attrib.pop(attr, None)
        if arch == "aarch64" and int((vcpu.text or "1").strip()) > 8 and root.find("features/gic") is None:
            # QEMU's default GICv2 caps virt at 8 CPUs (KVM hosts usually pick v3 for the guest).
            features = root.find("features")
            if features is None:
                features = etree.SubElement(root, "features")
            etree.SubElement(features, "gic", version="3")
            notes.append("added <gic version='3'/> for more than 8 vCPUs")
    cpu = root.find("cpu")
    if cpu is not None and cpu.get("mode") in ("host-passthrough", "host-model"):
        # TCG cannot pass the host CPU through; keep topology and NUMA cells (pxb nodes need them).
        notes.append(f"<cpu mode='{cpu.get('mode')}'> became mode='maximum' (TCG)")
        cpu.set("mode", "maximum")
        for attr in ("match", "check", "migratable"):
            cpu.attrib.pop(attr, None)
        for child in cpu.findall("model") + cpu.findall("feature") + cpu.findall("cache"):
            cpu.remove(child)

    disk_number = share_number = memory_number = 0
    for el in _devices(root):
        tag = el.tag
        if tag == "hostdev" or (tag == "interface" and el.get("type") == "hostdev"):
            notes.append(f"dropped {_describe(el)} at {_format_address(_pci_address(el))}: "
                         "host devices cannot exist here")
            devices.remove(el)
        elif _needs_host_resources(el):
            if _pci_address(el) is not None:
                notes.append(f"dropped {_describe(el)} at {_format_address(_pci_address(el))}")
            devices.remove(el)
        elif tag == "disk":
            disk_number += 1
            _prepare_disk(el, workdir, disk_number)
        elif tag == "interface":
            _prepare_interface(el)
        elif tag == "memory":
            memory_number += 1
            _prepare_memory_device(el, workdir, memory_number)
        elif tag in ("serial", "parallel", "console", "channel"):
            _prepare_chardev(el)
        elif tag == "audio":
            el.set("type", "none")
            for child in list(el):
                el.remove(child)
        elif tag == "filesystem":
            # virtiofs needs virtiofsd and shared memory: share an empty folder over 9p instead.
            share_number += 1
            share = workdir / f"share{share_number}"
            share.mkdir()
            virtiofs = el.find("driver[@type='virtiofs']") is not None
            if el.get("type", "mount") != "mount" or virtiofs:
                notes.append(f"{_describe(el)} became a 9p share of an empty folder")
            for child in el.findall("source") + el.findall("driver") + el.findall("binary"):
                el.remove(child)
            el.set("type", "mount")
            el.set("accessmode", "passthrough")
            etree.SubElement(el, "source", dir=str(share))
        elif tag == "rng":
            backend = el.find("backend")
            if backend is not None and (backend.get("model") != "builtin"):
                el.remove(backend)
                new_backend = etree.SubElement(el, "backend", model="random")
                new_backend.text = "/dev/urandom"
    _add_user_aliases(root)
    return root, notes


def prepare_for_boot(xml: str, workdir: str) -> str:
    """A copy of xml that QEMU can start here, keeping every PCI address; its files go in workdir.

    Domain type qemu (TCG) with this machine's emulator for the arch; a fresh name and uuid. Disks
    with a source point at small empty raw files (network/volume/block ones become files);
    interfaces use user networking; host devices (hostdev, interface type=hostdev), graphics, USB
    redirection, smartcards, TPMs, host input and (without vhost-vsock) vsock are dropped; chardevs
    other than pty/null become null; filesystems share an empty folder over 9p; rng reads
    /dev/urandom; loader/nvram/kernel, seclabels, host CPU modes and host tuning are removed.
    Every PCI-addressed device except PCI controllers gets a ua- alias (QEMU's id for it).
    """
    root, _notes = _prepare(xml, Path(workdir))
    return _tostring(root)


def _add_debugcon(root: etree._Element, log_path: Path) -> None:
    """Route SeaBIOS' debug port (0x402) to log_path through <qemu:commandline>."""
    commandline = root.find(f"{{{QEMU_NS}}}commandline")
    if commandline is None:
        commandline = etree.SubElement(root, f"{{{QEMU_NS}}}commandline", nsmap={"qemu": QEMU_NS})
    for value in ("-chardev", f"file,id=pciplan-seabios,path={log_path}",
                  "-device", "isa-debugcon,iobase=0x402,chardev=pciplan-seabios"):
        etree.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=value)


# ---------------------------------------------------------------------------------------------------
# QEMU's view: HMP 'info qtree'

_QTREE_BUS = re.compile(r"^(\s*)bus: (\S+)\s*$")
_QTREE_DEV = re.compile(r'^(\s*)dev: ([^,]+), id "(.*)"\s*$')
_QTREE_ADDR = re.compile(r"^(\s*)addr = ([0-9a-f]{2})\.([0-7])\s*$")


@dataclass
class QtreeDevice:
    qemu_type: str
    qemu_id: str
    bus_name: str
    slot: int
    function: int


def parse_qtree(text: str) -> list[QtreeDevice]:
    """Every PCI device in 'info qtree' output (those with an 'addr = SS.F' property), with its bus."""
    found: list[QtreeDevice] = []
    # Stack of open (indent, kind, payload): a line belongs to the nearest entry indented less.
    stack: list[tuple[int, str, Any]] = []
    for line in text.splitlines():
        bus, dev, addr = _QTREE_BUS.match(line), _QTREE_DEV.match(line), _QTREE_ADDR.match(line)
        match = bus or dev or addr
        if match is None:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if bus:
            stack.append((indent, "bus", bus.group(2)))
        elif dev:
            parent_bus = next((p for _i, kind, p in reversed(stack) if kind == "bus"), "")
            stack.append((indent, "dev", [dev.group(2), dev.group(3), parent_bus]))
        elif addr and stack and stack[-1][1] == "dev":
            qemu_type, qemu_id, bus_name = stack[-1][2]
            slot, function = int(addr.group(2), 16), int(addr.group(3))
            found.append(QtreeDevice(qemu_type, qemu_id, bus_name, slot, function))
    return found


def compare_placements(
    live_root: etree._Element, qtree: list[QtreeDevice]
) -> tuple[dict[str, tuple[int, int, int]], list[str]]:
    """QEMU's placement of every device with an id, and where it differs from the domain XML."""
    bus_index = _pci_controller_index_by_bus_name(live_root)
    placements = {
        d.qemu_id: (bus_index.get(d.bus_name, -1), d.slot, d.function) for d in qtree if d.qemu_id
    }
    # Some devices have no QEMU id: built-ins (q35 SATA at 1f.2, pc IDE at 01.1) and ich9 USB
    # companions (they share the alias of their EHCI master, which alone carries it). A device
    # without its own id is matched when an id-less device sits where the XML puts it.
    anonymous = {(bus_index.get(d.bus_name, -1), d.slot, d.function) for d in qtree if not d.qemu_id}
    mismatches = []
    for el in _devices(live_root):
        addr = _pci_address(el)
        alias = _alias(el)
        if addr is None or alias is None:
            continue
        expected = addr[1:]
        seen = placements.get(alias)
        if seen == expected or expected in anonymous:
            continue
        where = "not in QEMU's device tree" if seen is None else f"QEMU {_format_address((0, *seen))}"
        mismatches.append(f"{_describe(el)}: XML {_format_address(addr)}, {where}")
    return placements, mismatches


def hotplug_targets(root: etree._Element, limit: int = MAX_HOTPLUG_PROBES) -> list[tuple[int, int, str]]:
    """Empty hot-pluggable places, lowest controller index first: (bus, slot, description).

    An empty root/downstream port (hotplug not off) offers its slot 0; a pci-bridge or
    pcie-to-pci-bridge offers its lowest free slot.
    """
    used = {addr[1:3] for el in _devices(root) if (addr := _pci_address(el)) is not None}
    targets = []
    controllers = sorted(root.iterfind("devices/controller[@type='pci']"), key=lambda c: _int(c.get("index")))
    for ctrl in controllers:
        index, model = _int(ctrl.get("index")), ctrl.get("model")
        target = ctrl.find("target")
        if model in PCI_CONTROLLERS_WITH_ONE_HOTPLUG_SLOT:
            hotplug_off = target is not None and target.get("hotplug") == "off"
            if not hotplug_off and (index, 0) not in used:
                targets.append((index, 0, f"empty {model} index {index}"))
        elif model in PCI_BRIDGES:
            free = next((slot for slot in range(1, 32) if (index, slot) not in used), None)
            if free is not None:
                targets.append((index, free, f"{model} index {index} slot {free}"))
        if len(targets) >= limit:
            break
    return targets


def _probe_nic_xml(bus: int, slot: int) -> str:
    return (
        "<interface type='user'><model type='virtio'/>"
        f"<address type='pci' domain='0x0000' bus='{bus:#04x}' slot='{slot:#04x}' function='0x0'/>"
        "</interface>"
    )


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
# The adapter


class EmbeddedLibvirt:
    """A connection to libvirt's embedded QEMU driver; use as a context manager.

    root: the driver's state and capability cache (default: $PCIPLAN_LIBVIRT_ROOT or a per-user
    cache dir). When another process holds that root, a fresh temporary root is used instead.
    """

    def __init__(self, root: str | None = None) -> None:
        if not _binding_installed():
            raise StackUnavailable(BINDING_MISSING)
        driver = _bind_process_driver(Path(root) if root else None)
        self.root = driver.root
        self.temporary_root = driver.temporary
        self._libvirt, self._libvirt_qemu = _import_libvirt(driver.root / "log" / "libvirt.log")
        # Without a handler libvirt prints every error to stderr; the exceptions carry them anyway.
        self._libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _start_event_loop(self._libvirt)
        try:
            self._conn = self._libvirt.open(f"qemu:///embed?root={driver.root}")
        except self._libvirt.libvirtError as exc:
            message = f"cannot open libvirt's embedded QEMU driver at {driver.root}: {exc}"
            if "already open with path" in str(exc):
                message += " (other code in this process opened its own root: use shared_stack())"
            raise StackUnavailable(message) from None

    def __enter__(self) -> EmbeddedLibvirt:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(self._libvirt.libvirtError):
                self._conn.close()
            self._conn = None

    # -- define -------------------------------------------------------------------------------------

    def define(self, xml: str) -> DefineResult:
        """libvirt's verdict on xml and its completed inactive XML; nothing stays defined.

        The domain is defined under a temporary name and uuid, as type qemu with this machine's
        emulator (PCI assignment depends on neither); the returned XML carries the caller's values.
        """
        root = _parse(xml)
        original = {tag: root.findtext(tag) for tag in ("name", "uuid")}
        original_type = root.get("type")
        original_emulator = root.findtext("devices/emulator")
        root.set("type", "qemu")
        if not original_emulator or not os.access(original_emulator, os.X_OK):
            devices = root.find("devices")
            if devices is None:
                devices = etree.SubElement(root, "devices")
            _set_child_text(devices, "emulator", emulator_for(_arch(root)))
        _set_child_text(root, "name", f"pciplan-{uuid.uuid4().hex[:12]}")
        temporary_uuid = str(uuid.uuid4())
        _set_child_text(root, "uuid", temporary_uuid)
        # libvirt insists that an SMBIOS system uuid equals the domain's
        sysinfo_uuids = root.findall("sysinfo/system/entry[@name='uuid']")
        sysinfo_original = [e.text for e in sysinfo_uuids]
        for e in sysinfo_uuids:
            e.text = temporary_uuid
        dom = None
        try:
            dom = self._conn.defineXML(_tostring(root))
            completed = _parse(dom.XMLDesc(self._libvirt.VIR_DOMAIN_XML_INACTIVE))
        except self._libvirt.libvirtError as exc:
            return DefineResult(False, _message(exc), None)
        finally:
            if dom is not None:
                self._undefine(dom)
        for tag, text in original.items():
            if text is None:
                el = completed.find(tag)
                if el is not None:
                    completed.remove(el)
            else:
                _set_child_text(completed, tag, text)
        for e, text in zip(completed.findall("sysinfo/system/entry[@name='uuid']"), sysinfo_original,
                           strict=False):
            e.text = text
        if original_type:
            completed.set("type", original_type)
        if original_emulator:
            _set_child_text(completed.find("devices"), "emulator", original_emulator)
        return DefineResult(True, None, _tostring(completed))

    # -- boot -----------------------------------------------------------------------------------------

    def boot(
        self, xml: str, *, firmware: bool = False, hotplug_probe: bool = False, seconds: float = 8.0
    ) -> tuple[BootResult, FirmwareResult | None, list[str]]:
        """Start a bootable copy of xml (paused) and compare QEMU's device tree with the XML.

        firmware (x86 only): then run it with SeaBIOS' debug port logged, for up to `seconds`.
        hotplug_probe: attach a virtio NIC live to each of up to 16 empty hot-pluggable places.
        Returns (boot result, firmware result, hot-plug failure messages); the firmware result is
        None when firmware was not asked for or QEMU did not start. Nothing stays running or defined.
        """
        workdir = Path(tempfile.mkdtemp(prefix="pciplan-boot-"))
        dom = None
        try:
            root, notes = _prepare(xml, workdir)
            run_firmware = firmware and _arch(root) in X86_ARCHES
            firmware_log = workdir / "seabios.log"
            if run_firmware:
                _add_debugcon(root, firmware_log)
            try:
                dom = self._conn.defineXML(_tostring(root))
                dom.createWithFlags(self._libvirt.VIR_DOMAIN_START_PAUSED)
            except self._libvirt.libvirtError as exc:
                error = _message(exc) if dom is not None else f"define failed: {_message(exc)}"
                return BootResult(False, error, {}, [], notes), None, []

            result = BootResult(True, None, {}, [], notes)
            firmware_result = None
            if firmware and not run_firmware:
                firmware_result = FirmwareResult(False, False, ["firmware check is x86 (SeaBIOS) only"], "")
            failures: list[str] = []
            try:
                live_root = _parse(dom.XMLDesc(0))
                qtree = self._libvirt_qemu.qemuMonitorCommand(
                    dom, "info qtree", self._libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
                )
                result.placements, result.mismatches = compare_placements(live_root, parse_qtree(qtree))
                if run_firmware:
                    dom.resume()
                    firmware_result = _read_firmware_log(firmware_log, seconds)
                # After the firmware, so that probe devices do not change what SeaBIOS had to set up.
                if hotplug_probe:
                    failures = self._probe_hotplug(dom, live_root, result.hotplug_probes)
            except self._libvirt.libvirtError as exc:
                result.error = f"after start: {_message(exc)}"
            return result, firmware_result, failures
        finally:
            self._discard(dom, workdir)

    def _probe_hotplug(self, dom: Any, live_root: etree._Element, probed: list[str]) -> list[str]:
        """Attach a NIC to each empty hot-pluggable place (appended to probed); the failures."""
        failures = []
        for bus, slot, what in hotplug_targets(live_root):
            where = f"{what} ({bus:02x}:{slot:02x}.0)"
            probed.append(where)
            try:
                dom.attachDeviceFlags(_probe_nic_xml(bus, slot), self._libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except self._libvirt.libvirtError as exc:
                failures.append(f"hot-plug into {where}: {_message(exc)}")
        return failures

    def _discard(self, dom: Any, workdir: Path) -> None:
        """Stop and forget the guest, and remove its files, whatever state it reached."""
        if dom is not None:
            name = dom.name()
            with contextlib.suppress(self._libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            self._undefine(dom)
            # The persistent root would otherwise keep one QEMU log per boot.
            with contextlib.suppress(OSError):
                (self.root / "log" / "qemu" / f"{name}.log").unlink()
        shutil.rmtree(workdir, ignore_errors=True)

    def _undefine(self, dom: Any) -> None:
        # Never delete an nvram file the caller's XML names. (TPM state is keyed by our temporary
        # uuid, and libvirt 9.0 logs a spurious error for KEEP_TPM, so that flag is left out.)
        with contextlib.suppress(self._libvirt.libvirtError):
            dom.undefineFlags(self._libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)


def _message(exc: Exception) -> str:
    get = getattr(exc, "get_error_message", None)
    return (get() if get else None) or str(exc)


def _binding_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("libvirt", "libvirt_qemu"))


# ---------------------------------------------------------------------------------------------------
# verify: one call for `pciplan check --libvirt/--boot`


@dataclass
class StackReport:
    define: DefineResult
    changes: list[Change]
    boot: BootResult | None = None
    firmware: FirmwareResult | None = None
    hotplug_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """libvirt accepts it unchanged, QEMU places everything as written, the firmware gets through."""
        if not self.define.ok or self.changes or self.hotplug_failures:
            return False
        if self.boot is not None and (not self.boot.started or self.boot.error or self.boot.mismatches):
            return False
        return self.firmware is None or not self.firmware.ran or self.firmware.pci_setup_done

    def summary_lines(self) -> list[str]:
        lines = []
        if not self.define.ok:
            return [f"libvirt: rejected: {self.define.error}"]
        if self.changes:
            lines.append(f"libvirt: defined, but changed the layout ({len(self.changes)} changes):")
            lines += [f"  {c.kind}: {c.element}: {c.detail}" for c in self.changes]
        else:
            lines.append("libvirt: defined unchanged")
        if self.boot is not None:
            lines += [f"  note: {note}" for note in self.boot.notes]
            if not self.boot.started:
                lines.append(f"QEMU: refused to start: {self.boot.error}")
            elif self.boot.error:
                lines.append(f"QEMU: started, then failed: {self.boot.error}")
            elif self.boot.mismatches:
                lines.append(f"QEMU: started, {len(self.boot.mismatches)} placements differ from the XML:")
                lines += [f"  {m}" for m in self.boot.mismatches]
            else:
                lines.append(f"QEMU: started, all {len(self.boot.placements)} devices placed as in the XML")
        if self.firmware is not None:
            if not self.firmware.ran:
                lines.append(f"firmware: not run ({'; '.join(self.firmware.errors)})")
            elif self.firmware.pci_setup_done:
                lines.append("firmware: SeaBIOS allocated every PCI resource")
            else:
                lines.append(f"firmware: SeaBIOS failed: {'; '.join(self.firmware.errors)}")
        if self.hotplug_failures:
            lines.append(f"hot-plug: {len(self.hotplug_failures)} probes failed:")
            lines += [f"  {f}" for f in self.hotplug_failures]
        elif self.boot is not None and self.boot.hotplug_probes:
            lines.append(f"hot-plug: {len(self.boot.hotplug_probes)} empty slots accepted a device")
        return lines


_shared_stack: EmbeddedLibvirt | None = None


def shared_stack() -> EmbeddedLibvirt:
    """The process's EmbeddedLibvirt, opened on first use (StackUnavailable if it cannot be)."""
    global _shared_stack
    if _shared_stack is None:
        _shared_stack = EmbeddedLibvirt()
        # close before interpreter shutdown tears down the binding under the connection's destructor
        atexit.register(_shared_stack.close)
    return _shared_stack


def verify(
    xml: str, *, boot: bool, firmware: bool, hotplug: bool = False, seconds: float = 8.0
) -> StackReport:
    """Define xml on the real libvirt; with boot, also start it in QEMU (and SeaBIOS with firmware)."""
    stack = shared_stack()
    defined = stack.define(xml)
    report = StackReport(defined, diff_layouts(xml, defined.xml) if defined.ok and defined.xml else [])
    if defined.ok and (boot or firmware or hotplug):
        report.boot, report.firmware, report.hotplug_failures = stack.boot(
            xml, firmware=firmware, hotplug_probe=hotplug, seconds=seconds
        )
    return report
