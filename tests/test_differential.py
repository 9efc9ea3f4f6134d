"""Differential property test: on hand-made topologies (valid and deliberately broken), the rule
checker and real libvirt 9.0 agree on what libvirt accepts. Rules that only QEMU or the firmware
enforce are left out of the comparison (libvirt defines such layouts)."""

from __future__ import annotations

import pytest
from conftest import domain_xml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from realstack import real_stack_fixture  # noqa: F401

from planner.checker.check import check_domain
from planner.xml.xmlio import parse_domain_bytes

pytestmark = pytest.mark.realstack

# Rules libvirt 9.0 itself enforces at define time; the others are QEMU's or the firmware's, or
# things libvirt repairs (index gaps, multifunction flag).
LIBVIRT_RULES = {
    "root-model", "controller-model", "model-machine", "index-range", "index-duplicate", "bad-address",
    "domain", "bus-missing", "slot-range", "function-range", "connect-type", "integrated", "double-use",
    "reserved", "fixed-address", "target-option", "target-range", "busnr-range", "numa-node",
    "parent-index-bridge",
}
# Pairs found by this test where libvirt and the checker legitimately differ, with libvirt's reason.
KNOWN = {
    # libvirt fills a missing index with a default controller, so a device on that bus can be valid
    # or not depending on the controller libvirt picks; the checker flags the missing bus itself.
    "bus-missing",
}

MODELS = {
    "q35": ["pcie-root-port", "pcie-root-port", "pcie-to-pci-bridge", "pci-bridge", "dmi-to-pci-bridge",
            "pcie-switch-upstream-port", "pcie-switch-downstream-port"],
    "pc": ["pci-bridge", "pci-bridge", "pcie-root-port"],
}
ENDPOINTS = ["virtio", "e1000", "e1000e", "rtl8139"]


@st.composite
def topologies(draw) -> str:
    machine = draw(st.sampled_from(["q35", "pc"]))
    root = "pcie-root" if machine == "q35" else "pci-root"
    n = draw(st.integers(1, 6))
    parts = [f"<controller type='pci' index='0' model='{root}'/>"]
    used = set()
    for index in range(1, n + 1):
        model = draw(st.sampled_from(MODELS[machine]))
        # mostly a lower index; sometimes a higher one (QEMU refuses that, libvirt only for pci-bridge)
        parent = draw(st.integers(0, index - 1) | st.integers(0, n))
        slot = draw(st.integers(1 if parent == 0 else 0, 4))  # 00:00 means "no address" to libvirt
        fn = draw(st.integers(0, 2))
        used.add((parent, slot, fn))
        mf = " multifunction='on'" if fn == 0 else ""
        parts.append(f"<controller type='pci' index='{index}' model='{model}'><address type='pci' "
                     f"domain='0x0000' bus='{parent:#04x}' slot='{slot:#04x}' function='{fn:#x}'{mf}/>"
                     "</controller>")
    for k in range(draw(st.integers(0, 5))):
        bus = draw(st.integers(0, n))
        slot = draw(st.integers(1 if bus == 0 else 0, 5))
        fn = draw(st.integers(0, 1))
        model = draw(st.sampled_from(ENDPOINTS))
        mf = " multifunction='on'" if fn == 0 else ""
        parts.append(f"<interface type='user'><mac address='52:54:00:00:00:{k:02x}'/><model type='{model}'/>"
                     f"<address type='pci' domain='0x0000' bus='{bus:#04x}' slot='{slot:#04x}' "
                     f"function='{fn:#x}'{mf}/></interface>")
    if machine == "q35":
        parts.append("<controller type='sata' index='0'><address type='pci' domain='0x0000' bus='0x00' "
                     "slot='0x1f' function='0x2'/></controller>")
    parts.append("<controller type='usb' model='none'/><memballoon model='none'/>")
    return domain_xml(machine, "".join(parts), acpi=False, emulator=False, memory_kib=262144,
                      name="diff").decode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(topologies())
def test_checker_agrees_with_libvirt(real_stack, xml: str) -> None:
    found = {v.rule for v in check_domain(parse_domain_bytes(xml.encode()), require_complete=False)}
    if found & KNOWN:
        return  # recorded above, with the reason
    ours = bool(found & LIBVIRT_RULES)
    result = real_stack.define(xml)
    assert ours == (not result.ok), (
        f"checker says {'reject' if ours else 'accept'} ({sorted(found)}), libvirt says "
        f"{'accept' if result.ok else 'reject: ' + str(result.error)}\n{xml}"
    )
