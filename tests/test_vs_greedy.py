"""Never worse than libvirt's greedy where its layout is valid: random storage- and NIC-heavy guests,
as many on q35 as on pc and on aarch64 virt, with guest NUMA cells, fresh and partial
(tests/guestgen.py). The plan always passes the checker; where the greedy's layout passes the checker
with the same firmware budget, pciplan's objective vector is never worse, and it has more controllers
only by the default spare port (an empty hot-pluggable port that pciplan keeps and the greedy's layout
lacks). A run must compare most guests of every machine and find guests where pciplan needs fewer
controllers; the solver's I/O count matches the checker's as tests/iocount.py explains.

Random guests each run: PCIPLAN_VS_GREEDY_SEED=N replays one run (the seed is printed on failure).
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest
from guestgen import ARCH, NIC_MODELS, Shape, guest_xml, random_shape
from iocount import differences
from planning import errors
from weaken import drop_checker_rule, weaken_model

from planner.checker.check import io_space_needed
from planner.commands.compare import Comparison, compare, versus_greedy
from planner.facts.errors import Infeasible
from planner.facts.facts import IO_UNIT
from planner.pipeline.metrics import objective_vector
from planner.pipeline.plan import plan_tree
from planner.xml.xmlio import parse_domain_bytes

SEED = int(os.environ.get("PCIPLAN_VS_GREEDY_SEED", random.SystemRandom().randrange(1 << 31)))
PER_MACHINE = 12
MACHINES = sorted(ARCH)
TIE = "ties with libvirt's own layout: libvirt's addresses written"  # planner/pipeline/plan.py's note


def shapes(seed: int, per_machine: int = PER_MACHINE) -> list[Shape]:
    """Light storage- or NIC-heavy shapes (up to 24 of a kind), machines taken in turn. Every second q35
    guest has conventional NICs (e1000, rtl8139), where libvirt's greedy spends more controllers."""
    rng = random.Random(seed)
    out = []
    for n in range(per_machine * len(MACHINES)):
        machine = MACHINES[n % len(MACHINES)]
        s = random_shape(rng, heavy=False)
        model, nics = rng.choice(NIC_MODELS[ARCH[machine]]), s.nics
        if machine == "q35" and n // len(MACHINES) % 2:
            model, nics = rng.choice(["e1000", "rtl8139"]), max(nics, 2)
        out.append(Shape(machine, s.disks, s.scsi, nics, model, s.numa, s.partial, s.seed))
    return out


def spare(c: Comparison, which: str) -> int:
    """Empty hot-pluggable ports (q35, virt) or free hot-pluggable slots (pc) in one side's layout."""
    m = getattr(c, which)
    return m.spare_hotplug_slots if c.machine == "pc" else m.spare_hotplug_ports


def judge(shape: Shape, where: str) -> str:
    """One guest against the greedy: the verdict, after the assertions."""
    xml = guest_xml(shape)
    if xml is None:
        return "no start"  # a partial guest needs a valid greedy layout to start from
    c = compare(xml.encode(), shape.label, greedy="builtin")
    if c.pciplan.ok:
        assert c.pciplan.rule_violations == [], (where, c.pciplan.rule_violations)
    vs = versus_greedy(c)
    if vs is None:
        return "not compared"
    assert c.pciplan.ok, (where, c.pciplan.error)
    ours, theirs = objective_vector(c.pciplan, c.machine), objective_vector(c.greedy, c.machine)
    assert ours <= theirs, (where, ours, theirs)
    if vs == "more":
        extra = sum(c.pciplan.controllers_added.values()) - sum(c.greedy.controllers_added.values())
        assert extra == 1 and spare(c, "pciplan") and not spare(c, "greedy"), (
            where, "more controllers, and not for the spare port", c.pciplan.controllers_added,
            c.greedy.controllers_added)
        return "more: the spare port"
    return vs


def run(seed: int, per_machine: int = PER_MACHINE) -> tuple[Counter, Counter]:
    outcomes: Counter = Counter()
    compared: Counter = Counter()
    for shape in shapes(seed, per_machine):
        verdict = judge(shape, f"PCIPLAN_VS_GREEDY_SEED={seed} {shape}")
        outcomes[verdict] += 1
        if verdict not in ("no start", "not compared"):
            compared[shape.machine] += 1
    return outcomes, compared


def assert_floors(seed: int, outcomes: Counter, compared: Counter, per_machine: int = PER_MACHINE) -> None:
    where = f"PCIPLAN_VS_GREEDY_SEED={seed}: {dict(outcomes)}, compared {dict(compared)}"
    assert all(compared[m] >= per_machine // 2 for m in MACHINES), where
    assert outcomes["fewer"] >= 2, where


def test_never_worse_than_a_valid_greedy_layout() -> None:
    outcomes, compared = run(SEED)
    print(f"PCIPLAN_VS_GREEDY_SEED={SEED}: {dict(outcomes)}")
    assert_floors(SEED, outcomes, compared)


def test_a_weakened_model_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without new pcie-to-pci-bridges the plans lose to the greedy on q35 guests with conventional
    NICs: the run fails (on a worse vector, or on too few "fewer")."""
    weaken_model(monkeypatch, "pcie-to-pci-bridge")
    with pytest.raises(AssertionError):
        assert_floors(SEED, *run(SEED))


def test_a_dropped_checker_rule_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the checker blind to SeaBIOS's I/O budget, greedy layouts over it count as valid; a
    guest whose plan the budget shapes then loses to it."""
    shape = Shape("q35", disks=0, scsi=0, nics=16, nic_model="e1000e")
    # the greedy gives each e1000e a root port with an I/O window: 16 windows, over SeaBIOS's budget
    assert judge(shape, "budgeted") == "not compared"
    drop_checker_rule(monkeypatch, "io-windows")
    with pytest.raises(AssertionError, match="budget in the checker"):
        judge(shape, "no budget in the checker")


def test_solver_io_count_matches_the_checkers() -> None:
    """The same random guests: the solver's I/O count is the checker's, but for the per-device BAR
    differences tests/iocount.py names; where the plan ties with libvirt's layout, it is the checker's
    count of that layout."""
    kinds: Counter = Counter()
    for shape in shapes(SEED, 4):
        where = f"PCIPLAN_VS_GREEDY_SEED={SEED} {shape}"
        xml = guest_xml(shape)
        if xml is None:
            continue
        tree = parse_domain_bytes(xml.encode())
        try:
            s = plan_tree(tree)
        except Infeasible as exc:
            pytest.fail(f"{where}: infeasible: {exc.reasons}")
        assert errors(tree) == [], where
        checked = io_space_needed(tree)
        if s.io_bytes is None:
            assert checked is None, where  # no budget on this machine for either
            kinds["no budget"] += 1
            continue
        assert checked is not None, where
        if TIE in s.notes:
            assert s.io_bytes == -(-checked[0] // IO_UNIT) * IO_UNIT, (where, s.io_bytes, checked)
            kinds["tie"] += 1
            continue
        total, found, unexplained = differences(tree)
        assert unexplained == [], (where, unexplained)
        assert s.io_bytes == total, (where, s.io_bytes, checked, total, found)
        assert found or s.io_bytes == checked[0], (where, s.io_bytes, checked)
        kinds["counted"] += 1
    assert kinds["counted"] >= 2, (SEED, dict(kinds))


def test_benchmark_corpus_never_worse() -> None:
    """The benchmark (benchmarks/vs_greedy.py) on a small corpus of its own: never a worse objective
    vector wherever the greedy's layout is valid, every plan passes the checker, and most guests are
    compared. (Its fewer/equal/more split belongs to that corpus; the reason for "more" is asserted
    guest by guest above.)"""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO))  # for benchmarks/ only: planner stays the installed package
    try:
        from benchmarks.vs_greedy import run as benchmark
    finally:
        sys.path.remove(str(REPO))

    counts = benchmark(40, seed=160, time_limit=10.0)["counts"]
    assert counts.get("objective worse", 0) == 0, counts
    assert counts.get("pciplan breaks a rule", 0) == 0, counts
    assert counts.get("fewer", 0) + counts.get("equal", 0) + counts.get("more", 0) >= 30, counts


def test_more_controllers_only_for_the_spare_port() -> None:
    """An empty aarch64 virt guest: libvirt's greedy adds nothing, pciplan its default spare root port;
    judged as "more" for that reason, and any other surplus fails."""
    assert judge(Shape("virt"), "empty virt guest") == "more: the spare port"
