"""The output is the input plus pciplan's own changes, byte for byte: `pciplan diff guest.xml planned.xml`
(planner/commands/audit.py) finds nothing else on every guest we have, and finds every other change we can
make. Quoting, attribute order, whitespace, comments, other applications' metadata, the declaration and the
encoding stay as written."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from conftest import GUESTS, REPO, SHARED, nics, shared_cases, test_guests
from lxml import etree
from planning import plan_bytes, text

from planner.commands.audit import Change, audit
from planner.facts.errors import Infeasible
from planner.xml.xmlio import InputError

EXAMPLES = sorted((REPO / "examples").glob("*.xml"))
SHARED_CASES = sorted(p for folder in ("virt-install", "libvirt") for p in shared_cases(folder))
INPUTS = EXAMPLES + test_guests() + SHARED_CASES


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@cache
def planned(path: Path) -> tuple[bytes, bytes]:
    """(input, planned output) of a file; skips, with plan's reason, an input that plan rejects."""
    data = path.read_bytes()
    try:
        tree, _ = plan_bytes(data)
    except (InputError, Infeasible) as exc:
        pytest.skip(f"plan rejects {_id(path)}: {exc}")
    return data, text(tree)


def changes(before: bytes | str, after: bytes | str) -> list[Change]:
    a = before.encode() if isinstance(before, str) else before
    b = after.encode() if isinstance(after, str) else after
    return audit(a, b).changes


@pytest.mark.parametrize("source", INPUTS, ids=_id)
def test_diff_shows_only_pciplans_changes(source: Path) -> None:
    data, out = planned(source)
    assert [str(c) for c in changes(data, out)] == []
    # and a planned file comes back byte for byte
    again, _ = plan_bytes(out)
    assert text(again) == out


def test_every_shared_case_is_audited_or_skipped_for_plans_reason() -> None:
    """The parametrised test above covers all of ../shared/cases/**, not a hand-picked subset."""
    if not (SHARED / "cases").is_dir():
        pytest.skip("../shared is missing")
    on_disk = sorted((SHARED / "cases").rglob("*.xml"))
    assert on_disk == SHARED_CASES


# ---------------------------------------------------------------- the audit is not blind

HAND = GUESTS / "q35-hand-written.xml"
PINNED = GUESTS / "q35-partially-pinned.xml"
SERVER = REPO / "examples" / "q35-server.xml"


def sub(pattern: str, repl: str | Callable[[re.Match], str], flags: int = 0) -> Callable[[str], str]:
    """A mutation: the first match of pattern replaced."""
    return lambda s: re.sub(pattern, repl, s, count=1, flags=flags)


def swap_lines(first: str) -> Callable[[str], str]:
    """A mutation: the line containing first swapped with the next line."""
    def mutate(s: str) -> str:
        lines = s.split("\n")
        i = next(n for n, line in enumerate(lines) if first in line)
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
        return "\n".join(lines)
    return mutate


def drop_line(containing: str) -> Callable[[str], str]:
    def mutate(s: str) -> str:
        lines = s.split("\n")
        i = next(n for n, line in enumerate(lines) if containing in line)
        return "\n".join(lines[:i] + lines[i + 1:])
    return mutate


PCI_ADDRESS = r"<address type='pci' domain='0x0000' bus='0x0[0-9]' slot='0x0[0-9]' function='0x0'/>"
# (what, guest, mutation of the planned text): none of these is a change pciplan makes
MUTATIONS: list[tuple[str, Path, Callable[[str], str]]] = [
    ("attribute value", SERVER, sub(r"<domain type='(\w+)'", "<domain type='xen'")),
    ("attribute value of a device", SERVER, sub(r"<source network='default'/>", "<source network='other'/>")),
    ("attribute removed", SERVER, sub(r" bus='virtio'", "")),
    ("attribute added", SERVER, sub(r"<target dev='vda'", "<target dev='vda' removable='on'")),
    ("attribute order", PINNED, sub(r"<target dev='(\w+)' bus='(\w+)'/>", r"<target bus='\2' dev='\1'/>")),
    ("attribute quoting", HAND, sub(r'a = "1"', "a = '1'")),
    ("attribute spacing", HAND, sub(r'a = "1"', 'a="1"')),
    ("element order", SERVER, swap_lines("<on_poweroff>")),
    ("device order", SERVER,
     lambda s: s.replace("vda", "vdX", 1).replace("vdb", "vda", 1).replace("vdX", "vdb")),
    ("text", SERVER, sub(r"<name>([^<]*)</name>", r"<name>\1-copy</name>")),
    ("text of a number", SERVER, sub(r"<vcpu placement='static'>\d+", "<vcpu placement='static'>64")),
    ("comment added", SERVER, sub(r"  <devices>\n", "  <devices>\n    <!-- reviewed -->\n")),
    ("comment changed", HAND, sub(r"<!-- the boot disk -->", "<!-- the root disk -->")),
    ("comment removed", HAND, sub(r"\t\t<!-- the boot disk -->\n", "")),
    ("namespace declared", SERVER, sub(r"<domain type=", "<domain xmlns:x='urn:x' type=")),
    ("namespace changed", HAND, sub(r"urn:x-example-app", "urn:y-example-app")),
    ("namespace prefix", HAND, lambda s: s.replace("ovirt-tune", "tune")),
    ("declaration", HAND,
     sub(r'<\?xml version="1.0" encoding="UTF-8"\?>', "<?xml version='1.0' encoding='UTF-8'?>")),
    ("declaration removed", HAND, sub(r'<\?xml[^>]*>\n', "")),
    ("declaration added", SERVER, lambda s: "<?xml version='1.0'?>\n" + s),
    ("CRLF line endings", SERVER, lambda s: s.replace("\n", "\r\n")),
    ("one CRLF line", SERVER, sub(r"</disk>\n", "</disk>\r\n")),
    ("reindented line", SERVER, sub(r"\n    <interface", "\n      <interface")),
    ("tab for spaces", SERVER, sub(r"\n    <interface", "\n\t<interface")),
    ("trailing blank", SERVER, sub(r"</name>", "</name>  ")),
    ("blank line", SERVER, sub(r"</disk>\n", "</disk>\n\n")),
    ("final newline removed", SERVER, lambda s: s.rstrip("\n")),
    ("character reference", SERVER, sub(r"<name>q", "<name>&#x71;")),
    ("CDATA", SERVER, sub(r"<name>([^<]*)</name>", r"<name><![CDATA[\1]]></name>")),
    ("end tag spelling", SERVER, sub(r"</vcpu>", "</vcpu >")),
    ("self-closing spelling", SERVER, sub(r"<boot order='1'/>", "<boot order='1'></boot>")),
    ("self-closing spacing", SERVER, sub(r"<boot order='1'/>", "<boot order='1' />")),
    ("drive address dropped", PINNED, drop_line("<address type='drive'")),
    ("drive address changed", PINNED, sub(r"(<address type='drive'[^>]*unit=)'0'", r"\1'1'")),
    ("drive address turned into PCI", PINNED, sub(r"<address type='drive'[^>]*/>",
                                                 "<address type='pci' domain='0x0000' bus='0x0c' slot='0x00' "
                                                 "function='0x0'/>")),
    ("given PCI address moved", PINNED, sub(r"bus='0x02' slot='0x00' function='0x0'/>\n    </interface>",
                                            "bus='0x03' slot='0x00' function='0x0'/>\n    </interface>")),
    ("given PCI address respelled", PINNED, sub(r"bus='0x02' slot='0x00' function='0x0'/>\n    </interface>",
                                                "bus='0x2' slot='0x00' function='0x0'/>\n    </interface>")),
    ("given PCI address dropped", PINNED, drop_line("<address type='pci' domain='0x0000' bus='0x02'")),
    ("given multifunction dropped", PINNED, sub(r"(slot='0x02' function='0x0') multifunction='on'", r"\1")),
    ("given video address moved", PINNED,
     sub(r"slot='0x01' function='0x0'/>", "slot='0x05' function='0x0'/>")),
    ("a second address", PINNED, sub(r"(<address type='drive'[^>]*/>)",
                                     r"\1<address type='pci' domain='0x0000' bus='0x0c' slot='0x00' "
                                     r"function='0x0'/>")),
    ("model added", SERVER, sub(r"(<target dev='vda' bus='virtio'/>)", r"\1\n      <model type='rtl8139'/>")),
    ("model of a NIC changed", SERVER, sub(r"<model type='e1000'/>", "<model type='rtl8139'/>")),
    ("device added", SERVER, sub(r"  </devices>", "  <interface type='user'/>\n  </devices>")),
    ("device removed", SERVER, sub(r"    <rng model='virtio'>.*?</rng>\n", "", re.S)),
    ("controller with a foreign child", SERVER, sub(r"(<model name='pcie-root-port'/>)",
                                                    r"\1\n      <driver queues='4'/>")),
    ("controller of a foreign model", SERVER, sub(r"model='pcie-root-port'>", "model='virtio-scsi'>")),
    ("PCI address with junk", SERVER, sub(PCI_ADDRESS, lambda m: m.group(0).replace("/>", " x='1'/>"))),
    ("PCI address in <source>", SERVER, sub(r"<source network='default'/>",
                                           "<source network='default'><address type='pci' domain='0x0000' "
                                           "bus='0x00' slot='0x09' function='0x0'/></source>")),
    ("PCI address in <emulator>", SERVER, sub(r"(<emulator>[^<]*)", r"\1<address type='pci' domain='0x0000' "
                                              r"bus='0x00' slot='0x09' function='0x0'/>")),
    ("PCI address in <os>", SERVER, sub(r"(\n  </os>)", r"\n    <address type='pci' domain='0x0000' "
                                       r"bus='0x00' slot='0x09' function='0x0'/>\1")),
    ("PCI address in a device's <driver>", SERVER,
     sub(r"<driver name='qemu' type='qcow2'/>", "<driver name='qemu' type='qcow2'><address type='pci' "
         "domain='0x0000' bus='0x00' slot='0x09' function='0x0'/></driver>")),
    ("closing tag added", SERVER, sub(r"</disk>", "</disk></bogus>")),
    ("closing tag removed", SERVER, drop_line("</disk>")),
    ("closing tag moved", SERVER,
     lambda s: s.replace("    </disk>\n", "", 1).replace("</disk>", "</disk></disk>", 1)),
    ("element renamed", SERVER, sub(r"<on_crash>(\w+)</on_crash>", r"<on_panic>\1</on_panic>")),
    ("processing instruction", SERVER, sub(r"  <devices>", "  <?review ok?>\n  <devices>")),
    ("doctype", SERVER, lambda s: "<!DOCTYPE domain>\n" + s),
    ("entity declaration", SERVER, lambda s: '<!DOCTYPE domain [<!ENTITY x "y">]>\n' + s),
    ("comment after the root", SERVER, lambda s: s + "<!-- end -->\n"),
]


@pytest.mark.parametrize(("what", "guest", "mutate"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_every_other_change_is_reported(what: str, guest: Path, mutate: Callable[[str], str]) -> None:
    data, out = planned(guest)
    mutated = mutate(out.decode())
    assert mutated != out.decode(), f"the mutation '{what}' does not apply to {guest.name}"
    found = changes(data, mutated)
    assert found, f"{what}: not reported"
    # named at the line where the planned file first differs (or the line of the original it replaces)
    first = next((i for i, (a, b) in enumerate(zip(out.decode(), mutated, strict=False)) if a != b),
                 min(len(out), len(mutated)))
    line = mutated.count("\n", 0, first) + 1
    lines = {c.planned_line for c in found} | {c.original_line for c in found}
    assert any(n is not None and abs(n - line) <= 1 for n in lines) or what in NOT_AT_THE_LINE, \
        (what, line, [str(c) for c in found])


# a change named where it ends, not where the text first differs
# XML's parser finds a missing closing tag where the parent closes (and names the unclosed start tag)
NOT_AT_THE_LINE = {"closing tag removed"}


def test_encodings_are_reported(guest_xml) -> None:
    """The same text in another encoding, or with a byte-order mark, is a change; an encoding that
    no longer decodes is one too (the planned file is not what pciplan wrote)."""
    base = guest_xml("q35", devices="    <interface type='user'><model type='virtio'/></interface>")
    latin1 = base.decode().replace("<domain type='qemu'>", "<?xml version='1.0' encoding='ISO-8859-1'?>\n"
                                   "<domain type='qemu'>\n  <description>Gästebuch</description>", 1)
    data = latin1.encode("iso-8859-1")
    _, out = planned_bytes(data)
    assert changes(data, out) == []
    as_text = out.decode("iso-8859-1")
    assert changes(data, as_text.encode("utf-8"))  # re-encoded, declaration kept
    assert changes(data, as_text.replace("ISO-8859-1", "UTF-8").encode("utf-8"))  # declaration follows
    assert changes(data, codecs.BOM_UTF8 + as_text.replace("ISO-8859-1", "UTF-8").encode("utf-8"))
    utf16 = as_text.replace("ISO-8859-1", "UTF-16").encode("utf-16")
    assert changes(data, utf16)
    assert changes(data, as_text.encode("iso-8859-1").replace(b"G\xe4ste", b"G\xc3\xa4ste"))


def planned_bytes(data: bytes) -> tuple[bytes, bytes]:
    tree, _ = plan_bytes(data)
    return data, text(tree)


# ---------------------------------------------------------------- given addresses are kept

def _stale(device: etree._Element) -> bool:
    """A kind whose PCI address libvirt 9.0 drops (models/devices.toml: pci_address = "drop")."""
    model = device.get("model") or device.findtext("model[@type]") or (
        device.find("model").get("type") if device.find("model") is not None else None)
    return device.tag in ("graphics", "audio", "lease", "hub", "channel", "memory") or (
        device.tag in ("controller", "memballoon", "video") and model == "none")


def _given_pci(tree: etree._ElementTree) -> list[tuple[str, dict[str, int]]]:
    """Every device with a complete PCI address: its canonical XML without the address, and the address."""
    out = []
    for addr in tree.iter("address"):
        parent = addr.getparent()
        if addr.get("type") != "pci" or parent.getparent() is None or parent.getparent().tag != "devices" \
                or not all(addr.get(k) for k in ("domain", "bus", "slot", "function")) or _stale(parent):
            continue
        bare = etree.fromstring(etree.tostring(parent))
        for child in bare.findall("address"):
            bare.remove(child)
        for el in bare.iter():
            el.text = el.text.strip() if el.text else None
            el.tail = None
        out.append((etree.tostring(bare, method="c14n").decode(),
                    {k: int(addr.get(k), 0) for k in ("domain", "bus", "slot", "function")}))
    return sorted(out, key=lambda x: (x[0], sorted(x[1].items())))


SAFE = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def _tree(data: bytes) -> etree._ElementTree:
    return etree.ElementTree(etree.fromstring(data, SAFE))


GIVEN = [p for p in test_guests() + SHARED_CASES if _given_pci(_tree(p.read_bytes()))]


@pytest.mark.parametrize("source", GIVEN, ids=_id)
def test_given_pci_addresses_are_kept(source: Path) -> None:
    """Independently of the audit: every device that had a complete PCI address has it in the output,
    the same numbers on the same device (libvirt's keep-what-is-given rule), on every guest that has one."""
    data, out = planned(source)
    before = _given_pci(_tree(data))
    planned_devices = _given_pci(_tree(out))
    for key, addr in before:
        assert (key, addr) in planned_devices, f"{key[:80]} lost or moved its address {addr}"


def test_given_addresses_are_kept_on_more_than_one_guest() -> None:
    assert len([p for p in GIVEN if p.parent == GUESTS]) >= 5
MIXED = GUESTS / "q35-hand-written.xml"


def test_hand_written_guest_keeps_its_style() -> None:
    """Double and single quotes mixed, tabs, comments, another application's metadata, a declaration:
    every line pciplan did not change is the input's own, and what it adds follows the element's style."""
    data = MIXED.read_bytes()
    tree, _ = plan_bytes(data)
    out = text(tree).decode()
    lines = out.splitlines()
    assert out.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<!-- written by hand')
    for line in data.decode().splitlines():
        if "<metadata" in line or "<!--" in line or '"' in line and "<memballoon" not in line:
            assert line in lines, line
    # inside an element written with double quotes, the new address uses double quotes; with single, single
    disk = out[out.index('<disk type="file"'):out.index("</disk>")]
    assert re.search(r'<address type="pci" domain="0x0000" bus="0x[0-9a-f]{2}"', disk)
    nic = next(line for line in lines if "<interface type='network'>" in line)
    assert "<address type='pci' domain='0x0000'" in nic and nic.startswith("\t\t<interface")
    # new elements indented with the document's tabs
    assert any(line.startswith("\t\t<controller type=") for line in lines)
    assert not any(line.startswith(" ") for line in lines[lines.index('<domain type="qemu" '
                                                                      'xmlns:ovirt-tune="http://ovirt.org/vm/tune/1.0">'):])


def test_encoding_and_line_endings_are_kept(guest_xml) -> None:
    base = guest_xml("q35", devices="    <interface type='user'><model type='virtio'/></interface>")
    latin1 = base.decode().replace("<domain type='qemu'>", "<?xml version='1.0' encoding='ISO-8859-1'?>\n"
                                   "<domain type='qemu'>\n  <description>Gästebuch</description>", 1)
    crlf = latin1.replace("\n", "\r\n").encode("iso-8859-1")
    tree, _ = plan_bytes(crlf)
    out = text(tree)
    assert out.startswith(b"<?xml version='1.0' encoding='ISO-8859-1'?>\r\n")
    assert "Gästebuch".encode("iso-8859-1") in out
    assert b"\n" not in out.replace(b"\r\n", b"")  # every new line is CRLF too
    assert changes(crlf, out) == []


def test_unchanged_document_is_returned_as_is(guest_xml) -> None:
    """Odd but valid spelling survives a plan that changes nothing: spaces around '=', a space before
    '/>', character references, CDATA, a trailing comment and no final newline."""
    nic = "    <interface type='user'><model type='virtio'/></interface>"
    first, _ = plan_bytes(guest_xml("q35", devices=nic))
    planned = text(first).decode()
    odd = planned.replace("<domain type='qemu'>",
                          "<domain type = 'qemu' >\n  <title><![CDATA[a < b]]>&#x41;</title>", 1)
    odd = odd.replace("<vcpu>2</vcpu>", "<vcpu >2</vcpu >").rstrip("\n") + "\n<!-- end -->"
    tree, summary = plan_bytes(odd.encode())
    assert text(tree) == odd.encode()


def test_a_glued_first_child_keeps_its_gap(guest_xml) -> None:
    data = guest_xml("q35", devices=nics(2)).replace(b"<devices>\n    <emulator>", b"<devices><emulator>")
    assert b"<devices><emulator>" in data
    _, out = planned_bytes(data)
    assert changes(data, out) == []


def test_a_new_child_before_a_glued_first_child_goes_on_a_line_of_its_own() -> None:
    """The glued gap stays only beside the same neighbour: an element put in front of a glued first
    child goes on a line of its own, and so does the child (never <new/><old/>)."""
    from lxml import etree

    from planner.xml.xmlio import parse_xml_bytes, serialize

    tree = parse_xml_bytes(b"<domain>\n  <devices><disk/>\n    <interface/>\n  </devices>\n</domain>\n")
    devices = tree.getroot().find("devices")
    devices.insert(0, etree.Element("emulator"))
    assert serialize(tree) == (b"<domain>\n  <devices>\n    <emulator/>\n    <disk/>\n    <interface/>\n"
                               b"  </devices>\n</domain>\n")
    devices.remove(devices[0])
    devices.insert(1, etree.Element("controller"))  # after the glued child: it keeps its gap
    assert serialize(tree) == (b"<domain>\n  <devices><disk/>\n    <controller/>\n    <interface/>\n"
                               b"  </devices>\n</domain>\n")
