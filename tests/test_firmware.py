"""The guest's firmware is part of the machine model: read from the XML, its budgets from
models/firmware.toml, plans that fit it, and `check --boot` running that very firmware.

The real-stack tests boot each firmware once at its wall and once just beyond it (under TCG: OVMF
and AAVMF take 5-30 s each here), always a plan of pciplan's own, booted with its own firmware.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO, disks, domain_xml, nics
from lxml import etree
from planning import plan_bytes, text
from realstack import real_stack_fixture, require_emulator  # noqa: F401 - fixture used by name
from typer.testing import CliRunner

from planner.checker.check import check_domain
from planner.commands.cli import app
from planner.facts.errors import Infeasible
from planner.pipeline.domain import read_problem
from planner.pipeline.show import build_tree, summary
from planner.stack import EmbeddedLibvirt
from planner.xml.xmlio import InputError, parse_domain_bytes

realstack = pytest.mark.realstack
OVMF_MS = "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>"


def domain(machine: str, devices: str, *, arch: str = "x86_64", firmware: str | None = "efi",
           acpi: bool = True, os_extra: str = "") -> bytes:
    return domain_xml(machine, devices, arch=arch, firmware=firmware, acpi=acpi, os_extra=os_extra, vcpu=1,
                      memory_kib=524288, name="fw")


def issue_guest() -> bytes:
    """The issue's q35 UEFI guest: 12 e1000e and 8 virtio NICs."""
    return domain("q35", nics(12, "e1000e") + "\n" + nics(8, "virtio", start=100))


def io_errors(tree, firmware: str | None = None) -> list[str]:
    return [v.message for v in check_domain(tree, firmware=firmware) if v.rule == "io-windows"]


# ---------------------------------------------------------------- which firmware


@pytest.mark.parametrize(("arch", "machine", "firmware", "os_extra", "expected"), [
    ("x86_64", "q35", None, "", "seabios"),
    ("x86_64", "q35", "efi", "", "ovmf"),
    ("x86_64", "pc", "bios", "", "seabios"),
    ("x86_64", "q35", None, OVMF_MS, "ovmf"),
    ("x86_64", "q35", None, "<loader readonly='yes' type='pflash'>/opt/fw/CODE.fd</loader>", "ovmf"),
    ("x86_64", "pc", None, "<loader type='rom'>/usr/share/seabios/bios-256k.bin</loader>", "seabios"),
    ("x86_64", "q35", "efi", "<firmware><feature enabled='yes' name='secure-boot'/></firmware>", "ovmf"),
    ("aarch64", "virt", None, "", "aavmf"),
    ("aarch64", "virt", None, "<loader readonly='yes' type='pflash'>/usr/share/AAVMF/AAVMF_CODE.fd</loader>",
     "aavmf"),
    ("aarch64", "virt", None, "<kernel>/boot/vmlinuz</kernel>", "none"),
    ("x86_64", "q35", None, "<kernel>/boot/vmlinuz</kernel>", "seabios"),
    ("riscv64", "virt", None, "", "none"),
])
def test_firmware_is_read_from_the_xml(arch, machine, firmware, os_extra, expected) -> None:
    tree = parse_domain_bytes(domain(machine, "", arch=arch, firmware=firmware, os_extra=os_extra))
    assert read_problem(tree).firmware.name == expected
    # the independent checker reads it the same way
    assert summary(build_tree(parse_domain_bytes(domain(machine, "", arch=arch, firmware=firmware,
                                                        os_extra=os_extra))))["firmware"] == expected


def test_firmware_override_and_bad_firmware_input(tmp_path) -> None:
    tree = parse_domain_bytes(domain("q35", ""))
    assert read_problem(tree, "seabios").firmware.name == "seabios"
    with pytest.raises(InputError, match="aavmf does not boot x86_64"):
        read_problem(parse_domain_bytes(domain("q35", "")), "aavmf")
    with pytest.raises(InputError, match="os: firmware 'uboot'"):
        read_problem(parse_domain_bytes(domain("q35", "", firmware="uboot")))
    path = tmp_path / "g.xml"
    path.write_bytes(domain("q35", ""))
    result = CliRunner().invoke(app, ["plan", str(path), "--firmware", "coreboot"])
    assert result.exit_code == 2 and "--firmware: 'coreboot'" in result.output
    result = CliRunner().invoke(app, ["check", str(path), "--firmware", "aavmf"])
    assert result.exit_code in (0, 1) and "Traceback" not in result.output


# ---------------------------------------------------------------- plans that fit the firmware


def test_ovmf_plan_keeps_to_eight_windows_spare_included() -> None:
    """OVMF on q35 sets up at most 8 windows reliably; each e1000e port and the spare port take one.
    SeaBIOS (14 windows with ACPI) would give every e1000e its own root port."""
    tree, s = plan_bytes(issue_guest())
    assert s.status == "OPTIMAL"
    assert io_errors(tree) == []  # the checker judges it against OVMF, the guest's firmware
    counts = summary(build_tree(tree))
    assert counts["firmware"] == "ovmf" and counts["spare_hotplug_ports"] >= 1
    assert all(p["firmware_pads_it"] for p in counts["spare_ports"])
    seabios, _ = plan_bytes(issue_guest(), firmware="seabios")
    assert io_errors(seabios, "seabios") == []
    assert any("at most 8" in e for e in io_errors(seabios))  # ... and OVMF could not set it up


def test_spares_the_firmware_cannot_pad_are_not_planned(tmp_path) -> None:
    """Under UEFI a spare root port costs a 4 KiB I/O window: asked for 12, OVMF's 8 windows bound
    the count; SeaBIOS gives empty PCIe ports no I/O window, so all 12 are kept there."""
    data = domain("q35", nics(2, "virtio"))
    tree, _ = plan_bytes(data, spare_pcie=12)
    assert summary(build_tree(tree))["spare_hotplug_ports"] == 8
    tree, _ = plan_bytes(data, spare_pcie=12, firmware="seabios")
    assert summary(build_tree(tree))["spare_hotplug_ports"] == 12
    # `show` says which spare ports the guest's firmware does not pad: the SeaBIOS plan, shown as the
    # BIOS guest it was planned for and as the UEFI guest the XML says it is
    path = tmp_path / "planned.xml"
    path.write_bytes(text(tree).replace(b"<os firmware='efi'>", b"<os>", 1))
    shown = CliRunner().invoke(app, ["show", str(path)])
    assert shown.output.count("spare hot-plug port") == 12
    path.write_bytes(text(tree))
    shown = CliRunner().invoke(app, ["show", str(path)])
    assert shown.output.count("spare hot-plug port") == 8
    assert shown.output.count("no I/O window, so it is no spare") == 4
    as_json = CliRunner().invoke(app, ["show", str(path), "--json"])
    assert as_json.output.count('"firmware_pads_it": false') == 4
    # plan --json says the same of its own plan: 8 spares, all padded by OVMF
    path.write_bytes(data)
    planned = CliRunner().invoke(app, ["plan", str(path), "--spare-pcie", "12", "--json", "-o",
                                       str(tmp_path / "out.xml")])
    report = json.loads(planned.stdout)
    assert report["firmware"] == "ovmf" and len(report["spare_ports"]) == 8
    assert all(p["firmware_pads_it"] for p in report["spare_ports"])


def test_seabios_pc_budget_is_exact(tmp_path) -> None:
    """SeaBIOS's pc limit, root-bus I/O below 0x9000 (pciinit.c): 280 transitional virtio disks
    without ACPI fit (35 KiB); 300 do not, and the exit names SeaBIOS and the largest count."""
    tree, s = plan_bytes(domain("pc", disks(280), firmware=None, acpi=False))
    assert s.status == "OPTIMAL" and io_errors(tree) == []
    path = tmp_path / "g.xml"
    path.write_bytes(domain("pc", disks(300), firmware=None, acpi=False))
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 3
    assert "SeaBIOS on pc without ACPI" in result.output
    # the cheap I/O bound (planner/pipeline/bounds.py) refuses it before the model is built
    limit = re.search(r"at most (\d+) of the 300 × disk virtio fit", result.output)
    assert limit is not None and 280 <= int(limit.group(1)) < 300, result.output


def test_ovmf_pc_infeasible_names_the_firmware() -> None:
    with pytest.raises(Infeasible) as err:
        plan_bytes(domain("pc", disks(130)))
    text_ = "\n".join(err.value.reasons)
    assert "OVMF on pc" in text_ and re.search(r"at most 12\d of the 130 × disk virtio fit", text_), text_


# ---------------------------------------------------------------- the real firmware


def _boot(real_stack: EmbeddedLibvirt, tree, firmware: str | None = None):
    boot, fw, _ = real_stack.boot(text(tree).decode(), firmware=True, firmware_name=firmware)
    assert boot.started and boot.mismatches == [], boot
    assert fw is not None
    return fw


def _unassigned_devices(fw) -> set[str]:
    return {m.group(1) for e in fw.errors if (m := re.search(r"\((ua-[^)]+)\): BAR \d .*never assigned", e))}


@realstack
def test_q35_ovmf_wall(real_stack: EmbeddedLibvirt) -> None:
    """At the wall: the issue's guest, planned for OVMF, is set up completely by OVMF (every bus, window
    and BAR). Beyond it: planned for SeaBIOS (12 e1000e root ports and a spare), OVMF leaves three
    e1000e with every BAR at its sizing pattern, as the issue reported."""
    tree, _ = plan_bytes(issue_guest())
    fw = _boot(real_stack, tree)
    assert fw.ran and fw.name == "ovmf" and fw.pci_setup_done, fw.errors
    beyond, _ = plan_bytes(issue_guest(), firmware="seabios")
    fw = _boot(real_stack, beyond)
    assert fw.ran and not fw.pci_setup_done
    assert len(_unassigned_devices(fw)) == 3, fw.errors


@realstack
def test_pc_ovmf_wall(real_stack: EmbeddedLibvirt) -> None:
    """OVMF on pc has 16 KiB of I/O (0xc000-0xffff): 127 transitional virtio disks planned for it fill
    it to 16 bytes and OVMF sets them all up; the SeaBIOS plan of 130 disks does not fit OVMF."""
    tree, _ = plan_bytes(domain("pc", disks(127)))
    assert io_errors(tree) == []
    fw = _boot(real_stack, tree)
    assert fw.ran and fw.pci_setup_done, fw.errors
    beyond, _ = plan_bytes(domain("pc", disks(130)), firmware="seabios")
    assert io_errors(beyond)  # the checker, judging by the guest's OVMF, says so before booting
    fw = _boot(real_stack, beyond)
    assert fw.ran and not fw.pci_setup_done and _unassigned_devices(fw), fw.errors


@realstack
def test_aarch64_aavmf_wall(real_stack: EmbeddedLibvirt) -> None:
    """AAVMF (aarch64 virt's default here) sets up 16 bridge I/O windows: 18 e1000e planned for it boot
    complete; planned with no firmware budget (--firmware none: a port each), AAVMF drops some."""
    require_emulator("aarch64")
    data = domain("virt", nics(18, "e1000e"), arch="aarch64", firmware=None, acpi=False)
    tree, _ = plan_bytes(data)
    assert io_errors(tree) == []
    fw = _boot(real_stack, tree)
    assert fw.ran and fw.name == "aavmf" and fw.pci_setup_done, fw.errors
    beyond, _ = plan_bytes(data, firmware="none")
    assert io_errors(beyond)
    fw = _boot(real_stack, beyond)
    assert fw.ran and not fw.pci_setup_done and _unassigned_devices(fw), fw.errors


@realstack
def test_seabios_pc_wall(real_stack: EmbeddedLibvirt) -> None:
    """SeaBIOS's exact pc budget: the 280-disk guest without ACPI boots (35952 bytes of root-bus I/O);
    eight more disks packed into its free root slot make 36976 bytes, over 0x9000, and SeaBIOS runs
    out of I/O space, as the checker predicts."""
    tree, _ = plan_bytes(domain("pc", disks(280), firmware=None, acpi=False))
    fw = _boot(real_stack, tree)
    assert fw.ran and fw.name == "seabios" and fw.pci_setup_done, fw.errors
    devices = tree.getroot().find("devices")
    used = {(a.get("bus"), int(a.get("slot"), 0)) for a in tree.getroot().iter("address") if a.get("bus")}
    slot = next(s for s in range(31, 1, -1) if ("0x00", s) not in used)
    for fn, extra in enumerate(parse_domain_bytes(domain("pc", disks(288), acpi=False)).getroot()
                               .findall("devices/disk")[280:]):
        address = etree.SubElement(extra, "address", type="pci", domain="0x0000", bus="0x00",
                                   slot=f"{slot:#04x}", function=f"{fn:#x}")
        if fn == 0:
            address.set("multifunction", "on")
        devices.append(extra)
    assert io_errors(tree)
    fw = _boot(real_stack, tree)
    assert fw.ran and not fw.pci_setup_done
    assert any("out of I/O address space" in e for e in fw.errors), fw.errors


@realstack
def test_q35_seabios_without_acpi_plans_to_its_wall(real_stack: EmbeddedLibvirt) -> None:
    """SeaBIOS on q35 without ACPI: root-bus I/O below 0xa000, nine 4 KiB windows and change. Twelve
    e1000e planned for it boot; the checker refuses the OVMF-free layout of a window each."""
    data = domain("q35", nics(12, "e1000e"), firmware=None, acpi=False)
    tree, _ = plan_bytes(data)
    fw = _boot(real_stack, tree)
    assert fw.ran and fw.pci_setup_done, fw.errors
    beyond, _ = plan_bytes(data, firmware="none")
    assert io_errors(beyond, "seabios")


@realstack
def test_riscv64_boots_with_the_planned_tree(real_stack: EmbeddedLibvirt) -> None:
    """riscv64 virt enumerates no PCI in firmware: QEMU must start it with every device where planned."""
    require_emulator("riscv64")
    tree, _ = plan_bytes(domain("virt", nics(3, "virtio") + "\n" + disks(2), arch="riscv64", firmware=None,
                                acpi=False))
    boot, fw, _ = real_stack.boot(text(tree).decode(), firmware=True)
    assert boot.started and boot.mismatches == [] and len(boot.placements) >= 5, boot
    assert fw is not None and not fw.ran and fw.name == "none"


def test_assignment_check_on_fixed_query_pci_output() -> None:
    """The UEFI verdict from QMP query-pci: a BAR QEMU shows unmapped is read raw and fails at 0 or at
    its sizing pattern, passes when programmed (UEFI leaves driverless devices off); a mapped BAR
    outside its bridge's windows fails; a device QEMU has but the firmware never reached fails."""
    from planner.stack.firmware import check_assignment, flatten_query_pci

    def bar(n: int, kind: str, address: int, size: int, prefetch: bool = False) -> dict:
        return {"bar": n, "type": kind, "address": address, "size": size, "prefetch": prefetch,
                "mem_type_64": False}

    window = {"number": 1, "secondary": 1, "subordinate": 1,
              "io_range": {"base": 0xE000, "limit": 0xEFFF},
              "memory_range": {"base": 0xC1000000, "limit": 0xC10FFFFF},
              "prefetchable_range": {"base": 0xFFF00000, "limit": 0xFFFFF}}  # closed
    reply = [{"bus": 0, "devices": [
        {"bus": 0, "slot": 1, "function": 0, "qdev_id": "pci.1", "regions": [],
         "pci_bridge": {"bus": window, "devices": [
             {"bus": 1, "slot": 0, "function": 0, "qdev_id": "ua-ok", "regions": [
                 bar(0, "memory", 0xC1000000, 0x20000), bar(2, "io", 0xE000, 32)]},
             {"bus": 1, "slot": 1, "function": 0, "qdev_id": "ua-off", "regions": [bar(2, "io", -1, 32)]},
             {"bus": 1, "slot": 2, "function": 0, "qdev_id": "ua-sizing", "regions": [
                 bar(0, "memory", -1, 0x20000)]},
             {"bus": 1, "slot": 3, "function": 0, "qdev_id": "ua-outside", "regions": [
                 bar(0, "memory", 0xC2000000, 0x1000)]},
         ]}},
    ]}]
    raw = {("ua-off", 2): (0xE021, 0), ("ua-sizing", 0): (0xFFFE0000, 0)}
    functions = flatten_query_pci(reply)
    errors = check_assignment(functions, lambda f, n: raw[f.qdev_id, n],
                              {"pci.1", "ua-ok", "ua-off", "ua-sizing", "ua-outside", "ua-lost"}, "OVMF")
    assert len(errors) == 3, errors
    assert "did not enumerate ua-lost" in errors[0]
    assert "(ua-sizing): BAR 0 (memory, 131072 bytes) never assigned by OVMF (raw 0xfffe0000)" in errors[1]
    assert "(ua-outside): BAR 0 (memory) at 0xc2000000-0xc2000fff is outside the windows" in errors[2]



def test_a_firmware_is_one_toml_entry_for_the_planner(monkeypatch) -> None:
    """The firmware names the options accept are models/firmware.toml's tables: a new entry (here a
    copy of SeaBIOS whose q35 I/O space holds no bridge window) is planned for by name, in any case,
    with no Python change: where SeaBIOS gets a pcie-to-pci-bridge (a 4 KiB window), it gets none."""
    import copy

    from planner.commands import api
    from planner.facts import facts

    table = copy.deepcopy(facts._firmware_table())
    table["tinybios"] = copy.deepcopy(table["seabios"])
    table["tinybios"].update(label="TinyBIOS", loader_names=["tinybios"])
    table["tinybios"]["q35"]["io_max"] = 0xFFF  # root-bus BARs only: no 4 KiB bridge window fits
    monkeypatch.setattr(facts, "_firmware_table", lambda: table)
    guest = (REPO / "examples" / "q35-server.xml").read_bytes()
    seabios = api.plan(guest, api.options(firmware="SeaBIOS"))
    assert seabios.controllers_added.get("pcie-to-pci-bridge") == 1 and seabios.summary.io_bytes > 0xFFF
    tiny = api.plan(guest, api.options(firmware="TinyBIOS"))
    assert tiny.status == "optimal"
    assert tiny.summary.io_budget_bytes <= 0xFFF < seabios.summary.io_budget_bytes
    assert "pcie-to-pci-bridge" not in tiny.controllers_added and tiny.summary.io_bytes <= 0xFFF
    with pytest.raises(api.BadInputError):
        api.options(firmware="coreboot")


# A firmware added the way a user adds one: one entry in models/firmware.toml, nothing else. Here a copy
# of SeaBIOS whose q35 I/O space holds no 4 KiB bridge window (SeaBIOS plans q35-server with a
# pcie-to-pci-bridge, which needs one).
TINYBIOS = """
[tinybios]
label = "TinyBIOS"
uefi = false
pads_spares = false
arches = ["x86_64", "i686"]
loader_names = ["tinybios"]

[tinybios.q35]
io_max = 0xfff
io_max_noacpi = 0xfff
max_windows = 0
source = "a test's firmware"
measured = "none"
"""


@pytest.fixture(scope="module")
def tinybios_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a child pciplan that imports a copy of the installed package (models included
    as planner/models) whose firmware.toml has one more entry, TinyBIOS; no Python file is changed."""
    import shutil
    import subprocess
    import sys

    from conftest import subprocess_env

    where = subprocess.run([sys.executable, "-c", "import planner, planner.models\n"
                            "print(planner.__path__[0]); print(planner.models.__path__[0])"],
                           env=subprocess_env(), capture_output=True, text=True, check=True, timeout=60)
    package, models = where.stdout.split()
    site = tmp_path_factory.mktemp("tinybios")
    ignore = shutil.ignore_patterns("__pycache__", "models")
    shutil.copytree(package, site / "planner", ignore=ignore)
    shutil.copytree(models, site / "planner" / "models", ignore=shutil.ignore_patterns("__pycache__"))
    with (site / "planner" / "models" / "firmware.toml").open("a") as f:
        f.write(TINYBIOS)
    env = subprocess_env(PYTHONPATH=str(site))
    child = subprocess.run([sys.executable, "-c", "import planner.models; print(planner.models.__path__[0])"],
                           env=env, capture_output=True, text=True, check=True, timeout=60)
    assert child.stdout.strip() == str(site / "planner" / "models")  # the copy, not the installed package
    return env


def _pciplan(env: dict[str, str], *args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "planner.commands.cli", *args], env=env, capture_output=True,
                          text=True, cwd=REPO, timeout=600)


def test_a_firmware_is_one_toml_entry_for_every_command(tinybios_env, tmp_path) -> None:
    """plan, check, compare and fleet take --firmware TinyBIOS (any case) from the TOML entry alone, and
    each applies its budget: plan adds no bridge window, check flags SeaBIOS's plan with TinyBIOS's
    label and budget, compare plans to it, fleet plans every file to it; the help lists it."""
    guest = REPO / "examples" / "q35-server.xml"
    seabios_plan = REPO / "tests" / "golden" / "q35-server.xml"  # planned for SeaBIOS: a pcie-to-pci-bridge
    assert "tinybios" in _pciplan(tinybios_env, "plan", "--help").stdout

    out = tmp_path / "planned.xml"
    r = _pciplan(tinybios_env, "plan", str(guest), "--firmware", "TinyBIOS", "-o", str(out))
    assert r.returncode == 0, r.stderr
    bridge = "model='pcie-to-pci-bridge'"
    assert bridge not in out.read_text() and bridge in seabios_plan.read_text()

    r = _pciplan(tinybios_env, "check", str(seabios_plan), "--firmware", "tinybios")
    assert r.returncode == 1 and "[io-windows]" in r.stdout and "TinyBIOS has 4095" in r.stdout, r.stdout
    r = _pciplan(tinybios_env, "check", str(out), "--firmware", "tinybios")
    assert r.returncode == 0, r.stdout
    assert _pciplan(tinybios_env, "check", str(seabios_plan), "--firmware", "seabios").returncode == 0
    # named by its loader file (firmware.toml's loader_names), as SeaBIOS's and OVMF's are
    booted = tmp_path / "booted.xml"
    booted.write_text(seabios_plan.read_text().replace(
        "</type>", "</type>\n    <loader readonly='yes' type='pflash'>/opt/tinybios/TINYBIOS.fd</loader>", 1))
    r = _pciplan(tinybios_env, "check", str(booted))
    assert r.returncode == 1 and "TinyBIOS has 4095" in r.stdout, r.stdout
    r = _pciplan(tinybios_env, "plan", str(booted), "--replan", "-o", str(tmp_path / "replanned.xml"))
    assert r.returncode == 0 and bridge not in (tmp_path / "replanned.xml").read_text(), r.stderr

    r = _pciplan(tinybios_env, "compare", str(guest), "--firmware", "tinybios", "--json")
    assert r.returncode == 0, r.stderr
    ours = json.loads(r.stdout)["guests"][0]["pciplan"]
    assert ours["ok"] and not ours["rule_violations"]
    assert "pcie-to-pci-bridge" not in ours["controllers_added"]

    folder = tmp_path / "fleet"
    folder.mkdir()
    (folder / "g.xml").write_bytes(guest.read_bytes())
    r = _pciplan(tinybios_env, "fleet", str(folder), "--out", str(tmp_path / "fleet-out"), "--jobs", "1",
                 "--firmware", "TINYBIOS")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "fleet-out" / "g.xml").read_bytes() == out.read_bytes()


def test_a_firmware_pciplan_cannot_boot_is_refused_by_check_boot(tinybios_env) -> None:
    """check --boot with a firmware the TOML adds: there is no recipe to boot it, so one line says it is
    not bootable here (exit 2), instead of a pass on QEMU alone or a crash."""
    from realstack import stack_unavailable

    r = _pciplan(tinybios_env, "check", str(REPO / "tests" / "golden" / "q35-server.xml"), "--boot",
                 "--firmware", "tinybios")
    if "real stack not available" in r.stderr and "firmware" not in r.stderr:
        stack_unavailable(r.stderr.strip())
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr == ("pciplan: error: real stack not available: firmware TinyBIOS: not bootable here: "
                        "pciplan boots only SeaBIOS (x86), OVMF and AAVMF\n")


def test_a_firmware_that_could_not_run_is_not_ok() -> None:
    """A report whose firmware should have run but could not (files missing, no way to boot it) is no
    pass; "none" (nothing to run: riscv64, direct kernel boot) is."""
    from planner.stack import StackReport
    from planner.stack.model import DefineResult, FirmwareResult

    def report(fw: FirmwareResult) -> StackReport:
        return StackReport(DefineResult(True, None, "<domain/>"), [], firmware=fw)

    missing = FirmwareResult(False, False, ["/usr/share/OVMF/OVMF_CODE_4M.fd not installed"], "", "ovmf",
                             "OVMF", unavailable=True)
    assert not report(missing).ok
    assert report(FirmwareResult(False, False, ["no PCI firmware"], "", "none", "none")).ok
