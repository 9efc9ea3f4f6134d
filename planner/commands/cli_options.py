"""Option checks every command shares (plan, check, compare, fleet, attach) and the Python API uses too.

Each check either returns the value in its canonical form or raises OptionError, whose message names the
option and the reason in one line; the CLI prints it as `pciplan: error: ...` and exits 2 before any work
is done (README "Exit status")."""

from __future__ import annotations

from collections.abc import Iterable

from planner.facts.options import BUS_CHOICES, DEVICE_KINDS, PlanOptions
from planner.xml.xmlio import InputError


class OptionError(InputError):
    """An option out of range, unknown, or combined with one it excludes (exit 2)."""


def firmware_name(value: str | None, flag: str = "--firmware") -> str | None:
    """The firmware name in canonical (lower) case: OVMF, Ovmf and ovmf are one firmware."""
    from planner.facts.facts import firmware_names

    if value is None:
        return None
    name = value.strip().lower()
    if name not in firmware_names():
        raise OptionError(f"{flag}: '{value}' is not one of {', '.join(firmware_names())}")
    return name


def positive(value: float, flag: str) -> float:
    """A number that must be above 0 (a time limit)."""
    if not value > 0:  # also refuses NaN
        raise OptionError(f"{flag}: {value:g} must be greater than 0")
    return value


def at_least(value: int | None, minimum: int, flag: str) -> int | None:
    """A count with a lower bound (None: not given)."""
    if value is not None and value < minimum:
        raise OptionError(f"{flag}: {value} must be {minimum} or more")
    return value


def exclusive(flags: dict[str, object]) -> None:
    """At most one of these options may be given (a flag given is one whose value is truthy)."""
    given = [name for name, value in flags.items() if value]
    if len(given) > 1:
        raise OptionError(f"give either {' or '.join(given)}, not both")


def device_kinds(values: Iterable[str], flag: str) -> frozenset[str]:
    kinds = frozenset(values)
    for kind in sorted(kinds):
        if kind not in DEVICE_KINDS:
            known = ", ".join(sorted(DEVICE_KINDS))
            raise OptionError(f"{flag}: unknown device kind '{kind}' (one of: {known})")
    return kinds


def reserve_models(kind: str) -> list[str]:
    """The models of a device kind that models/devices.toml names (what --reserve KIND:MODEL accepts)."""
    from planner.facts.facts import catalogue_keys

    prefix = f"{kind}:"
    return [key[len(prefix):] for key in catalogue_keys() if key.startswith(prefix)
            and key[len(prefix):] not in ("", "*") and ":" not in key[len(prefix):]]


def reservations(values: Iterable[str], flag: str = "--reserve") -> tuple[tuple[str, int], ...]:
    """--reserve KIND[:MODEL]=N, each checked: a known kind, a model the catalogue knows, N in 0-255."""
    from planner.pipeline.rules import parse_reserve

    out = []
    for text in values:
        key, count = parse_reserve(text)
        kind, _, model = key.partition(":")
        known = reserve_models(kind)
        if model and model not in known:
            raise OptionError(f"{flag} {text}: unknown {kind} model '{model}' (models/devices.toml knows: "
                              f"{', '.join(known) or 'none; give the kind alone'})")
        out.append((key, count))
    return tuple(out)


def plan_options(*, time_limit: float = 10.0, spare_pcie: int | None = None, spare_pci: int | None = None,
                 replan: bool = False, hotplug: Iterable[str] = (), no_hotplug: Iterable[str] = (),
                 bus: str = "default", policy: str | None = None, host_numa: str | None = None,
                 reserve: Iterable[str] = (), objective: str | None = None, firmware: str | None = None,
                 to_machine: str | None = None) -> PlanOptions:
    """PlanOptions from option values as a user writes them, every one checked (OptionError)."""
    from planner.pipeline.rules import objective_order

    hot = device_kinds(hotplug, "--hotplug")
    cold = device_kinds(no_hotplug, "--no-hotplug")
    if hot & cold:
        raise OptionError(f"--hotplug and --no-hotplug both name {', '.join(sorted(hot & cold))}")
    if host_numa not in (None, "auto"):
        raise OptionError(f"--host-numa: '{host_numa}' is not 'auto'")
    if bus not in BUS_CHOICES:
        raise OptionError(f"--bus: '{bus}' is not one of pcie, pci, any, mmio")
    if to_machine not in (None, "q35"):
        raise OptionError(f"--to-machine: '{to_machine}' is not supported (q35)")
    return PlanOptions(
        time_limit=positive(time_limit, "--time-limit"),
        spare_pcie=at_least(spare_pcie, 0, "--spare-pcie"), spare_pci=at_least(spare_pci, 0, "--spare-pci"),
        replan=replan, hotplug_kinds=hot, no_hotplug_kinds=cold, bus=bus, policy=policy,
        host_numa=host_numa == "auto", reserve=reservations(reserve),
        objective_order=objective_order(objective, "--objective-order") if objective else None,
        firmware=firmware_name(firmware), to_machine=to_machine)
