"""Errors every room may raise: bad input (exit 2) lives in planner.xmlio; an impossible request here."""

from __future__ import annotations


class Infeasible(Exception):
    """The request cannot be met; reasons name the devices and limits that conflict (exit 3)."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons
