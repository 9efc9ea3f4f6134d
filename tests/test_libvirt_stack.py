"""planner.stack against the real libvirt 9 embedded driver, QEMU 7.2 and SeaBIOS.

The hand-made guests below are small so the whole file runs in well under a minute; the parsing
and diffing helpers are also tested on fixed text without the stack.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import domain_xml, subprocess_env
from lxml import etree
from realstack import real_stack_fixture, require_emulator  # noqa: F401 - fixture used by name

from planner.stack import (
    Change,
    EmbeddedLibvirt,
    StackUnavailable,
    compare_placements,
    diff_layouts,
    hotplug_targets,
    parse_qtree,
    prepare_for_boot,
    verify,
)

realstack = pytest.mark.realstack
REPO = Path(__file__).resolve().parent.parent


def pci(bus: int, slot: int, function: int = 0, multifunction: bool = False) -> str:
    mf = " multifunction='on'" if multifunction else ""
    return f"<address type='pci' bus='{bus:#04x}' slot='{slot:#04x}' function='{function:#x}'{mf}/>"


def nic(mac_suffix: int, model: str, address: str) -> str:
    mac = f"<mac address='52:54:00:00:00:{mac_suffix:02x}'/>" if mac_suffix else ""
    return f"<interface type='user'>{mac}<model type='{model}'/>{address}</interface>"


def root_port(index: int, slot: int, function: int, hotplug: str | None = None) -> str:
    target = f"<target hotplug='{hotplug}'/>" if hotplug else ""
    return (
        f"<controller type='pci' index='{index}' model='pcie-root-port'>{target}"
        f"{pci(0, slot, function, multifunction=function == 0)}</controller>"
    )


def domain(machine: str, devices: str, arch: str = "x86_64") -> str:
    """Without ACPI and an <emulator>: libvirt's defaults are part of what these tests judge."""
    return domain_xml(machine, devices, arch=arch, acpi=False, emulator=False, vcpu=1, memory_kib=131072,
                      name="pciplan-test").decode()


Q35_IMPLICIT = f"<controller type='sata' index='0'>{pci(0, 0x1F, 2)}</controller>"
NO_EXTRAS = "<controller type='usb' index='0' model='none'/><memballoon model='none'/>"

# q35, everything addressed: xhci, NIC, virtio disk and balloon each on a root port, plus one spare port.
Q35_GOOD = domain(
    "q35",
    "<controller type='pci' index='0' model='pcie-root'/>"
    + "".join(root_port(i, 2, i - 1) for i in range(1, 6))
    + Q35_IMPLICIT
    + f"<controller type='usb' index='0' model='qemu-xhci'>{pci(1, 0)}</controller>"
    + nic(1, "virtio", pci(2, 0))
    + "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
    + "<source file='/var/lib/libvirt/images/absent.qcow2'/><target dev='vda' bus='virtio'/>"
    + f"{pci(3, 0)}</disk>"
    + f"<memballoon model='virtio'>{pci(4, 0)}</memballoon>",
)


def q35_bridges(count: int) -> str:
    """count pcie-to-pci-bridges, each behind its own root port, one virtio NIC behind the first."""
    controllers = []
    for n in range(count):
        port, bridge = 1 + 2 * n, 2 + 2 * n
        controllers.append(root_port(port, 2 + n // 8, n % 8))
        controllers.append(
            f"<controller type='pci' index='{bridge}' model='pcie-to-pci-bridge'>{pci(port, 0)}</controller>"
        )
    return domain(
        "q35",
        "<controller type='pci' index='0' model='pcie-root'/>"
        + "".join(controllers)
        + Q35_IMPLICIT
        + NO_EXTRAS
        + nic(2, "virtio", pci(2, 1)),
    )


PC_GOOD = domain(
    "pc",
    "<controller type='pci' index='0' model='pci-root'/>"
    + f"<controller type='pci' index='1' model='pci-bridge'>{pci(0, 3)}</controller>"
    + f"<controller type='usb' index='0' model='piix3-uhci'>{pci(0, 1, 2)}</controller>"
    + f"<video><model type='vga'/>{pci(0, 2)}</video>"
    + nic(3, "e1000", pci(0, 4))
    + nic(4, "virtio", pci(1, 1))
    + f"<memballoon model='virtio'>{pci(0, 5)}</memballoon>",
)

AARCH64_GOOD = domain(
    "virt",
    "<controller type='pci' index='0' model='pcie-root'/>"
    + "".join(root_port(i, 1, i - 1) for i in range(1, 4))
    + nic(5, "virtio", pci(1, 0))
    + f"<controller type='scsi' index='0' model='virtio-scsi'>{pci(2, 0)}</controller>",
    arch="aarch64",
)


def kinds(changes: list[Change]) -> list[tuple[str, str]]:
    return [(c.kind, c.element.split()[0]) for c in changes]


# ---------------------------------------------------------------------------------------------------
# Real stack


@realstack
def test_addressed_q35_is_fixpoint_starts_matches_and_passes_seabios(real_stack: EmbeddedLibvirt) -> None:
    defined = real_stack.define(Q35_GOOD)
    assert defined.ok, defined.error
    assert diff_layouts(Q35_GOOD, defined.xml) == []
    assert etree.fromstring(defined.xml.encode()).findtext("name") == "pciplan-test"

    boot, firmware, failures = real_stack.boot(Q35_GOOD, firmware=True)
    assert boot.started, boot.error
    assert boot.mismatches == []
    # Root ports keep libvirt's ids; the NIC got a user alias; the disk's file was replaced.
    assert boot.placements["pci.3"] == (0, 2, 2)
    assert (2, 0, 0) in boot.placements.values() and (3, 0, 0) in boot.placements.values()
    assert firmware is not None and firmware.ran and firmware.pci_setup_done, firmware
    assert failures == []


@realstack
def test_device_in_slot_1_of_a_root_port_is_rejected(real_stack: EmbeddedLibvirt) -> None:
    xml = Q35_GOOD.replace(pci(2, 0), pci(2, 1))
    defined = real_stack.define(xml)
    assert not defined.ok and defined.xml is None
    assert "slot must be <= 0" in defined.error


@realstack
def test_controller_on_a_higher_index_bus_defines_but_qemu_refuses(real_stack: EmbeddedLibvirt) -> None:
    xml = domain(
        "q35",
        "<controller type='pci' index='0' model='pcie-root'/>"
        + root_port(1, 2, 0)
        + f"<controller type='pci' index='2' model='pcie-to-pci-bridge'>{pci(3, 0)}</controller>"
        + f"<controller type='pci' index='3' model='pcie-root-port'>{pci(0, 2, 1)}</controller>"
        + Q35_IMPLICIT
        + NO_EXTRAS,
    )
    defined = real_stack.define(xml)
    assert defined.ok, defined.error
    boot, firmware, _ = real_stack.boot(xml)
    assert not boot.started
    assert "pci.3" in boot.error
    assert firmware is None


@realstack
def test_twelve_pcie_to_pci_bridges_run_seabios_out_of_io_space(real_stack: EmbeddedLibvirt) -> None:
    xml = q35_bridges(12)
    defined = real_stack.define(xml)
    assert defined.ok, defined.error
    assert diff_layouts(xml, defined.xml) == []
    boot, firmware, _ = real_stack.boot(xml, firmware=True)
    assert boot.started and boot.mismatches == []
    assert len([alias for alias in boot.placements if alias.startswith("pci.")]) == 24
    assert firmware is not None and firmware.ran and not firmware.pci_setup_done
    assert firmware.errors == ["PCI: out of I/O address space"]


@realstack
def test_unaddressed_devices_show_up_as_libvirt_changes(real_stack: EmbeddedLibvirt) -> None:
    unaddressed_nic = Q35_GOOD.replace(pci(2, 0), "")
    defined = real_stack.define(unaddressed_nic)
    changes = diff_layouts(unaddressed_nic, defined.xml)
    # The NIC takes the first free hot-pluggable port, the one it had left: index 2.
    assert kinds(changes) == [("moved-address", "interface")]
    assert changes[0].detail == "libvirt assigned 02:00.0"

    bare = domain("q35", "<interface type='user'><model type='virtio'/></interface>")
    changes = diff_layouts(bare, real_stack.define(bare).xml)
    assert ("added-controller", "controller") in kinds(changes)
    added = sorted(c.element.split(" mac=")[0] for c in changes if c.kind == "added-device")
    assert added == ["controller type=sata index=0", "controller type=usb index=0 model=qemu-xhci",
                     "memballoon model=virtio"]
    assert ("moved-address", "interface") in kinds(changes)


@realstack
def test_hotplug_probe_fills_the_empty_root_port(real_stack: EmbeddedLibvirt) -> None:
    boot, firmware, failures = real_stack.boot(Q35_GOOD, hotplug_probe=True)
    assert boot.started and firmware is None
    assert boot.hotplug_probes == ["empty pcie-root-port index 5 (05:00.0)"]
    assert failures == []


@realstack
def test_pc_guest_with_bridge_boots_through_seabios(real_stack: EmbeddedLibvirt) -> None:
    defined = real_stack.define(PC_GOOD)
    assert defined.ok, defined.error
    assert diff_layouts(PC_GOOD, defined.xml) == []
    boot, firmware, failures = real_stack.boot(PC_GOOD, firmware=True, hotplug_probe=True)
    assert boot.started and boot.mismatches == [], boot
    assert boot.placements["pci.1"] == (0, 3, 0)
    assert firmware is not None and firmware.pci_setup_done, firmware
    assert boot.hotplug_probes == ["pci-bridge index 1 slot 2 (01:02.0)"] and failures == []


@realstack
def test_aarch64_virt_with_root_ports_starts_paused_and_matches(real_stack: EmbeddedLibvirt) -> None:
    require_emulator("aarch64")
    defined = real_stack.define(AARCH64_GOOD)
    assert defined.ok, defined.error
    assert diff_layouts(AARCH64_GOOD, defined.xml) == []
    boot, firmware, _ = real_stack.boot(AARCH64_GOOD, firmware=True)
    assert boot.started and boot.mismatches == [], boot
    assert {boot.placements[f"pci.{i}"] for i in (1, 2, 3)} == {(0, 1, 0), (0, 1, 1), (0, 1, 2)}
    # aarch64 virt boots AAVMF (under TCG) and it numbered every bus and assigned every BAR
    assert firmware is not None and firmware.name == "aavmf" and firmware.pci_setup_done, firmware


@realstack
def test_host_bound_guest_is_made_bootable(real_stack: EmbeddedLibvirt) -> None:
    """A guest written for a real host: KVM, host CPU, OVMF, bridge NIC, hostdev, spice."""
    xml = domain(
        "q35",
        "<controller type='pci' index='0' model='pcie-root'/>"
        + "".join(root_port(i, 2, i - 1) for i in range(1, 4))
        + root_port(4, 2, 3, hotplug="off")
        + Q35_IMPLICIT
        + NO_EXTRAS
        + f"<interface type='bridge'><source bridge='br0'/><model type='virtio'/>{pci(1, 0)}</interface>"
        + "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
        + f"<address domain='0' bus='0x3b' slot='0' function='0'/></source>{pci(2, 0)}</hostdev>"
        + f"<controller type='virtio-serial' index='0'>{pci(3, 0)}</controller>"
        + "<graphics type='spice' autoport='yes'/><channel type='spicevmc'>"
        + "<target type='virtio' name='com.redhat.spice.0'/></channel>"
        + f"<video><model type='qxl'/>{pci(0, 1)}</video>",
    ).replace("type='qemu'", "type='kvm'", 1).replace(
        "</os>",
        "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
        "<nvram>/nonexistent/VARS.fd</nvram></os><features><acpi/></features><cpu mode='host-passthrough'/>",
    )
    report = verify(xml, boot=True, firmware=True, hotplug=True)
    assert report.define.ok and report.changes == []
    assert report.boot is not None and report.boot.started, report.boot
    assert any("hostdev" in note for note in report.boot.notes)
    assert report.boot.mismatches == []
    # The hostdev's port is empty once it is dropped; the hotplug='off' port is never probed.
    assert report.boot.hotplug_probes == ["empty pcie-root-port index 2 (02:00.0)"]
    assert report.firmware is not None and report.firmware.pci_setup_done
    assert report.ok
    assert report.summary_lines()[0] == "libvirt: defined unchanged"


@realstack
def test_second_process_falls_back_to_a_temporary_root(real_stack: EmbeddedLibvirt) -> None:
    code = "from planner.stack import EmbeddedLibvirt as E; s = E(); print(s.temporary_root, s.root)"
    env = subprocess_env(PCIPLAN_LIBVIRT_ROOT=str(real_stack.root))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        check=True,
    )
    out = result.stdout.split()
    assert out[0] == "True" and out[1] != str(real_stack.root)
    assert not Path(out[1]).exists()  # removed when that process exited


@realstack
def test_one_root_per_process(real_stack: EmbeddedLibvirt, tmp_path: Path) -> None:
    with pytest.raises(StackUnavailable, match="one root per process"):
        EmbeddedLibvirt(str(tmp_path))


# ---------------------------------------------------------------------------------------------------
# Helpers on fixed text (no stack needed)

QTREE = """bus: main-system-bus
  type System
  dev: q35-pcihost, id ""
    bus: pcie.0
      type PCIE
      dev: pcie-root-port, id "pci.1"
        addr = 02.0
        bus: pci.1
          type PCIE
          dev: virtio-net-pci, id "ua-net"
            addr = 00.0
            bus: virtio-bus
              dev: virtio-net-device, id ""
      dev: ich9-ahci, id ""
        addr = 1f.2
        bus: ide.0
          dev: ide-cd, id "sata0-0-0"
      dev: e1000, id "net1"
        addr = 03.1
"""


def test_parse_qtree_finds_pci_devices_and_their_buses() -> None:
    found = [(d.qemu_id, d.bus_name, d.slot, d.function) for d in parse_qtree(QTREE)]
    assert found == [
        ("pci.1", "pcie.0", 2, 0),
        ("ua-net", "pci.1", 0, 0),
        ("", "pcie.0", 0x1F, 2),
        ("net1", "pcie.0", 3, 1),
    ]


def test_compare_placements_matches_ids_and_id_less_built_ins() -> None:
    port = root_port(1, 2, 0).replace("<address", "<alias name='pci.1'/><address")
    live = etree.fromstring(domain(
        "q35",
        port
        + f"<interface type='user'><alias name='ua-net'/>{pci(1, 0)}</interface>"
        + f"<controller type='sata' index='0'><alias name='ide'/>{pci(0, 0x1F, 2)}</controller>"
        + f"<interface type='user'><model type='e1000'/><alias name='net1'/>{pci(0, 3)}</interface>",
    ).encode())
    placements, mismatches = compare_placements(live, parse_qtree(QTREE))
    assert placements == {"pci.1": (0, 2, 0), "ua-net": (1, 0, 0), "net1": (0, 3, 1)}
    assert mismatches == ["interface type=user model=e1000 alias=net1: XML 00:03.0, QEMU 00:03.1"]


def test_diff_reports_moves_multifunction_and_model_changes() -> None:
    before = domain(
        "q35",
        "<controller type='pci' index='1' model='pcie-root-port'>" + pci(0, 2) + "</controller>"
        + f"<interface type='user'><mac address='52:54:00:00:00:09'/>{pci(1, 0)}</interface>"
        + f"<interface type='user'>{pci(0, 3)}</interface>",
    )
    after = domain(
        "q35",
        "<controller type='pci' index='0' model='pcie-root'/>"
        + f"<controller type='pci' index='1' model='ioh3420'>{pci(0, 2, multifunction=True)}</controller>"
        + f"<interface type='user'><mac address='52:54:00:00:00:09'/>{pci(1, 0)}</interface>"
        + f"<interface type='user'>{pci(0, 4)}</interface>"
        + "<input type='mouse' bus='ps2'/>",
    )
    assert [(c.kind, c.detail) for c in diff_layouts(before, after)] == [
        ("added-controller", "libvirt added it at none"),
        ("changed-controller", "model pcie-root-port -> ioh3420"),
        ("moved-address", "libvirt set multifunction=on at 00:02.0"),
        ("moved-address", "libvirt moved 00:03.0 -> 00:04.0"),
    ]


def test_prepare_for_boot_and_hotplug_targets(tmp_path: Path) -> None:
    require_emulator("x86_64")
    xml = Q35_GOOD.replace("type='qemu'", "type='kvm'", 1)
    prepared = etree.fromstring(prepare_for_boot(xml, str(tmp_path)).encode())
    assert prepared.get("type") == "qemu" and prepared.findtext("name") != "pciplan-test"
    disk_file = prepared.find("devices/disk/source").get("file")
    assert Path(disk_file).parent == tmp_path and Path(disk_file).stat().st_size > 0
    assert prepared.find("devices/disk/driver").attrib == {"name": "qemu", "type": "raw"}
    assert [a.get("name") for a in prepared.iterfind("devices/*/alias")] == [
        "ua-controller1", "ua-controller2", "ua-interface1", "ua-disk1", "ua-memballoon1"
    ]
    assert hotplug_targets(prepared) == [(5, 0, "empty pcie-root-port index 5")]


@realstack
def test_input_models_libvirt_refuses_are_the_catalogues(real_stack: EmbeddedLibvirt) -> None:
    """Every virtio input model models/devices.toml names: libvirt 9.0 defines it (for every input type,
    passthrough too) exactly when the catalogue does not mark it refused, and plan refuses a marked one
    with one line naming the device (the catalogue listed the two transitional models as PCI devices)."""
    from planner.commands import api
    from planner.facts.facts import catalogue_keys, device_class

    models = [key.split(":", 1)[1] for key in catalogue_keys()
              if key.startswith("input:") and key.count(":") == 1 and not key.endswith(":*")]
    assert {"virtio", "virtio-transitional", "virtio-non-transitional"} <= set(models)
    for model in models:
        refused = device_class("input", model).refused
        for kind in ("tablet", "keyboard", "mouse", "passthrough"):
            source = "<source evdev='/dev/input/event0'/>" if kind == "passthrough" else ""
            xml = ("<domain type='qemu'><name>input</name><memory>262144</memory><os><type arch='x86_64' "
                   "machine='q35'>hvm</type></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
                   f"<input type='{kind}' bus='virtio' model='{model}'>{source}</input></devices></domain>")
            defined = real_stack.define(xml)
            assert defined.ok != refused, (model, kind, defined.error)
            if refused:
                refusal = f"input\\[1\\]: libvirt refuses the {model} input"
                with pytest.raises(api.BadInputError, match=refusal):
                    api.plan(xml.encode())
            else:
                assert api.plan(xml.encode()).exit_code == 0
