"""Start-up cost of the command line: recent typer (0.2x) converts every option value through pydantic,
whose import and schema building cost about 0.1 s of every run, more than planning a typical guest.

`fast_coercion()` gives typer a converter for the plain annotations pciplan's commands use (str, int,
float, bool, paths, lists and optionals of these) that gives the values pydantic would, and hands
everything else, and every value it cannot convert, to typer's own pydantic-based converter, so error
messages stay typer's. Older typer (click types, no pydantic) needs nothing and is left alone."""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


class _Slow(Exception):
    """This value is not one the fast converter knows: typer's own converter decides."""


def _plain(annotation: Any) -> Any:
    """X for X | None, else the annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def convert(annotation: Any, value: Any, parameter_info: Any, to_path) -> Any:
    """value as pydantic (through typer) would give it for annotation, or _Slow."""
    annotation = _plain(annotation)
    if getattr(parameter_info, "parser", None) is not None:
        raise _Slow
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise _Slow
        return [convert(item, v, parameter_info, to_path) for v in value]
    if annotation is str and isinstance(value, str):
        return value
    if annotation is bool and isinstance(value, bool):
        return value
    bounds = (getattr(parameter_info, "min", None), getattr(parameter_info, "max", None))
    ranged = bounds != (None, None) or bool(getattr(parameter_info, "clamp", False))
    if annotation is int and not ranged:
        if type(value) is int:
            return value
        if isinstance(value, str) and _INT.fullmatch(value):
            return int(value)
    if annotation is float and not ranged:
        if type(value) in (int, float):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value):
            return float(value)
    if annotation is Path and isinstance(value, (str, Path)):
        return to_path(value)
    raise _Slow


def fast_coercion() -> bool:
    """Install the fast converter into typer when typer converts through pydantic. Returns whether it
    did."""
    try:
        from typer import _coercion, core
        from typer._param_types import coerce_cli_path
    except ImportError:
        return False  # typer before 0.2x: click's own types, no pydantic
    original = getattr(core, "build_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    if original is None or base is None or getattr(original, "_pciplan_fast", False):
        return False

    @dataclass(frozen=True)
    class FastRuntimeParam(base):  # type: ignore[misc, valid-type]
        descriptor: Any

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            info = self.parameter_info
            path_type = getattr(info, "path_type", None) or Path

            def to_path(v: Any) -> Any:
                if path_type is not Path or (isinstance(v, str) and not v):
                    raise _Slow
                # a Path in hand: typer checks the path flags without building a pydantic adapter
                return coerce_cli_path(Path(v), info, path_type=Path, param=param, ctx=ctx)

            try:
                return convert(self.annotation, value, info, to_path)
            except _Slow:
                return original(self.descriptor)._coerce_value(value, param=param, ctx=ctx)

    def build(descriptor: Any) -> Any:
        if descriptor.file_annotation is not None:
            return original(descriptor)
        return FastRuntimeParam(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation,
                                descriptor=descriptor)

    build._pciplan_fast = True  # type: ignore[attr-defined]
    core.build_runtime_param = build
    return True


def only_command(app: Any, argv: list[str]) -> Any:
    """The app with only the command argv names, when it names one: typer then reads the signature of
    that command alone (every command's costs about 10 ms of start-up). Anything else (no command,
    --help, an unknown name) gets the whole app, so usage and help stay as they are."""
    if len(argv) < 2 or app.registered_groups:
        return app
    chosen = [c for c in app.registered_commands
              if (c.name or c.callback.__name__.replace("_", "-")) == argv[1]]
    if len(chosen) != 1 or len(app.registered_commands) < 2:
        return app
    import copy

    import typer

    narrow = copy.copy(app)
    narrow.registered_commands = chosen
    if narrow.registered_callback is None:
        # with one command and no callback typer would make the command the program itself
        narrow.registered_callback = typer.models.TyperInfo(callback=_group)
    return narrow


def _group() -> None:
    """The command group's own step: nothing (the command does the work)."""
