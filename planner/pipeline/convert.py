"""--to-machine q35: move an i440fx (pc) guest to q35, as `virt-xml --convert-to-q35` does, then let
the planner lay it out: the machine type changes, PCI controllers and every PCI address are dropped
(they belong to the old chipset), IDE disks become SATA, the PIIX USB controller becomes qemu-xhci,
pci-expander-buses become pcie-expander-buses (same NUMA node and busNr)."""

from __future__ import annotations

from lxml import etree

from planner.xml.xmlio import InputError, remove_element

PC_USB = {None, "", "piix3-uhci", "piix4-uhci"}


def old_addresses(tree: etree._ElementTree) -> dict[etree._Element, str]:
    """element -> its PCI address before conversion, for the report (the keys keep the elements)."""
    out = {}
    for el in tree.getroot().find("devices") if tree.getroot().find("devices") is not None else []:
        a = el.find("address") if isinstance(el.tag, str) else None
        if a is not None and a.get("type") == "pci" and a.get("slot") is not None:
            out[el] = (f"{int(a.get('bus', '0'), 0):02x}:{int(a.get('slot'), 0):02x}."
                           f"{int(a.get('function', '0'), 0):x}")
    return out


def to_q35(tree: etree._ElementTree) -> list[str]:
    """Convert in place; returns notes for the report."""
    root = tree.getroot()
    ostype = root.find("os/type")
    machine = ostype.get("machine", "pc") if ostype is not None else "pc"
    arch = ostype.get("arch", "x86_64") if ostype is not None else "x86_64"
    if arch not in ("x86_64", "i686"):
        raise InputError(f"os/type: --to-machine q35 needs an x86 guest, not {arch}")
    if "q35" in machine:
        return []  # already q35: nothing to convert
    if not (machine == "pc" or machine.startswith("pc-i440fx") or machine.startswith("pc-")):
        raise InputError(f"os/type: --to-machine q35 converts pc (i440fx) guests, not machine '{machine}'")
    ostype.set("machine", machine.replace("i440fx", "q35") if "i440fx" in machine else "q35")
    notes = [f"machine {machine} → {ostype.get('machine')}"]
    devices = root.find("devices")
    for c in list(devices.findall("controller")):
        ctype, model = c.get("type"), c.get("model")
        if ctype == "pci" and model == "pci-expander-bus":
            c.set("model", "pcie-expander-bus")
            m = c.find("model")
            if m is not None:
                m.set("name", "pxb-pcie")
        elif ctype == "pci" or ctype == "ide":
            remove_element(c)
        elif ctype == "usb" and model in PC_USB:
            c.set("model", "qemu-xhci")
            notes.append(f"usb controller index={c.get('index', '0')}: {model or 'default'} → qemu-xhci")
    for disk in devices.findall("disk"):
        tgt = disk.find("target")
        if tgt is not None and tgt.get("bus") == "ide":
            tgt.set("bus", "sata")
            addr = disk.find("address")
            if addr is not None and addr.get("type") == "drive":
                remove_element(addr)
            notes.append(f"disk {tgt.get('dev')}: ide → sata")
    for el in devices:
        addr = el.find("address") if isinstance(el.tag, str) else None
        if addr is not None and addr.get("type") == "pci":
            remove_element(addr)
    return notes
