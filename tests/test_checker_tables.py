"""The checker keeps its own hand-written tables (planner/checker/check.py imports nothing of the planner: it
is the second opinion). These tests hold them against the catalogue in models/*.toml, so that a fact
changed on one side only fails here. Every difference that is meant is listed below with its reason;
anything else that differs is drift, and the test names the table and the entry."""

from __future__ import annotations

import tomllib

import pytest
from conftest import REPO
from lxml import etree

from planner.checker import check
from planner.facts import facts

# The checker names machine families arch-first, the catalogue machine-first. Both names are in
# outputs (show's root label says "pcie-root (aarch64-virt)", plan's messages "machine family
# virt-aarch64"), and outputs stay byte-identical, so the two spellings stay, mapped here.
FAMILY = {"q35": check.Q35, "pc": check.PC, "virt-aarch64": check.AARCH64_VIRT,
          "virt-riscv64": check.RISCV64_VIRT}
ENDPOINTS = facts.given_rule()[0]


def _check_takes(bus_model: str, connect: str) -> bool:
    """The checker's connect-type rule for a given address, as check_domain applies it."""
    accepts = check.BUS_ACCEPTS[bus_model]
    mine = check.ENDPOINT if connect in ENDPOINTS else connect
    return mine in accepts or (connect == "pci-bridge" and check.ENDPOINT in accepts)


def _toml(name: str) -> dict:
    return tomllib.loads((REPO / "models" / name).read_text())


def test_families_are_the_machines_of_the_catalogue() -> None:
    assert set(FAMILY) == set(facts.machines())
    assert set(FAMILY.values()) == set(check.ROOT_MODEL)


@pytest.mark.parametrize("arch", sorted({a for m in facts.machines().values() for a in m.arches}
                                        | {"armv7l", "ppc64le", "s390x"}))
def test_machine_family_agrees(arch: str) -> None:
    """Every <os><type arch machine> the catalogue plans (and a few it does not) is the same family
    for the checker (armv7l: libvirt 9.0 gives its virt machine piix3-uhci and no AAVMF boots it, so
    neither side plans or judges it)."""
    names = {p.replace("*", "7.2") for m in facts.machines().values() for p in m.machine_patterns}
    for name in sorted(names | {"microvm", "pseries"}):
        root = etree.fromstring(f"<domain><os><type arch='{arch}' machine='{name}'>hvm</type></os></domain>")
        machine = facts.machine_for(arch, name)
        expected = FAMILY[machine.family] if machine is not None else None
        assert check.machine_family(root)[0] == expected, (arch, name)


def test_root_model_per_family() -> None:
    for family, m in facts.machines().items():
        assert check.ROOT_MODEL[FAMILY[family]] == m.root, family


def test_controller_models_and_roles() -> None:
    models = facts.controller_models()
    assert set(models) == check.PCI_CONTROLLER_MODELS
    assert set(facts.ROOTS) == check.ROOT_MODELS
    assert set(facts.PORTS) == check.PORT_MODELS
    assert set(facts.EXPANDERS) == check.PXB_MODELS
    assert {n for n, m in models.items() if m.io_window} == check.CONVENTIONAL_BRIDGES


@pytest.mark.parametrize("model", sorted(facts.controller_models()))
def test_connect_rules(model: str) -> None:
    """The checker folds both endpoint kinds into one ENDPOINT (it judges given addresses, where
    libvirt takes either kind on an endpoint bus): the catalogue's accepts, folded, and its
    given-address rule must say the same."""
    m = facts.controller_models()[model]
    folded = {check.ENDPOINT if c in ENDPOINTS else c for c in m.accepts}
    assert check.BUS_ACCEPTS[model] == folded
    for connect in _connects():
        assert _check_takes(model, connect) == m.takes(connect, given=True), connect
    assert check.SLOT_RANGE[model] == (m.first_slot, m.last_slot)


def _connects() -> set[str]:
    return {c for m in facts.controller_models().values() for c in m.accepts | {m.plugs_into}} - {""}


def test_expander_machines() -> None:
    for model in facts.EXPANDERS:
        pxb = {FAMILY[f] for f, m in facts.machines().items() if m.pxb == model}
        assert check.PXB_MACHINES[model] == pxb, model


def test_target_options() -> None:
    """Which <target> attributes libvirt fills per model; `hotplug` is not in the catalogue (a
    controller's hotplug='off' is read from the XML whatever its model), so it is left out."""
    models = facts.controller_models()
    for option in ("chassis", "port", "chassisNr", "busNr"):
        field = "chassis-port" if option in ("chassis", "port") else option
        assert check.TARGET_OPTIONS[option] == {n for n, m in models.items() if m.target == field}, option


def test_machine_defaults() -> None:
    for family, m in facts.machines().items():
        f = FAMILY[family]
        assert check.DEFAULT_USB_MODEL[f] == m.default_usb, family
        assert check.DEFAULT_NET_MODEL[f] == m.default_net, family
        assert check.DEFAULT_VIDEO_MODEL[f] == m.default_video, family
        assert m.default_scsi == check.DEFAULT_SCSI_MODEL, family
        assert check.MMIO_TRANSPORTS.get(f, 0) == m.mmio_transports, family
        assert check.CHIPSET_IO_BYTES.get(f, 0) == m.chipset_io_bytes, family


def test_limits() -> None:
    assert check.MAX_INDEX == facts.MAX_INDEX
    assert check.MAX_BUS_NUMBERS == facts.MAX_BUS_NUMBERS


def test_firmware_budgets() -> None:
    """FIRMWARE_IO holds io_max (with and without <acpi/>) and max_windows of every firmware and
    family models/firmware.toml budgets; 'none' has no budget on either side."""
    table = _toml("firmware.toml")
    budgets = {}
    for name, d in table.items():
        assert check.FIRMWARE_LABEL[name] == d["label"], name
        assert (name in check.UEFI) == d["uefi"], name
        for family, b in d.items():
            if isinstance(b, dict):
                f = FAMILY[family]
                budgets[name, f, True] = (b["io_max"], b["max_windows"])
                budgets[name, f, False] = (b["io_max_noacpi"], b["max_windows"])
    assert budgets == check.FIRMWARE_IO


# The checker's I/O BAR sizes by (element, model) and the catalogue entry each stands for.
# Intended: the checker keys controllers by type and knows virtio-scsi apart; an <interface
# type='hostdev'> is an assigned host function, the catalogue's hostdev:pci.
IO_KEYS = {("controller", "virtio-scsi"): "controller:scsi:virtio-scsi",
           ("interface", "hostdev"): "hostdev:pci"}


@pytest.mark.parametrize("key", sorted(check.IO_BAR_BYTES), ids=lambda k: ":".join(k))
def test_io_bar_sizes(key: tuple[str, str]) -> None:
    devices = _toml("devices.toml")
    tag, model = key
    candidates = [IO_KEYS.get(key), f"{tag}:{model}", f"{tag}:{model}:*", f"{tag}:*"]
    entry = next(k for k in candidates if k in devices)
    if devices[entry].get("refused"):
        # Intended: libvirt refuses this model, so the planner refuses the guest and never counts its
        # BAR; the checker still counts what QEMU would give it (32 bytes, a transitional virtio device).
        assert key == ("input", "virtio-transitional") and check.IO_BAR_BYTES[key] == 32, entry
        return
    assert check.IO_BAR_BYTES[key] == devices[entry].get("io_bytes", 0), entry
