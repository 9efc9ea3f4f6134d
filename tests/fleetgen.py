"""Generated guests for the fleet tests and benchmark: typical (≤ 32 devices), some broken, some
infeasible."""

from __future__ import annotations

import random
from pathlib import Path

MACHINES = [("q35", "x86_64"), ("pc", "x86_64"), ("virt", "aarch64")]


def typical_guest(n: int, rng: random.Random) -> str:
    machine, arch = MACHINES[n % 3]
    devices = []
    for i in range(rng.randint(1, 24)):
        model = rng.choice(["virtio", "virtio", "e1000", "e1000e"] if arch == "x86_64" else ["virtio"])
        mac = f"52:54:00:{n >> 8 & 255:02x}:{n & 255:02x}:{i:02x}"
        devices.append(f"<interface type='user'><mac address='{mac}'/><model type='{model}'/></interface>")
    for i in range(rng.randint(0, 8)):
        devices.append(f"<disk type='file' device='disk'><source file='/images/g{n}-{i}.img'/>"
                       f"<target dev='vd{chr(97 + i)}' bus='virtio'/></disk>")
    features = "<features><acpi/></features>" if arch == "x86_64" else ""
    return (f"<domain type='qemu'>\n  <name>fleet-{n}</name>\n  <memory unit='KiB'>1048576</memory>\n"
            f"  <os><type arch='{arch}' machine='{machine}'>hvm</type></os>\n  {features}\n  <devices>\n"
            f"    <emulator>/usr/bin/qemu-system-{arch}</emulator>\n    " + "\n    ".join(devices)
            + "\n  </devices>\n</domain>\n")


def write_fleet(folder: Path, count: int, broken: int = 0, infeasible: int = 0, seed: int = 7) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / f"guest-{n:04d}.xml").write_text(typical_guest(n, rng))
    for n in range(broken):
        s390 = "<domain><os><type arch='s390x' machine='x'>hvm</type></os></domain>"
        (folder / f"broken-{n}.xml").write_text("<domain type='qemu'><devices>" if n % 2 else s390)
    nic = "<interface type='user'><model type='virtio'/><address type='pci' bus='0x01'/></interface>"
    for n in range(infeasible):
        (folder / f"infeasible-{n}.xml").write_text(
            "<domain type='qemu'><name>inf</name><memory>1048576</memory><os><type arch='x86_64' "
            "machine='q35'>hvm</type></os><devices><controller type='pci' index='0' model='pcie-root'/>"
            f"<controller type='pci' index='1' model='pcie-root-port'/>{nic * 9}</devices></domain>")
