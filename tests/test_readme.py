"""Every README line that runs pciplan is run here, and what the README says it does is checked.

The README's command lines are found by parsing README.md: each line of a ```sh block that calls pciplan,
each `$ ` line of another code block, and each inline code span that starts with `pciplan `. Every one
must be in COMMANDS (a runner that executes it and checks it) or in NOT_COMMANDS (a synopsis or a
mention, with the reason); a README line in neither fails test_every_readme_command_is_covered, so a new
example gets a runner when it is written. A table entry the README no longer has fails too.

Each command runs as written, through bash in a temporary folder, with the installed `pciplan` console
script first on PATH. Placeholders become real things:
- guest.xml: examples/q35-server.xml (for attach, which needs an addressed guest: its planned form);
  planned.xml: tests/golden/q35-server.xml (the planned q35-server); nic.xml and virtio-nic.xml: the
  virtio NIC of the worked example (its output shows the file as written); e1000-nic.xml: the same, e1000;
- /etc/libvirt/qemu, guests/, old-pc-guests/: folders of bundled examples and test guests;
  fleet-policy.toml: examples/fleet-policy.toml; examples/, tests/guests: the repository's own;
- qemu:///system, and virsh's default connection: libvirt's embedded driver in a fresh root
  (qemu:///embed?root=DIR) with a domain `vm` defined;
- tcp://scheduler:8786: a local Dask scheduler on 127.0.0.1 (distributed, in the test extra);
- `bash .ci/setup && .venv/bin/pciplan ...`: the pciplan part (.ci/run runs the set-up itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import GUESTS, REPO, subprocess_env
from lxml import etree
from planning import errors
from realstack import stack_unavailable

README = REPO / "README.md"
GOLDEN = REPO / "tests" / "golden" / "q35-server.xml"
EXAMPLE = REPO / "examples" / "q35-server.xml"
PNG = b"\x89PNG\r\n\x1a\n"

# A domain that can start (no disk images) for `attach --connect`, and is planned by `fleet --connect`.
VM_XML = """<domain type='qemu'>
  <name>vm</name>
  <memory unit='KiB'>262144</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='user'><mac address='52:54:00:00:00:01'/><model type='virtio'/></interface>
  </devices>
</domain>
"""


# ---------------------------------------------------------------------------------------------------
# README.md, parsed


@dataclass
class ReadmeCommand:
    line: int
    text: str  # the command as written, without prompt or trailing comment
    output: list[str] = field(default_factory=list)  # the output the README shows after a `$ ` line


def _strip_comment(line: str) -> str:
    return re.sub(r"\s+#\s.*$", "", line).strip()


def readme_commands(text: str | None = None) -> list[ReadmeCommand]:
    lines = (README.read_text() if text is None else text).splitlines()
    found: list[ReadmeCommand] = []
    fence: str | None = None  # the language of the open code block ("" for a plain one)
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        if fence is None:
            for span in re.findall(r"`(pciplan [^`]+)`", line):
                found.append(ReadmeCommand(number, span.strip()))
        elif fence == "sh":
            if re.search(r"(^|[\s|;&(/])pciplan\s", line):
                found.append(ReadmeCommand(number, _strip_comment(line)))
        elif line.startswith("$ "):
            if re.search(r"(^|[\s|;&(/])pciplan\s", line):
                found.append(ReadmeCommand(number, _strip_comment(line[2:])))
        elif found and found[-1].line < number and fence == "" and _in_output(lines, found[-1].line, number):
            found[-1].output.append(line)
    return found


def _in_output(lines: list[str], command_line: int, number: int) -> bool:
    # An output line belongs to the `$ ` command above it when no other `$ ` line or fence is between.
    between = lines[command_line:number - 1]
    return lines[command_line - 1].startswith("$ ") and not any(
        b.startswith("$ ") or b.startswith("```") for b in between)


def readme_line(needle: str) -> str:
    """The README line that contains needle (for the claims around an inline example)."""
    hits = [line for line in README.read_text().splitlines() if needle in line]
    assert len(hits) == 1, f"README: {len(hits)} lines contain {needle!r}"
    return hits[0]


# ---------------------------------------------------------------------------------------------------
# The workspace a command runs in


@dataclass
class Workspace:
    dir: Path
    embed_root: Path | None = None
    scheduler: str = "tcp://scheduler:8786"
    started_pids: list[int] = field(default_factory=list)

    @property
    def uri(self) -> str:
        assert self.embed_root is not None, "this command needs needs_libvirt=True"
        return f"qemu:///embed?root={self.embed_root}"

    def localize(self, command: str) -> str:
        # The set-up part is .ci/run's; the console script it would run is first on PATH here.
        command = command.replace("bash .ci/setup && .venv/bin/pciplan ", "pciplan ")
        # README's own /tmp/ first: the checkout itself may live under /tmp (a fresh clone does)
        command = re.sub(r"(?<![\w/.-])/tmp/", f"{self.dir}/", command)
        command = re.sub(r"(?<![\w/.-])examples/", f"{REPO}/examples/", command)
        command = re.sub(r"(?<![\w/.-])tests/guests", str(GUESTS), command)
        command = command.replace("/etc/libvirt/qemu", "etc-libvirt-qemu")
        command = command.replace("tcp://scheduler:8786", self.scheduler)
        if self.embed_root is not None:
            command = command.replace("qemu:///system", shlex.quote(self.uri))
            command = re.sub(r"(^|[|;&]\s*)virsh ", rf"\1virsh -c {shlex.quote(self.uri)} ", command)
        return command

    def env(self) -> dict[str, str]:
        bin_dir = Path(sys.executable).parent
        assert (bin_dir / "pciplan").is_file(), f"no pciplan console script beside {sys.executable}"
        return subprocess_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                              LIBVIRT_LOG_OUTPUTS=f"3:file:{self.dir / 'libvirt.log'}")

    def run(self, command: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-o", "pipefail", "-c", self.localize(command)], cwd=self.dir,
                              env=self.env(), capture_output=True, text=True, timeout=timeout)

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["virsh", "-c", self.uri, *args], env=self.env(), capture_output=True,
                              text=True, timeout=120)


def _worked_example_nic() -> str:
    """The device file of the worked example: the README shows it as written, with one <address> line
    added; nic.xml and virtio-nic.xml are that file."""
    command = next(c for c in readme_commands() if c.text == "pciplan attach planned.xml virtio-nic.xml")
    kept = [line for line in command.output if not line.startswith("pciplan:") and "<address" not in line]
    assert kept and kept[0].startswith("<interface"), command.output
    return "\n".join(kept) + "\n"


def _fill(ws: Path, addressed_guest: bool) -> None:
    shutil.copy(GOLDEN if addressed_guest else EXAMPLE, ws / "guest.xml")
    shutil.copy(GOLDEN, ws / "planned.xml")
    nic = _worked_example_nic()
    for name in ("nic.xml", "virtio-nic.xml"):
        (ws / name).write_text(nic)
    (ws / "e1000-nic.xml").write_text(nic.replace("type='virtio'", "type='e1000'"))
    shutil.copy(REPO / "examples" / "fleet-policy.toml", ws / "fleet-policy.toml")
    for folder, sources in {
        "etc-libvirt-qemu": sorted((REPO / "examples").glob("*.xml")),
        "guests": [GUESTS / n for n in ("q35-server-8disk-4nic.xml", "q35-pcie-switch.xml",
                                        "pc-legacy-nic-zoo.xml", "riscv64-headless.xml")],
        "old-pc-guests": [REPO / "examples" / "pc-40-nics.xml",
                          *(GUESTS / n for n in ("pc-ide-cdrom.xml", "pc-usb2-ehci-uhci.xml"))],
    }.items():
        (ws / folder).mkdir()
        for source in sources:
            shutil.copy(source, ws / folder / source.name)


def _needs_stack() -> None:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        stack_unavailable("the libvirt Python binding is missing")
    if shutil.which("virsh") is None:
        stack_unavailable("virsh is missing")
    from realstack import require_emulator

    require_emulator("x86_64")


def _embedded_libvirt(ws: Workspace, start: bool) -> None:
    """A fresh embedded root with `vm` defined (and, if asked, started paused)."""
    from planner.stack.model import QEMU_CONF

    root = Path(tempfile.mkdtemp(prefix="pciplan-readme-"))  # short: QEMU's socket paths live under it
    for conf in (root / "etc" / "qemu.conf", root / "etc" / "qemu" / "qemu.conf"):
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(QEMU_CONF)
    ws.embed_root = root
    (ws.dir / "vm-domain.xml").write_text(VM_XML)
    r = ws.virsh("define", str(ws.dir / "vm-domain.xml"))
    assert r.returncode == 0, r.stderr
    if start:
        r = ws.virsh("start", "vm", "--paused")
        assert r.returncode == 0, r.stderr
        ws.started_pids.append(int((root / "run" / "qemu" / "vm.pid").read_text()))


def _stop(ws: Workspace) -> None:
    if ws.embed_root is None:
        return
    if ws.started_pids:
        ws.virsh("destroy", "vm")
        for pid in ws.started_pids:  # only the QEMU this test started, if it outlived the destroy
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    shutil.rmtree(ws.embed_root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# What each command must do


@dataclass
class Case:
    check: Callable[[Workspace, subprocess.CompletedProcess[str], ReadmeCommand], None]
    libvirt: bool = False  # needs the real stack; an embedded root with `vm` is made when vm is set
    vm: str = ""  # "": no domain; "defined"; "running"
    addressed_guest: bool = False  # guest.xml is the planned q35-server (attach needs addresses)
    scheduler: bool = False
    xfail: str = ""  # a known defect: the case must fail until it is fixed (strict)


class CommandFailed(AssertionError):
    """The README command exited non-zero. A known defect's xfail expects this and nothing else, so a
    failure to set up its case is still a failure."""


def ok(r: subprocess.CompletedProcess[str]) -> None:
    if r.returncode != 0:
        raise CommandFailed(f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


def documented_output(r: subprocess.CompletedProcess[str], command: ReadmeCommand) -> None:
    """The output the README shows: pciplan's own `pciplan:` lines are on stderr, the rest on stdout."""
    assert command.output, f"README line {command.line} shows no output"
    shown_out = [line for line in command.output if not line.startswith("pciplan:")]
    shown_err = [line for line in command.output if line.startswith("pciplan:")]
    assert r.stdout.splitlines() == shown_out
    assert all(line in r.stderr.splitlines() for line in shown_err), (shown_err, r.stderr)


def count_controllers(xml: bytes, model: str) -> int:
    root = etree.fromstring(xml)
    return sum(1 for c in root.iter("controller") if c.get("type") == "pci" and c.get("model") == model)


def check_clean(path: Path) -> None:
    assert errors(etree.parse(str(path))) == [], path


def _golden(ws: Workspace, name: str) -> None:
    assert (ws.dir / name).read_bytes() == GOLDEN.read_bytes()


def _setup_command(ws, r, c) -> None:
    ok(r)
    _golden(ws, "q35-server.planned.xml")  # "its output is tests/golden/q35-server.xml, byte for byte"


def _plan_out(ws, r, c) -> None:
    ok(r)
    _golden(ws, "planned.xml")


def _plan_in_place(ws, r, c) -> None:
    ok(r)
    _golden(ws, "guest.xml")


def _plan_stdin(ws, r, c) -> None:
    ok(r)
    vm = etree.parse(str(ws.dir / "vm.xml")).getroot()
    assert vm.findtext("name") == "vm" and vm.find("devices/interface/address").get("type") == "pci"
    check_clean(ws.dir / "vm.xml")


def _plan_json(ws, r, c) -> None:
    ok(r)
    assert json.loads(r.stdout)["status"] == "optimal"
    _golden(ws, "out.xml")


def _check(ws, r, c) -> None:
    ok(r)
    assert r.stdout.splitlines()[-1] == "ok: no violation found"


def _diff(ws, r, c) -> None:
    """guest.xml is q35-server, planned.xml its plan: only pciplan's own kinds of change."""
    ok(r)
    assert r.stdout == "" and r.stderr.startswith("pciplan: only pciplan's own kinds of change"), r.stderr


def _diff_json(ws, r, c) -> None:
    ok(r)
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["changes"] == [] and report["allowed"]["PCI address added"] > 0


def _check_libvirt(ws, r, c) -> None:
    _check(ws, r, c)
    assert "libvirt: defined unchanged" in r.stdout.splitlines()


def _check_boot(ws, r, c) -> None:
    _check_libvirt(ws, r, c)
    lines = r.stdout.splitlines()
    assert any(line.startswith("QEMU: started, all") for line in lines), r.stdout
    assert "firmware: SeaBIOS allocated every PCI resource" in lines, r.stdout


def _replan(ws, r, c) -> None:
    ok(r)
    assert (ws.dir / "new.xml").read_bytes() == GOLDEN.read_bytes()  # optimal already: nothing moves


def _show_png(ws, r, c) -> None:
    ok(r)
    assert r.stdout.startswith("bus 00  pcie-root (q35)")
    assert (ws.dir / "tree.png").read_bytes().startswith(PNG)


def _compare_one(ws, r, c) -> None:
    ok(r)
    assert "pciplan (controllers added)" in r.stdout  # which layout the objective prefers, and where


def _compare_folder_libvirt(ws, r, c) -> None:
    ok(r)
    claim = re.search(r"On the (\d+) guests in `tests/guests` pciplan adds (\d+) fewer controllers",
                      README.read_text())
    assert claim is not None
    guests, saved = claim.groups()
    totals = f"{guests} guests: greedy failed on 0, pciplan on 0; controllers saved in total {saved},"
    assert totals in r.stdout
    assert (ws.dir / "cmp.png").read_bytes().startswith(PNG)


def _fleet_report_csv(ws, r, c) -> None:
    ok(r)
    n = len(list((ws.dir / "etc-libvirt-qemu").glob("*.xml")))
    assert f"{n} files: " in r.stdout and ", 0 failed;" in r.stdout
    assert sorted(p.name for p in (ws.dir / "planned").iterdir()) == \
        sorted(p.name for p in (ws.dir / "etc-libvirt-qemu").iterdir())
    header = (ws.dir / "report.csv").read_text().splitlines()[0].split(",")
    assert {"path", "status", "headroom_pcie", "headroom_pci"} <= set(header)


def _fleet_in_place(ws, r, c) -> None:
    ok(r)
    originals = sorted((ws.dir / "guests").glob("*.xml.orig"))
    assert len(originals) == 4 and "4 changed" in r.stdout
    for original in originals:
        planned = original.with_suffix("")
        assert planned.read_bytes() != original.read_bytes()
        check_clean(planned)
    # "A second run over the output reports 0 changed."
    again = ws.run(c.text)
    ok(again)
    assert "0 changed, 4 unchanged, 0 failed" in again.stdout


def _fleet_to_q35(ws, r, c) -> None:
    ok(r)
    converted = sorted((ws.dir / "q35").glob("*.xml"))
    assert len(converted) == 3
    for path in converted:
        assert "q35" in etree.parse(str(path)).getroot().find("os/type").get("machine")
    assert isinstance(json.loads((ws.dir / "moves.json").read_text()), (list, dict))


def _fleet_connect_define(ws, r, c) -> None:
    before = count_controllers(VM_XML.encode(), "pcie-root-port")
    ok(r)
    assert "--- vm (libvirt)" in r.stdout and "changed domains defined" in r.stderr
    defined = ws.virsh("dumpxml", "--inactive", "vm")
    ok(defined)
    assert count_controllers(defined.stdout.encode(), "pcie-root-port") > before


def _fleet_scheduler(ws, r, c) -> None:
    ok(r)
    assert "4 files: 4 changed, 0 unchanged, 0 failed" in r.stdout
    for path in sorted((ws.dir / "planned").iterdir()):
        check_clean(path)


def _attach_out(ws, r, c) -> None:
    ok(r)
    written = (ws.dir / "nic-addressed.xml").read_text()
    assert written.startswith("<interface") and "<address type='pci'" in written


def _attach_count(ws, r, c) -> None:
    ok(r)
    assert r.stdout.splitlines()[-1].isdigit()  # "the number is the last line"


def _attach_config(ws, r, c) -> None:
    ok(r)
    domain = etree.parse(str(ws.dir / "next.xml")).getroot()
    assert domain.tag == "domain" and len(domain.findall("devices/interface")) == \
        len(etree.parse(str(GOLDEN)).getroot().findall("devices/interface")) + 1
    check_clean(ws.dir / "next.xml")


def _attach_connect(ws, r, c) -> None:
    ok(r)
    assert "<address type='pci'" in r.stdout


def _worked_example(ws, r, c) -> None:
    ok(r)
    documented_output(r, c)


def _reserve(ws, r, c) -> None:
    ok(r)
    claim = re.search(r"adds (\d+) more root ports than the plain plan and ends with \"([^\"]+)\"",
                      readme_line(c.text))
    assert claim is not None
    more, ending = int(claim.group(1)), claim.group(2)
    assert count_controllers(r.stdout.encode(), "pcie-root-port") == \
        count_controllers(GOLDEN.read_bytes(), "pcie-root-port") + more
    assert r.stderr.rstrip().endswith(ending), r.stderr


def _worked_json(ws, r, c) -> None:
    ok(r)
    claim = re.search(r"reports status `(\w+)` and adds (\d+) `pcie-root-port` and (\d+) "
                      r"`pcie-to-pci-bridge`", readme_line(c.text))
    assert claim is not None
    report = json.loads(r.stdout)
    assert report["status"] == claim.group(1)
    assert report["controllers_added"] == {"pcie-root-port": int(claim.group(2)),
                                           "pcie-to-pci-bridge": int(claim.group(3))}


# README command (as written) -> how it is run and checked.
COMMANDS: dict[str, Case] = {
    "bash .ci/setup && .venv/bin/pciplan plan examples/q35-server.xml -o /tmp/q35-server.planned.xml":
        Case(_setup_command),
    # Usage
    "pciplan plan guest.xml -o planned.xml": Case(_plan_out),
    "pciplan plan guest.xml --in-place": Case(_plan_in_place),
    "virsh dumpxml --inactive vm | pciplan plan - > vm.xml": Case(_plan_stdin, libvirt=True, vm="defined"),
    "pciplan plan guest.xml --json -o out.xml": Case(_plan_json),
    "pciplan check planned.xml": Case(_check),
    "pciplan check planned.xml --libvirt": Case(_check_libvirt, libvirt=True),
    "pciplan check planned.xml --libvirt --boot": Case(_check_boot, libvirt=True),
    "pciplan plan --replan planned.xml -o new.xml": Case(_replan),
    "pciplan show planned.xml --png tree.png": Case(_show_png),
    "pciplan compare guest.xml": Case(_compare_one),
    "pciplan compare tests/guests --plot cmp.png --greedy libvirt":
        Case(_compare_folder_libvirt, libvirt=True),
    # Fleets
    "pciplan fleet /etc/libvirt/qemu --out planned/ --replan --report report.csv": Case(_fleet_report_csv),
    "pciplan fleet 'guests/*.xml' --in-place --policy fleet-policy.toml --jobs 8": Case(_fleet_in_place),
    "pciplan fleet old-pc-guests/ --out q35/ --to-machine q35 --report moves.json": Case(_fleet_to_q35),
    "pciplan fleet --connect qemu:///system --replan --spare-pcie 2 --define":
        Case(_fleet_connect_define, libvirt=True, vm="defined"),
    "pciplan fleet guests/ --out planned/ --scheduler tcp://scheduler:8786":
        Case(_fleet_scheduler, scheduler=True),
    # Hot-plug later: attach
    # Reviewing a plan: diff
    "pciplan diff guest.xml planned.xml": Case(_diff),
    "pciplan diff guest.xml planned.xml --json": Case(_diff_json),
    "pciplan attach guest.xml nic.xml -o nic-addressed.xml": Case(_attach_out, addressed_guest=True),
    "pciplan attach guest.xml nic.xml --count": Case(_attach_count, addressed_guest=True),
    "pciplan attach guest.xml nic.xml --config -o next.xml": Case(_attach_config, addressed_guest=True),
    "pciplan attach --connect qemu:///system --domain vm nic.xml":
        Case(_attach_connect, libvirt=True, vm="running"),
    # The worked example of attach: the output the README shows
    "pciplan attach planned.xml virtio-nic.xml": Case(_worked_example),
    "pciplan attach planned.xml e1000-nic.xml --count | tail -1": Case(_worked_example),
    # Inline examples, with the claims beside them
    "pciplan plan examples/q35-server.xml --reserve interface=4 --reserve interface:e1000=2": Case(_reserve),
    "pciplan plan examples/q35-server.xml --json -o out.xml": Case(_worked_json),
}

# README code spans that name pciplan without being a command line to run.
DIFF_EXAMPLE = "the diff example's $ lines: run, with their output, by test_readme_figures.test_diff_example"
NOT_COMMANDS: dict[str, str] = {
    "pciplan show IN [--svg F] [--png F] [--json]": "synopsis",
    "pciplan compare PATH... [--greedy builtin|libvirt] [--json] [--plot F]": "synopsis",
    "pciplan check --libvirt": "a mention: the paragraph describes the option (run above)",
    "pciplan check": "a mention of the command",
    "pciplan show": "a mention of the command",
    "pciplan plan": "a mention of the command",
    "pciplan diff": "a mention of the command",
    "pciplan plan GUEST -o OUT": "a mention: what benchmarks/cli.py times",
    "pciplan plan examples/q35-server.xml -o planned.xml": DIFF_EXAMPLE,
    "pciplan diff examples/q35-server.xml planned.xml": DIFF_EXAMPLE,
}


def test_every_readme_command_is_covered() -> None:
    found = {c.text for c in readme_commands()}
    unknown = sorted(found - COMMANDS.keys() - NOT_COMMANDS.keys())
    assert unknown == [], f"README lines that run pciplan without a runner in tests/test_readme.py: {unknown}"
    stale = sorted((COMMANDS.keys() | NOT_COMMANDS.keys()) - found)
    assert stale == [], f"runners for commands the README no longer has: {stale}"


def test_the_parser_finds_each_kind_of_line() -> None:
    sample = "\n".join([
        "Run `pciplan plan a.xml -o b.xml` here.", "```sh", "pciplan check b.xml   # a comment",
        "virsh dumpxml vm | pciplan plan - > x.xml", "echo unrelated", "```", "```",
        "$ pciplan attach b.xml n.xml", "<interface/>", "pciplan: done", "$ echo no", "later", "```",
    ])
    found = [(c.text, c.output) for c in readme_commands(sample)]
    assert found == [("pciplan plan a.xml -o b.xml", []), ("pciplan check b.xml", []),
                     ("virsh dumpxml vm | pciplan plan - > x.xml", []),
                     ("pciplan attach b.xml n.xml", ["<interface/>", "pciplan: done"])]


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    ws = Workspace(tmp_path)
    yield ws
    _stop(ws)


def _params() -> list:
    params = []
    for text, case in COMMANDS.items():
        marks = [pytest.mark.realstack] if case.libvirt else []
        if case.xfail:
            marks.append(pytest.mark.xfail(strict=True, raises=CommandFailed, reason=case.xfail))
        params.append(pytest.param(text, case, marks=marks, id=text))
    return params


@pytest.mark.parametrize(("text", "case"), _params())
def test_readme_command(text: str, case: Case, workspace: Workspace) -> None:
    command = next(c for c in readme_commands() if c.text == text)
    _fill(workspace.dir, case.addressed_guest)
    if case.libvirt:
        _needs_stack()
        if case.vm:
            _embedded_libvirt(workspace, start=case.vm == "running")
    if case.scheduler:
        from distributed import LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster:
            workspace.scheduler = cluster.scheduler_address
            result = workspace.run(text)
    else:
        result = workspace.run(text)
    case.check(workspace, result, command)


def test_compare_plot_without_matplotlib(workspace: Workspace) -> None:
    """README: `pip install .` alone (no matplotlib) is enough for compare; its --plot then says what is
    missing in one line (exit 2), never a traceback."""
    hidden = workspace.dir / "hide"
    (hidden / "matplotlib").mkdir(parents=True)
    (hidden / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {**workspace.env(), "PYTHONPATH": str(hidden)}
    r = subprocess.run(["bash", "-c", workspace.localize("pciplan compare tests/guests --plot cmp.png")],
                       cwd=workspace.dir, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("pciplan: error: ") and "matplotlib" in r.stderr
