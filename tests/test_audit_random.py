"""Mutations of planned files that no catalogue names: hypothesis draws where and how to change a planned
file, and `pciplan diff`'s audit (planner/commands/audit.py) must report every one. (Apart from
tests/test_minimal_diff.py: CI runs that file at the lowest dependency versions, without hypothesis.)"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from conftest import GUESTS, REPO
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_minimal_diff import HAND, PINNED, SERVER, changes, planned

# ---------------------------------------------------------------- mutations the catalogue never names

AUDITED = [SERVER, HAND, PINNED, GUESTS / "q35-ovirt-vdsm.xml", GUESTS / "pc-pci-bridge-pinned.xml",
           REPO / "examples" / "aarch64-mmio.xml", GUESTS / "q35-kubevirt-converter.xml"]


def original_tags(before: str, after: str) -> list[re.Match]:
    """Start tags with attributes in the planned text on lines that are the input's own, unchanged (the
    lines of the longest common subsequence, found without the audit's own pairing)."""
    a, b = before.split("\n"), after.split("\n")
    kept: set[int] = set()
    for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        kept.update(range(block.b, block.b + block.size))
    return [m for m in re.finditer(r"<[\w:-]+(\s+[\w:-]+\s*=\s*(\"[^\"]*\"|'[^']*'))+\s*/?>", after)
            if after.count("\n", 0, m.start()) in kept]


ATTRIBUTE = re.compile(r"(\s+)([\w:-]+)(\s*=\s*)([\"'])([^\"']*)\4")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(guest=st.sampled_from(AUDITED), pick=st.integers(min_value=0), attr_pick=st.integers(min_value=0),
       kind=st.sampled_from(["value", "delete", "add", "rename", "requote", "line", "text", "swap"]),
       new=st.text(alphabet="abcxyz019", min_size=1, max_size=4))
@example(guest=PINNED, pick=0, attr_pick=0, kind="value", new="1")
def test_random_changes_to_the_inputs_own_content_are_reported(guest: Path, pick: int, attr_pick: int,
                                                                kind: str, new: str) -> None:
    """Hypothesis picks a start tag that is the input's own, an attribute of it and a way to change it
    (or the line it sits on, or the text after it): whatever it draws, the audit reports it."""
    data, out = planned(guest)
    before, after = data.decode(), out.decode()
    tags = original_tags(before, after)
    tag = tags[pick % len(tags)]
    attrs = list(ATTRIBUTE.finditer(tag.group(0)))
    a = attrs[attr_pick % len(attrs)]
    s, e = tag.start() + a.start(), tag.start() + a.end()
    if kind == "value":
        mutated = after[:s] + f"{a[1]}{a[2]}{a[3]}{a[4]}{a[5]}{new}{a[4]}" + after[e:]
    elif kind == "delete":
        mutated = after[:s] + after[e:]
    elif kind == "add":
        mutated = after[:tag.start() + a.end()] + f" x-{new}='{new}'" + after[e:]
    elif kind == "rename":
        mutated = after[:s] + f"{a[1]}{a[2]}{new}{a[3]}{a[4]}{a[5]}{a[4]}" + after[e:]
    elif kind == "requote":
        q = '"' if a[4] == "'" else "'"
        mutated = after[:s] + f"{a[1]}{a[2]}{a[3]}{q}{a[5]}{q}" + after[e:]
    elif kind == "line":  # the tag's line removed
        ls = after.rfind("\n", 0, tag.start()) + 1
        le = after.find("\n", tag.end()) + 1 or len(after)
        mutated = after[:ls] + after[le:]
    elif kind == "text":  # text right after the tag
        mutated = after[:tag.end()] + new + after[tag.end():]
    else:  # the tag's line swapped with the one above it
        ls = after.rfind("\n", 0, tag.start()) + 1
        le = after.find("\n", tag.end())
        above = after.rfind("\n", 0, ls - 1) + 1
        if ls == 0 or le < 0:
            return
        mutated = after[:above] + after[ls:le] + "\n" + after[above:ls - 1] + after[le:]
    if mutated == after:
        return
    assert changes(data, mutated.encode()), (kind, tag.group(0), a.group(0))


ANY_TAG = re.compile(r"<[\w:-]+(\s+[\w:-]+\s*=\s*(\"[^\"]*\"|'[^']*'))+\s*/?>")


@settings(max_examples=150, deadline=None)
@given(guest=st.sampled_from(AUDITED), pick=st.integers(min_value=0),
       kind=st.sampled_from(["attribute", "text", "comment", "child"]),
       new=st.text(alphabet="abcxyz019", min_size=1, max_size=4))
def test_random_additions_anywhere_are_reported(guest: Path, pick: int, kind: str, new: str) -> None:
    """Hypothesis picks any start tag of the planned file, the input's own or one pciplan wrote, and adds
    to it what pciplan never writes: a foreign attribute, text, a comment or an element after it."""
    data, out = planned(guest)
    after = out.decode()
    tags = list(ANY_TAG.finditer(after))
    tag = tags[pick % len(tags)]
    end = tag.end() - (2 if tag.group(0).endswith("/>") else 1)
    addition = {"attribute": f" x-{new}='{new}'", "text": f"t{new}", "comment": f"<!--{new}-->",
                "child": f"<x-{new}/>"}[kind]
    at = end if kind == "attribute" else tag.end()
    mutated = after[:at] + addition + after[at:]
    assert changes(data, mutated.encode()), (kind, tag.group(0))
