"""Test-only ways to weaken the planner on purpose, in process (monkeypatch), to prove that the oracle
and the property tests notice: a model that loses a candidate kind, a checker that loses a rule."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from ortools.sat.python import cp_model

from planner.checker import check
from planner.pipeline import certificate
from planner.pipeline.prepare import Prepared
from planner.pipeline.solver import constraints
from planner.pipeline.solver.variables import Variables


def _no_pcie_to_pci_bridge(model: cp_model.CpModel, prep: Prepared, v: Variables) -> None:
    """No new pcie-to-pci-bridge, neither on a new nor on an existing port."""
    for x in [*v.rp_bridge.values(), *v.new_pcie_pci_bridge.values()]:
        model.Add(x == 0)


def _no_integrated(model: cp_model.CpModel, prep: Prepared, v: Variables) -> None:
    """No new integrated endpoint on pcie-root (bus 0)."""
    if prep.problem.machine.pcie:
        for x in [x for (e, _), x in [*v.alone.items(), *v.packed.items()] if e == 0]:
            model.Add(x == 0)


MODEL_WEAKENINGS: dict[str, Callable[[cp_model.CpModel, Prepared, Variables], None]] = {
    "pcie-to-pci-bridge": _no_pcie_to_pci_bridge,
    "integrated": _no_integrated,
}


def weaken_model(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Every solve in this test adds the weakening's constraints after the model's own (it rides on
    constraints.spare_ports, the last constraint family solve() adds). The certificate's model-free
    path is turned off, so that the (weakened) model decides every plan: the certificate then checks
    its layout against that model, or the solver plans."""
    extra = MODEL_WEAKENINGS[kind]
    # certify calls _direct (direct is its public form, for tests): both say "not sure", so by_model runs
    monkeypatch.setattr(certificate, "_direct", lambda *args, **kwargs: None)
    monkeypatch.setattr(certificate, "direct", lambda *args, **kwargs: None)
    original = constraints.spare_ports

    def spare_ports(model, prep, v, *args, **kwargs):
        original(model, prep, v, *args, **kwargs)
        extra(model, prep, v)

    monkeypatch.setattr(constraints, "spare_ports", spare_ports)


def drop_checker_rule(monkeypatch: pytest.MonkeyPatch, rule: str) -> None:
    """check_domain (and everything built on it) stops reporting this rule."""
    original = check._Checker.flag

    def flag(self, element: str, rule_id: str, message: str) -> None:
        if rule_id != rule:
            original(self, element, rule_id, message)

    monkeypatch.setattr(check._Checker, "flag", flag)
