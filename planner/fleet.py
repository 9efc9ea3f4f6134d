"""Plan many domain XMLs at once, in parallel processes: each file is planned on its own, its output
written atomically, a failure reported and the batch carried on."""

from __future__ import annotations

import glob
import os
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from planner.errors import Infeasible
from planner.options import PlanOptions
from planner.xmlio import InputError, parse_domain, serialize, serialize_text, write_atomic

BACKUP_SUFFIX = ".orig"


@dataclass
class FileResult:
    path: str
    status: str  # changed | unchanged | failed
    output: str | None = None
    reason: str = ""
    solver: str = ""  # optimal | feasible
    seconds: float = 0.0
    addresses_kept: int = 0
    addresses_moved: int = 0
    controllers_added: int = 0
    controllers_removed: int = 0
    moved: list[str] = field(default_factory=list)
    check_errors: list[str] = field(default_factory=list)  # what `pciplan check` says (pinned layouts)
    headroom_pcie: int | None = None  # empty PCIe hot-plug ports left (pciplan attach --count)
    headroom_pci: int | None = None  # free hot-pluggable conventional slots left


def collect(paths: Iterable[str]) -> list[Path]:
    """Files, directories (their *.xml) and glob patterns, each file once, in a stable order."""
    out: list[Path] = []
    for p in paths:
        matches = [Path(m) for m in sorted(glob.glob(p))] if any(c in p for c in "*?[") else [Path(p)]
        for m in matches:
            if m.is_dir():
                out += sorted(m.glob("*.xml"))
            else:
                out.append(m)
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def _pci_addresses(tree) -> int:
    """Complete PCI addresses the input had (before planning)."""
    return sum(1 for a in tree.getroot().iterfind("devices/*/address[@type='pci']") if a.get("slot"))


def plan_one(path: str, target: str | None, options: PlanOptions, dry_run: bool, backup: bool) -> FileResult:
    """Plan one file (in a worker process). Never raises for bad input: the reason is in the result."""
    from planner.plan import plan_tree

    start = time.perf_counter()
    try:
        raw = Path(path).read_bytes()
        tree = parse_domain(path)
        given = _pci_addresses(tree)
        summary = plan_tree(tree, options)
        data = serialize(tree)
    except (InputError, Infeasible, OSError) as exc:
        reason = "; ".join(exc.reasons) if isinstance(exc, Infeasible) else str(exc)
        return FileResult(path, "failed", reason=reason, seconds=time.perf_counter() - start)
    changed = data != raw
    result = FileResult(
        path, "changed" if changed else "unchanged", target, solver=summary.status.lower(),
        seconds=time.perf_counter() - start, addresses_moved=len(summary.moved),
        addresses_kept=max(0, given - len(summary.moved)),
        controllers_added=sum(summary.controllers_added.values()),
        controllers_removed=summary.controllers_removed, moved=summary.moved,
        check_errors=summary.check_errors, **_headroom(summary),
    )
    if not dry_run and target is not None and (changed or target != path):
        if backup and target == path and not os.path.exists(path + BACKUP_SUFFIX):
            write_atomic(path + BACKUP_SUFFIX, raw)  # the first original is kept, never overwritten
        write_atomic(target, data)
    return result


def run(files: list[Path], *, out_dir: Path | None, in_place: bool, options: PlanOptions, jobs: int,
        dry_run: bool = False, backup: bool = True,
        progress: Callable[[FileResult], None] | None = None,
        scheduler: str | None = None) -> list[FileResult]:
    """Plan every file, in local processes or on a Dask cluster (scheduler address); results in the
    order of files. With Dask the workers must see the same paths (a shared file system)."""
    def target(p: Path) -> str | None:
        if in_place:
            return str(p)
        return str(out_dir / p.name) if out_dir is not None else None

    if out_dir is not None and not dry_run:
        out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, FileResult] = {}
    if scheduler is not None:
        from distributed import Client
        from distributed import as_completed as dask_completed

        with Client(scheduler) as client:
            futures = [client.submit(plan_one, str(p), target(p), options, dry_run, backup, pure=False)
                       for p in files]
            for fut in dask_completed(futures):
                r = fut.result()
                results[r.path] = r
                if progress:
                    progress(r)
    elif jobs <= 1:
        for p in files:
            r = plan_one(str(p), target(p), options, dry_run, backup)
            results[str(p)] = r
            if progress:
                progress(r)
    else:
        pool = ProcessPoolExecutor(max_workers=jobs, initializer=_ignore_sigint)
        try:
            futures = [pool.submit(plan_one, str(p), target(p), options, dry_run, backup) for p in files]
            for fut in as_completed(futures):
                r = fut.result()
                results[r.path] = r
                if progress:
                    progress(r)
            pool.shutdown(wait=True)
        except BaseException:
            # Ctrl-C (or any failure): start nothing new; a worker stopped in the middle of a write
            # leaves only its temporary file (the target is replaced by rename or not at all): remove it
            pool.shutdown(wait=True, cancel_futures=True)
            for p in files:
                t = target(p)
                if t is not None:
                    for tmp in Path(t).parent.glob(f".{Path(t).name}.*.tmp"):
                        tmp.unlink(missing_ok=True)
            raise
    return [results[str(p)] for p in files]


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which stops the batch between files."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def totals(results: list[FileResult], wall: float) -> dict:
    planned = [r for r in results if r.status != "failed"]
    return {
        "files": len(results),
        "planned": len(planned),
        "changed": sum(r.status == "changed" for r in results),
        "unchanged": sum(r.status == "unchanged" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "addresses_kept": sum(r.addresses_kept for r in planned),
        "addresses_moved": sum(r.addresses_moved for r in planned),
        "controllers_added": sum(r.controllers_added for r in planned),
        "controllers_removed": sum(r.controllers_removed for r in planned),
        "with_check_errors": sum(bool(r.check_errors) for r in planned),
        "seconds_total": round(wall, 3),
        "seconds_per_file": round(sum(r.seconds for r in results) / max(1, len(results)), 4),
        "files_per_second": round(len(results) / wall, 1) if wall else None,
    }


def _headroom(summary) -> dict[str, int | None]:
    room = summary.headroom
    return {"headroom_pcie": room.pcie_ports if room else None,
            "headroom_pci": room.pci_slots if room else None}


def report_rows(results: list[FileResult]) -> list[dict]:
    rows = []
    for r in results:
        row = asdict(r)
        row["moved"] = "; ".join(r.moved)
        row["check_errors"] = "; ".join(r.check_errors)
        rows.append(row)
    return rows


def plan_domains(conn, names: list[str] | None, options: PlanOptions, define: bool) -> list[FileResult]:
    """Live libvirt: plan the persistent (inactive) XML of each defined domain, or of the named ones;
    with define, write back only the domains whose XML changed. FileResult.output holds a unified diff."""
    import difflib

    import libvirt

    from planner.plan import plan_tree
    from planner.xmlio import parse_domain_bytes

    if names:
        try:
            domains = [conn.lookupByName(n) for n in names]
        except libvirt.libvirtError as exc:
            raise InputError(f"--domain: {exc.get_error_message()}") from None
    else:
        domains = conn.listAllDomains()
    results = []
    for dom in sorted(domains, key=lambda d: d.name()):
        start = time.perf_counter()
        before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        name = f"domain {dom.name()}"
        try:
            tree = parse_domain_bytes(before.encode(), name)
            given = sum(1 for a in tree.getroot().iterfind("devices/*/address[@type='pci']") if a.get("slot"))
            summary = plan_tree(tree, options)
        except (InputError, Infeasible) as exc:
            reason = "; ".join(exc.reasons) if isinstance(exc, Infeasible) else str(exc)
            results.append(FileResult(name, "failed", reason=reason, seconds=time.perf_counter() - start))
            continue
        after = serialize_text(tree)
        changed = after.strip() != before.strip()
        diff = "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                            f"{dom.name()} (libvirt)", f"{dom.name()} (planned)"))
        if changed and define:
            try:
                conn.defineXML(after)
            except libvirt.libvirtError as exc:
                results.append(FileResult(name, "failed", reason=f"libvirt refused the plan: "
                                          f"{exc.get_error_message()}", seconds=time.perf_counter() - start))
                continue
        results.append(FileResult(
            name, "changed" if changed else "unchanged", diff if changed else None,
            solver=summary.status.lower(), seconds=time.perf_counter() - start,
            addresses_moved=len(summary.moved), addresses_kept=max(0, given - len(summary.moved)),
            controllers_added=sum(summary.controllers_added.values()),
            controllers_removed=summary.controllers_removed, moved=summary.moved,
            check_errors=summary.check_errors, **_headroom(summary)))
    return results
