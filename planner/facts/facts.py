"""Machine, controller and device facts, loaded from the TOML files in models/."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from importlib import resources


@dataclass(frozen=True)
class ControllerModel:
    name: str
    plugs_into: str
    accepts: frozenset[str]
    first_slot: int
    last_slot: int
    hotplug: bool
    autoassign: bool
    conventional: bool
    buses: int
    io_window: bool
    qemu: str
    aggregate: bool = False
    target: str = ""
    role: str = ""  # root | port | switch | bridge | expander (models/controllers.toml)
    libvirt_hotplug: bool = False  # libvirt's own view of hotplug, where QEMU's differs (pxb)
    accepts_given: frozenset[str] = frozenset()  # what it takes at an address the user gave

    @property
    def slot_count(self) -> int:
        return self.last_slot - self.first_slot + 1

    def port_number(self, slot: int, function: int) -> int:
        """The <target port> libvirt gives a port at this address: one that shares its slot with others
        as functions (pcie-root-port) numbers slot and function, a downstream port just its slot."""
        return (slot << 3) + function if self.aggregate else slot

    def takes(self, connect: str, given: bool) -> bool:
        """May a `connect` type sit on this bus: at an address libvirt picks, or one the user gave?"""
        return connect in (self.accepts_given if given else self.accepts)


@dataclass(frozen=True)
class Machine:
    family: str
    arches: tuple[str, ...]
    machine_patterns: tuple[str, ...]
    root: str
    reserved_slots: frozenset[int]
    default_firmware: str  # the firmware a guest of this machine boots when its XML names none
    chipset_io_bytes: int  # I/O BARs of built-in chipset functions on the root bus (not in the XML)
    pxb: str
    gap_controller: str  # the model libvirt adds for a missing PCI controller index
    spare_pcie_ports: int
    spare_pci_slots: int
    mmio_transports: int
    acpi_root_hotplug: bool
    default_usb: str
    default_net: str
    default_scsi: str
    implicit_usb: bool
    implicit_balloon: bool
    default_video: str = ""  # the video model libvirt picks for a <video> without one
    implicit_sata: bool = False  # libvirt adds SATA controller 0 (at its fixed place)
    # root-bus functions the chipset has that the XML does not list: (slot, function) -> name; and
    # those the XML's own element of a kind takes instead ("controller:ide": pc's IDE at 01.1)
    chipset: dict[tuple[int, int], str] = field(default_factory=dict)
    chipset_owner: dict[tuple[int, int], str] = field(default_factory=dict)
    pcie_always: bool = False
    fixed: dict[str, tuple[int, int]] = field(default_factory=dict)
    conventions: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def pcie(self) -> bool:
        return self.root == "pcie-root"

    @property
    def x86(self) -> bool:
        return self.family in ("q35", "pc")


@dataclass(frozen=True)
class DeviceClass:
    key: str
    cls: str  # virtio | pcie | pci | none
    hotplug: bool = False
    io: bool = False
    pcie_only: bool = False
    integrated: bool = False
    io_bytes: int = 0  # I/O BAR as a conventional or integrated device
    # For a kind that never takes a PCI address, what libvirt 9.0 does with one it is given:
    # "drop" (it removes the address), "keep" (it keeps and reserves it), "refuse" (define fails);
    # "" for a key the catalogue does not know, which pciplan refuses too.
    pci_address: str = ""
    reason: str = ""  # why, for "refuse" and refused
    refused: bool = False  # libvirt refuses the device itself, address or not (define fails)
    note: str = ""  # a warning the plan carries for this kind (say, which libvirt knows it)
    known: bool = True

    @property
    def io_units(self) -> int:
        """I/O space in units of 32 bytes (the smallest BAR SeaBIOS places here; 4 KiB window = 128)."""
        return -(-self.io_bytes // IO_UNIT)


IO_UNIT = 32
IO_WINDOW_UNITS = 4096 // IO_UNIT

# Limits of PCI itself, whatever the machine: functions of a slot, slots of a bus, bus numbers of a
# PCI domain, and libvirt's highest PCI controller index (its bus number, at most 255).
FUNCTIONS = 8
SLOTS_PER_BUS = 32
MAX_BUS_NUMBERS = 256
MAX_INDEX = 255


@dataclass(frozen=True)
class Firmware:
    """A guest firmware's PCI resource budget on one machine family (models/firmware.toml)."""

    name: str  # seabios | ovmf | aavmf | none
    label: str
    uefi: bool
    pads_spares: bool  # every empty hot-plug port costs a 4 KiB I/O window of padding
    io_max: int = 0  # bytes of root-bus I/O it sets up (0: no budget)
    max_windows: int = 0  # bridge/port I/O windows planned (0: only io_max binds)
    source: str = ""
    measured: str = ""

    def io_capacity_units(self) -> int:
        """io_max in 32-byte units, rounded down (every BAR is counted rounded up to a unit)."""
        return self.io_max // IO_UNIT


def _load(name: str) -> dict:
    return tomllib.loads(resources.files("planner.models").joinpath(name).read_text())


@cache
def space_exclusions() -> dict[tuple[str, str], str]:
    """(bus model, connect type) -> why the model never plans that placement (models/space.toml),
    although libvirt accepts it at a given address."""
    return {(bus, x["connect"]): x["reason"] for x in _load("space.toml")["exclude"] for bus in x["buses"]}


@cache
def given_rule() -> tuple[frozenset[str], dict[str, str]]:
    """libvirt's looser rule for an address the user gave (models/space.toml [given]): (endpoint
    connect types a bus taking one of them takes all of, {connect type: the type it may go in place of})."""
    d = _load("space.toml")["given"]
    return frozenset(d["endpoints"]), dict(d["like"])


def given_accepts(accepts: frozenset[str]) -> frozenset[str]:
    """What a bus that accepts `accepts` when libvirt places takes at an address the user gave."""
    endpoints, like = given_rule()
    widened = accepts | endpoints if accepts & endpoints else accepts
    return widened | {c for c, instead in like.items() if instead in widened}


ROLES = ("root", "port", "switch", "bridge", "expander")


@cache
def controller_models() -> dict[str, ControllerModel]:
    out = {}
    excluded = space_exclusions()
    for name, d in _load("controllers.toml").items():
        # The candidate space follows these accepts: it must not contain what the space excludes.
        clash = [c for c in d["accepts"] if (name, c) in excluded]
        if clash:
            raise ValueError(f"models/controllers.toml: {name} accepts {clash}, excluded by space.toml")
        if d["role"] not in ROLES:
            raise ValueError(f"models/controllers.toml: {name} has role '{d['role']}', not one of {ROLES}")
        out[name] = ControllerModel(
            name=name,
            plugs_into=d["plugs_into"],
            accepts=frozenset(d["accepts"]),
            first_slot=d["slots"][0],
            last_slot=d["slots"][1],
            hotplug=d["hotplug"],
            autoassign=d["autoassign"],
            conventional=d["conventional"],
            buses=d["buses"],
            io_window=d["io_window"],
            qemu=d["qemu"],
            aggregate=d.get("aggregate", False),
            target=d.get("target", ""),
            role=d["role"],
            libvirt_hotplug=d.get("libvirt_hotplug", d["hotplug"]),
            accepts_given=given_accepts(frozenset(d["accepts"])),
        )
    return out


def models_in_role(role: str) -> tuple[str, ...]:
    """The controller models of one role, in models/controllers.toml's order."""
    return tuple(name for name, m in controller_models().items() if m.role == role)


ROOTS = models_in_role("root")  # index 0, the machine's own: never added, moved or removed
PORTS = models_in_role("port")  # PCIe hot-plug ports: one device each, one chassis namespace
EXPANDERS = models_in_role("expander")  # a root bus of their own, with a busNr and a NUMA node
# The slots of a bridge pciplan adds (pci-bridge or pcie-to-pci-bridge: the solver pools them alike)
SLOTS_PER_BRIDGE = min(controller_models()[m].slot_count for m in ("pci-bridge", "pcie-to-pci-bridge"))


@cache
def machines() -> dict[str, Machine]:
    out = {}
    for family, d in _load("machines.toml").items():
        out[family] = Machine(
            family=family,
            arches=tuple(d["arches"]),
            machine_patterns=tuple(d["machine_patterns"]),
            root=d["root"],
            reserved_slots=frozenset(d["reserved_slots"]),
            default_firmware=d["default_firmware"],
            chipset_io_bytes=d.get("chipset_io_bytes", 0),
            pxb=d["pxb"],
            gap_controller=d["gap_controller"],
            spare_pcie_ports=d["spare_pcie_ports"],
            spare_pci_slots=d["spare_pci_slots"],
            mmio_transports=d["mmio_transports"],
            acpi_root_hotplug=d["acpi_root_hotplug"],
            default_usb=d["default_usb"],
            default_net=d["default_net"],
            default_scsi=d["default_scsi"],
            implicit_usb=d["implicit_usb"],
            implicit_balloon=d["implicit_balloon"],
            default_video=d["default_video"],
            implicit_sata=d.get("implicit_sata", False),
            chipset={(c["slot"], c["function"]): c["name"] for c in d.get("chipset", [])},
            chipset_owner={(c["slot"], c["function"]): c["owner"]
                           for c in d.get("chipset", []) if "owner" in c},
            pcie_always=d.get("pcie_always", False),
            fixed={k: (v[0], v[1]) for k, v in d.get("fixed", {}).items()},
            conventions={k: tuple(v) for k, v in d.get("conventions", {}).items()},
        )
    return out


@cache
def _firmware_table() -> dict[str, dict]:
    return _load("firmware.toml")


def firmware_names() -> tuple[str, ...]:
    """The firmware pciplan knows: the tables of models/firmware.toml, in its order."""
    return tuple(_firmware_table())


def firmware_arches(name: str) -> tuple[str, ...]:
    return tuple(_firmware_table()[name]["arches"])


def firmware_for_loader(path: str) -> str | None:
    """The firmware a <loader> path names (by the file names distributions use), or None."""
    for name, d in _firmware_table().items():
        # SeaBIOS's names ("bios") are too short to search for: its file name is tested below
        if name != "seabios" and any(part.lower() in path.lower() for part in d["loader_names"]):
            return name
    base = path.rsplit("/", 1)[-1].lower()
    return "seabios" if "bios" in base and "efi" not in base else None


def firmware(name: str, family: str, acpi: bool) -> Firmware:
    """The budget of firmware `name` on a machine family; a family the table lacks gets no budget."""
    d = _firmware_table()[name]
    budget = d.get(family, {})
    return Firmware(
        name=name,
        label=d["label"],
        uefi=d["uefi"],
        pads_spares=d["pads_spares"],
        io_max=budget.get("io_max" if acpi else "io_max_noacpi", 0),
        max_windows=budget.get("max_windows", 0),
        source=budget.get("source", ""),
        measured=budget.get("measured", ""),
    )


@lru_cache(maxsize=256)  # every guest asks, with the same few names (machines() is read once too)
def machine_for(arch: str, machine: str) -> Machine | None:
    """The machine family for an <os><type arch machine>, or None when pciplan does not plan it."""
    for m in machines().values():
        if arch in m.arches and any(fnmatch.fnmatchcase(machine, p) for p in m.machine_patterns):
            return m
    return None


def _device_entry(key: str, d: dict) -> DeviceClass:
    return DeviceClass(
        key=key,
        cls=d["class"],
        hotplug=d.get("hotplug", False),
        io=d.get("io", False),
        pcie_only=d.get("pcie_only", False),
        integrated=d.get("integrated", False),
        io_bytes=d.get("io_bytes", 0),
        pci_address=d.get("pci_address", ""),
        reason=d.get("reason", ""),
        refused=d.get("refused", False),
        note=d.get("note", ""),
    )


@cache
def _device_table(libvirt: LibvirtVersion) -> dict[str, DeviceClass]:
    """devices.toml (libvirt's baseline), with models/libvirt.toml's changes up to `libvirt` applied."""
    out = {key: _device_entry(key, d) for key, d in _load("devices.toml").items()}
    for key, d in _libvirt_table()["device"].items():
        if parse_libvirt_version(d["since"]) <= libvirt:
            out[key] = _device_entry(key, d)
    # a note may name the version planned for
    return {key: replace(e, note=e.note.replace("{libvirt}", str(libvirt))) for key, e in out.items()}


def catalogue_keys() -> list[str]:
    """Every 'kind:model' the catalogue knows, for any libvirt version (what options may name)."""
    baseline = _load("devices.toml")
    return [*baseline, *(k for k in _libvirt_table()["device"] if k not in baseline)]


# (the libvirt planned for, (kind, model) -> its DeviceClass): device_class's answers for that libvirt,
# as every guest asks the same few pairs (a DeviceClass is immutable: one answer can be shared)
_classes: tuple[LibvirtVersion | None, dict[tuple[str, str], DeviceClass]] = (None, {})


def device_class(kind: str, model: str) -> DeviceClass:
    """Look up 'kind:model', then the 'kind:*' fallback (kind may itself contain ':'), in the catalogue
    of the libvirt pciplan plans for (target_libvirt())."""
    global _classes
    libvirt = target_libvirt()
    version, known = _classes
    if version is not libvirt or len(known) > 4096:  # (bounded: models are the input's words)
        known = {}
        _classes = (libvirt, known)
    found = known.get((kind, model))
    if found is None:
        found = known[kind, model] = _look_up_class(_device_table(libvirt), kind, model)
    return found


def _look_up_class(table: dict[str, DeviceClass], kind: str, model: str) -> DeviceClass:
    for key in (f"{kind}:{model}", f"{kind}:*"):
        if key in table:
            return table[key]
    return DeviceClass(key=f"{kind}:{model}", cls="none", known=False)


# ---------------------------------------------------------------------------------------------------
# The libvirt version pciplan plans for (models/libvirt.toml)

LIBVIRT_VERSION_ENV = "PCIPLAN_LIBVIRT_VERSION"


@dataclass(frozen=True, order=True)
class LibvirtVersion:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def parse_libvirt_version(text: str) -> LibvirtVersion:
    """'11.3' or '11.3.0' (a micro number is ignored: libvirt changes nothing PCI in one); ValueError else."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)?\s*", text)
    if not m:
        raise ValueError(f"'{text}' is not a libvirt version (MAJOR.MINOR, say 11.3)")
    return LibvirtVersion(int(m.group(1)), int(m.group(2)))


@cache
def _libvirt_table() -> dict:
    return _load("libvirt.toml")


def baseline_libvirt() -> LibvirtVersion:
    """The libvirt devices.toml describes; the catalogue knows nothing older."""
    return parse_libvirt_version(_libvirt_table()["baseline"])


def default_libvirt() -> LibvirtVersion:
    return parse_libvirt_version(_libvirt_table()["default"])


def verified_libvirts() -> tuple[LibvirtVersion, ...]:
    return tuple(parse_libvirt_version(v) for v in _libvirt_table()["verified"])


def libvirt_changes() -> dict[str, dict]:
    """models/libvirt.toml's device changes: 'kind:model' -> its table (since, class, ...)."""
    return dict(_libvirt_table()["device"])


# libvirt's shared library carries its version in its file name: libvirt.so.0.MAJOR*1000+MINOR.MICRO.
_LIBRARY_DIRS = ("/usr/lib/*-linux-gnu*", "/usr/lib64", "/usr/lib", "/usr/local/lib64", "/usr/local/lib")


def _library_libvirt() -> LibvirtVersion | None:
    """The installed libvirt from its library's file name (no import: loading the binding costs a
    tenth of a second of every command); None when there is none, or more than one."""
    import glob

    found = {m.group(1) for d in _LIBRARY_DIRS for path in glob.glob(f"{d}/libvirt.so.0.*")
             if (m := re.fullmatch(r".*/libvirt\.so\.0\.(\d+)\.\d+", path))}
    if len(found) != 1:
        return None
    number = int(found.pop())
    return LibvirtVersion(number // 1000, number % 1000)


@cache
def installed_libvirt() -> LibvirtVersion | None:
    """The installed libvirt's version: from the binding's getVersion() where it is loaded already,
    else from the library's file name, else by loading the binding (the library's own version: no
    connection, no daemon); None without libvirt."""
    import importlib.util
    import sys

    if "libvirt" not in sys.modules and (version := _library_libvirt()) is not None:
        return version
    if "libvirt" not in sys.modules:
        if importlib.util.find_spec("libvirt") is None:
            return None
        # Load it the way the real-stack driver does, so its log chatter goes to the driver's log file.
        from planner.stack.model import _import_libvirt, default_root

        log = default_root() / "log"
        try:
            log.mkdir(parents=True, exist_ok=True)
            _import_libvirt(log / "libvirt.log")
        except Exception:  # noqa: BLE001 - a broken binding only means: not detected
            return None
    try:
        number = int(sys.modules["libvirt"].getVersion())
    except Exception:  # noqa: BLE001 - same
        return None
    return LibvirtVersion(number // 1_000_000, number // 1000 % 1000)


_target: tuple[LibvirtVersion, str] | None = None


def set_target_libvirt(version: LibvirtVersion | None, source: str = "--libvirt-version") -> None:
    """Plan for `version` from now on (None: detect again). Also exported in the environment, so
    worker processes (fleet --jobs) plan for the same libvirt."""
    global _target
    if version is None:
        _target = None
        os.environ.pop(LIBVIRT_VERSION_ENV, None)
        return
    if version < baseline_libvirt():
        raise ValueError(f"libvirt {version} is older than the catalogue (models/libvirt.toml starts at "
                         f"{baseline_libvirt()})")
    _target = (version, source)
    os.environ[LIBVIRT_VERSION_ENV] = str(version)


def target_libvirt_source() -> tuple[LibvirtVersion, str]:
    """(the libvirt pciplan plans for, where that came from: --libvirt-version, $PCIPLAN_LIBVIRT_VERSION,
    'installed' or 'default')."""
    global _target
    if _target is None:
        env = os.environ.get(LIBVIRT_VERSION_ENV)
        if env:
            try:
                _target = (parse_libvirt_version(env), f"${LIBVIRT_VERSION_ENV}")
            except ValueError as exc:
                from planner.xml.xmlio import InputError

                raise InputError(f"${LIBVIRT_VERSION_ENV}: {exc}") from None
        else:
            installed = installed_libvirt()
            _target = (installed, "installed") if installed else (default_libvirt(), "default")
    return _target


def target_libvirt() -> LibvirtVersion:
    return target_libvirt_source()[0]


@contextlib.contextmanager
def targeting_libvirt(version: LibvirtVersion) -> Iterator[None]:
    """Plan for `version` inside the block (the API's --libvirt-version), then as before."""
    global _target
    saved, saved_env = _target, os.environ.get(LIBVIRT_VERSION_ENV)
    set_target_libvirt(version, "targeting_libvirt")
    try:
        yield
    finally:
        _target = saved
        if saved_env is None:
            os.environ.pop(LIBVIRT_VERSION_ENV, None)
        else:
            os.environ[LIBVIRT_VERSION_ENV] = saved_env
