"""Fleet throughput: typical guests (≤ 32 devices) planned per second by `pciplan fleet`.

    python -m benchmarks.fleet [--guests 600] [--jobs 2] [--json benchmarks/results/fleet.json]

Runs the real command on generated guests (tests/fleetgen.py) in a temporary folder, twice: the first
run plans them, the second checks that nothing changes. Prints files per second for each run, and with
--json records them (README's throughput figures are that file; tests/test_readme_figures.py checks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fleetgen import write_fleet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guests", type=int, default=600)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=None, help="record the results in this file")
    args = ap.parse_args()
    record: dict = {"guests": args.guests, "jobs": args.jobs, "cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        write_fleet(src, args.guests)
        runs = (("plan", [str(src), "--out", str(out)]),
                ("re-plan (no change)", [str(out), "--in-place", "--no-backup"]))
        for label, argv in runs:
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "planner.cli", "fleet", *argv, "--jobs", str(args.jobs)]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            wall = time.perf_counter() - start
            line = r.stdout.strip().splitlines()[-1]
            changed = re.search(r"(\d+) changed", line).group(1)
            print(f"{label}: {args.guests} guests in {wall:.2f} s (whole command, {args.jobs} jobs): "
                  f"{args.guests / wall:.0f} guests/s; {changed} changed")
            record["runs"].append({"run": label, "seconds": round(wall, 3), "changed": int(changed),
                                   "guests_per_second": round(args.guests / wall, 1)})
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
