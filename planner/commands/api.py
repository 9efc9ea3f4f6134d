"""pciplan as a Python library: plan, check and attach without the command line.

For tools that embed pciplan (a management layer, an installer). The `pciplan plan`, `check` and `attach`
commands are thin layers over these functions, so the XML bytes `plan()` returns are exactly the bytes
the command writes for the same input and options.

Nothing here prints or exits. Failures raise a PciplanError subclass that carries the reasons (one line
each, the same words the command prints) and the command's exit status (`exit_code`, a
planner.facts.errors.ExitCode). Any other exception is a defect of pciplan.

    from planner.commands import api

    result = api.plan(Path("guest.xml").read_bytes(), api.options(spare_pcie=2))
    result.xml            # the planned domain XML, as `pciplan plan` writes it
    result.status         # "optimal", or "feasible" with result.bound and result.gap
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lxml import etree

from planner.commands.attach import NotHotpluggable
from planner.commands.cli_options import plan_options
from planner.facts.errors import ExitCode, Infeasible, InternalError, Reason
from planner.facts.options import PlanOptions
from planner.pipeline.metrics import Headroom, Place
from planner.xml.xmlio import InputError, parse_domain_bytes, parse_xml_bytes, serialize, serialize_text

if TYPE_CHECKING:
    from planner.facts.facts import LibvirtVersion
    from planner.pipeline.plan import PlanSummary

__all__ = [
    "BadInputError", "CheckResult", "Finding", "InfeasibleError", "InternalPciplanError", "Move",
    "NotHotpluggableError", "PciplanError", "PlanOptions", "PlanResult", "Place", "StackResult", "XmlInput",
    "attach_next_boot", "attach_places", "check", "options", "plan",
]

# What the functions read: XML text (str), XML bytes, a file (a Path), or a parsed lxml tree (not
# modified: the functions work on a copy).
XmlInput = str | bytes | os.PathLike | etree._ElementTree
Severity = Literal["error", "warning", "suggestion", "note"]


class PciplanError(Exception):
    """A request pciplan refuses; `reasons` are the lines the command prints, `exit_code` its status."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, reasons: list[str]):
        # Exception's own __init__, not the next class's: Infeasible would join the joined text again.
        Exception.__init__(self, "; ".join(reasons))
        self.reasons = reasons


class BadInputError(PciplanError, InputError):
    """Unreadable or invalid XML, or an option out of range (exit 2)."""

    exit_code = ExitCode.BAD_INPUT


class InfeasibleError(PciplanError, Infeasible):
    """The request cannot be met: the reasons name the devices and limits in conflict (exit 3);
    `explained` types each of them (planner.facts.errors.Reason: its limit and role)."""

    exit_code = ExitCode.INFEASIBLE

    def __init__(self, reasons: Sequence[Reason | str]):
        Infeasible.__init__(self, reasons)  # reasons is Infeasible's view of the typed ones


class NotHotpluggableError(PciplanError):
    """libvirt cannot hot-plug this kind of device into a running guest (exit 3)."""

    exit_code = ExitCode.INFEASIBLE


class InternalPciplanError(PciplanError, InternalError):
    """A defect of pciplan itself, e.g. the solver rejected its own model (exit 5): please report it."""

    exit_code = ExitCode.INTERNAL


@dataclass(frozen=True)
class Finding:
    """One thing pciplan has to say about a layout."""

    severity: Severity
    message: str
    rule: str | None = None  # check's rule id ("io-windows", "multifunction-flag", ...), when there is one
    element: str | None = None  # the element it is about, named as in every message ("interface[2] (...)")

    @property
    def text(self) -> str:
        """The finding as one line of the commands' output: "ELEMENT: MESSAGE [rule]"."""
        if self.element is None or self.rule is None:
            return self.message
        return f"{self.element}: {self.message} [{self.rule}]"

    def as_json(self) -> dict:
        return {"severity": self.severity, "rule": self.rule, "element": self.element,
                "message": self.message}


@dataclass(frozen=True)
class Move:
    """A device whose PCI address the plan changed (--replan, --to-machine)."""

    device: str  # named as in every message, e.g. "interface[1] (virtio, mac 52:54:00:00:00:01)"
    before: str  # bus:slot.function, hex, e.g. "01:00.0"
    after: str

    def __str__(self) -> str:
        return f"{self.device}: {self.before} → {self.after}"

    def as_json(self) -> dict:
        return {"device": self.device, "from": self.before, "to": self.after}


class _Findings:
    """What plan and check results share: their findings, by severity."""

    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


@dataclass
class PlanResult(_Findings):
    """What `plan()` did. `xml` is the planned document; the rest describes it."""

    xml: bytes
    status: str  # "optimal" (proven) or "feasible" (the time limit was hit: see bound and gap)
    objective: int
    bound: int
    gap: float
    machine: str
    objective_levels: dict[str, int]
    controllers_added: dict[str, int]  # model -> how many
    controllers_removed: int
    moves: list[Move]
    headroom: Headroom | None  # what the planned guest can still take live
    findings: list[Finding]
    summary: PlanSummary = field(repr=False)  # the planner's own summary, for everything else it counts

    @property
    def exit_code(self) -> ExitCode:
        """OK, or PINNED_BREAKS when addresses the input pins force a layout that breaks a rule."""
        return ExitCode.PINNED_BREAKS if self.errors else ExitCode.OK

    def as_json(self) -> dict:
        """The dict `pciplan plan --json` prints (README "Exit status" and "Python API")."""
        out = self.summary.as_json()
        out["status"] = self.status
        out["addresses_moved"] = [str(m) for m in self.moves]
        out["moves"] = [m.as_json() for m in self.moves]
        out["findings"] = [f.as_json() for f in self.findings]
        if self.exit_code != ExitCode.OK:
            reasons = [f.text for f in self.findings if f.severity in ("error", "suggestion")]
            out["error"] = {"code": int(self.exit_code), "reasons": reasons}
        return out


@dataclass
class StackResult:
    """What real libvirt (and with boot, QEMU and the guest's firmware) made of the XML."""

    ok: bool
    defined: bool  # libvirt accepted the XML
    define_error: str | None
    changes: list[dict]  # what libvirt added or moved: {"kind", "element", "detail"}
    boot: dict | None  # {"started", "error", "mismatches", "devices_placed", "notes", "hotplug_probes"}
    firmware: dict | None  # {"name", "label", "ran", "pci_setup_done", "errors"}
    hotplug_failures: list[str]
    lines: list[str]  # the same, as `pciplan check --libvirt` prints it
    libvirt_version: str = ""  # the libvirt that defined it (the installed one, embedded driver)
    rules_for: str = ""  # the libvirt the rules judged for (--libvirt-version, else the installed one)

    def as_json(self) -> dict:
        return {"ok": self.ok, "defined": self.defined, "define_error": self.define_error,
                "libvirt_version": self.libvirt_version, "rules_for": self.rules_for,
                "changes": self.changes, "boot": self.boot, "firmware": self.firmware,
                "hotplug_failures": self.hotplug_failures, "summary": self.lines}


@dataclass
class CheckResult(_Findings):
    """The findings of `check()`: errors (libvirt or QEMU refuse, or a rule breaks) and warnings."""

    findings: list[Finding]
    stack: StackResult | None = None  # with libvirt=True

    @property
    def exit_code(self) -> ExitCode:
        """OK, or FAILED when a rule breaks or the real stack disagreed (warnings do not count)."""
        bad = self.errors or (self.stack is not None and not self.stack.ok)
        return ExitCode.FAILED if bad else ExitCode.OK

    def as_json(self) -> dict:
        """The dict `pciplan check --json` prints."""
        out: dict = {"violations": [f.as_json() for f in self.findings],
                     "errors": len(self.errors), "warnings": len(self.warnings)}
        if self.stack is not None:
            out["libvirt"] = self.stack.as_json()
        return out


def options(**values) -> PlanOptions:
    """PlanOptions from the values of `pciplan plan`'s options, checked as the command checks them
    (BadInputError): time_limit, spare_pcie, spare_pci, replan, hotplug, no_hotplug (device kinds), bus,
    policy (a path), host_numa ("auto"), reserve (["interface=4", ...]), objective ("controllers,..."),
    firmware, to_machine."""
    return _guarded(plan_options, **values)


def _guarded(fn, *args, **kwargs):
    """Call into the planner, turning its exceptions into the API's (same reasons, exit_code)."""
    try:
        return fn(*args, **kwargs)
    except PciplanError:
        raise
    except InputError as exc:
        raise BadInputError([str(exc)]) from exc
    except Infeasible as exc:
        raise InfeasibleError(exc.explained) from exc
    except NotHotpluggable as exc:
        raise NotHotpluggableError([str(exc)]) from exc
    except InternalError as exc:
        raise InternalPciplanError([str(exc)]) from exc


def _read(xml: XmlInput, what: str = "<input>", domain: bool = True) -> etree._ElementTree:
    if isinstance(xml, etree._ElementTree):
        return copy.deepcopy(xml)
    if isinstance(xml, os.PathLike):
        try:
            data, what = Path(xml).read_bytes(), str(xml)
        except OSError as exc:
            raise BadInputError([f"{xml}: cannot read: {exc.strerror}"]) from None
    elif isinstance(xml, str):
        data = _encode(xml)
    else:
        data = xml
    parse = parse_domain_bytes if domain else parse_xml_bytes
    return _guarded(parse, data, what)


_DECLARED = re.compile(r"""\s*<\?xml[^>]*\bencoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def _encode(text: str) -> bytes:
    """XML text as bytes in the encoding its declaration names (UTF-8 without one), so that the parser
    reads back the same characters."""
    declared = _DECLARED.match(text)
    encoding = declared.group(1) if declared else "utf-8"
    try:
        return text.encode(encoding)
    except (LookupError, UnicodeEncodeError) as exc:
        raise BadInputError([f"<input>: cannot encode as the declared {encoding}: {exc}"]) from None


def _check_options(opts: PlanOptions) -> PlanOptions:
    """PlanOptions built by hand get the same range checks as options()."""
    from planner.commands.cli_options import at_least, firmware_name, positive

    _guarded(positive, opts.time_limit, "time_limit")
    _guarded(at_least, opts.spare_pcie, 0, "spare_pcie")
    _guarded(at_least, opts.spare_pci, 0, "spare_pci")
    name = _guarded(firmware_name, opts.firmware, "firmware")
    if name != opts.firmware:
        from dataclasses import replace

        opts = replace(opts, firmware=name)
    return opts


def _pci_addresses(tree: etree._ElementTree) -> dict[etree._Element, str]:
    out = {}
    devices = tree.getroot().find("devices")
    for el in devices if devices is not None else []:
        a = el.find("address") if isinstance(el.tag, str) else None
        if a is not None and a.get("type") == "pci" and a.get("slot") is not None:
            out[el] = (f"{int(a.get('bus', '0'), 0):02x}:{int(a.get('slot'), 0):02x}."
                       f"{int(a.get('function', '0'), 0):x}")
    return out


def _names(tree: etree._ElementTree) -> dict[etree._Element, str]:
    """Every device's name as the planner's messages give it (1-based position per kind, like XPath)."""
    from planner.pipeline.domain import describe

    counters: dict[str, int] = {}
    out = {}
    devices = tree.getroot().find("devices")
    for el in devices if devices is not None else []:
        if isinstance(el.tag, str):
            counters[el.tag] = counters.get(el.tag, 0) + 1
            out[el] = describe(el, el.tag, counters[el.tag])
    return out


def _plan_findings(summary) -> list[Finding]:
    found = [Finding("warning", n.removeprefix("warning: ")) if n.startswith("warning: ")
             else Finding("note", n) for n in summary.notes]
    found += [_finding_of(line, "warning") for line in summary.check_warnings]
    for line in summary.check_errors:
        if line.startswith("suggestion: "):
            found.append(Finding("suggestion", line.removeprefix("suggestion: ")))
        else:
            found.append(_finding_of(line, "error"))
    return found


def _finding_of(line: str, severity: Severity) -> Finding:
    """A line "ELEMENT: MESSAGE [rule]" of the planner's self-check, taken apart."""
    if not (line.endswith("]") and " [" in line and ": " in line):
        return Finding(severity, line)
    text, rule = line[:-1].rsplit(" [", 1)
    element, _, message = text.partition(": ")
    return Finding(severity, message, rule=rule, element=element)


def plan(xml: XmlInput, opts: PlanOptions | None = None) -> PlanResult:
    """Plan a domain: every PCI device gets an address and the controllers they need are added.

    Raises BadInputError (exit 2), InfeasibleError (exit 3; the reasons name the conflicting devices
    and limits) or InternalPciplanError (exit 5). A layout that addresses pinned by the input force to
    break a rule is returned, with its error findings (exit_code PINNED_BREAKS, like the command's 4)."""
    return _plan_in_place(_read(xml), _check_options(opts or PlanOptions()))


def _plan_in_place(tree: etree._ElementTree, opts: PlanOptions) -> PlanResult:
    from planner.pipeline.plan import plan_tree

    before = _pci_addresses(tree)
    names = _names(tree)
    summary = _guarded(plan_tree, tree, opts)
    after = _pci_addresses(tree)
    moves = [Move(names[el], old, after[el]) for el, old in before.items()
             if el in after and after[el] != old]
    return PlanResult(
        xml=serialize(tree), status=summary.status.lower(), objective=summary.objective, bound=summary.bound,
        gap=summary.gap, machine=summary.machine, objective_levels=dict(summary.levels),
        controllers_added=dict(summary.controllers_added), controllers_removed=summary.controllers_removed,
        moves=moves, headroom=summary.headroom, findings=_plan_findings(summary), summary=summary)


def check(xml: XmlInput, *, partial: bool = False, firmware: str | None = None, libvirt: bool = False,
          boot: bool = False, libvirt_version: str | None = None) -> CheckResult:
    """Check a domain's PCI layout against libvirt's, QEMU's and the firmware's rules.

    partial: judge only the addresses given. libvirt: also define it in real libvirt (the embedded
    driver) and report what libvirt adds or moves; boot: also start it in QEMU and run its firmware.
    libvirt_version ("11.3"): judge for that libvirt, and define it in that libvirt: the installed one,
    or the chroot .ci/libvirt11 builds (define only, no boot).
    Raises BadInputError, also when the real stack (of that version) is not available."""
    from planner.checker.check import WARNING_RULES, check_domain
    from planner.commands.cli_options import firmware_name
    from planner.facts.facts import (
        baseline_libvirt,
        parse_libvirt_version,
        target_libvirt_source,
        targeting_libvirt,
    )

    firmware = _guarded(firmware_name, firmware)
    version: LibvirtVersion | None
    if libvirt_version is not None:
        try:
            version = parse_libvirt_version(libvirt_version)
        except ValueError as exc:
            raise BadInputError([f"libvirt_version: {exc}"]) from None
        if version < baseline_libvirt():
            raise BadInputError([f"libvirt_version: libvirt {version} is older than the catalogue "
                                 f"(models/libvirt.toml starts at {baseline_libvirt()})"])
    else:  # set before (--libvirt-version, $PCIPLAN_LIBVIRT_VERSION), or the installed one
        version, source = target_libvirt_source()
        if source in ("installed", "default"):
            version = None  # the installed libvirt's embedded driver
    tree = _read(xml)
    with targeting_libvirt(version) if version is not None else contextlib.nullcontext():
        found = _guarded(check_domain, tree, require_complete=not partial, firmware=firmware)
    findings = [Finding("warning" if v.rule in WARNING_RULES else "error", v.message, rule=v.rule,
                        element=v.element) for v in found]
    result = CheckResult(findings)
    if libvirt or boot:
        from planner import stack as libvirt_stack

        try:
            report = libvirt_stack.verify(serialize_text(tree), boot=boot, firmware=boot,
                                          firmware_name=firmware, libvirt_version=version)
        except libvirt_stack.StackUnavailable as exc:
            raise BadInputError([f"real stack not available: {exc}"]) from None
        fw = report.firmware
        if fw is not None and fw.unavailable:  # --boot could not run the firmware: no verdict, not a pass
            raise BadInputError([f"real stack not available: firmware {fw.label}: {'; '.join(fw.errors)}"])
        result.stack = _stack_result(report, version)
    return result


def _stack_result(report, version: LibvirtVersion | None) -> StackResult:
    """version: the libvirt the rules judged for and the XML was defined in (None: the installed one)."""
    from planner.facts.facts import installed_libvirt, target_libvirt

    boot = None
    if report.boot is not None:
        b = report.boot
        boot = {"started": b.started, "error": b.error, "mismatches": list(b.mismatches),
                "devices_placed": len(b.placements), "notes": list(b.notes),
                "hotplug_probes": list(b.hotplug_probes)}
    fw = None
    if report.firmware is not None:
        f = report.firmware
        fw = {"name": f.name, "label": f.label, "ran": f.ran, "pci_setup_done": f.pci_setup_done,
              "errors": list(f.errors)}
    return StackResult(ok=report.ok, defined=report.define.ok, define_error=report.define.error,
                       changes=[{"kind": c.kind, "element": c.element, "detail": c.detail}
                                for c in report.changes],
                       boot=boot, firmware=fw, hotplug_failures=list(report.hotplug_failures),
                       lines=[f"libvirt: checked against {report.defined_by}", *report.summary_lines()],
                       libvirt_version=str(version or installed_libvirt()),
                       rules_for=str(version or target_libvirt()))


def attach_places(xml: XmlInput, device_xml: XmlInput, count: int | None = None) -> list[Place]:
    """Where a device can be hot-plugged into the running guest xml (its live XML, or a planned one):
    the free hot-pluggable places that fit it, in the order libvirt takes them (the first is the one
    `pciplan attach` writes). count: at most this many. Each Place has .address (bus, slot, function)
    and .bus (the controller that offers it).

    Raises BadInputError (a guest device without a PCI address, a device that takes none) or
    NotHotpluggableError (libvirt cannot hot-plug this kind)."""
    from planner.commands.attach import live_places

    if count is not None and count < 1:
        raise BadInputError([f"count: {count} must be 1 or more"])
    found = _guarded(live_places, _read(xml), _read(device_xml, "<device>", domain=False).getroot())
    return found.places if count is None else found.places[:count]


def attach_next_boot(xml: XmlInput, device_xml: XmlInput, opts: PlanOptions | None = None
                     ) -> tuple[PlanResult, str]:
    """The persistent definition with the device added for the next boot: every other address kept,
    controllers added as needed. Returns the plan and the device's new address (bus:slot.function, or
    "no PCI address" for a device that takes none)."""
    from planner.commands.attach import add_device

    tree = _read(xml)
    new = _guarded(add_device, tree, _read(device_xml, "<device>", domain=False).getroot())
    result = _plan_in_place(tree, _check_options(opts or PlanOptions()))
    return result, _pci_addresses(tree).get(new, "no PCI address")
