"""The pipeline flows one way: no stage writes into an earlier stage's objects. prepare works on its
own copy of the Problem and leaves the document to render; solve and unfold leave the Prepared as
prepare made it. Problem and Prepared are frozen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import GUESTS, REPO, disks, nics
from lxml import etree
from test_device_constraints import numa_guest

from planner.facts.options import PlanOptions
from planner.pipeline.layout import unfold
from planner.pipeline.prepare import prepare
from planner.pipeline.rules import read_with_rules
from planner.pipeline.solver import solve
from planner.pipeline.solver.cpmodel import CpSolver
from planner.xml.xmlio import parse_domain_bytes


def snapshot(obj: object, seen: frozenset[int] = frozenset()) -> object:
    """Everything a stage could change, comparable: dataclass fields, containers, and elements by
    identity and text (the document itself included)."""
    if id(obj) in seen:
        return ("cycle", type(obj).__name__)
    seen = seen | {id(obj)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (type(obj).__name__, tuple((f.name, snapshot(getattr(obj, f.name), seen))
                                          for f in dataclasses.fields(obj)))
    if isinstance(obj, etree._ElementTree):
        return ("document", etree.tostring(obj))
    if isinstance(obj, etree._Element):
        return ("element", id(obj), etree.tostring(obj))
    if isinstance(obj, dict):
        return ("dict", tuple((k, snapshot(v, seen)) for k, v in obj.items()))
    if isinstance(obj, set | frozenset):
        return ("set", tuple(sorted(repr(x) for x in obj)))
    if isinstance(obj, list | tuple):
        return (type(obj).__name__, tuple(snapshot(x, seen) for x in obj))
    return obj


def _cases(guest_xml) -> list[tuple[str, bytes, PlanOptions]]:
    """Guests that make prepare do the most: --replan (controllers dropped, addresses lost), numa
    rules (expander buses added), bus=mmio (devices leave PCI), and given layouts."""
    out = [(p.name, p.read_bytes(), PlanOptions(replan=replan))
           for p in sorted((REPO / "tests" / "golden").glob("*.xml")) for replan in (False, True)]
    out += [(p.name, p.read_bytes(), PlanOptions(replan=True)) for p in sorted(GUESTS.glob("*pxb*.xml"))]
    numa = numa_guest(guest_xml, "q35", nics(3) + "\n" + disks(2))
    out += [("numa", numa, PlanOptions()), ("numa --replan", numa, PlanOptions(replan=True))]
    out.append(("mmio", guest_xml("virt", nics(2) + "\n" + disks(1)), PlanOptions(bus="mmio")))
    return out


def test_no_stage_writes_into_an_earlier_ones_objects(guest_xml) -> None:
    for name, data, options in _cases(guest_xml):
        problem, options, _warnings = read_with_rules(parse_domain_bytes(data, Path(name).name), options)
        read = snapshot(problem)
        prep = prepare(problem, options)
        assert snapshot(problem) == read, f"{name}: prepare changed the Problem it was given"
        prepared = snapshot(prep)
        result = solve(prep, options)
        assert snapshot(prep) == prepared, f"{name}: solve changed the Prepared"
        assert not any(isinstance(getattr(result, f.name), CpSolver) for f in dataclasses.fields(result))
        # the layout is unfolded from the solution's counts alone: without the model's variables too
        layout = unfold(prep, dataclasses.replace(result, vars=None, solution=()))
        assert snapshot(prep) == prepared, f"{name}: unfold changed the Prepared"
        assert snapshot(layout) == snapshot(unfold(prep, result))
        assert snapshot(problem) == read, f"{name}: a later stage changed the Problem"


def test_problem_and_prepared_are_frozen(guest_xml) -> None:
    data = guest_xml("q35", nics(1))
    problem, options, _warnings = read_with_rules(parse_domain_bytes(data), PlanOptions())
    prep = prepare(problem, options)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prep.objective_order = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.devices = []  # type: ignore[misc]
    assert prep.problem is not problem and prep.problem.devices is not problem.devices
