"""planner.pipeline.solver.cpmodel writes the same CP-SAT models as OR-Tools' own builder (cp_model), and the
plan path never imports pandas or numpy.

The planner's model code runs twice per guest, once on each builder; every model handed to the solver
(main solve, cuts, tie-break stages, infeasible-core shrinking, pool splits) is captured as protobuf text
with its solver parameters, and the two sequences must be equal."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GUESTS, REPO

from planner.facts.errors import Infeasible
from planner.facts.options import PlanOptions
from planner.pipeline.plan import _read
from planner.pipeline.prepare import prepare
from planner.pipeline.solver import cpmodel
from planner.xml.xmlio import parse_domain, parse_domain_bytes

ortools_cp = pytest.importorskip("ortools.sat.python.cp_model")
cmh = pytest.importorskip("ortools.sat.python.cp_model_helper")
if not hasattr(cmh, "CpModelProto"):
    pytest.skip("OR-Tools before 9.12 builds protos in Python; the comparison needs native ones",
                allow_module_level=True)

MODULES = ["constraints", "objective", "pool", "solve", "variables"]
INFEASIBLE = (b"<domain type='qemu'><name>inf</name><memory>1048576</memory><os><type arch='x86_64' "
              b"machine='q35'>hvm</type></os><devices><controller type='pci' index='0' model='pcie-root'/>"
              b"<controller type='pci' index='1' model='pcie-root-port'/>"
              + b"<interface type='user'><model type='virtio'/><address type='pci' bus='1'/></interface>" * 9
              + b"</devices></domain>")


def _ours(model: cpmodel.CpModel) -> str:
    proto = cmh.CpModelProto()
    assert proto.parse_text_format(model.text())
    return str(proto)


def _params(text: str) -> str:
    params = cmh.SatParameters()
    assert params.parse_text_format(text)
    return _untimed(str(params))


def _untimed(params: str) -> str:
    """Parameters without the time limit's value (what is left of the limit when the solve starts)."""
    return re.sub(r"max_time_in_seconds: [0-9.e+-]+", "max_time_in_seconds: T", params)


def _models(tree, builder, monkeypatch) -> list[tuple[str, str]]:
    """Every (model, parameters) the planner's solve hands to the solver, built with builder."""
    import importlib

    seen: list[tuple[str, str]] = []
    for name in MODULES:
        monkeypatch.setattr(importlib.import_module(f"planner.pipeline.solver.{name}"), "cp_model", builder)
    solver_class = builder.CpSolver
    original = solver_class.Solve

    def recording(self, model, *args):
        if builder is cpmodel:
            seen.append((_ours(model), _params(self.parameters.text())))
        else:
            seen.append((str(model.Proto()), _untimed(str(self.parameters))))
        return original(self, model, *args)

    monkeypatch.setattr(solver_class, "Solve", recording)
    from planner.pipeline.solver.solve import solve

    problem, options, _ = _read(tree, PlanOptions())
    with contextlib.suppress(Infeasible):
        solve(prepare(problem, options), options)
    monkeypatch.undo()
    return seen


GUEST_FILES = sorted(GUESTS.glob("*.xml"))[::3] + sorted((REPO / "examples").glob("*.xml"))


@pytest.mark.parametrize("path", GUEST_FILES, ids=lambda p: p.name)
def test_same_models_as_ortools_builder(path: Path, monkeypatch):
    theirs = _models(parse_domain(str(path)), ortools_cp, monkeypatch)
    ours = _models(parse_domain(str(path)), cpmodel, monkeypatch)
    assert len(ours) == len(theirs) >= 1
    for (mine, my_params), (their, their_params) in zip(ours, theirs, strict=True):
        assert mine == their
        assert my_params == their_params


def test_same_models_when_infeasible(monkeypatch):
    """The minimal-core search solves the model again and again with fewer assumptions."""
    theirs = _models(parse_domain_bytes(INFEASIBLE), ortools_cp, monkeypatch)
    ours = _models(parse_domain_bytes(INFEASIBLE), cpmodel, monkeypatch)
    assert len(theirs) > 2
    assert ours == theirs


def test_expressions_as_ortools_writes_them():
    def build(cp):
        m = cp.CpModel()
        x, y, b = m.NewIntVar(0, 10, "x"), m.NewIntVar(-3, 5, "y"), m.NewBoolVar("b")
        m.Add(y + x <= 3)
        m.Add(x - x + y != 2).OnlyEnforceIf(b.Not())
        m.Add(3 - x >= y).OnlyEnforceIf([b])
        m.Add(5 * (x + y) - 2 * x == 3 * b + 1)
        m.Add(cp.LinearExpr.Sum([]) <= 5)
        m.Add(sum([x, y, 4]) >= 1)
        m.Add(True)
        m.Add(False)
        m.Minimize(cp.LinearExpr.Sum([3 * x, -y, 7]))
        m.AddHint(x, 1)
        m.AddAssumptions([b])
        return m

    assert _ours(build(cpmodel)) == str(build(ortools_cp).Proto())


def test_solves_and_reads_values():
    m = cpmodel.CpModel()
    x, y = m.NewIntVar(0, 10, "x"), m.NewIntVar(0, 10, "y")
    m.Add(x + 2 * y >= 7)
    m.Minimize(3 * x + 2 * y + 1)
    solver = cpmodel.CpSolver()
    solver.parameters.num_workers = 1
    assert solver.Solve(m) == cpmodel.OPTIMAL
    assert (solver.Value(x), solver.Value(y), solver.Value(x + y - 1)) == (0, 4, 3)
    assert solver.ObjectiveValue() == 9 and solver.StatusName() == "OPTIMAL"


def test_plan_path_imports_neither_pandas_nor_numpy(tmp_path):
    out = tmp_path / "out.xml"
    code = ("import sys; from planner.commands.cli import main; sys.argv = ['pciplan', 'plan', "
            f"{str(REPO / 'examples' / 'q35-server.xml')!r}, '-o', {str(out)!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'numpy', 'pydantic')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "[]"
    assert out.read_bytes() == (REPO / "tests" / "golden" / "q35-server.xml").read_bytes()


@pytest.mark.parametrize("path", sorted(GUESTS.glob("q35-*.xml"))[::2] + sorted(GUESTS.glob("pc-*.xml"))[::3],
                         ids=lambda p: p.name)
def test_one_tiebreak_solve_picks_what_two_stages_pick(path: Path, monkeypatch):
    """The two tie-breaks (libvirt's order, then fixed weights) solved as one weighted objective give
    the layout the two stages one after the other give."""
    import sys

    from planner.pipeline.solver.solve import solve

    solve_module = sys.modules["planner.pipeline.solver.solve"]

    def values(limit: int) -> tuple:
        monkeypatch.setattr(solve_module, "COMBINED_LIMIT", limit)
        problem, options, _ = _read(parse_domain(str(path)), PlanOptions())
        result = solve(prepare(problem, options), options)
        return result.solution, result.values

    combined, stages = values(1 << 60), values(0)
    assert combined == stages


def test_a_constraint_a_solve_has_seen_stays_as_it_was():
    """Constraints are written out once (the model grows between solves); changing one afterwards
    would be lost, so it is refused."""
    m = cpmodel.CpModel()
    x, b = m.NewIntVar(0, 3, "x"), m.NewBoolVar("b")
    seen = m.Add(x >= 1)
    solver = cpmodel.CpSolver()
    solver.parameters.num_workers = 1
    assert solver.Solve(m) == cpmodel.OPTIMAL
    with pytest.raises(RuntimeError):
        seen.OnlyEnforceIf(b)
    m.Add(x <= 2).OnlyEnforceIf(b)  # a new one may still be conditional
    assert "enforcement_literal: 1" in m.text()
