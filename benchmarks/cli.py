"""Whole-process time of `pciplan plan`, against the interpreter's own start-up and against `virsh define`
of the same guest through libvirt's embedded QEMU driver (libvirt assigning the addresses itself).

    python -m benchmarks.cli [--sizes 8,32,200,1000] [--runs 5] [--out benchmarks/results]

Each point is the median of RUNS runs of a fresh process: wall time, CPU time (user + system) and peak
memory (maximum resident set) of `pciplan plan GUEST -o OUT`, of `python -c pass` and of `virsh -c
qemu:///embed?root=… define GUEST`. The guests are benchmarks/sweep.py's (half virtio NICs, half virtio
disks) on q35, pc and aarch64 virt, and README command 1's examples/q35-server.xml. Python byte code
is compiled first and written (as an installed package has it), whatever PYTHONDONTWRITEBYTECODE says.
Also counted: how many of tests/fleetgen.py's typical guests are written with libvirt's own layout
because it ties with pciplan's (the guests where pciplan's answer is libvirt's). Results go to
OUT/cli.json and OUT/cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.sweep import MACHINES, guest

REPO = Path(__file__).resolve().parents[1]
QEMU_CONF = ('user = "root"\ngroup = "root"\ndynamic_ownership = 0\nsecurity_driver = "none"\n'
             'stdio_handler = "file"\nnamespaces = []\n')


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, int]:
    """(wall s, CPU s, peak KiB, exit status) of one process (run outside the checkout, so that `-m`
    finds the planner installed or named by --planner, not the one in the current folder)."""
    import time

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            cwd=tempfile.gettempdir())
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, proc.returncode


def _median(runs: list[tuple[float, float, int, int]]) -> dict:
    return {"wall": statistics.median(r[0] for r in runs), "cpu": statistics.median(r[1] for r in runs),
            "peak_mib": round(max(r[2] for r in runs) / 1024, 1), "exit": runs[-1][3]}


def _virsh_root() -> Path | None:
    if shutil.which("virsh") is None:
        return None
    root = Path(tempfile.gettempdir()) / f"pciplan-bench-embed-{os.getuid()}"
    for conf in (root / "etc" / "qemu.conf", root / "etc" / "qemu" / "qemu.conf"):
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(QEMU_CONF)
    (root / "log").mkdir(exist_ok=True)
    return root


def tie_rate(count: int = 60) -> tuple[int, int]:
    """(guests written with libvirt's layout, guests) over tests/fleetgen.py's typical guests."""
    sys.path.insert(0, str(REPO / "tests"))
    from fleetgen import typical_guest

    from planner.facts.options import PlanOptions
    from planner.pipeline.plan import plan_tree
    from planner.xml.xmlio import parse_domain_bytes

    rng = random.Random(7)
    tied = 0
    for n in range(count):
        summary = plan_tree(parse_domain_bytes(typical_guest(n, rng).encode()), PlanOptions())
        tied += any(note.startswith("ties with libvirt") for note in summary.notes)
    return tied, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,32,200,1000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--planner", metavar="DIR", help="time the planner of another checkout (say an older "
                    "commit's `git archive`), put first on PYTHONPATH of the pciplan runs")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "planner"), str(REPO / "models")],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    pciplan = [sys.executable, "-m", "planner.commands.cli", "plan"]
    plan_env = dict(env)
    if args.planner:
        plan_env["PYTHONPATH"] = os.pathsep.join([args.planner, *filter(None, [env.get("PYTHONPATH")])])
        subprocess.run([sys.executable, "-m", "compileall", "-q", args.planner], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    python = _median([_run([sys.executable, "-c", "pass"], env) for _ in range(args.runs)])
    root = _virsh_root()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # README command 1's guest (issue target: 0.25 s median for the whole command)
        example = _median([_run([*pciplan, str(REPO / "examples" / "q35-server.xml"), "-o",
                                 str(Path(tmp) / "example.xml")], plan_env) for _ in range(args.runs)])
        print(f"examples/q35-server.xml: pciplan {example['wall']:.3f} s", file=sys.stderr)
        for machine in MACHINES:
            for size in sizes:
                path = Path(tmp) / f"{machine}-{size}.xml"
                path.write_bytes(guest(machine, size))
                out = Path(tmp) / "out.xml"
                plan = _median([_run([*pciplan, str(path), "-o", str(out)], plan_env)
                                for _ in range(args.runs)])
                row = {"machine": machine, "devices": size, "pciplan": plan, "python": python}
                if root is not None:
                    uri = f"qemu:///embed?root={root}"
                    runs = []
                    for _ in range(args.runs):
                        runs.append(_run(["virsh", "-q", "-c", uri, "define", str(path)], env))
                        subprocess.run(["virsh", "-q", "-c", uri, "undefine", f"bench-{machine}-{size}"],
                                       capture_output=True)
                    row["virsh"] = _median(runs)
                rows.append(row)
                print(f"{machine} {size}: pciplan {plan['wall']:.3f} s", file=sys.stderr)
    tied, count = tie_rate() if not args.planner else (0, 0)
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
             f"Median of {args.runs} runs; `python -c pass`: {python['wall']:.3f} s wall, "
             f"{python['cpu']:.3f} s CPU. Typical guests written with libvirt's own layout (a tie): "
             f"{tied} of {count}.",
             f"examples/q35-server.xml: pciplan {example['wall']:.3f} s wall, {example['cpu']:.3f} s CPU, "
             f"{example['peak_mib']} MiB peak.", "",
             "| machine | devices | pciplan wall s | CPU s | peak MiB | exit | × python start-up (CPU) "
             "| virsh define wall s | CPU s | exit | pciplan ÷ virsh (wall) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, v = r["pciplan"], r.get("virsh")
        virsh = (f"{v['wall']:.3f} | {v['cpu']:.3f} | {v['exit']} | {p['wall'] / v['wall']:.1f}×"
                 if v else "– | – | – | –")
        start_up = p["cpu"] / max(python["cpu"], 1e-3)
        lines.append(f"| {r['machine']} | {r['devices']} | {p['wall']:.3f} | {p['cpu']:.3f} "
                     f"| {p['peak_mib']} | {p['exit']} | {start_up:.1f}× | {virsh} |")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cli.json").write_text(json.dumps({"python": python, "example": example, "rows": rows,
                                                  "tied": tied, "typical_guests": count}, indent=1) + "\n")
    (out_dir / "cli.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
