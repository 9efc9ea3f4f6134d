"""pciplan fleet: batches of guests, in parallel, safely."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env
from fleetgen import write_fleet
from planning import errors, new_errors, plan_file, text
from realstack import real_stack_fixture  # noqa: F401

from planner.xml.xmlio import parse_domain

ENV = subprocess_env()


def fleet(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.commands.cli", "fleet", *args], capture_output=True,
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


def test_ctrl_c_at_any_moment_stops_within_seconds_with_summary_and_report(tmp_path: Path) -> None:
    """SIGINT to the whole process group (as Ctrl-C in a terminal) at many moments: start-up, worker
    start, planning, writing, the end of a small batch. Every run ends within a bound with exit 130, the
    summary and a report of exactly the files written (or had finished: exit 0); each file is its
    original or its complete plan, no temporary file is left. (Before pciplan's own code runs, the
    first ~0.1 s of Python's start-up, Ctrl-C is Python's: the earliest moment here is later.) The
    moments are fractions of an uninterrupted run's time, so that they fall in the same phases on a
    fast or a busy machine."""
    base, reference = tmp_path / "base", tmp_path / "reference"
    write_fleet(base, 200)
    start = time.monotonic()
    assert fleet(str(base), "--out", str(reference), "--jobs", "2").returncode == 0
    whole = time.monotonic() - start
    start = time.monotonic()
    assert fleet(str(base / "guest-000*.xml"), "--dry-run", "--jobs", "2").returncode == 0
    small = time.monotonic() - start  # 10 guests: a run that is mostly start-up and shutdown
    originals = {p.name: p.read_bytes() for p in base.iterdir()}
    planned = {p.name: p.read_bytes() for p in reference.iterdir()}
    interrupted_with_work = 0
    runs = [(200, whole * f, 2) for f in (0.1, 0.2, 0.35, 0.5, 0.7, 0.9)]
    runs += [(10, small * f, 2) for f in (0.7, 0.85)]
    runs += [(200, whole * 0.6, 1)]  # planned in the parent process itself
    for n, (count, delay, jobs) in enumerate(runs):
        src, report = tmp_path / f"run{n}", tmp_path / f"report{n}.json"
        src.mkdir()
        for name in sorted(originals)[:count]:
            (src / name).write_bytes(originals[name])
        cmd = [sys.executable, "-m", "planner.commands.cli", "fleet", str(src), "--in-place", "--no-backup",
               "--jobs", str(jobs), "--report", str(report)]
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"Ctrl-C {delay} s after the start: still running 15 s later")
        assert time.monotonic() - sent < 8, f"Ctrl-C at {delay} s: took {time.monotonic() - sent:.1f} s"
        assert b"Traceback" not in err, err.decode()
        assert not list(src.glob(".*.tmp")), "temporary files left behind"
        data = json.loads(report.read_text())
        assert all(f["status"] == "changed" for f in data["files"]), data["files"]  # none fails for it
        written = {Path(f["path"]).name for f in data["files"] if f["status"] == "changed"}
        for p in src.iterdir():
            expected = planned[p.name] if p.name in written else originals[p.name]
            assert p.read_bytes() == expected, f"Ctrl-C at {delay} s: {p.name} is not what the report says"
        if proc.returncode == 0:  # it had finished before the signal came
            assert f"{count} files: {count} changed".encode() in out and len(written) == count
            continue
        assert proc.returncode == 130, (delay, proc.returncode, err.decode())
        done = len(data["files"])
        assert f"{done} files:".encode() in out, out.decode()
        assert f"interrupted: {done} of {count} files done".encode() in err, err.decode()
        assert data["summary"]["interrupted"] is True and data["summary"]["files"] == done
        interrupted_with_work += 0 < done < count
        shutil.rmtree(src)
    assert interrupted_with_work >= 3, "the signals never landed in the middle of the batch"


def _readonly_folder(path: Path) -> Path:
    """A folder nobody may write into: chmod for a normal user; for root (who ignores modes) a
    read-only tmpfs mounted there."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return path
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("running as root and cannot mount a read-only tmpfs")
    return path


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for m in mounted:
        subprocess.run(["umount", str(m)], capture_output=True)


def _one_line_usage_error(r: subprocess.CompletedProcess, *words: str) -> None:
    err = r.stderr.decode()
    assert r.returncode == 2, (r.returncode, err)
    assert err.count("\n") == 1 and err.startswith("pciplan: error: "), err
    assert all(w in err for w in words), err
    assert r.stdout == b""


def test_unwritable_outputs_fail_file_by_file_and_the_batch_goes_on(tmp_path: Path, mounts) -> None:
    """--out into a read-only folder and --in-place in one: each file fails with the reason, the
    summary and the report are there, exit 1; no word about a scheduler that was never asked for."""
    src = tmp_path / "in"
    write_fleet(src, 6)
    readonly = _readonly_folder(tmp_path / "ro")
    mounts.append(readonly)
    r = fleet(str(src), "--out", str(readonly), "--jobs", "2", "--report", str(tmp_path / "r.json"))
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert b"6 files: 0 changed, 0 unchanged, 6 failed" in r.stdout
    assert err.count("failed: cannot write") == 6 and "scheduler" not in err
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["failed"] == 6
    if os.geteuid() == 0:  # the same guests, read-only in place (as a normal user: --out is the case)
        inplace = tmp_path / "ro-in-place"
        inplace.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(inplace)], check=True)
        mounts.append(inplace)
        write_fleet(inplace, 6)
        subprocess.run(["mount", "-o", "remount,ro", str(inplace)], check=True)
        before = {p.name: p.read_bytes() for p in inplace.iterdir()}
        r = fleet(str(inplace), "--in-place", "--jobs", "2")
        assert r.returncode == 1 and b"6 files: 0 changed, 0 unchanged, 6 failed" in r.stdout
        assert r.stderr.count(b"Read-only file system") == 6 and b"scheduler" not in r.stderr
        assert {p.name: p.read_bytes() for p in inplace.iterdir()} == before


def test_disk_full_in_the_middle_fails_the_rest_and_keeps_what_was_written(tmp_path: Path, mounts) -> None:
    """A tiny tmpfs as --out: the first files fit, then ENOSPC. Those are failed files, not a stop of
    the batch: summary, report, exit 1; every file that is there is complete."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs (test_disk_full_in_process covers it without)")
    src, out = tmp_path / "in", tmp_path / "small"
    write_fleet(src, 40)
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(out)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs")
    mounts.append(out)
    r = fleet(str(src), "--out", str(out), "--jobs", "2", "--report", str(tmp_path / "r.csv"))
    err = r.stderr.decode()
    assert r.returncode == 1, err
    full = err.count("No space left on device")
    written = sorted(out.iterdir())
    assert full > 0 and written and full + len(written) == 40, err
    assert "scheduler" not in err and b"40 files:" in r.stdout
    assert (tmp_path / "r.csv").read_text().count("\n") == 41
    assert not list(out.glob(".*.tmp"))
    for p in written:
        tree, summary = plan_file(p)
        assert text(tree) == p.read_bytes() and summary.controllers_added == {}


def test_disk_full_in_process(tmp_path: Path, monkeypatch) -> None:
    """The same without a mount: the writer reports ENOSPC from the fourth file on."""
    from typer.testing import CliRunner

    from planner.commands import fleet as fl
    from planner.commands.cli import app

    src, out = tmp_path / "in", tmp_path / "out"
    write_fleet(src, 8)
    calls = []
    real_write = fl.stage_file  # the bytes' half of each write (fl._stage)

    def write_until_full(path, data) -> str | None:
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data)

    monkeypatch.setattr(fl, "stage_file", write_until_full)
    r = CliRunner().invoke(app, ["fleet", str(src), "--out", str(out), "--jobs", "1",
                                 "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 1, r.output
    assert "8 files: 3 changed, 0 unchanged, 5 failed" in r.output
    assert r.output.count("No space left on device") == 5 and "scheduler" not in r.output
    assert len(list(out.iterdir())) == 3
    report = json.loads((tmp_path / "r.json").read_text())
    assert [f["status"] for f in report["files"]] == ["changed"] * 3 + ["failed"] * 5


def test_a_report_that_cannot_be_written_at_the_end_is_said_in_one_line(tmp_path: Path, monkeypatch) -> None:
    """The disk fills after the files are planned: the files stay written, the summary is printed, the
    report's failure is one line, exit 1 (no traceback)."""
    from typer.testing import CliRunner

    import planner.commands.cli as cli

    src, out = tmp_path / "in", tmp_path / "out"
    write_fleet(src, 2)

    def disk_full(path, data) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(cli, "write_atomic", disk_full)
    r = CliRunner().invoke(cli.app, ["fleet", str(src), "--out", str(out), "--jobs", "1",
                                     "--report", str(tmp_path / "r.csv")])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception  # not a crash
    assert "2 files: 2 changed" in r.output and len(list(out.iterdir())) == 2
    assert f"pciplan: error: --report {tmp_path / 'r.csv'}: cannot write: No space left on device" in r.output
    assert not (tmp_path / "r.csv").exists()


def test_paths_that_make_the_run_pointless_are_refused_before_planning(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_fleet(src, 3)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    afile = tmp_path / "a-file"
    afile.write_text("x")
    _one_line_usage_error(fleet(str(src), "--out", str(afile)), "--out", "not a directory")
    out = tmp_path / "out"
    _one_line_usage_error(fleet(str(src), "--out", str(out), "--report", str(tmp_path / "nodir" / "r.csv")),
                          "--report", "does not exist")
    _one_line_usage_error(fleet(str(src), "--in-place", "--report", str(tmp_path / "r.txt")), ".json or .csv")
    (tmp_path / "d.json").mkdir()
    report_dir = str(tmp_path / "d.json")
    _one_line_usage_error(fleet(str(src), "--in-place", "--report", report_dir), "is a directory")
    _one_line_usage_error(fleet(str(src), "--in-place", "--out", str(out)), "--out", "--in-place")
    _one_line_usage_error(fleet(str(src), "--in-place", "--jobs", "0"), "--jobs")
    _one_line_usage_error(fleet(str(src), "--in-place", "--define"), "--define", "--connect")
    assert not out.exists()  # nothing was planned, not even the output folder made
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_connect_refuses_the_options_for_files(tmp_path: Path) -> None:
    """--connect plans libvirt's domains: file options are refused before libvirt is even opened."""
    uri = f"qemu:///embed?root={tmp_path / 'never-opened'}"
    for extra in (["--out", str(tmp_path / "o")], ["--in-place"], ["--dry-run"], [str(tmp_path)],
                  ["--scheduler", "tcp://127.0.0.1:1"]):
        _one_line_usage_error(fleet("--connect", uri, *extra), "--connect", extra[0].split("/")[0] or "PATH")
    assert not (tmp_path / "never-opened").exists() and not (tmp_path / "o").exists()


def test_json_report_keeps_lists_csv_joins_them(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for p in PC_GUESTS[:3]:
        shutil.copy(p, src / p.name)
    assert fleet(str(src), "--in-place", "--no-backup").returncode == 0  # addresses to move
    r = fleet(str(src), "--dry-run", "--to-machine", "q35", "--report", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr.decode()
    rows = json.loads((tmp_path / "r.json").read_text())["files"]
    assert all(isinstance(row["moved"], list) and isinstance(row["check_errors"], list) for row in rows)
    assert any(len(row["moved"]) > 1 for row in rows)  # converted guests move their addresses
    fleet(str(src), "--dry-run", "--to-machine", "q35", "--report", str(tmp_path / "r.csv"))
    csv_rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [row["moved"] for row in csv_rows] == ["; ".join(row["moved"]) for row in rows]


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
def test_a_failing_dask_worker_fails_its_files_and_the_batch_goes_on(tmp_path: Path, monkeypatch) -> None:
    """A worker that cannot run pciplan at all (CI once had workers importing a broken copy): every file
    it took is reported failed with the worker's error, the batch ends, and the error is not mistaken
    for Dask missing here."""
    from distributed import LocalCluster

    import planner.commands.fleet as fl
    from planner.facts.options import PlanOptions

    def broken_worker(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'planner.models'")

    src = tmp_path / "in"
    write_fleet(src, 3)
    files = sorted(src.iterdir())
    monkeypatch.setattr(fl, "plan_one", broken_worker)  # threads in this process run the patched one
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        batch = fl.run(files, out_dir=tmp_path / "out", in_place=False, options=PlanOptions(), jobs=1,
                       dry_run=False, backup=False, scheduler=cluster.scheduler_address)
    assert [r.status for r in batch.results] == ["failed"] * 3
    assert all(r.reason == "the Dask worker failed: ModuleNotFoundError: No module named 'planner.models'"
               for r in batch.results), batch.results
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_connect_plans_live_domains_and_defines_the_changed_ones(real_stack, tmp_path: Path) -> None:
    """Against libvirt's embedded driver: domains defined there are read, planned, diffed, and with
    define written back; a second pass changes nothing."""
    from planner.commands.fleet import plan_domains
    from planner.facts.options import PlanOptions

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


DEFINE_INTO_ROOT = """
import sys, threading, libvirt
libvirt.registerErrorHandler(lambda *_: None, None)
libvirt.virEventRegisterDefaultImpl()
threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)], daemon=True).start()
conn = libvirt.open("qemu:///embed?root=" + sys.argv[1])
for path in sys.argv[2:]:
    conn.defineXML(open(path).read())
conn.close()
"""


@pytest.mark.realstack
def test_connect_reports_and_converts(real_stack, tmp_path: Path) -> None:
    """fleet --connect with --report and --to-machine q35 on a libvirt of its own (embedded driver,
    another root): pc guests as libvirt addressed them are converted, defined, reported with their
    moved addresses; a second pass changes nothing."""
    from planner.stack.driver import QEMU_CONF

    # a short root: QEMU's monitor socket lives under it, and socket paths are short
    root, src = Path(tempfile.mkdtemp(prefix="pciplan-", dir="/tmp")), tmp_path / "in"
    for conf in (root / "etc" / "qemu.conf", root / "etc" / "qemu" / "qemu.conf"):
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(QEMU_CONF)  # as planner.stack sets up its own root: QEMU runs as root here
    src.mkdir()
    for n, p in enumerate(PC_GUESTS[:2]):
        (src / p.name).write_text(p.read_text().replace("<name>", f"<name>conv{n}-", 1))
    subprocess.run([sys.executable, "-c", DEFINE_INTO_ROOT, str(root), *map(str, sorted(src.iterdir()))],
                   check=True, cwd=REPO, env=ENV, timeout=120)
    uri = f"qemu:///embed?root={root}"
    try:
        r = fleet("--connect", uri, "--to-machine", "q35", "--define", "--report", str(tmp_path / "r.json"))
        assert r.returncode == 0, r.stderr.decode()
        rows = json.loads((tmp_path / "r.json").read_text())["files"]
        assert [row["status"] for row in rows] == ["changed", "changed"]
        assert all(isinstance(row["moved"], list) and row["moved"] for row in rows)
        assert r.stdout.count(b"q35") >= 2  # the diffs show the conversion
        r = fleet("--connect", uri, "--to-machine", "q35", "--report", str(tmp_path / "r.csv"))
        assert r.returncode == 0 and b"2 domains: 0 changed, 2 unchanged" in r.stderr, r.stderr.decode()
        assert (tmp_path / "r.csv").read_text().count("\n") == 3
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------- --to-machine q35

PC_GUESTS = sorted((REPO / "tests" / "guests").glob("pc-*.xml"))


def _addr_key(el) -> tuple[int, int, int]:
    a = el.find("address")
    return int(a.get("bus"), 0), int(a.get("slot"), 0), int(a.get("function"), 0)


@pytest.mark.parametrize("path", PC_GUESTS, ids=lambda p: p.name)
def test_to_machine_q35_converts_and_keeps_the_order_of_nics_and_disks(path: Path) -> None:
    from planner.facts.options import PlanOptions
    from planner.pipeline.plan import plan_tree

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

    from planner.facts.options import PlanOptions
    from planner.pipeline.plan import plan_tree

    tree = parse_domain(path)
    plan_tree(tree, PlanOptions(to_machine="q35"))
    xml = text(tree).decode()
    _fixpoint(real_stack, xml)
    _boot(xml)


def test_workers_write_planned_files_together_and_stop_between_files(tmp_path: Path, monkeypatch) -> None:
    """A worker puts in place and reports several planned files at once, and on Ctrl-C it starts no new
    file of its chunk: every file is written exactly when it is reported."""
    import planner.commands.fleet as fl
    from planner.facts.options import PlanOptions

    src, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "commits"
    write_fleet(src, 80)
    commit = fl._commit

    def logged(conn, pending):  # the workers are forked after this: they run it too
        with open(log, "a") as fh:
            fh.write(f"{len(pending)}\n")
        commit(conn, pending)

    monkeypatch.setattr(fl, "_commit", logged)
    monkeypatch.setattr(fl, "COMMIT_SECONDS", 10.0)  # a commit per chunk
    files = fl.collect([str(src)])
    batch = fl.run(files, out_dir=out, in_place=False, options=PlanOptions(), jobs=2)
    sizes = [int(n) for n in log.read_text().split()]
    assert len(batch.results) == 80 and sum(sizes) == 80
    assert max(sizes) > 1 and len(sizes) < 80, sizes  # grouped, not one commit per file
    assert len(list(out.glob("*.xml"))) == 80 and not list(out.glob(".*.tmp"))

    shutil.rmtree(out)
    monkeypatch.setattr(fl, "COMMIT_SECONDS", 0.0)  # a commit per file
    interrupt = fl.Interrupt()

    def stop_after_first(_result) -> None:
        interrupt.requested = True

    batch = fl.run(files, out_dir=out, in_place=False, options=PlanOptions(), jobs=2,
                   progress=stop_after_first, interrupt=interrupt)
    # each worker was given 10 files (fl._chunk_size): one finished, the other ones in progress at most
    assert batch.interrupted and 0 < len(batch.results) <= 3, len(batch.results)
    assert sorted(p.name for p in out.glob("*.xml")) == sorted(Path(r.path).name for r in batch.results)
    assert not list(out.glob(".*.tmp"))


def test_workers_sync_in_a_thread_and_rename_with_sigterm_held(tmp_path: Path, monkeypatch) -> None:
    """A worker's slow half of each write (the bytes and the fsync) runs in its writing thread while the
    worker plans on; the renames run in the worker's main thread with SIGTERM held (so a stop never cuts
    a commit short) and only there. In place, the backup goes first, then the planned file."""
    import threading

    import planner.commands.fleet as fl
    from planner.facts.options import PlanOptions

    src, log = tmp_path / "in", tmp_path / "log"
    write_fleet(src, 30)
    stage, put = fl.stage_file, fl.put_in_place

    def note(line: str) -> None:
        with open(log, "a") as fh:
            fh.write(line + "\n")

    def staged(path, data):  # the workers are forked after this: they run it too
        main = threading.current_thread() is threading.main_thread()
        note(f"stage {os.getpid()} {'main' if main else 'thread'} {Path(path).name}")
        return stage(path, data)

    def renamed(tmp, path):
        main = threading.current_thread() is threading.main_thread()
        held = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        note(f"rename {os.getpid()} {'main' if main else 'thread'} {'held' if held else 'open'} "
             f"{Path(path).name}")
        put(tmp, path)

    monkeypatch.setattr(fl, "stage_file", staged)
    monkeypatch.setattr(fl, "put_in_place", renamed)
    files = fl.collect([str(src)])
    batch = fl.run(files, out_dir=None, in_place=True, options=PlanOptions(), jobs=2)
    assert [r.status for r in batch.results] == ["changed"] * 30
    lines = [line.split() for line in log.read_text().splitlines()]
    stages = [w for w in lines if w[0] == "stage"]
    renames = [w for w in lines if w[0] == "rename"]
    assert len(stages) == len(renames) == 60  # each guest and its backup
    assert {w[2] for w in stages} == {"thread"} and {tuple(w[2:4]) for w in renames} == {("main", "held")}
    assert len({w[1] for w in renames}) == 2 and os.getpid() not in {int(w[1]) for w in renames}
    order = [w[-1] for w in renames]
    for p in files:
        assert order.index(p.name + ".orig") < order.index(p.name)
        assert (src / (p.name + ".orig")).exists()
    assert not list(src.glob(".*.tmp"))


def _collect_by_resolving_each(paths: list[str]) -> list[Path]:
    """fleet.collect as it was: every file resolved on its own (the reference of the test below)."""
    import glob

    out: list[Path] = []
    for p in paths:
        matches = [Path(m) for m in sorted(glob.glob(p))] if any(c in p for c in "*?[") else [Path(p)]
        for m in matches:
            out += sorted(m.glob("*.xml")) if m.is_dir() else [m]
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def test_collect_names_each_file_once_as_resolving_each_would(tmp_path: Path) -> None:
    """collect resolves a folder once, not each file in it: the same files in the same order as resolving
    every one, with symlinks (to a file of the same folder, of another, through a symlinked folder, broken),
    hidden files, a folder named like a guest, files given twice, globs, and a folder that cannot be read
    (where the tests do not run as root)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    for name in ("g1.xml", "g2.xml", ".hidden.xml", "notes.txt", "G3.XML", "z.xml"):
        (a / name).write_text("<domain/>")
    (b / "other.xml").write_text("<domain/>")
    (a / "dir.xml").mkdir()
    (a / "link-g1.xml").symlink_to(a / "g1.xml")
    (a / "link-other.xml").symlink_to(b / "other.xml")
    (a / "broken.xml").symlink_to(tmp_path / "missing.xml")
    (tmp_path / "alias").symlink_to(a)
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "x.xml").write_text("<domain/>")
    locked.chmod(0)
    import planner.commands.fleet as fl

    try:
        cases = [[str(a)], [str(a), str(b)], [str(b), str(a)], [str(tmp_path / "alias"), str(a)],
                 [str(a / "g2.xml"), str(a)], [str(a / "*.xml")], [str(tmp_path / "*")],
                 [str(b / "other.xml"), str(tmp_path / "alias" / "link-other.xml")], [str(locked), str(b)]]
        for paths in cases:
            assert fl.collect(paths) == _collect_by_resolving_each(paths), paths
        got = fl.collect([str(a), str(b)])
        assert a / "link-g1.xml" not in got and b / "other.xml" not in got and a / ".hidden.xml" in got
    finally:
        locked.chmod(0o755)
