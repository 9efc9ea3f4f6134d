"""`pciplan diff ORIGINAL PLANNED`: does PLANNED differ from ORIGINAL only by pciplan's own kinds of change?

A checker, so it knows nothing of the planner pipeline: it reads both documents into a tree of their own
source tokens (start tag, end tag, text, comment, ... each with its raw text and line), pairs the nodes of
the two trees in document order and accepts only these differences:
- an <address type='pci' .../> (or, for pciplan's mmio rule, <address type='virtio-mmio'/>) added to a
  device that had no <address>; a given PCI address stays byte for byte, except that a partial one is
  completed (every given number kept) and function 0 of a slot the plan shares gains multifunction='on';
- PCI controllers added under <devices>, with what libvirt writes inside them (<model name>, <target>,
  <node>, a PCI <address>);
- the implicit devices libvirt adds (controllers of the storage, USB, virtio-serial and smartcard buses, a
  memballoon, a video card, the root controller) and the index libvirt fills in on an unindexed controller;
- a stale PCI <address> dropped from a kind libvirt never addresses (libvirt 9.0 drops it too);
- the start and end tags of an element that gained its first child (or lost its last one, a stale address);
- the whitespace of the lines inserted.
Everything else is a change pciplan never makes, reported with its line numbers in both files.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections import Counter
from dataclasses import dataclass, field

from lxml import etree

from planner.xml.xmlio import InputError, parse_xml_bytes
from planner.xml.xmltext import decode

_TOKEN = re.compile(
    r"(?P<comment><!--.*?-->)"
    r"|(?P<cdata><!\[CDATA\[.*?\]\]>)"
    r"|(?P<pi><\?.*?\?>)"
    r"|(?P<doctype><!DOCTYPE(?:[^\[>]|\[.*?\])*>)"
    r"|(?P<end></(?P<endname>[^\s>]+)\s*>)"
    r"|(?P<start><(?P<name>[^\s/>!?]+)(?:\s+[^\s=/>]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*\s*(?P<empty>/?)>)",
    re.S,
)
_ATTR = re.compile(r"\s+([^\s=/>]+)\s*=\s*([\"'])(.*?)\2", re.S)
_NEW_LINE = re.compile(r"(\r?\n)?[ \t]*")  # the whitespace before an inserted line

# PCI controllers pciplan adds (libvirt's controller models of type 'pci').
PCI_CONTROLLER_MODELS = frozenset({
    "pci-root", "pcie-root", "pci-bridge", "dmi-to-pci-bridge", "pcie-root-port",
    "pcie-switch-upstream-port", "pcie-switch-downstream-port", "pci-expander-bus", "pcie-expander-bus",
    "pcie-to-pci-bridge",
})
# Controllers libvirt adds on define when devices need them or by default (virDomainDefAddImplicitDevices,
# qemuDomainDefAddDefaultDevices).
IMPLICIT_CONTROLLER_TYPES = frozenset({"usb", "sata", "ide", "scsi", "virtio-serial", "ccid", "fdc"})
# What libvirt writes inside a new controller or implicit device: child tag -> its allowed children.
_INSIDE = {
    "controller": {"model": set(), "target": {"node"}, "address": set()},
    "memballoon": {"address": set()},
    "video": {"model": set(), "address": set()},
}
# The attributes libvirt writes on them (the address: _ADDRESS_ATTRIBUTES), by path from the device.
_ATTRIBUTES = {
    ("controller",): {"type", "index", "model"},
    ("controller", "model"): {"name"},
    ("controller", "target"): {"chassis", "port", "chassisNr", "busNr", "hotplug", "index"},
    ("controller", "target", "node"): set(),
    ("memballoon",): {"model"},
    ("video",): set(),
    ("video", "model"): {"type", "heads", "primary", "vram", "ram", "vgamem"},
}
_ADDRESS_ATTRIBUTES = {"type", "domain", "bus", "slot", "function", "multifunction"}
_HEX = re.compile(r"0x[0-9a-fA-F]+")
# Kinds on which libvirt 9.0 drops a stale PCI address (and pciplan does the same).
_STALE_DROPPED = frozenset({"graphics", "audio", "lease", "hub", "channel", "memory"})


@dataclass
class Node:
    """One node of the source text: an element (with its start and end tags) or a leaf token."""

    kind: str  # element, text, comment, pi, cdata, doctype, document
    raw: str  # the start tag of an element, the whole text of a leaf
    line: int
    name: str = ""
    empty: bool = False  # a self-closing element
    parent: str = ""  # the name of the element it sits in ("" at the top)
    end_raw: str = ""
    end_line: int = 0
    children: list[Node] = field(default_factory=list)

    def attrs(self) -> dict[str, str]:
        return {m.group(1): m.group(3) for m in _ATTR.finditer(self.raw)}

    def elements(self, name: str | None = None) -> list[Node]:
        return [c for c in self.children if c.kind == "element" and (name is None or c.name == name)]

    def last_line(self) -> int:
        """The line this node ends on."""
        if self.kind == "element" and not self.empty:
            return self.end_line
        return self.line + self.raw.count("\n")

    def blank(self) -> bool:
        return self.kind == "text" and self.raw.strip() == ""


@dataclass
class Change:
    """A difference pciplan never makes."""

    original_line: int | None
    planned_line: int | None
    what: str

    def __str__(self) -> str:
        where = []
        if self.original_line is not None:
            where.append(f"ORIGINAL:{self.original_line}")
        if self.planned_line is not None:
            where.append(f"PLANNED:{self.planned_line}")
        return f"{' '.join(where)}: {self.what}"


@dataclass
class Audit:
    """The changes pciplan never makes, and a count of the ones it does."""

    changes: list[Change] = field(default_factory=list)
    allowed: Counter = field(default_factory=Counter)
    # the planned file's functions per PCI slot (domain, bus, slot)
    functions: Counter = field(default_factory=Counter, repr=False)

    def to_json(self) -> dict:
        return {"ok": not self.changes,
                "changes": [{"original_line": c.original_line, "planned_line": c.planned_line,
                             "change": c.what} for c in self.changes],
                "allowed": dict(sorted(self.allowed.items()))}


def read_tree(data: bytes, source: str) -> tuple[Node, bytes]:
    """The token tree of a document (after checking it is well-formed XML, safely), and its BOM."""
    parse_xml_bytes(data, source)  # raises InputError on bad XML, entity declarations, bad encodings
    text, _encoding, bom = decode(data)
    starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    def line(pos: int) -> int:
        return bisect.bisect_right(starts, pos)

    top = Node("document", "", 1)
    stack = [top]
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() > pos:
            stack[-1].children.append(Node("text", text[pos:m.start()], line(pos)))
        pos = m.end()
        kind = next(k for k in ("comment", "cdata", "pi", "doctype", "end", "start") if m.group(k))
        if kind == "start":
            node = Node("element", m.group(0), line(m.start()), name=m.group("name"),
                        empty=bool(m.group("empty")), parent=stack[-1].name)
            stack[-1].children.append(node)
            if not node.empty:
                stack.append(node)
        elif kind == "end":
            if len(stack) < 2 or stack[-1].name != m.group("endname"):
                raise InputError(f"{source}: line {line(m.start())}: unexpected {m.group(0)}")
            stack[-1].end_raw, stack[-1].end_line = m.group(0), line(m.start())
            stack.pop()
        else:
            stack[-1].children.append(Node(kind, m.group(0), line(m.start())))
    if pos < len(text):
        stack[-1].children.append(Node("text", text[pos:], line(pos)))
    if len(stack) != 1:
        raise InputError(f"{source}: <{stack[-1].name}> is not closed")
    return top, bom


def audit(original: bytes, planned: bytes, original_name: str = "ORIGINAL",
          planned_name: str = "PLANNED") -> Audit:
    """Every difference between the two documents that is not one of pciplan's own kinds of change."""
    o_top, o_bom = read_tree(original, original_name)
    broken = _not_well_formed(planned)
    if broken is not None:  # pciplan never writes that: a change, not bad input
        return Audit(changes=[Change(None, broken[0], f"not well-formed XML any more: {broken[1]}")])
    try:
        p_top, p_bom = read_tree(planned, planned_name)
    except InputError as exc:  # an entity declaration, an encoding that does not decode
        return Audit(changes=[Change(None, 1, f"no longer XML that pciplan reads: {exc}")])
    result = Audit(functions=_functions_per_slot(p_top))
    if o_bom != p_bom:
        result.changes.append(Change(1, 1, f"byte-order mark {o_bom!r} became {p_bom!r}"))
    _children(o_top, p_top, result)
    return result


def _not_well_formed(data: bytes) -> tuple[int, str] | None:
    """The line and reason why data is not well-formed XML (parsed safely: no entities, no network)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        return exc.lineno or 1, str(exc.msg)
    return None


def _functions_per_slot(top: Node) -> Counter:
    slots: Counter = Counter()
    stack = [top]
    while stack:
        node = stack.pop()
        stack += node.elements()
        attrs = node.attrs() if node.kind == "element" else {}
        if node.name == "address" and attrs.get("type") == "pci" and _pci_address(node) \
                and all(k in attrs for k in ("domain", "bus", "slot")):
            slots[(int(attrs["domain"], 16), int(attrs["bus"], 16), int(attrs["slot"], 16))] += 1
    return slots


def _short(raw: str, limit: int = 100) -> str:
    one = " ".join(raw.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _label(node: Node) -> str:
    return f"<{node.name}>" if node.kind == "element" else node.kind


def _fingerprint(node: Node) -> tuple:
    """What pairs an original node with its planned form: its start tag (open or self-closing alike)
    and the start tags of its children other than <address> (which pciplan adds)."""
    if node.kind != "element":
        return (node.kind, node.raw)
    inner = tuple(_self_closing_as_open(c.raw) for c in node.elements() if c.name != "address")
    return ("element", _self_closing_as_open(node.raw), inner)


def _self_closing_as_open(raw: str) -> str:
    return re.sub(r"\s*/>$", ">", raw)


def _pairs(o_items: list[Node], p_items: list[Node]) -> list[tuple[int, int]]:
    """Pairs (i, j) of original and planned items, in document order: equal fingerprints first, then
    in what is left between them, the same kind and name."""
    pairs: list[tuple[int, int]] = []
    fp = difflib.SequenceMatcher(None, [_fingerprint(n) for n in o_items], [_fingerprint(n) for n in p_items],
                                 autojunk=False)
    for op, i1, i2, j1, j2 in fp.get_opcodes():
        if op == "equal":
            pairs += [(i1 + k, j1 + k) for k in range(i2 - i1)]
            continue
        names = difflib.SequenceMatcher(None, [(n.kind, n.name) for n in o_items[i1:i2]],
                                        [(n.kind, n.name) for n in p_items[j1:j2]], autojunk=False)
        for op2, a1, a2, b1, _b2 in names.get_opcodes():
            if op2 == "equal":
                pairs += [(i1 + a1 + k, j1 + b1 + k) for k in range(a2 - a1)]
    return pairs


def _children(o: Node, p: Node, result: Audit) -> None:
    """Compare the content of two paired nodes: items (everything but whitespace) and the gaps between."""
    o_items = [c for c in o.children if not c.blank()]
    p_items = [c for c in p.children if not c.blank()]
    o_gaps = _gaps(o)
    p_gaps = _gaps(p)
    pairs = _pairs(o_items, p_items)
    anchors = [(-1, -1)] + pairs + [(len(o_items), len(p_items))]
    for (i0, j0), (i1, j1) in zip(anchors, anchors[1:], strict=False):
        removed = o_items[i0 + 1:i1]
        inserted = p_items[j0 + 1:j1]
        # where the stretch between the two paired items begins, in either file
        lines = (o_items[i0].last_line() if i0 >= 0 else o.line,
                 p_items[j0].last_line() if j0 >= 0 else p.line)
        for node in removed:
            _removed(o, p, node, lines[1], result)
        for node in inserted:
            _inserted(o, p, node, result)
        p_lines = [lines[1]] + [n.last_line() for n in inserted]  # where each planned gap begins
        _gap(o, p, o_gaps[i0 + 1:i1 + 1], p_gaps[j0 + 1:j1 + 1], bool(removed), bool(inserted),
             (lines[0], p_lines), result)
        if i1 < len(o_items):
            _pair(o_items[i1], p_items[j1], result)


def _gaps(node: Node) -> list[str]:
    """The whitespace before each item of node's content, and after the last one."""
    gaps = [""]
    for c in node.children:
        if c.blank():
            gaps[-1] += c.raw
        else:
            gaps.append("")
    return gaps


def _gap(o: Node, p: Node, o_gaps: list[str], p_gaps: list[str], removed: bool, inserted: bool,
         lines: tuple[int, list[int]], result: Audit) -> None:
    """The whitespace between two paired items: as written, unless pciplan inserted or dropped
    something there; then the inserted lines' own whitespace is new, and the rest is kept."""
    if not removed and not inserted:
        if o_gaps[0] != p_gaps[0]:
            inside = f" inside {_label(p)}" if p.kind == "element" else ""
            result.changes.append(Change(lines[0], lines[1][0],
                                         f"whitespace changed: {o_gaps[0]!r} became {p_gaps[0]!r}{inside}"))
        return
    # the element gained its first child or lost its last, or the new lines went where nothing
    # separated two tags (a closing tag then moves to a line of its own): all this layout is new
    new_layout = o.empty or p.empty or o_gaps == [""]
    bad = [k for k, g in enumerate(p_gaps[:len(p_gaps) if new_layout else -1]) if not _NEW_LINE.fullmatch(g)]
    if not new_layout and p_gaps[-1] not in o_gaps:
        bad.append(len(p_gaps) - 1)
    if not bad:
        return
    result.changes.append(Change(lines[0], lines[1][bad[0]], "whitespace around inserted or removed lines "
                                 f"changed: {''.join(o_gaps)!r} became {p_gaps!r}"))


def _pair(o: Node, p: Node, result: Audit) -> None:
    if o.kind != "element":
        if o.raw != p.raw:
            result.changes.append(Change(o.line, p.line, f"{o.kind} changed: {_short(o.raw)!r} became "
                                         f"{_short(p.raw)!r}"))
        return
    _start_tag(o, p, result)
    if not o.empty and not p.empty and o.end_raw != p.end_raw:
        result.changes.append(Change(o.end_line, p.end_line, f"end tag {o.end_raw!r} became {p.end_raw!r}"))
    _children(o, p, result)


def _start_tag(o: Node, p: Node, result: Audit) -> None:
    if o.raw == p.raw:
        return
    o_raw, p_raw = o.raw, p.raw
    if o.empty != p.empty:
        # open for a first child, or self-closing again once a stale address is gone
        gained = o.empty and any(not c.blank() for c in p.children)
        lost = p.empty and any(not c.blank() for c in o.children)
        if gained or lost:
            o_raw, p_raw = _self_closing_as_open(o_raw), _self_closing_as_open(p_raw)
    if o_raw == p_raw:
        return
    if o.name == "address" and _address_completed(o, p, result):
        return
    if o.name == "controller" and "index" not in o.attrs() and "index" in p.attrs():
        # libvirt numbers an unindexed controller; the index is written right after type
        filled = re.sub(r"(\s+)index\s*=\s*([\"'])[0-9]+\2", "", p_raw, count=1)
        if filled == o_raw:
            result.allowed["controller index filled in"] += 1
            return
    result.changes.append(Change(o.line, p.line, _tag_difference(o, p)))


def _address_completed(o: Node, p: Node, result: Audit) -> bool:
    """A given PCI address kept, as libvirt keeps it: a partial one (no slot, say) completed with every
    given number unchanged, or function 0 of a slot the plan shares marked multifunction='on'."""
    a, b = o.attrs(), p.attrs()
    if a.get("type") != "pci" or b.get("type") != "pci" or not _pci_address(p) or not p.empty:
        return False
    numbers = ("domain", "bus", "slot", "function")
    for k, v in a.items():
        if k in numbers:
            if not re.fullmatch(r"(0x[0-9a-fA-F]+|[0-9]+)", v) or int(v, 0) != int(b.get(k, "-1"), 0):
                return False
        elif k != "type" and b.get(k) != v:
            return False
    if all(k in a for k in numbers):
        # complete already: only the multifunction flag on function 0 of a shared slot may be new
        shared = int(b["function"], 16) == 0 and b.get("multifunction") == "on" and "multifunction" not in a \
            and result.functions[(int(b["domain"], 16), int(b["bus"], 16), int(b["slot"], 16))] > 1
        if shared and re.sub(r"\s+multifunction\s*=\s*([\"'])on\1", "", p.raw, count=1) == o.raw:
            result.allowed["multifunction='on' added to a shared slot"] += 1
            return True
        return False
    result.allowed["partial PCI address completed"] += 1
    return True


def _tag_difference(o: Node, p: Node) -> str:
    """Say what differs between two start tags of the same element, attribute by attribute."""
    a, b = o.attrs(), p.attrs()
    what = []
    for k in a:
        if k not in b:
            what.append(f"attribute {k} removed")
        elif a[k] != b[k]:
            what.append(f"attribute {k} changed from {a[k]!r} to {b[k]!r}")
    what += [f"attribute {k}={b[k]!r} added" for k in b if k not in a]
    if not what:
        if [k for k in a] != [k for k in b if k in a]:
            what.append("attributes reordered")
        else:
            what.append("quoting or spacing changed")
    return f"<{o.name}>: " + "; ".join(what) + f": {_short(o.raw)!r} became {_short(p.raw)!r}"


def _removed(o_parent: Node, p_parent: Node, node: Node, p_line: int, result: Audit) -> None:
    if node.kind == "element" and node.name == "address" and node.attrs().get("type") == "pci" \
            and _drops_stale_address(o_parent):
        result.allowed["stale PCI address dropped"] += 1
        return
    result.changes.append(Change(node.line, p_line, f"removed {_label(node)} from {_label(o_parent)}: "
                                 f"{_short(node.raw)!r}"))


def _drops_stale_address(device: Node) -> bool:
    """Kinds that never take a PCI address and lose a given one in libvirt 9.0 (models/devices.toml)."""
    if device.name in _STALE_DROPPED:
        return True
    model = device.attrs().get("model")
    if device.name == "controller":
        return device.attrs().get("type") == "usb" and model == "none"
    if device.name == "memballoon":
        return model == "none"
    if device.name == "video":
        return any(m.attrs().get("type") == "none" for m in device.elements("model"))
    return False


def _inserted(o_parent: Node, p_parent: Node, node: Node, result: Audit) -> None:
    why = _why_inserted(o_parent, node)
    if why:
        result.allowed[why] += 1
        return
    foreign = _foreign_inside(node) if node.name in _INSIDE and o_parent.name == "devices" else None
    if foreign is not None:  # a device pciplan adds, but with something libvirt does not write in it
        result.changes.append(Change(None, foreign.line, f"added {_label(node)} inside {_label(p_parent)} "
                                     f"has {_short(foreign.raw)!r}, which libvirt does not write so"))
        return
    result.changes.append(Change(o_parent.line if o_parent.kind == "element" else None, node.line,
                                 f"added {_label(node)} inside {_label(p_parent)}: {_short(node.raw)!r}"))


def _why_inserted(o_parent: Node, node: Node) -> str | None:
    """Which of pciplan's kinds of change this inserted node is, or None."""
    if node.kind != "element":
        return None
    attrs = node.attrs()
    if node.name == "address":
        # only a device (a child of <devices>, not the emulator's path) takes an address, and only one
        if o_parent.parent != "devices" or o_parent.name == "emulator" or o_parent.elements("address"):
            return None
        if attrs.get("type") == "pci" and _pci_address(node):
            return "PCI address added"
        if attrs == {"type": "virtio-mmio"} and node.empty:
            return "virtio-mmio address added"
        return None
    if o_parent.name == "devices":
        if node.name == "controller":
            ctype, model = attrs.get("type"), attrs.get("model")
            if ctype == "pci" and model in ("pci-root", "pcie-root") and node.empty and _libvirt_inside(node):
                return "implicit device added"  # libvirt writes the root it always has
            if ctype == "pci" and model in PCI_CONTROLLER_MODELS and _libvirt_inside(node):
                return "PCI controller added"
            if ctype in IMPLICIT_CONTROLLER_TYPES and _libvirt_inside(node):
                return "implicit device added"
            return None
        if node.name in ("memballoon", "video") and _libvirt_inside(node):
            return "implicit device added"
        return None
    if o_parent.name == "domain" and node.name == "devices":
        empty_devices = Node("element", "<devices>", o_parent.line, name="devices")
        inside = all(c.blank() or _why_inserted(empty_devices, c) for c in node.children)
        return "implicit device added" if inside else None
    return None


def _pci_address(node: Node) -> bool:
    attrs = node.attrs()
    return node.empty and set(attrs) <= _ADDRESS_ATTRIBUTES and all(
        _HEX.fullmatch(attrs[k]) for k in ("domain", "bus", "slot", "function") if k in attrs) \
        and attrs.get("multifunction", "on") in ("on", "off")


def _libvirt_inside(node: Node) -> bool:
    return _foreign_inside(node) is None


def _foreign_inside(node: Node) -> Node | None:
    """What a new device holds that libvirt does not write inside it (only blank text and the children
    of _INSIDE are written), or None."""
    allowed = _INSIDE.get(node.name, {})
    if not set(node.attrs()) <= _ATTRIBUTES.get((node.name,), set()):
        return node
    for c in node.children:
        if c.blank():
            continue
        if c.kind != "element" or c.name not in allowed:
            return c
        if c.name == "address":
            if not (c.attrs().get("type") == "pci" and _pci_address(c)):
                return c
            continue
        if not set(c.attrs()) <= _ATTRIBUTES.get((node.name, c.name), set()):
            return c
        for g in c.children:
            if g.blank():
                continue
            if g.kind != "element" or g.name not in allowed[c.name] \
                    or not set(g.attrs()) <= _ATTRIBUTES.get((node.name, c.name, g.name), set()):
                return g
            if any(not t.blank() and not (t.kind == "text" and t.raw.strip().isdigit()) for t in g.children):
                return g
    return None
