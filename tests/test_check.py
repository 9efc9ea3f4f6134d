"""Tests of planner.checker.check, the independent PCI rule checker.

Most cases are small domain XML snippets with the exact rule ids the checker must report and libvirt
9.0's own verdict on defining them. The verdicts are re-checked against the real libvirt by the
`realstack` tests (skipped when the binding or QEMU is missing, unless PCIPLAN_REQUIRE_REALSTACK=1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from conftest import SHARED, SHARED_MISSING, domain_xml, libvirt_manifest
from lxml import etree
from realstack import real_stack_fixture  # noqa: F401

from planner.checker.check import (
    RULES,
    WARNING_RULES,
    Violation,
    check_domain,
    classify,
    machine_family,
)
from planner.xml.xmlio import parse_domain, parse_domain_bytes

LIBVIRT_CASES = SHARED / "cases" / "libvirt"

# Keeps libvirt from adding devices of its own when the snippets are defined for real.
QUIET = "<controller type='usb' index='0' model='none'/><memballoon model='none'/>"


# ---------------------------------------------------------------------------------------------------
# Snippet builders


def dom(devices: str, machine: str = "q35", arch: str = "x86_64", extra: str = "", quiet: bool = True) -> str:
    return domain_xml(machine, devices + (QUIET if quiet else ""), arch=arch, acpi=False, extra=extra,
                      memory_kib=262144).decode()


def addr(bus: int, slot: int, function: int = 0, mf: str | None = None) -> str:
    multifunction = f" multifunction='{mf}'" if mf else ""
    return (
        f"<address type='pci' domain='0x0000' bus='{bus:#04x}' slot='{slot:#04x}' "
        f"function='{function:#x}'{multifunction}/>"
    )


def ctrl(
    index: int, model: str, bus: int, slot: int, function: int = 0, mf: str | None = None, target: str = ""
) -> str:
    inner = target + addr(bus, slot, function, mf)
    return f"<controller type='pci' index='{index}' model='{model}'>{inner}</controller>"


def nic(model: str, bus: int, slot: int, function: int = 0, mf: str | None = None) -> str:
    return f"<interface type='user'><model type='{model}'/>{addr(bus, slot, function, mf)}</interface>"


def root_ports(count: int, first_index: int = 1, first_slot: int = 1) -> str:
    """`count` root ports packed eight to a pcie-root slot."""
    out = []
    for n in range(count):
        slot, function = first_slot + n // 8, n % 8
        mf = "on" if function == 0 else None
        out.append(ctrl(first_index + n, "pcie-root-port", 0, slot, function, mf))
    return "".join(out)


def parse(xml: str) -> etree._ElementTree:
    return parse_domain_bytes(xml.encode(), "<test>")


def violations(xml: str, require_complete: bool = False) -> list[Violation]:
    return check_domain(parse(xml), require_complete=require_complete)


def rules(xml: str, require_complete: bool = False) -> set[str]:
    return {v.rule for v in violations(xml, require_complete)}


# ---------------------------------------------------------------------------------------------------
# Verdict table: XML, the rules the checker reports, and whether libvirt 9.0 refuses to define it
# (None: libvirt's verdict is not part of the point).


@dataclass(frozen=True)
class Case:
    id: str
    xml: str
    rules: frozenset[str]
    libvirt_rejects: bool | None


def case(id: str, xml: str, expected: set[str], libvirt_rejects: bool | None) -> Case:
    return Case(id, xml, frozenset(expected), libvirt_rejects)


RP1 = ctrl(1, "pcie-root-port", 0, 2, mf="on")
Q35_ROOT = "<controller type='pci' index='0' model='pcie-root'/>"
NUMA2 = (
    "<cpu><numa><cell id='0' cpus='0' memory='131072' unit='KiB'/>"
    "<cell id='1' cpus='1' memory='131072' unit='KiB'/></numa></cpu>"
)

BASIC_CASES = [
    # machine families and their root
    case("q35-ok", dom(nic("virtio", 0, 2)), set(), False),
    case("pc-q35-versioned", dom(nic("virtio", 0, 2), machine="pc-q35-7.2"), set(), False),
    case("pc-ok", dom(nic("e1000", 0, 3), machine="pc"), set(), False),
    case("pc-i440fx-versioned", dom(nic("e1000", 0, 3), machine="pc-i440fx-7.2"), set(), False),
    case("aarch64-virt", dom(nic("virtio", 0, 1), machine="virt", arch="aarch64"), set(), False),
    case("riscv64-virt", dom(nic("virtio", 0, 1), machine="virt", arch="riscv64"), set(), False),
    case(
        "pc-with-pcie-root",
        dom("<controller type='pci' index='0' model='pcie-root'/>", machine="pc"),
        {"root-model"},
        True,
    ),
    case(
        "aarch64-with-pci-root",
        dom("<controller type='pci' index='0' model='pci-root'/>", machine="virt", arch="aarch64"),
        {"root-model"},
        True,
    ),
    case(
        "root-model-at-index-2",
        dom(RP1 + "<controller type='pci' index='2' model='pcie-root'/>"),
        {"root-model"},
        True,
    ),
    case("controller-without-model", dom("<controller type='pci' index='1'/>"), {"controller-model"}, True),
    # address ranges
    case("root-port-slot-1", dom(RP1 + nic("virtio", 1, 1)), {"slot-range"}, True),
    case(
        "pci-bridge-slot-0",
        dom(ctrl(1, "pci-bridge", 0, 3) + nic("e1000", 1, 0), machine="pc"),
        {"slot-range"},
        True,
    ),
    case(
        "pci-bridge-slot-1", dom(ctrl(1, "pci-bridge", 0, 3) + nic("e1000", 1, 1), machine="pc"), set(), False
    ),
    case("slot-32", dom(nic("virtio", 0, 32)), {"slot-range"}, True),
    case("function-8", dom(nic("virtio", 0, 2, 8)), {"function-range"}, True),
    case(
        "domain-1", dom(nic("virtio", 0, 2).replace("domain='0x0000'", "domain='0x0001'")), {"domain"}, True
    ),
    case("bus-without-controller", dom(nic("e1000", 3, 1), machine="pc"), {"bus-missing"}, False),
    # double use and chipset slots
    case("double-use", dom(nic("e1000", 0, 3) + nic("e1000", 0, 3), machine="pc"), {"double-use"}, True),
    case("q35-lpc", dom(nic("virtio", 0, 0x1F, 0)), {"reserved"}, True),
    case("q35-smbus", dom(nic("virtio", 0, 0x1F, 3)), {"reserved"}, True),
    case("q35-sata-slot-taken", dom(nic("virtio", 0, 0x1F, 2)), {"reserved"}, True),
    case("q35-free-ich9-function", dom(nic("virtio", 0, 0x1F, 4)), set(), False),
    case(
        "q35-sata0-elsewhere",
        dom(f"<controller type='sata' index='0'>{addr(0, 3)}</controller>"),
        {"fixed-address"},
        True,
    ),
    case(
        "q35-sata0-in-place",
        dom(f"<controller type='sata' index='0'>{addr(0, 0x1F, 2)}</controller>"),
        set(),
        False,
    ),
    case("pc-isa-bridge", dom(nic("e1000", 0, 1, 0), machine="pc"), {"reserved"}, True),
    case("pc-acpi", dom(nic("e1000", 0, 1, 3), machine="pc"), {"reserved"}, True),
    # libvirt accepts this one, but QEMU always has piix3-ide there and fails to start
    case("pc-ide-slot", dom(nic("e1000", 0, 1, 1), machine="pc"), {"reserved-qemu"}, False),
    case(
        "pc-ide0-elsewhere",
        dom(f"<controller type='ide' index='0'>{addr(0, 5)}</controller>", machine="pc"),
        {"fixed-address"},
        True,
    ),
    case("pc-usb0-slot", dom(nic("e1000", 0, 1, 2), machine="pc", quiet=False), {"reserved"}, True),
    case("pc-usb0-slot-free-without-usb", dom(nic("e1000", 0, 1, 2), machine="pc"), set(), False),
    case(
        "pc-usb0-elsewhere",
        dom(
            f"<controller type='usb' index='0' model='piix3-uhci'>{addr(0, 5)}</controller>"
            "<memballoon model='none'/>",
            machine="pc",
            quiet=False,
        ),
        {"fixed-address"},
        True,
    ),
    # functions of a slot
    case("function-0-missing", dom(nic("e1000", 0, 5, 1), machine="pc"), {"function0"}, False),
    case(
        "multifunction-on",
        dom(nic("e1000", 0, 5, 0, "on") + nic("e1000", 0, 5, 1), machine="pc"),
        set(),
        False,
    ),
    case(
        "multifunction-absent",
        dom(nic("e1000", 0, 5, 0) + nic("e1000", 0, 5, 1), machine="pc"),
        {"multifunction-flag"},
        False,
    ),
    # libvirt accepts, QEMU fails: "single function device can't be populated in function 0.1"
    case(
        "multifunction-off",
        dom(nic("e1000", 0, 5, 0, "off") + nic("e1000", 0, 5, 1), machine="pc"),
        {"multifunction"},
        False,
    ),
    case(
        "endpoint-and-root-port-share-slot",
        dom(ctrl(1, "pcie-root-port", 0, 2, 0, "on") + nic("virtio", 0, 2, 1)),
        set(),
        False,
    ),
    # controller indices
    case("index-duplicate", dom(RP1 + ctrl(1, "pcie-root-port", 0, 3)), {"index-duplicate"}, True),
    case("index-gap", dom(ctrl(2, "pcie-root-port", 0, 2)), {"index-gap"}, False),
    case(
        "pci-bridge-parent-index",
        dom(ctrl(1, "pci-bridge", 2, 1) + ctrl(2, "pci-bridge", 0, 3), machine="pc"),
        {"parent-index-bridge"},
        True,
    ),
    # libvirt accepts it for other models; QEMU fails ("Bus 'pci.2' not found")
    case(
        "upstream-parent-index",
        dom(ctrl(1, "pcie-switch-upstream-port", 2, 0) + ctrl(2, "pcie-root-port", 0, 2)),
        {"parent-index"},
        False,
    ),
    # chassis namespace of root and downstream ports (QEMU: "Can't add chassis slot, error -16")
    case(
        "chassis-duplicate",
        dom(
            ctrl(1, "pcie-root-port", 0, 2, target="<target chassis='7'/>")
            + ctrl(2, "pcie-root-port", 0, 3, target="<target chassis='7'/>")
        ),
        {"chassis-duplicate"},
        False,
    ),
    case(
        "chassis-default-collision",
        dom(
            ctrl(1, "pcie-root-port", 0, 2) + ctrl(2, "pcie-root-port", 0, 3, target="<target chassis='1'/>")
        ),
        {"chassis-duplicate"},
        False,
    ),
    case(
        "downstream-chassis-collision",
        dom(
            RP1
            + ctrl(2, "pcie-switch-upstream-port", 1, 0)
            + ctrl(3, "pcie-switch-downstream-port", 2, 0, target="<target chassis='1'/>")
        ),
        {"chassis-duplicate"},
        False,
    ),
    # target options and ranges
    case(
        "chassis-on-pci-bridge",
        dom(ctrl(1, "pci-bridge", 0, 3, target="<target chassis='3'/>"), machine="pc"),
        {"target-option"},
        True,
    ),
    case(
        "chassisNr-0",
        dom(ctrl(1, "pci-bridge", 0, 3, target="<target chassisNr='0'/>"), machine="pc"),
        {"target-range"},
        True,
    ),
    case(
        "port-256",
        dom(ctrl(1, "pcie-root-port", 0, 2, target="<target port='256'/>")),
        {"target-range"},
        True,
    ),
    # expander buses
    case(
        "busNr-255",
        dom(ctrl(1, "pci-expander-bus", 0, 3, target="<target busNr='255'/>"), machine="pc"),
        {"busnr-range"},
        True,
    ),
    case(
        "busNr-duplicate",
        dom(
            ctrl(1, "pci-expander-bus", 0, 3, target="<target busNr='100'/>")
            + ctrl(2, "pci-expander-bus", 0, 4, target="<target busNr='100'/>"),
            machine="pc",
        ),
        {"busnr-duplicate"},
        False,
    ),
    case(
        "busNr-below-root-hierarchy",
        dom(
            ctrl(1, "pci-expander-bus", 0, 3, target="<target busNr='3'/>")
            + "".join(ctrl(i, "pci-bridge", 0, 2 + i) for i in range(2, 6)),
            machine="pc",
        ),
        {"busnr-partition"},
        False,
    ),
    case(
        "busNr-subtree-overflows",
        dom(
            ctrl(1, "pci-expander-bus", 0, 3, target="<target busNr='253'/>")
            + ctrl(2, "pci-bridge", 1, 1)
            + ctrl(3, "pci-bridge", 1, 2),
            machine="pc",
        ),
        {"busnr-partition"},
        False,
    ),
    case(
        "busNr-fits",
        dom(
            ctrl(1, "pci-expander-bus", 0, 3, target="<target busNr='250'/>")
            + ctrl(2, "pci-bridge", 1, 1)
            + ctrl(3, "pci-bridge", 1, 2),
            machine="pc",
        ),
        set(),
        False,
    ),
    case("pxb-on-q35", dom(ctrl(1, "pci-expander-bus", 0, 3)), {"model-machine", "connect-type"}, True),
    case(
        "pxb-pcie-on-pc",
        dom(ctrl(1, "pcie-expander-bus", 0, 3), machine="pc"),
        {"model-machine", "connect-type"},
        True,
    ),
    case(
        "pxb-pcie-on-riscv",
        dom(ctrl(1, "pcie-expander-bus", 0, 3), machine="virt", arch="riscv64"),
        {"model-machine"},
        True,
    ),
    case(
        "pxb-pcie-on-aarch64",
        dom(ctrl(1, "pcie-expander-bus", 0, 3), machine="virt", arch="aarch64"),
        set(),
        False,
    ),
    case("ide-on-q35", dom("<controller type='ide' index='0'/>"), {"model-machine"}, True),
    # NUMA
    case(
        "numa-node-ok",
        dom(ctrl(1, "pcie-expander-bus", 0, 3, target="<target><node>1</node></target>"), extra=NUMA2),
        set(),
        False,
    ),
    case(
        "numa-node-missing-cell",
        dom(ctrl(1, "pcie-expander-bus", 0, 3, target="<target><node>2</node></target>"), extra=NUMA2),
        {"numa-node"},
        True,
    ),
    case(
        "numa-node-on-root-port",
        dom(ctrl(1, "pcie-root-port", 0, 3, target="<target><node>1</node></target>"), extra=NUMA2),
        {"numa-node"},
        True,
    ),
    # integrated devices
    case(
        "iommu-on-bus-0",
        dom(f"<iommu model='virtio'>{addr(0, 2)}</iommu>", extra="<features><acpi/></features>"),
        set(),
        False,
    ),
    case(
        "iommu-on-root-port",
        dom(RP1 + f"<iommu model='virtio'>{addr(1, 0)}</iommu>", extra="<features><acpi/></features>"),
        {"integrated"},
        True,
    ),
]


# Connect-type matrix for user-given addresses (spec §1.4): parent bus set-ups, then children.
@dataclass(frozen=True)
class Parent:
    machine: str
    controllers: str  # the controllers that make the parent bus
    bus: int  # index of the parent bus
    slot: int  # a valid slot on it
    next_index: int  # index the child controller gets


PARENTS = {
    "pcie-root": Parent("q35", "", 0, 5, 1),
    "pcie-root-port": Parent("q35", RP1, 1, 0, 2),
    "downstream-port": Parent(
        "q35",
        RP1 + ctrl(2, "pcie-switch-upstream-port", 1, 0) + ctrl(3, "pcie-switch-downstream-port", 2, 0),
        3,
        0,
        4,
    ),
    "upstream-port": Parent("q35", RP1 + ctrl(2, "pcie-switch-upstream-port", 1, 0), 2, 0, 3),
    "pcie-to-pci-bridge": Parent("q35", RP1 + ctrl(2, "pcie-to-pci-bridge", 1, 0), 2, 1, 3),
    "dmi-to-pci-bridge": Parent("q35", ctrl(1, "dmi-to-pci-bridge", 0, 0x1E), 1, 0, 2),
    "pci-bridge-on-q35": Parent(
        "q35", ctrl(1, "dmi-to-pci-bridge", 0, 0x1E) + ctrl(2, "pci-bridge", 1, 1), 2, 1, 3
    ),
    "pxb-pcie": Parent("q35", ctrl(1, "pcie-expander-bus", 0, 5, target="<target busNr='200'/>"), 1, 0, 2),
    "pci-root": Parent("pc", "", 0, 5, 1),
    "pci-bridge": Parent("pc", ctrl(1, "pci-bridge", 0, 5), 1, 1, 2),
    "pxb": Parent("pc", ctrl(1, "pci-expander-bus", 0, 5, target="<target busNr='200'/>"), 1, 0, 2),
}
Q35_CHILDREN = [
    "virtio",
    "e1000",
    "pcie-root-port",
    "pcie-switch-upstream-port",
    "pcie-switch-downstream-port",
    "pcie-to-pci-bridge",
    "dmi-to-pci-bridge",
    "pci-bridge",
    "pcie-expander-bus",
]
PC_CHILDREN = ["virtio", "e1000", "pci-bridge", "pci-expander-bus", "pcie-root-port"]
ACCEPTED = {  # parent -> children libvirt accepts there (from config)
    "pcie-root": {
        "virtio",
        "e1000",
        "pcie-root-port",
        "dmi-to-pci-bridge",
        "pci-bridge",
        "pcie-expander-bus",
    },
    "pcie-root-port": {"virtio", "e1000", "pcie-switch-upstream-port", "pcie-to-pci-bridge", "pci-bridge"},
    "downstream-port": {"virtio", "e1000", "pcie-switch-upstream-port", "pcie-to-pci-bridge", "pci-bridge"},
    "upstream-port": {"pcie-switch-downstream-port"},
    "pcie-to-pci-bridge": {"virtio", "e1000", "pci-bridge"},
    "dmi-to-pci-bridge": {"virtio", "e1000", "pci-bridge"},
    "pci-bridge-on-q35": {"virtio", "e1000", "pci-bridge"},
    "pxb-pcie": {"pcie-root-port", "dmi-to-pci-bridge"},
    "pci-root": {"virtio", "e1000", "pci-bridge", "pci-expander-bus"},
    "pci-bridge": {"virtio", "e1000", "pci-bridge"},
    "pxb": {"virtio", "e1000", "pci-bridge"},
}


# Accepted, but outside the space pciplan plans over (models/space.toml): a warning.
SPACE_WARNINGS = {
    ("pcie-root", "pci-bridge"): "pci-bridge-on-pcie",
    ("pcie-root-port", "pci-bridge"): "pci-bridge-on-pcie",
    ("downstream-port", "pci-bridge"): "pci-bridge-on-pcie",
    ("pcie-root-port", "e1000"): "conventional-in-pcie-port",
    ("downstream-port", "e1000"): "conventional-in-pcie-port",
}


def matrix_cases() -> list[Case]:
    out = []
    for parent_name, parent in PARENTS.items():
        children = Q35_CHILDREN if parent.machine == "q35" else PC_CHILDREN
        for child in children:
            if child in ("virtio", "e1000"):
                child_xml = nic(child, parent.bus, parent.slot)
            else:
                child_xml = ctrl(parent.next_index, child, parent.bus, parent.slot)
            bad = child not in ACCEPTED[parent_name]
            out.append(
                case(
                    f"{child}-on-{parent_name}",
                    dom(parent.controllers + child_xml, machine=parent.machine),
                    {"connect-type"} if bad else ({SPACE_WARNINGS[parent_name, child]}
                                                  if (parent_name, child) in SPACE_WARNINGS else set()),
                    bad,
                )
            )
    return out


ALL_CASES = BASIC_CASES + matrix_cases()


@pytest.mark.parametrize("c", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_rules_reported(c: Case) -> None:
    assert rules(c.xml) == c.rules, [str(v) for v in violations(c.xml)]


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in ALL_CASES}) == len(ALL_CASES)


# ---------------------------------------------------------------------------------------------------
# Machine families and device classification


@pytest.mark.parametrize(
    ("arch", "machine", "family"),
    [
        ("x86_64", "q35", "q35"),
        ("x86_64", "pc-q35-7.2", "q35"),
        ("x86_64", "pc", "pc"),
        ("i686", "pc-i440fx-2.5", "pc"),
        ("x86_64", "pc-0.15", "pc"),
        ("x86_64", "pc-1.2", "pc"),
        ("aarch64", "virt", "aarch64-virt"),
        ("aarch64", "virt-7.2", "aarch64-virt"),
        ("riscv64", "virt", "riscv64-virt"),
        ("x86_64", "isapc", None),
        ("x86_64", "microvm", None),
        ("aarch64", "raspi3b", None),
        ("ppc64", "pseries", None),
    ],
)
def test_machine_family(arch: str, machine: str, family: str | None) -> None:
    root = etree.fromstring(f"<domain><os><type arch='{arch}' machine='{machine}'>hvm</type></os></domain>")
    assert machine_family(root)[0] == family


def test_unknown_machine_is_one_violation() -> None:
    assert [v.rule for v in violations(dom(nic("virtio", 0, 2), machine="isapc"))] == ["machine"]


def _elem(xml: str) -> etree._Element:
    return etree.fromstring(xml)


@pytest.mark.parametrize(
    ("xml", "family", "uses_pci", "io_bar_on_port"),
    [
        ("<interface type='user'><model type='virtio'/></interface>", "q35", True, False),
        ("<interface type='user'><model type='virtio-transitional'/></interface>", "q35", True, True),
        ("<interface type='user'><model type='e1000e'/></interface>", "q35", True, True),
        ("<interface type='user'><model type='ViRtIo'/></interface>", "pc", True, False),
        ("<interface type='user'/>", "q35", True, True),  # default model rtl8139
        ("<interface type='user'/>", "aarch64-virt", True, False),  # default model virtio
        (
            "<interface type='hostdev'><source><address type='pci' bus='1' slot='0'/></source></interface>",
            "q35",
            True,
            True,
        ),
        ("<interface type='user'><model type='usb-net'/></interface>", "q35", False, False),
        ("<disk type='file'><target dev='vda' bus='virtio'/></disk>", "q35", True, False),
        ("<disk type='file'><target dev='vdb'/></disk>", "q35", True, False),
        (
            "<disk type='file' model='virtio-transitional'><target dev='vda' bus='virtio'/></disk>",
            "q35",
            True,
            True,
        ),
        ("<disk type='file'><target dev='sda' bus='sata'/></disk>", "q35", False, False),
        ("<controller type='usb' index='0'/>", "q35", True, False),  # qemu-xhci
        ("<controller type='usb' index='0'/>", "pc", True, True),  # piix3-uhci
        ("<controller type='usb' index='0' model='ich9-ehci1'/>", "q35", True, True),
        ("<controller type='usb' index='0' model='none'/>", "q35", False, False),
        ("<controller type='scsi' index='0'/>", "q35", True, True),  # lsilogic
        ("<controller type='scsi' index='0' model='virtio-scsi'/>", "q35", True, False),
        ("<controller type='scsi' index='0' model='ncr53c90'/>", "q35", False, False),
        ("<controller type='sata' index='0'/>", "q35", True, True),
        ("<controller type='ide' index='0'/>", "pc", True, True),
        ("<controller type='virtio-serial' index='0'/>", "q35", True, False),
        ("<controller type='fdc' index='0'/>", "pc", False, False),
        ("<controller type='ccid' index='0'/>", "pc", False, False),
        (
            "<hostdev mode='subsystem' type='pci'><source><address bus='6' slot='18'/></source></hostdev>",
            "q35",
            True,
            True,
        ),
        (
            "<hostdev mode='subsystem' type='scsi_host'><source protocol='vhost' wwpn='x'/></hostdev>",
            "q35",
            True,
            False,
        ),
        ("<hostdev mode='subsystem' type='usb'/>", "q35", False, False),
        ("<video><model type='qxl'/></video>", "q35", True, True),
        ("<video><model type='virtio'/></video>", "q35", True, False),
        ("<video><model type='bochs'/></video>", "q35", True, False),
        ("<video><model type='none'/></video>", "q35", False, False),
        ("<video><model type='ramfb'/></video>", "aarch64-virt", False, False),
        ("<sound model='ich9'/>", "q35", True, True),
        ("<sound model='ac97'/>", "pc", True, True),
        ("<sound model='es1370'/>", "pc", True, True),
        ("<sound model='sb16'/>", "pc", False, False),
        ("<watchdog model='i6300esb'/>", "q35", True, True),
        ("<watchdog model='ib700'/>", "pc", False, False),
        ("<rng model='virtio'/>", "q35", True, False),
        ("<vsock/>", "q35", True, False),
        ("<input type='keyboard' bus='virtio'/>", "q35", True, False),
        ("<input type='keyboard' bus='ps2'/>", "q35", False, False),
        ("<filesystem type='mount'><source dir='/a'/><target dir='a'/></filesystem>", "q35", True, False),
        ("<filesystem type='mount'><driver type='virtiofs'/></filesystem>", "q35", True, False),
        ("<memballoon model='virtio'/>", "q35", True, False),
        ("<memballoon model='none'/>", "q35", False, False),
        ("<memory model='virtio-mem'/>", "q35", True, False),
        ("<memory model='virtio-pmem'/>", "q35", True, False),
        ("<memory model='dimm'/>", "q35", False, False),
        ("<shmem name='s'/>", "q35", True, True),
        ("<serial type='pty'><target type='pci-serial'/></serial>", "q35", True, True),
        ("<serial type='pty'><target type='isa-serial'/></serial>", "q35", False, False),
        ("<iommu model='virtio'/>", "q35", True, False),
        ("<iommu model='intel'/>", "q35", False, False),
        ("<tpm model='tpm-crb'/>", "q35", False, False),
        ("<graphics type='vnc'/>", "q35", False, False),
    ],
)
def test_classify(xml: str, family: str, uses_pci: bool, io_bar_on_port: bool) -> None:
    kind = classify(_elem(xml), family)
    assert (kind is not None) == uses_pci
    if kind is not None:
        assert kind.io_bar_on_port == io_bar_on_port


def test_only_iommu_is_integrated() -> None:
    kind = classify(_elem("<iommu model='virtio'/>"), "q35")
    assert kind is not None and kind.integrated
    other = classify(_elem("<rng model='virtio'/>"), "q35")
    assert other is not None and not other.integrated


# ---------------------------------------------------------------------------------------------------
# Completeness (require_complete)


@pytest.mark.parametrize(
    "device",
    [
        "<interface type='user'><model type='virtio'/></interface>",
        "<interface type='hostdev'><source><address type='pci' bus='1' slot='0'/></source></interface>",
        "<disk type='file'><target dev='vda' bus='virtio'/></disk>",
        "<controller type='usb' index='0' model='qemu-xhci'/>",
        "<controller type='scsi' index='0' model='virtio-scsi'/>",
        "<controller type='virtio-serial' index='0'/>",
        "<hostdev mode='subsystem' type='pci'><source><address bus='6' slot='18'/></source></hostdev>",
        "<video><model type='vga'/></video>",
        "<sound model='ich9'/>",
        "<watchdog model='i6300esb'/>",
        "<rng model='virtio'/>",
        "<vsock model='virtio'/>",
        "<input type='tablet' bus='virtio'/>",
        "<shmem name='s'/>",
        "<serial type='pty'><target type='pci-serial'/></serial>",
        "<interface type='user'><model type='virtio'/><address type='pci'/></interface>",
        "<interface type='user'><model type='virtio'/><address type='pci' bus='0' slot='2'/></interface>",
        f"<interface type='user'><model type='virtio'/>{addr(0, 0)}</interface>",
    ],
)
def test_unaddressed_device_is_flagged_only_when_complete(device: str) -> None:
    xml = dom(Q35_ROOT + device)
    assert rules(xml, require_complete=True) == {"unaddressed"}
    assert "unaddressed" not in rules(xml, require_complete=False)


@pytest.mark.parametrize(
    "device",
    [
        "<hostdev mode='subsystem' type='pci'><source><address bus='6' slot='18'/></source>"
        "<address type='unassigned'/></hostdev>",
        "<rng model='virtio'><address type='virtio-mmio'/></rng>",
        "<video><model type='none'/></video>",
        "<sound model='sb16'/>",
        "<controller type='usb' index='1' model='none'/>",
        "<disk type='file'><target dev='sda' bus='scsi'/><address type='drive'/></disk>",
    ],
)
def test_devices_without_pci_need_no_address(device: str) -> None:
    arch, machine = ("aarch64", "virt") if "virtio-mmio" in device else ("x86_64", "q35")
    assert rules(dom(Q35_ROOT + device, machine=machine, arch=arch), require_complete=True) == set()


def test_serial_console_is_not_a_second_device() -> None:
    serial = f"<serial type='pty'><target type='pci-serial'/>{addr(0, 3)}</serial>"
    console = f"<console type='pty'><target type='serial'/>{addr(0, 3)}</console>"
    pc_root = "<controller type='pci' index='0' model='pci-root'/>"
    assert rules(dom(pc_root + serial + console, machine="pc"), require_complete=True) == set()


def test_missing_root_only_when_complete() -> None:
    xml = dom(RP1)
    assert rules(xml, require_complete=True) == {"root-missing"}
    assert rules(xml, require_complete=False) == set()


def test_missing_index_only_when_complete() -> None:
    xml = dom(Q35_ROOT + f"<controller type='pci' model='pcie-root-port'>{addr(0, 2)}</controller>")
    assert rules(xml, require_complete=True) == {"index-missing"}
    assert rules(xml, require_complete=False) == set()


def test_unindexed_controller_without_root_becomes_index_0() -> None:
    # libvirt 9.0 too: "The PCI controller with index='0' must be model='pcie-root' ..."
    xml = dom(f"<controller type='pci' model='pcie-root-port'>{addr(0, 2)}</controller>")
    assert "root-model" in rules(xml)


def test_auto_index_follows_libvirt() -> None:
    # Controllers without index take the lowest unused index in document order, as libvirt does:
    # the upstream port becomes index 2 and sits on the root port, index 1.
    xml = dom(
        "<controller type='pci' index='0' model='pcie-root'/>"
        f"<controller type='pci' model='pcie-root-port'>{addr(0, 2)}</controller>"
        f"<controller type='pci' model='pcie-switch-upstream-port'>{addr(1, 0)}</controller>"
        + nic("virtio", 2, 0)
    )
    assert rules(xml) == {"connect-type"}  # an endpoint cannot sit on the upstream port


def test_partial_address_is_judged_with_zero_defaults() -> None:
    # <address type='pci' bus='1'/> means 01:00.0, as libvirt reads it
    xml = dom(
        Q35_ROOT
        + RP1
        + "<interface type='user'><model type='virtio'/><address type='pci' bus='1'/></interface>"
    )
    assert rules(xml) == set()
    assert rules(xml, require_complete=True) == {"unaddressed"}


def test_numbers_parse_like_libvirt() -> None:
    # strtoul base 0: hex, octal with a leading 0, else decimal; 010 is slot 8
    xml = dom(
        "<interface type='user'><model type='virtio'/>"
        "<address type='pci' domain='0' bus='0' slot='010' function='0'/></interface>" + nic("virtio", 0, 8)
    )
    assert rules(xml) == {"double-use"}


def test_violation_names_the_element() -> None:
    xml = dom(
        "<interface type='user'><mac address='52:54:00:00:00:01'/><model type='virtio'/>"
        f"{addr(0, 0x1F, 0)}</interface>"
    )
    (found,) = violations(xml)
    assert found.element == "interface[1] (mac 52:54:00:00:00:01)"
    assert found.rule == "reserved" and "LPC" in found.message


def test_every_reported_rule_is_documented() -> None:
    for c in ALL_CASES:
        assert c.rules <= set(RULES), c.id
    assert set(WARNING_RULES) <= set(RULES)


def test_warning_level_rules() -> None:
    """Warnings are exactly the rules whose XML libvirt 9.0 and QEMU accept as it stands."""
    space = {"conventional-in-pcie-port", "pci-bridge-on-pcie"}  # outside the space (models/space.toml)
    assert {"multifunction-flag", "stale-address", "function0"} | space == WARNING_RULES


def test_index_above_255() -> None:
    assert "index-range" in rules(dom(ctrl(256, "pcie-root-port", 0, 2)))


def test_bus_count() -> None:
    # a pxb takes two bus numbers: 254 pci-bridges plus one pxb need 257 with the root bus
    bridges = "".join(ctrl(i, "pci-bridge", i - 1 if i > 2 else 0, 1 if i > 2 else 3) for i in range(2, 256))
    xml = dom(ctrl(1, "pci-expander-bus", 0, 2, target="<target busNr='254'/>") + bridges, machine="pc")
    assert "bus-count" in rules(xml)
    fewer = "".join(ctrl(i, "pci-bridge", i - 1 if i > 2 else 0, 1 if i > 2 else 3) for i in range(2, 255))
    xml = dom(ctrl(1, "pci-expander-bus", 0, 2, target="<target busNr='254'/>") + fewer, machine="pc")
    assert "bus-count" not in rules(xml)


def test_busnr_default_is_libvirts() -> None:
    # libvirt gives 254, then 252: two pxbs without busNr do not collide, and each has room for itself
    xml = dom(ctrl(1, "pci-expander-bus", 0, 3) + ctrl(2, "pci-expander-bus", 0, 4), machine="pc")
    assert rules(xml) == set()
    # one pci-bridge behind the first pxb (busNr 254: 254 pxb, 255 internal bridge) does not fit
    assert rules(dom(ctrl(1, "pci-expander-bus", 0, 3) + ctrl(2, "pci-bridge", 1, 1), machine="pc")) == {
        "busnr-partition"
    }


# ---------------------------------------------------------------------------------------------------
# Firmware budgets


def bridges_behind_root_ports(count: int, device: str = "virtio") -> str:
    """q35: `count` root ports, each holding a pcie-to-pci-bridge with one NIC."""
    out = [root_ports(count)]
    for n in range(count):
        bridge_index = count + 1 + n
        out.append(ctrl(bridge_index, "pcie-to-pci-bridge", 1 + n, 0))
        out.append(nic(device, bridge_index, 1))
    return "".join(out)


ACPI = "<features><acpi/></features>"


def rtl_on_root(count: int, first_slot: int = 0x10) -> str:
    """count rtl8139 (256-byte I/O BAR each) packed on the root bus."""
    return "".join(nic("rtl8139", 0, first_slot + n // 8, n % 8, "on" if n % 8 == 0 else None)
                   for n in range(count))


def test_io_space_q35_bridges_with_and_without_acpi() -> None:
    # measured here with SeaBIOS 1.16.2: 14 windows boot with ACPI and 15 do not; 9 / 10 without ACPI
    assert rules(dom(bridges_behind_root_ports(14), extra=ACPI)) == set()
    assert rules(dom(bridges_behind_root_ports(15), extra=ACPI)) == {"io-windows"}
    assert rules(dom(bridges_behind_root_ports(9))) == set()
    assert rules(dom(bridges_behind_root_ports(10))) == {"io-windows"}


def test_io_space_counts_root_bus_bars() -> None:
    # 14 windows and 12 rtl8139 on the root bus (3 KiB) boot; 16 (4 KiB) do not (measured)
    fourteen = bridges_behind_root_ports(14)
    assert rules(dom(fourteen + rtl_on_root(12), extra=ACPI)) == set()
    assert rules(dom(fourteen + rtl_on_root(16), extra=ACPI)) == {"io-windows"}


def test_io_space_pc_bridges() -> None:
    eight = "".join(ctrl(i, "pci-bridge", 0, 2 + i) for i in range(1, 9))
    assert rules(dom(eight, machine="pc", extra=ACPI)) == set()
    assert rules(dom(eight + rtl_on_root(15), machine="pc", extra=ACPI)) == set()
    assert rules(dom(eight + rtl_on_root(16), machine="pc", extra=ACPI)) == {"io-windows"}
    nine = "".join(ctrl(i, "pci-bridge", 0, 2 + i) for i in range(1, 10))
    assert rules(dom(nine, machine="pc", extra=ACPI)) == {"io-windows"}


def test_io_space_root_ports_with_io_devices() -> None:
    ports = root_ports(16)
    virtio = "".join(nic("virtio", i, 0) for i in range(1, 17))
    assert rules(dom(ports + virtio, extra=ACPI)) == set()  # modern virtio on a PCIe port: no I/O BAR
    e1000e = "".join(nic("e1000e", i, 0) for i in range(1, 17))
    assert rules(dom(ports + e1000e, extra=ACPI)) == {"io-windows"}  # measured: 16 fail, 14 boot
    transitional = "".join(nic("virtio-transitional", i, 0) for i in range(1, 17))
    # transitional virtio is conventional PCI: alone in a port it is outside the space too (warning)
    assert rules(dom(ports + transitional, extra=ACPI)) == {"io-windows", "conventional-in-pcie-port"}
    fourteen = "".join(nic("e1000e", i, 0) for i in range(1, 15))
    assert rules(dom(ports + fourteen, extra=ACPI)) == set()


def test_io_space_big_bridge_needs_several_windows() -> None:
    def disks(bus: int) -> str:
        # 30 slots x 8 virtio-blk (128-byte legacy BARs) behind one bridge: a 30 KiB window (8 x 4 KiB)
        return "".join(
            f"<disk type='file' device='disk'><source file='/d{n}.img'/><target dev='vd{n}' bus='virtio'/>"
            f"{addr(bus, 2 + n // 8, n % 8, 'on' if n % 8 == 0 else None)}</disk>" for n in range(240))

    seven = bridges_behind_root_ports(7)  # bridges 8..14: 6 one-window bridges + the big one = 14
    assert rules(dom(seven + disks(8), extra=ACPI)) == set()
    eight = bridges_behind_root_ports(8)  # bridges 9..16: 7 + 8 = 15 windows
    assert rules(dom(eight + disks(9), extra=ACPI)) == {"io-windows"}


def test_io_space_packed_and_integrated() -> None:
    # eight I/O functions in one root port cost one window; 40 e1000 on the root bus 2.5 KiB of BARs
    packed = root_ports(1) + nic("e1000", 1, 0, 0, "on") + "".join(nic("e1000", 1, 0, f) for f in range(1, 8))
    integrated = "".join(nic("e1000", 0, 3 + n // 8, n % 8, "on" if n % 8 == 0 else None) for n in range(40))
    assert rules(dom(packed + integrated, extra=ACPI)) == {"conventional-in-pcie-port"}  # e1000s in a port


def test_io_space_counts_pci_serial_bar() -> None:
    """pci-serial has an 8-byte I/O BAR 0 (QEMU hw/char/serial-pci.c; models/devices.toml says 8 too):
    the checker looked for a model attribute <serial> does not have and counted 0."""
    from planner.checker.check import io_space_needed

    def serials(count: int) -> str:
        return "".join(f"<serial type='pty'><target type='pci-serial'/>"
                       f"{addr(0, 0x18 + n // 8, n % 8, 'on' if n % 8 == 0 else None)}</serial>"
                       for n in range(count))

    alone = io_space_needed(parse_domain_bytes(dom(serials(1), machine="pc", extra=ACPI).encode()))
    assert alone is not None and alone[0] == 8
    # pc with SeaBIOS: 8 bridges and 15 rtl8139 leave 255 bytes: 31 serials fit, 32 do not
    base = "".join(ctrl(i, "pci-bridge", 0, 2 + i) for i in range(1, 9)) + rtl_on_root(15)
    assert rules(dom(base + serials(31), machine="pc", extra=ACPI)) == set()
    assert rules(dom(base + serials(32), machine="pc", extra=ACPI)) == {"io-windows"}


def test_io_windows_not_checked_on_virt() -> None:
    xml = dom(bridges_behind_root_ports(12), machine="virt", arch="aarch64")
    assert "io-windows" not in rules(xml)


def test_mmio_transports() -> None:
    def rngs(count: int) -> str:
        return "<rng model='virtio'><address type='virtio-mmio'/></rng>" * count

    assert rules(dom(rngs(32), machine="virt", arch="aarch64")) == set()
    assert rules(dom(rngs(33), machine="virt", arch="aarch64")) == {"mmio-count"}
    assert rules(dom(rngs(8), machine="virt", arch="riscv64")) == set()
    assert rules(dom(rngs(9), machine="virt", arch="riscv64")) == {"mmio-count"}
    # one mmio address moves every unaddressed virtio device to mmio as well
    loose = "<rng model='virtio'/>" * 2
    assert rules(dom(rngs(7) + loose, machine="virt", arch="riscv64")) == {"mmio-count"}


# ---------------------------------------------------------------------------------------------------
# libvirt's own test inputs (/work/shared/cases/libvirt)

# Rules stricter than libvirt's define fire on these libvirt-accepted inputs, each for a stated reason.
STRICTER_THAN_LIBVIRT: dict[str, tuple[set[str], str]] = {
    "pci-autoadd-addr.xml": (
        {"bus-missing"},
        "balloon on bus 7 with no bridges: libvirt auto-adds pci-bridges 1-7; a plan must declare them",
    ),
    "pci-autoadd-idx.xml": (
        {"index-gap", "bus-missing"},
        "only pci-bridge 8 given: libvirt fills indices 1-7; a plan must declare them",
    ),
    "pcie-expander-bus.xml": (
        {"busnr-partition", "io-windows", "conventional-in-pcie-port"},
        "firmware rules: busNr 254 leaves 2 bus numbers for a pxb-pcie holding a root port, a switch and "
        "32 downstream ports, and 32 ports holding e1000/rtl8139 need 32 I/O windows (libvirt's suite only "
        "builds the command line); conventional NICs alone in downstream ports (outside the space, warning)",
    ),
    "q35-pci-force-address.xml": (
        {"conventional-in-pcie-port"},
        "an ich6 sound card alone in a root port: libvirt accepts it, outside pciplan's space (warning)",
    ),
    "q35-multifunction.xml": (
        {"multifunction", "multifunction-flag"},
        "multifunction='off' on function 0 of a shared slot: libvirt keeps it, QEMU 7.2 refuses to start; "
        "two other shared slots lack multifunction='on', which libvirt adds (warning level)",
    ),
}
# libvirt 9.0 rejects these; the checker must see why.
NEGATIVE_CASES = {
    "440fx-wrong-root.xml": "root-model",
    "pcie-expander-bus-bad-bus.xml": "connect-type",
    "q35-dmi-bad-address1.xml": "index-duplicate",
    "pci-expander-bus-bad-node.xml": "numa-node",
    "aarch64-virtio-pci-manual-addresses.xml": "bus-missing",
}


def _manifest() -> list[dict[str, Any]]:
    return list(libvirt_manifest().values())


ACCEPTED_BY_LIBVIRT = [c["name"] for c in _manifest() if c["libvirt90"] == "ok"]


@pytest.mark.skipif(not ACCEPTED_BY_LIBVIRT, reason=SHARED_MISSING)
@pytest.mark.parametrize("name", ACCEPTED_BY_LIBVIRT)
def test_libvirt_accepted_cases(name: str) -> None:
    found = check_domain(parse_domain(LIBVIRT_CASES / name), require_complete=False)
    expected = STRICTER_THAN_LIBVIRT.get(name, (set(), ""))[0]
    assert {v.rule for v in found} == expected, [str(v) for v in found]


@pytest.mark.skipif(not _manifest(), reason=SHARED_MISSING)
@pytest.mark.parametrize(("name", "rule"), sorted(NEGATIVE_CASES.items()))
def test_libvirt_rejected_cases(name: str, rule: str) -> None:
    entry = next(c for c in _manifest() if c["name"] == name)
    assert entry["libvirt90"] != "ok"
    found = check_domain(parse_domain(LIBVIRT_CASES / name), require_complete=False)
    assert rule in {v.rule for v in found}


def test_stricter_list_only_names_accepted_cases() -> None:
    if ACCEPTED_BY_LIBVIRT:
        assert set(STRICTER_THAN_LIBVIRT) <= set(ACCEPTED_BY_LIBVIRT)


# ---------------------------------------------------------------------------------------------------
# Against the real libvirt 9.0 (embedded driver, no daemon)


@pytest.fixture(name="libvirt_conn")
def libvirt_conn_fixture(real_stack: Any) -> Any:
    """The process's one embedded libvirt (a process may hold a single embedded root)."""
    return real_stack


def _define(stack: Any, xml: str) -> str | None:
    """libvirt's completed inactive XML, or None when it refuses the domain."""
    result = stack.define(xml)
    return result.xml if result.ok else None


VERDICT_CASES = [c for c in ALL_CASES if c.libvirt_rejects is not None]


@pytest.mark.realstack
@pytest.mark.parametrize("c", VERDICT_CASES, ids=[c.id for c in VERDICT_CASES])
def test_libvirt_verdict(libvirt_conn: Any, c: Case) -> None:
    assert (_define(libvirt_conn, c.xml) is None) == c.libvirt_rejects


# What libvirt's own completed output still breaks: QEMU and firmware rules it does not check.
LIBVIRT_OUTPUT_BREAKS = {
    "pcie-expander-bus.xml": {"busnr-partition", "io-windows", "conventional-in-pcie-port"},
    "q35-pci-force-address.xml": {"conventional-in-pcie-port"},
    "q35-multifunction.xml": {"multifunction"},
}


@pytest.mark.realstack
@pytest.mark.skipif(not ACCEPTED_BY_LIBVIRT, reason=SHARED_MISSING)
def test_libvirt_output_is_complete_and_valid(libvirt_conn: Any) -> None:
    problems = {}
    for name in ACCEPTED_BY_LIBVIRT:
        completed = _define(libvirt_conn, (LIBVIRT_CASES / name).read_text())
        assert completed is not None, name
        found = {v.rule for v in check_domain(parse_domain_bytes(completed.encode(), name))}
        if found != LIBVIRT_OUTPUT_BREAKS.get(name, set()):
            problems[name] = found
    assert problems == {}


def test_io_space_counts_a_bridge_below_a_pcie_expander_bus_once() -> None:
    """A dmi-to-pci-bridge and a root port on a pcie-expander-bus: the bridge's window (4 KiB, SHPC
    bridges always get one) and the port's (around the e1000e's I/O BAR) count once each. The checker
    walked the expander bus's controllers twice and counted the bridge's window again (12352 bytes);
    the solver's own count is the reference."""
    from planner.checker.check import io_space_needed
    from planner.pipeline.plan import plan_tree

    xml = """<domain type='kvm'><name>pxb</name><memory>1048576</memory><vcpu>2</vcpu>
  <cpu><numa><cell id='0' cpus='0-1' memory='1048576'/></numa></cpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os><features><acpi/></features>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-expander-bus'><target busNr='250'><node>0</node></target>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/></controller>
    <controller type='pci' index='2' model='pcie-root-port'>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></controller>
    <controller type='pci' index='3' model='dmi-to-pci-bridge'>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x01' function='0x0'/></controller>
    <interface type='network'><source network='default'/><model type='e1000e'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/></interface>
    <memballoon model='none'/>
  </devices>
</domain>"""
    given = parse_domain_bytes(xml.encode())
    need, _space = io_space_needed(given)
    assert need == 2 * 4096 + 64  # the two windows and the chipset's 64 bytes (q35)
    planned = parse_domain_bytes(xml.encode())
    summary = plan_tree(planned)
    assert summary.check_errors == [] and summary.io_bytes == io_space_needed(planned)[0]
