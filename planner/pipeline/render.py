"""Write a layout back into the domain XML: addresses on devices, new PCI controllers as libvirt
writes them. Everything else in the document is left exactly as it was."""

from __future__ import annotations

from lxml import etree

from planner.facts.errors import InternalError
from planner.facts.facts import PORTS, controller_models
from planner.pipeline.domain import PciAddress, Problem
from planner.pipeline.layout import BusNode, Layout
from planner.pipeline.prepare import Prepared
from planner.xml.xmlio import remove_element, xml_parser


def _address_of(el: etree._Element) -> etree._Element | None:
    """el.find("address"), without ElementPath's cost."""
    return next(el.iterchildren("address"), None)


# what render wrote into an element: its <address>, (bus, slot) and function, as numbers
Written = tuple[etree._Element, tuple[int, int], int]


def _written(addr: etree._Element, a: PciAddress) -> Written:
    return addr, (a.bus, a.slot), a.function


def set_virtio_mmio(el: etree._Element) -> None:
    """<address type='virtio-mmio'/> in place of any address the element had."""
    addr = _address_of(el)
    if addr is None:
        addr = etree.SubElement(el, "address")
    addr.attrib.clear()
    addr.set("type", "virtio-mmio")


def set_pci_address(el: etree._Element, a: PciAddress, multifunction: bool = False) -> etree._Element:
    """Write a complete address (libvirt's form); a given multifunction value is kept. Returns the
    <address> element."""
    addr = _address_of(el)
    items = [("type", "pci"), ("domain", "0x0000"), ("bus", f"0x{a.bus:02x}"), ("slot", f"0x{a.slot:02x}"),
             ("function", f"0x{a.function:x}")]
    if multifunction and a.function == 0:
        items.append(("multifunction", "on"))
    if addr is None:  # laid out by the writer (planner/xml/xmltext.py)
        addr = etree.SubElement(el, "address")
        addr.attrib.update(items)  # in this order
        return addr
    keep_mf = addr.get("multifunction") if addr.get("type") == "pci" else None
    if keep_mf is not None and not (multifunction and a.function == 0):
        items.append(("multifunction", keep_mf))
    if addr.items() == items:
        return addr  # already so, in this order (a planned guest planned again): nothing to rewrite
    addr.attrib.clear()
    addr.attrib.update(items)  # in this order
    return addr


def _attribute(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def _controller_text(node: BusNode, chassis: int | None) -> str:
    """The <controller> of a new controller, as XML text: the new controllers are parsed at once, which
    costs a fraction of making their elements and attributes one call at a time."""
    m = controller_models()[node.model]
    target = ""
    if m.target == "chassis-port":
        port = m.port_number(node.slot, node.function)
        hotplug = ' hotplug="off"' if node.hotplug_off else ""  # it holds a device that must not be ejectable
        target = f'<target chassis="{chassis}" port="0x{port:x}"{hotplug}/>'
    elif m.target == "chassisNr":
        target = f'<target chassisNr="{node.index}"/>'
    assert node.parent is not None and node.parent.index is not None
    return (f'<controller type="pci" index="{node.index}" model="{_attribute(node.model)}">'
            f'<model name="{_attribute(m.qemu)}"/>{target}'
            f'<address type="pci" domain="0x0000" bus="0x{node.parent.index:02x}" slot="0x{node.slot:02x}"'
            f' function="0x{node.function:x}"/></controller>')


def _complete_gap_filler(el: etree._Element, index: int, a: PciAddress, chassis_used: set[int]) -> None:
    """The <model name> and <target> libvirt writes into a controller it adds for a missing index
    (chassis = index unless another port has it, port from the address), before the address, as in
    libvirt's own XML."""
    m = controller_models()[el.get("model")]
    address = el.find("address")
    children = []
    if el.find("model") is None:
        children.append(etree.Element("model", name=m.qemu))
    if el.find("target") is None and m.target == "chassis-port":
        port = m.port_number(a.slot, a.function)
        chassis = index
        while chassis in chassis_used and len(chassis_used) < 256:
            chassis = (chassis + 1) % 256
        chassis_used.add(chassis)
        children.append(etree.Element("target", chassis=str(chassis), port=f"0x{port:x}"))
    elif el.find("target") is None and m.target == "chassisNr":
        children.append(etree.Element("target", chassisNr=str(index)))
    for child in children:
        if address is not None:
            address.addprevious(child)
        else:
            el.append(child)


def _used_chassis(problem: Problem, dropped: set[int]) -> set[int]:
    used = set()
    for b in problem.buses.values():
        if b.index in dropped:
            continue  # --replan removed it: its chassis is free again
        if b.model.name in PORTS and b.element is not None:
            tgt = b.element.find("target")
            value = tgt.get("chassis") if tgt is not None else None
            used.add(int(value, 0) if value is not None else b.index)
    return used


def _mark_multifunction(devices: etree._Element, chipset: set[tuple[int, int]],
                        placed: list[etree._Element], written: dict[etree._Element, Written]) -> None:
    """multifunction='on' on function 0 of every slot with more than one function in use. Only the
    elements really placed count, never an address pciplan does not plan. written: element -> the
    <address> render wrote into it and its numbers (the others are looked up)."""
    by_slot: dict[tuple[int, int], list[tuple[etree._Element, int]]] = {}
    for el in placed:  # the list keeps the proxies alive, so ids are stable
        w = written.get(el)
        if w is not None:
            a, key, function = w
        else:
            a = _address_of(el)
            if a is None or a.get("type") != "pci":
                continue
            key, function = (int(a.get("bus"), 0), int(a.get("slot"), 0)), -1  # read when needed
        if el.getparent() is not devices:
            continue
        by_slot.setdefault(key, []).append((a, function))
    for key, addrs in by_slot.items():
        if len(addrs) + (key in chipset) < 2:
            continue
        for a, function in addrs:
            if function < 0:
                function = int(a.get("function"), 0)
            if function == 0 and a.get("multifunction") is None:
                a.set("multifunction", "on")


def apply_prepared(prep: Prepared, layout: Layout) -> None:
    """The document edits prepare decided, made now that the plan is written: the controllers --replan
    removed before solving leave it; the expander buses added for numa rules join it after the last
    PCI controller, each with a busNr range just large enough for the buses below it, from the top
    down (below the lowest busNr the guest already had)."""
    problem = prep.problem
    devices = problem.tree.getroot().find("devices")
    for el in prep.removed_elements:
        if el.getparent() is devices:
            remove_element(el)
    ours = sorted(b.index for b in problem.buses.values() if b.new_expander)
    for index in ours:
        el = problem.buses[index].element
        assert el is not None
        pci = [c for c in devices.findall("controller") if c.get("type") == "pci"]
        anchor = pci[-1] if pci else devices[-1]
        anchor.addnext(el)
    if not ours:
        return
    size = dict.fromkeys(ours, 0)
    for b in problem.buses.values():
        h = prep.hierarchy_of(b.index)
        if h in size:
            size[h] += b.model.buses
    for node in layout.new_controllers:
        parent = node.parent
        while parent is not None and parent.index not in size:
            parent = parent.parent
        if parent is not None:
            size[parent.index] += 1
    given = [b.bus_nr for b in problem.buses.values() if b.bus_nr is not None]
    upper = min(given, default=255)
    for index in ours:
        upper -= size[index]
        problem.buses[index].element.find("target").set("busNr", str(upper))


def render(problem: Problem, layout: Layout, chipset: set[tuple[int, int]] | None = None) -> None:
    """Apply the layout to problem.tree in place."""
    for index in layout.dropped_controllers:
        el = problem.buses[index].element
        if el is not None and el.getparent() is not None:
            remove_element(el)
    written: dict[etree._Element, Written] = {}  # element -> its <address>, as written here
    for d in problem.devices:
        for m in [d, *d.companions]:
            a = layout.devices.get(id(m.element)) or m.address
            if a is None:
                continue
            written[m.element] = _written(set_pci_address(m.element, a, False), a)
            for mirror in m.mirrors:
                addr = set_pci_address(mirror, a, False)
                if mirror in written:  # what _mark_multifunction reads is what the element holds now
                    written[mirror] = _written(addr, a)
    for index, a in layout.controllers.items():
        el = problem.buses[index].element
        assert el is not None
        written[el] = _written(set_pci_address(el, a, False), a)
    for b in problem.buses.values():
        if b.address is not None and b.element is not None and b.index not in layout.dropped_controllers:
            written[b.element] = _written(set_pci_address(b.element, b.address, False), b.address)
    fillers = [b for b in problem.buses.values() if b.added and not b.new_expander and b.element is not None]
    chassis_used = _used_chassis(problem, set(layout.dropped_controllers) | {b.index for b in fillers})
    for b in sorted(fillers, key=lambda b: b.index):  # as libvirt writes them, chassis unique
        a = layout.controllers.get(b.index) or b.address
        if a is not None:
            _complete_gap_filler(b.element, b.index, a, chassis_used)
    devices = problem.tree.getroot().find("devices")
    if layout.new_controllers:
        _add_controllers(problem, layout, devices, written)
    placed = [m.element for d in problem.devices for m in [d, *d.companions]]  # not the mirrors: a
    placed += [c for c in devices.iterchildren("controller")  # console is no function
               if c.get("type") == "pci"]
    _mark_multifunction(devices, chipset or set(), placed, written)
    for d in problem.devices:
        for m in [d, *d.companions]:
            if not m.mirrors:
                continue
            source = m.element.find("address")
            for mirror in m.mirrors:  # a console carries its serial's address, multifunction included
                target = mirror.find("address")
                if source is not None and target is not None and source.get("multifunction") is not None:
                    target.set("multifunction", source.get("multifunction"))


def _add_controllers(problem: Problem, layout: Layout, devices: etree._Element,
                     written: dict[etree._Element, Written]) -> None:
    pci = [c for c in devices.findall("controller") if c.get("type") == "pci"]
    anchor = max(pci, key=lambda c: int(c.get("index", "0"), 0)) if pci else None
    chassis_used = _used_chassis(problem, set(layout.dropped_controllers))
    texts = []
    for node in layout.new_controllers:
        chassis = None
        if controller_models()[node.model].target == "chassis-port":
            chassis = node.index
            if len(chassis_used) >= 256:
                raise InternalError("no chassis number left for a new PCIe port; please report it")
            while chassis in chassis_used:
                chassis = (chassis + 1) % 256
            chassis_used.add(chassis)
        texts.append(_controller_text(node, chassis))
    made = etree.fromstring(f"<new>{''.join(texts)}</new>", xml_parser())
    for node, el in zip(layout.new_controllers, list(made), strict=True):
        written[el] = el[-1], (node.parent.index, node.slot), node.function  # el[-1]: its <address>
        if anchor is None:
            devices.append(el)
        else:
            anchor.addnext(el)
        anchor = el
