"""The commands against the real stack: attach --connect on libvirt's embedded driver, check --libvirt's
JSON. (Apart from tests/test_cli.py, which also runs at the lowest dependency versions, where there is no
libvirt binding.)"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import nics
from realstack import real_stack_fixture  # noqa: F401
from test_cli import GOLDEN, NIC, run

from planner.xml.xmlio import parse_xml_bytes

# ---------------------------------------------------------------- attach --connect, on the embedded driver


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, timeout=300)


@pytest.mark.realstack
def test_attach_connect_domain_device_on_an_embedded_libvirt(guest_xml, tmp_path: Path) -> None:
    """`attach --connect URI --domain NAME DEVICE`: the one positional is the DEVICE (it was taken as
    GUEST: "--connect needs --domain NAME and the DEVICE file"), and an embedded URI gets its event loop
    (it failed with "An event loop implementation must be registered"). The --config result defines in
    that libvirt with the device where pciplan put it; the live path says the guest is not running."""
    from realstack import require_emulator, stack_unavailable

    from planner.commands import api
    from planner.stack.driver import _prepare_root, default_root

    if shutil.which("virsh") is None:
        stack_unavailable("virsh is not installed")
    require_emulator("x86_64")
    root = tmp_path / "libvirt"
    _prepare_root(root)
    with contextlib.suppress(OSError):  # QEMU's capabilities from the shared root: no 4 s probe each time
        capabilities = Path("cache") / "qemu" / "capabilities"
        shutil.copytree(default_root() / capabilities, root / capabilities)
    uri = f"qemu:///embed?root={root}"
    guest = tmp_path / "vm.xml"
    named = guest_xml("q35", devices=nics(2)).replace(b"<name>t</name>", b"<name>vm</name>")
    guest.write_bytes(api.plan(named, api.options(spare_pcie=0)).xml)
    defined = _virsh(uri, "define", str(guest))
    assert defined.returncode == 0, defined.stderr
    nic = tmp_path / "nic.xml"
    nic.write_bytes(NIC)

    r = run("attach", "--connect", uri, "--domain", "vm", str(nic))
    assert r.returncode == 2 and r.stderr.decode() == (
        "pciplan: error: domain vm is not running: use --config to plan its next boot\n")

    nxt = tmp_path / "next.xml"
    r = run("attach", "--connect", uri, "--domain", "vm", "--config", str(nic), "-o", str(nxt))
    assert r.returncode == 0, r.stderr
    where = r.stderr.decode().split("the device at ")[1].split(";")[0]
    assert re.fullmatch(r"[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", where), r.stderr
    assert _virsh(uri, "define", str(nxt)).returncode == 0
    back = _virsh(uri, "dumpxml", "--inactive", "vm").stdout
    mine = next(el for el in parse_xml_bytes(back).getroot().iterfind("devices/interface")
                if el.find("mac").get("address") == "52:54:00:aa:00:01")
    a = mine.find("address")
    assert f"{int(a.get('bus'), 0):02x}:{int(a.get('slot'), 0):02x}.{int(a.get('function'), 0):x}" == where


@pytest.mark.realstack
def test_attach_connect_live_on_a_running_guest(real_stack, guest_xml, tmp_path: Path) -> None:
    """On a running guest of the embedded driver, `attach --connect URI --domain NAME DEVICE` reads the
    live XML and picks a place that libvirt's live attach (attachDeviceFlags LIVE) accepts."""
    from typer.testing import CliRunner

    from planner.commands import api
    from planner.commands.cli import app

    planned = api.plan(guest_xml("q35", devices=nics(2)), api.options(spare_pcie=1)).xml
    nic = tmp_path / "nic.xml"
    nic.write_bytes(NIC)
    with real_stack.running(planned.decode()) as live:
        name = live._dom.name()
        uri = f"qemu:///embed?root={real_stack.root}"
        result = CliRunner().invoke(app, ["attach", "--connect", uri, "--domain", name, str(nic)])
        assert result.exit_code == 0, result.output
        addressed = result.stdout[:result.stdout.index("</interface>") + len("</interface>")]
        assert "<address type='pci'" in addressed
        assert live.attach(addressed) is None
        placements, mismatches = live.placements()
        assert mismatches == []


@pytest.mark.realstack
def test_check_libvirt_json_is_structured(real_stack, tmp_path: Path) -> None:
    """Before, --libvirt's results were sentences in a list; now fields a program can read."""
    r = run("check", str(GOLDEN), "--libvirt", "--json")
    assert r.returncode == 0, r.stderr
    stack = json.loads(r.stdout)["libvirt"]
    assert stack["ok"] is True and stack["defined"] is True and stack["changes"] == []
    assert stack["boot"] is None and stack["summary"][1:] == ["libvirt: defined unchanged"]
    assert stack["libvirt_version"] == stack["rules_for"] == "9.0"
    assert stack["summary"][0] == "libvirt: checked against libvirt 9.0 (installed, embedded driver)"
    loose = tmp_path / "loose.xml"  # libvirt adds the multifunction flag itself
    loose.write_bytes(GOLDEN.read_bytes().replace(b" multifunction='on'", b"", 1))
    r = run("check", str(loose), "--libvirt", "--json")
    stack = json.loads(r.stdout)["libvirt"]
    assert r.returncode == 1 and stack["ok"] is False and stack["defined"] is True
    assert stack["changes"] and set(stack["changes"][0]) == {"kind", "element", "detail"}

