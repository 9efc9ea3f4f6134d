"""pciplan against libvirt's greedy (the built-in re-implementation of libvirt 9.0's algorithm) on a
generated corpus: storage- and NIC-heavy guests on q35, pc and aarch64 virt, with and without guest
NUMA cells, fresh and partial (tests/guestgen.py).

    python -m benchmarks.vs_greedy [--guests 400] [--seed 16] [--json benchmarks/results/vs_greedy.json]

For every guest where both plan and the greedy's layout passes pciplan's checker (same firmware
budget), it counts fewer / equal / more controllers and compares the objective vectors (hot-plug,
PCIe on conventional PCI, controllers, bus numbers). "more" and "worse" must be 0; the exit status is 1
otherwise. Guests where the greedy fails or breaks a rule (usually SeaBIOS's I/O space) are counted
apart, as are guests pciplan refuses.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from guestgen import guest_xml, random_shape  # noqa: E402

from planner.commands.compare import compare, versus_greedy  # noqa: E402
from planner.pipeline.metrics import objective_vector  # noqa: E402


def run(guests: int, seed: int, time_limit: float) -> dict:
    rng = random.Random(seed)
    counts: Counter = Counter()
    rows = []
    start = time.perf_counter()
    for _ in range(guests):
        shape = random_shape(rng)
        xml = guest_xml(shape)
        if xml is None:
            counts["skipped (no greedy layout to start a partial guest from)"] += 1
            continue
        c = compare(xml.encode(), shape.label, greedy="builtin", time_limit=time_limit)
        verdict = versus_greedy(c)
        row = {"guest": shape.label, "pciplan": sum(c.pciplan.controllers_added.values()) if c.pciplan.ok
               else None, "greedy": sum(c.greedy.controllers_added.values()) if c.greedy.ok else None,
               "status": c.pciplan.status, "verdict": verdict}
        if not c.pciplan.ok:
            counts["pciplan refuses"] += 1
            row["error"] = c.pciplan.error
        elif c.pciplan.rule_violations:
            counts["pciplan breaks a rule"] += 1
        if verdict is None:
            if c.pciplan.ok and not c.greedy.ok:
                counts["greedy fails"] += 1
            elif c.greedy.ok and c.greedy.rule_violations:
                counts["greedy breaks a rule (not compared)"] += 1
        else:
            counts[verdict] += 1
            ours = objective_vector(c.pciplan, c.machine)
            theirs = objective_vector(c.greedy, c.machine)
            vs = "better" if ours < theirs else "same" if ours == theirs else "worse"
            counts[f"objective {vs}"] += 1
            row["objective"] = vs
        rows.append(row)
    return {"guests": guests, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
            "counts": dict(sorted(counts.items())), "rows": rows}


def dumps(result: dict) -> str:
    """JSON with one line per guest, so that a new run diffs line by line."""
    head = {k: v for k, v in result.items() if k != "rows"}
    rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in result["rows"])
    return json.dumps(head, indent=1, ensure_ascii=False)[:-2] + f',\n "rows": [\n  {rows}\n ]\n}}\n'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guests", type=int, default=400)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.guests, args.seed, args.time_limit)
    c = result["counts"]
    print(f"{args.guests} generated guests (seed {args.seed}), {result['seconds']} s")
    print(f"controllers versus libvirt's greedy: fewer {c.get('fewer', 0)}, equal {c.get('equal', 0)}, "
          f"more {c.get('more', 0)}")
    print(f"objective vector: better {c.get('objective better', 0)}, same {c.get('objective same', 0)}, "
          f"worse {c.get('objective worse', 0)}")
    for k, n in c.items():
        if k not in ("fewer", "equal", "more") and not k.startswith("objective"):
            print(f"{k}: {n}")
    for row in result["rows"]:
        if row.get("verdict") == "more" or row.get("objective") == "worse":
            print("  ", row)
    if args.json:
        args.json.write_text(dumps(result))
    sys.exit(1 if c.get("more") or c.get("objective worse") or c.get("pciplan breaks a rule") else 0)


if __name__ == "__main__":
    main()
