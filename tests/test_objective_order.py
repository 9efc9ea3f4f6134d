"""The objective's order is the user's: command line, the domain's <metadata>, a fleet policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, controllers, disks, nics, subprocess_env
from planning import errors, plan_bytes, text
from realstack import real_stack_fixture  # noqa: F401

from planner.xml.xmlio import InputError

CONTROLLERS_FIRST = ("controllers", "hotplug", "pcie", "buses")
WATCHDOG = "    <watchdog model='i6300esb' action='reset'/>"


def guest(guest_xml, extra_metadata: str = "") -> bytes:
    """8 virtio devices and a conventional watchdog on q35 (the shape of the issue)."""
    metadata = f"<metadata>{extra_metadata}</metadata>" if extra_metadata else ""
    return guest_xml("q35", devices="\n".join([disks(4), nics(4), WATCHDOG]), extra=metadata)


def test_default_keeps_virtio_on_pcie(guest_xml) -> None:
    tree, summary = plan_bytes(guest(guest_xml))
    assert summary.levels["pcie_on_pci"] == 0
    assert summary.levels["hotplug_lost"] == 0
    assert len(controllers(tree, "pcie-root-port")) >= 9  # one per virtio device, the bridge's, a spare


def test_controllers_first_trades_hotplug_for_controllers(guest_xml) -> None:
    default_tree, default = plan_bytes(guest(guest_xml))
    tree, summary = plan_bytes(guest(guest_xml), objective_order=CONTROLLERS_FIRST)
    assert summary.levels["controllers_added"] < default.levels["controllers_added"]
    # Everything integrated on pcie-root, the watchdog too (a conventional device may be integrated):
    # no controller at all, at the price of hot-plug, with virtio kept on PCIe.
    assert summary.levels["controllers_added"] == 0
    assert summary.levels["hotplug_lost"] > 0 and summary.levels["pcie_on_pci"] == 0
    assert errors(tree) == []


def test_hotplug_then_controllers_keeps_every_device_hot_pluggable(guest_xml) -> None:
    tree, summary = plan_bytes(guest(guest_xml), objective_order=("hotplug", "controllers", "pcie", "buses"))
    _, default = plan_bytes(guest(guest_xml))
    assert summary.levels["hotplug_lost"] == 0
    assert summary.levels["controllers_added"] < default.levels["controllers_added"]


def test_order_from_metadata_and_policy(guest_xml, tmp_path: Path) -> None:
    ns = "xmlns:pciplan='urn:pciplan:constraints:1'"
    meta = (f"<pciplan:constraints {ns}><pciplan:objective order='controllers,hotplug,pcie,buses'/>"
            "</pciplan:constraints>")
    _, from_metadata = plan_bytes(guest(guest_xml, meta))
    _, from_flag = plan_bytes(guest(guest_xml), objective_order=CONTROLLERS_FIRST)
    assert from_metadata.levels == from_flag.levels
    policy = tmp_path / "policy.toml"
    policy.write_text('objective = "controllers,hotplug,pcie,buses"\n')
    _, from_policy = plan_bytes(guest(guest_xml), policy=str(policy))
    assert from_policy.levels == from_flag.levels
    # the command line wins over the metadata
    default = ("hotplug", "pcie", "controllers", "buses")
    _, flag_wins = plan_bytes(guest(guest_xml, meta), objective_order=default)
    assert flag_wins.levels["pcie_on_pci"] == 0


def test_a_bad_order_is_refused(guest_xml) -> None:
    ns = "xmlns:pciplan='urn:pciplan:constraints:1'"
    meta = f"<pciplan:constraints {ns}><pciplan:objective order='controllers,hotplug'/></pciplan:constraints>"
    with pytest.raises(InputError, match="each exactly once"):
        plan_bytes(guest(guest_xml, meta))
    example = str(REPO / "examples" / "q35-server.xml")
    r = subprocess.run([sys.executable, "-m", "planner.commands.cli", "plan", example,
                        "--objective-order", "controllers,pcie"], capture_output=True, cwd=REPO,
                       env=subprocess_env(), timeout=120)
    assert r.returncode == 2 and b"--objective-order" in r.stderr


@pytest.mark.realstack
def test_controllers_first_plan_is_a_libvirt_fixpoint_and_boots(real_stack, guest_xml) -> None:
    """The trade-off is real: libvirt defines the controllers-first layout unchanged (everything an
    integrated endpoint, the conventional watchdog too), QEMU runs it with the planned tree and
    SeaBIOS sets it up."""
    from planner.stack import verify

    tree, _ = plan_bytes(guest(guest_xml), objective_order=CONTROLLERS_FIRST)
    report = verify(text(tree).decode(), boot=True, firmware=True, hotplug=True, seconds=20.0)
    assert report.define.ok and report.changes == [], report.summary_lines()
    assert report.boot is not None and report.boot.started and report.boot.mismatches == [], \
        report.summary_lines()
    assert report.hotplug_failures == [], report.summary_lines()
    assert report.firmware is not None and report.firmware.pci_setup_done, report.summary_lines()
