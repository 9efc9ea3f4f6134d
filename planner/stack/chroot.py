"""A second real stack: another distribution's libvirt and QEMU in a chroot, driven through virsh.

.ci/libvirt11 builds Debian 13 (libvirt 11.3, QEMU 10.0) at /var/cache/pciplan/trixie. One virsh
process runs libvirt's embedded QEMU driver (root /lab inside the chroot) for a whole batch of
commands: no daemon, and no Python inside the chroot. proc, sys, dev and dev/pts are mounted only in a
private mount namespace (unshare --mount) that ends with that virsh, so nothing stays mounted on the
host. Needs root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from planner.facts.facts import LibvirtVersion, parse_libvirt_version
from planner.stack.boot import compare_placements, parse_qtree, prepare_for_boot
from planner.stack.model import (
    EMULATORS,
    QEMU_CONF,
    DefineResult,
    StackUnavailable,
    _arch,
    _parse,
    _set_child_text,
    _tostring,
)

CHROOT_ENV = "PCIPLAN_TRIXIE_ROOT"
DEFAULT_CHROOT = Path("/var/cache/pciplan/trixie")
STAMP = ".pciplan-stack"  # written by .ci/libvirt11 when the chroot is complete: package versions
LAB = "/lab"  # the embedded driver's root, inside the chroot
BUILD_HINT = "build it with .ci/libvirt11 (a few minutes, about 1 GB)"

# Mount what libvirt and QEMU need, in this process's own mount namespace only, then run virsh.
_IN_CHROOT = """
root="$1"; shift
mount -t proc proc "$root/proc"
mount --bind /sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
exec chroot "$root" "$@"
"""


@dataclass
class QtreeResult:
    """A paused boot in the chroot's QEMU: did it start, and did QEMU place every device as written."""

    started: bool
    error: str | None
    placements: dict[str, tuple[int, int, int]]
    mismatches: list[str]


def default_chroot() -> Path:
    return Path(os.environ.get(CHROOT_ENV) or DEFAULT_CHROOT)


class ChrootLibvirt:
    """The libvirt and QEMU of a chroot built by .ci/libvirt11 (StackUnavailable when there is none)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_chroot()
        stamp = self.root / STAMP
        if not stamp.is_file():
            raise StackUnavailable(f"no libvirt chroot at {self.root}: {BUILD_HINT}")
        if os.geteuid() != 0:
            raise StackUnavailable("the chroot stack needs root (chroot and unshare)")
        if shutil.which("unshare") is None:
            raise StackUnavailable("unshare (util-linux) is not installed")
        self.packages = dict(line.split(" ", 1) for line in stamp.read_text().splitlines() if " " in line)
        lab_etc = self.root / LAB.lstrip("/") / "etc"
        for conf in (lab_etc / "qemu.conf", lab_etc / "qemu" / "qemu.conf"):
            conf.parent.mkdir(parents=True, exist_ok=True)
            if not conf.exists() or conf.read_text() != QEMU_CONF:
                conf.write_text(QEMU_CONF)

    @property
    def libvirt_version(self) -> LibvirtVersion:
        """From the Debian package version, e.g. '11.3.0-3+deb13u3'."""
        return parse_libvirt_version(self.packages["libvirt-daemon"].split("-")[0])

    @property
    def qemu_version(self) -> str:
        return self.packages["qemu-system-x86"].split(":")[-1].split("+")[0]

    # -- running virsh --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _workdir(self) -> Iterator[Path]:
        """A folder inside the chroot's /tmp (the path virsh sees is its part after the chroot)."""
        path = Path(tempfile.mkdtemp(prefix="pciplan-", dir=self.root / "tmp"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _inside(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root))

    def virsh(self, commands: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """One virsh process (embedded driver) for a ';'-separated command list; virsh goes on after
        a failed command. The lab root is locked: one virsh at a time shares its capability cache."""
        lock_path = self.root / LAB.lstrip("/") / ".pciplan.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _IN_CHROOT,
                 "in_chroot", str(self.root), "virsh", "-q", "-c", f"qemu:///embed?root={LAB}", commands],
                capture_output=True, text=True, timeout=timeout, check=False,
            )

    # -- define ---------------------------------------------------------------------------------------

    def _emulator(self, arch: str) -> str:
        path = EMULATORS.get(arch, f"/usr/bin/qemu-system-{arch}")
        if not (self.root / path.lstrip("/")).exists():
            raise StackUnavailable(f"the chroot has no QEMU for {arch} ({path})")
        return path

    def define_many(self, xmls: list[str]) -> list[DefineResult]:
        """libvirt's verdict on each XML and its completed inactive XML, all in one virsh process;
        nothing stays defined. As EmbeddedLibvirt.define: a temporary name and uuid, type qemu and
        the chroot's emulator, and the caller's values put back in the result."""
        if not xmls:
            return []
        with self._workdir() as work:
            commands, names, paths, originals = [], [], [], []
            for i, xml in enumerate(xmls):
                root = _parse(xml)
                original = {
                    "name": root.findtext("name"), "uuid": root.findtext("uuid"), "type": root.get("type"),
                    "emulator": root.findtext("devices/emulator"),
                    "sysinfo": [e.text for e in root.findall("sysinfo/system/entry[@name='uuid']")],
                }
                root.set("type", "qemu")
                devices = root.find("devices")
                if devices is None:
                    devices = root.makeelement("devices")
                    root.append(devices)
                _set_child_text(devices, "emulator", self._emulator(_arch(root)))
                name = f"pciplan-{i}-{uuid.uuid4().hex[:8]}"
                temporary_uuid = str(uuid.uuid4())
                _set_child_text(root, "name", name)
                _set_child_text(root, "uuid", temporary_uuid)
                for e in root.findall("sysinfo/system/entry[@name='uuid']"):
                    e.text = temporary_uuid  # libvirt insists that an SMBIOS uuid equals the domain's
                path = work / f"{i}.xml"
                path.write_text(_tostring(root))
                inside = self._inside(path)
                commands.append(f"echo @@pciplan {i}; define {inside}; dumpxml {name} --inactive; "
                                f"undefine {name} --keep-nvram")
                names.append(name)
                paths.append(inside)
                originals.append(original)
            done = self.virsh("; ".join(commands), timeout=60.0 + 5.0 * len(xmls))
        return self._define_results(done, paths, originals)

    def define(self, xml: str) -> DefineResult:
        return self.define_many([xml])[0]

    @staticmethod
    def _define_results(done: subprocess.CompletedProcess[str], paths: list[str],
                        originals: list[dict]) -> list[DefineResult]:
        # stdout: "@@pciplan i" then the XML when define worked; stderr: "error: Failed to define
        # domain from PATH" and the reason on the next line.
        # (virsh's echo may end without a newline before the next command's output)
        pieces = re.split(r"@@pciplan (\d+)\n?", done.stdout)
        outputs = {int(pieces[k]): pieces[k + 1] for k in range(1, len(pieces) - 1, 2)}
        errors: dict[str, str] = {}
        lines = done.stderr.splitlines()
        for k, line in enumerate(lines):
            if line.startswith("error: Failed to define domain from "):
                reason = lines[k + 1].removeprefix("error: ") if k + 1 < len(lines) else "define failed"
                errors[line.removeprefix("error: Failed to define domain from ").strip()] = reason
        results = []
        for i, (path, original) in enumerate(zip(paths, originals, strict=True)):
            text = outputs.get(i, "").strip()
            if path in errors or not text.startswith("<domain"):
                why = errors.get(path) or f"virsh gave no XML (exit {done.returncode}): {done.stderr.strip()}"
                results.append(DefineResult(False, why, None))
                continue
            completed = _parse(text)
            for tag in ("name", "uuid"):
                if original[tag] is None:
                    el = completed.find(tag)
                    if el is not None:
                        completed.remove(el)
                else:
                    _set_child_text(completed, tag, original[tag])
            for e, value in zip(completed.findall("sysinfo/system/entry[@name='uuid']"), original["sysinfo"],
                                strict=False):
                e.text = value
            if original["type"]:
                completed.set("type", original["type"])
            if original["emulator"]:
                _set_child_text(completed.find("devices"), "emulator", original["emulator"])
            results.append(DefineResult(True, None, _tostring(completed)))
        return results

    # -- boot -----------------------------------------------------------------------------------------

    def boot_qtree(self, xml: str) -> QtreeResult:
        """Start a bootable copy of xml paused (boot.prepare_for_boot: files and host resources made
        local) and compare QEMU's 'info qtree' with the live XML. Nothing stays running or defined."""
        with self._workdir() as work:
            prepared = _parse(prepare_for_boot(xml, str(work)).replace(str(self.root), ""))
            _set_child_text(prepared.find("devices"), "emulator", self._emulator(_arch(prepared)))
            name = prepared.findtext("name")
            path = work / "guest.xml"
            path.write_text(_tostring(prepared))
            marker = "@@pciplan-qtree"
            done = self.virsh(
                f"define {self._inside(path)}; start {name} --paused; dumpxml {name}; echo {marker}; "
                f"qemu-monitor-command {name} --hmp 'info qtree'; destroy {name}; "
                f"undefine {name} --keep-nvram", timeout=180.0,
            )
        live, _, qtree = done.stdout.partition(marker)
        if "<domain" not in live or not qtree.strip():
            error = "; ".join(line.removeprefix("error: ") for line in done.stderr.splitlines()
                              if line.startswith("error:") and "failed to get domain" not in line)
            return QtreeResult(False, error or f"virsh exit {done.returncode}", {}, [])
        placements, mismatches = compare_placements(_parse(live.strip()), parse_qtree(qtree))
        return QtreeResult(True, None, placements, mismatches)
