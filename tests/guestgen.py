"""Random guests in the shapes where planners differ: storage-heavy (virtio disks, virtio-scsi
controllers), NIC-heavy (mixed models), with guest NUMA cells, and partial (a previous layout with
some addresses removed). Used by the property test against libvirt's greedy and by
benchmarks/vs_greedy.py."""

from __future__ import annotations

import random
from dataclasses import dataclass

from conftest import disk_letters

from planner.checker.check import WARNING_RULES, check_domain
from planner.pipeline.greedy import greedy_plan
from planner.xml.xmlio import parse_domain_bytes, serialize

ARCH = {"q35": "x86_64", "pc": "x86_64", "virt": "aarch64"}
NIC_MODELS = {"x86_64": ["virtio", "e1000", "e1000e", "rtl8139"], "aarch64": ["virtio", "e1000"]}


@dataclass(frozen=True)
class Shape:
    machine: str
    disks: int = 0
    scsi: int = 0
    nics: int = 0
    nic_model: str = "virtio"
    numa: int = 0  # guest NUMA cells
    partial: float = 0.0  # share of a greedy layout's device addresses that are kept (0: fresh)
    seed: int = 0

    @property
    def label(self) -> str:
        bits = [self.machine, f"{self.disks}d", f"{self.scsi}s", f"{self.nics}×{self.nic_model}"]
        if self.numa:
            bits.append(f"numa{self.numa}")
        if self.partial:
            bits.append(f"partial{self.partial:.1f}")
        return "-".join(bits)


def random_shape(rng: random.Random, heavy: bool = True) -> Shape:
    """Storage- or NIC-heavy on any machine, sometimes with NUMA cells, sometimes partial."""
    machine = rng.choice(sorted(ARCH))
    arch = ARCH[machine]
    top = 130 if heavy else 24
    if rng.random() < 0.5:  # storage-heavy
        disks, scsi, nics = rng.randint(0, top), rng.randint(0, top // 5), rng.randint(0, 6)
    else:
        disks, scsi, nics = rng.randint(0, 8), rng.randint(0, 3), rng.randint(0, top)
    return Shape(machine, disks, scsi, nics, rng.choice(NIC_MODELS[arch]),
                 numa=rng.choice([0, 0, 2, 4]), partial=rng.choice([0.0, 0.0, 0.5, 0.9]),
                 seed=rng.randrange(1 << 30))


def fresh_xml(s: Shape) -> str:
    arch = ARCH[s.machine]
    features = "<features><acpi/></features>" if arch == "x86_64" else ""
    cpu = ""
    if s.numa:
        cells = "".join(f"<cell id='{i}' cpus='{i}' memory='262144' unit='KiB'/>" for i in range(s.numa))
        cpu = f"<cpu><numa>{cells}</numa></cpu>"
    devices = [f"<disk type='file' device='disk'><source file='/images/d{i}.img'/>"
               f"<target dev='vd{disk_letters(i)}' bus='virtio'/></disk>" for i in range(s.disks)]
    devices += [f"<controller type='scsi' index='{i}' model='virtio-scsi'/>" for i in range(s.scsi)]
    devices += [f"<interface type='user'><mac address='52:54:00:00:{i >> 8:02x}:{i & 255:02x}'/>"
                f"<model type='{s.nic_model}'/></interface>" for i in range(s.nics)]
    body = "\n    ".join(devices)
    return (f"<domain type='qemu'>\n  <name>g</name>\n  <memory unit='KiB'>1048576</memory>\n"
            f"  <vcpu>{max(2, s.numa)}</vcpu>\n"
            f"  <os><type arch='{arch}' machine='{s.machine}'>hvm</type></os>\n"
            f"  {features}{cpu}\n  <devices>\n    <emulator>/usr/bin/qemu-system-{arch}</emulator>\n"
            f"    {body}\n  </devices>\n</domain>\n")


def guest_xml(s: Shape) -> str | None:
    """The guest's XML; for a partial shape, libvirt's greedy layout of it with some device addresses
    removed (the controllers stay), as a guest that had devices added. None when the greedy fails or
    its layout breaks a rule."""
    xml = fresh_xml(s)
    if not s.partial:
        return xml
    r = greedy_plan(xml)
    if not r.ok or r.xml is None:
        return None
    tree = parse_domain_bytes(r.xml.encode())
    if any(v.rule not in WARNING_RULES for v in check_domain(tree)):
        return None  # a layout SeaBIOS cannot set up is no start for adding devices

    rng = random.Random(s.seed)
    for el in tree.getroot().find("devices"):
        if not isinstance(el.tag, str) or (el.tag == "controller" and el.get("type") == "pci"):
            continue
        a = el.find("address")
        if a is not None and a.get("type") == "pci" and rng.random() > s.partial:
            el.remove(a)
    return serialize(tree).decode()
