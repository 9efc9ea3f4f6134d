"""The reading shortcuts of issue 21 against what they stand for: domain.find / domain.count against
lxml's ElementPath find / findall, and facts.device_class's per-libvirt memo against the catalogue
lookup itself, over the recorded corpus and every libvirt version the catalogue describes."""

from __future__ import annotations

from itertools import islice

from recorded import corpus

from planner.facts import facts
from planner.facts.facts import (
    LibvirtVersion,
    catalogue_keys,
    device_class,
    libvirt_changes,
    parse_libvirt_version,
    targeting_libvirt,
)
from planner.pipeline.domain import count, find
from planner.xml.xmlio import InputError, parse_domain_bytes

ROOT_PATHS = [("devices",), ("os",), ("os", "type"), ("os", "loader"), ("os", "kernel"),
              ("features", "acpi"), ("cpu", "numa", "cell"), ("devices", "watchdog"), ("devices", "disk"),
              ("devices", "controller"), ("metadata",), ("nothing", "here")]
DEVICE_PATHS = [("address",), ("target",), ("model",), ("source", "address"), ("target", "node"), ("mac",),
                ("alias",), ("driver",)]


def _documents(n: int = 400):
    for _name, data in islice(corpus(), n):
        try:
            yield parse_domain_bytes(data)
        except InputError:
            continue


def test_find_and_count_are_elementpath() -> None:
    found = several = asked = 0
    for tree in _documents():
        root = tree.getroot()
        cases = [(root, p) for p in ROOT_PATHS]
        devices = root.find("devices")
        if devices is not None:
            cases += [(el, p) for el in devices if isinstance(el.tag, str) for p in DEVICE_PATHS]
        for el, path in cases:
            asked += 1
            want = el.find("/".join(path))
            assert find(el, *path) is want, path
            n = len(el.findall("/".join(path)))
            assert count(el, *path) == n, path
            found += want is not None
            several += n > 1
    # the comparison met real answers, not only misses
    assert asked > 5000 and found > 2000 and several > 100, (asked, found, several)


def _versions() -> list[LibvirtVersion]:
    since = {parse_libvirt_version(d["since"]) for d in libvirt_changes().values()}
    return sorted(since | {LibvirtVersion(v.major, v.minor - 1) for v in since if v.minor} | {
        parse_libvirt_version("9.0")})


def test_device_class_memo_is_the_catalogue_lookup() -> None:
    pairs = [tuple(k.rsplit(":", 1)) for k in catalogue_keys()]
    pairs += [("interface", "no-such-model"), ("no-such-kind", "x"), ("controller:usb", ""), ("sound", "")]
    versions = _versions()
    differ = 0
    for _ in range(2):  # and again, answered from the memo this time
        for version in versions:
            with targeting_libvirt(version):
                table = facts._device_table(version)
                for kind, model in pairs:
                    got = device_class(kind, model)
                    assert got == facts._look_up_class(table, kind, model), (version, kind, model)
                    differ += got != facts._look_up_class(facts._device_table(versions[0]), kind, model)
    # versions whose catalogue differs were met, so a memo that ignored the version would fail here
    assert len(versions) > 1 and differ > 0, (versions, differ)
