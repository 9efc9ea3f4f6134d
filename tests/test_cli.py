"""The pciplan command as a user runs it: exit codes, messages, atomic output, JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, nics, subprocess_env

GUEST = REPO / "examples" / "q35-server.xml"


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.commands.cli", *args], input=stdin,
                          capture_output=True, cwd=REPO, env=subprocess_env(), timeout=120)


def test_plan_to_file_and_check_it(tmp_path: Path) -> None:
    out = tmp_path / "planned.xml"
    r = run("plan", str(GUEST), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert b"optimal" in r.stderr
    assert r.stdout == b""
    c = run("check", str(out))
    assert c.returncode == 0, c.stdout
    assert b"ok: no violation" in c.stdout


def test_plan_stdin_to_stdout() -> None:
    r = run("plan", "-", stdin=GUEST.read_bytes())
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(b"<address type='pci'") >= 15


def test_json_summary_carries_status_and_bound(tmp_path: Path) -> None:
    r = run("plan", str(GUEST), "--json", "-o", str(tmp_path / "o.xml"))
    data = json.loads(r.stdout)
    assert data["status"] == "optimal"
    assert data["bound"] == data["objective"] and data["gap"] == 0
    assert data["controllers_added"] == {"pcie-root-port": 13, "pcie-to-pci-bridge": 1}
    assert {"solve_seconds", "devices", "devices_placed", "objective_levels"} <= set(data)


def test_bad_xml_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<domain><devices>")
    out = tmp_path / "out.xml"
    r = run("plan", str(bad), "-o", str(out))
    assert r.returncode == 2
    assert r.stderr.decode().count("\n") == 1 and "not well-formed" in r.stderr.decode()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad]


def test_unsupported_machine_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "s390.xml"
    f.write_text("<domain type='qemu'><name>x</name><memory>1</memory><os><type arch='s390x' "
                 "machine='s390-ccw-virtio'>hvm</type></os><devices/></domain>")
    r = run("plan", str(f))
    assert r.returncode == 2
    assert "os/type" in r.stderr.decode() and "s390-ccw-virtio" in r.stderr.decode()


def test_entities_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "lol.xml"
    f.write_text('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
                 "<domain><name>&b;</name></domain>")
    r = run("plan", str(f))
    assert r.returncode == 2 and "entity" in r.stderr.decode()


def test_infeasible_exits_3_and_explains(tmp_path: Path) -> None:
    nic = "<interface type='user'><model type='virtio'/><address type='pci' bus='0x01'/></interface>"
    pinned = nic * 9
    f = tmp_path / "inf.xml"
    f.write_text("<domain type='qemu'><name>x</name><memory>1</memory><os><type arch='x86_64' machine='q35'>"
                 "hvm</type></os><devices><controller type='pci' index='0' model='pcie-root'/>"
                 f"<controller type='pci' index='1' model='pcie-root-port'/>{pinned}</devices></domain>")
    before = f.read_bytes()
    r = run("plan", str(f), "--in-place")
    assert r.returncode == 3
    err = r.stderr.decode()
    assert "infeasible" in err and "interface[1]" in err and "index=1" in err
    assert f.read_bytes() == before


def test_in_place_replaces_atomically(tmp_path: Path) -> None:
    f = tmp_path / "g.xml"
    f.write_bytes(GUEST.read_bytes())
    os.chmod(f, 0o600)
    r = run("plan", str(f), "--in-place")
    assert r.returncode == 0, r.stderr
    assert b"<address type='pci'" in f.read_bytes()
    assert oct(f.stat().st_mode & 0o777) == oct(0o600)
    assert [p.name for p in tmp_path.iterdir()] == ["g.xml"]


def test_in_place_and_output_conflict() -> None:
    r = run("plan", str(GUEST), "--in-place", "-o", "/tmp/x.xml")
    assert r.returncode == 2


def test_check_reports_violations_with_exit_1(tmp_path: Path) -> None:
    f = tmp_path / "broken.xml"
    f.write_text("<domain type='qemu'><name>x</name><memory>1</memory><os><type arch='x86_64' machine='q35'>"
                 "hvm</type></os><devices><controller type='pci' index='0' model='pcie-root'/>"
                 "<controller type='pci' index='1' model='pcie-root-port'><address type='pci' domain='0' "
                 "bus='0' slot='2' function='0'/></controller><interface type='user'><model type='virtio'/>"
                 "<address type='pci' domain='0' bus='1' slot='1' function='0'/></interface>"
                 "</devices></domain>")
    r = run("check", str(f), "--partial")
    assert r.returncode == 1
    assert b"slot-range" in r.stdout


def test_help_teaches() -> None:
    r = run("plan", "--help")
    assert r.returncode == 0
    for word in (b"--replan", b"--spare-pcie", b"Exit status", b"Examples"):
        assert word in r.stdout


def test_many_nics_from_the_command_line(tmp_path: Path) -> None:
    f = tmp_path / "big.xml"
    f.write_text("<domain type='qemu'><name>x</name><memory>1</memory><os><type arch='x86_64' machine='q35'>"
                 f"hvm</type></os><devices>{nics(240)}</devices></domain>")
    r = run("plan", str(f), "--json", "-o", str(tmp_path / "o.xml"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "optimal"


def test_works_without_the_libvirt_binding(tmp_path: Path) -> None:
    """`pip install .` into a plain venv has no libvirt binding: plan, show, compare (built-in greedy) and
    fleet work; check --libvirt says what is missing and exits 2. A libvirt.py that refuses to import,
    first on the path, stands in for the missing package whatever this environment has."""
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "libvirt.py").write_text("raise ImportError('no libvirt binding here')\n")
    env = subprocess_env(PYTHONPATH=str(hidden))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "planner.commands.cli", *args], capture_output=True,
                              cwd=REPO, env=env, timeout=120)

    out = tmp_path / "planned.xml"
    assert cli("plan", str(GUEST), "-o", str(out)).returncode == 0
    assert cli("show", str(out)).returncode == 0
    assert cli("compare", str(GUEST)).returncode == 0
    assert cli("fleet", str(GUEST), "--out", str(tmp_path / "fleet")).returncode == 0
    r = cli("check", "--libvirt", str(out))
    assert r.returncode == 2
    assert b"libvirt Python binding not installed (Debian: python3-libvirt; PyPI: libvirt-python)" in r.stderr


def test_plan_to_a_device_writes_through_it(tmp_path, guest_xml) -> None:
    """`plan -o /dev/null` (or a FIFO) writes into the device; an atomic rename would replace it with a
    regular file (seen on the shared CI machine: /dev/null became a file, and libvirt failed)."""
    import os
    import stat
    import threading

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    result = run("plan", "-", "-o", str(fifo), stdin=guest_xml("q35"))
    reader.join(10)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode) and got and got[0].startswith(b"<domain")


# ---------------------------------------------------------------- JSON that carries everything

GOLDEN = REPO / "tests" / "golden" / "q35-server.xml"
NIC = b"<interface type='user'><mac address='52:54:00:aa:00:01'/><model type='virtio'/></interface>"


def test_check_json_gives_each_finding_its_severity(tmp_path: Path) -> None:
    """Before, a warning looked like an error in check --json: no severity."""
    loose = tmp_path / "loose.xml"
    loose.write_bytes(GOLDEN.read_bytes().replace(b" multifunction='on'", b"", 1))
    r = run("check", str(loose), "--json")
    assert r.returncode == 0
    data = json.loads(r.stdout)
    assert data["errors"] == 0 and data["warnings"] == 1
    assert [(v["severity"], v["rule"]) for v in data["violations"]] == [("warning", "multifunction-flag")]
    assert data["violations"][0]["element"] == "controller virtio-serial index=0"  # function 0 of 00:04
    r = run("check", str(GUEST), "--json")
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["errors"] == len(data["violations"])
    assert {v["severity"] for v in data["violations"]} == {"error"}


def test_firmware_names_in_any_case(tmp_path: Path) -> None:
    """--firmware OVMF was refused; the name is case-insensitive for every command that takes it."""
    upper, lower = tmp_path / "upper.xml", tmp_path / "lower.xml"
    assert run("plan", str(GUEST), "--firmware", "OVMF", "-o", str(upper)).returncode == 0
    assert run("plan", str(GUEST), "--firmware", "ovmf", "-o", str(lower)).returncode == 0
    assert upper.read_bytes() == lower.read_bytes()
    assert run("check", str(GOLDEN), "--firmware", "SeaBIOS").returncode == 0
    assert run("compare", str(GUEST), "--firmware", "Ovmf", "--json").returncode == 0


def test_plan_and_check_name_a_device_alike(tmp_path: Path) -> None:
    """plan counted devices from 0 (interface[0]), check from 1: now both from 1, like XPath."""
    f = tmp_path / "g.xml"
    f.write_text("<domain type='qemu'><name>x</name><memory>1</memory><os><type arch='x86_64' machine='q35'>"
                 "hvm</type></os><devices><interface type='user'><model type='virtio'/></interface>"
                 "<interface type='user'><model type='virtio'/><address type='pci' domain='0' bus='0' "
                 "slot='0x1f' function='0'/></interface></devices></domain>")
    planned = run("plan", str(f))
    checked = run("check", str(f), "--partial")
    assert planned.returncode == 2 and "interface[2]" in planned.stderr.decode()
    assert checked.returncode == 1 and "interface[2]" in checked.stdout.decode()
    assert "interface[1]" not in planned.stderr.decode() + checked.stdout.decode()


def test_attach_count_with_config_is_refused(tmp_path: Path) -> None:
    """--count was ignored with --config (the next boot was planned and written instead)."""
    nic = tmp_path / "nic.xml"
    nic.write_bytes(NIC)
    out = tmp_path / "next.xml"
    r = run("attach", str(GOLDEN), str(nic), "--config", "--count", "-o", str(out))
    assert r.returncode == 2 and not out.exists() and r.stdout == b""
