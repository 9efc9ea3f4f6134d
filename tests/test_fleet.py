"""pciplan fleet: batches of guests, in parallel, safely."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from fleetgen import write_fleet
from planning import new_errors, plan_file, text
from realstack import real_stack_fixture  # noqa: F401

from planner.xmlio import parse_domain

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def fleet(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.cli", "fleet", *args], capture_output=True,
                          cwd=REPO, env=ENV, timeout=timeout)


def test_batch_of_200_with_broken_and_infeasible_guests(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_fleet(src, 194, broken=3, infeasible=3)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    r = fleet(str(src), "--out", str(out), "--report", str(tmp_path / "report.json"), "--jobs", "2")
    assert r.returncode == 1  # some failed
    assert b"200 files: 194 changed, 0 unchanged, 6 failed" in r.stdout
    err = r.stderr.decode()
    assert err.count("failed:") == 6 and "not well-formed" in err and "s390x" in err and "free slot" in err
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # inputs untouched
    assert len(list(out.iterdir())) == 194
    for p in sorted(out.iterdir())[::20]:
        assert new_errors(parse_domain(src / p.name), parse_domain(p)) == []
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["failed"] == 6 and len(report["files"]) == 200


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_fleet(src, 30)
    r = fleet(str(src), "--in-place", "--jobs", "2")
    assert r.returncode == 0 and b"30 changed" in r.stdout
    assert len(list(src.glob("*.orig"))) == 30  # the originals are kept
    r = fleet(str(src / "*.xml"), "--in-place", "--jobs", "2", "--report", str(tmp_path / "r.csv"))
    assert r.returncode == 0 and b"0 changed, 30 unchanged" in r.stdout
    assert (tmp_path / "r.csv").read_text().count("\n") == 31


def test_replan_keeps_addresses(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_fleet(src, 12)
    fleet(str(src), "--in-place", "--no-backup")
    r = fleet(str(src), "--out", str(out), "--replan", "--spare-pcie", "2")
    assert r.returncode == 0
    assert b"moved 0" in r.stdout


def test_ctrl_c_leaves_no_half_written_file(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_fleet(src, 400)
    originals = {p.name: p.read_bytes() for p in src.iterdir()}
    cmd = [sys.executable, "-m", "planner.cli", "fleet", str(src), "--in-place", "--no-backup", "--jobs", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    assert not list(src.glob(".*.tmp")), "temporary files left behind"
    planned = 0
    for p in sorted(src.iterdir()):
        data = p.read_bytes()
        if data == originals[p.name]:
            continue
        planned += 1
        tree, summary = plan_file(p)  # complete and already planned: planning again changes nothing
        assert text(tree) == data and summary.controllers_added == {}
    assert planned < 400  # it was interrupted


@pytest.mark.realstack
def test_fleet_output_defines_unchanged_in_libvirt(real_stack, tmp_path: Path) -> None:
    from test_realstack_plans import _fixpoint

    src, out = tmp_path / "in", tmp_path / "out"
    write_fleet(src, 24)
    assert fleet(str(src), "--out", str(out)).returncode == 0
    for p in sorted(out.iterdir()):
        _fixpoint(real_stack, p.read_text())
