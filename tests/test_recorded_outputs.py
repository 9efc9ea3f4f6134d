"""Differential test against the recorded outputs (tests/recorded.py): re-plan the corpus and demand
the same written bytes, solver status, exit status and message as before the speed work.

CI plans a sample (every bundled example and every sixth other guest); the full corpus runs with
PCIPLAN_RECORDED_FULL=1, or as `python tests/recorded.py`."""

from __future__ import annotations

import os

import pytest
from recorded import corpus, load, record_one

FULL = os.environ.get("PCIPLAN_RECORDED_FULL") == "1"
WANT = load()["cases"]
CASES = [(name, data) for i, (name, data) in enumerate(corpus())
         if FULL or name.startswith("examples/") or i % 6 == 0]


def test_the_record_covers_the_corpus():
    names = {name for name, _ in corpus(shared=False)}
    assert names <= set(WANT), sorted(names - set(WANT))[:5]
    assert len(names) > 300


@pytest.mark.parametrize(("name", "data"), CASES, ids=[name for name, _ in CASES])
def test_same_output_as_recorded(name, data):
    want = WANT[name]
    got = record_one(name, data)
    assert got["input"] == want["input"], f"{name}: the generator changed, not the planner"
    assert got == want
