"""The output is the input plus pciplan's own changes, byte for byte: a reviewer's `diff guest.xml
planned.xml` shows added or changed <address> lines, added controllers and implicit devices, and the
start and end tags of elements that gained a child, nothing else. Quoting, attribute order, whitespace,
comments, other applications' metadata, the declaration and the encoding stay as written."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
from conftest import GUESTS, REPO, libvirt_manifest, shared_cases, test_guests
from planning import plan_bytes, text

EXAMPLES = sorted((REPO / "examples").glob("*.xml"))
MANIFEST = libvirt_manifest()
INPUTS = (EXAMPLES + test_guests() + shared_cases("virt-install")
          + [p for p in shared_cases("libvirt") if MANIFEST[p.name]["libvirt90"] == "ok"])

ADDRESS = re.compile(r"<address\s[^<>]*/>")
# Lines that only an addition by pciplan can bring: PCI controllers (and what they hold), the implicit
# devices libvirt would add, and closing tags of elements that gained an <address>.
ADDED = re.compile(
    r"\s*(<address\s[^<>]*/>"
    r"|<controller\s[^<>]*/?>|</controller>"
    r"|<model name=[^<>]*/>|<target (chassis|chassisNr)=[^<>]*/>|<target busNr=[^<>]*>|<node>\d+</node>"
    r"|<memballoon\s[^<>]*/?>|</memballoon>|<video>|<model type=[^<>]*/>|</video>"
    r"|</[A-Za-z][\w:-]*>)\s*"
)
SELF_CLOSING = re.compile(r"(\s*<[^<>/!?][^<>]*?)\s*/>\s*")
START_TAG = re.compile(r"(\s*)<([\w:-]+)((?:\s+[\w:-]+\s*=\s*(?:'[^']*'|\"[^\"]*\"))*)\s*(/?)>(.*)")
OURS = re.compile(r"\s+index\s*=\s*(?:'[^']*'|\"[^\"]*\")")  # controller indices libvirt would fill in


def same_but_ours(old: str, new: str) -> bool:
    """The same start tag, with an index that pciplan filled in and perhaps opened to take a child."""
    a, b = START_TAG.fullmatch(old), START_TAG.fullmatch(new)
    if a is None or b is None or a.group(1, 2) != b.group(1, 2) or a.group(5) != b.group(5):
        return False
    same_attributes = OURS.sub("", a.group(3)) == OURS.sub("", b.group(3))
    return same_attributes and (a.group(4) == b.group(4) or not b.group(4))


def unexplained(before: str, after: str) -> list[str]:
    """Lines of the diff that are not one of pciplan's own kinds of change. A changed line may be
    reported by the diff far from its new form, so removed and added lines are matched over the whole
    diff, not hunk by hunk."""
    a, b = before.splitlines(), after.splitlines()
    removed: list[str] = []
    added: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op != "equal":
            removed += a[i1:i2]
            added += b[j1:j2]
    bad = []
    explained = set()  # added lines that are the new form of a removed one
    for line in removed:
        if ADDRESS.fullmatch(line.strip()) or re.fullmatch(r"\s*</[\w:-]+>\s*", line):
            continue
        m = SELF_CLOSING.fullmatch(line)
        if m and m.group(1) + ">" in added:  # <x .../> gained a child
            explained.add(m.group(1) + ">")
            continue
        # an element whose stale address pciplan dropped (as libvirt does) closes itself again
        if line.rstrip().endswith(">") and line.rstrip()[:-1] + "/>" in added:
            explained.add(line.rstrip()[:-1] + "/>")
            continue
        # a closing tag that followed the last child moves to a line of its own after the new ones
        m = re.fullmatch(r"(.*?)(</[\w:-]+>)\s*", line)
        if m and m.group(1) in added and any(x.strip() == m.group(2) for x in added):
            explained.add(m.group(1))
            continue
        twins = [x for x in added if same_but_ours(line, x)]
        if twins:
            explained.add(twins[0])
            continue
        # an element written on one line that gained an <address> inside
        if any(ADDRESS.sub("", x) == ADDRESS.sub("", line) for x in added if ADDRESS.search(x)):
            continue
        bad.append(f"- {line}")
    for line in added:
        if line in explained or ADDED.fullmatch(line):
            continue
        if any(ADDRESS.sub("", line) == ADDRESS.sub("", x) for x in removed):
            continue
        bad.append(f"+ {line}")
    return bad


@pytest.mark.parametrize("source", INPUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_diff_shows_only_pciplans_changes(source: Path) -> None:
    data = source.read_bytes()
    tree, _ = plan_bytes(data)
    out = text(tree)
    assert unexplained(data.decode(), out.decode()) == []
    # and a planned file comes back byte for byte
    again, _ = plan_bytes(out)
    assert text(again) == out


def test_the_diff_check_catches_rewrites() -> None:
    """The checker above is not blind: requoting, reindenting or touching metadata is reported."""
    before = "<domain type='kvm'>\n  <metadata><x:a xmlns:x=\"urn:x\" b=\"1\"/></metadata>\n</domain>\n"
    assert unexplained(before, before.replace('b="1"', "b='1'")) != []
    assert unexplained(before, before.replace("  <metadata>", "    <metadata>")) != []
    assert unexplained(before, before.replace("kvm", "qemu")) == ["- <domain type='kvm'>",
                                                                  "+ <domain type='qemu'>"]
    # what pciplan does is accepted
    added = before.replace("</domain>", "  <controller type='pci' index='1'/>\n</domain>")
    assert unexplained(before, added) == []


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
    assert unexplained(crlf.decode("iso-8859-1"), out.decode("iso-8859-1")) == []


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
