"""planner.commands.cli_startup's option converter gives the values typer's pydantic-based converter gives,
and leaves what it does not know to typer."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.commands.cli_startup import _Slow, convert

adapters = pytest.importorskip("typer._adapters", reason="typer before 0.2x converts without pydantic")
from typer.models import OptionInfo  # noqa: E402

CASES = [
    (str, "guest.xml"), (str, "-"), (int, "3"), (int, "-12"), (int, "+7"), (int, 4), (float, "10"),
    (float, "2.5"), (float, ".5"), (float, "1e3"), (float, "-3.25E-2"), (float, 10.0), (float, 3),
    (bool, True), (bool, False), (int | None, "5"), (str | None, "auto"), (list[str], ("a", "b")),
    (list[str] | None, ["interface"]), (Path, "out.xml"), (Path | None, "/tmp/x.xml"),
]


@pytest.mark.parametrize(("annotation", "value"), CASES, ids=[f"{a}-{v!r}" for a, v in CASES])
def test_same_value_as_typers_converter(annotation, value):
    info = OptionInfo()
    got = convert(annotation, value, info, Path)
    want = adapters.try_build_adapter(annotation, info).validate_python(value)
    if isinstance(want, tuple):
        want = list(want)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(("annotation", "value"), [
    (int, "3.0"), (int, " 3"), (int, "0x10"), (int, "1_000"), (float, "abc"), (float, "inf"), (float, "nan"),
    (float, "1_0"), (int, 2.5), (dict, "x"),
])
def test_what_it_does_not_know_goes_to_typer(annotation, value):
    with pytest.raises(_Slow):
        convert(annotation, value, OptionInfo(), Path)


def test_ranged_numbers_go_to_typer():
    with pytest.raises(_Slow):
        convert(int, "3", OptionInfo(min=0), Path)
