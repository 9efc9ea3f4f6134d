"""Property tests: random guests of every machine plan cleanly, completely and idempotently."""

from __future__ import annotations

import pytest
from conftest import disk_letters, domain_xml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planning import new_errors, plan_bytes, text
from realstack import real_stack_fixture  # noqa: F401

from planner.xml.xmlio import parse_domain_bytes

MACHINES = {"q35": "x86_64", "pc": "x86_64", "virt": "aarch64", "virt-riscv": "riscv64"}

DEVICE = {
    "virtio-nic": "<interface type='user'><mac address='{mac}'/><model type='virtio'/></interface>",
    "e1000": "<interface type='user'><mac address='{mac}'/><model type='e1000'/></interface>",
    "e1000e": "<interface type='user'><mac address='{mac}'/><model type='e1000e'/></interface>",
    "rtl8139": "<interface type='user'><mac address='{mac}'/><model type='rtl8139'/></interface>",
    "transitional-nic": "<interface type='user'><mac address='{mac}'/><model type='virtio-transitional'/>"
                        "</interface>",
    "disk": "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/{n}.img'/>"
            "<target dev='vd{dev}' bus='virtio'/></disk>",
    "scsi-disk": "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/{n}.img'/>"
                 "<target dev='sd{dev}' bus='scsi'/></disk>",
    "hostdev": "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' "
               "bus='0x{hb:02x}' slot='0x00' function='0x0'/></source></hostdev>",
    "rng": "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
    "input": "<input type='keyboard' bus='virtio'/>",
    "qxl": "<video><model type='qxl'/></video>",
    "virtio-gpu": "<video><model type='virtio'/></video>",
    "ich9-sound": "<sound model='ich9'/>",
    "ich6-sound": "<sound model='ich6'/>",
    "root-port": "<controller type='pci' model='pcie-root-port'/>",
}
PCIE_ONLY = {"root-port"}
X86_ONLY = {"qxl", "ich9-sound", "ich6-sound"}


@st.composite
def guests(draw) -> bytes:
    machine = draw(st.sampled_from(sorted(MACHINES)))
    arch = MACHINES[machine]
    kinds = [k for k in DEVICE if not (arch != "x86_64" and k in X86_ONLY)
             and not (machine == "pc" and k in PCIE_ONLY)]
    picks = draw(st.lists(st.sampled_from(kinds), min_size=0, max_size=60))
    balloon = draw(st.sampled_from(["", "<memballoon model='none'/>", "<memballoon model='virtio'/>"]))
    body = []
    counters = {"disk": 0, "scsi-disk": 0}
    if "root-port" in picks:
        body.append("<controller type='pci' model='pcie-root'/>")
    for n, kind in enumerate(picks):
        dev = ""
        if kind in counters:
            dev = disk_letters(counters[kind])
            counters[kind] += 1
        body.append(DEVICE[kind].format(mac=f"52:54:00:00:{n >> 8:02x}:{n & 255:02x}", n=n, dev=dev,
                                        hb=n % 256))
    body.append(balloon)
    return domain_xml(machine.split("-")[0], "".join(body), arch=arch, vcpu=1, emulator=False, name="p")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(guests())
def test_random_guests_plan_clean_complete_and_idempotent(data: bytes) -> None:
    tree, summary = plan_bytes(data)
    assert summary.status == "OPTIMAL"
    assert new_errors(parse_domain_bytes(data), tree) == []
    again, second = plan_bytes(text(tree))
    assert text(again) == text(tree)
    assert second.controllers_added == {}


@pytest.mark.realstack
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(guests())
def test_random_guests_are_libvirt_fixpoints(real_stack, data: bytes) -> None:
    """The same random guests, judged by real libvirt 9.0: defined unchanged."""
    from test_realstack_plans import _fixpoint

    tree, _ = plan_bytes(data)
    _fixpoint(real_stack, text(tree).decode())
