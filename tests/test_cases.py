"""Every shared case and every test guest: planned (or rejected as libvirt rejects it), rule-checked,
and idempotent. The real-stack tier (test_realstack_plans.py) defines the same outputs in libvirt."""

from __future__ import annotations

import copy

import pytest
from conftest import REPO, libvirt_manifest, needs_shared, shared_cases, test_guests
from planning import new_errors, plan_bytes, plan_file, text

from planner.xml.xmlio import InputError, parse_domain

VIRT_INSTALL = shared_cases("virt-install")
LIBVIRT = shared_cases("libvirt")
GUESTS = test_guests()
MANIFEST = libvirt_manifest()
ACCEPTED = [p for p in LIBVIRT if MANIFEST[p.name]["libvirt90"] == "ok"]
REJECTED = [p for p in LIBVIRT if MANIFEST[p.name]["libvirt90"] != "ok"]


def _plan_and_check(path) -> None:
    before = parse_domain(path)
    tree, summary = plan_file(path)
    assert summary.status == "OPTIMAL"
    assert new_errors(before, tree) == []
    again, second = plan_bytes(text(tree))
    assert text(again) == text(tree), "planning a planned file must change nothing"
    assert second.controllers_added == {}


@needs_shared
def test_case_counts() -> None:
    assert len(VIRT_INSTALL) == 22
    assert len(LIBVIRT) == 65
    assert len(GUESTS) >= 30


@pytest.mark.parametrize("path", VIRT_INSTALL, ids=lambda p: p.name)
def test_virt_install_guest_plans_and_checks(path) -> None:
    _plan_and_check(path)


@pytest.mark.parametrize("path", ACCEPTED, ids=lambda p: p.name)
def test_libvirt_accepted_case_plans_and_checks(path) -> None:
    _plan_and_check(path)


@pytest.mark.parametrize("path", GUESTS, ids=lambda p: p.name)
def test_guest_plans_and_checks(path) -> None:
    _plan_and_check(path)


EXAMPLES = sorted((REPO / "examples").glob("*.xml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plans_and_checks(path) -> None:
    _plan_and_check(path)


# Why each input libvirt 9.0 rejects is rejected here too (a word of libvirt's reason, or ours).
REJECTION_WORDS = {
    "440fx-wrong-root.xml": "must be model='pci-root'",
    "aarch64-virtio-pci-manual-addresses.xml": "slot must be <= 0",
    "pci-expander-bus-bad-node.xml": "NUMA node 1",
    "pcie-expander-bus-bad-bus.xml": "accepts a pcie-expander-bus",
    "pcie-root-port-too-many.xml": "no free slot",
    "q35-dmi-bad-address1.xml": "multiple 'pci' controllers with index '2'",
    "watchdog-q35-multiple.xml": "only a single watchdog",
}


@needs_shared
def test_every_rejected_case_has_an_expected_reason() -> None:
    assert {p.name for p in REJECTED} == set(REJECTION_WORDS)


@pytest.mark.parametrize("path", REJECTED, ids=lambda p: p.name)
def test_libvirt_rejected_case_is_rejected_with_reason(path) -> None:
    original = path.read_bytes()
    with pytest.raises(InputError) as exc:
        plan_file(path)
    message = str(exc.value)
    assert REJECTION_WORDS[path.name] in message
    assert "\n" not in message
    assert path.read_bytes() == original


def test_planning_does_not_touch_the_parsed_input_file(tmp_path) -> None:
    src = GUESTS[0]
    copy_path = tmp_path / src.name
    copy_path.write_bytes(src.read_bytes())
    tree, _ = plan_file(copy_path)
    assert copy_path.read_bytes() == src.read_bytes()
    assert copy.deepcopy(tree) is not None
