"""Plan many domain XMLs at once, in parallel processes: each file is planned on its own, its output
written atomically, a failure reported and the batch carried on. Ctrl-C stops the batch between files:
what was done is kept and reported, nothing is half-written."""

from __future__ import annotations

import contextlib
import gc
import glob
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from pathlib import Path

from planner.facts.errors import Infeasible
from planner.facts.options import PlanOptions
from planner.xml.xmlio import (
    InputError,
    parse_domain_bytes,
    put_in_place,
    read_input,
    serialize,
    serialize_text,
    stage_file,
)

BACKUP_SUFFIX = ".orig"
GRACE_SECONDS = 2.0  # after Ctrl-C, how long the files being planned may take before their workers stop
POLL_SECONDS = 0.1  # how often the parent looks at the Ctrl-C flag while it waits for workers
CHUNK_FILES = 16  # at most this many files given to a worker at once (_chunk_size)
COMMIT_SECONDS = 0.05  # a worker writes and reports what it planned at least this often
STOP = "stop"  # the parent's message to a busy worker on Ctrl-C


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
    out: list[tuple[Path, str]] = []  # each file and the real path that names it once
    for p in paths:
        matches = [Path(m) for m in sorted(glob.glob(p))] if any(c in p for c in "*?[") else [Path(p)]
        for m in matches:
            if m.is_dir():
                # the folder resolved once: a name in it that is no symlink resolves to the folder's real path
                # and that name (the same as realpath of each, without its walk over every component)
                real = os.path.realpath(m)
                try:
                    with os.scandir(m) as entries:
                        found = sorted((e for e in entries if e.name.endswith(".xml")), key=lambda e: e.name)
                except PermissionError:
                    found = []  # as Path.glob has it: an unreadable folder has no files
                out += [(m / e.name, os.path.realpath(e.path) if e.is_symlink()
                         else os.path.join(real, e.name)) for e in found]
            else:
                out.append((m, os.path.realpath(m)))
    seen: set[str] = set()
    return [p for p, real in out if not (real in seen or seen.add(real))]


def _pci_addresses(tree) -> int:
    """Complete PCI addresses the input had (before planning)."""
    return sum(1 for a in tree.getroot().iterfind("devices/*/address[@type='pci']") if a.get("slot"))


class Interrupt:
    """Ctrl-C as a flag: the SIGINT handler only sets it and the batch looks at it between steps, so the
    signal never raises an exception inside the pool's locks or half-way through a write."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, _signum: int, _frame: object) -> None:
        self.requested = True

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)


class SchedulerUnreachable(Exception):
    """--scheduler: the Dask scheduler cannot be reached, so no file can be planned."""


class DaskMissing(Exception):
    """--scheduler: Dask's distributed package is not installed here."""


@dataclass
class Batch:
    results: list[FileResult]  # the files done, in the order given
    interrupted: bool = False  # Ctrl-C stopped the batch: the files not in results were not touched


def preload() -> None:
    """Import the planning modules in the parent: the workers are forked from it and share them instead
    of each paying the imports (about half a second per worker)."""
    import planner.checker.check
    import planner.commands.compare
    import planner.pipeline.plan
    import planner.pipeline.ties  # noqa: F401


def plan_one(path: str, target: str | None, options: PlanOptions, dry_run: bool, backup: bool) -> FileResult:
    """Plan one file and write its output. Never raises for one file: the reason is in the result."""
    result, data, raw = _plan(path, target, options, dry_run)
    return _write(result, data, raw, target, backup)


def _plan(path: str, target: str | None, options: PlanOptions,
          dry_run: bool) -> tuple[FileResult, bytes | None, bytes]:
    """The result, and the bytes to write to target (None: nothing to write), and the input's bytes."""
    from planner.pipeline.plan import plan_tree

    start = time.perf_counter()
    raw = b""
    try:
        raw, name = read_input(path)
        tree = parse_domain_bytes(raw, name)
        given = _pci_addresses(tree)
        summary = plan_tree(tree, options)
        data = serialize(tree)
    except (InputError, Infeasible, OSError) as exc:
        reason = "; ".join(exc.reasons) if isinstance(exc, Infeasible) else str(exc)
        return FileResult(path, "failed", reason=reason, seconds=time.perf_counter() - start), None, raw
    except Exception as exc:  # noqa: BLE001 - a defect of pciplan on one guest must not stop the batch
        reason = f"internal error (a defect of pciplan, please report it): {type(exc).__name__}: {exc}"
        return FileResult(path, "failed", reason=reason, seconds=time.perf_counter() - start), None, raw
    changed = data != raw
    result = FileResult(
        path, "changed" if changed else "unchanged", target, solver=summary.status.lower(),
        seconds=time.perf_counter() - start, addresses_moved=len(summary.moved),
        addresses_kept=max(0, given - len(summary.moved)),
        controllers_added=sum(summary.controllers_added.values()),
        controllers_removed=summary.controllers_removed, moved=summary.moved,
        check_errors=summary.check_errors, **_headroom(summary),
    )
    write = not dry_run and target is not None and (changed or target != path)
    return result, data if write else None, raw


def _write(result: FileResult, data: bytes | None, raw: bytes, target: str | None,
           backup: bool) -> FileResult:
    """Write the planned bytes (and the first backup of a file planned in place); a file that cannot be
    written (read-only, disk full) is a failed file, with nothing half-written. The two halves of a
    worker's write (_stage, then _put_in_place at its commit), one after the other, with Ctrl-C and
    SIGTERM held until the files are in place (they are delivered right after)."""
    if data is None or target is None:
        return result
    with _held(signal.SIGINT, signal.SIGTERM):
        return _put_in_place(result, _stage(result.path, data, raw, target, backup))


def run(files: list[Path], *, out_dir: Path | None, in_place: bool, options: PlanOptions, jobs: int,
        dry_run: bool = False, backup: bool = True,
        progress: Callable[[FileResult], None] | None = None,
        scheduler: str | None = None, interrupt: Interrupt | None = None) -> Batch:
    """Plan every file, in local processes or on a Dask cluster (scheduler address); results in the
    order of files. With Dask the workers must see the same paths (a shared file system).

    Ctrl-C (SIGINT) stops the batch within about GRACE_SECONDS: no new file starts, the files being
    planned get that long to finish, then their workers stop; the Batch holds what was done."""
    def target(p: Path) -> str | None:
        if in_place:
            return str(p)
        return str(out_dir / p.name) if out_dir is not None else None

    interrupt = interrupt or Interrupt()
    in_main = _in_main_thread()  # only the main thread may set signal handlers
    previous = signal.getsignal(signal.SIGINT) if in_main else None
    if in_main:
        interrupt.install()
    tasks = [(str(p), target(p)) for p in files]
    results: dict[int, FileResult] = {}

    def done(index: int, result: FileResult) -> None:
        results[index] = result
        if progress:
            progress(result)

    try:
        if out_dir is not None and not dry_run:
            out_dir.mkdir(parents=True, exist_ok=True)
        if scheduler is not None:
            _run_dask(scheduler, tasks, options, dry_run, backup, interrupt, done)
        elif jobs <= 1:
            for index, (path, to) in enumerate(tasks):
                if interrupt.requested:
                    break
                with _sigint_held():
                    result = plan_one(path, to, options, dry_run, backup)
                    if in_main:
                        interrupt.install()  # CP-SAT leaves SIGINT at its default (kill) after a solve
                done(index, result)
        else:
            preload()
            _run_local(tasks, options, jobs, dry_run, backup, interrupt, done)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if not dry_run:
            _sync_folders({Path(to).parent for _, to in tasks if to is not None})
    return Batch([results[i] for i in sorted(results)], interrupted=interrupt.requested)


@contextlib.contextmanager
def _held(*signals: signal.Signals) -> Iterator[None]:
    """Hold these signals back in this thread (they stay pending, delivered when the block ends)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _sigint_held() -> contextlib.AbstractContextManager[None]:
    """Hold SIGINT back while CP-SAT runs here: its own handler would cut the solve short, and afterwards
    it leaves SIGINT at the default action (kill), not at the handler it found."""
    return _held(signal.SIGINT)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _sync_folders(folders: set[Path]) -> None:
    """One fsync per output folder at the end, not one per file: the renames of the batch are durable
    (each file's own bytes were synced before its rename)."""
    for folder in folders:
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------ local processes

def _worker(conn: Connection, options: PlanOptions, dry_run: bool, backup: bool) -> None:
    """A worker process: plans the chunks of files the parent sends, until it sends None. Each planned
    file's bytes go to a synced temporary file in a thread of the worker (_Stager) while the next file
    is planned; the files are then put in place and reported together (commit), at the latest
    COMMIT_SECONDS after the first of them was planned."""
    # Ctrl-C is the parent's to handle, between files. The worker was forked with SIGINT blocked and it
    # stays blocked: CP-SAT puts its own SIGINT handler in place during each solve (a Ctrl-C would cut
    # the solve short) and resets SIGINT to the default action after it, so ignoring it is not enough.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stager = _Stager()
    try:
        while True:
            try:
                chunk = conn.recv()
            except (EOFError, OSError):
                return
            if not isinstance(chunk, list):  # None, or a STOP that came after the last chunk was done
                return
            pending: list[tuple[int, FileResult | None, Future | None]] = []
            first = 0.0
            for i, (index, (path, target)) in enumerate(chunk):
                if _stop_sent(conn):  # Ctrl-C: no new file starts; the rest of the chunk is left untouched
                    pending += [(skipped, None, None) for skipped, _ in chunk[i:]]
                    _commit(conn, pending)
                    return
                result, data, raw = _plan(path, target, options, dry_run)
                if not pending:
                    first = time.monotonic()
                pending.append((index, result, stager.stage(result.path, data, raw, target, backup)))
                if i == len(chunk) - 1 or time.monotonic() - first >= COMMIT_SECONDS:
                    _commit(conn, pending)
                    pending = []
    finally:
        stager.close()


def _stop_sent(conn: Connection) -> bool:
    """Has the parent sent STOP (it sends nothing else while the worker has files to report)?"""
    try:
        return conn.poll() and conn.recv() == STOP
    except (EOFError, OSError):
        return True  # the parent is gone: nothing more to do


Staged = tuple[list[tuple[str, str | None]], str | None]  # (target, temporary file) in order; the error


class _Stager:
    """A worker's writing thread: the slow half of each write (the bytes, the fsync) runs there while the
    worker plans its next file; the commit then only renames. The thread never takes a signal, so
    SIGTERM reaches the worker's main thread, which holds it back while it commits."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, initializer=signal.pthread_sigmask,
                                        initargs=(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}))

    def stage(self, path: str, data: bytes | None, raw: bytes, target: str | None,
              backup: bool) -> Future | None:
        """_stage in the thread (None: nothing to write)."""
        if data is None or target is None:
            return None
        return self._pool.submit(_stage, path, data, raw, target, backup)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _stage(path: str, data: bytes, raw: bytes, target: str, backup: bool) -> Staged:
    """The files to write for one planned file (the first backup of a file planned in place, then the
    target), each in a synced temporary file; the first that cannot be written ends it, with its
    reason."""
    staged: list[tuple[str, str | None]] = []
    files = [(target, data)]
    if backup and target == path and not os.path.exists(path + BACKUP_SUFFIX):
        files.insert(0, (path + BACKUP_SUFFIX, raw))  # the first original is kept, never overwritten
    for where, what in files:
        try:
            staged.append((where, stage_file(where, what)))
        except OSError as exc:
            return staged, f"cannot write {where}: {exc.strerror or exc}"
    return staged, None


def _commit(conn: Connection, pending: list[tuple[int, FileResult | None, Future | None]]) -> None:
    """Put the staged files in place and report them (a file not started: None). The parent's stop
    (SIGTERM) waits until they are all in place and reported, so that the parent knows every file that
    was written; planning itself may be stopped at any point (the files planned but not committed are
    then untouched, their temporary files removed by the parent)."""
    staged = [(index, result, job.result() if job is not None else None) for index, result, job in pending]
    with _held(signal.SIGTERM):
        conn.send([(index, None if result is None else _put_in_place(result, files))
                   for index, result, files in staged])


def _put_in_place(result: FileResult, staged: Staged | None) -> FileResult:
    """The staged files renamed into place in order; the result failed, with the reason, if one could
    not be staged or renamed (a backup already in place when its target fails stays)."""
    if staged is None:
        return result
    files, error = staged
    for n, (where, tmp) in enumerate(files):
        if tmp is None:
            continue  # written through (no regular file)
        try:
            put_in_place(tmp, where)
        except OSError as exc:
            error = f"cannot write {where}: {exc.strerror or exc}"
            for _where, later in files[n + 1:]:
                if later is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(later)
            break
    if error is not None:
        result.status, result.output, result.reason = "failed", None, error
    return result


class _Worker:
    """One worker process and its pipe; tasks are the indices of the files it was given and has not
    reported yet (empty: idle)."""

    def __init__(self, ctx, options: PlanOptions, dry_run: bool, backup: bool) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, options, dry_run, backup), daemon=True)
        with _sigint_held():  # the child starts with SIGINT blocked (see _worker)
            self.process.start()
        child.close()  # closed before the next fork, so that only this worker holds it: EOF when it dies
        self.tasks: list[int] = []
        self.alive = True

    def give(self, chunk: list[tuple[int, tuple[str, str | None]]]) -> bool:
        try:
            self.conn.send(chunk)
        except OSError:
            self.alive = False
            self.process.join(1.0)
            return False
        self.tasks = [index for index, _ in chunk]
        return True

    def collect(self, tasks: list[tuple[str, str | None]]) -> list[tuple[int, FileResult]]:
        """The files it reports now (written, or failed); a worker that died instead fails the files it
        had not reported."""
        try:
            got = self.conn.recv()
        except (EOFError, OSError):
            self.alive = False
            self.process.join(1.0)
            code = self.process.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            got = [(index, FileResult(tasks[index][0], "failed",
                                      reason=f"the worker process died ({how}) while planning it"))
                   for index in self.tasks]
        reported = {index for index, _ in got}
        self.tasks = [index for index in self.tasks if index not in reported]
        return [(index, result) for index, result in got if result is not None]  # None: not started

    def stop(self) -> None:
        """Ctrl-C: the worker starts no new file of its chunk (see _worker)."""
        if self.alive:
            with contextlib.suppress(OSError):
                self.conn.send(STOP)

    def quit(self) -> None:
        if self.alive:
            with contextlib.suppress(OSError):
                self.conn.send(None)


def _chunk_size(left: int, jobs: int) -> int:
    """Files given to a worker at once: a few, so that each worker's commits group several files and
    the parent wakes less often, but small enough near the end for the workers to finish together."""
    return max(1, min(CHUNK_FILES, left // (4 * jobs)))


def _run_local(tasks: list[tuple[str, str | None]], options: PlanOptions, jobs: int, dry_run: bool,
               backup: bool, interrupt: Interrupt, done: Callable[[int, FileResult], None]) -> None:
    # fork: the workers share the parent's imported planner (see preload); frozen objects are never
    # touched by the workers' garbage collector, so their pages stay shared instead of being copied
    ctx = multiprocessing.get_context("fork")
    gc.freeze()
    todo = list(range(len(tasks)))[::-1]  # popped from the end: the files in the order given
    workers: list[_Worker] = []
    try:
        while not interrupt.requested:
            for w in workers:
                if not w.tasks and todo:
                    size = _chunk_size(len(todo), jobs)
                    chunk = [(i, tasks[i]) for i in todo[:-size - 1:-1]]
                    if w.give(chunk):
                        del todo[-size:]
            workers = [w for w in workers if w.alive]
            if todo and len(workers) < jobs and not interrupt.requested:
                workers.append(_Worker(ctx, options, dry_run, backup))
                continue
            busy = {w.conn: w for w in workers if w.tasks}
            if not busy:
                return
            for conn in wait_ready(list(busy), timeout=POLL_SECONDS):
                for index, result in busy[conn].collect(tasks):
                    done(index, result)
    finally:
        _stop_workers(workers, tasks, done)


def _stop_workers(workers: list[_Worker], tasks: list[tuple[str, str | None]],
                  done: Callable[[int, FileResult], None]) -> None:
    """Stop every worker: a busy one starts no new file and may finish those it is planning within
    GRACE_SECONDS; then it is terminated: SIGTERM waits while it puts files in place and reports
    (_commit), so each of its files is either written and reported or not touched."""
    for w in workers:
        if w.tasks:
            w.stop()
        else:
            w.quit()
    deadline = time.monotonic() + GRACE_SECONDS
    busy = {w.conn: w for w in workers if w.tasks and w.alive}
    while busy and time.monotonic() < deadline:
        for conn in wait_ready(list(busy), timeout=min(POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
            w = busy[conn]
            for index, result in w.collect(tasks):
                done(index, result)
            if not w.tasks or not w.alive:
                del busy[conn]
                w.quit()
    for w in busy.values():
        w.process.terminate()
    for w in busy.values():
        w.process.join(5.0)
        while w.alive and w.conn.poll():  # it was writing when it was told to stop: those files are written
            for index, result in w.collect(tasks):
                if result.status != "failed" or not result.reason.startswith("the worker process died"):
                    done(index, result)
    for w in workers:
        w.process.join(1.0)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()
    for w in busy.values():  # a worker killed in the middle of a write leaves only its temporary files
        for index in w.tasks:
            target = tasks[index][1]
            if target is not None:
                for tmp in Path(target).parent.glob(f".{Path(target).name}.*.tmp"):
                    tmp.unlink(missing_ok=True)


# -------------------------------------------------------------------------------------------- Dask

def _run_dask(scheduler: str, tasks: list[tuple[str, str | None]], options: PlanOptions, dry_run: bool,
              backup: bool, interrupt: Interrupt, done: Callable[[int, FileResult], None]) -> None:
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError:
        raise DaskMissing from None
    try:
        client = Client(scheduler)
    except (OSError, TimeoutError) as exc:
        raise SchedulerUnreachable(str(exc)) from None
    with client:
        # The workers' working directory is not ours: they get absolute paths, the report the given ones.
        futures = {client.submit(plan_one, os.path.abspath(path), to and os.path.abspath(to), options,
                                 dry_run, backup, pure=False): i
                   for i, (path, to) in enumerate(tasks)}
        finished = dask_completed(futures)
        while not finished.is_empty():
            if interrupt.requested:
                client.cancel(list(futures))
                return
            batch = finished.next_batch(block=False)
            for fut in batch:
                path, to = tasks[futures[fut]]
                try:
                    result = fut.result()
                except Exception as exc:  # noqa: BLE001 - the worker itself failed (its Python, its pciplan)
                    done(futures[fut], FileResult(path, "failed", reason=f"the Dask worker failed: "
                                                  f"{type(exc).__name__}: {exc}"))
                    continue
                done(futures[fut], replace(result, path=path, output=None if result.output is None else to))
            if not batch:
                time.sleep(POLL_SECONDS)


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


def report_rows(results: list[FileResult], flat: bool = True) -> list[dict]:
    """One row per file; flat (for CSV) joins the lists with "; ", otherwise (JSON) they stay lists."""
    rows = []
    for r in results:
        row = asdict(r)
        if flat:
            row["moved"] = "; ".join(r.moved)
            row["check_errors"] = "; ".join(r.check_errors)
        rows.append(row)
    return rows


def plan_domains(conn, names: list[str] | None, options: PlanOptions, define: bool,
                 interrupt: Interrupt | None = None) -> list[FileResult]:
    """Live libvirt: plan the persistent (inactive) XML of each defined domain, or of the named ones;
    with define, write back only the domains whose XML changed. FileResult.output holds a unified diff.
    An interrupt stops between domains: the results are those done."""
    import difflib

    import libvirt

    from planner.pipeline.plan import plan_tree

    if names:
        try:
            domains = [conn.lookupByName(n) for n in names]
        except libvirt.libvirtError as exc:
            raise InputError(f"--domain: {exc.get_error_message()}") from None
    else:
        domains = conn.listAllDomains()
    results = []
    for dom in sorted(domains, key=lambda d: d.name()):
        if interrupt is not None and interrupt.requested:
            break
        start = time.perf_counter()
        before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        name = f"domain {dom.name()}"
        try:
            tree = parse_domain_bytes(before.encode(), name)
            given = sum(1 for a in tree.getroot().iterfind("devices/*/address[@type='pci']") if a.get("slot"))
            with _sigint_held():
                summary = plan_tree(tree, options)
                if interrupt is not None and _in_main_thread():
                    interrupt.install()  # CP-SAT leaves SIGINT at its default (kill) after a solve
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
