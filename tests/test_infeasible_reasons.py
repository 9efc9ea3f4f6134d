"""Infeasibility reasons are typed where they are made (the limit and what the line says of it), and
planner.pipeline.explain picks its further searches by that type, never by the reasons' text."""

from __future__ import annotations

import pytest
from conftest import disks, nics
from planning import plan_bytes

from planner.facts.errors import Infeasible, Limit, Reason, Role
from planner.facts.options import PlanOptions
from planner.pipeline import explain as explain_module
from planner.pipeline import plan as plan_module
from planner.pipeline.prepare import prepare
from planner.pipeline.rules import read_with_rules
from planner.pipeline.solver.solve import build
from planner.xml.xmlio import parse_domain_bytes


def kinds(exc: Infeasible) -> list[tuple[Limit, Role]]:
    return [(r.limit, r.role) for r in exc.explained]


def test_every_assumption_literal_is_typed_where_it_is_added(guest_xml) -> None:
    """The model's constraint families each carry their limit; none is left to be read from text."""
    data = guest_xml("q35", nics(3), extra="<metadata><pciplan:constraints "
                     "xmlns:pciplan='urn:pciplan:constraints:1'><pciplan:reserve kind='interface' count='2'/>"
                     "</pciplan:constraints></metadata>")
    problem, options, _warnings = read_with_rules(parse_domain_bytes(data), PlanOptions(firmware="ovmf"))
    built = build(prepare(problem, options), options)
    limits = {r.limit for r in built.why.literals.values()}
    assert limits == {Limit.PLACEMENT, Limit.SLOTS, Limit.IO_SPACE, Limit.IO_WINDOWS, Limit.BUS_NUMBERS,
                      Limit.CONTROLLER_INDEX, Limit.RESERVE}
    assert {r.role for r in built.why.literals.values()} == {Role.CONFLICT}


def test_a_bound_that_answers_its_limit_gets_no_second_answer(guest_xml) -> None:
    """The I/O bound already says how many fit: no bisection is added to it."""
    with pytest.raises(Infeasible) as exc:
        plan_bytes(guest_xml("pc", nics(600) + "\n" + disks(400)))
    assert kinds(exc.value)[:2] == [(Limit.IO_SPACE, Role.CONFLICT), (Limit.IO_SPACE, Role.LARGEST)]
    assert kinds(exc.value).count((Limit.IO_SPACE, Role.LARGEST)) == 1


def test_reservations_are_typed_and_answered(guest_xml) -> None:
    with pytest.raises(Infeasible) as exc:
        plan_bytes(guest_xml("q35", devices=disks(10)), reserve=(("interface", 255), ("disk", 100)))
    found = kinds(exc.value)
    assert (Limit.RESERVE, Role.CONFLICT) in found and (Limit.RESERVE, Role.LARGEST) in found
    assert all(limit is not Limit.OTHER for limit, _ in found)


def _refuse_with(reason: Reason):
    def solve(prep, options):
        raise Infeasible([reason])
    return solve


@pytest.mark.parametrize(("reason", "bisected"), [
    (Reason(Limit.IO_SPACE, "a limit in words no code matches"), True),
    (Reason(Limit.OTHER, "the firmware's I/O space (what the text used to be matched on)"), False),
])
def test_the_firmware_search_follows_the_type_not_the_text(guest_xml, monkeypatch, reason, bisected) -> None:
    """Every solve refuses with the given reason: the bisection over I/O-BAR devices runs (and finds
    0 fit) only when the reason is typed IO_SPACE, whatever its text says."""
    monkeypatch.setattr(plan_module, "certify", lambda prep, options: None)  # to the solver, always
    monkeypatch.setattr(plan_module, "solve", _refuse_with(reason))
    monkeypatch.setattr(explain_module, "solve", _refuse_with(reason))
    with pytest.raises(Infeasible) as exc:
        plan_bytes(guest_xml("pc", nics(2, "e1000")))
    added = exc.value.explained[1:]
    assert exc.value.explained[0] == reason
    if bisected:
        assert [(r.limit, r.role) for r in added] == [(Limit.IO_SPACE, Role.LARGEST)]
        text = added[0].text
        assert text.startswith("at most 0 of the ") and "with an I/O BAR fit SeaBIOS's" in text
    else:
        assert added == []


def test_reasons_keep_their_text() -> None:
    """The text is what every command prints and the recorded outputs hash: the type rides beside it."""
    exc = Infeasible([Reason(Limit.SLOTS, "a"), "b"])
    exc.add([Reason(Limit.SLOTS, "c", Role.LARGEST)])
    assert exc.reasons == ["a", "b", "c"] and str(exc) == "a; b"
    assert exc.explained[1] == Reason(Limit.OTHER, "b")
    assert not exc.unanswered(Limit.SLOTS) and not exc.unanswered(Limit.RESERVE)
    assert exc.kinds()[2] == {"limit": "slots", "role": "largest"}


def test_a_pickled_refusal_keeps_its_typed_reasons() -> None:
    """A refusal that crosses a process boundary (fleet's workers) arrives as it was made."""
    import pickle

    from planner.commands.api import InfeasibleError

    for cls in (Infeasible, InfeasibleError):
        exc = cls([Reason(Limit.RESERVE, "reserve (disk=1): 1 empty hot-pluggable PCIe ports"), "plain"])
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is cls and back.explained == exc.explained and str(back) == str(exc)


def test_the_replan_hint_says_what_replan_changes(tmp_path) -> None:
    """Nine NICs pinned to one root port: --replan plans the guest by removing that port (no device had
    a whole address to move), and the hint says so; it once said "moving 0 of the given address(es)"."""
    from fleetgen import write_fleet

    write_fleet(tmp_path, 0, infeasible=1)
    with pytest.raises(Infeasible) as exc:
        plan_bytes((tmp_path / "infeasible-0.xml").read_bytes())
    hints = [r.text for r in exc.value.explained if r.role is Role.SUGGESTION]
    assert hints == ["suggestion: `pciplan plan --replan` plans this guest by removing 1 of the given PCI "
                     "controller(s), moving no device address"]
    tree, summary = plan_bytes((tmp_path / "infeasible-0.xml").read_bytes(), replan=True)
    assert summary.controllers_removed == 1
