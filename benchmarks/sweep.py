"""Size sweep: pciplan's optimal planner side by side with libvirt 9.0's greedy assignment.

    python -m benchmarks.sweep [--sizes 10,50,100,200,500,1000] [--out benchmarks/results]

For each machine (q35, pc, aarch64 virt), size and hot-plug mix, a fresh guest of virtio NICs and virtio
disks (half each) is planned by pciplan and defined by real libvirt 9.0 (embedded driver; the built-in
greedy when libvirt is not installed). Recorded per point: solve time, total planning time (parse, model,
solve, render), status, gap, controllers, bus numbers, devices left without a hot-pluggable slot, and
libvirt's time, controllers and failure. Ratios compare the two within the same run. Results go to
OUT/sweep.json and OUT/sweep.png, and a Markdown table is printed (the README's performance section).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from planner.facts.errors import Infeasible
from planner.facts.options import PlanOptions
from planner.pipeline.plan import plan_tree
from planner.xml.xmlio import parse_domain_bytes, serialize

MACHINES = {"q35": "x86_64", "pc": "x86_64", "virt": "aarch64"}
MIXES = {"all": frozenset(), "half": frozenset({"disk"}), "none": frozenset({"disk", "interface"})}
MIX_WORDS = {"all": "all prefer hot-plug", "half": "disks hotplug=no", "none": "all hotplug=no"}


def guest(machine: str, size: int, mix: str = "all") -> bytes:
    """Half virtio NICs, half virtio disks. On pc they are modern-only (virtio-non-transitional):
    transitional virtio has a legacy I/O BAR each, and a few hundred of those exhaust SeaBIOS's I/O space
    (pciplan then refuses, exit 3)."""
    arch = MACHINES[machine]
    emulator = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}[arch]
    model = "virtio-non-transitional" if machine == "pc" else "virtio"
    nics = size // 2
    body = [f"<interface type='user'><mac address='52:54:00:00:{i >> 8:02x}:{i & 255:02x}'/>"
            f"<model type='{model}'/></interface>" for i in range(nics)]
    for i in range(size - nics):
        name, n = "", i + 1
        while n:
            n, r = divmod(n - 1, 26)
            name = chr(97 + r) + name
        body.append(f"<disk type='file' device='disk' model='{model}'>"
                    f"<source file='/var/lib/libvirt/images/d{i}.img'/>"
                    f"<target dev='vd{name}' bus='virtio'/></disk>")
    # ACPI on x86 (pci-root hot-plug needs it); on aarch64 it would need a UEFI loader.
    features = "<features><acpi/></features>" if arch == "x86_64" else ""
    if machine == "pc" and mix != "all":
        # hotplug=no on pc needs a root bus without ACPI hot-plug: what such a user writes
        body.insert(0, "<controller type='pci' index='0' model='pci-root'>"
                       "<target hotplug='off'/></controller>")
    return (f"<domain type='qemu'><name>bench-{machine}-{size}</name><memory unit='KiB'>4194304</memory>"
            f"<vcpu>2</vcpu><os><type arch='{arch}' machine='{machine}'>hvm</type></os>"
            f"{features}<devices><emulator>/usr/bin/{emulator}</emulator>"
            f"{''.join(body)}<controller type='usb' model='none'/><memballoon model='none'/></devices>"
            "</domain>").encode()


def pci_controllers(xml: str) -> int:
    tree = parse_domain_bytes(xml.encode())
    return sum(1 for c in tree.getroot().iter("controller") if c.get("type") == "pci") - 1


def greedy_backend():
    """Real libvirt through the embedded driver, else the built-in greedy."""
    try:
        from planner.stack import shared_stack

        stack = shared_stack()

        def run(xml: str) -> tuple[bool, str | None, int | None]:
            r = stack.define(xml)
            return r.ok, r.error, pci_controllers(r.xml) if r.ok and r.xml else None

        return "libvirt 9.0 (embedded driver)", run
    except Exception:  # noqa: BLE001 - no libvirt here: fall back to the re-implementation
        from planner.pipeline.greedy import greedy_plan

        def run_builtin(xml: str) -> tuple[bool, str | None, int | None]:
            r = greedy_plan(xml)
            return r.ok, r.error, sum(r.controllers_added.values()) if r.ok else None

        return "built-in greedy", run_builtin


def point(machine: str, size: int, mix: str, greedy, time_limit: float) -> dict:
    data = guest(machine, size, mix)
    start = time.perf_counter()
    tree = parse_domain_bytes(data)
    try:
        summary = plan_tree(tree, PlanOptions(time_limit=time_limit, no_hotplug_kinds=MIXES[mix]))
    except Infeasible as exc:
        summary = None
        reason = "; ".join(exc.reasons)
    total = time.perf_counter() - start
    start = time.perf_counter()
    ok, error, theirs = greedy(data.decode())
    greedy_seconds = time.perf_counter() - start
    wanted = {"all": size, "half": size // 2, "none": 0}[mix]
    if summary is None:
        return {"machine": machine, "size": size, "mix": mix, "status": "infeasible", "reason": reason,
                "gap": 0.0, "solve_seconds": 0.0, "total_seconds": total, "controllers": 0, "bus_numbers": 0,
                "hotplug_wanted": wanted, "hotplug_lost": 0, "greedy_ok": ok, "greedy_error": error,
                "greedy_seconds": greedy_seconds, "greedy_controllers": theirs, "output_bytes": 0}
    return {
        "machine": machine, "size": size, "mix": mix,
        "status": summary.status.lower(), "gap": summary.gap,
        "solve_seconds": summary.solve_seconds, "total_seconds": total,
        "controllers": sum(summary.controllers_added.values()),
        "bus_numbers": summary.levels["bus_numbers_added"] + 1,
        "hotplug_wanted": wanted, "hotplug_lost": summary.levels["hotplug_lost"],
        "greedy_ok": ok, "greedy_error": error, "greedy_seconds": greedy_seconds,
        "greedy_controllers": theirs, "output_bytes": len(serialize(tree)),
    }


def cli_seconds(repeats: int = 3) -> float:
    """Wall time of a whole `pciplan plan` run on a typical 32-device guest (best of a few)."""
    src = Path("/tmp/pciplan-bench-32.xml")
    src.write_bytes(guest("q35", 32))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "planner.commands.cli", "plan", str(src), "-o",
               "/tmp/pciplan-bench-out.xml"]
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colour = {"q35": "tab:blue", "pc": "tab:green", "virt": "tab:purple"}
    for machine in MACHINES:
        pts = [p for p in points if p["machine"] == machine and p["mix"] == "all"]
        sizes = [p["size"] for p in pts]
        c = colour.get(machine)
        axes[0].plot(sizes, [p["total_seconds"] for p in pts], marker="o", color=c,
                     label=f"pciplan {machine}")
        axes[0].plot(sizes, [p["greedy_seconds"] for p in pts], marker="x", linestyle="--", color=c,
                     label=f"libvirt greedy {machine}")
        axes[1].plot(sizes, [p["controllers"] for p in pts], marker="o", color=c, label=f"pciplan {machine}")
        ok = [p for p in pts if p["greedy_ok"]]
        axes[1].plot([p["size"] for p in ok], [p["greedy_controllers"] for p in ok], marker="x",
                     linestyle="--", color=c, label=f"libvirt greedy {machine}")
        failed = [p for p in pts if not p["greedy_ok"]]
        if failed:
            axes[1].scatter([p["size"] for p in failed], [-8] * len(failed), marker="v", s=80, color=c,
                            label=f"libvirt fails ({machine})")
    axes[0].set(xscale="log", yscale="log", xlabel="devices", ylabel="seconds (planning / define)",
                title="Time: pciplan total vs libvirt define")
    axes[1].set(xscale="log", xlabel="devices", ylabel="PCI controllers added",
                title="Controllers (all devices prefer hot-plug)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(points: list[dict]) -> str:
    rows = ["| machine | devices | hot-plug | status | solve s | total s | ctrls | buses | not hot-pluggable "
            "| libvirt s | libvirt ctrls | time ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        theirs = p["greedy_controllers"] if p["greedy_ok"] else "fails"
        ratio = f"{p['total_seconds'] / p['greedy_seconds']:.1f}×" if p["greedy_seconds"] else "–"
        gap = f" (gap {p['gap']:.1%})" if p["status"] == "feasible" else ""
        rows.append(f"| {p['machine']} | {p['size']} | {MIX_WORDS[p['mix']]} | {p['status']}{gap} | "
                    f"{p['solve_seconds']:.3f} | {p['total_seconds']:.3f} | {p['controllers']} | "
                    f"{p['bus_numbers']} | {p['hotplug_lost']} | {p['greedy_seconds']:.3f} | {theirs} | "
                    f"{ratio} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,50,100,200,500,1000")
    ap.add_argument("--machines", default=",".join(MACHINES))
    ap.add_argument("--mixes", default=",".join(MIXES))
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backend, greedy = greedy_backend()
    points = []
    for machine in args.machines.split(","):
        for mix in args.mixes.split(","):
            for size in map(int, args.sizes.split(",")):
                p = point(machine, size, mix, greedy, args.time_limit)
                points.append(p)
                print(f"{machine:5} {mix:5} {size:5}: {p['status']} {p['total_seconds']:.3f}s, "
                      f"{p['controllers']} ctrls; greedy {'ok' if p['greedy_ok'] else 'FAILS'} "
                      f"{p['greedy_seconds']:.3f}s", file=sys.stderr)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "machine": f"{platform.machine()}, {platform.python_version()}, "
                   f"{len(__import__('os').sched_getaffinity(0))} cores",
        "greedy": backend, "peak_rss_mib": round(peak_mib, 1), "cli_seconds_32_devices": cli_seconds(),
        "points": points,
    }
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    plot(points, out / "sweep.png")
    print(f"Greedy: {backend}. Peak memory of the whole sweep: {peak_mib:.0f} MiB. `pciplan plan` on a "
          f"32-device q35 guest, whole CLI run: {result['cli_seconds_32_devices']:.2f} s.\n")
    print(table(points))


if __name__ == "__main__":
    main()
