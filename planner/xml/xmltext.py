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

# Every token starts with '<'; start tags first (the most frequent). A start tag's attributes are skipped
# as runs outside quotes and quoted values (a value may hold '>'), which is all a well-formed tag (lxml
# parsed it already) can hold.
_TOKEN = re.compile(
    r"<(?:(?P<start>(?P<name>[^\s/>!?]+)[^>\"'/]*(?:(?:\"[^\"]*\"|'[^']*')[^>\"'/]*)*(?P<empty>/?)>)"
    r"|(?P<end>/[^\s>]+\s*>)"
    r"|(?P<comment>!--.*?-->)"
    r"|(?P<cdata>!\[CDATA\[.*?\]\]>)"
    r"|(?P<pi>\?.*?\?>)"
    r"|(?P<doctype>!DOCTYPE(?:[^\[>]|\[.*?\])*>))",
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


class _Span:
    """One node of the source: where it is, and what lxml made of it at parse time. (A plain class: a
    document makes one per node, and a dataclass's __init__ costs twice as much.)"""

    __slots__ = ("start", "end", "tag_end", "close", "name", "attrib", "text", "tail", "text_raw", "tail_raw",
                 "parent", "children", "next", "inner")

    def __init__(self, start: int, end: int, tag_end: int = 0, name: str = "",
                 inner: list[_Span] | None = None) -> None:
        self.start = start
        self.end = end
        self.tag_end = tag_end  # end of the start tag
        self.close: int | None = None  # start of the end tag; None for a self-closing tag
        self.name = name  # the tag as written (with its prefix)
        self.attrib: list[tuple[str, str]] = []  # as node.items() gave them
        self.text: str | None = None
        self.tail: str | None = None
        self.text_raw = ""
        self.tail_raw = ""
        self.parent: etree._Element | None = None
        self.children: tuple = ()
        self.next: object = None  # the node that followed it in the source (None: it was the last child)
        self.inner = inner  # the spans of its children in the text (None: not an element)

    def copy(self) -> _Span:
        new = _Span.__new__(_Span)
        for name in _Span.__slots__:
            setattr(new, name, getattr(self, name))
        return new


@functools.lru_cache(maxsize=4096)  # pciplan writes the same few attribute lists (addresses, controllers)
def _plain_attributes(items: tuple[tuple[str, str], ...], quote: str) -> str | None:
    """' name=quote value quote' for each attribute; None if one has a namespace (its prefix depends on
    the element's place: _qname)."""
    out = []
    for key, value in items:
        if key[0] == "{":
            return None
        out.append(f" {key}={quote}{escape_attr(value, quote)}{quote}")
    return "".join(out)


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
    inner = top.inner
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup  # the outer group: it closes after the groups nested in it
        if kind == "start":
            start, end = m.span()
            span = _Span(start, end, end, m.group("name"), [])
            inner.append(span)
            if not m.group("empty"):
                stack.append(span)
                inner = span.inner
        elif kind == "end":
            if len(stack) == 1:
                raise ValueError("unbalanced tags")
            span = stack.pop()
            span.close, span.end = m.span()
            inner = stack[-1].inner
        elif kind == "comment" or kind == "pi":
            inner.append(_Span(*m.span()))
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
    prev = None
    for kid, child in zip(inner, kids, strict=True):
        if prev is not None:  # the text between the previous child's end and this one's start
            prev.tail_raw = text[prev.end:kid.start]
            prev.next = child
        if kid.inner:
            _tie(text, kid, child, node, spans)
        else:  # a leaf, comment or processing instruction: what _tie does for one, without the call
            kid.parent = node
            kid.text = child.text
            spans[child] = kid
            if kid.inner is not None:
                if len(child):
                    raise ValueError(f"<{kid.name}>: no children in the text, {len(child)} in lxml's")
                kid.attrib = child.items()
                kid.text_raw = text[kid.tag_end:kid.close if kid.close is not None else kid.tag_end]
        kid.tail = child.tail
        prev = kid
    prev.tail_raw = text[prev.end:inner_end]
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
        self._kids: dict = {}  # element -> its children, as dirty() found them
        self._items: dict = {}  # element -> its attributes, where dirty() read them
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
            children = span.children
            kids = tuple(node) if children or len(node) else ()  # len(): a leaf that stayed one
            items = None
            changed = kids != children
            if not changed:
                items = node.items()
                changed = items != span.attrib or not _same(node.text, span.text)
            if not changed and kids:  # the same children: is any of them changed, or its tail?
                spans = self.spans
                changed = any(not _same(k.tail, spans[k].tail) or self.dirty(k) for k in kids)
            if changed:  # node() and start_tag() take them from here
                self._kids[node] = kids
                if items is not None:
                    self._items[node] = items
        self._dirty[node] = changed
        return changed

    # -- writing -----------------------------------------------------------------------------------

    def node(self, node, indent: str) -> str:
        span = self.spans.get(node)
        if span is None:
            return self.new(node, indent)
        assert self.src is not None
        changed = self._dirty.get(node)  # known if the parent's dirty() asked already
        if not (self.dirty(node) if changed is None else changed):
            return self.src.text[span.start:span.end]
        if not isinstance(node.tag, str):
            return self.new(node, indent)
        kids = self._kids[node]
        text = node.text
        empty = not kids and (text is None or text.strip() == "")
        start = self.start_tag(node, span, empty)
        if empty:
            return start
        parts = [start]
        if not kids:
            parts.append(span.text_raw if text == span.text else escape_text(text or ""))
        elif kids == span.children:
            parts.append(span.text_raw if _same(text, span.text) else escape_text(text))
            inner = self._child_indent(span)
            spans = self.spans
            for k in kids:
                parts.append(self.node(k, inner))
                ks = spans[k]
                parts.append(ks.tail_raw if _same(k.tail, ks.tail) else escape_text(k.tail or ""))
        else:
            self._relayout(node, span, kids, parts)
        parts.append(self.src.text[span.close:span.end] if span.close is not None else f"</{span.name}>")
        return "".join(parts)

    def _block(self, span: _Span) -> bool:
        """Children on lines of their own (libvirt's layout), or all on the parent's line."""
        if not span.children or "\n" in span.text_raw:
            return True
        spans = self.spans
        return any("\n" in spans[k].tail_raw for k in span.children)

    def _child_indent(self, span: _Span) -> str:
        if span.children and "\n" in span.text_raw and _blank(span.text_raw):
            return span.text_raw[span.text_raw.rfind("\n") + 1:]
        return self._indent(span) + self.unit

    def _indent(self, span: _Span) -> str:
        """The whitespace on the line before the node."""
        assert self.src is not None
        return _line_indent(self.src.text, span.start)

    def _relayout(self, node: etree._Element, span: _Span, kids: tuple, parts: list[str]) -> None:
        """Children of an element whose child list changed, onto parts. Each child that was there keeps
        the whitespace that stood before it; new children follow the parent's layout (a line each, or all
        on the parent's line if that is how it was written)."""
        block = self._block(span)
        inner = self._child_indent(span)
        between = self.nl + inner if block else ""
        spans = self.spans
        children = span.children
        n = len(children)
        if n and len(kids) > n and kids[:n] == children and _blank(node.text):
            self._appended(node, span, kids, parts, block, inner, between)
            return

        def leading(k, before) -> str | None:
            """The whitespace that stood before child k, if it can stand there again with `before`
            (the child now in front of it, None for the first) ahead of it."""
            ks = spans.get(k)
            if ks is None or ks.parent is not node:
                return None
            i = children.index(k)
            ws = spans[children[i - 1]].tail_raw if i else span.text_raw
            if ws == "" and block:  # glued to what stood before it: only beside the same neighbour
                return ws if before is (children[i - 1] if i else None) else None
            return ws if _blank(ws) and ("\n" in ws or not block) else None

        if not _blank(node.text):
            parts.append(span.text_raw if node.text == span.text else escape_text(node.text or ""))
        else:
            first = leading(kids[0], None)
            kept = children and _blank(span.text_raw) and ("\n" in span.text_raw or not block)
            parts.append(first if first is not None else span.text_raw if kept else between)
        last = spans[children[-1]].tail_raw if children else ""
        closing = last if children and _blank(last) and ("\n" in last or not block) else (
            self.nl + self._indent(span) if block else "")
        write = self.node
        count = len(kids)
        quote = None  # the quote of node's new children (_quote_near), found at the first
        for i, k in enumerate(kids, 1):
            ks = spans.get(k)
            if ks is None:
                if quote is None:
                    quote = self._quote_of(node)
                parts.append(self.new(k, inner, quote))
            else:
                parts.append(write(k, inner))
            tail = k.tail
            if tail is not None and tail.strip() != "":
                kept = ks is not None and tail == ks.tail
                parts.append(ks.tail_raw if kept else escape_text(tail))
            elif i == count:
                parts.append(closing)
            elif ks is not None and ks.parent is node and ks.next is kids[i]:
                parts.append(ks.tail_raw)
            else:
                gap = leading(kids[i], k)
                parts.append(gap if gap is not None else between)

    def _appended(self, node: etree._Element, span: _Span, kids: tuple, parts: list[str], block: bool,
                  inner: str, between: str) -> None:
        """_relayout where children were only added after the last one there was (a device given its
        <address>, <devices> given controllers), and the element has no text: what _relayout writes
        then, without asking where each child stood. The children that were there keep their gaps; the
        one before the first new child, and those between new ones, are `between`."""
        spans = self.spans
        children = span.children
        n = len(children)
        ws = span.text_raw
        parts.append(ws if ws == "" or (_blank(ws) and ("\n" in ws or not block)) else between)
        last = spans[children[-1]].tail_raw
        closing = last if _blank(last) and ("\n" in last or not block) else (
            self.nl + self._indent(span) if block else "")
        write = self.node
        text = self.src.text if self.src is not None else ""
        known = self._dirty
        for i, k in enumerate(children, 1):
            ks = spans[k]
            if (k not in known and not ks.children and ks.inner is not None and isinstance(k.tag, str)
                    and not len(k) and k.items() == ks.attrib and _same(k.text, ks.text)):
                parts.append(text[ks.start:ks.end])  # a leaf as it was: dirty() and node() inline
            else:
                parts.append(write(k, inner))
            tail = k.tail
            if tail is not None and tail.strip() != "":
                parts.append(ks.tail_raw if tail == ks.tail else escape_text(tail))
            else:  # the gap it had before its old neighbour; the new child after the last takes `between`
                parts.append(ks.tail_raw if i < n else between)
        count = len(kids)
        quote = None  # the quote of node's new children (_quote_near), found at the first
        for i in range(n, count):
            k = kids[i]
            ks = spans.get(k)  # a child that was elsewhere, if any
            if ks is None:
                if quote is None:
                    quote = self._quote_of(node)
                parts.append(self.new(k, inner, quote))
            else:
                parts.append(write(k, inner))
            tail = k.tail
            if tail is not None and tail.strip() != "":
                parts.append(ks.tail_raw if ks is not None and tail == ks.tail else escape_text(tail))
            else:
                parts.append(closing if i + 1 == count else between)

    def start_tag(self, el: etree._Element, span: _Span, empty: bool) -> str:
        assert self.src is not None
        raw = self.src.text[span.start:span.tag_end]
        was_empty = span.close is None
        body = raw[:-2] if was_empty else raw[:-1]
        stripped = body.rstrip()
        ws = body[len(stripped):]
        body = stripped
        items = self._items.get(el)
        if items is None:
            items = el.items()
        if items != span.attrib:
            body = self._attributes(el, span, body, items)
        return body + (ws + "/>" if empty else ">")

    def _attributes(self, el: etree._Element, span: _Span, body: str, items: list) -> str:
        """The start tag with the element's attributes now (items): unchanged ones as written."""
        written = _ATTR.findall(body)
        quote = written[0][3] if written else self.quote
        before = dict(span.attrib)
        by_name = {name: (ws, name, eq, q, value) for ws, name, eq, q, value in written}
        out = [f"<{span.name}"]
        for ws, name, eq, q, value in written:
            if name == "xmlns" or name.startswith("xmlns:"):
                out.append(f"{ws}{name}{eq}{q}{value}{q}")
        for key, value in items:
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
        return self._quote_of(parent)

    def _quote_of(self, parent: etree._Element | None) -> str:
        """The quote character parent's new children take (_quote_above, once per parent)."""
        quote = self._quotes.get(parent)
        if quote is None:
            quote = self._quotes[parent] = self._quote_above(parent)
        return quote

    def _quote_above(self, parent: etree._Element | None) -> str:
        assert self.src is not None or not self.spans
        while parent is not None:
            span = self.spans.get(parent)
            if span is not None and self.src is not None:
                # the quote of its first attribute: the first '=' in a start tag is that attribute's
                # (a name holds none), its quote the first character after it that is not a space
                text = self.src.text
                eq = text.find("=", span.start, span.tag_end)
                if eq >= 0:
                    return text[eq + 1:span.tag_end].lstrip()[0]
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
        else:
            name = _qname(tag, node) if tag[0] == "{" else tag
        q = quote or self._quote_near(node)
        nsmap = node.nsmap  # in scope here, inherited ones included: mostly none
        attrs = ""
        if nsmap:
            parent = node.getparent()
            inherited = parent.nsmap if parent is not None else {}
            declared = [(f"xmlns:{p}" if p else "xmlns", uri) for p, uri in nsmap.items()
                        if inherited.get(p) != uri]
            attrs = "".join(f" {k}={q}{escape_attr(v, q)}{q}" for k, v in declared)
        items = node.items()
        if items:
            plain = _plain_attributes(tuple(items), q)
            attrs += plain if plain is not None else "".join(
                [f" {_qname(k, node) if k[0] == '{' else k}={q}{escape_attr(v, q)}{q}" for k, v in items])
        text = node.text
        if text is not None and text.strip() == "":
            text = None
        if not len(node):
            return f"<{name}{attrs}/>" if text is None else f"<{name}{attrs}>{escape_text(text)}</{name}>"
        inner = indent + self.unit
        before = self.nl + inner
        parts = [f"<{name}{attrs}>", escape_text(text) if text else ""]
        spans = self.spans
        for k in node:  # a new child of a new element takes the same quote as its parent
            parts.append(before)
            if k in spans:
                parts.append(self.node(k, inner))
                continue
            tag = k.tag
            if isinstance(tag, str) and tag[0] != "{" and not len(k) and not k.nsmap:
                # what new() writes for a plain leaf (a <model>, <target> or <address>), without the call
                items = k.items()
                plain = _plain_attributes(tuple(items), q) if items else ""
                if plain is not None:
                    text = k.text
                    parts.append(f"<{tag}{plain}/>" if text is None or text.strip() == ""
                                 else f"<{tag}{plain}>{escape_text(text)}</{tag}>")
                    continue
            parts.append(self.new(k, inner, q))
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
            copied = spans[c] = span.copy()
            copied.parent, copied.next = pairs.get(span.parent), pairs.get(span.next)
            copied.children = tuple(pairs.get(k) for k in span.children)
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
