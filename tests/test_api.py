"""planner.commands.api: the library the commands run. Its bytes are the command's bytes; its refusals carry
the command's reasons and exit status; the README's example runs as written."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GUESTS, REPO, nics, subprocess_env

from planner.commands import api
from planner.facts.errors import ExitCode
from planner.facts.options import PlanOptions
from planner.xml.xmlio import parse_domain_bytes, serialize

GUEST = REPO / "examples" / "q35-server.xml"
NIC = b"<interface type='network'><source network='default'/><model type='virtio'/></interface>"


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.commands.cli", *args], input=stdin,
                          capture_output=True, cwd=REPO, env=subprocess_env(), timeout=300)


def readme_block(heading: str, language: str) -> str:
    """The first ```language block of the README section that starts with heading."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no ```{language} block under {heading}"
    return match.group(1)


def test_readme_example_runs_verbatim_and_equals_the_command(tmp_path: Path, monkeypatch) -> None:
    """The README's Python example, run as written (in a folder with the examples), writes the bytes
    `pciplan plan --spare-pcie 2` writes, and prints what the README says it prints."""
    code = readme_block("## Python API", "python")
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102
    command = cli("plan", str(GUEST), "--spare-pcie", "2")
    assert command.returncode == 0, command.stderr
    assert (tmp_path / "planned.xml").read_bytes() == command.stdout
    # the README's "This prints:" block, after the example (the time-free lines match exactly)
    promised = (REPO / "README.md").read_text().split(code, 1)[1]
    promised = re.search(r"This prints:\n\n```\n(.*?)```", promised, re.S).group(1)
    assert printed.getvalue() == promised


SAMPLE = [*sorted(GUESTS.glob("q35-*.xml"))[:4], *sorted(GUESTS.glob("pc-*.xml"))[:2],
          *sorted(GUESTS.glob("aarch64-*.xml"))[:1]]


@pytest.mark.parametrize("path", SAMPLE, ids=lambda p: p.name)
def test_api_bytes_are_the_command_bytes(path: Path) -> None:
    data = path.read_bytes()
    result = api.plan(data)
    command = cli("plan", "-", stdin=data)
    assert command.returncode == result.exit_code
    assert result.xml == command.stdout


def test_json_summary_is_the_api_result(tmp_path: Path) -> None:
    out = tmp_path / "o.xml"
    command = cli("plan", str(GUEST), "--json", "-o", str(out), "--spare-pcie", "2")
    data = json.loads(command.stdout)
    result = api.plan(GUEST, api.options(spare_pcie=2))
    assert out.read_bytes() == result.xml
    mine = result.as_json()
    for key in ("status", "bound", "gap", "controllers_added", "objective_levels", "headroom", "moves",
                "findings", "addresses_moved"):
        assert data[key] == mine[key], key


def test_every_input_form_gives_the_same_bytes_and_the_tree_is_left_alone() -> None:
    data = GUEST.read_bytes()
    tree = parse_domain_bytes(data)
    before = serialize(copy.deepcopy(tree))
    forms = [api.plan(data), api.plan(data.decode()), api.plan(GUEST), api.plan(tree)]
    assert len({r.xml for r in forms}) == 1
    assert serialize(tree) == before == data


def test_refusals_carry_the_reasons_and_exit_code(tmp_path: Path) -> None:
    with pytest.raises(api.BadInputError) as bad:
        api.plan(b"<domain><devices>")
    assert bad.value.exit_code == ExitCode.BAD_INPUT and "not well-formed" in bad.value.reasons[0]
    with pytest.raises(api.BadInputError) as option:
        api.options(reserve=["interface:foo=1"])
    assert "unknown interface model 'foo'" in option.value.reasons[0]
    with pytest.raises(api.BadInputError, match="time_limit"):
        api.plan(GUEST, PlanOptions(time_limit=0))  # options built by hand are checked too

    pinned = "<interface type='user'><model type='virtio'/><address type='pci' bus='0x01'/></interface>" * 9
    guest = ("<domain type='qemu'><name>x</name><memory>1</memory><os><type arch='x86_64' machine='q35'>hvm"
             "</type></os><devices><controller type='pci' index='0' model='pcie-root'/><controller "
             f"type='pci' index='1' model='pcie-root-port'/>{pinned}</devices></domain>")
    with pytest.raises(api.InfeasibleError) as infeasible:
        api.plan(guest)
    assert infeasible.value.exit_code == ExitCode.INFEASIBLE
    f = tmp_path / "inf.xml"
    f.write_text(guest)
    command = cli("plan", str(f), "--json", "-o", str(tmp_path / "o.xml"))
    assert command.returncode == 3
    assert json.loads(command.stdout)["error"]["reasons"] == infeasible.value.reasons

    planned = api.plan(GUEST).xml
    with pytest.raises(api.NotHotpluggableError) as cold:
        api.attach_places(planned, b"<sound model='ich9'/>")
    assert cold.value.exit_code == ExitCode.INFEASIBLE


def test_moves_say_from_and_to(guest_xml) -> None:
    """Converting a planned pc guest to q35 moves its devices: every move names the device as the
    messages do, with the address it had and the one it has now."""
    first = api.plan(guest_xml("pc", devices=nics(3)))
    converted = api.plan(first.xml, api.options(to_machine="q35"))
    assert converted.moves
    before = parse_domain_bytes(first.xml).getroot().findall("devices/interface")
    after = parse_domain_bytes(converted.xml).getroot().findall("devices/interface")

    def where(el) -> str:
        a = el.find("address")
        return f"{int(a.get('bus'), 0):02x}:{int(a.get('slot'), 0):02x}.{int(a.get('function'), 0):x}"

    for i, (old, new) in enumerate(zip(before, after, strict=True), start=1):
        move = next(m for m in converted.moves if m.device.startswith(f"interface[{i}] "))
        assert (move.before, move.after) == (where(old), where(new))
        assert str(move) == f"{move.device}: {move.before} → {move.after}"


def test_check_findings_have_a_severity() -> None:
    """A missing multifunction='on' is a warning (libvirt adds it): exit status 0; an unaddressed
    device is an error: exit status 1."""
    planned = (REPO / "tests" / "golden" / "q35-server.xml").read_bytes()
    assert api.check(planned).findings == []
    loose = planned.replace(b" multifunction='on'", b"", 1)
    result = api.check(loose)
    assert [f.severity for f in result.findings] == ["warning"]
    assert result.findings[0].rule == "multifunction-flag" and result.exit_code == ExitCode.OK
    unplanned = api.check(GUEST)
    assert unplanned.errors and any(f.rule == "unaddressed" for f in unplanned.errors)
    assert unplanned.exit_code == ExitCode.FAILED


def test_attach_places_in_libvirts_order_and_count() -> None:
    planned = api.plan(GUEST, api.options(spare_pcie=3)).xml
    places = api.attach_places(planned, NIC)
    assert len(places) == 3 and [p.address.bus for p in places] == sorted(p.address.bus for p in places)
    assert api.attach_places(planned, NIC, count=2) == places[:2]
    with pytest.raises(api.BadInputError):
        api.attach_places(planned, NIC, count=0)


def test_attach_next_boot_is_the_command_config(tmp_path: Path) -> None:
    planned = api.plan(GUEST, api.options(spare_pcie=0)).xml
    result, where = api.attach_next_boot(planned, NIC)
    guest, nic, out = tmp_path / "g.xml", tmp_path / "nic.xml", tmp_path / "next.xml"
    guest.write_bytes(planned)
    nic.write_bytes(NIC)
    command = cli("attach", str(guest), str(nic), "--config", "-o", str(out))
    assert command.returncode == 0, command.stderr
    assert out.read_bytes() == result.xml
    assert f"the device at {where}" in command.stderr.decode() and where != "no PCI address"


def test_text_input_keeps_its_declared_encoding(tmp_path: Path) -> None:
    """XML text (a str) that declares ISO-8859-1 plans to the bytes the command writes for that file."""
    text = GUEST.read_text().replace("<name>", "<description>café</description><name>", 1)
    text = "<?xml version='1.0' encoding='ISO-8859-1'?>\n" + text
    f = tmp_path / "latin1.xml"
    f.write_bytes(text.encode("latin-1"))
    command = cli("plan", str(f))
    assert command.returncode == 0, command.stderr
    assert api.plan(text).xml == command.stdout and "café".encode("latin-1") in command.stdout


def test_stack_results_are_fields() -> None:
    """check --libvirt --boot's results as fields: what libvirt changed, whether QEMU started and placed
    everything, whether the firmware set up PCI (here from a report built by hand: no QEMU needed)."""
    from planner.stack.driver import StackReport
    from planner.stack.model import BootResult, Change, DefineResult, FirmwareResult

    nic = "interface[1] (mac 52:54:00:00:00:01)"
    mismatch = "net1: XML 02:00.0, QEMU 03:00.0"
    report = StackReport(DefineResult(True, None, "<domain/>"),
                         [Change("moved-address", nic, "01:00.0 -> 02:00.0")],
                         boot=BootResult(True, None, {"net0": (1, 0, 0)}, [mismatch]),
                         firmware=FirmwareResult(True, False, ["out of I/O address space"], "", "seabios",
                                                 "SeaBIOS"))
    report.defined_by = "libvirt 9.0 (installed, embedded driver)"
    result = api._stack_result(report, None).as_json()
    assert result["ok"] is False and result["defined"] is True and result["define_error"] is None
    assert result["changes"] == [{"kind": "moved-address", "element": nic, "detail": "01:00.0 -> 02:00.0"}]
    assert result["boot"] == {"started": True, "error": None, "mismatches": [mismatch], "devices_placed": 1,
                              "notes": [], "hotplug_probes": []}
    assert result["firmware"] == {"name": "seabios", "label": "SeaBIOS", "ran": True,
                                  "pci_setup_done": False, "errors": ["out of I/O address space"]}
    assert result["summary"] == ["libvirt: checked against libvirt 9.0 (installed, embedded driver)",
                                 *report.summary_lines()]
    assert result["libvirt_version"] and result["rules_for"]


def test_an_errors_text_is_its_reasons() -> None:
    """str() of every API error is its reasons joined, once (Infeasible's own __init__ joined them again,
    character by character)."""
    for cls in (api.BadInputError, api.InfeasibleError, api.NotHotpluggableError):
        err = cls(["first reason", "second"])
        assert str(err) == "first reason; second" and err.reasons == ["first reason", "second"]
