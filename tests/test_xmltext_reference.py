"""The byte-exact writer (planner/xml/xmltext.py) against its former self (tests/xmltext_reference.py):
the same documents, tied to their text by each, edited the same random ways (attributes set, changed and
removed, children added, moved and removed, texts changed), must be written to the same bytes. The
documents: the examples, the shared corpus, generated guests and hand-written ones with the XML that
libvirt's never has (comments, CDATA, processing instructions, a DOCTYPE, namespaces, attributes holding
'>' and '/', odd spacing)."""

from __future__ import annotations

import random
from collections import Counter

import xmltext_reference as reference
from conftest import REPO, shared_cases
from fleetgen import typical_guest
from lxml import etree

from planner.xml import xmltext
from planner.xml.xmlio import xml_parser

ODD = [
    "<?xml version='1.0' encoding='UTF-8'?>\n<!DOCTYPE domain>\n<!-- head -->\n<domain type = 'qemu' >\n"
    "  <name><![CDATA[a < b]]>&#x41;</name>\n  <?pi some data?>\n  <devices>\n"
    "    <disk type=\"file\" device='disk'><source file='/a>b/c.img'/>"
    "<target dev=\"vda\"  bus='virtio' /></disk>\n"
    "    <!-- a comment -->\n    <interface type='user'/>\n  </devices>\n</domain>\n<!-- tail -->",
    "<domain xmlns:x='urn:x' type='kvm'><name>n</name>"
    "<metadata><x:app x:v='1'><x:k>t</x:k></x:app></metadata>"
    "<devices><controller type='pci' index='0' model='pcie-root'/><interface type='user'>"
    "<model type='virtio'/></interface></devices></domain>",
    "<domain type='kvm'><name>g</name>\n  <devices><emulator>/x</emulator>\n    <disk type='file'>"
    "<target dev='vda'/></disk>\n  </devices>\n</domain>",
    "<domain type='kvm'>\r\n\t<name>crlf</name>\r\n\t<devices>\r\n\t\t<disk type='file'>"
    "\r\n\t\t\t<target dev='vda'/>\r\n\t\t</disk>\r\n\t</devices>\r\n</domain>\r\n",
]


def _documents() -> list[tuple[str, bytes]]:
    docs = [(p.name, p.read_bytes()) for p in sorted((REPO / "examples").glob("*.xml"))]
    docs += [(f"{folder}/{p.name}", p.read_bytes()) for folder in ("virt-install", "libvirt")
             for p in shared_cases(folder)]
    rng = random.Random(3)
    docs += [(f"fleet-{n}", typical_guest(n, rng).encode()) for n in range(60)]
    docs += [(f"odd-{i}", d.encode()) for i, d in enumerate(ODD)]
    return docs


def _tree(data: bytes, module) -> tuple[etree._ElementTree, object]:
    text, encoding, bom = module.decode(data)
    root = etree.fromstring(data, xml_parser())
    return etree.ElementTree(root), module.source_map(text, root, encoding, bom)


def _edit(root: etree._Element, rng: random.Random, met: Counter) -> None:
    """One random edit, chosen by rng alone (the same on both trees)."""
    elements = [e for e in root.iter() if isinstance(e.tag, str)]
    el = elements[rng.randrange(len(elements))]
    kind = rng.randrange(7)
    if kind == 0:
        el.set(rng.choice(["type", "bus", "new", "index"]), rng.choice(["pci", "0x01", "a<b>'\"&", ""]))
    elif kind == 1 and el.attrib:
        del el.attrib[rng.choice(sorted(el.attrib.keys()))]
    elif kind == 2:
        new = etree.SubElement(el, "address", type="pci", bus=f"0x{rng.randrange(256):02x}")
        if rng.random() < 0.3:
            etree.SubElement(new, "child", k="v").text = rng.choice([None, " ", "t&<"])
    elif kind == 3 and el.getparent() is not None and len(el):
        el.remove(el[rng.randrange(len(el))])
    elif kind == 4:
        el.text = rng.choice([None, "", "  \n", "text"])
    elif kind == 5 and el.getparent() is not None:
        other = elements[rng.randrange(len(elements))]
        if other is not el and el not in other.iterancestors() and other.getparent() is not None:
            other.addnext(el) if rng.random() < 0.5 else other.addprevious(el)
    elif kind == 6 and len(el):
        el[rng.randrange(len(el))].tail = rng.choice([None, "\n    ", "x"])
    met[kind] += 1


def test_the_writer_writes_what_its_former_self_wrote() -> None:
    met: Counter = Counter()
    tied = 0
    docs = _documents()  # without ../shared (a lone clone): the examples, generated and odd ones alone
    for name, data in docs:
        for seed in range(8):
            new_tree, new_source = _tree(data, xmltext)
            old_tree, old_source = _tree(data, reference)
            tied += new_source is not None
            assert (new_source is None) == (old_source is None), name
            got = xmltext.write_tree(new_tree, new_source)
            assert got == reference.write_tree(old_tree, old_source), name
            rng_new, rng_old = random.Random(seed), random.Random(seed)
            for _ in range(seed):
                _edit(new_tree.getroot(), rng_new, met)
                _edit(old_tree.getroot(), rng_old, Counter())
            got = xmltext.write_tree(new_tree, new_source)
            assert got == reference.write_tree(old_tree, old_source), (name, seed)
    # every document tied to its text (each of the 8 times), and every kind of edit met often
    assert len(docs) > 60 and tied == 8 * len(docs), (len(docs), tied)
    assert all(met[k] > 100 for k in range(7)), met


def test_children_added_everywhere_are_written_as_before() -> None:
    """Every element given a new last child (what planning does to each device, and to <devices>), and
    every other element a new first one: each layout the documents have, glued first children included."""
    for name, data in _documents():
        for first in (False, True):
            trees = [_tree(data, module) for module in (xmltext, reference)]
            for tree, _source in trees:
                for i, el in enumerate([e for e in tree.getroot().iter() if isinstance(e.tag, str)]):
                    child = etree.Element("address", type="pci", slot=f"0x{i:02x}")
                    el.insert(0, child) if first and i % 2 else el.append(child)
            (new_tree, new_source), (old_tree, old_source) = trees
            got = xmltext.write_tree(new_tree, new_source)
            assert got == reference.write_tree(old_tree, old_source), (name, first)
