"""What libvirt added or moved: match the devices of two domain XMLs and list the differences."""

from __future__ import annotations

from lxml import etree

from planner.stack.model import (
    Change,
    _alias,
    _describe,
    _devices,
    _format_address,
    _int,
    _multifunction,
    _parse,
    _pci_address,
)

# ---------------------------------------------------------------------------------------------------
# diff_layouts


def _device_kind(el: etree._Element) -> str:
    return f"controller[{el.get('type')}]" if el.tag == "controller" else el.tag


IDENTITY_KINDS = ("alias", "mac", "dev", "index", "index-model", "primary")  # tried in this order


def _identities(el: etree._Element) -> dict[str, str]:
    """What names a device across define: its alias, MAC, disk target, controller index."""
    found = {}
    if _alias(el):
        found["alias"] = _alias(el)
    mac = el.find("mac")
    if mac is not None and mac.get("address"):
        found["mac"] = mac.get("address").lower()
    target = el.find("target")
    if el.tag == "disk" and target is not None and target.get("dev"):
        found["dev"] = target.get("dev")
    if el.tag == "controller":
        found["index"] = str(_int(el.get("index")))
        # USB2 companions share their master's index; the model tells them apart
        found["index-model"] = f"{_int(el.get('index'))}/{el.get('model')}"
    model = el.find("model")
    if el.tag == "video" and model is not None and model.get("primary") == "yes":
        found["primary"] = "yes"  # libvirt lists the primary video first
    return found


def _match_devices(
    before: list[etree._Element], after: list[etree._Element]
) -> tuple[list[tuple[etree._Element, etree._Element]], list[etree._Element], list[etree._Element]]:
    """Pair the elements of one kind (pairs, unmatched before, unmatched after).

    An identity that is unique on both sides pairs two elements; the rest (say a NIC whose MAC
    libvirt generated) pair up in document order.
    """
    pairs: list[tuple[etree._Element, etree._Element]] = []
    left, right = list(before), list(after)
    ids_left = {id(el): _identities(el) for el in left}
    ids_right = {id(el): _identities(el) for el in right}
    for kind in IDENTITY_KINDS:
        by_value: dict[str, tuple[list[etree._Element], list[etree._Element]]] = {}
        for el in left:
            if kind in ids_left[id(el)]:
                by_value.setdefault(ids_left[id(el)][kind], ([], []))[0].append(el)
        for el in right:
            if kind in ids_right[id(el)]:
                by_value.setdefault(ids_right[id(el)][kind], ([], []))[1].append(el)
        matched = {id(b[0]): a[0] for b, a in by_value.values() if len(b) == 1 and len(a) == 1}
        if not matched:
            continue
        matched_right = {id(a) for a in matched.values()}
        pairs += [(b, matched[id(b)]) for b in left if id(b) in matched]
        left = [b for b in left if id(b) not in matched]
        right = [a for a in right if id(a) not in matched_right]
    pairs += list(zip(left, right, strict=False))
    n = min(len(left), len(right))
    return pairs, left[n:], right[n:]


def _completed(before: etree._Element, after: etree._Element) -> list[str]:
    """What libvirt added to or changed in a PCI controller besides its address (its <model name>,
    its <target> attributes): a controller written as libvirt writes it comes back the same."""
    out = []
    for child in after:
        if not isinstance(child.tag, str) or child.tag in ("address", "alias"):
            continue
        given = before.find(child.tag)
        new = {k: v for k, v in child.attrib.items() if given is None or given.get(k) != v}
        if new:
            shown = " ".join(f"{k}='{v}'" for k, v in new.items())
            out.append(f"libvirt {'added' if given is None else 'set'} <{child.tag} {shown}>")
    return out


def diff_layouts(before_xml: str, after_xml: str, controllers_as_written: bool = False) -> list[Change]:
    """What libvirt added, changed or moved between the input XML and its completed XML (PCI only).
    controllers_as_written: also what libvirt filled into a PCI controller (its <model name>, its
    <target> attributes): a controller written as libvirt writes it comes back the same. Off by
    default, since libvirt completes the controllers a user writes bare, and those stay as given."""
    before_root, after_root = _parse(before_xml), _parse(after_xml)
    kinds: dict[str, tuple[list[etree._Element], list[etree._Element]]] = {}
    for el in _devices(before_root):
        kinds.setdefault(_device_kind(el), ([], []))[0].append(el)
    for el in _devices(after_root):
        kinds.setdefault(_device_kind(el), ([], []))[1].append(el)

    changes: list[Change] = []
    for kind, (before, after) in kinds.items():
        pairs, removed, added = _match_devices(before, after)
        for el in added:
            is_pci_controller = kind == "controller[pci]"
            if not is_pci_controller and _pci_address(el) is None:
                continue  # libvirt's non-PCI extras (PS/2 input, audio) are not part of the PCI layout
            changes.append(
                Change(
                    "added-controller" if is_pci_controller else "added-device",
                    _describe(el),
                    f"libvirt added it at {_format_address(_pci_address(el), _multifunction(el))}",
                )
            )
        for el in removed:
            changes.append(Change("removed-device", _describe(el), "not in libvirt's completed XML"))
        for b, a in pairs:
            if kind == "controller[pci]" and b.get("model") != a.get("model"):
                changes.append(
                    Change("changed-controller", _describe(a), f"model {b.get('model')} -> {a.get('model')}")
                )
            elif kind == "controller[pci]" and controllers_as_written:
                changes += [Change("changed-controller", _describe(a), detail) for detail in _completed(b, a)]
            b_addr, a_addr = _pci_address(b), _pci_address(a)
            if b_addr is None and a_addr is None:
                continue
            b_mf, a_mf = _multifunction(b), _multifunction(a)
            if b_addr is None:
                detail = f"libvirt assigned {_format_address(a_addr, a_mf)}"
            elif b_addr != a_addr:
                detail = f"libvirt moved {_format_address(b_addr, b_mf)} -> {_format_address(a_addr, a_mf)}"
            elif b_mf != a_mf:
                detail = f"libvirt set multifunction={'on' if a_mf else 'off'} at {_format_address(a_addr)}"
            else:
                continue
            changes.append(Change("moved-address", _describe(a), detail))
    return changes


