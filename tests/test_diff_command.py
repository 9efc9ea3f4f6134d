"""`pciplan diff ORIGINAL PLANNED` as an operator runs it: exit 0 when only pciplan's kinds of change,
1 with every other change on a line of its own (with its lines in both files), 2 on bad input; --json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from planner.facts.errors import ExitCode

EXAMPLE = REPO / "examples" / "q35-server.xml"
GOLDEN = REPO / "tests" / "golden" / "q35-server.xml"


def run(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.commands.cli", "diff", *map(str, args)],
                          input=stdin, capture_output=True, cwd=REPO, timeout=120)


def test_planned_file_passes() -> None:
    r = run(EXAMPLE, GOLDEN)
    assert r.returncode == ExitCode.OK, r.stderr
    assert r.stdout == b""
    assert r.stderr.decode().startswith("pciplan: only pciplan's own kinds of change; pciplan's own: ")


def test_every_change_is_listed_with_its_lines(tmp_path: Path) -> None:
    out = GOLDEN.read_text().splitlines(keepends=True)
    name = next(i for i, line in enumerate(out) if "<name>" in line)
    model = next(i for i, line in enumerate(out) if "<model type='e1000'/>" in line)
    out[name] = out[name].replace("<name>", "<name>x-")
    out[model] = out[model].replace("e1000", "rtl8139")
    (tmp_path / "p.xml").write_text("".join(out))
    r = run(EXAMPLE, tmp_path / "p.xml")
    assert r.returncode == ExitCode.FAILED
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 2
    original = EXAMPLE.read_text().splitlines()
    o_model = next(i for i, line in enumerate(original) if "<model type='e1000'/>" in line)
    assert lines[0].startswith(f"ORIGINAL:{name + 1} PLANNED:{name + 1}: text changed")
    assert lines[1].startswith(f"ORIGINAL:{o_model + 1} PLANNED:{model + 1}: <model>: attribute type changed "
                               "from 'e1000' to 'rtl8139'")
    assert "2 change(s) pciplan does not make" in r.stderr.decode()


def test_json(tmp_path: Path) -> None:
    (tmp_path / "p.xml").write_text(GOLDEN.read_text().replace("<boot order='1'/>", "<boot order='2'/>"))
    r = run("--json", EXAMPLE, tmp_path / "p.xml")
    assert r.returncode == ExitCode.FAILED
    report = json.loads(r.stdout)
    assert report["ok"] is False
    [change] = report["changes"]
    assert change["change"].startswith("<boot>: attribute order changed from '1' to '2'")
    assert isinstance(change["original_line"], int) and isinstance(change["planned_line"], int)
    assert report["allowed"]["PCI address added"] > 0
    ok = json.loads(run("--json", EXAMPLE, GOLDEN).stdout)
    assert ok["ok"] is True and ok["changes"] == []


def test_planned_on_standard_input() -> None:
    assert run(EXAMPLE, "-", stdin=GOLDEN.read_bytes()).returncode == ExitCode.OK


def test_bad_input(tmp_path: Path) -> None:
    cases = {
        "missing": (tmp_path / "nope.xml", "cannot read"),
        "not xml": (tmp_path / "bad.xml", "not well-formed XML"),
        "entities": (tmp_path / "ent.xml", "entity declarations are not accepted"),
    }
    (tmp_path / "bad.xml").write_text("<domain>")
    (tmp_path / "ent.xml").write_text('<!DOCTYPE domain [<!ENTITY x "y">]><domain>&x;</domain>')
    for what, (path, reason) in cases.items():
        r = run(path, GOLDEN)
        assert r.returncode == ExitCode.BAD_INPUT, what
        err = r.stderr.decode()
        assert re.fullmatch(r"pciplan: error: [^\n]+\n", err) and reason in err, (what, err)
        assert "Traceback" not in err
    both = run("-", "-", stdin=b"")
    assert both.returncode == ExitCode.BAD_INPUT and b"both be standard input" in both.stderr
    assert run(GOLDEN).returncode == ExitCode.BAD_INPUT  # usage: PLANNED missing


def test_a_broken_planned_file_is_a_change_not_bad_input(tmp_path: Path) -> None:
    (tmp_path / "p.xml").write_text(GOLDEN.read_text().replace("</disk>", "", 1))
    r = run(EXAMPLE, tmp_path / "p.xml")
    assert r.returncode == ExitCode.FAILED
    assert re.fullmatch(r"PLANNED:\d+: not well-formed XML any more: .*\n", r.stdout.decode())


def test_the_audit_shares_nothing_with_the_planner() -> None:
    """A checker: importing it loads no stage of the planning pipeline (only the XML reading helpers)."""
    probe = ("import json, sys, planner.commands.audit; "
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('planner.'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                            check=True)
    modules = set(json.loads(loaded.stdout))
    assert modules <= {"planner.commands", "planner.commands.audit", "planner.xml", "planner.xml.xmlio",
                       "planner.xml.xmltext"}, modules
