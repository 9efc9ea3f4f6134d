"""Shared paths and helpers for the test suite."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest
from lxml import etree

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GUESTS = REPO / "tests" / "guests"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/realstack.py

# The suite tests the installed package, not the checkout: CI installs the wheel it built and sets
# PCIPLAN_REQUIRE_INSTALLED=1, which makes a `planner` imported from the checkout a failure. Without the
# flag the same holds whenever the installed pciplan is not an editable install (`.ci/setup` without
# PCIPLAN_EDITABLE=1): the checkout would then shadow what was installed and the tests would test the
# wrong code. Run the suite as `.venv/bin/pytest`; `python -m pytest` puts the working directory first on
# sys.path.
REQUIRE_INSTALLED = os.environ.get("PCIPLAN_REQUIRE_INSTALLED") == "1"


# Tools .ci/setup installs beside libvirt and QEMU (Graphviz's dot, matplotlib): a test that needs a
# missing one is skipped, and under CI's flags (PCIPLAN_REQUIRE_REALSTACK=1 or PCIPLAN_REQUIRE_INSTALLED=1)
# fails, so CI cannot pass with a part of the suite silently not run.
REQUIRE_TOOLS = REQUIRE_INSTALLED or os.environ.get("PCIPLAN_REQUIRE_REALSTACK") == "1"


def tool_missing(reason: str) -> NoReturn:
    if REQUIRE_TOOLS:
        pytest.fail(f"{reason}, and CI's flags require it (.ci/setup installs it)", pytrace=False)
    pytest.skip(reason)


# Every child Python the tests start (`python -m planner.commands.cli` and `-c` probes, most with cwd=REPO)
# keeps the working directory off sys.path, so it imports the installed package as the tests do, whatever env
# it is given on top of this process's.
os.environ["PYTHONSAFEPATH"] = "1"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python that runs pciplan (`python -m planner.commands.cli` in the
    checkout): PYTHONSAFEPATH keeps `-m` and `-c` from putting the working directory first on sys.path, so the
    child imports the same installed package as the tests."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "PYTHONSAFEPATH": "1", **extra}


def _installed_editable() -> bool | None:
    """Whether the installed pciplan distribution is an editable install; None when none is installed."""
    from importlib import metadata

    # Every distribution of that name: an editable build also leaves pciplan.egg-info in the checkout,
    # which a test that puts the checkout on sys.path makes visible, without direct_url.json.
    found = list(metadata.distributions(name="pciplan"))
    if not found:
        return None
    return any(json.loads(d.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable")
               for d in found)


def from_checkout(path: str | None) -> bool:
    """Whether a module file is the checkout's source (planner/, models/), not an installed copy (the
    venv in .venv sits inside the checkout too)."""
    return path is not None and any(Path(path).resolve().is_relative_to(REPO / folder)
                                    for folder in ("planner", "models"))


def checkout_imports() -> list[str]:
    """The planner modules loaded in this process from the checkout instead of the installed package."""
    return sorted(name for name, module in list(sys.modules.items())
                  if (name == "planner" or name.startswith("planner.")) and module is not None
                  and from_checkout(getattr(module, "__file__", None)))


@functools.cache
def _guard_active() -> bool:
    return REQUIRE_INSTALLED or _installed_editable() is False


def _checkout_on_sys_path() -> bool:
    return any(Path(entry or ".").resolve() == REPO for entry in sys.path)


@pytest.fixture(autouse=True)
def _checkout_stays_off_sys_path():
    """No test (nor a module it imports) leaves the checkout on sys.path: this process has its planner
    already, but what it spawns later (Dask's workers, multiprocessing's spawn) inherits sys.path and
    would import the checkout's planner instead of the installed one (CI failed so once)."""
    if _guard_active() and _checkout_on_sys_path():
        pytest.fail("the checkout is on sys.path (put there while collecting the tests): processes spawned "
                    "from here would import its planner, not the installed one", pytrace=False)
    yield
    if _guard_active() and _checkout_on_sys_path():
        pytest.fail("this test left the checkout on sys.path", pytrace=False)


def pytest_configure(config) -> None:
    if not _guard_active():
        return
    import subprocess

    import planner

    if from_checkout(planner.__file__):
        raise pytest.UsageError(
            f"planner was imported from the checkout ({planner.__file__}), not from the installed package: "
            "run the suite as .venv/bin/pytest (python -m pytest puts the working directory on sys.path), "
            "or install editable with PCIPLAN_EDITABLE=1 bash .ci/setup")
    # A child `python -m planner.commands.cli` started in the checkout, as the CLI tests start it, must import
    # the installed package too.
    child = subprocess.run([sys.executable, "-c", "import planner; print(planner.__file__)"], cwd=REPO,
                           env=subprocess_env(), capture_output=True, text=True, timeout=60, check=True)
    if from_checkout(child.stdout.strip()):
        raise pytest.UsageError(f"a child Python started in the checkout imports {child.stdout.strip()}")


def pytest_sessionfinish(session, exitstatus) -> None:
    # Modules imported lazily, inside functions, during the run: none of them from the checkout either.
    if _guard_active() and (stray := checkout_imports()):
        session.config.get_terminal_writer().line(
            f"pciplan: imported from the checkout, not the installed package: {', '.join(stray)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


EMULATORS = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64",
             "riscv64": "qemu-system-riscv64"}


def domain_xml(machine: str = "q35", devices: str = "", *, arch: str | None = None, acpi: bool | None = None,
               firmware: str | None = None, os_extra: str = "", extra: str = "", vcpu: int = 2,
               memory_kib: int = 1048576, name: str = "t", kind: str = "qemu",
               emulator: bool = True) -> bytes:
    """The one builder of test guests: a small domain XML in libvirt's own layout around DEVICES (text of
    <devices> children, each on its own line). arch follows the machine (virt: aarch64); ACPI on x86 by
    default (pc's root hot-plug needs it; on aarch64 libvirt ties it to UEFI); firmware is <os firmware>;
    os_extra goes inside <os> (a <loader>), extra after <features> (metadata, cpu/numa)."""
    arch = arch or ("aarch64" if machine.startswith("virt") else "x86_64")
    acpi = arch == "x86_64" if acpi is None else acpi
    features = "<features><acpi/></features>" if acpi else ""
    os_attr = f" firmware='{firmware}'" if firmware else ""
    emulator_line = f"    <emulator>/usr/bin/{EMULATORS[arch]}</emulator>\n" if emulator else ""
    return f"""<domain type='{kind}'>
  <name>{name}</name>
  <memory unit='KiB'>{memory_kib}</memory>
  <vcpu>{vcpu}</vcpu>
  <os{os_attr}>
    <type arch='{arch}' machine='{machine}'>hvm</type>{os_extra}
  </os>
  {features}{extra}
  <devices>
{emulator_line}{devices}
  </devices>
</domain>
""".encode()


@pytest.fixture
def guest_xml():
    """domain_xml as a fixture: guest_xml('q35', devices='<interface .../>')."""
    return domain_xml


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
