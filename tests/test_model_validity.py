"""CP-SAT is never handed an invalid model: large partial guests at every limit (256 bus numbers,
controller index 255, full root buses, 600+ devices) build a model CP-SAT's own validation accepts, and
the two guests that once ended in MODEL_INVALID plan. Most cases are validated without solving:
validation is cheap, solving guests this large is not."""

from __future__ import annotations

import copy
import functools
import itertools
import random

import pytest
from conftest import disk_letters
from guestgen import Shape, fresh_xml
from planning import plan_bytes

from planner.facts.errors import Infeasible
from planner.facts.options import OBJECTIVE_DEFAULT, PlanOptions
from planner.pipeline.bounds import check_bounds
from planner.pipeline.greedy import greedy_plan
from planner.pipeline.plan import _read
from planner.pipeline.prepare import prepare
from planner.pipeline.solver.objective import SAFE_MAGNITUDE, magnitude
from planner.pipeline.solver.solve import build
from planner.xml.xmlio import InputError, parse_domain_bytes

NEW = {
    "disk": "<disk type='file' device='disk'><source file='/images/n{i}.img'/>"
            "<target dev='vd{dev}' bus='virtio'/></disk>",
    "e1000": "<interface type='user'><mac address='52:54:01:00:{hi:02x}:{lo:02x}'/><model type='e1000'/>"
             "</interface>",
    "virtio-nic": "<interface type='user'><mac address='52:54:02:00:{hi:02x}:{lo:02x}'/>"
                  "<model type='virtio'/></interface>",
    "root-port": "<controller type='pci' model='pcie-root-port'/>",
    "pci-bridge": "<controller type='pci' model='pci-bridge'/>",
}


@functools.cache
def libvirt_layout(machine: str, disks: int) -> str:
    """libvirt's own layout of a guest with this many virtio disks (and four NICs)."""
    result = greedy_plan(fresh_xml(Shape(machine, disks=disks, nics=4)))
    assert result.ok and result.xml is not None, result.error
    return result.xml


def partial_guest(machine: str, base: int, extra: int, kinds: tuple[str, ...] = ("disk",),
                  index_255: bool = False, seed: int = 0) -> bytes:
    """libvirt's layout of a smaller guest plus extra devices without addresses."""
    rng = random.Random(seed)
    new = []
    for i in range(extra):
        kind = rng.choice(kinds)
        controller = kind in ("root-port", "pci-bridge")
        if controller and ((machine == "pc") == (kind == "root-port") or i >= 24):
            kind = "disk"  # a few new controllers; more would only exhaust the indices before any device
        new.append(NEW[kind].format(i=i, dev=disk_letters(base + i), hi=i >> 8, lo=i & 255))
    if index_255:  # the highest index a controller may have; the gaps below it get filled
        model = "pci-bridge" if machine == "pc" else "pcie-root-port"
        new.append(f"<controller type='pci' index='255' model='{model}'/>")
    xml = libvirt_layout(machine, base).replace("</devices>", "\n".join(new) + "\n</devices>")
    return xml.encode()


def built_model(data: bytes, options: PlanOptions):
    """The model plan would solve for this guest, or None when the guest is refused before (bad input,
    or an infeasibility found without the solver)."""
    tree = parse_domain_bytes(data)
    try:
        problem, options, _warnings = _read(tree, options)
        prep = prepare(problem, options)
        check_bounds(prep)
    except (Infeasible, InputError):
        return None
    return build(prep, options)  # raises InternalError if CP-SAT's validation fails


@pytest.mark.parametrize("machine", ["virt", "q35"])
@pytest.mark.parametrize("replan", [False, True])
def test_600_device_partial_guest_plans(machine: str, replan: bool) -> None:
    """libvirt's layout of 204 devices plus 400 new ones (libvirt's greedy fails on it): once ended in
    MODEL_INVALID after 0.7 s, reported as "raise --time-limit"."""
    data = partial_guest(machine, 200, 400)
    assert not greedy_plan(fresh_xml(Shape(machine, disks=600, nics=4))).ok
    built = built_model(data, PlanOptions(replan=replan))
    assert built is not None and built.model.Validate() == ""
    tree, summary = plan_bytes(data, replan=replan)
    assert summary.status in ("OPTIMAL", "FEASIBLE")
    assert not any(a is None for a in [d.find("address") for d in tree.getroot().iterfind("devices/disk")])


ORDERS = list(itertools.permutations(OBJECTIVE_DEFAULT))


@pytest.mark.parametrize("case", range(40))
def test_large_guests_build_valid_models(case: int) -> None:
    rng = random.Random(case)
    machine = rng.choice(["q35", "virt", "pc"])
    base = rng.choice([0, 60, 150, 200, 220])
    extra = rng.choice([0, 50, 300, 400, 450])
    # one large group of alike devices makes the largest terms
    kinds = ("disk",) if rng.random() < 0.5 else tuple(rng.sample(sorted(NEW), rng.randint(1, len(NEW))))
    data = partial_guest(machine, base, extra, kinds, index_255=rng.random() < 0.3, seed=case)
    options = PlanOptions(replan=rng.random() < 0.5, objective_order=rng.choice(ORDERS),
                          spare_pcie=rng.choice([None, 0, 1, 255]), spare_pci=rng.choice([None, 0, 255]),
                          reserve=rng.choice([(), (("interface", 255),), (("disk", 8),)]),
                          firmware=rng.choice([None, "none"]))  # none: no I/O budget refuses big pc guests
    built = built_model(data, options)
    if built is not None:
        assert built.model.Validate() == ""
        for stage in built.stages:  # every objective value is exact in a double too
            assert magnitude(built.model, stage) < SAFE_MAGNITUDE


def test_option_out_of_range_is_bad_input() -> None:
    data = partial_guest("q35", 60, 10)
    for options in (PlanOptions(spare_pcie=-1), PlanOptions(spare_pci=256),
                    PlanOptions(reserve=(("disk", -2),)), PlanOptions(time_limit=0)):
        with pytest.raises(InputError):
            plan_bytes(copy.copy(data), spare_pcie=options.spare_pcie, spare_pci=options.spare_pci,
                       reserve=options.reserve, time_limit=options.time_limit)


def test_replan_at_the_bus_number_limit_writes_a_plan() -> None:
    """virt: libvirt's layout of 224 devices (225 root ports) plus 400 new disks. Without --replan no
    layout fits the 256 bus numbers, and the explanation names that limit; with --replan
    the plan is written (rendering it once looped forever looking for a free chassis number, counting
    the chassis of the ports --replan had removed)."""
    data = partial_guest("virt", 220, 400)
    with pytest.raises(Infeasible) as refused:
        plan_bytes(data, time_limit=3.0)
    assert any("256 bus numbers" in r for r in refused.value.reasons)
    tree, _summary = plan_bytes(data, replan=True)
    ports = tree.getroot().iterfind("devices/controller[@type='pci'][@model='pcie-root-port']")
    chassis = [c.find("target").get("chassis") for c in ports]
    assert len(chassis) == len(set(chassis))


def test_an_invalid_model_is_an_internal_error_exit_5(monkeypatch, tmp_path) -> None:
    """Should a model CP-SAT refuses ever be built, plan says "internal error … please report" and exits
    5, writing nothing; never "raise --time-limit". Forced here by letting the objective's weights
    overflow again (one weighted sum, whatever its size)."""
    from typer.testing import CliRunner

    from planner.commands.cli import app
    from planner.facts.errors import ExitCode
    from planner.pipeline.solver import objective

    source, out = tmp_path / "g.xml", tmp_path / "out.xml"
    source.write_bytes(partial_guest("q35", 200, 400))
    monkeypatch.setattr(objective, "SAFE_MAGNITUDE", 1 << 80)
    result = CliRunner().invoke(app, ["plan", str(source), "-o", str(out)])
    assert result.exit_code == ExitCode.INTERNAL, result.output
    assert "internal error" in result.output and "please report" in result.output
    assert "time-limit" not in result.output and not out.exists()
