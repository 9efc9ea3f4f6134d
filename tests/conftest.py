"""Shared paths and helpers for the test suite."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from lxml import etree

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GUESTS = REPO / "tests" / "guests"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/realstack.py


# A plain clone has no ../shared beside it: the tests of the shared cases are skipped (one line in the
# summary says so); CI sets PCIPLAN_REQUIRE_SHARED=1, which turns a missing folder into a failure.
REQUIRE_SHARED = os.environ.get("PCIPLAN_REQUIRE_SHARED") == "1"
SHARED_MISSING = "../shared/cases is not beside the repository"
_missing: set[str] = set()
# For tests about the shared cases as a whole (counts, all of them at once): skipped without them.
needs_shared = pytest.mark.skipif(not (SHARED / "cases").is_dir() and not REQUIRE_SHARED,
                                  reason=SHARED_MISSING)


def _shared_folder(folder: str) -> Path | None:
    path = SHARED / "cases" / folder
    if path.is_dir():
        return path
    if REQUIRE_SHARED:
        raise RuntimeError(f"{path} is missing and PCIPLAN_REQUIRE_SHARED=1: the tests read ../shared "
                           "beside the repository")
    _missing.add(folder)
    return None


def shared_cases(folder: str) -> list[Path]:
    """The XML files in ../shared/cases/FOLDER; none when the folder is missing (see above)."""
    path = _shared_folder(folder)
    return sorted(path.glob("*.xml")) if path is not None else []


def libvirt_manifest() -> dict[str, dict]:
    path = _shared_folder("libvirt")
    if path is None:
        return {}
    data = json.loads((path / "manifest.json").read_text())
    return {c["name"]: c for c in data["cases"]}


def pytest_terminal_summary(terminalreporter) -> None:
    if not _missing:
        return
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if "empty parameter set" in str(r.longrepr) or SHARED_MISSING in str(r.longrepr)]
    terminalreporter.write_line(
        f"pciplan: {SHARED / 'cases'} is missing ({', '.join(sorted(_missing))}): {len(skipped)} tests of "
        "the shared cases skipped, the rest ran on our own guests; PCIPLAN_REQUIRE_SHARED=1 makes this "
        "a failure")


def test_guests() -> list[Path]:
    return sorted(GUESTS.glob("*.xml"))


test_guests.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def pci_addresses(tree: etree._ElementTree) -> dict[int, tuple[int, int, int]]:
    """id(element) -> (bus, slot, function) of every PCI address under <devices>."""
    out = {}
    for el in tree.getroot().find("devices"):
        a = el.find("address") if isinstance(el.tag, str) else None
        if a is not None and a.get("type") == "pci":
            out[id(el)] = (int(a.get("bus"), 0), int(a.get("slot"), 0), int(a.get("function"), 0))
    return out


def controllers(tree: etree._ElementTree, model: str | None = None) -> list[etree._Element]:
    return [c for c in tree.getroot().iter("controller")
            if c.get("type") == "pci" and (model is None or c.get("model") == model)]


@pytest.fixture
def guest_xml():
    """Build a small domain XML: guest_xml('q35', devices='<interface .../>')."""

    def build(machine: str = "q35", devices: str = "", arch: str | None = None, extra: str = "") -> bytes:
        arch = arch or ("aarch64" if machine.startswith("virt") and arch is None else "x86_64")
        # ACPI on x86 (pc's root hot-plug needs it); on aarch64 libvirt ties it to UEFI
        features = "<features><acpi/></features>" if arch == "x86_64" else ""
        emulator = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64",
                    "riscv64": "qemu-system-riscv64"}[arch]
        return f"""<domain type='qemu'>
  <name>t</name>
  <memory unit='KiB'>1048576</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='{arch}' machine='{machine}'>hvm</type>
  </os>
  {features}{extra}
  <devices>
    <emulator>/usr/bin/{emulator}</emulator>
{devices}
  </devices>
</domain>
""".encode()

    return build


def nics(n: int, model: str = "virtio", start: int = 0) -> str:
    return "\n".join(
        f"    <interface type='user'><mac address='52:54:00:00:{(i >> 8) & 255:02x}:{i & 255:02x}'/>"
        f"<model type='{model}'/></interface>"
        for i in range(start, start + n)
    )


def disk_letters(i: int) -> str:
    """The letters of the i-th disk name: 0 → a, 25 → z, 26 → aa (libvirt's virDiskNameToIndex, reversed)."""
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(97 + r) + s
    return s


def disks(n: int) -> str:
    return "\n".join(
        f"    <disk type='file' device='disk'><source file='/var/lib/libvirt/images/d{i}.img'/>"
        f"<target dev='vd{disk_letters(i)}' bus='virtio'/></disk>"
        for i in range(n)
    )
