"""`pciplan show`: tree structure, markers, summary counts, and pictures of small and 200-device guests."""

from __future__ import annotations

import html
import re
import struct
import sys
from pathlib import Path

import pytest
from conftest import disks, domain_xml, nics, tool_missing

from planner.pipeline import show
from planner.pipeline.plan import plan_tree
from planner.pipeline.show import (
    BUS,
    ENDPOINT,
    Node,
    PictureError,
    build_tree,
    render_dot,
    render_text,
    summary,
)
from planner.xml.xmlio import parse_domain_bytes

DOT = show._dot_binary()
needs_dot = pytest.mark.usefixtures("dot_installed")


@pytest.fixture
def dot_installed() -> None:
    if DOT is None:
        tool_missing("Graphviz dot is not installed")

Q35_DEVICES = """
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'>
      <target chassis='1' port='0x10'/>
      <address type='pci' bus='0x00' slot='0x02' function='0x0' multifunction='on'/>
    </controller>
    <controller type='pci' index='2' model='pcie-root-port'>
      <target chassis='2' port='0x11'/>
      <address type='pci' bus='0x00' slot='0x02' function='0x1'/>
    </controller>
    <controller type='pci' index='3' model='pcie-root-port'>
      <target chassis='3' port='0x12' hotplug='off'/>
      <address type='pci' bus='0x00' slot='0x02' function='0x2'/>
    </controller>
    <controller type='pci' index='4' model='pcie-root-port'>
      <address type='pci' bus='0x00' slot='0x02' function='0x3'/>
    </controller>
    <controller type='pci' index='5' model='pcie-to-pci-bridge'>
      <address type='pci' bus='0x04' slot='0x00' function='0x0'/>
    </controller>
    <controller type='pci' index='6' model='pcie-root-port'>
      <address type='pci' bus='0x00' slot='0x02' function='0x4'/>
    </controller>
    <controller type='pci' index='7' model='pcie-root-port'>
      <address type='pci' bus='0x00' slot='0x02' function='0x5'/>
    </controller>
    <controller type='pci' index='8' model='pcie-expander-bus'>
      <target busNr='0xfe'><node>1</node></target>
      <address type='pci' bus='0x00' slot='0x05' function='0x0'/>
    </controller>
    <controller type='sata' index='0'>
      <address type='pci' bus='0x00' slot='0x1f' function='0x2'/>
    </controller>
    <interface type='user'>
      <mac address='52:54:00:12:34:56'/><model type='virtio'/><alias name='ua-net0'/>
      <address type='pci' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:12:34:57'/><model type='e1000e'/>
      <address type='pci' bus='0x03' slot='0x00' function='0x0'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:12:34:58'/><model type='e1000'/>
      <address type='pci' bus='0x05' slot='0x02' function='0x0'/>
    </interface>
    <disk type='file' device='disk'>
      <source file='/img/a.img'/><target dev='vda' bus='virtio'/>
      <address type='pci' bus='0x05' slot='0x01' function='0x0'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/img/b.img'/><target dev='vdb' bus='virtio'/>
      <address type='pci' bus='0x06' slot='0x00' function='0x0' multifunction='on'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/img/c.img'/><target dev='vdc' bus='virtio'/>
      <address type='pci' bus='0x06' slot='0x00' function='0x1'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/img/d.img'/><target dev='vdd' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/img/e.img'/><target dev='vde' bus='virtio'/>
      <address type='pci' bus='0x20' slot='0x00' function='0x0'/>
    </disk>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x06' slot='0x12' function='0x5'/></source>
      <address type='pci' bus='0x00' slot='0x03' function='0x0'/>
    </hostdev>
    <video><model type='virtio'/><address type='pci' bus='0x00' slot='0x01' function='0x0'/></video>
    <memballoon model='virtio'><address type='pci' bus='0x07' slot='0x00' function='0x0'/></memballoon>
    <serial type='pty'><target port='0'/></serial>
    <input type='tablet' bus='usb'/>
"""


def _domain(machine: str, devices: str, acpi: bool = True, arch: str = "x86_64") -> bytes:
    return domain_xml(machine, devices, arch=arch, acpi=acpi, emulator=False)


def _by_address(root: Node) -> dict[str, Node]:
    return {n.address: n for n in root.walk() if n.address}


@pytest.fixture
def q35_root() -> Node:
    return build_tree(parse_domain_bytes(_domain("q35", Q35_DEVICES)))


def test_tree_structure_follows_bus_indexes_and_sorts_by_slot_and_function(q35_root: Node) -> None:
    root = q35_root
    assert root.kind == BUS and root.index == 0 and root.model == "pcie-root" and root.machine == "q35"
    assert [n.address for n in root.children] == [
        "00:01.0", "00:02.0", "00:02.1", "00:02.2", "00:02.3", "00:02.4", "00:02.5", "00:03.0", "00:05.0",
        "00:1f.2",
    ]
    nodes = _by_address(root)
    bridge = nodes["04:00.0"]
    assert bridge.kind == BUS and bridge.index == 5 and bridge.model == "pcie-to-pci-bridge"
    assert [c.address for c in bridge.children] == ["05:01.0", "05:02.0"]  # slot order, not document order
    assert [c.address for c in nodes["00:02.4"].children] == ["06:00.0", "06:00.1"]
    assert nodes["01:00.0"].kind == ENDPOINT


def test_labels_name_each_kind_of_device(q35_root: Node) -> None:
    nodes = _by_address(q35_root)
    assert nodes["00:02.0"].line() == "00:02.0  pcie-root-port #1 (chassis 1, port 0x10) [hot-plug]"
    assert nodes["01:00.0"].line() == "01:00.0  interface virtio 52:54:00:12:34:56 (alias ua-net0) [hot-plug]"
    assert nodes["05:01.0"].label == "disk vda virtio"
    assert nodes["00:1f.2"].label == "controller sata"
    assert nodes["00:03.0"].label == "hostdev 0000:06:12.5"
    assert nodes["00:01.0"].label == "video virtio"
    assert q35_root.line() == "bus 00  pcie-root (q35)"


def test_hotplug_markers(q35_root: Node) -> None:
    nodes = _by_address(q35_root)
    assert nodes["01:00.0"].hotplug  # alone on a root port
    assert not nodes["03:00.0"].hotplug  # root port with hotplug='off'
    assert "hotplug off" in nodes["00:02.2"].label and "hot-plug" not in nodes["00:02.2"].markers()
    assert nodes["05:01.0"].hotplug and nodes["05:02.0"].hotplug  # pcie-to-pci-bridge slots (SHPC)
    assert not nodes["06:00.0"].hotplug and not nodes["06:00.1"].hotplug  # multifunction: not alone
    assert not nodes["07:00.0"].hotplug  # a memballoon is never hot-plugged
    assert not nodes["00:03.0"].hotplug and not nodes["00:1f.2"].hotplug  # pcie-root is not hot-pluggable
    assert nodes["04:00.0"].markers() == ["hot-plug, 29 free slots", "I/O window"]


def test_spare_port_numa_node_and_bus_nr(q35_root: Node) -> None:
    nodes = _by_address(q35_root)
    assert nodes["00:02.1"].spare
    expected = "00:02.1  pcie-root-port #2 (chassis 2, port 0x11) [empty: spare hot-plug port]"
    assert nodes["00:02.1"].line() == expected
    pxb = nodes["00:05.0"]
    assert (pxb.numa_node, pxb.bus_nr) == (1, 254)
    assert pxb.label == "pcie-expander-bus #8 (busNr 254, NUMA node 1)"
    assert not pxb.spare and "empty" not in " ".join(pxb.markers())  # a pxb is no hot-plug port


def test_unaddressed_and_missing_bus_come_last(q35_root: Node) -> None:
    assert [(n.label, n.note) for n in q35_root.unaddressed] == [
        ("disk vdd virtio", ""),
        ("disk vde virtio", "bus 0x20 missing"),
    ]
    text = render_text(q35_root)
    assert text.index("unaddressed (2)") > text.index("00:1f.2  controller sata")
    assert "serial" not in text and "input" not in text  # devices that do not use PCI stay out


def test_summary_counts(q35_root: Node) -> None:
    counts = summary(q35_root)
    assert counts["machine"] == "q35"
    assert counts["controllers"] == {
        "pcie-expander-bus": 1, "pcie-root": 1, "pcie-root-port": 6, "pcie-to-pci-bridge": 1,
    }
    assert counts["endpoints"] == 10
    assert counts["hotplug_endpoints"] == 3  # net0 and the two devices on the pcie-to-pci-bridge
    assert counts["spare_hotplug_ports"] == 1
    assert counts["spare_hotplug_slots"] == 29
    assert counts["bus_numbers_used"] == 9
    assert counts["bus_indexes"] == list(range(9))
    # the pcie-to-pci-bridge, and the hotplug='off' root port holding an e1000e (an I/O BAR)
    assert counts["io_window_users"] == 2 and counts["io_space_bytes"] == 0xF000 - 1  # SeaBIOS, q35, ACPI
    assert counts["numa_nodes"] == [1]
    assert counts["unaddressed"] == 2


def test_pci_root_hotplug_needs_acpi_and_not_hotplug_off() -> None:
    devices = """
    <controller type='pci' index='0' model='pci-root'{target}/>
    <controller type='pci' index='1' model='pci-bridge'>
      <target chassisNr='1'/><address type='pci' bus='0x00' slot='0x03' function='0x0'/>
    </controller>
    <controller type='pci' index='2' model='pci-expander-bus'>
      <target busNr='200'><node>0</node></target><address type='pci' bus='0x00' slot='0x04' function='0x0'/>
    </controller>
    <interface type='user'><mac address='52:54:00:00:00:01'/><model type='virtio'/>
      <address type='pci' bus='0x00' slot='0x02' function='0x0'/></interface>
    <interface type='user'><mac address='52:54:00:00:00:02'/><model type='virtio'/>
      <address type='pci' bus='0x02' slot='0x01' function='0x0'/></interface>
    """
    with_acpi = build_tree(parse_domain_bytes(_domain("pc", devices.format(target=""))))
    nodes = _by_address(with_acpi)
    assert with_acpi.hotplug and nodes["00:02.0"].hotplug
    assert not nodes["02:01.0"].hotplug  # a pxb's slots are not hot-pluggable
    # pci-root slots 1 (PIIX3), 2, 3 and 4 are taken: 27 free; the pci-bridge has 31
    assert with_acpi.free_slots == 27 and nodes["00:03.0"].free_slots == 31
    assert nodes["00:03.0"].label == "pci-bridge #1 (chassisNr 1)"
    counts = summary(with_acpi)
    assert counts["bus_numbers_used"] == 4  # the pxb owns two
    assert counts["io_window_users"] == 2 and counts["io_space_bytes"] == 0x9000 - 1  # SeaBIOS, pc

    no_acpi = build_tree(parse_domain_bytes(_domain("pc", devices.format(target=""), acpi=False)))
    assert not no_acpi.hotplug and not _by_address(no_acpi)["00:02.0"].hotplug
    off = devices.format(target="").replace("model='pci-root'/>", "model='pci-root'><target hotplug='off'/>"
                                            "</controller>")
    hotplug_off = build_tree(parse_domain_bytes(_domain("pc", off)))
    assert not hotplug_off.hotplug and hotplug_off.free_slots == 0


def test_aarch64_io_space_is_aavmfs_and_riscv64_has_none() -> None:
    devices = """<controller type='pci' index='0' model='pcie-root'/>
    <interface type='user'><model type='virtio'/><address type='virtio-mmio'/></interface>"""
    riscv = summary(build_tree(parse_domain_bytes(_domain("virt", devices, arch="riscv64"))))
    assert riscv["io_window_users"] is None and riscv["firmware"] == "none"
    root = build_tree(parse_domain_bytes(_domain("virt", devices, arch="aarch64")))
    counts = summary(root)
    assert counts["firmware"] == "aavmf" and counts["io_window_users"] == 0
    assert counts["io_space_bytes"] == 0x10000 and counts["firmware_max_io_windows"] == 16
    assert [(n.label, n.note) for n in root.unaddressed] == [("interface virtio", "virtio-mmio address")]


def test_controller_loop_does_not_hang() -> None:
    devices = """<controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pci-bridge'>
      <address type='pci' bus='0x02' slot='0x01' function='0x0'/></controller>
    <controller type='pci' index='2' model='pci-bridge'>
      <address type='pci' bus='0x01' slot='0x01' function='0x0'/></controller>"""
    root = build_tree(parse_domain_bytes(_domain("q35", devices)))
    assert root.children == []
    assert {n.index for top in root.unaddressed for n in top.walk()} == {1, 2}


def test_text_has_colour_only_when_asked(q35_root: Node) -> None:
    plain = render_text(q35_root, width=100)
    assert "\x1b[" not in plain
    assert "00:02.0  pcie-root-port #1 (chassis 1, port 0x10) [hot-plug]" in plain
    assert "[empty: spare hot-plug port]" in plain  # rich must not eat brackets as markup
    assert "\x1b[" in render_text(q35_root, color=True)


def _dot_nodes(source: str) -> list[str]:
    return re.findall(r"^\s+(n\d+|unaddressed) \[label=", source, re.M)


def _addressed_nics(count: int) -> str:
    return "<controller type='pci' index='0' model='pci-root'/>\n" + "\n".join(
        f"<interface type='user'><model type='virtio'/>"
        f"<address type='pci' bus='0' slot='{3 + i}' function='0'/></interface>" for i in range(count))


def test_dot_groups_many_entries_of_one_bus_into_one_table() -> None:
    source = render_dot(build_tree(parse_domain_bytes(_domain("pc", _addressed_nics(20)))))
    assert "rankdir=LR" in source
    assert len(_dot_nodes(source)) == 1 and "->" not in source  # all 20 in the root's table
    source = render_dot(build_tree(parse_domain_bytes(_domain("pc", _addressed_nics(3)))))
    assert len(_dot_nodes(source)) == 4 and source.count("->") == 3  # the root and one box per device


def test_dot_escapes_labels() -> None:
    devices = """<controller type='pci' index='0' model='pcie-root'/>
    <interface type='user'><model type='virtio'/><alias name='ua-a&amp;b&lt;c'/>
      <address type='pci' bus='0' slot='3' function='0'/></interface>"""
    source = render_dot(build_tree(parse_domain_bytes(_domain("q35", devices))))
    assert "ua-a&amp;b&lt;c" in source and "a&b<c" not in source


@needs_dot
def test_dot_source_is_accepted_by_graphviz(q35_root: Node, tmp_path: Path) -> None:
    show.write_picture(q35_root, str(tmp_path / "small.svg"))
    svg = html.unescape((tmp_path / "small.svg").read_text())  # dot writes "-" as &#45;
    assert "<svg" in svg and "pcie-root-port #1" in svg and "unaddressed (2)" in svg


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def planned_200() -> Node:
    devices = "\n".join([nics(100), nics(50, "e1000e", 500), disks(50)])
    tree = parse_domain_bytes(_domain("q35", devices))
    plan_tree(tree)
    return build_tree(tree)


def test_200_device_guest_text(planned_200: Node) -> None:
    counts = summary(planned_200)
    assert counts["endpoints"] >= 200 and counts["unaddressed"] == 0
    text = render_text(planned_200, width=120)
    lines = text.splitlines()
    assert len(lines) == sum(1 for _ in planned_200.walk())
    assert all(len(line) <= 120 for line in lines)


@needs_dot
def test_200_device_guest_pictures(planned_200: Node, tmp_path: Path) -> None:
    svg, png = tmp_path / "guest.svg", tmp_path / "guest.png"
    show.write_picture(planned_200, str(svg))
    show.write_picture(planned_200, str(png))
    assert svg.stat().st_size > 50_000 and "52:54:00:00:00:63" in svg.read_text()
    assert png.stat().st_size > 50_000
    width, height = _png_size(png)
    # legible text needs some size; "not one 10 000-px row" means bounded and roughly screen-shaped
    assert 800 <= width <= 5000 and 500 <= height <= 5000
    assert 0.3 <= width / height <= 4


def test_matplotlib_fallback(planned_200: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        tool_missing("matplotlib is not installed")
    monkeypatch.setattr(show, "_dot_binary", lambda: None)
    png, svg = tmp_path / "fallback.png", tmp_path / "fallback.svg"
    show.write_picture(planned_200, str(png))
    show.write_picture(planned_200, str(svg))
    width, height = _png_size(png)
    assert 800 <= width <= 6000 and 500 <= height <= 6000
    assert "<svg" in svg.read_text()


def test_picture_errors(q35_root: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PictureError, match=r"\.svg or \.png"):
        show.write_picture(q35_root, str(tmp_path / "tree.jpg"))
    monkeypatch.setattr(show, "_dot_binary", lambda: None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(PictureError, match="neither Graphviz"):
        show.write_picture(q35_root, str(tmp_path / "tree.png"))
    assert not (tmp_path / "tree.png").exists()


def test_the_loop_search_is_skipped_only_where_no_loop_can_be(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_tree looks for controller loops only where a controller plugs into a bus whose index is
    not below its own (show._may_loop): the same tree as with the search always made, over the corpus
    and generated guests, given and planned, and over copies where a controller plugs into its own
    index, a higher one or a lower one (loops, forward references, ordinary chains)."""
    import copy
    import random

    from fleetgen import typical_guest
    from lxml import etree
    from recorded import corpus

    from planner.facts.errors import Infeasible
    from planner.xml.xmlio import InputError

    def dump(node: Node) -> dict:
        return {k: [dump(c) for c in v] if k in ("children", "unaddressed") else v
                for k, v in vars(node).items()}

    rng = random.Random(5)
    guests = [(name, data) for i, (name, data) in enumerate(corpus()) if i % 3 == 0]
    guests += [(f"typical/{n}", typical_guest(n, rng).encode()) for n in range(60)]
    documents = []
    for name, data in guests:
        try:
            given = parse_domain_bytes(data, name)
        except InputError:
            continue
        documents.append(given)
        planned = copy.deepcopy(given)
        try:
            plan_tree(planned)
        except (InputError, Infeasible):
            continue
        documents.append(planned)
        controllers = [c for c in planned.getroot().iterfind("devices/controller[@type='pci']")
                       if c.get("index") not in ("0", None) and c.find("address") is not None]
        for c in rng.sample(controllers, min(3, len(controllers))):
            moved = copy.deepcopy(planned)
            twin = moved.getroot().find(f"devices/controller[@type='pci'][@index='{c.get('index')}']")
            others = [int(x.get("index")) for x in controllers]
            twin.find("address").set("bus", str(rng.choice([int(c.get("index"))] + others)))
            documents.append(moved)
    answers: list[bool] = []
    may_loop = show._may_loop

    def recorded(placed: list) -> bool:
        answers.append(may_loop(placed))
        return answers[-1]

    skipped = loops = 0
    for tree in documents:
        answers.clear()
        with monkeypatch.context() as m:
            m.setattr(show, "_may_loop", recorded)
            fast = build_tree(tree)
        with monkeypatch.context() as m:
            m.setattr(show, "_may_loop", lambda placed: True)
            full = build_tree(tree)
        assert dump(fast) == dump(full), etree.tostring(tree)[:300]
        skipped += answers == [False]
        loops += any(n.note == "plugs into its own subtree" for n in full.unaddressed)
    assert skipped > 300 and loops > 20 and len(documents) - skipped > 2 * loops, (skipped, loops)
