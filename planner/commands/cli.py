"""pciplan command line: plan and check PCI topologies of libvirt domain XML."""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

# `pciplan fleet` takes Ctrl-C as "stop between files, summarise, report" from its very start: the
# imports below take a few tenths of a second, and the fleet command picks up what was pressed meanwhile.
_FLEET_CTRL_C: list[int] = []
if sys.argv[1:2] == ["fleet"]:
    signal.signal(signal.SIGINT, lambda signum, _frame: _FLEET_CTRL_C.append(signum))

import typer  # noqa: E402

from planner.commands.cli_options import OptionError, exclusive, firmware_name, plan_options, positive  # noqa: E402
from planner.facts.errors import ExitCode, Infeasible, InternalError  # noqa: E402
from planner.facts.options import PlanOptions  # noqa: E402
from planner.xml.xmlio import InputError, parse_domain, serialize, write_atomic  # noqa: E402

if TYPE_CHECKING:
    from planner.commands.fleet import Interrupt

# The old names of the exit statuses, kept for the code that still uses them (README "Exit status").
EXIT_OK, EXIT_VIOLATIONS, EXIT_BAD_INPUT, EXIT_INFEASIBLE = (ExitCode.OK, ExitCode.FAILED, ExitCode.BAD_INPUT,
                                                             ExitCode.INFEASIBLE)
EXIT_PINNED_BREAKS = ExitCode.PINNED_BREAKS
DEBUG_ENV = "PCIPLAN_DEBUG"  # =1: an internal error shows its traceback too


class _Guarded(typer.Typer):
    """The pciplan app: every way out is an exit status of the contract and at most one line of error
    (no traceback), whoever runs it: the console script, `python -m planner.commands.cli`, or app() in
    code."""

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs.setdefault("prog_name", "pciplan")
        guarded(lambda: super(_Guarded, self).__call__(*args, standalone_mode=False, **kwargs))


def guarded(run: Callable[[], Any]) -> NoReturn:
    """Run the command line and exit with its status; turn what escapes into one line and a status:
    a usage error 2, Ctrl-C 130, anything unexpected (a defect of pciplan) 5."""
    interrupted: list[bool] = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(True)  # later typers turn the KeyboardInterrupt into a silent Exit(130)
        signal.default_int_handler(signum, frame)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        code = run()
        sys.stdout.flush()
    except (KeyboardInterrupt, BrokenPipeError, Exception) as exc:  # noqa: BLE001 - sorted out below
        code = _exit_status(exc)
    else:
        if code == ExitCode.INTERRUPTED and interrupted:
            typer.echo("pciplan: interrupted", err=True)
    # The command is over and its status known. A Ctrl-C from now on is held back (and dropped at exit):
    # while the interpreter shuts down, SIGINT is back at its default action and would kill the process
    # instead of letting it exit with that status (fleet: the summary printed, exit 0, then killed).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    sys.exit(int(code or 0))


def _is(exc: BaseException, name: str) -> bool:
    """Whether exc is click's (or typer's copy of click's) exception of this name: typer 0.15 raises
    click's own, later typers their own copies, so the classes are told apart by name."""
    return any(c.__name__ == name for c in type(exc).__mro__)


def _exit_status(exc: BaseException) -> int:
    """The exit status for an exception that escaped the command, after its one line on stderr."""
    if _is(exc, "Exit"):  # raised outside a command's invocation
        return int(getattr(exc, "exit_code", 0) or 0)
    if _is(exc, "NoArgsIsHelpError"):  # `pciplan` alone: the help, as always
        exc.show()  # type: ignore[attr-defined]
        return ExitCode.BAD_INPUT
    if _is(exc, "ClickException"):  # usage: a missing argument, an unknown option or command
        where = getattr(getattr(exc, "ctx", None), "command_path", None) or "pciplan"
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        typer.echo(f"pciplan: error: {message} (see {where} --help)", err=True)
        return ExitCode.BAD_INPUT
    if isinstance(exc, KeyboardInterrupt) or _is(exc, "Abort"):
        typer.echo("pciplan: interrupted", err=True)
        return ExitCode.INTERRUPTED
    if isinstance(exc, BrokenPipeError):  # the reader went away (pciplan show | head): nothing to add
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.FAILED
    # pciplan's own defect: one line, exit 5, never a traceback (unless asked for)
    if os.environ.get(DEBUG_ENV) == "1":
        traceback.print_exception(exc)
    what = str(exc).splitlines()[0] if str(exc).strip() else ""
    kind = "" if isinstance(exc, InternalError) else f"{type(exc).__name__}: "
    typer.echo(f"pciplan: internal error: {kind}{what}; please report it (run with {DEBUG_ENV}=1 for "
               "the traceback)", err=True)
    return ExitCode.INTERNAL


app = _Guarded(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Plan the PCI/PCIe topology of a libvirt domain (controllers and <address> elements) with a "
    "constraint solver, and check layouts against libvirt's and QEMU's rules.",
)


# Options several commands take, each defined once here (planner.commands.cli_options checks their values).
# The firmware names are the tables of models/firmware.toml: a firmware added there is listed without a change
# here.
def _firmware_help() -> str:
    from planner.facts.facts import firmware_names

    return (f"Plan and judge for this firmware's PCI budgets: {', '.join(firmware_names())} "
            "(models/firmware.toml), any case (default: the one each guest boots; x86 SeaBIOS, aarch64 "
            "AAVMF). check --boot boots it.")


FirmwareOption = Annotated[str | None, typer.Option("--firmware", metavar="NAME", help=_firmware_help())]
TimeLimitOption = Annotated[float, typer.Option("--time-limit", help="Solver time limit in seconds, per "
                                                "guest.")]
ReplanOption = Annotated[
    bool, typer.Option("--replan", help="Re-plan from scratch: device addresses may move and PCI controllers "
                       "(not the root or expander buses) may be removed; moving as few addresses as possible "
                       "comes first.")
]
SparePcieOption = Annotated[
    int | None, typer.Option("--spare-pcie", help="Empty hot-pluggable PCIe ports to keep (default: 1 on "
                             "PCIe machines).")
]
PolicyOption = Annotated[
    Path | None, typer.Option("--policy", help="TOML file of per-device rules (see README); the domain's own "
                              "<metadata> rules and the command's flags take precedence.")
]
LibvirtVersionOption = Annotated[
    str | None, typer.Option("--libvirt-version", metavar="X.Y", help="Plan and judge for this libvirt "
                             "version, MAJOR.MINOR (default: the installed libvirt, else 9.0): which devices "
                             "it addresses (models/libvirt.toml).")
]


def _fail(code: int, message: str) -> NoReturn:
    typer.echo(f"pciplan: error: {message}", err=True)
    raise typer.Exit(code)


def _check_firmware_flag(firmware: str | None) -> str | None:
    """The firmware name in canonical case, or exit 2 with the reason."""
    return _checked(firmware_name, firmware)


def _checked(check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one of planner.commands.cli_options' checks; a refused option exits 2 with its one-line reason."""
    try:
        return check(*args, **kwargs)
    except InputError as exc:
        _fail(EXIT_BAD_INPUT, str(exc))


def _refuse(exc: Exception, as_json: bool, one_line: bool = False) -> NoReturn:
    """Exit with the status and the reasons of a refused request: bad input 2, infeasible 3, pciplan's
    own defect 5. With --json stdout gets {"error": {"code", "reasons"}} too, so a caller never parses
    stderr."""
    if isinstance(exc, Infeasible):
        code, reasons = EXIT_INFEASIBLE, list(exc.reasons)
        if one_line:
            typer.echo("pciplan: infeasible: " + "; ".join(reasons), err=True)
        else:
            typer.echo("pciplan: infeasible: the request cannot be met:", err=True)
            for reason in reasons:
                typer.echo(f"  - {reason}", err=True)
    elif isinstance(exc, InternalError):
        code, reasons = ExitCode.INTERNAL, list(getattr(exc, "reasons", [str(exc)]))
        typer.echo(f"pciplan: internal error: {'; '.join(reasons)}; please report it (run with {DEBUG_ENV}=1 "
                   "for the traceback)", err=True)
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exception(exc)
    else:
        code = int(getattr(exc, "exit_code", EXIT_BAD_INPUT))
        reasons = list(getattr(exc, "reasons", [str(exc)]))
        typer.echo(f"pciplan: error: {'; '.join(reasons)}", err=True)
    if as_json:
        error: dict = {"code": int(code), "reasons": reasons}
        if isinstance(exc, Infeasible):  # what each reason is about, so a caller never parses the text
            error["limits"] = exc.kinds()
        typer.echo(json.dumps({"error": error}, indent=2))
    raise typer.Exit(code)


def _use_libvirt_version(version: str | None) -> None:
    """--libvirt-version: plan (and judge) for this libvirt instead of the installed one."""
    from planner.facts.facts import parse_libvirt_version, set_target_libvirt

    if version is not None:
        try:
            set_target_libvirt(parse_libvirt_version(version))
        except ValueError as exc:
            _fail(EXIT_BAD_INPUT, f"--libvirt-version: {exc}")


@app.command()
def plan(
    source: Annotated[str, typer.Argument(metavar="IN", help="Domain XML file, or - for standard input.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the planned XML here (atomically).")
    ] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Replace IN atomically.")] = False,
    time_limit: TimeLimitOption = 10.0,
    replan: ReplanOption = False,
    spare_pcie: SparePcieOption = None,
    spare_pci: Annotated[
        int | None, typer.Option(help="Free hot-pluggable conventional PCI slots to keep (default: 1 on pc).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on standard output (needs -o "
                                          "or --in-place for the planned XML).")] = False,
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
    policy: PolicyOption = None,
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
    firmware: FirmwareOption = None,
    libvirt_version: LibvirtVersionOption = None,
) -> None:
    """Give every PCI device an address and add the PCI controllers it needs, optimally.

    Existing addresses and controllers are kept. The objective, in order: keep devices that can be
    hot-plugged in hot-pluggable slots (and the spare ports), keep PCIe-capable devices on PCIe, add the
    fewest controllers, use the fewest bus numbers. libvirt's implicit devices (USB, SATA, memballoon)
    are added and placed too, so that libvirt has nothing left to add or move.

    Exit status: 0 planned, 2 bad input, 3 the request cannot be met (the reason names the devices and
    limits in conflict), 4 planned and written, but addresses the input pins break a rule `check`
    reports (say SeaBIOS's I/O space): the pinned devices are named, with the `--replan` way out;
    5 internal error. With --json, exit 2, 3 and 4 print {"error": {"code", "reasons"}} on stdout.

    Examples:

      pciplan plan guest.xml -o planned.xml

      virsh dumpxml --inactive vm | pciplan plan - --json -o vm.xml
    """
    from planner.commands import api

    _use_libvirt_version(libvirt_version)
    try:
        exclusive({"-o/--output": output is not None, "--in-place": in_place})
        if in_place and source == "-":
            raise OptionError("--in-place needs a file, not standard input")
        if as_json and output is None and not in_place:
            raise OptionError("--json prints the summary on standard output: add -o FILE or --in-place for "
                              "the planned XML")
        options = plan_options(
            time_limit=time_limit, spare_pcie=spare_pcie, spare_pci=spare_pci, replan=replan,
            hotplug=hotplug or [], no_hotplug=no_hotplug or [], bus=bus,
            policy=str(policy) if policy else None, host_numa=host_numa, reserve=reserve or [],
            objective=objective, firmware=firmware)
        result = api.plan(parse_domain(source), options)
    except (InputError, Infeasible, InternalError) as exc:
        _refuse(exc, as_json)
    target = Path(source) if in_place else output
    if target is not None:
        try:
            write_atomic(target, result.xml)
        except OSError as exc:
            _refuse(InputError(f"{target}: cannot write: {exc.strerror}"), as_json)
    else:
        sys.stdout.buffer.write(result.xml)
    if as_json:
        from planner.pipeline.show import build_tree
        from planner.pipeline.show import summary as tree_summary
        from planner.xml.xmlio import parse_domain_bytes

        shown = tree_summary(build_tree(parse_domain_bytes(result.xml), options.firmware))
        typer.echo(json.dumps({**result.as_json(), "firmware": shown["firmware"],
                               "spare_ports": shown["spare_ports"]}, indent=2))
    else:
        _print_plan_summary(result)
    raise typer.Exit(result.exit_code)


def _print_plan_summary(result) -> None:
    """plan's human summary, on stderr: moves, warnings, check's errors, one closing line."""
    summary = result.summary
    added = ", ".join(f"{n} × {m}" for m, n in result.controllers_added.items()) or "none"
    status = result.status
    if status != "optimal":
        status += f" (bound {result.bound}, gap {result.gap:.2%})"
    for move in result.moves:
        typer.echo(f"pciplan: moved {move}", err=True)
    for finding in result.findings:
        if finding.severity == "note":
            continue
        level = "" if finding.severity == "suggestion" else f"{finding.severity}: "
        prefix = "suggestion: " if finding.severity == "suggestion" else ""
        typer.echo(f"pciplan: {level}{prefix}{finding.text}", err=True)
    lv = result.objective_levels
    # as written (planner.pipeline.plan counts the written file)
    hot = lv["hotplug_wanted"] - lv["hotplug_lost"]
    typer.echo(
        f"pciplan: {result.machine}: {summary.devices_placed} address(es) planned for "
        f"{summary.devices} PCI device(s); controllers added: {added}; hot-pluggable: {hot} of "
        f"{lv['hotplug_wanted']} that want it; {status} in {summary.solve_seconds:.3f} s"
        + (f"; can still hot-plug: {result.headroom}" if result.headroom else ""),
        err=True,
    )


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
    firmware: FirmwareOption = None,
    libvirt_version: LibvirtVersionOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON, each with its "
                                          "severity; --libvirt's results as fields.")] = False,
) -> None:
    """Check a domain's PCI layout against libvirt's, QEMU's and the firmware's rules.

    The rule checker shares no code with the planner's model. Exit status: 0 no violation (warnings
    allowed), 1 violations found (or libvirt/QEMU disagreed), 2 bad input or the real stack is not
    available (with --boot: also the guest's firmware, say OVMF's files), 5 internal error.
    """
    from planner.commands import api

    _use_libvirt_version(libvirt_version)
    try:
        firmware = firmware_name(firmware)
        result = api.check(parse_domain(source), partial=partial, firmware=firmware, libvirt=with_libvirt,
                           boot=boot, libvirt_version=libvirt_version)
    except InputError as exc:
        _refuse(exc, as_json)
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
    else:
        for f in result.findings:
            typer.echo(f"{f.severity}: {f.text}")
        for line in result.stack.lines if result.stack is not None else []:
            typer.echo(line)
        if not result.findings and result.exit_code == ExitCode.OK:
            typer.echo("ok: no violation found")
    raise typer.Exit(result.exit_code)


@app.command()
def show(
    source: Annotated[str, typer.Argument(metavar="IN", help="Domain XML file, or - for standard input.")],
    svg: Annotated[Path | None, typer.Option("--svg", help="Also draw the tree as an SVG picture (FILE.svg).")
                   ] = None,
    png: Annotated[Path | None, typer.Option("--png", help="Also draw the tree as a PNG picture (FILE.png).")
                   ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary counts as JSON.")] = False,
) -> None:
    """Show the PCI tree: root bus, controllers and devices with bus:slot.function, hot-plug capability,
    NUMA nodes and empty spare ports. Pictures use Graphviz's dot (matplotlib when dot is missing).

    Exit status: 0 shown, 2 bad input (or a picture that cannot be drawn or written), 5 internal error.

    Example: pciplan plan guest.xml | pciplan show - --png tree.png
    """
    from planner.pipeline.metrics import headroom
    from planner.pipeline.show import (
        PictureError,
        build_tree,
        render_rich,
        render_text,
        summary,
        write_picture,
    )

    for flag, picture in (("--svg", svg), ("--png", png)):
        if picture is not None and picture.suffix.lower() != f".{flag[2:]}":
            _fail(EXIT_BAD_INPUT, f"{flag} {picture}: the file name must end in .{flag[2:]} (the picture's "
                  f"format); for a {picture.suffix or 'file without a suffix'} use "
                  f"{'--png' if flag == '--svg' else '--svg'} or rename it")
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
    plot_path: Annotated[Path | None, typer.Option("--plot", help="Draw the comparison as a PNG (needs "
                                                   "matplotlib).")] = None,
    time_limit: TimeLimitOption = 10.0,
    firmware: FirmwareOption = None,
    libvirt_version: LibvirtVersionOption = None,
) -> None:
    """Plan each guest optimally and with libvirt's greedy assignment, and compare the two layouts metric
    by metric: controllers added, bus numbers, devices in hot-pluggable slots, PCIe-capable devices left
    on conventional PCI, spare ports, rule and firmware violations, success, time.

    Given several files or a directory, it also prints the totals and the distribution of controllers
    saved. Exit status: 0 compared, 1 some of several files failed (each is named with its reason),
    2 bad usage or the one file given is bad, 5 internal error.

    Example: pciplan compare tests/guests --plot compare.png
    """
    from planner.commands.compare import load_and_compare, plot, table_rows

    if greedy not in ("builtin", "libvirt"):
        _fail(EXIT_BAD_INPUT, f"--greedy: '{greedy}' is not builtin or libvirt")
    firmware = _check_firmware_flag(firmware)
    _use_libvirt_version(libvirt_version)
    _checked(positive, time_limit, "--time-limit")
    if plot_path is not None:
        if plot_path.suffix.lower() != ".png":
            _fail(EXIT_BAD_INPUT, f"--plot {plot_path}: the picture is a PNG: the file name must end in .png")
        try:
            import matplotlib  # noqa: F401 - refuse now, not after every guest has been compared
        except ImportError:
            _fail(EXIT_BAD_INPUT, "--plot needs matplotlib, which is not installed (pip install matplotlib)")
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
    failed: list[tuple[str, str]] = []  # (file, reason)
    for f in files:
        try:
            results.append(load_and_compare(f, greedy, time_limit, firmware))
        except (InputError, Infeasible) as exc:
            failed.append((f, str(exc).removeprefix(f"{f}: ")))
        except Exception as exc:  # noqa: BLE001 - e.g. the real stack is missing: say so, go on
            failed.append((f, f"{type(exc).__name__}: {exc}"))
    saved = [c.controllers_saved for c in results if c.controllers_saved is not None]
    totals = {"files": len(files), "compared": len(results), "failed": len(failed),
              "greedy_failed": sum(not c.greedy.ok for c in results),
              "pciplan_failed": sum(not c.pciplan.ok for c in results),
              "controllers_saved": sum(saved), "controllers_saved_min": min(saved, default=0),
              "controllers_saved_max": max(saved, default=0)}
    if as_json:
        typer.echo(json.dumps({"guests": [c.as_json() for c in results], "totals": totals,
                               "errors": [{"file": f, "reason": why} for f, why in failed]}, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
        if len(files) == 1 and results:
            c = results[0]
            t = Table(title=f"{c.source} ({c.machine}, {c.devices} PCI devices) — greedy: {c.greedy_kind}")
            for col in ("metric", "pciplan", "greedy"):
                t.add_column(col)
            for row in table_rows(c):
                t.add_row(*row)
            console.print(t)
        elif results:
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
            console.print(f"{len(results)} guests: greedy failed on {totals['greedy_failed']}, pciplan on "
                          f"{totals['pciplan_failed']}; controllers saved in total "
                          f"{totals['controllers_saved']}, "
                          f"per guest min {totals['controllers_saved_min']} / max "
                          f"{totals['controllers_saved_max']}."
                          + (f" {len(failed)} of {len(files)} files failed." if failed else ""))
    for f, why in failed:
        typer.echo(f"pciplan: error: {f}: {why}", err=True)
    if plot_path is not None and results:
        plot(results, str(plot_path))
        typer.echo(f"pciplan: wrote {plot_path}", err=True)
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT if len(files) == 1 else ExitCode.FAILED)
    raise typer.Exit(EXIT_OK)


@app.command()
def fleet(
    ctx: typer.Context,
    sources: Annotated[list[str] | None, typer.Argument(metavar="PATH...", help="Domain XML files, "
                                                        "directories or glob patterns.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write planned files into this folder.")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Replace each file atomically; the first "
                                           "original is kept as FILE.orig (see --no-backup).")] = False,
    no_backup: Annotated[
        bool, typer.Option("--no-backup", help="With --in-place: keep no FILE.orig.")
    ] = False,
    replan: ReplanOption = False,
    policy: PolicyOption = None,
    spare_pcie: SparePcieOption = None,
    jobs: Annotated[int, typer.Option(help="Parallel processes.")] = max(1, os.cpu_count() or 1),
    report: Annotated[Path | None, typer.Option(help="Write a per-file (or per-domain) report: .json or "
                                                ".csv.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan and report; write nothing.")] = False,
    time_limit: TimeLimitOption = 10.0,
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
    firmware: FirmwareOption = None,
    libvirt_version: LibvirtVersionOption = None,
) -> None:
    """Plan many guests at once, in parallel: bad or infeasible files are reported with their reason and
    left untouched, the batch goes on, every output is written atomically, and a second run over the
    output changes nothing.

    Exit status: 0 all planned, 1 some files failed (or the report could not be written), 2 bad usage
    (checked before anything is planned), 130 interrupted (Ctrl-C: the summary and the report cover the
    files done; the others are untouched).

    Example: pciplan fleet /etc/libvirt/qemu --out planned/ --replan --report report.csv
    """
    import contextlib
    import time as _time

    from planner.commands import fleet as fl
    from planner.facts.errors import ExitCode

    # Ctrl-C stops the batch between files (planner.commands.fleet.Interrupt); the handler is put back on exit
    interrupt = fl.Interrupt()
    previous = signal.getsignal(signal.SIGINT)
    interrupt.install()
    if previous is not None:
        ctx.call_on_close(lambda: signal.signal(signal.SIGINT, previous))
    interrupt.requested = interrupt.requested or bool(_FLEET_CTRL_C)  # pressed while it was starting

    if connect is not None:
        given = [name for name, on in (("PATH", sources), ("--out", out), ("--in-place", in_place),
                                       ("--no-backup", no_backup), ("--dry-run", dry_run),
                                       ("--scheduler", scheduler)) if on]
        if given:
            _fail(ExitCode.BAD_INPUT, f"--connect plans libvirt's own domains and changes them only with "
                  f"--define: {', '.join(given)} cannot go with it")
    else:
        if domain or define:
            _fail(ExitCode.BAD_INPUT, f"{'--domain' if domain else '--define'} needs --connect URI")
        if not sources:
            _fail(ExitCode.BAD_INPUT, "name domain XML files, directories or globs (or --connect URI)")
        if in_place and out is not None:
            _fail(ExitCode.BAD_INPUT, "give either --out or --in-place, not both")
        if not (in_place or out or dry_run):
            _fail(ExitCode.BAD_INPUT, "say where the planned files go: --out DIR, --in-place, or --dry-run")
    if jobs < 1:
        _fail(ExitCode.BAD_INPUT, f"--jobs: {jobs} is not a number of processes (1 or more)")
    if to_machine == "virt":
        _fail(ExitCode.BAD_INPUT, "--to-machine virt: on aarch64 and riscv64 pciplan plans only the virt "
              "machine, so there is no machine type to convert from (plan the guests as they are)")
    if to_machine not in (None, "q35"):
        _fail(ExitCode.BAD_INPUT, f"--to-machine: '{to_machine}' is not supported (q35)")
    firmware = _check_firmware_flag(firmware)
    _use_libvirt_version(libvirt_version)
    if report is not None:
        _check_report_path(report)
    if out is not None and out.exists() and not out.is_dir():
        _fail(ExitCode.BAD_INPUT, f"--out {out}: not a directory")
    # checked as plan checks them, before any file is planned (each file failed on its own before)
    options = _checked(plan_options, replan=replan, policy=str(policy) if policy else None,
                       spare_pcie=spare_pcie, time_limit=time_limit, to_machine=to_machine, firmware=firmware)
    if connect is not None:
        _fleet_connect(connect, domain, options, define, report, interrupt)
    files = fl.collect(sources)
    if not files:
        _fail(ExitCode.BAD_INPUT, "no domain XML files found")
    if out is not None and not dry_run:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _fail(ExitCode.BAD_INPUT, f"--out {out}: cannot create the directory: {exc.strerror}")
    if jobs > 1 and scheduler is None and not interrupt.requested:
        fl.preload()  # before the progress bar's thread starts: the workers are forked from this process
    start = _time.perf_counter()
    with contextlib.ExitStack() as on_exit:
        advance = None
        if sys.stderr.isatty():  # rich's progress bar costs a tenth of a second to import: only for people
            from rich.progress import Progress

            bar = on_exit.enter_context(Progress(transient=True))
            task = bar.add_task("planning", total=len(files))

            def advance(_result: fl.FileResult) -> None:
                bar.advance(task)

        try:
            batch = fl.run(files, out_dir=out, in_place=in_place, options=options, jobs=jobs,
                           dry_run=dry_run, backup=not no_backup, scheduler=scheduler,
                           progress=advance, interrupt=interrupt)
        except fl.DaskMissing:
            _fail(ExitCode.BAD_INPUT, "--scheduler needs Dask's distributed package "
                  "(pip install distributed)")
        except fl.SchedulerUnreachable as exc:
            _fail(ExitCode.BAD_INPUT, f"--scheduler {scheduler}: cannot reach the scheduler: {exc}")
    results = batch.results
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
    if batch.interrupted:
        summary.update(interrupted=True, files_given=len(files))
        typer.echo(f"pciplan: interrupted: {len(results)} of {len(files)} files done, the other "
                   f"{len(files) - len(results)} untouched", err=True)
    code = ExitCode.FAILED if summary["failed"] else ExitCode.OK
    if batch.interrupted:
        code = ExitCode.INTERRUPTED
    if report is not None and not _write_report(report, summary, results):
        code = max(code, ExitCode.FAILED)
    raise typer.Exit(code)


def _check_report_path(report: Path) -> None:
    """--report is checked before anything is planned: a run whose report cannot be written is refused."""
    from planner.facts.errors import ExitCode

    if report.suffix not in (".json", ".csv"):
        _fail(ExitCode.BAD_INPUT, f"--report: {report} must end in .json or .csv")
    folder = report.parent
    if report.is_dir():
        _fail(ExitCode.BAD_INPUT, f"--report {report}: is a directory")
    if not folder.is_dir():
        _fail(ExitCode.BAD_INPUT, f"--report {report}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (report.exists() and not os.access(report, os.W_OK)):
        _fail(ExitCode.BAD_INPUT, f"--report {report}: cannot write in {folder}")


def _write_report(report: Path, summary: dict, results: list) -> bool:
    """Write the report (JSON keeps the lists, CSV joins them); False, said on stderr, if it failed."""
    import csv
    import dataclasses
    import io

    from planner.commands import fleet as fl

    if report.suffix == ".json":
        data = json.dumps({"summary": summary, "files": fl.report_rows(results, flat=False)},
                          indent=2).encode()
    else:
        rows = fl.report_rows(results)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[f.name for f in dataclasses.fields(fl.FileResult)])
        writer.writeheader()
        writer.writerows(rows)
        data = buf.getvalue().encode()
    try:
        write_atomic(report, data)
    except OSError as exc:
        typer.echo(f"pciplan: error: --report {report}: cannot write: {exc.strerror}", err=True)
        return False
    return True


def _fleet_connect(uri: str, names: list[str] | None, options: PlanOptions, define: bool,
                   report: Path | None, interrupt: Interrupt) -> None:
    """fleet --connect: plan live libvirt's domains, print diffs, define the changed ones if asked."""
    from planner.commands import fleet as fl
    from planner.facts.errors import ExitCode

    try:
        import libvirt
    except ImportError:
        _fail(EXIT_BAD_INPUT, "--connect needs the libvirt Python binding (python3-libvirt, libvirt-python)")
    libvirt.registerErrorHandler(lambda *_: None, None)
    if uri.startswith("qemu:///embed"):
        # the embedded driver talks to QEMU (capability probes on a define) through this process's loop
        import threading

        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)],
                         name="libvirt-events", daemon=True).start()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        _fail(EXIT_BAD_INPUT, f"--connect {uri}: {exc.get_error_message()}")
    try:
        results = fl.plan_domains(conn, names, options, define, interrupt)
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
    code = ExitCode.FAILED if t["failed"] else ExitCode.OK
    if interrupt.requested:
        typer.echo(f"pciplan: interrupted: {t['files']} domains done, the others untouched", err=True)
        t["interrupted"] = True
        code = ExitCode.INTERRUPTED
    if report is not None and not _write_report(report, t, results):
        code = max(code, ExitCode.FAILED)
    raise typer.Exit(code)


@app.command()
def attach(
    guest: Annotated[str, typer.Argument(metavar="GUEST", help="Domain XML of the guest: the running guest's "
                                          "(virsh dumpxml NAME), or - for standard input. Not given with "
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
        "persistent one): attach --connect URI --domain NAME DEVICE.")] = None,
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
    boot would put it and how to get there) or a device libvirt cannot hot-plug, 4 --config written but
    the guest's pinned addresses break a rule, 5 internal error.
    """
    from planner.commands import api
    from planner.pipeline.render import set_pci_address
    from planner.xml.xmlio import parse_domain_bytes, parse_xml_bytes, read_input

    if connect is not None:
        if not domain:
            _fail(EXIT_BAD_INPUT, "--connect needs --domain NAME (attach --connect URI --domain NAME DEVICE)")
        if device:
            _fail(EXIT_BAD_INPUT, "with --connect give only DEVICE: the guest is --domain "
                  f"{domain} (attach --connect URI --domain NAME DEVICE)")
        device, guest = guest, ""
        if not device:
            _fail(EXIT_BAD_INPUT, "attach --connect URI --domain NAME needs the DEVICE file")
    elif domain is not None:
        _fail(EXIT_BAD_INPUT, "--domain needs --connect URI")
    elif not guest or not device:
        _fail(EXIT_BAD_INPUT, "attach needs GUEST and DEVICE (or --connect URI --domain NAME DEVICE)")
    if count and config:
        _fail(EXIT_BAD_INPUT, "--count counts the free places of the running guest; --config plans the next "
              "boot: give one of them")
    try:
        if connect is not None:
            tree = parse_domain_bytes(_domain_xml(connect, domain or "", live=not config).encode(),
                                      f"domain {domain}")
        else:
            tree = parse_domain_bytes(*read_input(guest))
        dev_tree = parse_xml_bytes(*read_input(device))
        if config:
            result, where = api.attach_next_boot(tree, dev_tree)
            _write(output, result.xml)
            added = ", ".join(f"{n} × {m}" for m, n in result.controllers_added.items()) or "none"
            typer.echo(f"pciplan: next boot: the device at {where}; controllers added: {added}; "
                       "every other address kept. Define it with virsh define.", err=True)
            raise typer.Exit(result.exit_code)
        places = api.attach_places(tree, dev_tree)
    except api.NotHotpluggableError as exc:
        typer.echo(f"pciplan: not hot-pluggable: {exc}", err=True)
        raise typer.Exit(EXIT_INFEASIBLE) from None
    except (InputError, Infeasible) as exc:
        _refuse(exc, False, one_line=True)
    from planner.commands.attach import live_places

    found = live_places(tree, dev_tree.getroot())  # the device's name and kind of place, for the messages
    kind = "PCIe device (empty pcie-root-port or downstream port)" if found.pcie else \
        "conventional PCI device (free slot of a hot-pluggable bridge or root bus)"
    if count:
        for place in places:
            typer.echo(f"pciplan: free: {place}", err=True)
        typer.echo(f"pciplan: {len(places)} more device(s) like this {found.device} fit live, "
                   f"as a {kind}", err=True)
        typer.echo(str(len(places)))
        return
    if not places:
        typer.echo(f"pciplan: no free hot-pluggable place for this {found.device}, a {kind}", err=True)
        source = guest if connect is None else f"--connect {connect} --domain {domain}"
        typer.echo(_next_boot_hint(tree, dev_tree, source, device), err=True)
        raise typer.Exit(EXIT_INFEASIBLE)
    place = places[0]
    set_pci_address(dev_tree.getroot(), place.address)
    _write(output, serialize(dev_tree))
    typer.echo(f"pciplan: this {found.device} goes to {place}; {len(places) - 1} more free "
               "place(s) for such devices; attach it with: virsh attach-device NAME FILE --live --config",
               err=True)


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
    from planner.commands import api

    try:
        result, where = api.attach_next_boot(tree, device)
    except api.InfeasibleError as exc:
        return "pciplan: the next cold boot cannot place it either: " + "; ".join(exc.reasons)
    added = ", ".join(f"{n} × {m}" for m, n in result.controllers_added.items()) or "no controller"
    return (f"pciplan: the next cold boot would put it at {where} ({added} added, every other address "
            "kept): "
            f"pciplan attach {guest} {device_file} --config -o next.xml && virsh define next.xml")


def _domain_xml(uri: str, name: str, live: bool) -> str:
    """The live (or persistent) XML of domain name in the libvirt at uri."""
    from urllib.parse import parse_qs, urlsplit

    from planner.stack.driver import BINDING_MISSING, StackUnavailable, _import_libvirt, _start_event_loop

    embedded = uri.startswith("qemu:///embed")
    root = Path(parse_qs(urlsplit(uri).query).get("root", ["."])[0]) if embedded else None
    try:
        if root is not None:  # the embedded driver logs its warnings into its root, not onto stderr
            (root / "log").mkdir(parents=True, exist_ok=True)
            libvirt = _import_libvirt(root / "log" / "libvirt.log")[0]
        else:
            import libvirt
    except (ImportError, StackUnavailable):
        _fail(EXIT_BAD_INPUT, BINDING_MISSING)
    except OSError as exc:
        _fail(EXIT_BAD_INPUT, f"--connect {uri}: {root}: {exc.strerror}")
    libvirt.registerErrorHandler(lambda *_: None, None)
    if embedded:
        # the embedded driver runs in this process and needs an event loop; one per process, shared
        # with planner.stack's own embedded driver when both are in use
        _start_event_loop(libvirt)
    try:
        conn = libvirt.open(uri)
        try:
            dom = conn.lookupByName(name)
            if live and not dom.isActive():
                _fail(EXIT_BAD_INPUT, f"domain {name} is not running: use --config to plan its next boot")
            return dom.XMLDesc(0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE)
        finally:
            conn.close()
    except libvirt.libvirtError as exc:
        _fail(EXIT_BAD_INPUT, f"--connect {uri}: {exc.get_error_message()}")


@app.command("diff")
def diff_command(
    original: Annotated[str, typer.Argument(metavar="ORIGINAL", help="The domain XML as given.")],
    planned: Annotated[str, typer.Argument(metavar="PLANNED", help="The planned domain XML.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the audit as JSON on standard output.")
                       ] = False,
) -> None:
    """Audit that PLANNED differs from ORIGINAL only by pciplan's own kinds of change (addresses added,
    controllers and implicit devices added, stale addresses dropped); every other change is listed with
    its line numbers. Exit 0: none; 1: changes found; 2: bad input."""
    from planner.commands.audit import audit
    from planner.facts.errors import ExitCode
    from planner.xml.xmlio import read_input

    try:
        if original == "-" and planned == "-":
            raise InputError("ORIGINAL and PLANNED cannot both be standard input")
        (o_data, o_name), (p_data, p_name) = read_input(original), read_input(planned)
        result = audit(o_data, p_data, o_name, p_name)
    except InputError as exc:
        _fail(ExitCode.BAD_INPUT, str(exc))
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        for change in result.changes:
            typer.echo(str(change))
        allowed = ", ".join(f"{n} × {what}" for what, n in sorted(result.allowed.items())) or "none"
        verdict = f"{len(result.changes)} change(s) pciplan does not make" if result.changes else \
            "only pciplan's own kinds of change"
        typer.echo(f"pciplan: {verdict}; pciplan's own: {allowed}", err=True)
    raise typer.Exit(ExitCode.FAILED if result.changes else ExitCode.OK)


def main() -> None:  # pragma: no cover
    from planner.commands.cli_startup import fast_coercion, only_command

    fast_coercion()  # typer's pydantic-based option conversion costs more than a typical plan
    only_command(app, sys.argv)()


if __name__ == "__main__":  # pragma: no cover
    main()
