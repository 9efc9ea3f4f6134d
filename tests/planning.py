"""Plan helpers shared by the tests."""

from __future__ import annotations

from lxml import etree

from planner.checker.check import WARNING_RULES, check_domain
from planner.facts.options import PlanOptions
from planner.pipeline.plan import PlanSummary, plan_tree
from planner.xml.xmlio import parse_domain, parse_domain_bytes, serialize


def plan_bytes(data: bytes, **options) -> tuple[etree._ElementTree, PlanSummary]:
    tree = parse_domain_bytes(data)
    return tree, plan_tree(tree, PlanOptions(**options))


def plan_file(path, **options) -> tuple[etree._ElementTree, PlanSummary]:
    tree = parse_domain(path)
    return tree, plan_tree(tree, PlanOptions(**options))


def errors(tree: etree._ElementTree, complete: bool = True) -> list[str]:
    return [f"{v.rule}: {v.element}: {v.message}" for v in check_domain(tree, require_complete=complete)
            if v.rule not in WARNING_RULES]


def new_errors(before: etree._ElementTree, after: etree._ElementTree) -> list[str]:
    """Violations in the planned output that the input did not already have (judged on its given
    addresses): the planner must never introduce one, and must leave nothing unaddressed."""
    old = {(v.rule, v.element) for v in check_domain(before, require_complete=False)}
    return [f"{v.rule}: {v.element}: {v.message}" for v in check_domain(after, require_complete=True)
            if v.rule not in WARNING_RULES and (v.rule, v.element) not in old]


def text(tree: etree._ElementTree) -> bytes:
    return serialize(tree)
