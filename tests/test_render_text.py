"""render writes the new controllers as XML text and parses them at once (render._controller_text):
the elements must be those the element API made before (the reference below, render's former code):
same tags, attributes in the same order, no text and no tails. Planned over generated guests of every
machine, with and without --no-hotplug, so that every kind of <target> is met."""

from __future__ import annotations

import random
from collections import Counter

from fleetgen import typical_guest
from lxml import etree

from planner.facts.errors import Infeasible
from planner.facts.facts import controller_models
from planner.facts.options import PlanOptions
from planner.pipeline import render
from planner.pipeline.layout import BusNode
from planner.pipeline.plan import plan_tree
from planner.xml.xmlio import parse_domain_bytes


def _reference(node, chassis: int | None) -> etree._Element:
    """The controller as render made it with lxml's element API."""
    m = controller_models()[node.model]
    el = etree.Element("controller", type="pci", index=str(node.index), model=node.model)
    etree.SubElement(el, "model", name=m.qemu)
    if m.target == "chassis-port":
        port = m.port_number(node.slot, node.function)
        target = etree.SubElement(el, "target", chassis=str(chassis), port=f"0x{port:x}")
        if node.hotplug_off:
            target.set("hotplug", "off")
    elif m.target == "chassisNr":
        etree.SubElement(el, "target", chassisNr=str(node.index))
    etree.SubElement(el, "address", type="pci", domain="0x0000", bus=f"0x{node.parent.index:02x}",
                     slot=f"0x{node.slot:02x}", function=f"0x{node.function:x}")
    return el


def _shape(el: etree._Element) -> tuple:
    return el.tag, el.items(), el.text, el.tail, [_shape(k) for k in el]


def test_controllers_from_text_are_those_of_the_element_api(monkeypatch):
    seen = []
    real = render._controller_text

    def spy(node, chassis):
        text = real(node, chassis)
        seen.append((node, chassis, text))
        return text

    monkeypatch.setattr(render, "_controller_text", spy)
    rng = random.Random(11)
    cold = PlanOptions(no_hotplug_kinds=frozenset({"interface"}))
    for n in range(60):
        xml = typical_guest(n, rng).encode()
        for options in (PlanOptions(), cold):
            try:
                plan_tree(parse_domain_bytes(xml), options)
            except Infeasible:  # a guest with more hot-pluggable devices than ports can be
                continue
    met: Counter = Counter()
    for node, chassis, text in seen:
        assert _shape(etree.fromstring(text)) == _shape(_reference(node, chassis)), text
        met[controller_models()[node.model].target, node.hotplug_off] += 1
    # planning meets root ports and bridges (pcie-to-pci-bridge has no <target>)
    assert met["chassis-port", False] > 50 and met["", False] > 5, met


def test_every_controller_model_from_text_is_that_of_the_element_api():
    """Every model pciplan can add, on every kind of parent, with and without hotplug='off' (which planning
    alone rarely gives a new port)."""
    met: Counter = Counter()
    for name, model in controller_models().items():
        for parent_index, slot, function, off in ((0, 1, 0, False), (3, 0x1f, 7, True), (0xfe, 2, 3, True)):
            node = BusNode(name, 9, parent=BusNode("pcie-root", parent_index), slot=slot, function=function,
                           hotplug_off=off)
            for chassis in (None, 0, 255) if model.target != "chassis-port" else (0, 17, 255):
                text = render._controller_text(node, chassis)
                assert _shape(etree.fromstring(text)) == _shape(_reference(node, chassis)), text
                met[model.target, off] += 1
    assert met["chassis-port", True] and met["chassisNr", True] and met["", False], met
