# The former planner/xml/xmltext.py (before the speed work of issue 21), kept verbatim as the reference of
# tests/test_xmltext_reference.py: the faster writer must write what this one wrote. Do not edit.
"""Byte-exact XML text: the input's own bytes wherever the tree is unchanged, pciplan's layout elsewhere.

lxml's serializer decides whitespace, quoting and self-closing tags, and its decisions differ between
versions (4.9 glues an element inserted with addnext() to its neighbour; 5.x does not). So pciplan never
serializes with lxml. At parse time every node of the tree is tied to its span in the source text; when
writing, an unchanged subtree is copied from the source, a changed element keeps every unchanged attribute,
text and separator as written, and new elements are laid out by the rules below:
- one element per line, indented like its siblings (one indent unit deeper than an empty parent);
- attributes in the order the tree holds them, in the quote character of the element's own attributes
  (the document's majority for new elements);
- an element without children or text is written self-closing.
Only lxml's tree API is used (tags, attributes, text, tails, children), which is stable across versions.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import re
from dataclasses import dataclass, field

from lxml import etree

_TOKEN = re.compile(
    r"(?P<comment><!--.*?-->)"
    r"|(?P<cdata><!\[CDATA\[.*?\]\]>)"
    r"|(?P<pi><\?.*?\?>)"
    r"|(?P<doctype><!DOCTYPE(?:[^\[>]|\[.*?\])*>)"
    r"|(?P<end></[^\s>]+\s*>)"
    r"|(?P<start><(?P<name>[^\s/>!?]+)(?:\s+[^\s=/>]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*\s*(?P<empty>/?)>)",
    re.S,
)
_ATTR = re.compile(r"(\s+)([^\s=/>]+)(\s*=\s*)([\"'])(.*?)\4", re.S)
_ENCODING = re.compile(rb"^<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")
_XML_NS = "http://www.w3.org/XML/1998/namespace"


def _blank(s: str | None) -> bool:
    return s is None or s.strip() == ""


def _same(a: str | None, b: str | None) -> bool:
    """Equal text, where all-whitespace texts are layout and equal to each other."""
    return a == b or (a or "") == (b or "") or (_blank(a) and _blank(b))


_SPECIAL = re.compile("[&<>\n\r\t\"']")


def escape_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@functools.lru_cache(maxsize=4096)  # a document repeats the same few values ('pci', '0x0000') many times
def escape_attr(s: str, quote: str) -> str:
    if _SPECIAL.search(s) is None:  # most values: nothing to escape
        return s
    s = escape_text(s).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    return s.replace(quote, "&apos;" if quote == "'" else "&quot;")


@dataclass(slots=True)
class _Span:
    """One node of the source: where it is, and what lxml made of it at parse time."""

    start: int
    end: int
    tag_end: int = 0  # end of the start tag
    close: int | None = None  # start of the end tag; None for a self-closing tag
    name: str = ""  # the tag as written (with its prefix)
    attrib: list[tuple[str, str]] = field(default_factory=list)  # as node.items() gave them
    text: str | None = None
    tail: str | None = None
    text_raw: str = ""
    tail_raw: str = ""
    parent: etree._Element | None = None
    children: tuple = ()
    next: object = None  # the node that followed it in the source (None: it was the last child)
    inner: list[_Span] | None = None  # the spans of its children in the text (None: not an element)


@dataclass
class Source:
    """The text a tree was parsed from, and each node's span in it."""

    text: str
    encoding: str
    bom: bytes
    newline: str
    unit: str
    quote: str
    root_span: tuple[int, int]
    spans: dict = field(default_factory=dict)

    def encode(self, text: str) -> bytes:
        return self.bom + text.encode(self.encoding, errors="xmlcharrefreplace")


def decode(data: bytes) -> tuple[str, str, bytes]:
    """The text of an XML document, its encoding and its byte-order mark (kept on output)."""
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                          (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            return data[len(bom):].decode(encoding), encoding, bom
    m = _ENCODING.match(data)
    encoding = m.group(1).decode("ascii").lower() if m else "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "utf-8"
    return data.decode(encoding), encoding, b""


def _frames(text: str) -> _Span:
    """The document's nodes as spans in text (elements with the spans of their children), before
    _tie matches them with lxml's nodes."""
    top = _Span(0, len(text), inner=[])
    stack = [top]
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup  # the outer group: it closes after the groups nested in it
        if kind == "start":
            start, end = m.span()
            span = _Span(start, end, end, name=m.group("name"), inner=[])
            stack[-1].inner.append(span)
            if not m.group("empty"):
                stack.append(span)
        elif kind == "end":
            span = stack.pop()
            span.close, span.end = m.span()
        elif kind in ("comment", "pi"):
            stack[-1].inner.append(_Span(*m.span()))
    if len(stack) != 1:
        raise ValueError("unbalanced tags")
    return top


def _line_indent(text: str, pos: int) -> str:
    line = text.rfind("\n", 0, pos) + 1
    before = text[line:pos]
    return before if before.strip() == "" else ""


def _tie(text: str, span: _Span, node, parent, spans: dict) -> _Span:
    """Tie node (and what is under it) to its span from _frames, with what lxml made of it."""
    span.parent = parent
    span.text = node.text
    spans[node] = span
    inner = span.inner
    if inner is None:  # a comment or processing instruction
        return span
    kids = tuple(node)
    if len(kids) != len(inner):
        raise ValueError(f"<{span.name}>: {len(inner)} children in the text, {len(kids)} in lxml's")
    span.attrib = node.items()
    inner_end = span.close if span.close is not None else span.tag_end
    if not kids:
        span.text_raw = text[span.tag_end:inner_end]
        return span
    span.children = kids
    span.text_raw = text[span.tag_end:inner[0].start]
    last = len(kids) - 1
    for i, child in enumerate(kids):
        kid = _tie(text, inner[i], child, node, spans)
        kid.tail = child.tail
        if i < last:
            kid.tail_raw = text[kid.end:inner[i + 1].start]
            kid.next = kids[i + 1]
        else:
            kid.tail_raw = text[kid.end:inner_end]
    return span


def source_map(text: str, root: etree._Element, encoding: str, bom: bytes) -> Source | None:
    """Tie every node under root to its span in text; None if the text cannot be matched (then the
    document is written entirely in pciplan's own layout)."""
    try:
        top = _frames(text)
        elements = [f for f in top.inner if f.inner is not None]
        if len(elements) != 1 or elements[0].name.split(":")[-1] != etree.QName(root).localname:
            return None
        frame = elements[0]
        spans: dict = {}
        _tie(text, frame, root, None, spans)
    except ValueError:
        return None
    root_text = spans[root].text_raw
    unit = root_text[root_text.rfind("\n") + 1:] if "\n" in root_text and _blank(root_text) else ""
    single, double = text.count("='"), text.count('="')
    return Source(text=text, encoding=encoding, bom=bom, newline="\r\n" if "\r\n" in text else "\n",
                  unit=unit or "  ", quote="'" if single >= double else '"',
                  root_span=(frame.start, frame.end), spans=spans)


def _qname(key: str, el: etree._Element) -> str:
    """A tag or attribute key as written: '{ns}local' gets the prefix in scope."""
    if not key.startswith("{"):
        return key
    ns, local = key[1:].split("}", 1)
    if ns == _XML_NS:
        return f"xml:{local}"
    for prefix, uri in (el.nsmap or {}).items():
        if uri == ns and prefix:
            return f"{prefix}:{local}"
    return local


class Writer:
    def __init__(self, source: Source | None) -> None:
        self.src = source
        self.spans = source.spans if source is not None else {}
        self.nl = source.newline if source is not None else "\n"
        self.unit = source.unit if source is not None else "  "
        self.quote = source.quote if source is not None else "'"
        self._dirty: dict = {}
        self._quotes: dict = {}  # parent element -> the quote character its new children take

    # -- what changed ------------------------------------------------------------------------------

    def dirty(self, node) -> bool:
        changed = self._dirty.get(node)
        if changed is not None:
            return changed
        span = self.spans[node]
        if not isinstance(node.tag, str):
            changed = node.text != span.text
        else:
            changed = (tuple(node) != span.children or node.items() != span.attrib
                       or not _same(node.text, span.text))
            if not changed and span.children:  # the same children: is any of them changed, or its tail?
                spans = self.spans
                changed = any(not _same(k.tail, spans[k].tail) or self.dirty(k) for k in span.children)
        self._dirty[node] = changed
        return changed

    # -- writing -----------------------------------------------------------------------------------

    def node(self, node, indent: str) -> str:
        span = self.spans.get(node)
        if span is None:
            return self.new(node, indent)
        assert self.src is not None
        if not self.dirty(node):
            return self.src.text[span.start:span.end]
        if not isinstance(node.tag, str):
            return self.new(node, indent)
        kids = list(node)
        empty = not kids and _blank(node.text)
        parts = [self.start_tag(node, span, empty)]
        if empty:
            return parts[0]
        if not kids:
            parts.append(span.text_raw if node.text == span.text else escape_text(node.text or ""))
        elif tuple(kids) == span.children:
            parts.append(span.text_raw if _same(node.text, span.text) else escape_text(node.text))
            inner = self._child_indent(span)
            for k in kids:
                parts.append(self.node(k, inner))
                ks = self.spans[k]
                parts.append(ks.tail_raw if _same(k.tail, ks.tail) else escape_text(k.tail or ""))
        else:
            parts += self._relayout(node, span, kids)
        parts.append(self.src.text[span.close:span.end] if span.close is not None else f"</{span.name}>")
        return "".join(parts)

    def _block(self, span: _Span) -> bool:
        """Children on lines of their own (libvirt's layout), or all on the parent's line."""
        return not span.children or "\n" in span.text_raw or any("\n" in self.spans[k].tail_raw
                                                                 for k in span.children)

    def _child_indent(self, span: _Span) -> str:
        if span.children and "\n" in span.text_raw and _blank(span.text_raw):
            return span.text_raw[span.text_raw.rfind("\n") + 1:]
        return self._indent(span) + self.unit

    def _indent(self, span: _Span) -> str:
        """The whitespace on the line before the node."""
        assert self.src is not None
        return _line_indent(self.src.text, span.start)

    def _relayout(self, node: etree._Element, span: _Span, kids: list) -> list[str]:
        """Children of an element whose child list changed. Each child that was there keeps the
        whitespace that stood before it; new children follow the parent's layout (a line each, or all
        on the parent's line if that is how it was written)."""
        block = self._block(span)
        inner = self._child_indent(span)
        between = self.nl + inner if block else ""

        def leading(k, before) -> str | None:
            """The whitespace that stood before child k, if it can stand there again with `before`
            (the child now in front of it, None for the first) ahead of it."""
            ks = self.spans.get(k)
            if ks is None or ks.parent is not node:
                return None
            i = span.children.index(k)
            ws = self.spans[span.children[i - 1]].tail_raw if i else span.text_raw
            if ws == "" and block:  # glued to what stood before it: only beside the same neighbour
                return ws if before is (span.children[i - 1] if i else None) else None
            return ws if _blank(ws) and ("\n" in ws or not block) else None

        if not _blank(node.text):
            parts = [span.text_raw if node.text == span.text else escape_text(node.text or "")]
        else:
            first = leading(kids[0], None)
            kept = span.children and _blank(span.text_raw) and ("\n" in span.text_raw or not block)
            parts = [first if first is not None else span.text_raw if kept else between]
        last = self.spans[span.children[-1]].tail_raw if span.children else ""
        closing = last if span.children and _blank(last) and ("\n" in last or not block) else (
            self.nl + self._indent(span) if block else "")
        for i, k in enumerate(kids):
            parts.append(self.node(k, inner))
            following = kids[i + 1] if i + 1 < len(kids) else None
            ks = self.spans.get(k)
            if not _blank(k.tail):
                kept = ks is not None and k.tail == ks.tail
                parts.append(ks.tail_raw if kept else escape_text(k.tail or ""))
            elif following is None:
                parts.append(closing)
            elif ks is not None and ks.parent is node and ks.next is following:
                parts.append(ks.tail_raw)
            else:
                gap = leading(following, k)
                parts.append(gap if gap is not None else between)
        return parts

    def start_tag(self, el: etree._Element, span: _Span, empty: bool) -> str:
        assert self.src is not None
        raw = self.src.text[span.start:span.tag_end]
        was_empty = span.close is None
        body = raw[:-2] if was_empty else raw[:-1]
        ws = body[len(body.rstrip()):]
        body = body.rstrip()
        if el.items() != span.attrib:
            body = self._attributes(el, span, body)
        return body + (ws + "/>" if empty else ">")

    def _attributes(self, el: etree._Element, span: _Span, body: str) -> str:
        """The start tag with the element's attributes now: unchanged ones as written."""
        written = _ATTR.findall(body)
        quote = written[0][3] if written else self.quote
        before = dict(span.attrib)
        by_name = {name: (ws, name, eq, q, value) for ws, name, eq, q, value in written}
        out = [f"<{span.name}"]
        for ws, name, eq, q, value in written:
            if name == "xmlns" or name.startswith("xmlns:"):
                out.append(f"{ws}{name}{eq}{q}{value}{q}")
        for key, value in el.attrib.items():
            name = _qname(key, el)
            if name in by_name:
                ws, _, eq, q, raw_value = by_name[name]
                text = raw_value if before.get(key) == value else escape_attr(value, q)
                out.append(f"{ws}{name}{eq}{q}{text}{q}")
            else:
                out.append(f" {name}={quote}{escape_attr(value, quote)}{quote}")
        return "".join(out)

    def _quote_near(self, node: etree._Element) -> str:
        """The quote character of the nearest written ancestor that has attributes."""
        parent = node.getparent()
        while parent is not None and parent not in self.spans:  # new: its quote is that of what holds it
            parent = parent.getparent()
        quote = self._quotes.get(parent)
        if quote is None:
            quote = self._quotes[parent] = self._quote_above(parent)
        return quote

    def _quote_above(self, parent: etree._Element | None) -> str:
        assert self.src is not None or not self.spans
        while parent is not None:
            span = self.spans.get(parent)
            if span is not None:
                m = _ATTR.search(self.src.text, span.start, span.tag_end) if self.src else None
                if m is not None:
                    return m.group(4)
            parent = parent.getparent()
        return self.quote

    def new(self, node, indent: str, quote: str | None = None) -> str:
        """An element pciplan made: its own layout, whatever whitespace the tree holds. quote: the quote
        character its attributes take, if the caller knows it (_quote_near)."""
        tag = node.tag
        if not isinstance(tag, str):
            if isinstance(node, etree._Comment):
                return f"<!--{node.text or ''}-->"
            if isinstance(node, etree._ProcessingInstruction):
                return f"<?{node.target} {node.text or ''}?>" if node.text else f"<?{node.target}?>"
        name = _qname(tag, node)
        q = quote or self._quote_near(node)
        nsmap = node.nsmap  # in scope here, inherited ones included: mostly none
        attrs = ""
        if nsmap:
            parent = node.getparent()
            inherited = parent.nsmap if parent is not None else {}
            declared = [(f"xmlns:{p}" if p else "xmlns", uri) for p, uri in nsmap.items()
                        if inherited.get(p) != uri]
            attrs = "".join(f" {k}={q}{escape_attr(v, q)}{q}" for k, v in declared)
        attrs += "".join([f" {_qname(k, node) if k[0] == '{' else k}={q}{escape_attr(v, q)}{q}"
                          for k, v in node.items()])
        text = node.text
        text = None if _blank(text) else text
        if not len(node):
            return f"<{name}{attrs}/>" if text is None else f"<{name}{attrs}>{escape_text(text)}</{name}>"
        inner = indent + self.unit
        before = self.nl + inner
        parts = [f"<{name}{attrs}>", escape_text(text) if text else ""]
        spans = self.spans
        for k in node:  # a new child of a new element takes the same quote as its parent
            parts += [before, self.new(k, inner, q) if k not in spans else self.node(k, inner)]
        parts += [self.nl + indent, f"</{name}>"]
        return "".join(parts)


def copy_source(source: Source | None, old: etree._Element, new: etree._Element) -> Source | None:
    """The source map for a deep copy (new) of the tree under old: the same spans, keyed by the copy's
    nodes (the copy has the same shape, so nodes pair up in document order)."""
    if source is None:
        return None
    pairs = dict(zip(old.iter(), new.iter(), strict=True))
    spans = {}
    for o, c in pairs.items():
        span = source.spans.get(o)
        if span is not None:
            spans[c] = dataclasses.replace(
                span, parent=pairs.get(span.parent), next=pairs.get(span.next),
                children=tuple(pairs.get(k) for k in span.children))
    return dataclasses.replace(source, spans=spans)


def write_tree(tree: etree._ElementTree, source: Source | None) -> bytes:
    """The document's bytes: the source's bytes where nothing changed (see the module docstring)."""
    root = tree.getroot()
    writer = Writer(source)
    if source is not None and root in source.spans:
        start, end = source.root_span
        text = source.text[:start] + writer.node(root, _line_indent(source.text, start)) + source.text[end:]
        return source.encode(text)
    before = list(reversed(list(root.itersiblings(preceding=True))))
    after = list(root.itersiblings())
    parts = [writer.node(n, "") for n in [*before, root, *after]]
    return ("\n".join(parts) + "\n").encode()
