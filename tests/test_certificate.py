"""The optimality certificate (planner/pipeline/certificate.py) against the solver: wherever it proves a plan
optimal without CP-SAT, the solver's plan of the same guest is the same, byte for byte (the XML and
the whole summary: status, objective, every level, bound, gap, I/O space, notes), and it proves a
meaningful share of typical guests. A layout that misses a bound is never certified."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import REPO, subprocess_env
from fleetgen import typical_guest
from guestgen import fresh_xml, random_shape

import planner.pipeline.plan
from planner.facts.options import PlanOptions
from planner.pipeline import certificate
from planner.pipeline.prepare import prepare
from planner.pipeline.solver.solve import build
from planner.xml.xmlio import parse_domain_bytes, serialize


def _plan(xml: str, options: PlanOptions, certify: bool) -> tuple[bytes, dict, bool]:
    """(written bytes, summary without its timing, whether the certificate decided) of one plan."""
    before = certificate.STATS.certified
    original = planner.pipeline.plan.certify
    if not certify:
        planner.pipeline.plan.certify = lambda prep, options: None
    try:
        tree = parse_domain_bytes(xml.encode())
        summary = planner.pipeline.plan.plan_tree(tree, options)
    finally:
        planner.pipeline.plan.certify = original
    data = summary.as_json()
    data.pop("solve_seconds")
    return serialize(tree), data, certificate.STATS.certified > before


def _guests() -> list[tuple[str, str, PlanOptions]]:
    """Typical guests (other seeds than the recorded corpus's), random shapes, and option variants
    that move the bounds (spare ports and slots, firmware budgets)."""
    out = []
    rng = random.Random(2024)
    for n in range(90):
        out.append((f"typical-{n}", typical_guest(n, rng), PlanOptions()))
    rng = random.Random(2025)
    for n in range(40):
        shape = replace(random_shape(rng, heavy=n % 4 == 0), partial=0.0, numa=0)
        out.append((f"shape-{n}-{shape.label}", fresh_xml(shape), PlanOptions()))
    # conventional devices without a hot-plug wish beside conventional NICs that want it (q35: the
    # root bus's packed slots or the new bridge), up to the bridge's 31 slots and beyond
    sounds = ["ich6", "ac97", "es1370"]
    for n, (nics, others) in enumerate([(1, 1), (1, 7), (3, 9), (2, 17), (25, 30), (29, 20), (30, 9),
                                        (31, 2), (0, 5), (12, 40), (28, 24), (5, 0)]):
        for machine in ("q35", "pc"):
            devices = "".join(f"<interface type='user'><mac address='52:54:00:00:01:{i:02x}'/><model "
                              f"type='{'e1000' if i % 3 else 'rtl8139'}'/></interface>" for i in range(nics))
            devices += "".join(f"<sound model='{sounds[(i + n) % 3]}'/>" for i in range(others))
            devices += "<interface type='user'><model type='virtio'/></interface>" * (n % 3)
            devices += "<controller type='usb' index='1' model='piix3-uhci'/>" if n % 2 else ""
            out.append((f"mixed-{machine}-{nics}-{others}", _domain(machine, devices), PlanOptions()))
    # existing PCIe ports (some empty, some with hot-plug off, a switch) that the devices fill first
    rng = random.Random(5)
    for n in range(45):
        xml = typical_guest(n, rng)
        if n % 3 == 1:
            continue  # pc: no PCIe ports
        k = rng.randint(1, 6)
        ports = "".join(f"<controller type='pci' index='{i}' model='pcie-root-port'>"
                        + ("<target hotplug='off'/>" if i % 5 == 4 else "") + "</controller>"
                        for i in range(1, k + 1))
        if n % 5 == 0:
            ports += (f"<controller type='pci' index='{k + 1}' model='pcie-switch-upstream-port'/>"
                      f"<controller type='pci' index='{k + 2}' model='pcie-switch-downstream-port'/>")
        xml = xml.replace("<devices>\n", "<devices>\n    <controller type='pci' index='0' model='pcie-root'/>"
                          + ports + "\n", 1)
        out.append((f"ports-{n}", xml, PlanOptions(spare_pcie=2) if n % 4 == 0 else PlanOptions()))
    # empty ports of two kinds (root ports, a switch's downstream port): the earliest devices take
    # the lowest indices, as the solver's tie-break (libvirt's order) puts them
    switch = ("<controller type='pci' index='0' model='pcie-root'/>"
              "<controller type='pci' index='1' model='pcie-root-port'/>"
              "<controller type='pci' index='2' model='pcie-switch-upstream-port'/>"
              "<controller type='pci' index='3' model='pcie-switch-downstream-port'/>"
              "<controller type='pci' index='4' model='pcie-root-port'/>"
              "<controller type='pci' index='5' model='pcie-root-port'/>")
    for first in ("e1000e", "virtio"):
        nics = "".join(f"<interface type='user'><model type='{m}'/></interface>"
                       for m in (first, "virtio", "e1000e", "virtio"))
        out.append((f"switch-{first}", _domain("q35", switch + nics), PlanOptions()))
    rng = random.Random(2026)
    variants = [PlanOptions(spare_pcie=0), PlanOptions(spare_pcie=3), PlanOptions(spare_pci=2),
                PlanOptions(firmware="ovmf"), PlanOptions(firmware="none"), PlanOptions(spare_pci=0)]
    for n in range(36):
        out.append((f"variant-{n}", typical_guest(n, rng), variants[n % len(variants)]))
    return out


def _domain(machine: str, devices: str) -> str:
    arch = "aarch64" if machine == "virt" else "x86_64"
    return (f"<domain type='qemu'><name>g</name><memory unit='KiB'>1048576</memory><os><type arch='{arch}' "
            f"machine='{machine}'>hvm</type></os><features><acpi/></features><devices>{devices}</devices>"
            "</domain>")


GUESTS = _guests()


def test_certified_plans_are_the_solvers() -> None:
    certified = 0
    by_machine: dict[str, int] = {}
    for name, xml, options in GUESTS:
        mine = _plan(xml, options, certify=True)
        solver = _plan(xml, options, certify=False)
        assert mine[:2] == solver[:2], name
        if mine[2]:
            certified += 1
            by_machine[mine[1]["machine"]] = by_machine.get(mine[1]["machine"], 0) + 1
            assert mine[1]["status"] == "optimal" and mine[1]["gap"] == 0.0, name
    # the comparison is not vacuous: most typical guests are certified, on every machine
    assert certified >= 100, certified
    assert set(by_machine) == {"q35", "pc", "virt-aarch64"}, by_machine
    assert min(by_machine.values()) >= 20, by_machine


def test_planned_guests_planned_again_are_certified_as_the_solver_plans_them() -> None:
    """A second pass over planned guests (nothing left to place, controllers in place): certified, and
    the same as the solver's plan (which changes nothing)."""
    certified = 0
    for name, xml, options in GUESTS[::3]:
        planned = _plan(xml, options, certify=True)[0].decode()
        mine = _plan(planned, options, certify=True)
        assert mine[:2] == _plan(planned, options, certify=False)[:2], name
        assert mine[0] == planned.encode(), name
        certified += mine[2]
    assert certified >= 0.9 * len(GUESTS[::3]), certified


def test_addressed_guests_that_lack_spare_ports_get_them_as_the_solver_adds_them() -> None:
    """Every device addressed, but fewer empty hot-pluggable ports than wished for: the certificate adds
    the root ports, as the solver does."""
    certified = 0
    cases = [(xml, options) for _name, xml, options in GUESTS[:60:2]]
    for xml, _options in cases:
        planned = _plan(xml, PlanOptions(spare_pcie=0), certify=True)[0].decode()
        for again in (PlanOptions(), PlanOptions(spare_pcie=4), PlanOptions(spare_pcie=12)):
            mine = _plan(planned, again, certify=True)
            assert mine[:2] == _plan(planned, again, certify=False)[:2]
            certified += mine[2] and sum(mine[1]["controllers_added"].values()) > 0
    assert certified >= 30, certified


def _prepared(xml: str, options: PlanOptions | None = None):
    tree = parse_domain_bytes(xml.encode())
    problem, options, _ = planner.pipeline.plan._read(tree, options or PlanOptions())
    prep = prepare(problem, options)
    return prep, options, build(prep, options, validate=False)


Q35 = typical_guest(0, random.Random(7))  # virtio, e1000e and e1000 NICs, virtio disks on q35


def test_a_layout_that_misses_a_bound_is_not_certified() -> None:
    """The constructed layout is proven; the same layout with one more spare root port (a valid
    layout, one controller worse) or with one device packed into a root port (hot-plug lost) is not."""
    prep, options, built = _prepared(Q35)
    shape = certificate._shape(prep, built)
    assert shape is not None
    layout = certificate._construct(prep, built, shape)
    assert layout is not None
    assert certificate.prove(prep, options, built, layout) is not None
    pool = built.vars.root_ports[0]
    worse = dict(layout)
    worse[pool.spare.Index()] += 1
    assert certificate.prove(prep, options, built, worse) is None
    packed = dict(layout)
    gi = shape.port[0]
    packed[pool.alone[gi].Index()] -= 1
    packed[pool.packed[gi].Index()] = 1
    packed[pool.pack_noio.Index()] = 1
    assert certificate.prove(prep, options, built, packed) is None


def test_libvirts_suboptimal_layout_is_not_what_is_certified() -> None:
    """On the typical q35 guest libvirt's greedy spends a root port on the USB controller: the
    certificate proves pciplan's layout, which has fewer controllers, and the plan says no tie."""
    from planner.pipeline.greedy import greedy_plan

    xml, data, certified = _plan(Q35, PlanOptions(), certify=True)
    assert certified
    greedy = greedy_plan(Q35)
    assert greedy.ok
    theirs = sum(greedy.controllers_added.values())
    assert sum(data["controllers_added"].values()) < theirs
    assert not any(n.startswith("ties with libvirt") for n in data["notes"])


@pytest.mark.parametrize("what", ["controllers", "rules", "order", "replan"])
def test_guests_outside_the_certificate_go_to_the_solver(what: str, guest_xml) -> None:
    options = PlanOptions()
    xml = Q35
    if what == "controllers":
        xml = guest_xml("q35", "<controller type='pci' index='1' model='dmi-to-pci-bridge'/>"
                        "<interface type='user'><model type='virtio'/></interface>").decode()
    elif what == "rules":
        options = PlanOptions(hotplug_kinds=frozenset({"interface"}))
    elif what == "order":
        options = PlanOptions(objective_order=("controllers", "hotplug", "pcie", "buses"))
    else:
        options = PlanOptions(replan=True)
    assert not _plan(xml, options, certify=True)[2]


def test_a_certified_plan_does_not_import_ortools() -> None:
    code = ("import sys\nfrom pathlib import Path\nfrom planner.commands.api import plan\n"
            f"assert plan(Path({str(REPO / 'examples' / 'q35-server.xml')!r})).status == 'optimal'\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ortools', 'numpy', 'pandas')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=subprocess_env())
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _compared(result) -> dict:
    """A SolveResult's fields the plan reads (the model's variables and solution, and the time, aside)."""
    return {k: getattr(result, k) for k in ("status", "objective", "bound", "gap", "values", "pool",
                                            "io_units", "io_budget", "io_cuts", "counts")}


def _documents() -> list[tuple[str, bytes]]:
    """Recorded corpus inputs (every fourth, for time) and their planned outputs, and the planned
    outputs of this file's guests: documents with nothing left to place, and some with devices."""
    from recorded import corpus

    out = []
    for i, (name, data) in enumerate(corpus(shared=False)):
        if i % 4:
            continue
        out.append((name, data))
        try:
            tree = parse_domain_bytes(data)
            planner.pipeline.plan.plan_tree(tree, PlanOptions())
        except Exception:  # noqa: BLE001 - broken and infeasible guests have no output to plan again
            continue
        out.append((f"{name} planned", serialize(tree)))
    for name, xml, options in GUESTS[::2]:
        out.append((f"{name} planned", _plan(xml, options, certify=True)[0]))
    # many ports, and an expander bus with ports of its own: the objective's weights grow
    ports = "".join(f"<controller type='pci' index='{i}' model='pcie-root-port'/>" for i in range(1, 200))
    pxb = ("<controller type='pci' index='200' model='pcie-expander-bus'><target busNr='220'><node>0</node>"
           "</target></controller><controller type='pci' index='201' model='pcie-root-port'>"
           "<address type='pci' bus='200' slot='0'/></controller>")
    for extra in ("", pxb):
        xml = _domain("q35", "<controller type='pci' index='0' model='pcie-root'/>" + ports + extra)
        xml = xml.replace("<os>", "<cpu><numa><cell id='0' cpus='0' memory='1048576'/></numa></cpu><os>")
        out.append((f"ports{extra and ' and expander'} planned", _plan(xml, PlanOptions(), certify=True)[0]))
    return out


def test_planned_again_without_the_model_is_the_models_result() -> None:
    """The short path for a guest with nothing to place (certificate.planned_again, no model built)
    gives what the model-based certificate gives, field by field, under options that move its levels
    (spares, firmware budgets, objective orders, reservations); and it decides most such cases."""
    variants = [PlanOptions(), PlanOptions(spare_pcie=0), PlanOptions(spare_pcie=5),
                PlanOptions(spare_pcie=40), PlanOptions(spare_pci=2), PlanOptions(spare_pci=40),
                PlanOptions(firmware="ovmf", spare_pcie=9), PlanOptions(firmware="seabios"),
                PlanOptions(firmware="none"),
                PlanOptions(objective_order=("controllers", "hotplug", "pcie", "buses")),
                PlanOptions(reserve=(("interface", 2),))]
    both = short = model_only = 0
    for name, data in _documents():
        for n, options in enumerate(variants):
            try:
                tree = parse_domain_bytes(data)
                problem, resolved, _ = planner.pipeline.plan._read(tree, options)
                prep = prepare(problem, resolved)
            except Exception:  # noqa: BLE001 - guests these options make invalid or infeasible
                continue
            if prep.groups or certificate._outside(prep, resolved):
                continue
            mine = certificate.planned_again(prep)
            theirs = certificate.by_model(prep, resolved)
            if mine is not None:
                assert theirs is not None, (name, n)
                assert _compared(mine) == _compared(theirs), (name, n)
                both += 1
            elif theirs is not None:
                model_only += 1
            short += mine is not None
    assert both >= 300, (both, model_only)
    assert model_only <= 0.1 * both, (both, model_only)


def test_direct_without_the_model_is_the_models_result() -> None:
    """The short path for a guest whose only bus is the root (certificate.direct, no model built) gives
    what the model-based certificate gives, field by field, over the recorded corpus's inputs, this
    file's guests and typical generated guests under options that move its levels (spares, firmware
    budgets, reservations, objective orders); and it decides nearly every such guest by_model
    certifies. Where it says by_model would not certify a guest, by_model does not, for that reason."""
    from recorded import corpus

    variants = [PlanOptions(), PlanOptions(spare_pcie=0), PlanOptions(spare_pcie=3), PlanOptions(spare_pci=2),
                PlanOptions(spare_pci=0), PlanOptions(firmware="ovmf"), PlanOptions(firmware="none"),
                PlanOptions(firmware="seabios", spare_pcie=6), PlanOptions(spare_pcie=40),
                PlanOptions(spare_pci=40), PlanOptions(firmware="ovmf", spare_pcie=9),
                PlanOptions(objective_order=("controllers", "hotplug", "pcie", "buses"))]
    rng = random.Random(21)
    documents = [(name, data) for i, (name, data) in enumerate(corpus(shared=False)) if i % 3 == 0]
    documents += [(name, xml.encode()) for name, xml, _options in GUESTS]
    documents += [(f"fleet-{n}", typical_guest(n, rng).encode()) for n in range(150)]
    for machine in ("q35", "pc", "virt"):  # large guests: near the root bus's room and the weights' limit
        for n in (60, 200):
            devices = "".join(f"<disk type='file' device='disk'><source file='/i/{i}.img'/>"
                              f"<target dev='vd{i}' bus='virtio'/></disk>" for i in range(n))
            devices += "".join(f"<interface type='user'><model type='{'e1000' if i % 2 else 'virtio'}'/>"
                               "</interface>" for i in range(n // 4))
            documents.append((f"large-{machine}-{n}", _domain(machine, devices).encode()))
    both = model_only = refused = 0
    for name, xml in documents:
        for n, options in enumerate(variants[:1] if name.startswith("fleet") else variants):
            try:
                tree = parse_domain_bytes(xml)
                problem, resolved, _ = planner.pipeline.plan._read(tree, options)
                prep = prepare(problem, resolved)
            except Exception:  # noqa: BLE001 - guests these options make invalid
                continue
            mine = certificate.direct(prep, resolved)
            before = dict(certificate.STATS.reasons)
            theirs = certificate.by_model(prep, resolved)
            if isinstance(mine, str):  # sure that by_model does not certify it, and why
                assert theirs is None, (name, n, mine)
                missed = {k for k, count in certificate.STATS.reasons.items() if count != before.get(k, 0)}
                assert missed == {mine}, (name, n, mine, missed)
                refused += 1
            elif mine is not None:
                assert theirs is not None, (name, n)
                assert _compared(mine) == _compared(theirs), (name, n)
                both += 1
            elif theirs is not None and prep.groups and len(prep.states) == 1:
                model_only += 1
    assert both >= 1500, (both, model_only)
    assert model_only <= 0.02 * both, (both, model_only)
    assert refused >= 50, refused


def _pc_crowded() -> list[tuple[str, str, PlanOptions]]:
    """pc guests whose pci-root has too few free slots for the devices wanting hot-plug alone, the
    packed slots and the spare slots (certificate._pc_bridge): hot-plug NICs and disks around the 30
    free slots and beyond one bridge's 31, conventional sound devices without a wish (packed), under
    spare-slot and firmware options; and typical generated pc guests that come there."""
    out = []
    sounds = ["ich6", "ac97", "es1370"]
    variants = [PlanOptions(), PlanOptions(spare_pci=0), PlanOptions(spare_pci=3), PlanOptions(spare_pci=40),
                PlanOptions(firmware="seabios"), PlanOptions(firmware="ovmf"), PlanOptions(firmware="none")]
    rng = random.Random(31)
    for n in range(60):
        nics, disks, others = rng.randint(14, 40), rng.randint(0, 12), rng.choice([0, 0, 1, 3, 9, 17, 30])
        devices = "".join(f"<interface type='user'><mac address='52:54:00:00:{n:02x}:{i:02x}'/><model "
                          f"type='{rng.choice(['virtio', 'e1000', 'rtl8139'])}'/></interface>"
                          for i in range(nics))
        devices += "".join(f"<disk type='file' device='disk'><source file='/i/{n}-{i}.img'/>"
                           f"<target dev='vd{chr(97 + i)}' bus='virtio'/></disk>" for i in range(disks))
        devices += "".join(f"<sound model='{sounds[(i + n) % 3]}'/>" for i in range(others))
        devices += "<controller type='usb' index='0' model='piix3-uhci'/>" if n % 2 else ""
        options = variants[n % len(variants)]
        out.append((f"crowded-{n}-{nics}-{disks}-{others}", _domain("pc", devices), options))
    for n, nics in enumerate([45, 58, 61, 75, 90, 118, 140, 200]):  # beyond one bridge: nested bridges
        devices = "".join(f"<interface type='user'><model type='{'virtio' if i % 3 else 'e1000'}'/>"
                          "</interface>" for i in range(nics))
        devices += "".join(f"<sound model='{sounds[i % 3]}'/>" for i in range(n * 3))
        for options in (PlanOptions(), PlanOptions(spare_pci=5), PlanOptions(firmware="ovmf")):
            out.append((f"many-{nics}-{n * 3}", _domain("pc", devices), options))
    rng = random.Random(77)
    for n in range(1, 1200, 3):  # typical generated guests: pc is every third
        xml = typical_guest(n, rng)
        out.append((f"fleet-{n}", xml, PlanOptions()))
    return out


def test_crowded_pc_guests_get_the_solvers_bridge() -> None:
    """The pc guests whose root slots are too few (certificate._pc_bridge: new pci-bridges) are
    certified as the solver plans them, byte for byte and the whole summary; direct and by_model agree
    on them; and the case is met often, with devices both in bridges and left on the root, and with
    more than one bridge."""
    bridged = on_root = fleet = nested = 0
    for name, xml, options in _pc_crowded():
        tree = parse_domain_bytes(xml.encode())
        problem, resolved, _ = planner.pipeline.plan._read(tree, options)
        prep = prepare(problem, resolved)
        built = build(prep, resolved, validate=False)
        shape = certificate._shape(prep, built)
        if certificate._outside(prep, resolved) or shape is None:
            continue
        if not certificate._pc_bridge(prep, built, shape):
            continue
        mine = _plan(xml, options, certify=True)
        assert mine[:2] == _plan(xml, options, certify=False)[:2], name
        direct = certificate.direct(prep, resolved)
        model = certificate.by_model(prep, resolved)
        if isinstance(direct, str) or direct is None:
            assert model is None or direct is None, (name, direct)
        else:
            assert model is not None and _compared(direct) == _compared(model), name
        if mine[2]:
            bridged += 1
            on_root += mine[1]["objective_levels"]["root_slots_used"] > 1
            fleet += name.startswith("fleet")
            nested += mine[1]["objective_levels"]["controllers_added"] > 1
    assert bridged >= 40 and on_root >= 10 and fleet >= 5 and nested >= 10, (bridged, on_root, fleet, nested)


def _roomy_guests() -> list[tuple[str, str, PlanOptions]]:
    """q35 and aarch64 virt guests with more empty root ports than devices wanting hot-plug (as
    virt-install writes them: a row of root ports), devices without a wish (a USB controller, a
    balloon, an RNG: one pack) or none, under spare-port and firmware options."""
    out = []
    rng = random.Random(41)
    variants = [PlanOptions(), PlanOptions(spare_pcie=0), PlanOptions(spare_pcie=3),
                PlanOptions(firmware="none"), PlanOptions(spare_pcie=6)]
    extras = ["<controller type='usb' model='qemu-xhci'/>", "<memballoon model='virtio'/>",
              "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
              "<controller type='scsi' model='virtio-scsi'/>", "<controller type='virtio-serial'/>",
              "<sound model='ich6'/>", "<sound model='ich9'/>", "<video><model type='virtio'/></video>"]
    for n in range(90):
        machine = ("q35", "virt")[n % 2]
        devices = []
        for i in range(rng.randint(0, 6)):
            model = rng.choice(["virtio", "e1000e"] if machine == "q35" else ["virtio"])
            devices.append(f"<interface type='user'><mac address='52:54:00:01:{n:02x}:{i:02x}'/><model "
                           f"type='{model}'/></interface>")
        for i in range(rng.randint(0, 4)):
            devices.append(f"<disk type='file' device='disk'><source file='/i/{n}-{i}.img'/>"
                           f"<target dev='vd{chr(97 + i)}' bus='virtio'/></disk>")
        devices += rng.sample(extras, rng.choice([0, 0, 0, 1, 2, 3, 5]))
        rng.shuffle(devices)
        ports = "".join(f"<controller type='pci' index='{i}' model='pcie-root-port'/>"
                        for i in range(1, len(devices) + rng.randint(0, 8) + 1))
        root = "<controller type='pci' index='0' model='pcie-root'/>"
        if n % 3 == 0:  # a port taken already (an addressed NIC)
            devices.append("<interface type='user'><model type='virtio'/><address type='pci' domain='0x0000' "
                           "bus='0x01' slot='0x00' function='0x0'/></interface>")
        xml = _domain(machine, root + ports + "".join(devices))
        out.append((f"roomy-{n}", xml, variants[n % len(variants)]))
    return out


def test_empty_ports_to_spare_are_filled_as_the_solver_fills_them() -> None:
    """More existing empty root ports than devices wanting one (certificate._roomy): certified as the
    solver plans them, byte for byte and the whole summary, with a pack of devices without a wish
    in a port or on the root (where some of them may not go in a port) or none, beside ports taken
    already; and each case is met often."""
    packs = alone = on_root = taken = 0

    def n_taken(prep) -> bool:
        return any(e and e not in certificate._empty_ports(prep) for e in prep.states)

    for name, xml, options in _roomy_guests():
        tree = parse_domain_bytes(xml.encode())
        problem, resolved, _ = planner.pipeline.plan._read(tree, options)
        prep = prepare(problem, resolved)
        if certificate._outside(prep, resolved) or not prep.groups:
            continue
        shape = certificate._shape(prep, build(prep, resolved, validate=False))
        mine = _plan(xml, options, certify=True)
        assert mine[:2] == _plan(xml, options, certify=False)[:2], name
        if shape is not None and shape.roomy is not None and mine[2]:
            packs += -1 in shape.roomy
            on_root += -1 not in shape.roomy and bool(shape.root or shape.either)
            alone += not (shape.root or shape.either)
            taken += n_taken(prep)
    assert packs >= 10 and on_root >= 15 and alone >= 5 and taken >= 8, (packs, on_root, alone, taken)
