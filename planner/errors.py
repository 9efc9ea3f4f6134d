"""Errors every room may raise, and the one exit-status contract every command keeps.

Bad input (exit 2) is planner.xmlio.InputError; an impossible request is Infeasible (exit 3); a defect of
pciplan itself (an invalid solver model, an unexpected exception) is InternalError (exit 5)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit statuses of every pciplan command (README: "Exit status")."""

    OK = 0  # done; for check/diff: nothing to report
    FAILED = 1  # some files failed (fleet, compare on a folder); check: violations; diff: changes found
    BAD_INPUT = 2  # bad input or usage: one line names the element or option and the reason
    INFEASIBLE = 3  # the request cannot be met: which devices, which limit, the largest feasible number
    PINNED_BREAKS = 4  # planned and written, but the input's pinned addresses force a rule break
    INTERNAL = 5  # a defect of pciplan (e.g. the solver rejected the model): please report it
    INTERRUPTED = 130  # Ctrl-C: what was done is summarised, nothing is half-written


class Infeasible(Exception):
    """The request cannot be met; reasons name the devices and limits that conflict (exit 3)."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class InternalError(Exception):
    """A defect of pciplan itself, never the user's input (exit 5)."""
