"""Guests as management layers write them, against real libvirt 9.0: implicit devices (one test per
libvirt rule), stale PCI addresses on devices libvirt never addresses, the device catalogue walked
kind by kind, plan and check agreeing on pinned layouts, and the default hot-plug headroom."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import domain_xml, needs_shared
from planning import errors, plan_bytes, text
from realstack import real_stack_fixture  # noqa: F401
from test_realstack_plans import _fixpoint
from typer.testing import CliRunner

from planner.commands.cli import app
from planner.facts.facts import device_class
from planner.xml.xmlio import InputError, parse_domain_bytes

pytestmark = pytest.mark.realstack


def guest(machine: str, devices: str, acpi: bool = True) -> bytes:
    return domain_xml(machine, devices, acpi=acpi, vcpu=1)


def pci(bus: int, slot: int, function: int = 0) -> str:
    return (f"<address type='pci' domain='0x0000' bus='{bus:#04x}' slot='{slot:#04x}' "
            f"function='{function:#x}'/>")


def _implicit(xml: str) -> Counter:
    """The non-PCI-bus elements libvirt's rules add: controllers, memballoon, video."""
    root = parse_domain_bytes(xml.encode()).getroot()
    out: Counter = Counter()
    for el in root.find("devices"):
        if el.tag == "controller" and el.get("type") != "pci":
            out[("controller", el.get("type"), el.get("index"), el.get("model"))] += 1
        elif el.tag in ("memballoon", "video"):
            out[(el.tag,)] += 1
    return out


# ---------------------------------------------------------------- 1. implicit devices, one per rule

DISK = ("<disk type='file' device='{dev}'><source file='/x{n}.img'/><target dev='{target}' bus='{bus}'/>"
        "{extra}</disk>")
IMPLICIT_RULES = {
    # qemuDomainDefAddDefaultDevices: the default USB controller whenever none has index 0
    "usb-index0-pc": ("pc", "<controller type='usb' index='1' model='ich9-ehci1'/>"),
    "usb-index0-q35": ("q35", "<controller type='usb' index='1' model='ich9-ehci1'/>"),
    "usb-none-means-none": ("pc", "<controller type='usb' index='0' model='none'/>"),
    # virDomainDefMaybeAddVirtioSerialController: the index the channel's address names
    "virtio-serial-from-channel-address": (
        "pc", "<channel type='pty'><target type='virtio' name='org.x'/>"
              "<address type='virtio-serial' controller='1' bus='0' port='1'/></channel>"),
    "virtio-serial-from-console": ("q35", "<console type='pty'><target type='virtio'/></console>"),
    # virDomainDefAddDiskControllersForType: every index up to the highest a disk uses
    "scsi-from-target-name": ("q35", DISK.format(dev="disk", n=1, target="sdh", bus="scsi", extra="")),
    "scsi-from-drive-address": ("q35", DISK.format(
        dev="disk", n=1, target="sda", bus="scsi",
        extra="<address type='drive' controller='2' bus='0' target='0' unit='0'/>")),
    "sata-from-target-name": ("q35", DISK.format(dev="cdrom", n=1, target="sdg", bus="sata", extra="")),
    "ide-on-pc": ("pc", DISK.format(dev="cdrom", n=1, target="hdc", bus="ide", extra="")),
    # virDomainDefMaybeAddHostdevSCSIcontroller
    "scsi-from-hostdev": ("q35", "<hostdev mode='subsystem' type='scsi'><source><adapter name='scsi_host0'/>"
                                 "<address bus='0' target='0' unit='0'/></source>"
                                 "<address type='drive' controller='1' bus='0' target='0' unit='0'/>"
                                 "</hostdev>"),
    # q35: the ICH9 SATA controller is always there; pc: memballoon; graphics get a video
    "sata-on-q35": ("q35", ""),
    "memballoon-pc": ("pc", ""),
    "video-for-graphics-pc": ("pc", "<graphics type='vnc'/>"),
    "video-for-graphics-q35": ("q35", "<graphics type='vnc'/>"),
    # virDomainDefMaybeAddSmartcardController: a ccid controller (USB, not PCI)
    "ccid-from-smartcard": ("q35", "<smartcard mode='passthrough' type='pty'/>"),
}


@pytest.mark.parametrize("rule", sorted(IMPLICIT_RULES))
def test_implicit_device_rule_matches_libvirt(real_stack, rule) -> None:
    """pciplan adds exactly the devices libvirt adds on define, and the plan is a libvirt fixpoint."""
    machine, devices = IMPLICIT_RULES[rule]
    data = guest(machine, devices)
    raw = real_stack.define(data.decode())
    assert raw.ok, raw.error
    tree, _ = plan_bytes(data)
    completed = _fixpoint(real_stack, text(tree).decode())
    assert _implicit(completed) == _implicit(raw.xml)
    # and they were in pciplan's own output already (PCI ones placed by pciplan, not by libvirt)
    ours = _implicit(text(tree).decode())
    assert {k[:3] for k in ours} == {k[:3] for k in _implicit(raw.xml)}
    assert errors(tree) == []


# ---------------------------------------------------------------- 2. stale PCI addresses

def test_kubevirt_usb_none_with_a_stale_address(real_stack) -> None:
    """KubeVirt writes <controller type='usb' model='none'> with a PCI address: libvirt drops it, so
    does pciplan (and says so), slot 3 is free for others, and no multifunction goes into it."""
    data = guest("q35", f"<controller type='usb' index='0' model='none'>{pci(0, 3)}</controller>\n"
                        "<interface type='user'><model type='virtio-non-transitional'/></interface>\n"
                        "<memballoon model='virtio'/><controller type='virtio-serial'/>")
    tree, s = plan_bytes(data)
    usb = tree.getroot().find("devices/controller[@type='usb']")
    assert usb.find("address") is None
    assert any("stale PCI address" in n and "usb" in n for n in s.notes)
    _fixpoint(real_stack, text(tree).decode())
    assert errors(tree) == [] and s.check_errors == []
    # check on the input itself warns (the address occupies nothing) instead of a double use
    result = CliRunner().invoke(app, ["check", "--partial", "-"], input=data.decode())
    assert result.exit_code == 0, result.output
    assert "[stale-address]" in result.output


# The catalogue walked along libvirt's device list (virDomainDeviceType, 9.x-10.x): each element, given
# a PCI address at 00:05.0, is placed, kept, dropped or refused by pciplan exactly as libvirt 9.0 does.
A = pci(0, 5)
WALK = {
    "disk-virtio": (f"<disk type='file' device='disk'><source file='/a'/><target dev='vda' bus='virtio'/>{A}"
                    "</disk>", "placed"),
    "lease": (f"<lease><lockspace>s</lockspace><key>k</key><target path='/p'/>{A}</lease>", "dropped"),
    "filesystem": (f"<filesystem type='mount'><source dir='/tmp'/><target dir='t'/>{A}</filesystem>",
                   "placed"),
    "interface": (f"<interface type='user'><model type='e1000'/>{A}</interface>", "placed"),
    "input-virtio": (f"<input type='tablet' bus='virtio'>{A}</input>", "placed"),
    "input-ps2": (f"<input type='keyboard' bus='ps2'>{A}</input>", "kept"),
    "input-usb": (f"<input type='tablet' bus='usb'>{A}</input>", "refused"),
    "sound-ich9": (f"<sound model='ich9'>{A}</sound>", "placed"),
    "sound-sb16": (f"<sound model='sb16'>{A}</sound>", "kept"),
    "video-vga": (f"<video><model type='vga'/>{A}</video>", "placed"),
    "video-none": (f"<video><model type='none'/>{A}</video>", "dropped"),
    "video-ramfb": (f"<video><model type='ramfb'/>{A}</video>", "refused"),
    "watchdog-i6300esb": (f"<watchdog model='i6300esb'>{A}</watchdog>", "placed"),
    "watchdog-ib700": (f"<watchdog model='ib700'>{A}</watchdog>", "refused"),
    "controller-usb-none": (f"<controller type='usb' index='0' model='none'>{A}</controller>", "dropped"),
    "controller-ccid": (f"<controller type='ccid' index='0'>{A}</controller>", "kept"),
    "controller-fdc": (f"<controller type='fdc' index='0'>{A}</controller>", "kept"),
    "graphics": (f"<graphics type='vnc'>{A}</graphics>", "dropped"),
    "hub": (f"<hub type='usb'>{A}</hub>", "dropped"),
    "redirdev": (f"<redirdev bus='usb' type='spicevmc'>{A}</redirdev>", "refused"),
    "smartcard": (f"<smartcard mode='host'>{A}</smartcard>", "refused"),
    "serial-isa": (f"<serial type='pty'><target type='isa-serial'/>{A}</serial>", "refused"),
    "serial-pci": (f"<serial type='pty'><target type='pci-serial'/>{A}</serial>", "placed"),
    "channel": (f"<channel type='pty'><target type='virtio' name='a'/>{A}</channel>", "dropped"),
    "memballoon-virtio": (f"<memballoon model='virtio'>{A}</memballoon>", "placed"),
    "memballoon-none": (f"<memballoon model='none'>{A}</memballoon>", "dropped"),
    "nvram": (f"<nvram>{A}</nvram>", "refused"),
    "rng": (f"<rng model='virtio'><backend model='random'>/dev/urandom</backend>{A}</rng>", "placed"),
    "shmem": (f"<shmem name='s'><model type='ivshmem-plain'/><size unit='M'>4</size>{A}</shmem>", "placed"),
    "tpm": (f"<tpm model='tpm-crb'><backend type='emulator'/>{A}</tpm>", "refused"),
    "panic-isa": (f"<panic model='isa'>{A}</panic>", "refused"),
    "iommu-intel": (f"<iommu model='intel'>{A}</iommu>", "refused"),
    "vsock": (f"<vsock model='virtio'><cid auto='yes'/>{A}</vsock>", "placed"),
    "audio": (f"<audio id='1' type='none'>{A}</audio>", "dropped"),
    "parallel": (f"<parallel type='pty'><target port='0'/>{A}</parallel>", "kept"),
    "disk-sata": (f"<disk type='file' device='disk'><source file='/a'/><target dev='sda' bus='sata'/>{A}"
                  "</disk>", "refused"),
    "hostdev-usb": (f"<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/>"
                    f"<product id='0xbeef'/></source>{A}</hostdev>", "refused"),
}


def _pci_of(xml: str, tag: str) -> list[str | None]:
    root = parse_domain_bytes(xml.encode()).getroot()
    out = []
    for el in root.find("devices"):
        if el.tag == tag:
            a = el.find("address")
            out.append(None if a is None or a.get("type") != "pci" else f"{a.get('bus')}:{a.get('slot')}")
    return out


@pytest.mark.parametrize("name", sorted(WALK))
def test_catalogue_walk_agrees_with_libvirt(real_stack, name) -> None:
    snippet, verdict = WALK[name]
    data = guest("q35", snippet + "\n<memballoon model='none'/>" if "memballoon" not in snippet else snippet)
    tag = parse_domain_bytes(data).getroot().find("devices")[1].tag
    raw = real_stack.define(data.decode())
    if verdict == "refused":
        with pytest.raises(InputError, match=rf"^{tag}(\[1\]| sda).*: has a PCI address, but"):
            plan_bytes(data)
        assert not raw.ok  # libvirt 9.0 refuses it too
        return
    assert raw.ok, raw.error
    tree, s = plan_bytes(data)
    planned = text(tree).decode()
    _fixpoint(real_stack, planned)
    if verdict == "dropped":
        assert _pci_of(planned, tag)[:1] in ([None], [])
        assert "0x00:0x05" not in _pci_of(raw.xml, tag)
        assert any("stale PCI address" in n for n in s.notes)
    else:  # placed or kept: the given address stays, in pciplan's plan and in libvirt's
        assert _pci_of(planned, tag)[0] == "0x00:0x05"
        assert _pci_of(raw.xml, tag)[0] == "0x00:0x05"
    assert errors(tree) == []


def test_kept_stale_address_is_reserved_like_libvirt(real_stack) -> None:
    """A ps2 keyboard carrying a PCI address keeps it in libvirt, which plans around it: pciplan too."""
    data = guest("pc", f"<input type='keyboard' bus='ps2'>{pci(0, 2)}</input>\n"
                       "<interface type='user'><model type='virtio'/></interface>", acpi=False)
    tree, _ = plan_bytes(data)
    assert _pci_of(text(tree).decode(), "interface") != ["0x00:0x02"]
    _fixpoint(real_stack, text(tree).decode())


def test_unknown_element_with_a_pci_address_is_refused() -> None:
    data = guest("q35", f"<frobnicator>{pci(0, 5)}</frobnicator>")
    result = CliRunner().invoke(app, ["plan", "-"], input=data.decode())
    assert result.exit_code == 2
    assert "frobnicator[1]: has a PCI address, but pciplan does not know 'frobnicator'" in result.output


def test_catalogue_knows_the_pci_kinds_libvirt_9_and_10_place() -> None:
    """Kinds only newer libvirt (or QEMU) takes on PCI, which libvirt 9.0 here cannot prove."""
    for kind, model, cls in [("panic", "pvpanic", "pci"), ("pstore", "acpi-erst", "pci"),
                             ("iommu", "virtio", "virtio"), ("memory", "virtio-mem", "virtio"),
                             ("memory", "virtio-pmem", "virtio"), ("crypto", "virtio", "none")]:
        assert device_class(kind, model).cls == cls, (kind, model)
    data = guest("q35", f"<panic model='pvpanic'>{pci(0, 5)}</panic>\n"
                        f"<interface type='user'><model type='e1000'/>{pci(0, 5)}</interface>")
    with pytest.raises(InputError, match=r"double use of PCI address 00:05.0 \(already panic\[1\]\)"):
        plan_bytes(data)  # the pvpanic is a device whose address is reserved, not ignored
    _, s = plan_bytes(guest("q35", "<panic model='pvpanic'/>"))  # placed, with a word on libvirt 9.0
    assert any("libvirt 9.0 rejects panic model 'pvpanic'" in n for n in s.notes)


# ---------------------------------------------------------------- 4. plan and check agree

def test_hostdev_pinned_at_bus_0x99_is_counted_and_named(real_stack, tmp_path) -> None:
    data = guest("pc", "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                       "<address domain='0x0000' bus='0x06' slot='0x12' function='0x5'/></source>"
                       f"{pci(0x99, 1)}</hostdev>")
    tree, s = plan_bytes(data)
    assert s.controllers_added == {"pci-bridge": 153}  # the index fills libvirt would add too
    assert any("[io-windows]" in e for e in s.check_errors)
    assert any("pins: hostdev[1]" in e for e in s.check_errors)
    assert any("--replan" in e and "moving 1 address(es)" in e for e in s.check_errors)
    _fixpoint(real_stack, text(tree).decode())  # libvirt fills the same indices
    result = CliRunner().invoke(app, ["plan", "-", "-o", str(tmp_path / "out.xml")], input=data.decode())
    assert result.exit_code == 4, result.output
    replanned, r = plan_bytes(data, replan=True)
    assert errors(replanned) == [] and r.check_errors == []
    _fixpoint(real_stack, text(replanned).decode())


def test_given_e1000e_ports_beyond_seabios_windows_suggest_replan(real_stack) -> None:
    """A partial q35 guest whose given root ports hold more I/O-BAR devices than SeaBIOS has windows."""
    ports = "\n".join(
        f"<controller type='pci' index='{i}' model='pcie-root-port'>{pci(0, 1 + (i - 1) // 8, (i - 1) % 8)}"
        "</controller>" for i in range(1, 16))
    nics = "\n".join(f"<interface type='user'><mac address='52:54:00:00:00:{i:02x}'/><model type='e1000e'/>"
                     f"{pci(i, 0)}</interface>" for i in range(1, 16))
    data = guest("q35", "<controller type='pci' index='0' model='pcie-root'/>\n" + ports + "\n" + nics
                 + "\n<interface type='user'><model type='virtio'/></interface>")
    tree, s = plan_bytes(data)
    assert any("[io-windows]" in e for e in s.check_errors)
    assert any("suggestion: `pciplan plan --replan`" in e for e in s.check_errors)
    _fixpoint(real_stack, text(tree).decode())
    replanned, r = plan_bytes(data, replan=True)
    assert errors(replanned) == []
    moved = next(e for e in s.check_errors if "--replan" in e)
    assert f"moving {len(r.moved)} address(es)" in moved


def test_lone_ehci1_at_function_7_is_a_warning_in_plan_and_check(real_stack) -> None:
    """libvirt itself writes a pc guest's only USB2 controller, ich9-ehci1, at function 7 of a slot
    with nothing at function 0; libvirt and QEMU accept it. plan and check say the same warning."""
    data = guest("pc", "<controller type='usb' index='0' model='ich9-ehci1'/>")
    raw = real_stack.define(data.decode())
    assert raw.ok and "function=\"0x7\"" in raw.xml  # libvirt's own layout
    tree, s = plan_bytes(raw.xml.encode())
    assert s.check_errors == []
    assert any("[function0]" in w for w in s.check_warnings)
    _fixpoint(real_stack, text(tree).decode())
    result = CliRunner().invoke(app, ["check", "-"], input=text(tree).decode())
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "[function0]" in result.output


# ---------------------------------------------------------------- 5. default headroom

def test_all_integrated_q35_guest_still_gets_an_empty_hotplug_port(real_stack) -> None:
    from test_realstack_plans import _boot

    data = guest("q35", "<controller type='virtio-serial'/>\n<graphics type='vnc'/>\n"
                        "<video><model type='vga'/></video>")
    tree, s = plan_bytes(data)
    assert s.controllers_added == {"pcie-root-port": 1}
    port = tree.getroot().find("devices/controller[@model='pcie-root-port']")
    bus = f"{int(port.get('index')):#04x}"
    assert not [a for a in tree.getroot().iter("address") if a.get("type") == "pci" and a.get("bus") == bus]
    _boot(text(tree).decode())  # and a NIC hot-plugs into it
    _, s0 = plan_bytes(data, spare_pcie=0)
    assert s0.controllers_added == {}


# ---------------------------------------------------------------- 6. ties go to libvirt's choice

def test_pc_without_acpi_gets_one_slot_per_device_like_libvirt(real_stack) -> None:
    """No hot-plug on this pc: packing NIC, disks and balloon into one slot buys nothing, so pciplan
    writes libvirt's layout, one slot each in libvirt's order."""
    disks = "\n".join(f"<disk type='file' device='disk'><source file='/{d}.img'/>"
                      f"<target dev='{d}' bus='virtio'/></disk>" for d in ("vda", "vdb"))
    data = guest("pc", disks + "\n<interface type='user'><mac address='52:54:00:00:00:01'/>"
                       "<model type='virtio'/></interface>", acpi=False)
    tree, s = plan_bytes(data)
    raw = real_stack.define(data.decode())
    assert _addresses(text(tree).decode()) == _addresses(raw.xml)
    assert any("libvirt's addresses written" in n for n in s.notes)
    _fixpoint(real_stack, text(tree).decode())


def _addresses(xml: str) -> dict[tuple, str]:
    from planner.pipeline.ties import _keyed, _pci

    out = {}
    for k, el in _keyed(parse_domain_bytes(xml.encode())).items():
        a = _pci(el)
        if a is not None:
            out[k] = f"{a[0]}{' mf' if a[1] else ''}"
    return out


def _levels(before: bytes, xml: str) -> tuple:
    """Levels 2-5 of pciplan's objective as the completed layout shows them."""
    from planner.pipeline.metrics import measure

    m = measure(parse_domain_bytes(before), parse_domain_bytes(xml.encode()))
    return (m.controllers_total, m.bus_numbers, m.hotplug_devices, m.pcie_on_conventional,
            min(m.spare_hotplug_ports, 1), min(m.spare_hotplug_slots, 1), tuple(m.rule_violations))


def _ties(stack) -> tuple[list[str], list[str], list[str]]:
    """Over the shared cases and our guests, the ones where real libvirt's own layout is as good as
    pciplan's for every level of pciplan's objective (and breaks no rule): (all ties, ties where
    libvirt adds no PCI controller but the addresses differ, ties where it adds some and they differ)."""
    from conftest import controllers, libvirt_manifest, shared_cases, test_guests

    manifest = libvirt_manifest()
    paths = (shared_cases("virt-install") + test_guests()
             + [p for p in shared_cases("libvirt") if manifest[p.name]["libvirt90"] == "ok"])
    ties, plain, with_controllers = [], [], []
    for path in paths:
        data = path.read_bytes()
        raw = stack.define(data.decode())
        if not raw.ok:
            continue
        tree, _ = plan_bytes(data)
        ours = stack.define(text(tree).decode()).xml  # the same normal form as libvirt's
        if _levels(data, raw.xml) != _levels(data, ours) or _levels(data, ours)[-1]:
            continue  # libvirt's layout is worse somewhere: no tie
        ties.append(path.name)
        if _addresses(ours) != _addresses(raw.xml):
            added = len(controllers(parse_domain_bytes(raw.xml.encode()))) > len(
                controllers(parse_domain_bytes(data)))
            (with_controllers if added else plain).append(path.name)
    return ties, plain, with_controllers


@needs_shared
def test_where_libvirts_layout_is_optimal_pciplan_writes_it(real_stack) -> None:
    """Wherever libvirt's layout ties with pciplan's, with or without controllers added, pciplan's
    addresses (and new controllers) are libvirt's."""
    ties, plain, with_controllers = _ties(real_stack)
    assert len(ties) >= 20, ties  # the comparison is not vacuous
    assert plain == [], f"{len(plain)} of {len(ties)} ties differ from libvirt: {plain}"
    assert with_controllers == [], f"{len(with_controllers)} of {len(ties)} ties differ: {with_controllers}"


def test_fleet_reports_pinned_layouts_that_break_a_rule(tmp_path) -> None:
    from planner.commands import fleet
    from planner.facts.options import PlanOptions

    path = tmp_path / "hd99.xml"
    path.write_bytes(guest("pc", "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                                 "<address domain='0x0000' bus='0x06' slot='0x12' function='0x5'/></source>"
                                 f"{pci(0x99, 1)}</hostdev>"))
    r = fleet.plan_one(str(path), str(tmp_path / "out.xml"), PlanOptions(), dry_run=False, backup=False)
    assert r.status == "changed" and any("[io-windows]" in e for e in r.check_errors)
    assert fleet.totals([r], 1.0)["with_check_errors"] == 1
    assert "[io-windows]" in fleet.report_rows([r])[0]["check_errors"]
