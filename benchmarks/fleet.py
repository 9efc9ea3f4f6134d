"""Fleet throughput: `pciplan fleet` against libvirt's own define of the same guests, in one run.

    python -m benchmarks.fleet [--dir FOLDER ... | --guests 600] [--jobs 2] [--json FILE]

The guests are FOLDER's *.xml, or generated typical guests (tests/fleetgen.py, ≤ 32 devices). Two
passes each:
- pciplan: the real command, `fleet IN --out OUT` (first pass), then `fleet OUT --in-place` (a second
  pass over its own output, which must change nothing); the time of the whole command, Python's
  start-up and imports included, and the batch alone (the summary's seconds);
- libvirt 9.0 through the embedded QEMU driver (qemu:///embed, no daemon), in this process:
  defineXML + XMLDesc(inactive) + undefine of every guest (first pass), then the same over the XML
  libvirt itself wrote (second pass); the loop alone (the driver is opened, and each emulator's
  capabilities probed, before the clock starts).
Both are run --rounds times (default 3), taking turns, and each figure is the median of its rounds, so that
a moment of load on this machine lands on neither side alone. pciplan is compiled first (as an installed
package is), whatever PYTHONDONTWRITEBYTECODE says.
Prints guests per second for each, and pciplan's rate divided by libvirt's, and how many guests of each pass
the optimality certificate (planner/pipeline/certificate.py) planned without a solve; --json FILE records them
(README's fleet table is benchmarks/results/fleet-generated.json and fleet-realworld.json, which
tests/test_readme_figures.py checks against it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lxml import etree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fleetgen import write_fleet  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def pciplan_pass(argv: list[str], jobs: int) -> tuple[float, float, int, int]:
    """Whole-command seconds, the batch's own seconds, files, files changed."""
    cmd = [sys.executable, "-m", "planner.commands.cli", "fleet", *argv, "--jobs", str(jobs)]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV)
    wall = time.perf_counter() - start
    line = r.stdout.strip().splitlines()[-1]
    m = re.match(r"(\d+) files: (\d+) changed.*?; ([\d.]+) s \(", line)
    if m is None:
        raise SystemExit(f"unexpected fleet output: {r.stdout}{r.stderr}")
    return wall, float(m.group(3)), int(m.group(1)), int(m.group(2))


def for_libvirt(data: bytes) -> str:
    """The guest as this machine's libvirt can define it: type qemu and an installed emulator (neither
    changes PCI assignment). Done before the clock starts."""
    from planner.stack import StackUnavailable, emulator_for

    root = etree.fromstring(data)
    root.set("type", "qemu")
    arch = root.find("os/type").get("arch", "x86_64") if root.find("os/type") is not None else "x86_64"
    devices = root.find("devices")
    emulator = devices.find("emulator") if devices is not None else None
    if devices is not None and (emulator is None or not os.access(emulator.text or "", os.X_OK)):
        if emulator is None:
            emulator = etree.SubElement(devices, "emulator")
        with contextlib.suppress(StackUnavailable):
            emulator.text = emulator_for(arch)
    return etree.tostring(root, encoding="unicode")


def warm_up(conn, libvirt, guests: list[str]) -> None:
    """libvirt probes each emulator's capabilities on its first define (seconds, cached on disk after):
    one define per emulator before the clock starts, so the passes time the define itself."""
    seen = set()
    for xml in guests:
        emulator = etree.fromstring(xml).findtext("devices/emulator")
        if emulator in seen:
            continue
        seen.add(emulator)
        with contextlib.suppress(libvirt.libvirtError):
            conn.defineXML(xml).undefine()


def libvirt_pass(conn, libvirt, guests: list[str]) -> tuple[float, list[str], int]:
    """Seconds for define + dumpxml (inactive) + undefine of every guest; libvirt's XML; refused count."""
    written, refused = [], 0
    start = time.perf_counter()
    for xml in guests:
        try:
            dom = conn.defineXML(xml)
        except libvirt.libvirtError:
            refused += 1
            continue
        written.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        dom.undefine()
    return time.perf_counter() - start, written, refused


def certified_share(files: list[Path]) -> tuple[int, int]:
    """(guests planned without a solve: planner.pipeline.certificate proved the plan optimal, guests planned),
    by planning each file once more in this process (not timed)."""
    from planner.facts.errors import Infeasible
    from planner.facts.options import PlanOptions
    from planner.pipeline import certificate
    from planner.pipeline.plan import plan_tree
    from planner.xml.xmlio import InputError, parse_domain_bytes

    before, planned = certificate.STATS.certified, 0
    for path in files:
        try:
            plan_tree(parse_domain_bytes(path.read_bytes()), PlanOptions())
        except (InputError, Infeasible):
            continue
        planned += 1
    return certificate.STATS.certified - before, planned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, action="append", help="plan the domain XMLs of this folder "
                    "(repeatable; default: generated guests)")
    ap.add_argument("--guests", type=int, default=600, help="how many generated guests (without --dir)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of both sides' passes (the median is kept)")
    ap.add_argument("--json", type=Path, help="also record the rates in this JSON file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        if args.dir:
            src.mkdir()
            for folder in args.dir:
                for p in sorted(folder.glob("*.xml")):
                    shutil.copy(p, src / p.name)
        else:
            write_fleet(src, args.guests)
        files = sorted(src.glob("*.xml"))
        where = " ".join(map(str, args.dir)) if args.dir else "generated guests (tests/fleetgen.py)"
        print(f"{len(files)} guests: {where}; {args.jobs} jobs; {os.cpu_count()} CPUs; load average "
              f"{os.getloadavg()[0]:.1f}")

        from planner.stack import StackUnavailable, shared_stack

        try:
            start = time.perf_counter()
            stack = shared_stack()
            opened = time.perf_counter() - start
        except StackUnavailable as exc:
            stack, opened = None, 0.0
            print(f"libvirt: not available ({exc}); no comparison")
        guests = [for_libvirt(p.read_bytes()) for p in files]
        if stack is not None:
            warm_up(stack._conn, stack._libvirt, guests)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "planner")], env=ENV, check=True,
                       stdout=subprocess.DEVNULL)

        passes = (("first pass", [str(src), "--out", str(out)]),
                  ("second pass", [str(out), "--in-place", "--no-backup"]))
        samples: dict[str, list[float]] = {}
        changed_by: dict[str, int] = {}
        refused = refused_again = 0
        for _round in range(args.rounds):  # the two sides take turns
            shutil.rmtree(out, ignore_errors=True)
            for label, argv in passes:
                wall, batch, count, changed = pciplan_pass(argv, args.jobs)
                samples.setdefault(f"pciplan {label}", []).append(count / wall)
                samples.setdefault(f"pciplan batch {label}", []).append(count / batch)
                changed_by[label] = changed
            if stack is not None:
                first, written, refused = libvirt_pass(stack._conn, stack._libvirt, guests)
                second, _, refused_again = libvirt_pass(stack._conn, stack._libvirt, written)
                samples.setdefault("libvirt first pass", []).append(len(guests) / first)
                samples.setdefault("libvirt second pass", []).append(len(written) / second)
        rates = {k: statistics.median(v) for k, v in samples.items()}
        print(f"medians of {args.rounds} rounds, each side's passes taking turns:")
        for label, _argv in passes:
            count = len(files)
            print(f"pciplan {label}: {count} guests, {changed_by[label]} changed: whole command "
                  f"{rates[f'pciplan {label}']:.0f} guests/s, the batch alone "
                  f"{rates[f'pciplan batch {label}']:.0f} guests/s")
        certified: dict[str, tuple[int, int]] = {}
        for label, folder in (("first pass", src), ("second pass", out)):
            certified[label] = certified_share(sorted(folder.glob("*.xml")))
            print(f"optimality certificate, {label}: {certified[label][0]} of {certified[label][1]} "
                  "planned guests proven optimal without a solve")
        if stack is None:
            return
        print(f"libvirt 9.0, embedded driver (opened in {opened:.2f} s, not counted), one process:")
        for label, count, bad in (("first pass", len(guests), refused),
                                  ("second pass", len(guests) - refused, refused_again)):
            print(f"libvirt {label}: {count} guests ({bad} refused), define + dumpxml + undefine "
                  f"{rates[f'libvirt {label}']:.0f} guests/s")
        for label in ("first pass", "second pass"):
            whole = rates[f"pciplan {label}"] / rates[f"libvirt {label}"]
            batch = rates[f"pciplan batch {label}"] / rates[f"libvirt {label}"]
            print(f"ratio, {label}: pciplan's guests/s are {whole:.2f}× libvirt's (whole command), "
                  f"{batch:.2f}× (the batch alone)")
        print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    if args.json is not None:
        record = {"guests": len(files), "jobs": args.jobs, "rounds": args.rounds,
                  "refused_by_libvirt": refused,
                  "load_average": round(os.getloadavg()[0], 1),
                  "passes": [{"pass": label, "changed": changed_by[label],
                              "pciplan": round(rates[f"pciplan {label}"], 1),
                              "pciplan_batch": round(rates[f"pciplan batch {label}"], 1),
                              "libvirt": round(rates[f"libvirt {label}"], 1),
                              "certified": certified[label][0], "planned": certified[label][1]}
                             for label in ("first pass", "second pass")]}
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
