"""The recorded outputs: what pciplan wrote for a fixed corpus of guests before the speed work
(issue 21), so that any change in what is written shows up as a changed hash.

The corpus: every bundled example, every guest in tests/guests, every shared case (../shared/cases),
and generated guests (tests/fleetgen.py's typical guests, tests/guestgen.py's shapes, light and heavy,
and benchmarks/sweep.py's guests up to 1000 devices) on q35, pc and aarch64 virt. For each: the sha256
of the input, of the planned XML, the solver's status, the exit status the CLI gives, and the sha256 of
the error or infeasibility message.

    python tests/recorded.py --record      # rewrite tests/recorded/outputs.json (only on purpose!)
    python tests/recorded.py               # re-plan everything and compare (the full differential run)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # fleetgen, guestgen

RECORD = HERE / "recorded" / "outputs.json"
SHARED = REPO.parent / "shared" / "cases"
# The generators' seeds and counts: part of the record, so the corpus can be rebuilt exactly.
FLEET_SEED, FLEET_COUNT = 7, 150
LIGHT_SEED, LIGHT_COUNT = 2101, 120
HEAVY_SEED, HEAVY_COUNT = 2102, 40
SWEEP_SIZES = (10, 32, 100, 300, 1000)
SWEEP_MIXES = ("all", "half", "none")


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def corpus(shared: bool = True) -> Iterator[tuple[str, bytes]]:
    """(name, input bytes) of every guest, in a fixed order."""
    from fleetgen import typical_guest, write_fleet
    from guestgen import guest_xml, random_shape

    # The checkout goes on sys.path for benchmarks/ only, and off again: a process spawned later (Dask's
    # workers get this sys.path) would otherwise import the checkout's planner instead of the wheel.
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks.sweep import guest as sweep_guest
    finally:
        sys.path.remove(str(REPO))

    for path in sorted((REPO / "examples").glob("*.xml")):
        yield f"examples/{path.name}", path.read_bytes()
    for path in sorted((HERE / "guests").glob("*.xml")):
        yield f"tests/guests/{path.name}", path.read_bytes()
    if shared and SHARED.is_dir():
        for path in sorted(SHARED.rglob("*.xml")):
            yield f"shared/{path.relative_to(SHARED)}", path.read_bytes()
    rng = random.Random(FLEET_SEED)
    for n in range(FLEET_COUNT):
        yield f"fleetgen/{n}", typical_guest(n, rng).encode()
    with tempfile.TemporaryDirectory() as tmp:  # the fleet's broken and infeasible guests
        write_fleet(Path(tmp), 0, broken=2, infeasible=2)
        for path in sorted(Path(tmp).glob("*.xml")):
            yield f"fleetgen/{path.name}", path.read_bytes()
    for label, seed, count, heavy in (("light", LIGHT_SEED, LIGHT_COUNT, False),
                                      ("heavy", HEAVY_SEED, HEAVY_COUNT, True)):
        rng = random.Random(seed)
        for n in range(count):
            xml = guest_xml(random_shape(rng, heavy=heavy))
            if xml is not None:
                yield f"guestgen-{label}/{n}", xml.encode()
    for machine in ("q35", "pc", "virt"):
        for size in SWEEP_SIZES:
            for mix in SWEEP_MIXES:
                yield f"sweep/{machine}-{size}-{mix}", sweep_guest(machine, size, mix)


def outcome(data: bytes) -> dict:
    """What `pciplan plan` does with this input: the written bytes' hash, the status, the exit status."""
    from planner.facts.errors import ExitCode, Infeasible
    from planner.facts.options import PlanOptions
    from planner.pipeline.plan import plan_tree
    from planner.xml.xmlio import InputError, parse_domain_bytes, serialize

    try:
        tree = parse_domain_bytes(data)
        summary = plan_tree(tree, PlanOptions())
    except InputError as exc:
        return {"exit": int(ExitCode.BAD_INPUT), "message": _sha(str(exc))}
    except Infeasible as exc:
        return {"exit": int(ExitCode.INFEASIBLE), "message": _sha("\n".join(exc.reasons))}
    return {"exit": int(ExitCode.PINNED_BREAKS if summary.check_errors else ExitCode.OK),
            "status": summary.status.lower(), "output": _sha(serialize(tree))}


def record_one(name: str, data: bytes) -> dict:
    return {"input": _sha(data), **outcome(data)}


def load() -> dict:
    return json.loads(RECORD.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", action="store_true", help="rewrite the record from the current code")
    ap.add_argument("--only", help="only names containing this")
    args = ap.parse_args()
    if args.record:
        cases = {name: record_one(name, data) for name, data in corpus()}
        RECORD.parent.mkdir(exist_ok=True)
        meta = {"fleet": [FLEET_SEED, FLEET_COUNT], "light": [LIGHT_SEED, LIGHT_COUNT],
                "heavy": [HEAVY_SEED, HEAVY_COUNT], "sweep": [list(SWEEP_SIZES), list(SWEEP_MIXES)]}
        RECORD.write_text(json.dumps({"generators": meta, "cases": cases}, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(cases)} guests in {RECORD}")
        return 0
    want = load()["cases"]
    bad = 0
    seen = 0
    for name, data in corpus():
        if args.only and args.only not in name:
            continue
        seen += 1
        got = record_one(name, data)
        if got != want.get(name):
            bad += 1
            print(f"DIFFERS {name}: recorded {want.get(name)}, now {got}")
    print(f"{seen} guests re-planned, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
