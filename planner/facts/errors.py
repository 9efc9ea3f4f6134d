"""Errors every room may raise, and the one exit-status contract every command keeps.

Bad input (exit 2) is planner.xml.xmlio.InputError; an impossible request is Infeasible (exit 3); a defect of
pciplan itself (an invalid solver model, an unexpected exception) is InternalError (exit 5)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """Exit statuses of every pciplan command (README: "Exit status")."""

    OK = 0  # done; for check/diff: nothing to report
    FAILED = 1  # some files failed (fleet, compare on a folder); check: violations; diff: changes found
    BAD_INPUT = 2  # bad input or usage: one line names the element or option and the reason
    INFEASIBLE = 3  # the request cannot be met: which devices, which limit, the largest feasible number
    PINNED_BREAKS = 4  # planned and written, but the input's pinned addresses force a rule break
    INTERNAL = 5  # a defect of pciplan (e.g. the solver rejected the model): please report it
    INTERRUPTED = 130  # Ctrl-C: what was done is summarised, nothing is half-written


class Limit(StrEnum):
    """The limit an infeasibility reason is about, set where the reason is made (a constraint's
    assumption literal, a bound, a refusal in prepare), so that nothing downstream parses the text."""

    PLACEMENT = "placement"  # a device group's own rules (bus, hotplug, numa, connection) leave no place
    SLOTS = "slots"  # free slots of the existing buses and of new bridges
    FUNCTIONS = "functions"  # PCI functions against every slot the buses and bus numbers can offer
    IO_SPACE = "io-space"  # the firmware's I/O space (bridge windows and I/O BARs)
    IO_WINDOWS = "io-windows"  # how many bridge/port I/O windows the firmware sets up
    BUS_NUMBERS = "bus-numbers"  # the 256 bus numbers of a PCI domain
    CONTROLLER_INDEX = "controller-index"  # controller indices end at 255
    BUS_NR_RANGE = "busnr-range"  # an expander bus's hierarchy must fit its busNr range
    RESERVE = "reserve"  # --reserve: empty ports or free slots kept for later
    HOTPLUG = "hotplug"  # what libvirt or the machine can hot-plug
    NUMA = "numa"  # numa= needs an expander bus
    VIRTIO_MMIO = "virtio-mmio"  # the machine's virtio-mmio transports
    GIVEN_ADDRESSES = "given-addresses"  # the addresses the input pins
    TIME = "time-limit"  # nothing found (or proven) within --time-limit
    OTHER = "other"  # a reason given as plain text (the API's callers)


class Role(StrEnum):
    """What a reason says about its limit."""

    CONFLICT = "conflict"  # the limit is part of what cannot all be met
    LARGEST = "largest"  # the largest number that fits within it
    SUGGESTION = "suggestion"  # what the user could change


@dataclass(frozen=True)
class Reason:
    """One line of an infeasibility explanation: its text as printed, and what it is about."""

    limit: Limit
    text: str
    role: Role = Role.CONFLICT

    def __str__(self) -> str:
        return self.text


class Infeasible(Exception):
    """The request cannot be met; reasons name the devices and limits that conflict (exit 3)."""

    def __init__(self, reasons: Iterable[Reason | str]):
        self.explained = [r if isinstance(r, Reason) else Reason(Limit.OTHER, r) for r in reasons]
        super().__init__("; ".join(self.reasons))

    @property
    def reasons(self) -> list[str]:
        """The reasons as printed, one line each (a copy: add reasons with add())."""
        return [r.text for r in self.explained]

    def add(self, reasons: Iterable[Reason]) -> None:
        """More explanation, found after the limit was hit (the largest number that fits, a hint)."""
        self.explained += reasons

    def unanswered(self, limit: Limit) -> bool:
        """Is the limit in conflict with no reason yet saying the largest number that fits it?"""
        roles = {r.role for r in self.explained if r.limit is limit}
        return Role.CONFLICT in roles and Role.LARGEST not in roles

    def __reduce__(self) -> tuple:
        # rebuilt from the typed reasons, not from Exception's args (the joined text), e.g. by a worker
        return type(self), (self.explained,)

    def kinds(self) -> list[dict[str, str]]:
        """For --json: the limit and role of each reason, in the order of the reasons."""
        return [{"limit": r.limit.value, "role": r.role.value} for r in self.explained]


class InternalError(Exception):
    """A defect of pciplan itself, never the user's input (exit 5)."""
