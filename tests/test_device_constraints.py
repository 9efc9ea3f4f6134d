"""Per-device-kind constraints (--hotplug, --no-hotplug, --bus): each fails if ignored, in our model
and on the real stack."""

from __future__ import annotations

import pytest
from conftest import controllers, disks, nics
from lxml import etree
from planning import errors, plan_bytes, text
from realstack import real_stack_fixture  # noqa: F401

from planner.facts.errors import Infeasible

BARE = "    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n"


def where(tree: etree._ElementTree, el: etree._Element) -> tuple[str, int, int]:
    """(model of the bus, slot, function) of a device."""
    a = el.find("address")
    bus, slot, fn = int(a.get("bus"), 0), int(a.get("slot"), 0), int(a.get("function"), 0)
    model = next(c.get("model") for c in controllers(tree) if int(c.get("index")) == bus)
    return model, slot, fn


def shared_slot(tree: etree._ElementTree, el: etree._Element) -> bool:
    a = el.find("address")
    key = (a.get("bus"), a.get("slot"))
    return sum(1 for x in tree.getroot().iterfind("devices/*/address[@type='pci']")
               if (x.get("bus"), x.get("slot")) == key) > 1


def port_of(tree: etree._ElementTree, el: etree._Element) -> etree._Element:
    bus = int(el.find("address").get("bus"), 0)
    return next(c for c in controllers(tree) if int(c.get("index")) == bus)


def test_hotplug_yes_puts_every_device_alone_in_a_hot_pluggable_slot(guest_xml) -> None:
    # 40 disks: without the rule, packing some would save controllers? no - but on pc with 60 disks the
    # default packs beyond the I/O budget; with --hotplug disk each must be alone on a hot-pluggable bus
    tree, s = plan_bytes(guest_xml("q35", BARE + disks(40)), hotplug_kinds=frozenset({"disk"}))
    for d in tree.getroot().iterfind("devices/disk"):
        model, slot, fn = where(tree, d)
        assert model in ("pcie-root-port", "pcie-switch-downstream-port", "pcie-to-pci-bridge")
        assert not shared_slot(tree, d)
    assert errors(tree) == []


def test_hotplug_yes_beyond_the_limit_says_how_many_fit(guest_xml) -> None:
    with pytest.raises(Infeasible) as exc:
        plan_bytes(guest_xml("q35", BARE + nics(300)), hotplug_kinds=frozenset({"interface"}), bus="pcie")
    text_ = " ".join(exc.value.reasons)
    assert "hotplug=yes" in text_ and "at most" in text_ and "of the 300 devices" in text_


def test_hotplug_yes_for_a_kind_libvirt_cannot_hot_plug(guest_xml) -> None:
    with pytest.raises(Infeasible) as exc:
        plan_bytes(guest_xml("q35", "<video><model type='virtio'/></video>"),
                   hotplug_kinds=frozenset({"video"}))
    assert "cannot hot-plug" in exc.value.reasons[0]


def test_hotplug_no_never_ejectable(guest_xml) -> None:
    tree, s = plan_bytes(guest_xml("q35", BARE + nics(30) + "\n" + disks(4)),
                         no_hotplug_kinds=frozenset({"interface"}))
    assert errors(tree) == []
    for nic in tree.getroot().iterfind("devices/interface"):
        model, slot, fn = where(tree, nic)
        if model == "pcie-root":
            continue  # integrated: pcie-root is not hot-pluggable
        assert model == "pcie-root-port"
        target = port_of(tree, nic).find("target")
        assert target is not None and target.get("hotplug") == "off"
    # disks still prefer hot-plug: each on its own port, hot-plug on
    for d in tree.getroot().iterfind("devices/disk"):
        assert port_of(tree, d).find("target").get("hotplug") is None


def test_hotplug_no_on_pc_with_acpi_is_explained(guest_xml) -> None:
    with pytest.raises(Infeasible) as exc:
        plan_bytes(guest_xml("pc", nics(2)), no_hotplug_kinds=frozenset({"interface"}))
    assert any("interface" in r for r in exc.value.reasons)


def test_bus_pci_makes_virtio_conventional(guest_xml) -> None:
    tree, s = plan_bytes(guest_xml("q35", BARE + nics(4)), bus="pci")
    for nic in tree.getroot().iterfind("devices/interface"):
        assert where(tree, nic)[0] == "pcie-to-pci-bridge"
    assert errors(tree) == []


def test_bus_pcie_puts_conventional_devices_on_pcie(guest_xml) -> None:
    tree, s = plan_bytes(guest_xml("q35", BARE + nics(3, "e1000")), bus="pcie")
    assert not controllers(tree, "pcie-to-pci-bridge")
    for nic in tree.getroot().iterfind("devices/interface"):
        assert where(tree, nic)[0] in ("pcie-root-port", "pcie-root")
    assert errors(tree) == []


def test_bus_pcie_on_pc_is_impossible(guest_xml) -> None:
    with pytest.raises(Infeasible):
        plan_bytes(guest_xml("pc", nics(1)), bus="pcie")


@pytest.mark.realstack
@pytest.mark.parametrize(("machine", "options"), [
    ("q35", {"no_hotplug_kinds": frozenset({"interface"})}),
    ("q35", {"hotplug_kinds": frozenset({"disk", "interface"})}),
    ("q35", {"bus": "pci"}),
    ("q35", {"bus": "pcie"}),
    ("virt", {"no_hotplug_kinds": frozenset({"disk"})}),
    ("pc", {"hotplug_kinds": frozenset({"interface"})}),
])
def test_constrained_plans_on_the_real_stack(real_stack, guest_xml, machine, options) -> None:
    from test_realstack_plans import _boot, _fixpoint

    models = ["virtio", "e1000"] if machine != "virt" else ["virtio"]
    devices = "\n".join(nics(1, models[i % len(models)], start=i) for i in range(12)) + "\n" + disks(6)
    tree, _ = plan_bytes(guest_xml(machine, devices), **options)
    xml = text(tree).decode()
    _fixpoint(real_stack, xml)
    _boot(xml)


# ----------------------------------------------------------------- where users write them

META = ("<metadata><pciplan:constraints xmlns:pciplan='urn:pciplan:constraints:1'>{}"
        "</pciplan:constraints></metadata>")


def test_metadata_rules_match_by_mac_and_dev(guest_xml) -> None:
    rules = ("<pciplan:rule mac='52:54:00:00:00:01' hotplug='no'/>"
             "<pciplan:rule dev='vdb' bus='pci'/>")
    data = guest_xml("q35", BARE + nics(3) + "\n" + disks(3), extra=META.format(rules))
    tree, s = plan_bytes(data)
    nic1 = tree.getroot().findall("devices/interface")[1]
    assert where(tree, nic1)[0] == "pcie-root" or port_of(tree, nic1).find("target").get("hotplug") == "off"
    vdb = tree.getroot().findall("devices/disk")[1]
    assert where(tree, vdb)[0] == "pcie-to-pci-bridge"
    assert tree.getroot().find("metadata") is not None  # kept, untouched


def nic_buses(tree: etree._ElementTree) -> set[str]:
    return {where(tree, n)[0] for n in tree.getroot().iterfind("devices/interface")}


def test_policy_file_and_precedence(guest_xml, tmp_path) -> None:
    policy = tmp_path / "fleet.toml"
    policy.write_text('spare-pcie = 3\n[[rule]]\nkind = "interface"\nbus = "pci"\n')
    data = guest_xml("q35", BARE + nics(2))
    tree, s = plan_bytes(data, policy=str(policy))
    assert nic_buses(tree) == {"pcie-to-pci-bridge"}
    # metadata beats the policy file, the command line beats both
    meta = META.format("<pciplan:rule kind='interface' bus='pcie'/>")
    tree, s = plan_bytes(guest_xml("q35", BARE + nics(2), extra=meta), policy=str(policy))
    assert nic_buses(tree) == {"pcie-root-port"}
    tree, s = plan_bytes(guest_xml("q35", BARE + nics(2), extra=meta), policy=str(policy), bus="pci")
    assert nic_buses(tree) == {"pcie-to-pci-bridge"}
    spares = [c for c in controllers(tree, "pcie-root-port")
              if not any(int(n.find("address").get("bus"), 0) == int(c.get("index"))
                         for n in tree.getroot().iterfind("devices/*[address]"))
              and not any(int(x.find("address").get("bus"), 0) == int(c.get("index"))
                          for x in controllers(tree) if x.find("address") is not None)]
    assert len(spares) == 3  # spare-pcie from the policy file


def test_rule_errors_and_warnings(guest_xml, tmp_path) -> None:
    from planner.xml.xmlio import InputError

    for bad, word in (("<pciplan:rule kind='interface' hotplug='maybe'/>", "hotplug='maybe'"),
                      ("<pciplan:rule colour='red' hotplug='no'/>", "unknown attribute 'colour'"),
                      ("<pciplan:rule kind='nic' hotplug='no'/>", "unknown device kind 'nic'"),
                      ("<pciplan:rule kind='interface'/>", "sets nothing"),
                      ("<pciplan:rule kind='interface' numa='1'/>", "has 0 cell(s)"),
                      ("<pciplan:rule kind='interface' connection='usb-hub'/>",
                       "connection='usb-hub' is not one of")):
        with pytest.raises(InputError) as exc:
            plan_bytes(guest_xml("q35", nics(1), extra=META.format(bad)))
        assert word in str(exc.value)
    unmatched = META.format("<pciplan:rule alias='ua-x' hotplug='no'/>")
    tree, s = plan_bytes(guest_xml("q35", nics(1), extra=unmatched))
    assert any("matches no device" in n for n in s.notes)


@pytest.mark.realstack
def test_metadata_travels_through_libvirt(real_stack, guest_xml) -> None:
    meta = META.format("<pciplan:rule kind='disk' hotplug='no'/>")
    tree, _ = plan_bytes(guest_xml("q35", nics(2) + "\n" + disks(3), extra=meta))
    result = real_stack.define(text(tree).decode())
    assert result.ok and "urn:pciplan:constraints:1" in result.xml
    again, s = plan_bytes(result.xml.encode())  # libvirt's own output plans to the same layout
    assert s.controllers_added == {}


# ----------------------------------------------------------------- numa

NUMA_CPU = ("<cpu><numa><cell id='0' cpus='0' memory='524288' unit='KiB'/>"
            "<cell id='1' cpus='1' memory='524288' unit='KiB'/></numa></cpu>")


NIC_ON_NODE_1 = "<pciplan:rule kind='interface' numa='1'/>"


def numa_guest(guest_xml, machine: str, devices: str, rule: str = NIC_ON_NODE_1) -> bytes:
    return guest_xml(machine, devices, extra=NUMA_CPU + META.format(rule))


def expander_of(tree: etree._ElementTree, el: etree._Element) -> etree._Element | None:
    """The expander bus above a device, if any."""
    index = int(el.find("address").get("bus"), 0)
    by_index = {int(c.get("index")): c for c in controllers(tree)}
    while index:
        c = by_index[index]
        if c.get("model") in ("pcie-expander-bus", "pci-expander-bus"):
            return c
        index = int(c.find("address").get("bus"), 0)
    return None


@pytest.mark.parametrize(("machine", "pxb"), [("q35", "pcie-expander-bus"), ("pc", "pci-expander-bus"),
                                              ("virt", "pcie-expander-bus")])
def test_numa_rule_puts_devices_below_an_expander_bound_to_the_node(guest_xml, machine, pxb) -> None:
    tree, s = plan_bytes(numa_guest(guest_xml, machine, nics(3) + "\n" + disks(2)))
    assert errors(tree) == []
    assert s.controllers_added.get(pxb) == 1
    for nic in tree.getroot().iterfind("devices/interface"):
        exp = expander_of(tree, nic)
        assert exp is not None and exp.get("model") == pxb
        assert exp.find("target/node").text == "1" and exp.find("target").get("busNr")
    for d in tree.getroot().iterfind("devices/disk"):
        assert expander_of(tree, d) is None  # no rule: the root hierarchy


def test_numa_rule_reuses_the_guests_own_expander(guest_xml) -> None:
    pxb = ("<controller type='pci' index='0' model='pcie-root'/><controller type='pci' index='1' "
           "model='pcie-expander-bus'><target busNr='200'><node>1</node></target></controller>")
    tree, s = plan_bytes(numa_guest(guest_xml, "q35", pxb + nics(2)))
    assert "pcie-expander-bus" not in s.controllers_added
    assert all(expander_of(tree, n).get("index") == "1" for n in tree.getroot().iterfind("devices/interface"))


def test_numa_rule_on_riscv_is_impossible(guest_xml) -> None:
    with pytest.raises(Infeasible) as exc:
        plan_bytes(numa_guest(guest_xml, "virt", nics(1)).replace(b"aarch64", b"riscv64"))
    assert "expander" in exc.value.reasons[0]


@pytest.mark.realstack
@pytest.mark.parametrize("machine", ["q35", "pc", "virt"])
def test_numa_plans_on_the_real_stack(real_stack, guest_xml, machine) -> None:
    from test_realstack_plans import _boot, _fixpoint

    tree, _ = plan_bytes(numa_guest(guest_xml, machine, nics(3) + "\n" + disks(2)))
    xml = text(tree).decode()
    _fixpoint(real_stack, xml)
    _boot(xml)


# ----------------------------------------------------------------- bus=mmio (the 2016 aarch64 thread)

def test_aarch64_guest_gets_pcie_by_default_and_mmio_when_asked(guest_xml) -> None:
    """libvirt's 2016 thread: a virt guest with a few root ports and virtio devices gets PCIe
    addresses; the same guest with bus=mmio gets virtio-mmio."""
    ports = ("<controller type='pci' index='0' model='pcie-root'/>"
             + "".join("<controller type='pci' model='pcie-root-port'/>" for _ in range(3)))
    devices = ports + nics(2) + "\n" + disks(1)
    tree, _ = plan_bytes(guest_xml("virt", devices))
    assert {a.get("type") for a in tree.getroot().iterfind("devices/*/address")} == {"pci"}
    tree, _ = plan_bytes(guest_xml("virt", devices), bus="mmio")
    for el in [*tree.getroot().iterfind("devices/interface"), *tree.getroot().iterfind("devices/disk")]:
        assert el.find("address").get("type") == "virtio-mmio"
    assert errors(tree) == []


def test_mmio_transports_are_counted(guest_xml) -> None:
    with pytest.raises(Infeasible) as exc:
        plan_bytes(guest_xml("virt", nics(33)), bus="mmio")
    assert "32 virtio-mmio transports" in exc.value.reasons[0]
    tree, _ = plan_bytes(guest_xml("virt", nics(32)), bus="mmio")
    assert errors(tree) == []


def test_mmio_only_on_virt_and_only_for_virtio(guest_xml) -> None:
    from planner.xml.xmlio import InputError

    with pytest.raises(InputError):
        plan_bytes(guest_xml("q35", nics(1)), bus="mmio")
    rule = META.format("<pciplan:rule kind='interface' bus='mmio'/>")
    with pytest.raises(InputError) as exc:
        plan_bytes(guest_xml("virt", nics(1, "e1000"), extra=rule))
    assert "virtio devices only" in str(exc.value)


@pytest.mark.realstack
def test_mmio_guest_on_the_real_stack(real_stack, guest_xml) -> None:
    from test_realstack_plans import _boot, _fixpoint

    tree, _ = plan_bytes(guest_xml("virt", nics(3) + "\n" + disks(2)), bus="mmio")
    xml = text(tree).decode()
    _fixpoint(real_stack, xml)
    _boot(xml)


# ----------------------------------------------------------------- connection, host-numa

def test_connection_to_a_downstream_port_adds_a_switch(guest_xml) -> None:
    rule = META.format("<pciplan:rule kind='interface' connection='pcie-switch-downstream-port'/>")
    tree, s = plan_bytes(guest_xml("q35", BARE + nics(3) + "\n" + disks(1), extra=rule))
    assert s.controllers_added.get("pcie-switch-upstream-port") == 1
    for nic in tree.getroot().iterfind("devices/interface"):
        assert where(tree, nic)[0] == "pcie-switch-downstream-port"
    disk = tree.getroot().find("devices/disk")
    assert where(tree, disk)[0] in ("pcie-root-port", "pcie-switch-downstream-port")
    assert errors(tree) == []


def test_connection_uses_a_free_one_first(guest_xml) -> None:
    switch = ("<controller type='pci' index='0' model='pcie-root'/>"
              "<controller type='pci' index='1' model='pcie-root-port'/>"
              "<controller type='pci' index='2' model='pcie-switch-upstream-port'/>"
              "<controller type='pci' index='3' model='pcie-switch-downstream-port'/>")
    rule = META.format("<pciplan:rule kind='interface' connection='pcie-switch-downstream-port'/>")
    tree, s = plan_bytes(guest_xml("q35", BARE + switch + nics(1), extra=rule))
    assert s.controllers_added == {"pcie-root-port": 1}  # the default empty spare, nothing for the NIC
    nic = tree.getroot().find("devices/interface")
    assert nic.find("address").get("bus") == "0x03"


def _sysfs(tmp_path, host: str, node: int):
    d = tmp_path / "bus" / "pci" / "devices" / host
    d.mkdir(parents=True)
    (d / "numa_node").write_text(f"{node}\n")


HOSTDEV = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x06' "
           "slot='0x12' function='0x5'/></source></hostdev>")
NUMATUNE = ("<numatune><memnode cellid='0' mode='strict' nodeset='0'/>"
            "<memnode cellid='1' mode='strict' nodeset='1-2'/></numatune>")


def test_host_numa_auto_follows_the_host_device(guest_xml, tmp_path, monkeypatch) -> None:
    _sysfs(tmp_path, "0000:06:12.5", 2)
    monkeypatch.setenv("PCIPLAN_SYSFS_ROOT", str(tmp_path))
    tree, s = plan_bytes(guest_xml("q35", HOSTDEV + nics(1), extra=NUMA_CPU + NUMATUNE), host_numa=True)
    exp = expander_of(tree, tree.getroot().find("devices/hostdev"))
    assert exp is not None and exp.find("target/node").text == "1"  # host node 2 is in cell 1's nodeset
    assert expander_of(tree, tree.getroot().find("devices/interface")) is None


def test_host_numa_without_a_matching_cell(guest_xml, tmp_path, monkeypatch) -> None:
    from planner.xml.xmlio import InputError

    _sysfs(tmp_path, "0000:06:12.5", 5)
    monkeypatch.setenv("PCIPLAN_SYSFS_ROOT", str(tmp_path))
    with pytest.raises(InputError) as exc:
        plan_bytes(guest_xml("q35", HOSTDEV, extra=NUMA_CPU + NUMATUNE), host_numa=True)
    assert "host node 5" in str(exc.value) and "no guest cell" in str(exc.value)


@pytest.mark.realstack
def test_connection_plan_on_the_real_stack(real_stack, guest_xml) -> None:
    from test_realstack_plans import _boot, _fixpoint

    rule = META.format("<pciplan:rule kind='interface' connection='pcie-switch-downstream-port'/>")
    tree, _ = plan_bytes(guest_xml("q35", nics(3) + "\n" + disks(1), extra=rule))
    xml = text(tree).decode()
    _fixpoint(real_stack, xml)
    _boot(xml)
