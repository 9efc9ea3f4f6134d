"""Fleet throughput per machine type and size class, and over device count: pciplan's plan of each
generated guest against libvirt's define of the same guest, one core each, in one process and one run.

    python -m benchmarks.fleet_classes [--guests 900] [--json FILE] [--plot FILE.png]

The guests are tests/fleetgen.py's typical guests (1-32 NICs and disks on q35, pc and aarch64 virt).
Each is timed alone, after a warm-up: pciplan as one fleet worker plans a file
(planner.commands.fleet.plan_one: read, parse, plan, serialize; --dry-run, so no write), libvirt 9.0 through
the embedded QEMU driver as defineXML + XMLDesc(inactive) + undefine. Rows: guests per second of each on one
core, their ratio, and the share of guests the optimality certificate (planner/pipeline/certificate.py)
planned without a CP-SAT solve. Per-guest rates leave out what a whole `pciplan fleet` adds (start-up,
workers, writes): benchmarks/fleet.py measures that.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from lxml import etree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fleetgen import typical_guest  # noqa: E402

from benchmarks.fleet import for_libvirt, warm_up  # noqa: E402

CLASSES = ((1, 8), (9, 16), (17, 32))


def size_class(devices: int) -> str:
    return next(f"{lo}-{hi}" for lo, hi in CLASSES if lo <= devices <= hi)


def listed_devices(xml: str) -> int:
    """The NICs and disks the guest lists (the generator's size; implicit devices come on top)."""
    root = etree.fromstring(xml.encode())
    return len(root.findall("devices/interface")) + len(root.findall("devices/disk"))


def time_pciplan(paths: list[Path]) -> list[tuple[float, bool]]:
    """Seconds to plan each file as a fleet worker does, and whether the certificate planned it."""
    from planner.commands.fleet import plan_one
    from planner.facts.options import PlanOptions
    from planner.pipeline import certificate

    options = PlanOptions()
    for p in paths[:30]:  # warm-up: caches, lazy imports
        plan_one(str(p), None, options, True, False)
    out = []
    for p in paths:
        before = certificate.STATS.certified
        start = time.perf_counter()
        result = plan_one(str(p), None, options, True, False)
        seconds = time.perf_counter() - start
        if result.status == "failed":
            raise SystemExit(f"{p}: {result.reason}")
        out.append((seconds, certificate.STATS.certified > before))
    return out


def time_libvirt(conn, libvirt, guests: list[str]) -> list[float | None]:
    """Seconds of define + dumpxml + undefine for each guest (None: refused)."""
    out: list[float | None] = []
    for xml in guests:
        start = time.perf_counter()
        try:
            dom = conn.defineXML(xml)
        except libvirt.libvirtError:
            out.append(None)
            continue
        dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        dom.undefine()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guests", type=int, default=900)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", type=Path, help="record the table in this JSON file")
    ap.add_argument("--plot", type=Path, help="plot guests/s and the certificate's hit rate over "
                    "device count")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        paths, guests = [], []
        for n in range(args.guests):
            text = typical_guest(n, rng)
            p = Path(tmp) / f"guest-{n:04d}.xml"
            p.write_text(text)
            paths.append(p)
            guests.append(text)
        planned = time_pciplan(paths)
    from planner.stack import StackUnavailable, shared_stack

    try:
        stack = shared_stack()
    except StackUnavailable as exc:
        raise SystemExit(f"libvirt not available ({exc}): nothing to compare with") from exc
    for_define = [for_libvirt(g.encode()) for g in guests]
    warm_up(stack._conn, stack._libvirt, for_define)
    defined = time_libvirt(stack._conn, stack._libvirt, for_define)

    rows: dict[tuple[str, str], dict] = defaultdict(lambda: {"guests": 0, "pciplan_s": 0.0, "libvirt_s": 0.0,
                                                             "certified": 0, "refused_by_libvirt": 0})
    by_size: dict[int, dict] = defaultdict(lambda: {"guests": 0, "pciplan_s": 0.0, "libvirt_s": 0.0,
                                                    "certified": 0})
    for text, (mine, certified), theirs in zip(guests, planned, defined, strict=True):
        machine = etree.fromstring(text.encode()).find("os/type").get("machine")
        size = listed_devices(text)
        for r in (rows[(machine, size_class(size))], by_size[size]):
            if theirs is None:
                r["refused_by_libvirt"] = r.get("refused_by_libvirt", 0) + 1
                continue
            r["guests"] += 1
            r["pciplan_s"] += mine
            r["libvirt_s"] += theirs
            r["certified"] += certified
    print(f"{args.guests} generated guests (tests/fleetgen.py, seed {args.seed}); one core each, one "
          "process; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| machine | devices | guests | pciplan guests/s | libvirt guests/s | ratio | certified |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for (machine, cls), r in sorted(rows.items(), key=lambda kv: (kv[0][0], int(kv[0][1].split("-")[0]))):
        mine, theirs = r["guests"] / r["pciplan_s"], r["guests"] / r["libvirt_s"]
        table.append({"machine": machine, "devices": cls, "guests": r["guests"],
                      "pciplan": round(mine, 1), "libvirt": round(theirs, 1),
                      "certified": r["certified"], "refused_by_libvirt": r["refused_by_libvirt"]})
        print(f"| {machine} | {cls} | {r['guests']} | {mine:.0f} | {theirs:.0f} | {mine / theirs:.2f}× | "
              f"{r['certified'] / r['guests']:.0%} |")
    if args.json:
        args.json.write_text(json.dumps({"guests": args.guests, "seed": args.seed, "rows": table,
                                         "by_devices": {str(k): v for k, v in sorted(by_size.items())}},
                                        indent=1) + "\n")
    if args.plot:
        plot(by_size, args.plot)


def plot(by_size: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(s for s, r in by_size.items() if r["guests"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(sizes, [by_size[s]["guests"] / by_size[s]["pciplan_s"] for s in sizes], "o-",
            label="pciplan plan")
    ax.plot(sizes, [by_size[s]["guests"] / by_size[s]["libvirt_s"] for s in sizes], "s-",
            label="libvirt 9.0 define")
    ax.set_xlabel("NICs and disks listed")
    ax.set_ylabel("guests per second, one core")
    ax.set_ylim(bottom=0)
    hit = ax.twinx()
    hit.plot(sizes, [100 * by_size[s]["certified"] / by_size[s]["guests"] for s in sizes], "g:",
             label="certificate hit rate")
    hit.set_ylabel("planned without a solve (%)")
    hit.set_ylim(0, 105)
    lines = ax.get_legend_handles_labels()[0] + hit.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + hit.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
