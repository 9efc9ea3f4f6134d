"""The domain reader reads each element's children once (planner.pipeline.domain.first_children), the
controllers by type in one pass, and inserts implicit devices scanning from the end: the same answers
as lxml's find(), a scan per type and a scan of every child, over our guests, the shared cases and
generated ones."""

from __future__ import annotations

import random

from conftest import GUESTS, shared_cases
from fleetgen import typical_guest
from lxml import etree

from planner.pipeline.domain import _controllers, _controllers_by_type, _insert_device, first_children
from planner.xml.xmlio import InputError, parse_domain_bytes


def _roots() -> list[etree._Element]:
    paths = sorted(GUESTS.rglob("*.xml")) + shared_cases("libvirt") + shared_cases("virt-install")
    texts = [p.read_bytes() for p in paths]
    rng = random.Random(21)
    texts += [typical_guest(n, rng).encode() for n in range(30)]
    roots = []
    for data in texts:
        try:
            roots.append(parse_domain_bytes(data).getroot())
        except InputError:
            continue
    return roots


def test_first_children_gives_what_find_gives() -> None:
    repeated = 0  # elements with two children of one tag: where first and last differ
    for root in _roots():
        for el in root.iter():
            if not isinstance(el.tag, str):
                continue
            kids = first_children(el)
            tags = {c.tag for c in el if isinstance(c.tag, str)}
            assert {t for t in kids if isinstance(t, str)} == tags
            for tag in tags:
                assert kids[tag] is el.find(tag), (el.tag, tag)
            repeated += len([c for c in el if isinstance(c.tag, str)]) > len(tags)
    assert repeated > 100


def test_controllers_by_type_is_a_scan_per_type() -> None:
    types = set()
    for root in _roots():
        devices = root.find("devices")
        if devices is None:
            continue
        by_type = _controllers_by_type(devices)
        for ctype in {c.get("type") for c in devices.iterchildren("controller")} | {"pci", "none-such"}:
            assert by_type.get(ctype, []) == _controllers(devices, ctype)
            assert _controllers(devices, ctype) == [c for c in devices.findall("controller")
                                                    if c.get("type") == ctype]
        types |= set(by_type)
    assert {"pci", "usb", "sata", "scsi", "virtio-serial"} <= types


def _insert_by_full_scan(devices: etree._Element, new: etree._Element, after_tags: tuple[str, ...]) -> None:
    """The reference: after the last element child whose tag is in after_tags, else after the last
    element child, else at the end."""
    children = [c for c in devices if isinstance(c.tag, str)]
    anchor = next((c for c in reversed(children) if c.tag in after_tags), children[-1] if children else None)
    if anchor is None:
        devices.append(new)
    else:
        anchor.addnext(new)


def test_insert_device_lands_where_a_full_scan_puts_it() -> None:
    rng = random.Random(5)
    kinds = ["emulator", "disk", "controller", "interface", "serial", "video", "memballoon", "#comment"]
    anchored = fallback = 0
    for _ in range(400):
        layout = [rng.choice(kinds) for _ in range(rng.randint(0, 8))]
        after = tuple(rng.sample(["emulator", "disk", "controller", "video"], rng.randint(0, 3)))
        made = []
        for _ in range(2):
            devices = etree.Element("devices")
            for kind in layout:
                devices.append(etree.Comment("c") if kind == "#comment" else etree.Element(kind))
            made.append(devices)
        _insert_device(made[0], etree.Element("new"), after)
        _insert_by_full_scan(made[1], etree.Element("new"), after)
        assert [str(c.tag) for c in made[0]] == [str(c.tag) for c in made[1]], (layout, after)
        if any(k in after for k in layout):
            anchored += 1
        elif any(k != "#comment" for k in layout):
            fallback += 1
    assert anchored > 100 and fallback > 50
