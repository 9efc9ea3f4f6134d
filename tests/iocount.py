"""The solver's I/O count against the checker's, device by device: where they differ, which kind of
device and why. The solver counts each device's I/O BAR from the model's catalogue
(models/devices.toml) in 32-byte units; the checker from its own table (planner/checker/check.py). Everything
else (root-bus BARs, 4 KiB windows of bridges and ports, the new bridges' split) must agree exactly."""

from __future__ import annotations

from lxml import etree

from planner.checker import check
from planner.facts.facts import IO_UNIT
from planner.pipeline.domain import read_problem

# The kinds of per-device difference found on the bundled examples, test guests and shared cases.
# Every one makes the solver count more than the checker (stricter, never unsafe).
REASONS = {
    "units": "the solver counts BARs in 32-byte units: IDE's 16 bytes and pci-serial's 8 count 32",
    "catalogue-vga": "models/devices.toml gives VGA-compatible video (cirrus, vga) a 32-byte I/O BAR; "
                     "QEMU's have none (the legacy VGA ports are fixed, not a BAR)",
    "catalogue-ehci": "models/devices.toml gives ich9-ehci1 a 32-byte I/O BAR; EHCI has only MMIO",
    "catalogue-non-transitional": "models/devices.toml gives non-transitional virtio (memballoon, 9p "
                                  "filesystem, virtio-scsi) the transitional device's I/O BAR",
    "catalogue-virtio-scsi-transitional": "models/devices.toml counts a virtio-transitional SCSI "
                                          "controller as lsilogic (256 bytes); its BAR is 64",
}


def _models(el: etree._Element) -> set[str | None]:
    return {el.get("model"), *(m.get("type") for m in el.findall("model")),
            *(d.get("model") for d in el.findall("driver"))}


def reason(el: etree._Element, checker: int, solver: int) -> str | None:
    """The REASONS key for one device counted `checker` bytes by the checker and `solver` by the solver."""
    if checker % IO_UNIT and solver == -(-checker // IO_UNIT) * IO_UNIT:
        return "units"
    if checker != 0 and not (el.tag == "controller" and el.get("model") == "virtio-transitional"):
        return None
    if el.tag == "video" and (el.find("model") is None or el.find("model").get("type") in ("cirrus", "vga")):
        return "catalogue-vga"
    if el.tag == "controller" and (el.get("model") or "").startswith("ich9-ehci"):
        return "catalogue-ehci"
    if "virtio-non-transitional" in _models(el):
        return "catalogue-non-transitional"
    if el.tag == "controller" and el.get("type") == "scsi" and el.get("model") == "virtio-transitional":
        return "catalogue-virtio-scsi-transitional"
    return None


def per_device(tree: etree._ElementTree) -> dict[etree._Element, tuple[int, int]]:
    """Each placed endpoint's I/O BAR where it sits: (the checker's bytes, the solver's bytes)."""
    root = tree.getroot()
    family = check.machine_family(root)[0]
    checker = check._Checker(root, False)
    checker.family = family
    checker.firmware = check.guest_firmware(root, family)
    checker._collect([c for c in root.find("devices") if isinstance(c.tag, str)])
    theirs: dict[etree._Element, int] = {}
    port: dict[etree._Element, bool] = {}
    for u in checker.users:
        if u.connect == check.ENDPOINT and u.address is not None:
            on_port = checker._bus_model(u.address.bus) in check.PORT_MODELS
            theirs[u.element] = check._io_bar_bytes(u, on_pcie_port=on_port, family=family or "")
            port[u.element] = on_port
    out = {}
    for d in read_problem(tree).devices:
        for m in [d, *d.companions]:
            if m.element in theirs:
                counted = m.io_on_port if port[m.element] else True
                out[m.element] = (theirs[m.element], m.facts.io_units * IO_UNIT if counted else 0)
    return out


def differences(tree: etree._ElementTree) -> tuple[int | None, dict[str, int], list[str]]:
    """(the checker's total with the solver's per-device BARs put in, {reason: devices}, devices whose
    difference has no reason)."""
    counts = per_device(tree)
    found: dict[str, int] = {}
    unexplained = []
    for el, (theirs, ours) in counts.items():
        if theirs != ours:
            why = reason(el, theirs, ours)
            if why is None:
                unexplained.append(f"{el.tag} {dict(el.attrib)}: checker {theirs}, solver {ours}")
            else:
                found[why] = found.get(why, 0) + 1
    original = check._io_bar_bytes

    def solvers_bytes(user, *, on_pcie_port: bool, family: str = "") -> int:
        if user.element in counts:
            return counts[user.element][1]
        return original(user, on_pcie_port=on_pcie_port, family=family)

    check._io_bar_bytes = solvers_bytes
    try:
        total = check.io_space_needed(tree)
    finally:
        check._io_bar_bytes = original
    return (None if total is None else total[0]), found, unexplained
