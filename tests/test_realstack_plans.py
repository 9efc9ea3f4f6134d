"""Real-stack tier: every planned XML is a fixpoint for real libvirt 9.0 (defined unchanged), and a
selection boots in QEMU with the planned tree and, on x86, gets through SeaBIOS's PCI setup.
Runs whenever libvirt and QEMU are installed; PCIPLAN_REQUIRE_REALSTACK=1 turns a skip into a failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import controllers, libvirt_manifest, nics, shared_cases, test_guests
from planning import plan_bytes, plan_file, text
from realstack import REQUIRE_ENV, real_stack_fixture, stack_unavailable  # noqa: F401

from planner.stack import diff_layouts
from planner.xml.xmlio import parse_domain_bytes

pytestmark = pytest.mark.realstack

MANIFEST = libvirt_manifest()
EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.xml"))
PLANNED = (
    EXAMPLES
    + shared_cases("virt-install")
    + [p for p in shared_cases("libvirt") if MANIFEST[p.name]["libvirt90"] == "ok"]
    + test_guests()
)


def _fixpoint(stack, xml: str) -> str:
    result = stack.define(xml)
    assert result.ok, result.error
    changes = diff_layouts(xml, result.xml)
    assert changes == [], "\n".join(f"{c.kind}: {c.element}: {c.detail}" for c in changes)
    return result.xml


@pytest.mark.parametrize("path", PLANNED, ids=lambda p: p.name)
def test_planned_output_is_a_libvirt_fixpoint(real_stack, path) -> None:
    tree, _ = plan_file(path)
    _fixpoint(real_stack, text(tree).decode())


GREEDY_SWEEP = [("q35", n) for n in (1, 2, 5, 10, 32, 64, 100, 200)] + [
    ("pc", n) for n in (1, 5, 10, 29, 30, 31, 60, 100, 200)
] + [("virt", n) for n in (1, 5, 32, 100, 200)]


@pytest.mark.parametrize(("machine", "count"), GREEDY_SWEEP)
def test_no_more_controllers_than_libvirt_greedy(real_stack, guest_xml, machine, count) -> None:
    """Fresh guests of mixed virtio/e1000/e1000e NICs: the plan boots as planned and never adds more
    controllers than libvirt."""
    models = ["virtio", "virtio", "e1000", "e1000e"] if machine != "virt" else ["virtio", "virtio", "e1000"]
    devices = "\n".join(nics(1, models[i % len(models)], start=i) for i in range(count))
    data = guest_xml(machine, devices)
    greedy = real_stack.define(data.decode())
    tree, summary = plan_bytes(data)
    planned = _fixpoint(real_stack, text(tree).decode())
    _boot(text(tree).decode())  # and QEMU runs it as planned, SeaBIOS sets it up, hot-plug works
    ours = len(controllers(parse_domain_bytes(planned.encode())))
    if greedy.ok:
        theirs = len(controllers(parse_domain_bytes(greedy.xml.encode())))
        assert ours <= theirs, (ours, theirs)


# ---------------------------------------------------------------- boot: QEMU, SeaBIOS, hot-plug

BOOTED = EXAMPLES + shared_cases("virt-install") + test_guests()


def _boot(xml: str, firmware: bool = True, seconds: float = 20.0):
    from planner.stack import verify

    report = verify(xml, boot=True, firmware=firmware, hotplug=True, seconds=seconds)
    assert report.define.ok, report.define.error
    assert report.changes == [], report.summary_lines()
    assert report.boot is not None and report.boot.started, report.summary_lines()
    assert report.boot.mismatches == [], report.summary_lines()
    assert report.hotplug_failures == [], report.summary_lines()
    if firmware:
        _firmware_ran(report)
    return report


# The firmware that sets up PCI: when the guest boots one of these, it must have run. A firmware that did
# not (its files missing: OVMF/AAVMF come from Debian's ovmf and qemu-efi-aarch64) is a skip, and under
# PCIPLAN_REQUIRE_REALSTACK=1 a failure, never a pass on QEMU alone.
PCI_FIRMWARE = {"seabios", "ovmf", "aavmf"}


def _firmware_ran(report) -> None:
    fw = report.firmware
    assert fw is not None, report.summary_lines()  # asked for, and QEMU started
    if fw.name in PCI_FIRMWARE:
        if not fw.ran:
            stack_unavailable(f"{fw.label} did not run: {'; '.join(fw.errors)}")
        assert fw.pci_setup_done, report.summary_lines()
    else:  # riscv64 virt: no PCI firmware, QEMU's device tree is the check
        assert not fw.ran and fw.name == "none", fw


def test_a_pci_firmware_that_did_not_run_fails_under_the_flag(real_stack, guest_xml, monkeypatch,
                                                              tmp_path) -> None:
    """The firmware lookup pointed at an empty folder (as if ovmf were not installed): booting a UEFI
    guest must fail under PCIPLAN_REQUIRE_REALSTACK=1, not pass because QEMU alone started."""
    from planner.stack.firmware import UEFI_FILES

    empty = (str(tmp_path / "OVMF_CODE_4M.fd"), str(tmp_path / "OVMF_VARS_4M.fd"))
    monkeypatch.setitem(UEFI_FILES, "ovmf", empty)
    monkeypatch.setenv(REQUIRE_ENV, "1")
    uefi_guest = guest_xml("q35", nics(2)).replace(b"<os>", b"<os firmware='efi'>")
    xml = text(plan_bytes(uefi_guest)[0]).decode()
    with pytest.raises(pytest.fail.Exception, match="OVMF did not run: .*OVMF_CODE_4M.fd"):
        _boot(xml)
    monkeypatch.delenv(REQUIRE_ENV)
    with pytest.raises(pytest.skip.Exception, match="OVMF did not run"):
        _boot(xml)


@pytest.mark.parametrize("path", BOOTED, ids=lambda p: p.name)
def test_planned_guest_boots_with_the_planned_tree(real_stack, path) -> None:
    """QEMU places every device where the plan says, SeaBIOS (x86) finishes PCI setup, and a NIC can
    be hot-plugged into the plan's empty hot-pluggable ports and slots."""
    tree, _ = plan_file(path)
    _boot(text(tree).decode())


@pytest.mark.slow
@pytest.mark.parametrize("machine", ["q35", "pc", "virt"])
def test_thousand_device_guest_on_the_real_stack(real_stack, guest_xml, machine) -> None:
    """1000 virtio devices: planned, defined unchanged, started with the planned tree, and on x86 set
    up completely by SeaBIOS within its exact I/O limit (libvirt's own greedy gives up or breaks the
    I/O budget here). On pc every
    virtio device is transitional with a legacy I/O BAR, and 1000 of those cannot fit SeaBIOS's I/O
    space (see test_root_bus_io_counts_too): there the guest uses modern-only virtio NICs."""
    from conftest import disks

    if machine == "pc":
        data = guest_xml(machine, nics(1000, "virtio-non-transitional"))
    else:
        data = guest_xml(machine, nics(600) + "\n" + disks(400))
    tree, summary = plan_bytes(data)
    assert summary.status == "OPTIMAL"
    # AAVMF (aarch64's default firmware) does not reach its console within 7 minutes under TCG with
    # this 1000-device plan (255 root ports): a hang or a pathological slow path, not yet understood
    # (see README, Firmware). The virt guest is checked for libvirt and QEMU only.
    _boot(text(tree).decode(), firmware=machine != "virt", seconds=120.0)
