"""Safe reading and atomic writing of domain XML."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

from lxml import etree

from planner.xml.xmltext import Source, copy_source, decode, source_map, write_tree


class InputError(Exception):
    """Bad input: the message is one line naming the element and the reason (exit 2)."""


def xml_parser() -> etree.XMLParser:
    # No entity expansion, no DTD or network access, no huge trees; keep comments and layout.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_blank_text=False,
        remove_comments=False,
    )


def remove_element(el: etree._Element) -> None:
    """Remove an element, keeping the indentation of what follows it."""
    parent = el.getparent()
    if parent is None:
        return
    prev = el.getprevious()
    if prev is not None:
        prev.tail = el.tail
    else:
        parent.text = el.tail
    parent.remove(el)


class DomainTree(etree._ElementTree):
    """A parsed domain that remembers the text it came from, so that serialize() writes the input's own
    bytes wherever pciplan changed nothing."""

    source: Source | None = None

    def __deepcopy__(self, memo: dict) -> DomainTree:
        plain = etree._ElementTree.__deepcopy__(self, memo)
        tree = DomainTree()
        tree._setroot(plain.getroot())
        tree.source = copy_source(self.source, self.getroot(), tree.getroot())
        return tree


def parse_domain_bytes(data: bytes, source: str = "<input>") -> DomainTree:
    """Parse domain XML bytes; raise InputError on anything that is not a <domain>."""
    tree = parse_xml_bytes(data, source)
    if tree.getroot().tag != "domain":
        raise InputError(f"{source}: root element is <{tree.getroot().tag}>, expected <domain>")
    return tree


def parse_xml_bytes(data: bytes, source: str = "<input>") -> DomainTree:
    """Parse any libvirt XML document (a domain, or one device for attach), safely."""
    try:
        text, encoding, bom = decode(data)
    except (UnicodeDecodeError, LookupError) as exc:
        raise InputError(f"{source}: cannot decode: {exc}") from None
    if "<!ENTITY" in text:
        raise InputError(f"{source}: entity declarations are not accepted in domain XML")
    try:
        root = etree.fromstring(data, xml_parser())
    except etree.XMLSyntaxError as exc:
        raise InputError(f"{source}: not well-formed XML: {exc}") from None
    tree = DomainTree()
    tree._setroot(root)
    tree.source = source_map(text, root, encoding, bom)
    return tree


def read_input(path: str | Path) -> tuple[bytes, str]:
    """The bytes of a file, or of standard input when path is '-', and a name for messages."""
    if str(path) == "-":
        return sys.stdin.buffer.read(), "<stdin>"
    try:
        return Path(path).read_bytes(), str(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def parse_domain(path: str | Path) -> DomainTree:
    """Parse a domain XML file, or standard input when path is '-'."""
    return parse_domain_bytes(*read_input(path))


def serialize(tree: etree._ElementTree) -> bytes:
    """The document as bytes. For a tree parsed here, everything pciplan did not change is the input's
    own bytes (quoting, attribute order, whitespace, comments, declaration, encoding); what it added or
    changed is laid out by pciplan (planner/xml/xmltext.py), never by the XML library's serializer."""
    return write_tree(tree, getattr(tree, "source", None))


_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>\s*")


def serialize_text(tree: etree._ElementTree) -> str:
    """The document as a string for APIs that take one (libvirt's defineXML, the greedy): decoded
    from the input's encoding, without the XML declaration that named it."""
    source = getattr(tree, "source", None)
    encoding = source.encoding if source is not None else "utf-8"
    text = serialize(tree)[len(source.bom) if source is not None else 0:].decode(encoding)
    return _DECLARATION.sub("", text, count=1)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write data to path atomically: a temporary file in the same folder, fsync, rename. A target that
    exists but is no regular file (/dev/null, a FIFO) is written through: renaming over it would
    replace the device node."""
    # Ctrl-C or a terminate() in the middle would leave the temporary file behind: hold them until the
    # file is in place (they are delivered right after).
    blocked = threading.current_thread() is threading.main_thread()
    if blocked:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        tmp = stage_file(path, data)
        if tmp is not None:
            put_in_place(tmp, path)
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def stage_file(path: str | Path, data: bytes) -> str | None:
    """write_atomic's first half, the slow one: data in a new temporary file beside path, synced to disk;
    returns its name for put_in_place. A target that exists but is no regular file is written through
    (returns None). Raises OSError with no temporary file left."""
    p = Path(path)
    if p.exists() and not p.is_file():
        with open(p, "wb") as fh:
            fh.write(data)
        return None
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def put_in_place(tmp: str, path: str | Path) -> None:
    """write_atomic's second half: the temporary file stage_file wrote replaces path (with path's
    permissions if it exists). Raises OSError with the temporary file removed and path untouched."""
    p = Path(path)
    try:
        if p.exists():
            os.chmod(tmp, p.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
