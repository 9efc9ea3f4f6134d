"""Per-device constraints, from three sources: a policy file (TOML, --policy), the domain's own
<metadata> (they travel with the guest through libvirt's define/dumpxml), and command-line flags.
Precedence: command line over metadata over policy file over defaults; inside one source the last
matching rule wins. A rule that matches nothing is a warning; an unknown attribute or value is an error.

In the domain XML:

    <metadata>
      <pciplan:constraints xmlns:pciplan="urn:pciplan:constraints:1">
        <pciplan:rule kind="interface" model="virtio" hotplug="yes"/>
        <pciplan:rule dev="vdb" hotplug="no" bus="pcie"/>
        <pciplan:spare pcie="2"/>
      </pciplan:constraints>
    </metadata>
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from lxml import etree

from planner.facts.options import BUS_CHOICES, DEVICE_KINDS, OBJECTIVE_DEFAULT, PlanOptions
from planner.pipeline.domain import Device, Problem, read_problem
from planner.xml.xmlio import InputError

NAMESPACE = "urn:pciplan:constraints:1"
CONSTRAINTS = f"{{{NAMESPACE}}}constraints"
MATCHERS = ("kind", "model", "alias", "mac", "dev", "host")
SETTINGS = {"hotplug": ("yes", "no"), "bus": tuple(b for b in BUS_CHOICES if b != "default")}
SETTING_NAMES = ("hotplug", "bus", "numa", "host-numa", "connection")
NOT_YET: tuple[str, ...] = ()  # constraint kinds this version does not place
CONNECTIONS = ("pcie-root-port", "pcie-switch-downstream-port", "pcie-root", "pci-root", "pci-bridge",
               "pcie-to-pci-bridge", "dmi-to-pci-bridge", "pci-expander-bus")


@dataclass
class Rule:
    where: str  # for messages: "policy.toml rule 2", "metadata rule 1", "--hotplug interface"
    match: dict[str, str]
    hotplug: str | None = None
    bus: str | None = None
    numa: int | None = None
    connection: str | None = None
    host_numa: bool = False
    matched: int = 0

    def matches(self, d: Device) -> bool:
        return all(_value(d, k) == v.lower() for k, v in self.match.items())


@dataclass
class RuleSet:
    rules: list[Rule] = field(default_factory=list)  # in precedence order, lowest first
    spare_pcie: int | None = None
    spare_pci: int | None = None
    objective: tuple[str, ...] | None = None
    reserve: dict[str, int] = field(default_factory=dict)  # "kind[:model]" -> free places to keep


def reservation(where: str, key: str, count: object) -> tuple[str, int]:
    """A checked reservation: ('interface:virtio', 4)."""
    kind, _, model = key.partition(":")
    if kind not in DEVICE_KINDS:
        raise InputError(f"{where}: unknown device kind '{kind}' (one of {', '.join(sorted(DEVICE_KINDS))})")
    return (f"{kind}:{model}" if model else kind), _spare(where, count)


def parse_reserve(text: str) -> tuple[str, int]:
    """--reserve KIND[:MODEL]=N"""
    key, sep, count = text.partition("=")
    if not sep:
        raise InputError(f"--reserve {text}: expected KIND[:MODEL]=N, e.g. interface=4 or disk:virtio=8")
    return reservation(f"--reserve {text}", key.strip(), count.strip())


def _value(d: Device, key: str) -> str | None:
    el = d.element
    if key == "kind":
        return d.kind
    if key == "model":
        return (d.model or "").lower()
    if key == "alias":
        a = el.find("alias")
        return a.get("name").lower() if a is not None and a.get("name") else None
    if key == "mac":
        m = el.find("mac")
        return m.get("address").lower() if m is not None and m.get("address") else None
    if key == "dev":
        t = el.find("target")
        return t.get("dev").lower() if t is not None and t.get("dev") else None
    if key == "host":
        a = el.find("source/address")
        if a is None:
            return None
        parts = [int(a.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function")]
        return f"{parts[0]:04x}:{parts[1]:02x}:{parts[2]:02x}.{parts[3]:x}"
    return None


def _rule(where: str, attrs: dict[str, str]) -> Rule:
    match, hotplug, bus, numa, connection, host_numa = {}, None, None, None, None, False
    for key, value in attrs.items():
        value = str(value)
        if key in MATCHERS:
            if key == "kind" and value not in DEVICE_KINDS:
                kinds = ", ".join(sorted(DEVICE_KINDS))
                raise InputError(f"{where}: unknown device kind '{value}' (one of {kinds})")
            match[key] = value
        elif key == "connection":
            if value not in CONNECTIONS:
                raise InputError(f"{where}: connection='{value}' is not one of {', '.join(CONNECTIONS)}")
            connection = value
        elif key == "host-numa":
            if value != "auto":
                raise InputError(f"{where}: host-numa='{value}' is not 'auto'")
            host_numa = True
        elif key == "numa":
            try:
                numa = int(value)
            except ValueError:
                raise InputError(f"{where}: numa='{value}' is not a guest NUMA node number") from None
        elif key in SETTINGS:
            if value not in SETTINGS[key]:
                raise InputError(f"{where}: {key}='{value}' is not one of {', '.join(SETTINGS[key])}")
            hotplug, bus = (value, bus) if key == "hotplug" else (hotplug, value)
        elif key in NOT_YET:
            raise InputError(f"{where}: the '{key}' constraint is not supported by this version of pciplan")
        else:
            raise InputError(f"{where}: unknown attribute '{key}' (match on {', '.join(MATCHERS)}; "
                             f"set {', '.join(SETTING_NAMES)})")
    if not match:
        raise InputError(f"{where}: a rule needs at least one of {', '.join(MATCHERS)} to match devices")
    if hotplug is None and bus is None and numa is None and connection is None and not host_numa:
        raise InputError(f"{where}: a rule sets nothing (hotplug, bus, numa, host-numa or connection)")
    return Rule(where, match, hotplug, bus, numa, connection, host_numa)


def objective_order(text: str, where: str) -> tuple[str, ...]:
    """'controllers,hotplug,pcie,buses' as a tuple; every level exactly once."""
    order = tuple(part.strip() for part in text.split(",") if part.strip())
    if sorted(order) != sorted(OBJECTIVE_DEFAULT):
        raise InputError(f"{where}: '{text}' is not an order of {', '.join(OBJECTIVE_DEFAULT)} "
                         "(each exactly once)")
    return order


def _spare(where: str, value: object) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise InputError(f"{where}: '{value}' is not a number") from None
    if not 0 <= n <= 255:
        raise InputError(f"{where}: {n} is out of range (0-255)")
    return n


def from_policy(path: str | Path) -> RuleSet:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    out = RuleSet()
    for key, value in data.items():
        if key == "rule":
            if not isinstance(value, list):
                raise InputError(f"{path}: 'rule' must be an array of tables ([[rule]])")
            out.rules += [_rule(f"{path} rule {i + 1}", r) for i, r in enumerate(value)]
        elif key == "spare-pcie":
            out.spare_pcie = _spare(f"{path} spare-pcie", value)
        elif key == "spare-pci":
            out.spare_pci = _spare(f"{path} spare-pci", value)
        elif key == "objective":
            out.objective = objective_order(str(value), f"{path} objective")
        elif key == "reserve":
            if not isinstance(value, dict):
                raise InputError(f"{path}: 'reserve' must be a table ([reserve] interface = 4)")
            out.reserve.update(reservation(f"{path} reserve.{k}", k, n) for k, n in value.items())
        else:
            raise InputError(f"{path}: unknown key '{key}' (rule, spare-pcie, spare-pci, objective, reserve)")
    return out


def from_metadata(tree: etree._ElementTree) -> RuleSet:
    out = RuleSet()
    # root.iterfind("metadata/{ns}constraints"), by the same child steps without ElementPath's parsing
    blocks = (b for m in tree.getroot().iterchildren("metadata") for b in m.iterchildren(CONSTRAINTS))
    for block in blocks:
        for n, el in enumerate((c for c in block if isinstance(c.tag, str)), start=1):
            where = f"metadata constraints, element {n}"
            local = etree.QName(el).localname
            if etree.QName(el).namespace != NAMESPACE:
                raise InputError(f"{where}: <{el.tag}> is not in pciplan's namespace {NAMESPACE}")
            if local == "rule":
                out.rules.append(_rule(f"{where} (rule)", dict(el.attrib)))
            elif local == "spare":
                for k, v in el.attrib.items():
                    if k == "pcie":
                        out.spare_pcie = _spare(f"{where} (spare pcie)", v)
                    elif k == "pci":
                        out.spare_pci = _spare(f"{where} (spare pci)", v)
                    else:
                        raise InputError(f"{where}: unknown attribute '{k}' of <spare> (pcie, pci)")
            elif local == "reserve":
                extra = set(el.attrib) - {"kind", "model", "count"}
                if extra or "kind" not in el.attrib or "count" not in el.attrib:
                    raise InputError(f"{where}: <reserve> takes kind, count and optionally model")
                key = el.get("kind") + (f":{el.get('model')}" if el.get("model") else "")
                k, n = reservation(f"{where} (reserve)", key, el.get("count"))
                out.reserve[k] = n
            elif local == "objective":
                if set(el.attrib) != {"order"}:
                    raise InputError(f"{where}: <objective> takes one attribute, order")
                out.objective = objective_order(el.get("order", ""), f"{where} (objective order)")
            else:
                raise InputError(f"{where}: unknown element <{local}> (rule, spare, reserve, objective)")
    return out


def _nodeset(text: str) -> set[int]:
    """A libvirt nodeset ('0-2,^1,4') as a set of node numbers."""
    nodes: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        drop = part.startswith("^")
        part = part.lstrip("^")
        lo, _, hi = part.partition("-")
        span = set(range(int(lo), int(hi or lo) + 1))
        nodes = nodes - span if drop else nodes | span
    return nodes


def host_numa_cell(problem: Problem, d: Device, where: str) -> int:
    """The guest NUMA cell for a host device: its host node from sysfs (PCIPLAN_SYSFS_ROOT overrides
    /sys for tests), mapped through <numatune><memnode cellid nodeset>."""
    if d.kind not in ("hostdev", "interface") or _value(d, "host") is None:
        raise InputError(f"{where}: host-numa=auto needs a PCI host device; {d.label} is not one")
    host = _value(d, "host")
    sysfs = Path(os.environ.get("PCIPLAN_SYSFS_ROOT", "/sys"))
    path = sysfs / "bus" / "pci" / "devices" / str(host) / "numa_node"
    try:
        node = int(path.read_text().strip())
    except (OSError, ValueError):
        raise InputError(f"{d.label}: host-numa=auto: cannot read the host device's NUMA node "
                         f"({path})") from None
    if node < 0:
        raise InputError(f"{d.label}: host-numa=auto: the host reports no NUMA node for {host}")
    for memnode in problem.tree.getroot().iterfind("numatune/memnode"):
        try:
            if node in _nodeset(memnode.get("nodeset", "")):
                return int(memnode.get("cellid", "-1"))
        except ValueError:
            raise InputError(f"numatune/memnode: nodeset '{memnode.get('nodeset')}' is not valid") from None
    raise InputError(f"{d.label}: host-numa=auto: host node {node} of {host} is bound to no guest cell "
                     "(<numatune><memnode cellid='N' nodeset='...'/>)")


def from_flags(hotplug: frozenset[str], no_hotplug: frozenset[str], bus: str,
               host_numa: bool = False) -> RuleSet:
    out = RuleSet()
    if host_numa:
        out.rules.append(Rule("--host-numa auto", {"kind": "hostdev"}, host_numa=True))
    out.rules += [Rule(f"--hotplug {k}", {"kind": k}, hotplug="yes") for k in sorted(hotplug)]
    out.rules += [Rule(f"--no-hotplug {k}", {"kind": k}, hotplug="no") for k in sorted(no_hotplug)]
    if bus != "default":
        out.rules += [Rule(f"--bus {bus}", {"kind": k}, bus=bus) for k in sorted(DEVICE_KINDS)]
    return out


def apply(problem: Problem, sources: list[RuleSet]) -> list[str]:
    """Set each device's hotplug and bus rule from the sources (lowest precedence first); returns
    warnings for rules that matched nothing."""
    sources = [s for s in sources if s.rules]  # most guests have none: then no walk over the devices
    for d in problem.devices if sources else ():
        for source in sources:
            for rule in source.rules:
                if rule.matches(d):
                    rule.matched += 1
                    if rule.hotplug is not None:
                        d.hotplug_rule, d.hotplug_rule_from = rule.hotplug, rule.where
                    if rule.bus is not None:
                        d.bus_rule, d.bus_rule_from = rule.bus, rule.where
                    if rule.numa is not None:
                        if rule.numa >= problem.numa_cells:
                            raise InputError(f"{rule.where}: numa={rule.numa}, but the guest's <cpu><numa> "
                                             f"has {problem.numa_cells} cell(s)")
                        d.numa_rule = rule.numa
                    if rule.connection is not None:
                        d.connection_rule = rule.connection
                    if rule.host_numa:
                        d.numa_rule = host_numa_cell(problem, d, rule.where)
    return [f"{r.where} matches no device" for s in sources for r in s.rules
            if not r.matched and not r.where.startswith("--bus")]


def read_with_rules(tree: etree._ElementTree, options: PlanOptions) -> tuple[Problem, PlanOptions, list[str]]:
    """The problem with the user's rules applied (policy < metadata < command line), the options with
    the spare counts, reservations and objective order they set resolved once, and the warnings."""
    problem = read_problem(tree, options.firmware)
    policy = from_policy(options.policy) if options.policy else RuleSet()
    metadata = from_metadata(tree) if options.use_metadata else RuleSet()
    flags = from_flags(options.hotplug_kinds, options.no_hotplug_kinds, options.bus, options.host_numa)
    warnings = apply(problem, [policy, metadata, flags])
    spare_pcie = options.spare_pcie
    spare_pci = options.spare_pci
    order = options.objective_order
    reserve = {**policy.reserve, **metadata.reserve, **dict(options.reserve)}
    for src in (metadata, policy):
        spare_pcie = src.spare_pcie if spare_pcie is None else spare_pcie
        spare_pci = src.spare_pci if spare_pci is None else spare_pci
        order = src.objective if order is None else order
    return problem, replace(options, spare_pcie=spare_pcie, spare_pci=spare_pci,
                            objective_order=order or OBJECTIVE_DEFAULT,
                            reserve=tuple(sorted(reserve.items()))), warnings
