"""pciplan fleet: batches of guests, in parallel, safely."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env
from fleetgen import write_fleet
from planning import errors, new_errors, plan_file, text
from realstack import real_stack_fixture  # noqa: F401

from planner.xmlio import parse_domain

ENV = subprocess_env()


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
    write_fleet(src, 1500)
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
    assert planned < 1500, "not interrupted: the batch finished before Ctrl-C"


@pytest.mark.realstack
def test_fleet_output_defines_unchanged_in_libvirt(real_stack, tmp_path: Path) -> None:
    from test_realstack_plans import _fixpoint

    src, out = tmp_path / "in", tmp_path / "out"
    write_fleet(src, 24)
    assert fleet(str(src), "--out", str(out)).returncode == 0
    for p in sorted(out.iterdir()):
        _fixpoint(real_stack, p.read_text())


def test_dask_cluster_gives_the_same_results(tmp_path: Path) -> None:
    """--scheduler: the same files, the same outputs, through a local Dask cluster."""
    from distributed import LocalCluster

    src, local, dask = tmp_path / "in", tmp_path / "local", tmp_path / "dask"
    write_fleet(src, 20, broken=1)
    fleet(str(src), "--out", str(local), "--jobs", "2")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        r = fleet(str(src), "--out", str(dask), "--scheduler", cluster.scheduler_address)
    assert r.returncode == 1 and b"20 changed, 0 unchanged, 1 failed" in r.stdout
    assert sorted(p.name for p in dask.iterdir()) == sorted(p.name for p in local.iterdir())
    for p in local.iterdir():
        assert (dask / p.name).read_bytes() == p.read_bytes()


@pytest.mark.realstack
def test_connect_plans_live_domains_and_defines_the_changed_ones(real_stack, tmp_path: Path) -> None:
    """Against libvirt's embedded driver: domains defined there are read, planned, diffed, and with
    define written back; a second pass changes nothing."""
    from planner.fleet import plan_domains
    from planner.options import PlanOptions

    conn = real_stack._conn
    src = tmp_path / "in"
    write_fleet(src, 4)
    names = []
    for p in sorted(src.iterdir()):
        xml = p.read_text().replace("<name>", "<name>live-")
        names.append(conn.defineXML(xml).name())  # libvirt's greedy addresses them
    try:
        options = PlanOptions(replan=True, spare_pcie=3)
        first = plan_domains(conn, names, options, define=True)
        assert all(r.status in ("changed", "unchanged") for r in first), [r.reason for r in first]
        assert any(r.status == "changed" and "pcie-root-port" in (r.output or "") for r in first)
        assert all(r.addresses_moved == 0 for r in first)  # libvirt's addresses kept
        second = plan_domains(conn, names, options, define=True)
        assert [r.status for r in second] == ["unchanged"] * len(names)
    finally:
        for n in names:
            conn.lookupByName(n).undefine()


# ----------------------------------------------------------------- --to-machine q35

PC_GUESTS = sorted((REPO / "tests" / "guests").glob("pc-*.xml"))


def _addr_key(el) -> tuple[int, int, int]:
    a = el.find("address")
    return int(a.get("bus"), 0), int(a.get("slot"), 0), int(a.get("function"), 0)


@pytest.mark.parametrize("path", PC_GUESTS, ids=lambda p: p.name)
def test_to_machine_q35_converts_and_keeps_the_order_of_nics_and_disks(path: Path) -> None:
    from planner.options import PlanOptions
    from planner.plan import plan_tree

    tree = parse_domain(path)
    summary = plan_tree(tree, PlanOptions(to_machine="q35"))
    root = tree.getroot()
    assert "q35" in root.find("os/type").get("machine")
    assert not [c for c in root.iter("controller") if c.get("model") in ("pci-root", "pci-bridge")]
    assert not [d for d in root.iter("disk") if d.find("target").get("bus") == "ide"]
    assert errors(tree) == []
    for kind in ("interface", "disk"):
        els = [e for e in root.iterfind(f"devices/{kind}") if e.find("address") is not None
               and e.find("address").get("type") == "pci"]
        # guests name NICs and disks by PCI address: within a kind and bus type, the order stays
        by_model: dict[str, list] = {}
        for e in els:
            model = e.find("model")
            key = model.get("type") if kind == "interface" and model is not None else kind
            by_model.setdefault(key, []).append(_addr_key(e))
        for keys in by_model.values():
            assert keys == sorted(keys)
    assert summary.machine == "q35"


@pytest.mark.realstack
@pytest.mark.parametrize("path", PC_GUESTS, ids=lambda p: p.name)
def test_converted_guests_define_and_boot(real_stack, path: Path) -> None:
    from test_realstack_plans import _boot, _fixpoint

    from planner.options import PlanOptions
    from planner.plan import plan_tree

    tree = parse_domain(path)
    plan_tree(tree, PlanOptions(to_machine="q35"))
    xml = text(tree).decode()
    _fixpoint(real_stack, xml)
    _boot(xml)
