"""A bootable copy of a domain XML, and QEMU's own view of where each device sits (HMP info qtree)."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from planner.stack.model import (
    INTERFACE_KEPT_CHILDREN,
    MAX_HOTPLUG_PROBES,
    PCI_BRIDGES,
    PCI_CONTROLLERS_WITH_ONE_HOTPLUG_SLOT,
    SELF_CONTAINED_CHARDEVS,
    VIRTIO_DRIVER_ATTRIBUTES,
    X86_ARCHES,
    _alias,
    _arch,
    _describe,
    _devices,
    _format_address,
    _int,
    _parse,
    _pci_address,
    _pci_controller_index_by_bus_name,
    _remove,
    _set_child_text,
    _tostring,
    emulator_for,
)

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

