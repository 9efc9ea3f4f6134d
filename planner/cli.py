"""pciplan command line: plan and check PCI topologies of libvirt domain XML."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from planner.errors import ExitCode, InternalError
from planner.options import PlanOptions
from planner.xmlio import InputError, parse_domain, serialize, serialize_text, write_atomic

EXIT_OK, EXIT_VIOLATIONS, EXIT_BAD_INPUT, EXIT_INFEASIBLE = 0, 1, 2, 3
EXIT_PINNED_BREAKS = 4  # planned and written, but the input's pinned addresses break a rule check reports

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Plan the PCI/PCIe topology of a libvirt domain (controllers and <address> elements) with a "
    "constraint solver, and check layouts against libvirt's and QEMU's rules.",
)


def _fail(code: int, message: str) -> None:
    typer.echo(f"pciplan: error: {message}", err=True)
    raise typer.Exit(code)


def _check_firmware_flag(firmware: str | None) -> None:
    from planner.facts import FIRMWARE_NAMES

    if firmware is not None and firmware not in FIRMWARE_NAMES:
        _fail(EXIT_BAD_INPUT, f"--firmware: '{firmware}' is not one of {', '.join(FIRMWARE_NAMES)}")


@app.command()
def plan(
    source: Annotated[str, typer.Argument(metavar="IN", help="Domain XML file, or - for standard input.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the planned XML here (atomically).")
    ] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Replace IN atomically.")] = False,
    time_limit: Annotated[float, typer.Option(help="Solver time limit in seconds.")] = 10.0,
    replan: Annotated[
        bool, typer.Option("--replan", help="Re-plan from scratch: device addresses may move and PCI "
                           "controllers (not the root or expander buses) may be removed; moving as few "
                           "addresses as possible comes first.")
    ] = False,
    spare_pcie: Annotated[
        int | None, typer.Option(help="Empty hot-pluggable PCIe ports to keep (default: 1 on PCIe machines).")
    ] = None,
    spare_pci: Annotated[
        int | None, typer.Option(help="Free hot-pluggable conventional PCI slots to keep (default: 1 on pc).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on standard output.")] = False,
    hotplug: Annotated[
        list[str] | None, typer.Option("--hotplug", metavar="KIND", help="Devices of this kind (interface, "
                                       "disk, hostdev, ...) must be hot-pluggable. Repeatable.")
    ] = None,
    no_hotplug: Annotated[
        list[str] | None, typer.Option("--no-hotplug", metavar="KIND", help="Devices of this kind must not "
                                       "be hot-pluggable (nor ejectable by the guest). Repeatable.")
    ] = None,
    bus: Annotated[
        str, typer.Option(help="Where devices may go: pcie, pci, any, or mmio (virtio-mmio on virt; "
                          "default: libvirt's classification of each device).")
    ] = "default",
    policy: Annotated[
        Path | None, typer.Option(help="TOML file of per-device rules (see README); the domain's own "
                                  "<metadata> rules and the flags above take precedence.")
    ] = None,
    host_numa: Annotated[
        str | None, typer.Option("--host-numa", metavar="auto", help="Put each PCI host device on the guest "
                                 "NUMA cell bound (<numatune><memnode>) to the host device's own node.")
    ] = None,
    reserve: Annotated[
        list[str] | None, typer.Option("--reserve", metavar="KIND[:MODEL]=N", help="Keep N free "
                                       "hot-pluggable places for devices of this kind, e.g. interface=4, "
                                       "disk:virtio=8, interface:e1000=2, hostdev=2 (a PCIe device gets an "
                                       "empty PCIe port, a conventional one a free bridge slot). Repeatable; "
                                       "hard: exit 3 if they cannot all be kept.")
    ] = None,
    objective: Annotated[
        str | None, typer.Option("--objective-order", metavar="LEVELS", help="The order of the objective's "
                                 "levels, most important first: hotplug, pcie, controllers and buses, "
                                 "comma-separated (default hotplug,pcie,controllers,buses). Example: "
                                 "controllers,hotplug,pcie,buses trades PCIe for fewer controllers.")
    ] = None,
    firmware: Annotated[
        str | None, typer.Option(help="Plan for this firmware's PCI budgets: seabios, ovmf, aavmf or none "
                                 "(default: the one the XML boots; x86 SeaBIOS, aarch64 AAVMF).")
    ] = None,
) -> None:
    """Give every PCI device an address and add the PCI controllers it needs, optimally.

    Existing addresses and controllers are kept. The objective, in order: keep devices that can be
    hot-plugged in hot-pluggable slots (and the spare ports), keep PCIe-capable devices on PCIe, add the
    fewest controllers, use the fewest bus numbers. libvirt's implicit devices (USB, SATA, memballoon)
    are added and placed too, so that libvirt has nothing left to add or move.

    Exit status: 0 planned, 2 bad input, 3 the request cannot be met (the reason names the devices and
    limits in conflict), 4 planned and written, but addresses the input pins break a rule `check`
    reports (say SeaBIOS's I/O space): the pinned devices are named, with the `--replan` way out.

    Examples:

      pciplan plan guest.xml -o planned.xml

      virsh dumpxml --inactive vm | pciplan plan - --json -o vm.xml
    """
    from planner.errors import Infeasible
    from planner.plan import plan_tree
    from planner.rules import objective_order, parse_reserve

    if in_place and output is not None:
        _fail(EXIT_BAD_INPUT, "give either -o/--output or --in-place, not both")
    from planner.options import BUS_CHOICES, DEVICE_KINDS

    for kind in [*(hotplug or []), *(no_hotplug or [])]:
        if kind not in DEVICE_KINDS:
            _fail(EXIT_BAD_INPUT, f"--hotplug/--no-hotplug: unknown device kind '{kind}' "
                  f"(one of: {', '.join(sorted(DEVICE_KINDS))})")
    both = set(hotplug or []) & set(no_hotplug or [])
    if both:
        _fail(EXIT_BAD_INPUT, f"--hotplug and --no-hotplug both name {', '.join(sorted(both))}")
    if host_numa not in (None, "auto"):
        _fail(EXIT_BAD_INPUT, f"--host-numa: '{host_numa}' is not 'auto'")
    if bus not in BUS_CHOICES:
        _fail(EXIT_BAD_INPUT, f"--bus: '{bus}' is not one of pcie, pci, any, mmio")
    if in_place and source == "-":
        _fail(EXIT_BAD_INPUT, "--in-place needs a file, not standard input")
    _check_firmware_flag(firmware)
    try:
        tree = parse_domain(source)
        options = PlanOptions(spare_pcie=spare_pcie, spare_pci=spare_pci, time_limit=time_limit,
                              replan=replan, hotplug_kinds=frozenset(hotplug or []),
                              no_hotplug_kinds=frozenset(no_hotplug or []), bus=bus,
                              policy=str(policy) if policy else None, host_numa=host_numa == "auto",
                              objective_order=objective_order(objective, "--objective-order")
                              if objective else None,
                              reserve=tuple(parse_reserve(r) for r in reserve or []), firmware=firmware)
        summary = plan_tree(tree, options)
    except InputError as exc:
        _fail(EXIT_BAD_INPUT, str(exc))
    except Infeasible as exc:
        typer.echo("pciplan: infeasible: the request cannot be met:", err=True)
        for reason in exc.reasons:
            typer.echo(f"  - {reason}", err=True)
        raise typer.Exit(EXIT_INFEASIBLE) from None
    except InternalError as exc:
        _fail(ExitCode.INTERNAL, f"internal error: {exc}")
    data = serialize(tree)
    target = Path(source) if in_place else output
    if target is not None:
        try:
            write_atomic(target, data)
        except OSError as exc:
            _fail(EXIT_BAD_INPUT, f"{target}: cannot write: {exc.strerror}")
    elif not as_json:
        sys.stdout.buffer.write(data)
    if as_json:
        from planner.show import build_tree
        from planner.show import summary as tree_summary

        shown = tree_summary(build_tree(tree, firmware))
        typer.echo(json.dumps({**summary.as_json(), "firmware": shown["firmware"],
                               "spare_ports": shown["spare_ports"]}, indent=2))
    else:
        added = ", ".join(f"{n} × {m}" for m, n in summary.controllers_added.items()) or "none"
        status = summary.status.lower()
        if status != "optimal":
            status += f" (bound {summary.bound}, gap {summary.gap:.2%})"
        for line in summary.moved:
            typer.echo(f"pciplan: moved {line}", err=True)
        for note in summary.notes:
            if note.startswith("warning: "):
                typer.echo(f"pciplan: {note}", err=True)
        for line in summary.check_warnings:
            typer.echo(f"pciplan: warning: {line}", err=True)
        for line in summary.check_errors:
            level = "" if line.startswith("suggestion: ") else "error: "
            typer.echo(f"pciplan: {level}{line}", err=True)
        lv = summary.levels
        hot = lv["hotplug_wanted"] - lv["hotplug_lost"]  # as written (planner.plan._hotplug_written)
        typer.echo(
            f"pciplan: {summary.machine}: {summary.devices_placed} address(es) planned for "
            f"{summary.devices} PCI device(s); controllers added: {added}; hot-pluggable: {hot} of "
            f"{lv['hotplug_wanted']} that want it; {status} in {summary.solve_seconds:.3f} s"
            + (f"; can still hot-plug: {summary.headroom}" if summary.headroom else ""),
            err=True,
        )
    if summary.check_errors:
        raise typer.Exit(EXIT_PINNED_BREAKS)


@app.command()
def check(
    source: Annotated[str, typer.Argument(metavar="IN", help="Domain XML file, or - for standard input.")],
    partial: Annotated[
        bool, typer.Option("--partial", help="Judge only the addresses given; do not require every device "
                           "to have one.")
    ] = False,
    with_libvirt: Annotated[
        bool, typer.Option("--libvirt", help="Also define the XML in real libvirt (embedded driver) and "
                           "report anything libvirt would add or move.")
    ] = False,
    boot: Annotated[
        bool, typer.Option("--boot", help="With --libvirt: start it in QEMU, compare QEMU's PCI tree with "
                           "the XML and run the guest's firmware (SeaBIOS, OVMF, AAVMF; under TCG): did it "
                           "set up every bus, window and BAR?")
    ] = False,
    firmware: Annotated[
        str | None, typer.Option(help="Judge (and boot) with this firmware: seabios, ovmf, aavmf or none "
                                 "(default: the one the XML boots).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check a domain's PCI layout against libvirt's, QEMU's and the firmware's rules.

    The rule checker shares no code with the planner's model. Exit status: 0 no violation, 1 violations
    found (or libvirt/QEMU disagreed), 2 bad input or the real stack is not available.
    """
    from planner.check import WARNING_RULES, check_domain

    try:
        tree = parse_domain(source)
    except InputError as exc:
        _fail(EXIT_BAD_INPUT, str(exc))
    _check_firmware_flag(firmware)
    found = check_domain(tree, require_complete=not partial, firmware=firmware)
    errors = [v for v in found if v.rule not in WARNING_RULES]
    report: dict = {"violations": [v.__dict__ for v in found]}
    stack_ok = True
    if with_libvirt or boot:
        from planner import stack as libvirt_stack

        try:
            result = libvirt_stack.verify(serialize_text(tree), boot=boot, firmware=boot,
                                          firmware_name=firmware)
        except libvirt_stack.StackUnavailable as exc:
            _fail(EXIT_BAD_INPUT, f"real stack not available: {exc}")
        stack_ok = result.ok
        report["libvirt"] = result.summary_lines()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for v in found:
            level = "warning" if v.rule in WARNING_RULES else "error"
            typer.echo(f"{level}: {v.element}: {v.message} [{v.rule}]")
        for line in report.get("libvirt", []):
            typer.echo(line)
        if not found and stack_ok:
            typer.echo("ok: no violation found")
    raise typer.Exit(EXIT_VIOLATIONS if errors or not stack_ok else EXIT_OK)


@app.command()
def show(
    source: Annotated[str, typer.Argument(metavar="IN", help="Domain XML file, or - for standard input.")],
    svg: Annotated[Path | None, typer.Option("--svg", help="Also draw the tree as an SVG picture.")] = None,
    png: Annotated[Path | None, typer.Option("--png", help="Also draw the tree as a PNG picture.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary counts as JSON.")] = False,
) -> None:
    """Show the PCI tree: root bus, controllers and devices with bus:slot.function, hot-plug capability,
    NUMA nodes and empty spare ports. Pictures use Graphviz's dot (matplotlib when dot is missing).

    Example: pciplan plan guest.xml | pciplan show - --png tree.png
    """
    from planner.attach import headroom
    from planner.show import PictureError, build_tree, render_rich, render_text, summary, write_picture

    try:
        tree = parse_domain(source)
        root = build_tree(tree)
        room = headroom(tree)
    except InputError as exc:
        _fail(EXIT_BAD_INPUT, str(exc))
    if as_json:
        typer.echo(json.dumps({**summary(root), "headroom": room.as_json()}, indent=2, default=str))
    elif sys.stdout.isatty():
        from rich.console import Console

        Console(soft_wrap=True).print(render_rich(root))
        typer.echo(f"can still hot-plug: {room}")
    else:
        typer.echo(render_text(root, width=200).rstrip("\n"))
        typer.echo(f"can still hot-plug: {room}")
    for picture in (svg, png):
        if picture is not None:
            try:
                write_picture(root, str(picture))
            except (PictureError, OSError) as exc:
                _fail(EXIT_BAD_INPUT, f"{picture}: {exc}")
            typer.echo(f"pciplan: wrote {picture}", err=True)


@app.command()
def compare(
    sources: Annotated[list[str], typer.Argument(metavar="PATH...", help="Domain XML files or directories.")],
    greedy: Annotated[
        str, typer.Option(help="Greedy to compare with: builtin (libvirt's algorithm re-implemented) or "
                          "libvirt (real libvirt through the embedded driver).")
    ] = "builtin",
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="Draw the comparison as a PNG.")] = None,
    time_limit: Annotated[float, typer.Option(help="Solver time limit in seconds, per guest.")] = 10.0,
    firmware: Annotated[
        str | None, typer.Option(help="Plan and judge both layouts for this firmware: seabios, ovmf, aavmf "
                                 "or none (default: each guest's own).")
    ] = None,
) -> None:
    """Plan each guest optimally and with libvirt's greedy assignment, and compare the two layouts metric
    by metric: controllers added, bus numbers, devices in hot-pluggable slots, PCIe-capable devices left
    on conventional PCI, spare ports, rule and firmware violations, success, time.

    Given several files or a directory, it also prints the totals and the distribution of controllers
    saved. Example: pciplan compare tests/guests --plot compare.png
    """
    from planner.compare import load_and_compare, plot, table_rows

    if greedy not in ("builtin", "libvirt"):
        _fail(EXIT_BAD_INPUT, f"--greedy: '{greedy}' is not builtin or libvirt")
    _check_firmware_flag(firmware)
    files: list[str] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files += sorted(str(f) for f in p.glob("*.xml"))
        else:
            files.append(src)
    if not files:
        _fail(EXIT_BAD_INPUT, "no domain XML files found")
    results = []
    failed = []
    for f in files:
        try:
            results.append(load_and_compare(f, greedy, time_limit, firmware))
        except InputError as exc:
            failed.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - e.g. the real stack is missing: say so, go on
            failed.append(f"{f}: {exc}")
    if as_json:
        typer.echo(json.dumps({"guests": [c.as_json() for c in results], "errors": failed}, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
        if len(results) == 1:
            c = results[0]
            t = Table(title=f"{c.source} ({c.machine}, {c.devices} PCI devices) — greedy: {c.greedy_kind}")
            for col in ("metric", "pciplan", "greedy"):
                t.add_column(col)
            for row in table_rows(c):
                t.add_row(*row)
            console.print(t)
        else:
            t = Table(title=f"pciplan versus {results[0].greedy_kind if results else greedy}")
            for col in ("guest", "machine", "devices", "pciplan ctrls", "greedy ctrls", "saved",
                        "hot-plug (ours/greedy)", "violations (ours/greedy)"):
                t.add_column(col)
            for c in results:
                ours = sum(c.pciplan.controllers_added.values()) if c.pciplan.ok else "fails"
                theirs = sum(c.greedy.controllers_added.values()) if c.greedy.ok else "fails"
                t.add_row(Path(c.source).name, c.machine, str(c.devices), str(ours), str(theirs),
                          str(c.controllers_saved if c.controllers_saved is not None else "–"),
                          f"{c.pciplan.hotplug_devices}/{c.greedy.hotplug_devices}",
                          f"{len(c.pciplan.rule_violations)}/{len(c.greedy.rule_violations)}")
            console.print(t)
            saved = [c.controllers_saved for c in results if c.controllers_saved is not None]
            greedy_failed = sum(not c.greedy.ok for c in results)
            ours_failed = sum(not c.pciplan.ok for c in results)
            console.print(f"{len(results)} guests: greedy failed on {greedy_failed}, pciplan on "
                          f"{ours_failed}; "
                          f"controllers saved in total {sum(saved)}, per guest min {min(saved, default=0)} / "
                          f"max {max(saved, default=0)}.")
        for line in failed:
            typer.echo(f"pciplan: error: {line}", err=True)
    if plot_path is not None and results:
        plot(results, str(plot_path))
        typer.echo(f"pciplan: wrote {plot_path}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT if failed and not results else EXIT_OK)


@app.command()
def fleet(
    sources: Annotated[list[str] | None, typer.Argument(metavar="PATH...", help="Domain XML files, "
                                                        "directories or glob patterns.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write planned files into this folder.")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Replace each file atomically; the first "
                                           "original is kept as FILE.orig (see --no-backup).")] = False,
    no_backup: Annotated[
        bool, typer.Option("--no-backup", help="With --in-place: keep no FILE.orig.")
    ] = False,
    replan: Annotated[bool, typer.Option("--replan", help="Re-plan each guest, moving as few addresses "
                                         "as possible (see plan --replan).")] = False,
    policy: Annotated[Path | None, typer.Option(help="TOML policy file of per-device rules.")] = None,
    spare_pcie: Annotated[int | None, typer.Option(help="Empty hot-pluggable PCIe ports to keep.")] = None,
    jobs: Annotated[int, typer.Option(help="Parallel processes.")] = max(1, os.cpu_count() or 1),
    report: Annotated[Path | None, typer.Option(help="Write a per-file report: .json or .csv.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan and report; write nothing.")] = False,
    time_limit: Annotated[float, typer.Option(help="Solver time limit per guest, in seconds.")] = 10.0,
    connect: Annotated[
        str | None, typer.Option(help="Plan the domains defined in this libvirt (qemu:///system, or "
                                 "qemu:///embed?root=DIR); prints a diff per changed domain.")
    ] = None,
    domain: Annotated[
        list[str] | None, typer.Option("--domain", help="With --connect: only this domain (repeatable).")
    ] = None,
    define: Annotated[
        bool, typer.Option("--define", help="With --connect: define the planned XML of the changed domains.")
    ] = False,
    to_machine: Annotated[
        str | None, typer.Option("--to-machine", help="Convert pc (i440fx) guests to q35 first, as "
                                 "virt-xml --convert-to-q35 does, then plan them; the report lists every "
                                 "address that changed.")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Send the work to this Dask distributed scheduler (e.g. "
                                 "tcp://10.0.0.5:8786) instead of local processes; the workers must see "
                                 "the same files.")
    ] = None,
    firmware: Annotated[
        str | None, typer.Option(help="Plan every guest for this firmware: seabios, ovmf, aavmf or none "
                                 "(default: each guest's own).")
    ] = None,
) -> None:
    """Plan many guests at once, in parallel: bad or infeasible files are reported with their reason and
    left untouched, the batch goes on, every output is written atomically, and a second run over the
    output changes nothing. Exit status: 0 all planned, 1 some failed, 2 bad usage.

    Example: pciplan fleet /etc/libvirt/qemu --out planned/ --replan --report report.csv
    """
    import csv
    import time as _time

    from rich.progress import Progress

    from planner import fleet as fl

    if in_place and out is not None:
        _fail(EXIT_BAD_INPUT, "give either --out or --in-place, not both")
    if to_machine == "virt":
        _fail(EXIT_BAD_INPUT, "--to-machine virt: on aarch64 and riscv64 pciplan plans only the virt "
              "machine, "
              "so there is no machine type to convert from (plan the guests as they are)")
    if to_machine not in (None, "q35"):
        _fail(EXIT_BAD_INPUT, f"--to-machine: '{to_machine}' is not supported (q35)")
    _check_firmware_flag(firmware)
    options = PlanOptions(replan=replan, policy=str(policy) if policy else None, spare_pcie=spare_pcie,
                          time_limit=time_limit, to_machine=to_machine, firmware=firmware)
    if connect is not None:
        _fleet_connect(connect, domain, options, define)
    if not sources:
        _fail(EXIT_BAD_INPUT, "name domain XML files, directories or globs (or --connect URI)")
    if not (in_place or out or dry_run):
        _fail(EXIT_BAD_INPUT, "say where the planned files go: --out DIR, --in-place, or --dry-run")
    if report is not None and report.suffix not in (".json", ".csv"):
        _fail(EXIT_BAD_INPUT, f"--report: {report} must end in .json or .csv")
    files = fl.collect(sources)
    if not files:
        _fail(EXIT_BAD_INPUT, "no domain XML files found")
    start = _time.perf_counter()
    with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("planning", total=len(files))
        try:
            results = fl.run(files, out_dir=out, in_place=in_place, options=options, jobs=jobs,
                             dry_run=dry_run, backup=not no_backup, scheduler=scheduler,
                             progress=lambda r: bar.advance(task))
        except ImportError:
            _fail(EXIT_BAD_INPUT, "--scheduler needs Dask's distributed package (pip install distributed)")
        except OSError as exc:
            _fail(EXIT_BAD_INPUT, f"--scheduler {scheduler}: cannot reach the scheduler: {exc}")
    summary = fl.totals(results, _time.perf_counter() - start)
    for r in results:
        if r.status == "failed":
            typer.echo(f"pciplan: {r.path}: failed: {r.reason}", err=True)
        for line in r.check_errors:  # planned, but the pinned layout breaks a rule: never silently
            level = "" if line.startswith("suggestion: ") else "error: "
            typer.echo(f"pciplan: {r.path}: {level}{line}", err=True)
    typer.echo(
        f"{summary['files']} files: {summary['changed']} changed, {summary['unchanged']} unchanged, "
        f"{summary['failed']} failed; addresses kept {summary['addresses_kept']}, moved "
        f"{summary['addresses_moved']}; controllers added {summary['controllers_added']}, removed "
        f"{summary['controllers_removed']}; {summary['seconds_total']} s "
        f"({summary['files_per_second']} files/s, {summary['seconds_per_file']} s per file)"
        + (" (dry run: nothing written)" if dry_run else "")
    )
    if report is not None:
        rows = fl.report_rows(results)
        if report.suffix == ".json":
            data = json.dumps({"summary": summary, "files": rows}, indent=2).encode()
        else:
            import io

            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            data = buf.getvalue().encode()
        write_atomic(report, data)
    raise typer.Exit(1 if summary["failed"] else EXIT_OK)


def _fleet_connect(uri: str, names: list[str] | None, options: PlanOptions, define: bool) -> None:
    """fleet --connect: plan live libvirt's domains, print diffs, define the changed ones if asked."""
    from planner import fleet as fl

    try:
        import libvirt
    except ImportError:
        _fail(EXIT_BAD_INPUT, "--connect needs the libvirt Python binding (python3-libvirt, libvirt-python)")
    libvirt.registerErrorHandler(lambda *_: None, None)
    if uri.startswith("qemu:///embed"):
        libvirt.virEventRegisterDefaultImpl()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        _fail(EXIT_BAD_INPUT, f"--connect {uri}: {exc.get_error_message()}")
    try:
        results = fl.plan_domains(conn, names, options, define)
    except InputError as exc:
        _fail(EXIT_BAD_INPUT, str(exc))
    finally:
        conn.close()
    for r in results:
        if r.status == "failed":
            typer.echo(f"pciplan: {r.path}: failed: {r.reason}", err=True)
        elif r.output:
            typer.echo(r.output)
    t = fl.totals(results, sum(r.seconds for r in results) or 1.0)
    defined = "; changed domains defined" if define and t["changed"] else ""
    typer.echo(f"{t['files']} domains: {t['changed']} changed, {t['unchanged']} unchanged, "
               f"{t['failed']} failed{defined}", err=True)
    raise typer.Exit(1 if t["failed"] else EXIT_OK)


@app.command()
def attach(
    guest: Annotated[str, typer.Argument(metavar="GUEST", help="Domain XML of the guest: the running guest's "
                                          "(virsh dumpxml NAME), or - for standard input. Not needed with "
                                          "--connect.")] = "",
    device: Annotated[str, typer.Argument(metavar="DEVICE", help="Device XML, as for virsh attach-device.")
                      ] = "",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the result here (atomically).")
                      ] = None,
    config: Annotated[bool, typer.Option("--config", help="Place the device in the persistent definition "
                                         "for the next boot instead: controllers may be added; the whole "
                                         "planned domain XML is written.")] = False,
    count: Annotated[bool, typer.Option("--count", help="Print how many more devices like DEVICE fit live "
                                        "(the number is the last line).")] = False,
    connect: Annotated[str | None, typer.Option(
        "--connect", metavar="URI", help="Read the guest from this libvirt (live XML; with --config the "
        "persistent one).")] = None,
    domain: Annotated[str | None, typer.Option("--domain", metavar="NAME", help="With --connect: the guest.")
                      ] = None,
) -> None:
    """Where a device goes when it is hot-plugged into a running guest.

    Live (the default): only places that exist and accept hot-plug: an empty pcie-root-port or downstream
    port for a PCIe device, a free slot of a hot-pluggable conventional bus (pci-bridge,
    pcie-to-pci-bridge, pc's pci-root with ACPI) for a conventional one; never a new controller. Prints
    DEVICE with its <address>, ready for `virsh attach-device NAME FILE --live --config`.

    Example: pciplan attach guest.xml nic.xml -o nic-addressed.xml

    Exit status: 0 placed (or counted), 2 bad input, 3 no free place (the message says where the next cold
    boot would put it and how to get there) or a device libvirt cannot hot-plug.
    """
    from planner.attach import NotHotpluggable, add_device, live_places
    from planner.errors import Infeasible
    from planner.plan import plan_tree
    from planner.render import set_pci_address
    from planner.xmlio import parse_domain_bytes, parse_xml_bytes, read_input

    if connect is not None:
        if not domain or (guest and not device):
            _fail(EXIT_BAD_INPUT, "--connect needs --domain NAME and the DEVICE file")
        device = device or guest
    elif not guest or not device:
        _fail(EXIT_BAD_INPUT, "attach needs GUEST and DEVICE (or --connect URI --domain NAME DEVICE)")
    try:
        if connect is not None:
            tree = parse_domain_bytes(_domain_xml(connect, domain or "", live=not config).encode(),
                                      f"domain {domain}")
        else:
            tree = parse_domain_bytes(*read_input(guest))
        dev_tree = parse_xml_bytes(*read_input(device))
        if config:
            new = add_device(tree, dev_tree.getroot())
            summary = plan_tree(tree)
            _write(output, serialize(tree))
            added = ", ".join(f"{n} × {m}" for m, n in summary.controllers_added.items()) or "none"
            typer.echo(f"pciplan: next boot: the device at {_where(new)}; controllers added: {added}; "
                       "every other address kept. Define it with virsh define.", err=True)
            return
        found = live_places(tree, dev_tree.getroot())
    except InputError as exc:
        _fail(EXIT_BAD_INPUT, str(exc))
    except NotHotpluggable as exc:
        typer.echo(f"pciplan: not hot-pluggable: {exc}", err=True)
        raise typer.Exit(EXIT_INFEASIBLE) from None
    except Infeasible as exc:
        typer.echo("pciplan: infeasible: " + "; ".join(exc.reasons), err=True)
        raise typer.Exit(EXIT_INFEASIBLE) from None
    kind = "PCIe device (empty pcie-root-port or downstream port)" if found.pcie else \
        "conventional PCI device (free slot of a hot-pluggable bridge or root bus)"
    if count:
        for place in found.places:
            typer.echo(f"pciplan: free: {place}", err=True)
        typer.echo(f"pciplan: {len(found.places)} more device(s) like this {found.device} fit live, "
                   f"as a {kind}", err=True)
        typer.echo(str(len(found.places)))
        return
    if not found.places:
        typer.echo(f"pciplan: no free hot-pluggable place for this {found.device}, a {kind}", err=True)
        source = guest if connect is None else f"--connect {connect} --domain {domain}"
        typer.echo(_next_boot_hint(tree, dev_tree.getroot(), source, device), err=True)
        raise typer.Exit(EXIT_INFEASIBLE)
    place = found.places[0]
    set_pci_address(dev_tree.getroot(), place.address)
    _write(output, serialize(dev_tree))
    typer.echo(f"pciplan: this {found.device} goes to {place}; {len(found.places) - 1} more free "
               "place(s) for such devices; attach it with: virsh attach-device NAME FILE --live --config",
               err=True)


def _where(el) -> str:
    from planner.domain import read_pci_address

    address = read_pci_address(el, el.tag)[0]
    return str(address) if address is not None else "no PCI address"


def _write(output: Path | None, data: bytes) -> None:
    if output is None:
        sys.stdout.buffer.write(data)
        return
    try:
        write_atomic(output, data)
    except OSError as exc:
        _fail(EXIT_BAD_INPUT, f"{output}: cannot write: {exc.strerror}")


def _next_boot_hint(tree, device, guest: str, device_file: str) -> str:
    """Where a cold boot would put the device, and the command that plans it."""
    import copy

    from planner.attach import add_device
    from planner.errors import Infeasible
    from planner.plan import plan_tree

    trial = copy.deepcopy(tree)
    new = add_device(trial, device)
    try:
        summary = plan_tree(trial)
    except Infeasible as exc:
        return "pciplan: the next cold boot cannot place it either: " + "; ".join(exc.reasons)
    added = ", ".join(f"{n} × {m}" for m, n in summary.controllers_added.items()) or "no controller"
    return (f"pciplan: the next cold boot would put it at {_where(new)} ({added} added, every other address "
            "kept): "
            f"pciplan attach {guest} {device_file} --config -o next.xml && virsh define next.xml")


def _domain_xml(uri: str, name: str, live: bool) -> str:
    try:
        import libvirt
    except ImportError:
        from planner.libvirt_stack import BINDING_MISSING

        _fail(EXIT_BAD_INPUT, BINDING_MISSING)
    try:
        conn = libvirt.open(uri)
        dom = conn.lookupByName(name)
        if live and not dom.isActive():
            _fail(EXIT_BAD_INPUT, f"domain {name} is not running: use --config to plan its next boot")
        return dom.XMLDesc(0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE)
    except libvirt.libvirtError as exc:
        _fail(EXIT_BAD_INPUT, f"{uri}: {exc.get_error_message()}")
    raise AssertionError("unreachable")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
