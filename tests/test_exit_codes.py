"""The exit-status contract (README "Exit status"), command by command, through the error paths: the
status, exactly one line on stderr for a refusal (never a traceback), nothing written, and with --json a
JSON error object on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, nics, subprocess_env

from planner.facts.errors import ExitCode

GUEST = REPO / "examples" / "q35-server.xml"
PLANNED = REPO / "tests" / "golden" / "q35-server.xml"
NIC = b"<interface type='network'><source network='default'/><model type='virtio'/></interface>"


def run(*args: str, prelude: str = "", env: dict[str, str] | None = None,
        stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """pciplan as the console script runs it (planner.commands.cli.main), after prelude (to break things)."""
    code = (f"import sys\n{prelude}\nsys.argv = ['pciplan', *sys.argv[1:]]\n"
            "from planner.commands.cli import main\nmain()\n")
    return subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True, cwd=REPO,
                          env=subprocess_env(**(env or {})), timeout=300)


def one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode()
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err


def infeasible_guest(tmp_path: Path) -> Path:
    pinned = "<interface type='user'><model type='virtio'/><address type='pci' bus='0x01'/></interface>" * 9
    f = tmp_path / "inf.xml"
    f.write_text("<domain type='qemu'><name>x</name><memory>1</memory><os><type arch='x86_64' machine='q35'>"
                 "hvm</type></os><devices><controller type='pci' index='0' model='pcie-root'/>"
                 f"<controller type='pci' index='1' model='pcie-root-port'/>{pinned}</devices></domain>")
    return f


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<domain><devices>")
    nic = tmp_path / "nic.xml"
    nic.write_bytes(NIC)
    sound = tmp_path / "sound.xml"
    sound.write_bytes(b"<sound model='ich9'/>")
    return {"bad": bad, "nic": nic, "sound": sound, "out": tmp_path / "out.xml", "tmp": tmp_path}


# (command line, expected status, words of the one line); {bad}, {nic}, {out}, ... are the files above
REFUSALS = [
    (["plan", "{missing}"], 2, "cannot read"),
    (["plan", "{bad}", "-o", "{out}"], 2, "not well-formed"),
    (["plan", "{guest}", "--spare-pcie", "-1"], 2, "--spare-pcie: -1 must be 0 or more"),
    (["plan", "{guest}", "--spare-pci", "-2"], 2, "--spare-pci: -2 must be 0 or more"),
    (["plan", "{guest}", "--time-limit", "0"], 2, "--time-limit: 0 must be greater than 0"),
    (["plan", "{guest}", "--time-limit", "-5"], 2, "--time-limit"),
    (["plan", "{guest}", "--reserve", "interface:foo=1"], 2, "unknown interface model 'foo'"),
    (["plan", "{guest}", "--reserve", "interface"], 2, "expected KIND[:MODEL]=N"),
    (["plan", "{guest}", "--reserve", "frob=1"], 2, "unknown device kind 'frob'"),
    (["plan", "{guest}", "--reserve", "interface=-1"], 2, "out of range"),
    (["plan", "{guest}", "--firmware", "coreboot"], 2, "--firmware: 'coreboot'"),
    (["plan", "{guest}", "--hotplug", "frob"], 2, "unknown device kind 'frob'"),
    (["plan", "{guest}", "--hotplug", "disk", "--no-hotplug", "disk"], 2, "both name disk"),
    (["plan", "{guest}", "--bus", "isa"], 2, "--bus: 'isa'"),
    (["plan", "{guest}", "--objective-order", "pcie"], 2, "--objective-order"),
    (["plan", "{guest}", "-o", "{out}", "--in-place"], 2, "not both"),
    (["plan", "-", "--in-place"], 2, "--in-place needs a file"),
    (["plan", "{guest}", "--json"], 2, "add -o FILE or --in-place"),
    (["plan"], 2, "Missing argument 'IN'"),
    (["plan", "{guest}", "--frobnicate"], 2, "No such option"),
    (["plan", "{guest}", "--spare-pcie", "x"], 2, "--spare-pcie"),
    (["frob"], 2, "No such command 'frob'"),
    (["check", "{missing}"], 2, "cannot read"),
    (["check", "{bad}"], 2, "not well-formed"),
    (["check", "{planned}", "--firmware", "coreboot"], 2, "--firmware: 'coreboot'"),
    (["show", "{bad}"], 2, "not well-formed"),
    (["show", "{planned}", "--svg", "{tmp}/t.png"], 2, "must end in .svg"),
    (["show", "{planned}", "--png", "{tmp}/t.svg"], 2, "must end in .png"),
    (["compare", "{bad}"], 2, "not well-formed"),
    (["compare", "{tmp}/empty"], 2, "no domain XML files found"),
    (["compare", "{guest}", "--greedy", "qemu"], 2, "--greedy: 'qemu'"),
    (["compare", "{guest}", "--time-limit", "0"], 2, "--time-limit"),
    (["compare", "{guest}", "--firmware", "bios"], 2, "--firmware: 'bios'"),
    (["compare", "{guest}", "--plot", "{tmp}/cmp.svg"], 2, "must end in .png"),
    (["attach", "{planned}"], 2, "attach needs GUEST and DEVICE"),
    (["attach", "{planned}", "{nic}", "--count", "--config"], 2, "give one of them"),
    (["attach", "{planned}", "{nic}", "--domain", "vm"], 2, "--domain needs --connect"),
    (["attach", "--connect", "qemu:///embed?root={tmp}/lv", "{nic}"], 2, "--connect needs --domain"),
    (["attach", "--connect", "qemu:///embed?root={tmp}/lv", "--domain", "vm", "{planned}", "{nic}"], 2,
     "give only DEVICE"),
    (["attach", "--connect", "qemu:///embed?root={tmp}/lv", "--domain", "vm"], 2, "needs the DEVICE file"),
    (["attach", "{missing}", "{nic}"], 2, "cannot read"),
    (["attach", "{guest}", "{nic}"], 2, "has no PCI address"),
    (["attach", "{planned}", "{sound}"], 3, "not hot-pluggable"),
    (["fleet"], 2, "name domain XML files"),
    (["fleet", "{guest}", "--out", "{tmp}/o", "--in-place"], 2, "not both"),
    (["fleet", "{guest}"], 2, "say where the planned files go"),
    (["fleet", "{guest}", "--out", "{tmp}/o", "--to-machine", "pc"], 2, "--to-machine"),
    (["fleet", "{guest}", "--out", "{tmp}/o", "--report", "{tmp}/r.txt"], 2, "--report"),
    (["fleet", "{guest}", "--out", "{tmp}/o", "--firmware", "bios"], 2, "--firmware: 'bios'"),
    # checked as plan checks them, before any file (each file failed on its own, exit 1)
    (["fleet", "{guest}", "--out", "{tmp}/o", "--time-limit", "0"], 2, "--time-limit: 0 must be greater"),
    (["fleet", "{guest}", "--out", "{tmp}/o", "--spare-pcie", "-1"], 2, "--spare-pcie: -1 must be 0 or more"),
    (["check", "{planned}", "--libvirt", "--libvirt-version", "8.2"], 2, "older than the catalogue"),
]


def _test_id(args: list[str]) -> str:
    return " ".join(a for a in args if not a.startswith("{"))


@pytest.mark.parametrize(("args", "status", "words"), REFUSALS, ids=[_test_id(a) for a, _, _ in REFUSALS])
def test_refusal_is_one_line_and_its_status(files, args, status, words) -> None:
    names = {**{k: str(v) for k, v in files.items()}, "guest": str(GUEST), "planned": str(PLANNED),
             "missing": str(files["tmp"] / "missing.xml")}
    (files["tmp"] / "empty").mkdir(exist_ok=True)
    r = run(*[a.format(**names) for a in args])
    assert r.returncode == status, r.stderr
    err = one_line(r)
    assert err.startswith("pciplan: ") and words in err, err
    assert not files["out"].exists()


def test_plan_json_error_objects_for_2_3_and_4(tmp_path: Path) -> None:
    """plan --json puts {"error": {"code", "reasons"}} on stdout whenever it does not exit 0, so a caller
    never has to parse stderr: bad input (2), infeasible (3, the core's reasons), and planned-but-broken
    (4: the whole summary, with the error)."""
    out = tmp_path / "out.xml"
    r = run("plan", str(tmp_path / "missing.xml"), "--json", "-o", str(out))
    assert r.returncode == 2 and json.loads(r.stdout)["error"]["code"] == 2
    assert "cannot read" in json.loads(r.stdout)["error"]["reasons"][0]

    r = run("plan", str(infeasible_guest(tmp_path)), "--json", "-o", str(out))
    assert r.returncode == 3
    error = json.loads(r.stdout)["error"]
    assert error["code"] == 3 and any("interface[1]" in reason for reason in error["reasons"])
    # each reason typed, in the same order: the limit it is about and what it says of it
    assert len(error["limits"]) == len(error["reasons"])
    assert {"limit": "placement", "role": "conflict"} in error["limits"]
    assert not out.exists()

    # a hostdev pinned behind bus 0x99 on pc: libvirt's index fills are more bridges than SeaBIOS has
    # I/O windows for; the plan is written, and the error says so
    pinned = (tmp_path / "pinned.xml")
    pinned.write_text("<domain type='qemu'><name>x</name><memory>1</memory><os><type arch='x86_64' "
                      "machine='pc'>hvm</type></os><devices><hostdev mode='subsystem' type='pci' "
                      "managed='yes'><source><address domain='0x0000' bus='0x06' slot='0x12' function='0x5'/>"
                      "</source><address type='pci' domain='0x0000' bus='0x99' slot='0x01' function='0x0'/>"
                      "</hostdev></devices></domain>")
    r = run("plan", str(pinned), "--json", "-o", str(out))
    assert r.returncode == 4, r.stderr
    data = json.loads(r.stdout)
    assert data["error"]["code"] == 4 and any("[io-windows]" in e for e in data["error"]["reasons"])
    assert data["check_errors"] and out.exists()
    assert any(f["severity"] == "error" and f["rule"] == "io-windows" for f in data["findings"])


def test_plan_json_without_output_was_silently_dropping_the_xml() -> None:
    r = run("plan", str(GUEST), "--json")
    assert r.returncode == 2
    assert json.loads(r.stdout)["error"]["reasons"] == [
        "--json prints the summary on standard output: add -o FILE or --in-place for the planned XML"]


def test_infeasible_plan_exits_3(tmp_path: Path) -> None:
    r = run("plan", str(infeasible_guest(tmp_path)))
    assert r.returncode == ExitCode.INFEASIBLE and r.stdout == b""
    assert r.stderr.decode().startswith("pciplan: infeasible: the request cannot be met:\n")


def test_check_violations_exit_1_and_warnings_0(tmp_path: Path) -> None:
    r = run("check", str(GUEST))  # unplanned: every device lacks its address
    assert r.returncode == ExitCode.FAILED and b"[unaddressed]" in r.stdout
    r = run("check", str(PLANNED))
    assert r.returncode == ExitCode.OK


def test_compare_folder_with_failures_names_each_and_exits_1(tmp_path: Path) -> None:
    folder = tmp_path / "guests"
    folder.mkdir()
    (folder / "a-good.xml").write_bytes(GUEST.read_bytes())
    (folder / "b-bad.xml").write_bytes(b"<domain><devices>")
    (folder / "c-s390.xml").write_text("<domain type='qemu'><name>x</name><memory>1</memory><os><type "
                                       "arch='s390x' machine='s390-ccw-virtio'>hvm</type></os><devices/>"
                                       "</domain>")
    r = run("compare", str(folder))
    assert r.returncode == ExitCode.FAILED, r.stderr
    err = r.stderr.decode().splitlines()
    assert "Traceback" not in r.stderr.decode()
    assert len(err) == 2 and err[0].startswith(f"pciplan: error: {folder / 'b-bad.xml'}: ")
    assert err[1].startswith(f"pciplan: error: {folder / 'c-s390.xml'}: ") and "s390" in err[1]
    assert b"2 of 3 files failed" in r.stdout
    r = run("compare", str(folder), "--json")
    assert r.returncode == ExitCode.FAILED
    data = json.loads(r.stdout)
    assert data["totals"]["files"] == 3 and data["totals"]["compared"] == 1 and data["totals"]["failed"] == 2
    assert data["totals"]["controllers_saved"] == data["guests"][0]["controllers_saved"]
    assert [e["file"] for e in data["errors"]] == [str(folder / "b-bad.xml"), str(folder / "c-s390.xml")]


BLOCK_MATPLOTLIB = """
class _NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'matplotlib':
            raise ModuleNotFoundError("No module named 'matplotlib'")
sys.meta_path.insert(0, _NoMatplotlib())
"""


def test_compare_plot_without_matplotlib_is_refused_up_front(tmp_path: Path) -> None:
    """Before: the whole table, then a traceback and exit 1. Now: one line before any work, exit 2."""
    folder = tmp_path / "guests"
    folder.mkdir()
    (folder / "a.xml").write_bytes(GUEST.read_bytes())
    plot = tmp_path / "cmp.png"
    r = run("compare", str(folder), "--plot", str(plot), prelude=BLOCK_MATPLOTLIB)
    assert r.returncode == ExitCode.BAD_INPUT
    assert "--plot needs matplotlib" in one_line(r)
    assert r.stdout == b"" and not plot.exists()


def test_show_picture_flag_and_suffix_must_agree(tmp_path: Path) -> None:
    """Before: --svg t.png wrote a PNG (the suffix won over the flag)."""
    picture = tmp_path / "t.png"
    r = run("show", str(PLANNED), "--svg", str(picture))
    assert r.returncode == 2 and r.stdout == b"" and not picture.exists()


@pytest.mark.parametrize(("command", "patch"), [
    (["plan", "{guest}", "-o", "{out}"], "planner.pipeline.plan.plan_tree"),
    (["check", "{planned}"], "planner.checker.check.check_domain"),
    (["show", "{planned}"], "planner.pipeline.show.build_tree"),
    (["compare", "{guest}"], "planner.commands.compare.table_rows"),
    (["attach", "{planned}", "{nic}"], "planner.commands.attach.live_places"),
    (["fleet", "{guest}", "--dry-run", "--jobs", "1"], "planner.commands.fleet.collect"),
], ids=["plan", "check", "show", "compare", "attach", "fleet"])
def test_a_defect_is_one_line_and_exit_5(files, command, patch) -> None:
    """An exception pciplan did not expect (here: injected into a function the command calls) is a
    defect: one line that says so, exit 5, no traceback unless PCIPLAN_DEBUG=1 asks for it."""
    module, _, name = patch.rpartition(".")
    prelude = (f"import {module}\ndef _boom(*a, **k):\n    raise RuntimeError('injected defect')\n"
               f"{module}.{name} = _boom\n")
    names = {**{k: str(v) for k, v in files.items()}, "guest": str(GUEST), "planned": str(PLANNED)}
    args = [a.format(**names) for a in command]
    r = run(*args, prelude=prelude)
    assert r.returncode == ExitCode.INTERNAL, r.stderr
    assert one_line(r) == ("pciplan: internal error: RuntimeError: injected defect; please report it "
                           "(run with PCIPLAN_DEBUG=1 for the traceback)\n")
    assert not files["out"].exists()
    debug = run(*args, prelude=prelude, env={"PCIPLAN_DEBUG": "1"})
    assert debug.returncode == ExitCode.INTERNAL and b"Traceback" in debug.stderr
    assert b"injected defect" in debug.stderr


def test_ctrl_c_exits_130_with_one_line(tmp_path: Path) -> None:
    """Ctrl-C (a real SIGINT, in the middle of planning): one line, 130, nothing written."""
    prelude = ("import os, signal, time, planner.pipeline.plan\ndef _interrupted(*a, **k):\n"
               "    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(10)\n"
               "planner.pipeline.plan.plan_tree = _interrupted\n")
    out = tmp_path / "out.xml"
    r = run("plan", str(GUEST), "-o", str(out), prelude=prelude)
    assert r.returncode == ExitCode.INTERRUPTED
    assert one_line(r) == "pciplan: interrupted\n"
    assert not out.exists()


def test_many_nics_still_plan(tmp_path: Path) -> None:
    """The guard does not get in the way of a real plan: exit 0, nothing on stdout with -o."""
    f = tmp_path / "big.xml"
    f.write_text("<domain type='qemu'><name>x</name><memory>1</memory><os><type arch='x86_64' machine='q35'>"
                 f"hvm</type></os><devices>{nics(20)}</devices></domain>")
    r = run("plan", str(f), "-o", str(tmp_path / "o.xml"))
    assert r.returncode == 0 and r.stdout == b"" and b"optimal" in r.stderr


def test_internal_error_of_the_planner_is_exit_5_and_json(tmp_path: Path) -> None:
    """planner.facts.errors.InternalError (say CP-SAT called the model invalid) is pciplan's defect: one line
    that says so, exit 5, and with --json an error object with code 5."""
    prelude = ("import planner.pipeline.plan\nfrom planner.facts.errors import InternalError\n"
               "def _invalid(*a, **k):\n"
               "    raise InternalError('CP-SAT says MODEL_INVALID')\n"
               "planner.pipeline.plan.plan_tree = _invalid\n")
    out = tmp_path / "out.xml"
    r = run("plan", str(GUEST), "-o", str(out), prelude=prelude)
    assert r.returncode == ExitCode.INTERNAL and not out.exists()
    assert one_line(r).startswith("pciplan: internal error: CP-SAT says MODEL_INVALID; please report it")
    r = run("plan", str(GUEST), "-o", str(out), "--json", prelude=prelude)
    assert r.returncode == ExitCode.INTERNAL
    assert json.loads(r.stdout) == {"error": {"code": 5, "reasons": ["CP-SAT says MODEL_INVALID"]}}


def test_check_boot_without_the_firmware_files_is_refused_naming_them(tmp_path: Path) -> None:
    """check --boot for an OVMF guest on a machine without OVMF's files: not a pass on QEMU alone (it
    was exit 0), but exit 2 and one line naming the missing file."""
    from realstack import stack_unavailable

    gone = tmp_path / "no-ovmf"
    prelude = ("from planner.stack.firmware import UEFI_FILES\n"
               f"UEFI_FILES['ovmf'] = ('{gone}/OVMF_CODE_4M.fd', '{gone}/OVMF_VARS_4M.fd')")
    r = run("check", str(PLANNED), "--boot", "--firmware", "ovmf", prelude=prelude)
    err = one_line(r)
    if "real stack not available" in err and "firmware" not in err:
        stack_unavailable(err.strip())
    assert r.returncode == ExitCode.BAD_INPUT, err
    assert err.startswith("pciplan: error: real stack not available: firmware OVMF: ") and \
        f"{gone}/OVMF_CODE_4M.fd" in err, err


def test_a_bad_libvirt_version_in_the_environment_is_bad_input(tmp_path: Path) -> None:
    """$PCIPLAN_LIBVIRT_VERSION that is no version: exit 2 naming the variable (it was an ImportError
    reported as an internal error, exit 5)."""
    out = tmp_path / "out.xml"
    r = run("plan", str(GUEST), "-o", str(out), env={"PCIPLAN_LIBVIRT_VERSION": "bogus"})
    assert r.returncode == ExitCode.BAD_INPUT, r.stderr
    err = one_line(r)
    assert err.startswith("pciplan: ") and "$PCIPLAN_LIBVIRT_VERSION" in err, err
    assert not out.exists()


def test_a_ctrl_c_after_the_command_is_done_does_not_kill_its_exit(tmp_path: Path) -> None:
    """A Ctrl-C that arrives while the interpreter shuts down (CPython puts SIGINT back to its default
    action then) killed a finished command (fleet: summary printed, then status -2 instead of 0). Here
    the shutdown is simulated by an exit handler that does what the interpreter does and is then hit."""
    prelude = ("import atexit, os, signal\ndef _late():\n    signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
               "    os.kill(os.getpid(), signal.SIGINT)\natexit.register(_late)\n")
    out = tmp_path / "out.xml"
    r = run("plan", str(GUEST), "-o", str(out), prelude=prelude)
    assert r.returncode == ExitCode.OK, (r.returncode, r.stderr)
    assert out.exists()
