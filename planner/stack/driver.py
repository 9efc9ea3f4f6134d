"""libvirt's embedded QEMU driver for this process, and the adapter that defines and boots guests."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Any

from lxml import etree

from planner.checker.check import firmware_label, guest_firmware, machine_family
from planner.facts.facts import LibvirtVersion, installed_libvirt
from planner.stack.boot import (
    _prepare,
    _probe_nic_xml,
    _size_bytes,
    compare_placements,
    hotplug_targets,
    parse_qtree,
)
from planner.stack.diff import (
    diff_layouts,
)
from planner.stack.firmware import (
    UEFI_FILES,
    UEFI_LABEL,
    UEFI_SECONDS,
    _add_debugcon,
    _read_firmware_log,
    check_assignment,
    ecam_config_reader,
    flatten_query_pci,
    log_serial_console,
    set_uefi_loader,
    wait_for_console,
    x86_config_reader,
)
from planner.stack.model import (
    BINDING_MISSING,
    MAX_ROOT_LENGTH,
    QEMU_CONF,
    X86_ARCHES,
    BootResult,
    Change,
    DefineResult,
    FirmwareResult,
    StackUnavailable,
    _alias,
    _arch,
    _devices,
    _import_libvirt,
    _parse,
    _pci_address,
    _set_child_text,
    _tostring,
    default_root,
    emulator_for,
)


@dataclass
class _ProcessDriver:
    root: Path
    wanted: Path  # the root asked for: differs from root when it was locked and a temporary one is used
    temporary: bool
    lock_file: IO[str]


_process_driver: _ProcessDriver | None = None
_process_lock = threading.Lock()
_event_loop_started = False


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

# The adapter


UEFI_MIN_MEMORY = 512 << 20


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
        self, xml: str, *, firmware: bool = False, hotplug_probe: bool = False, seconds: float = 8.0,
        firmware_name: str | None = None, uefi_seconds: float = UEFI_SECONDS,
    ) -> tuple[BootResult, FirmwareResult | None, list[str]]:
        """Start a bootable copy of xml (paused) and compare QEMU's device tree with the XML.

        firmware: then run the guest's own firmware (or firmware_name: seabios, ovmf, aavmf, none) and
        check that it set up PCI: SeaBIOS through its debug port, for up to `seconds`; OVMF/AAVMF
        until their boot manager speaks on the serial console (up to `uefi_seconds`, under TCG), then
        what they assigned (QMP query-pci and raw config space). riscv64 virt has no PCI firmware.
        hotplug_probe: attach a virtio NIC live to each of up to 16 empty hot-pluggable places.
        Returns (boot result, firmware result, hot-plug failure messages); the firmware result is
        None when firmware was not asked for or QEMU did not start. Nothing stays running or defined.
        """
        workdir = Path(tempfile.mkdtemp(prefix="pciplan-boot-"))
        dom = None
        try:
            original = _parse(xml)
            family = machine_family(original)[0]
            which = firmware_name or guest_firmware(original, family)
            root, notes = _prepare(xml, workdir)
            firmware_log = workdir / "firmware.log"
            firmware_result = None
            if firmware and which == "seabios" and _arch(root) in X86_ARCHES:
                _add_debugcon(root, firmware_log)
            elif firmware and which in UEFI_FILES:
                missing = [f for f in UEFI_FILES[which] if not os.path.exists(f)]
                if missing:
                    firmware_result = FirmwareResult(False, False, [f"{', '.join(missing)} not installed"],
                                                     "", which, UEFI_LABEL[which], unavailable=True)
                else:
                    self._boot_uefi_setup(root, original, which, workdir, firmware_log, notes)
            elif firmware and which != "none":
                # a firmware models/firmware.toml adds has budgets to plan for, but no way to boot it here
                label = firmware_label(which) or which
                boots = " and ".join(UEFI_LABEL.values())
                why = f"not bootable here: pciplan boots only SeaBIOS (x86), {boots}"
                firmware_result = FirmwareResult(False, False, [why], "", which, label, unavailable=True)
            elif firmware:
                why = "this machine boots no firmware that sets up PCI; QEMU's device tree is the check"
                firmware_result = FirmwareResult(False, False, [why], "", which, which)
            try:
                dom = self._conn.defineXML(_tostring(root))
                dom.createWithFlags(self._libvirt.VIR_DOMAIN_START_PAUSED)
            except self._libvirt.libvirtError as exc:
                error = _message(exc) if dom is not None else f"define failed: {_message(exc)}"
                return BootResult(False, error, {}, [], notes), None, []

            result = BootResult(True, None, {}, [], notes)
            failures: list[str] = []
            try:
                live_root = _parse(dom.XMLDesc(0))
                qtree = self._libvirt_qemu.qemuMonitorCommand(
                    dom, "info qtree", self._libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
                )
                result.placements, result.mismatches = compare_placements(live_root, parse_qtree(qtree))
                if firmware and firmware_result is None:
                    dom.resume()
                    if which == "seabios":
                        firmware_result = _read_firmware_log(firmware_log, seconds)
                    else:
                        firmware_result = self._uefi_result(dom, live_root, which, firmware_log, uefi_seconds,
                                                            set(result.placements))
                # After the firmware, so that probe devices do not change what it had to set up.
                if hotplug_probe:
                    failures = self._probe_hotplug(dom, live_root, result.hotplug_probes)
            except self._libvirt.libvirtError as exc:
                result.error = f"after start: {_message(exc)}"
            return result, firmware_result, failures
        finally:
            self._discard(dom, workdir)

    @contextlib.contextmanager
    def running(self, xml: str) -> Iterator[LiveGuest]:
        """A bootable copy of xml, started paused for live hot-plug (no firmware run); stopped and
        undefined on exit."""
        workdir = Path(tempfile.mkdtemp(prefix="pciplan-live-"))
        dom = None
        try:
            root, _notes = _prepare(xml, workdir)
            dom = self._conn.defineXML(_tostring(root))
            dom.createWithFlags(self._libvirt.VIR_DOMAIN_START_PAUSED)
            yield LiveGuest(self, dom)
        finally:
            self._discard(dom, workdir)

    def _boot_uefi_setup(self, root: etree._Element, original: etree._Element, which: str,
                         workdir: Path, log: Path, notes: list[str]) -> None:
        set_uefi_loader(root, which, workdir)
        # the guest's own loader/nvram and ACPI give way to this machine's firmware files, not to none
        notes[:] = [n for n in notes if not n.startswith(("dropped <os><loader>", "dropped <os><nvram>",
                                                          "dropped <features><acpi/>"))]
        log_serial_console(root, log)
        features = root.find("features")
        if root.find("features/acpi") is None and (original.find("features/acpi") is not None
                                                   or _arch(root) in X86_ARCHES):
            # libvirt wants ACPI with UEFI on x86; off x86, _prepare dropped it for lack of UEFI
            if features is None:
                features = etree.SubElement(root, "features")
            etree.SubElement(features, "acpi")
            if original.find("features/acpi") is None:
                notes.append("added <features><acpi/>: libvirt requires it for UEFI on x86")
        cpu = root.find("cpu")
        custom = cpu is not None and cpu.get("mode", "custom") == "custom" and cpu.find("model") is not None
        if _arch(root) == "aarch64" and not custom:
            # QEMU's virt defaults to a 32-bit cortex-a15, and AAVMF 2022.11 takes a synchronous
            # exception on -cpu max: boot a cortex-a57 (topology and NUMA cells stay)
            if cpu is None:
                cpu = etree.SubElement(root, "cpu")
            cpu.set("mode", "custom")
            cpu.set("match", "exact")
            for child in cpu.findall("model"):
                cpu.remove(child)
            model = etree.Element("model", fallback="forbid")
            model.text = "cortex-a57"
            cpu.insert(0, model)
            notes.append("the CPU became a cortex-a57: AAVMF is 64-bit and fails on -cpu max")
        memory = root.find("memory")
        if memory is not None and root.find("cpu/numa") is None and _size_bytes(memory) < UEFI_MIN_MEMORY:
            # edk2 takes a synchronous exception in 64 MiB; RAM size does not change PCI I/O
            for el in (memory, root.find("currentMemory")):
                if el is not None:
                    el.set("unit", "KiB")
                    el.text = str(UEFI_MIN_MEMORY // 1024)
            notes.append(f"memory raised to {UEFI_MIN_MEMORY >> 20} MiB for {UEFI_LABEL[which]}")
        notes.append(f"booted with {UEFI_FILES[which][0]} under TCG")

    def _uefi_result(self, dom: Any, live_root: etree._Element, which: str, log: Path,
                     seconds: float, qemu_ids: set[str]) -> FirmwareResult:
        label = UEFI_LABEL[which]

        def stopped() -> str | None:
            state, reason = dom.state()
            if state != self._libvirt.VIR_DOMAIN_RUNNING:
                return f"the guest stopped (libvirt state {state}, reason {reason}); "
            return None

        reached, tail = wait_for_console(log, seconds, stopped)
        if not reached:
            last = tail.splitlines()[-1] if tail else "no output"
            error = f"{label} hangs: no console output within {seconds:g} s ({last})"
            if tail.startswith("the firmware crashed"):
                error = f"{label} crashed before its console ({last})"
            return FirmwareResult(True, False, [error], tail, which, label)
        dom.suspend()
        qm = self._libvirt_qemu

        def hmp(command: str) -> str:
            return qm.qemuMonitorCommand(dom, command, qm.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)

        reply = json.loads(qm.qemuMonitorCommand(dom, '{"execute": "query-pci"}', 0))
        functions = flatten_query_pci(reply["return"])
        reader = x86_config_reader(hmp) if _arch(live_root) in X86_ARCHES else ecam_config_reader(hmp)
        # every PCI device QEMU knows by an id must be in the tree the firmware numbered
        aliases = {a for a in (_alias(el) for el in _devices(live_root) if _pci_address(el)) if a}
        expected = qemu_ids & aliases
        errors = check_assignment(functions, reader, expected, label)
        return FirmwareResult(True, not errors, errors, tail, which, label)

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


class LiveGuest:
    """A running guest of the embedded driver: its live XML, live hot-plug, QEMU's device tree."""

    def __init__(self, stack: EmbeddedLibvirt, dom: Any) -> None:
        self._stack, self._dom = stack, dom

    def xml(self) -> str:
        return self._dom.XMLDesc(0)

    def attach(self, device_xml: str) -> str | None:
        """Hot-plug a device (libvirt's attach-device --live); None, or libvirt's error message."""
        try:
            self._dom.attachDeviceFlags(device_xml, self._stack._libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except self._stack._libvirt.libvirtError as exc:
            return _message(exc)
        return None

    def placements(self) -> tuple[dict[str, tuple[int, int, int]], list[str]]:
        """QEMU's own placement of every device (HMP info qtree) and its disagreements with the live XML."""
        lq = self._stack._libvirt_qemu
        qtree = lq.qemuMonitorCommand(self._dom, "info qtree", lq.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        return compare_placements(_parse(self.xml()), parse_qtree(qtree))


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
    defined_by: str = ""  # which libvirt defined it, e.g. "libvirt 11.3 (chroot at /var/cache/...)"

    @property
    def ok(self) -> bool:
        """libvirt accepts it unchanged, QEMU places everything as written, the firmware gets through."""
        if not self.define.ok or self.changes or self.hotplug_failures:
            return False
        if self.boot is not None and (not self.boot.started or self.boot.error or self.boot.mismatches):
            return False
        if self.firmware is not None and self.firmware.unavailable:
            return False  # asked for and not run: nothing was checked
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
                lines.append(f"firmware: {self.firmware.label} allocated every PCI resource")
            else:
                lines.append(f"firmware: {self.firmware.label} failed: {'; '.join(self.firmware.errors)}")
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
    xml: str, *, boot: bool, firmware: bool, hotplug: bool = False, seconds: float = 8.0,
    firmware_name: str | None = None, uefi_seconds: float = UEFI_SECONDS,
    libvirt_version: LibvirtVersion | None = None,
) -> StackReport:
    """Define xml on the real libvirt; with boot, also start it in QEMU (and, with firmware, its
    firmware: the guest's own, or firmware_name).

    libvirt_version: define it in that libvirt. The installed one (or None) is the embedded driver;
    another is the chroot .ci/libvirt11 builds (planner.stack.chroot), which defines only: booting
    there, or a version neither has, raises StackUnavailable naming what is missing."""
    installed = installed_libvirt()
    if libvirt_version is not None and libvirt_version != installed:
        return _verify_in_chroot(xml, libvirt_version, installed, boot or firmware or hotplug)
    stack = shared_stack()
    defined = stack.define(xml)
    report = StackReport(defined, diff_layouts(xml, defined.xml) if defined.ok and defined.xml else [])
    if defined.ok and (boot or firmware or hotplug):
        report.boot, report.firmware, report.hotplug_failures = stack.boot(
            xml, firmware=firmware, hotplug_probe=hotplug, seconds=seconds, firmware_name=firmware_name,
            uefi_seconds=uefi_seconds,
        )
    report.defined_by = f"libvirt {installed} (installed, embedded driver)"
    return report


def _verify_in_chroot(xml: str, version: LibvirtVersion, installed: LibvirtVersion | None,
                      boot: bool) -> StackReport:
    """Define xml in the chroot's libvirt, which must be `version`."""
    from planner.stack.chroot import ChrootLibvirt

    here = f"the installed libvirt is {installed or 'none'}"
    if boot:
        raise StackUnavailable(f"libvirt {version}: {here}, and the libvirt {version} chroot only defines "
                               "guests (it runs no firmware): check it with --libvirt, without --boot")
    try:
        chroot = ChrootLibvirt()
    except StackUnavailable as exc:
        raise StackUnavailable(f"libvirt {version}: {here}, and {exc}") from None
    if chroot.libvirt_version != version:
        raise StackUnavailable(f"libvirt {version}: {here}, and the chroot at {chroot.root} has libvirt "
                               f"{chroot.libvirt_version}")
    defined = chroot.define(xml)
    report = StackReport(defined, diff_layouts(xml, defined.xml) if defined.ok and defined.xml else [])
    report.defined_by = f"libvirt {version} (chroot at {chroot.root}, embedded driver through virsh)"
    return report
