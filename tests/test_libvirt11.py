"""The libvirt users run today: the catalogue follows the libvirt version planned for, and a second
real-stack tier proves plans for libvirt 11.3 + QEMU 10.0 (Debian 13, in the chroot .ci/libvirt11
builds): the bundled examples, tests/guests, the shared cases and one guest per PCI device kind of the
catalogue are defined unchanged (one virsh process for all of them), and a representative guest starts
in QEMU 10 with every device where the plan put it.

Without the chroot (or root) the tier skips; PCIPLAN_REQUIRE_LIBVIRT11=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, domain_xml, libvirt_manifest, shared_cases, test_guests
from planning import plan_bytes, text
from realstack import real_stack_fixture  # noqa: F401

from planner.checker import check as checker
from planner.facts import facts
from planner.facts.facts import (
    LibvirtVersion,
    device_class,
    parse_libvirt_version,
    target_libvirt_source,
    targeting_libvirt,
)
from planner.stack import DefineResult, StackUnavailable, diff_layouts
from planner.xml.xmlio import parse_domain_bytes

V90, V113 = LibvirtVersion(9, 0), LibvirtVersion(11, 3)
REQUIRE_ENV = "PCIPLAN_REQUIRE_LIBVIRT11"
CRYPTO = "<crypto model='virtio' type='qemu'><backend model='builtin' queues='1'/></crypto>"


def guest(devices: str, machine: str = "q35", extra: str = "") -> bytes:
    return domain_xml(machine, "    " + devices, extra=extra, kind="kvm", name="kind")


def plan_for(version: LibvirtVersion, data: bytes) -> str:
    with targeting_libvirt(version):
        tree, _ = plan_bytes(data)
    return text(tree).decode()


def unaddressed(version: LibvirtVersion, xml: bytes) -> list[str]:
    with targeting_libvirt(version):
        return [v.element for v in checker.check_domain(parse_domain_bytes(xml), require_complete=True)
                if v.rule == "unaddressed"]


# ---------------------------------------------------------------- the version, as data


def test_version_parsing() -> None:
    assert parse_libvirt_version("11.3") == parse_libvirt_version("11.3.0") == V113
    assert parse_libvirt_version("9.10") > parse_libvirt_version("9.9")  # numbers, not strings
    for bad in ("11", "eleven", "11.3.0.1", ""):
        with pytest.raises(ValueError, match="is not a libvirt version"):
            parse_libvirt_version(bad)


def test_every_change_takes_effect_exactly_at_its_version() -> None:
    """Each device change of models/libvirt.toml: the devices.toml entry before `since`, the new one
    from `since` on (9.0 and 11.3 are the verified ends)."""
    changes = facts.libvirt_changes()
    assert {"crypto:virtio", "sound:virtio", "panic:pvpanic", "pstore:acpi-erst"} <= set(changes)
    for key, change in changes.items():
        kind, model = key.rsplit(":", 1)
        since = parse_libvirt_version(change["since"])
        before = LibvirtVersion(since.major, since.minor - 1) if since.minor else V90
        with targeting_libvirt(since):
            new = device_class(kind, model)
        with targeting_libvirt(before):
            old = device_class(kind, model)
        assert new.cls == change["class"] and new.hotplug == change["hotplug"], key
        assert (old.cls, old.note) != (new.cls, new.note), f"{key}: nothing changes at {since}"
        assert V90 <= before < since <= V113, key


def test_crypto_and_virtio_sound_are_planned_only_for_the_libvirt_that_places_them() -> None:
    """libvirt 9.0 drops <crypto> and refuses virtio sound: a plan for it leaves both unaddressed and
    says why; a plan for 11.3 addresses both."""
    data = guest(f"<interface type='user'><model type='virtio'/></interface>{CRYPTO}<sound model='virtio'/>")
    for_90 = parse_domain_bytes(plan_for(V90, data).encode())
    for_113 = parse_domain_bytes(plan_for(V113, data).encode())
    for tag in ("crypto", "sound"):
        assert for_90.find(f"devices/{tag}/address") is None, tag
        assert for_113.find(f"devices/{tag}/address").get("type") == "pci", tag
    with targeting_libvirt(V90):
        _, summary = plan_bytes(data)
    assert any("crypto[1]: libvirt 9.0 has no <crypto> device" in n for n in summary.notes)
    assert any("sound[1]: libvirt 9.0 refuses sound model 'virtio'" in n for n in summary.notes)


def test_check_agrees_with_the_libvirt_targeted() -> None:
    """check: an unaddressed <crypto> or virtio sound is fine for 9.0 (it never gets an address there)
    and missing an address for 11.3."""
    for device in (CRYPTO, "<sound model='virtio'/>"):
        xml = guest(device)
        assert unaddressed(V90, xml) == [], device
        assert len(unaddressed(V113, xml)) == 1, device
    # what each plans passes check for the same version
    data = guest(CRYPTO + "<sound model='virtio'/>")
    for version in (V90, V113):
        with targeting_libvirt(version):
            assert checker.check_domain(parse_domain_bytes(plan_for(version, data).encode()),
                                        require_complete=True) == [], version


def test_checker_classifies_crypto_and_virtio_sound_by_version() -> None:
    """(tests/test_check.py's test_classify, for the kinds whose answer depends on the libvirt)"""
    for xml in (CRYPTO, "<sound model='virtio'/>"):
        elem = parse_domain_bytes(guest(xml)).getroot().find("devices")[1]
        with targeting_libvirt(V90):
            assert checker.classify(elem, "q35") is None, xml
        with targeting_libvirt(V113):
            kind = checker.classify(elem, "q35")
            assert kind is not None and kind.virtio and not kind.io_bar_on_port, xml


def test_checker_keeps_its_own_table_in_step_with_the_catalogue() -> None:
    """The checker shares no tables with the planner, so its copy of the versions must agree."""
    changes = facts.libvirt_changes()
    assert (parse_libvirt_version(changes["crypto:virtio"]["since"])
            == LibvirtVersion(*checker.LIBVIRT_SINCE["crypto"]))
    assert (parse_libvirt_version(changes["sound:virtio"]["since"])
            == LibvirtVersion(*checker.LIBVIRT_SINCE["sound:virtio"]))


def test_installed_libvirt_is_the_default_target(monkeypatch) -> None:
    """No flag, no $PCIPLAN_LIBVIRT_VERSION: the binding's getVersion(); without the binding, the
    documented default."""
    monkeypatch.delenv(facts.LIBVIRT_VERSION_ENV, raising=False)
    monkeypatch.setattr(facts, "_target", None)
    version, source = target_libvirt_source()
    try:
        import libvirt
    except ImportError:
        assert (version, source) == (facts.default_libvirt(), "default")
    else:
        number = libvirt.getVersion()
        assert (version, source) == (LibvirtVersion(number // 1_000_000, number // 1000 % 1000), "installed")
    monkeypatch.setattr(facts, "_target", None)
    monkeypatch.setattr(facts, "installed_libvirt", lambda: None)
    assert target_libvirt_source() == (parse_libvirt_version(tomllib.loads(
        (REPO / "models" / "libvirt.toml").read_text())["default"]), "default")
    monkeypatch.setattr(facts, "_target", None)
    monkeypatch.setenv(facts.LIBVIRT_VERSION_ENV, "11.3")
    assert target_libvirt_source() == (V113, "$PCIPLAN_LIBVIRT_VERSION")
    monkeypatch.setattr(facts, "_target", None)


def test_library_file_name_gives_the_bindings_version(monkeypatch, tmp_path) -> None:
    """The cheap detection (libvirt.so.0.MAJOR*1000+MINOR.MICRO) says what the binding's getVersion()
    says, and reads the scheme right: 11.3.0 is libvirt.so.0.11003.0; two versions installed: unknown."""
    try:
        import libvirt
    except ImportError:
        libvirt = None
    if libvirt is not None:
        number = libvirt.getVersion()
        assert facts._library_libvirt() == LibvirtVersion(number // 1_000_000, number // 1000 % 1000)
    (tmp_path / "libvirt.so.0.11003.0").touch()
    monkeypatch.setattr(facts, "_LIBRARY_DIRS", (str(tmp_path),))
    assert facts._library_libvirt() == V113
    (tmp_path / "libvirt.so.0.9000.0").touch()
    assert facts._library_libvirt() is None


def test_checker_judges_for_the_libvirt_the_planner_targets(monkeypatch) -> None:
    """The checker finds the targeted libvirt on its own (it imports nothing of the planner): the same
    as the planner with $PCIPLAN_LIBVIRT_VERSION, without it (the installed library), and its default
    is the catalogue's."""
    monkeypatch.delenv(facts.LIBVIRT_VERSION_ENV, raising=False)
    monkeypatch.setattr(facts, "_target", None)
    target = facts.target_libvirt()
    assert checker.judged_libvirt() == (target.major, target.minor)
    monkeypatch.setenv(facts.LIBVIRT_VERSION_ENV, "11.3")
    monkeypatch.setattr(facts, "_target", None)
    assert checker.judged_libvirt() == (11, 3) and facts.target_libvirt() == V113
    monkeypatch.setattr(facts, "_target", None)
    default = facts.default_libvirt()
    assert (default.major, default.minor) == checker.LIBVIRT_DEFAULT


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    full.pop(facts.LIBVIRT_VERSION_ENV, None)
    return subprocess.run([sys.executable, "-m", "planner.commands.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env=full, timeout=120, check=False)


def test_cli_libvirt_version_flag(tmp_path) -> None:
    src = tmp_path / "g.xml"
    src.write_bytes(guest(CRYPTO))
    out = tmp_path / "out.xml"
    r = _cli("plan", str(src), "--libvirt-version", "11.3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert parse_domain_bytes(out.read_bytes()).find("devices/crypto/address") is not None
    assert _cli("check", str(out), "--libvirt-version", "11.3").returncode == 0
    for bad, why in (("11", "is not a libvirt version"), ("8.2", "older than the catalogue")):
        r = _cli("plan", str(src), "--libvirt-version", bad)
        assert r.returncode == 2 and r.stderr.startswith("pciplan: error: --libvirt-version: "), r.stderr
        assert why in r.stderr and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "g.planned.xml").exists()


def test_check_libvirt_names_the_version_it_asked(real_stack, tmp_path) -> None:
    """check --libvirt defines in the installed libvirt when that is the one asked for."""
    src = tmp_path / "g.xml"
    src.write_bytes(guest("<interface type='user'><model type='virtio'/></interface>"))
    out = tmp_path / "out.xml"
    assert _cli("plan", str(src), "-o", str(out)).returncode == 0
    installed = facts.installed_libvirt()
    r = _cli("check", "--libvirt", str(out), "--libvirt-version", str(installed))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"libvirt: checked against libvirt {installed} (installed, embedded driver)" in r.stdout, r.stdout


def test_check_libvirt_for_another_version_without_its_chroot_is_refused(tmp_path) -> None:
    """check --libvirt --libvirt-version 11.3 defined the XML in the installed 9.0 and called that a
    check for 11.3; without the 11.3 chroot it is refused (exit 2), one line naming what is missing."""
    out = tmp_path / "out.xml"
    out.write_bytes(guest("<interface type='user'><model type='virtio'/></interface>"))
    if facts.installed_libvirt() == V113:
        pytest.skip("the installed libvirt is 11.3")
    r = _cli("check", "--libvirt", str(out), "--libvirt-version", "11.3",
             env={"PCIPLAN_TRIXIE_ROOT": str(tmp_path / "no-chroot")})
    assert r.returncode == 2, r.stdout + r.stderr
    installed = facts.installed_libvirt() or "none"
    assert r.stderr == (f"pciplan: error: real stack not available: libvirt 11.3: the installed libvirt is "
                        f"{installed}, and no libvirt chroot at {tmp_path / 'no-chroot'}: build it with "
                        ".ci/libvirt11 (a few minutes, about 1 GB)\n")


# ---------------------------------------------------------------- the second real stack: 11.3


def stack_unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but the libvirt 11.3 chroot is unavailable: {reason}", pytrace=False)
    pytest.skip(f"libvirt 11.3 chroot unavailable: {reason}")


@pytest.fixture(scope="module")
def chroot_stack():
    from planner.stack.chroot import ChrootLibvirt

    try:
        stack = ChrootLibvirt()
    except StackUnavailable as exc:
        stack_unavailable(str(exc))
    assert stack.libvirt_version == V113, stack.packages
    return stack


MEMORY = ("<maxMemory slots='4' unit='KiB'>4194304</maxMemory>"
          "<cpu><numa><cell id='0' cpus='0-1' memory='1048576' unit='KiB'/></numa></cpu>")
SHARED_MEMORY = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
DISK = ("<disk type='file' device='disk'{model}><source file='/tmp/d.img'/>"
        "<target dev='vda' bus='virtio'/></disk>")
FS = "<filesystem type='mount'{model}>{driver}<source dir='/tmp'/><target dir='t'/></filesystem>"
# One guest per PCI device kind of the catalogue: key -> (devices, machine, extra domain XML).
KIND_GUESTS: dict[str, tuple[str, str, str]] = {
    **{f"interface:{m}": (f"<interface type='user'><model type='{m}'/></interface>", "q35", "")
       for m in ("virtio", "virtio-non-transitional", "virtio-transitional", "e1000e", "igb", "e1000",
                 "rtl8139")},
    "interface:*": ("<interface type='user'><model type='ne2k_pci'/></interface>", "q35", ""),
    "disk:virtio": (DISK.format(model=""), "q35", ""),
    "disk:virtio-non-transitional": (DISK.format(model=" model='virtio-non-transitional'"), "q35", ""),
    "disk:virtio-transitional": (DISK.format(model=" model='virtio-transitional'"), "q35", ""),
    "hostdev:pci": ("<hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' "
                    "bus='0x06' slot='0x12' function='0x5'/></source></hostdev>", "q35", ""),
    "hostdev:scsi_host": ("<hostdev mode='subsystem' type='scsi_host'><source protocol='vhost' "
                          "wwpn='naa.5123456789abcde0'/></hostdev>", "q35", ""),
    "hostdev:scsi_host-transitional": ("<hostdev mode='subsystem' type='scsi_host' "
                                       "model='virtio-transitional'><source protocol='vhost' "
                                       "wwpn='naa.5123456789abcde0'/></hostdev>", "q35", ""),
    "hostdev:mdev": ("<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address "
                     "uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source></hostdev>", "q35", ""),
    **{f"controller:usb:{m}": (f"<controller type='usb' index='0' model='{m}'/>", "q35", "")
       for m in ("qemu-xhci", "nec-xhci")},
    "controller:usb:*": ("<controller type='usb' index='0' model='piix3-uhci'/>", "pc", ""),
    **{f"controller:scsi:{m}": (f"<controller type='scsi' index='0' model='{m}'/>", "q35", "")
       for m in ("virtio-scsi", "virtio-non-transitional")},
    "controller:scsi:*": ("<controller type='scsi' index='0' model='lsilogic'/>", "q35", ""),
    "controller:virtio-serial:virtio-transitional": (
        "<controller type='virtio-serial' index='0' model='virtio-transitional'/>", "q35", ""),
    "controller:virtio-serial:*": ("<controller type='virtio-serial' index='0'/>", "q35", ""),
    "controller:sata:*": ("<controller type='sata' index='1'/>", "q35", ""),
    "controller:ide:*": ("<controller type='ide' index='0'/>", "pc", ""),
    **{f"video:{m}": (f"<video><model type='{m}'/></video>", "q35", "") for m in ("virtio", "bochs")},
    "video:*": ("<video><model type='qxl'/></video>", "q35", ""),
    **{f"sound:{m}": (f"<sound model='{m}'/>", "q35", "")
       for m in ("ich6", "ich9", "ac97", "es1370", "virtio")},
    "watchdog:i6300esb": ("<watchdog model='i6300esb'/>", "q35", ""),
    "memballoon:virtio-transitional": ("<memballoon model='virtio-transitional'/>", "q35", ""),
    "memballoon:*": ("<memballoon model='virtio-non-transitional'/>", "q35", ""),
    **{f"{k}:virtio-transitional": (f"<{k} model='virtio-transitional'>{b}</{k}>", "q35", "")
       for k, b in (("rng", "<backend model='random'>/dev/urandom</backend>"),
                    ("vsock", "<cid auto='yes'/>"))},
    "rng:*": ("<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>", "q35", ""),
    "vsock:*": ("<vsock model='virtio'><cid auto='yes'/></vsock>", "q35", ""),
    "input:virtio": ("<input type='keyboard' bus='virtio' model='virtio'/>", "q35", ""),
    "filesystem:virtiofs": (FS.format(model="", driver="<driver type='virtiofs'/>"), "q35", SHARED_MEMORY),
    "filesystem:virtio-transitional": (FS.format(model=" model='virtio-transitional'", driver=""), "q35", ""),
    "filesystem:*": (FS.format(model="", driver=""), "q35", ""),
    "memory:virtio-mem": ("<memory model='virtio-mem'><target><size unit='KiB'>131072</size>"
                          "<node>0</node><block unit='KiB'>2048</block><requested unit='KiB'>0</requested>"
                          "</target></memory>", "q35", MEMORY),
    "memory:virtio-pmem": ("<memory model='virtio-pmem' access='shared'><source><path>/tmp/pmem</path>"
                           "</source><target><size unit='KiB'>131072</size></target></memory>", "q35",
                           MEMORY),
    "shmem:*": ("<shmem name='s'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>", "q35", ""),
    "serial:pci-serial": ("<serial type='pty'><target type='pci-serial'/></serial>", "q35", ""),
    "iommu:virtio": ("<iommu model='virtio'/>", "q35", ""),
    "panic:pvpanic": ("<panic model='pvpanic'/>", "q35", ""),
    "pstore:acpi-erst": ("<pstore backend='acpi-erst'><path>/tmp/erst</path><size unit='KiB'>8</size>"
                         "</pstore>", "q35", ""),
    "crypto:virtio": (CRYPTO, "q35", ""),
}


def test_one_guest_for_every_pci_kind_of_the_catalogue() -> None:
    """Every catalogue key that takes a PCI address for 11.3 has its guest in the 11.3 tier."""
    with targeting_libvirt(V113):
        table = facts._device_table(V113)
        pci_kinds = {key for key, d in table.items() if d.cls != "none"}
    assert pci_kinds == set(KIND_GUESTS)


MANIFEST = libvirt_manifest()
CASES: dict[str, Path | str] = {
    **{f"examples/{p.name}": p for p in sorted((REPO / "examples").glob("*.xml"))},
    **{f"guests/{p.name}": p for p in test_guests()},
    **{f"virt-install/{p.name}": p for p in shared_cases("virt-install")},
    **{f"libvirt/{p.name}": p for p in shared_cases("libvirt") if MANIFEST[p.name]["libvirt90"] == "ok"},
    **{f"kind/{key}": key for key in KIND_GUESTS},
}


@pytest.fixture(scope="module")
def defined_on_113(chroot_stack) -> dict[str, tuple[str | None, str | None, DefineResult | None]]:
    """Every case planned for libvirt 11.3, then defined by the chroot's libvirt in one virsh process:
    case -> (planned XML, planning error, libvirt's verdict)."""
    planned: dict[str, tuple[str | None, str | None]] = {}
    for name, source in CASES.items():
        if isinstance(source, Path):
            data = source.read_bytes()
        else:
            devices, machine, extra = KIND_GUESTS[source]
            data = guest(devices, machine, extra)
        try:
            planned[name] = (plan_for(V113, data), None)
        except Exception as exc:  # noqa: BLE001 - reported by the case's own test
            planned[name] = (None, f"{type(exc).__name__}: {exc}")
    names = [n for n, (xml, _) in planned.items() if xml is not None]
    results = dict(zip(names, chroot_stack.define_many([planned[n][0] for n in names]), strict=True))
    return {n: (xml, err, results.get(n)) for n, (xml, err) in planned.items()}


# Cases libvirt 11.3 refuses for reasons that are not PCI (checked to stay so: the reason must match).
REFUSED_BY_113 = {
    "virt-install/virt-install-testdriver-edgecases.xml":
        "Migratable attribute for host-passthrough CPU is not supported by this QEMU binary",
}


@pytest.mark.libvirt11
@pytest.mark.parametrize("case", list(CASES))
def test_plan_for_113_is_a_libvirt_113_fixpoint(defined_on_113, case) -> None:
    xml, error, result = defined_on_113[case]
    assert error is None, error
    if case in REFUSED_BY_113:
        assert result is not None and not result.ok and REFUSED_BY_113[case] in (result.error or "")
        return
    assert result is not None and result.ok, result.error if result else "not defined"
    changes = diff_layouts(xml, result.xml)
    assert changes == [], "\n".join(f"{c.kind}: {c.element}: {c.detail}" for c in changes)


@pytest.mark.libvirt11
def test_plan_for_90_is_not_enough_for_113(chroot_stack) -> None:
    """The gap the version model closes: what 9.0 leaves unaddressed, 11.3 addresses itself."""
    xml = plan_for(V90, guest(CRYPTO + "<sound model='virtio'/>"))
    result = chroot_stack.define(xml)
    assert result.ok, result.error
    moved = {c.element.split()[0] for c in diff_layouts(xml, result.xml) if c.kind == "moved-address"}
    assert {"crypto", "sound"} <= moved


@pytest.mark.libvirt11
@pytest.mark.parametrize("model", ["virtio-transitional", "virtio-non-transitional"])
def test_transitional_input_models_are_refused_as_libvirt_113_refuses_them(chroot_stack, model) -> None:
    """QEMU has no transitional virtio-input devices: libvirt 11.3 refuses these models as 9.0 does
    (models/devices.toml marks them refused), and a plan for 11.3 refuses them too."""
    from planner.xml.xmlio import InputError

    data = guest(f"<input type='keyboard' bus='virtio' model='{model}'/>")
    result = chroot_stack.define(data.decode())
    assert not result.ok, result
    assert "virtio (non-)transitional models are not supported for input" in (result.error or "")
    with pytest.raises(InputError, match=f"libvirt refuses the {model} input model"):
        plan_for(V113, data)


@pytest.mark.libvirt11
def test_check_libvirt_for_113_defines_in_the_113_chroot(chroot_stack, tmp_path) -> None:
    """check --libvirt --libvirt-version 11.3 asks libvirt 11.3 (the chroot): a plan for 11.3 defines
    unchanged there; a plan for 9.0 is changed by it (11.3 addresses the crypto device); --boot, which
    the chroot cannot do (no firmware run), is refused in one line."""
    planned_113, planned_90 = tmp_path / "113.xml", tmp_path / "90.xml"
    planned_113.write_text(plan_for(V113, guest(CRYPTO)))
    planned_90.write_text(plan_for(V90, guest(CRYPTO)))
    r = _cli("check", "--libvirt", str(planned_113), "--libvirt-version", "11.3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"libvirt: checked against libvirt 11.3 (chroot at {chroot_stack.root}"), \
        r.stdout
    assert "libvirt: defined unchanged" in r.stdout
    r = _cli("check", "--libvirt", "--partial", str(planned_90), "--libvirt-version", "11.3")
    assert r.returncode == 1 and "libvirt: defined, but changed the layout" in r.stdout, r.stdout
    assert "crypto" in r.stdout.split("changed the layout", 1)[1]
    r = _cli("check", "--libvirt", "--boot", str(planned_113), "--libvirt-version", "11.3")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "the libvirt 11.3 chroot only defines guests (it runs no firmware)" in r.stderr


@pytest.mark.libvirt11
@pytest.mark.parametrize("source", ["examples/q35-server.xml", "examples/pc-40-nics.xml",
                                    "examples/aarch64-virt.xml", "kind/crypto+sound"])
def test_plan_for_113_boots_in_qemu_10_as_planned(chroot_stack, source) -> None:
    """Started paused in the chroot's QEMU 10: 'info qtree' has every device where the plan put it."""
    data = ((REPO / source).read_bytes() if source.endswith(".xml")
            else guest(CRYPTO + "<sound model='virtio'/>" + KIND_GUESTS["interface:virtio"][0]))
    xml = plan_for(V113, data)
    booted = chroot_stack.boot_qtree(xml)
    assert booted.started, booted.error
    assert booted.placements and booted.mismatches == []  # each addressed device found where planned


@pytest.mark.libvirt11
@pytest.mark.parametrize("devices", [
    CRYPTO, "<sound model='virtio'/>", CRYPTO + "<sound model='virtio'/><sound model='ich9'/>",
    KIND_GUESTS["interface:e1000"][0] + CRYPTO + KIND_GUESTS["interface:virtio"][0],
], ids=["crypto", "virtio-sound", "both-and-ich9", "crypto-among-nics"])
def test_builtin_greedy_for_113_matches_libvirt_113(chroot_stack, devices) -> None:
    """compare's greedy side (libvirt's algorithm, planner/pipeline/greedy.py) places what 11.3 places, as
    11.3."""
    from test_greedy import compare

    with targeting_libvirt(V113):
        verdict = compare(chroot_stack, guest(devices).decode())
    assert verdict.greedy.ok and verdict.libvirt_ok, verdict
    assert verdict.differences == [], "\n".join(verdict.differences)


@pytest.mark.libvirt11
def test_implicit_non_pci_devices_of_113_are_as_recorded(chroot_stack) -> None:
    """models/libvirt.toml's [implicit] devices: 11.3 adds each to a planned guest of its machines."""
    implicit = tomllib.loads((REPO / "models" / "libvirt.toml").read_text())["implicit"]
    assert implicit
    for key, entry in implicit.items():
        tag, model = key.split(":")
        assert parse_libvirt_version(entry["since"]) <= V113
        for machine in entry["machines"]:
            xml = plan_for(V113, guest(KIND_GUESTS["interface:virtio"][0], machine))
            result = chroot_stack.define(xml)
            assert result.ok, result.error
            assert parse_domain_bytes(xml.encode()).find(f"devices/{tag}[@model='{model}']") is None
            added = parse_domain_bytes(result.xml.encode()).find(f"devices/{tag}[@model='{model}']")
            assert added is not None and added.find("address") is None, key
