"""Safe reading and atomic writing of domain XML."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from lxml import etree


class InputError(Exception):
    """Bad input: the message is one line naming the element and the reason (exit 2)."""


def _parser() -> etree.XMLParser:
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


def parse_domain_bytes(data: bytes, source: str = "<input>") -> etree._ElementTree:
    """Parse domain XML bytes; raise InputError on anything that is not a <domain>."""
    if b"<!ENTITY" in data:
        raise InputError(f"{source}: entity declarations are not accepted in domain XML")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise InputError(f"{source}: not well-formed XML: {exc}") from None
    if root.tag != "domain":
        raise InputError(f"{source}: root element is <{root.tag}>, expected <domain>")
    return etree.ElementTree(root)


def parse_domain(path: str | Path) -> etree._ElementTree:
    """Parse a domain XML file, or standard input when path is '-'."""
    if str(path) == "-":
        return parse_domain_bytes(sys.stdin.buffer.read(), "<stdin>")
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_domain_bytes(data, str(path))


@dataclass
class Document:
    """A parsed domain with the input's surface style, so output differs only where we changed it."""

    tree: etree._ElementTree
    quote: str = "'"  # libvirt writes attributes in single quotes
    declaration: str = ""  # the input's <?xml ...?> line, if it had one


_START_TAG = re.compile(r"<!--.*?-->|<!\[CDATA\[.*?\]\]>|<(?![!?/])[^<>]*>", re.S)
_ATTR = re.compile(r'(\s[^\s=]+)="([^"]*)"')


def _requote(tag: str) -> str:
    if tag.startswith(("<!--", "<![CDATA[")):
        return tag
    return _ATTR.sub(lambda m: f"{m.group(1)}='{m.group(2).replace(chr(39), '&apos;')}'", tag)


def serialize(tree: etree._ElementTree, quote: str = "'", declaration: str = "") -> bytes:
    """The document as text; attributes in the given quote character (lxml always writes ")."""
    # lxml drops the line breaks between top-level nodes (comments before <domain>): put them back.
    root = tree.getroot()
    before = list(reversed(list(root.itersiblings(preceding=True))))
    after = list(root.itersiblings())
    parts = [etree.tostring(n, encoding="unicode", with_tail=False) for n in before]
    parts.append(etree.tostring(root, encoding="unicode", with_tail=False))
    parts += [etree.tostring(n, encoding="unicode", with_tail=False) for n in after]
    text = "\n".join(parts)
    if quote == "'":
        text = _START_TAG.sub(lambda m: _requote(m.group(0)), text)
    return (declaration + text).encode() + b"\n"


def _style(data: bytes) -> tuple[str, str]:
    head = data.lstrip()
    declaration = ""
    if head.startswith(b"<?xml"):
        end = head.index(b"?>") + 2
        declaration = head[:end].decode() + "\n"
    quote = "'" if data.count(b"='") >= data.count(b'="') else '"'
    return quote, declaration


def load_domain(path: str | Path) -> Document:
    """Parse a domain XML file (or '-' for standard input), remembering its quoting and declaration."""
    if str(path) == "-":
        data, source = sys.stdin.buffer.read(), "<stdin>"
    else:
        try:
            data, source = Path(path).read_bytes(), str(path)
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    quote, declaration = _style(data)
    return Document(parse_domain_bytes(data, source), quote, declaration)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write data to path atomically: a temporary file in the same folder, fsync, rename."""
    p = Path(path)
    directory = p.parent if str(p.parent) else Path(".")
    tmp = None
    # Ctrl-C or a terminate() in the middle would leave the temporary file behind: hold them until the
    # file is in place (they are delivered right after).
    blocked = threading.current_thread() is threading.main_thread()
    if blocked:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if p.exists():
            os.chmod(tmp, p.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
