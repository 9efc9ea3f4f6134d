"""Shared access to the real libvirt/QEMU stack for tests.

Import the fixture into a test module (``from realstack import real_stack_fixture  # noqa: F401``) and
ask for ``real_stack``. Without libvirt or QEMU the tests skip, unless PCIPLAN_REQUIRE_REALSTACK=1
(as in CI), where a missing stack is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from planner.stack import EmbeddedLibvirt, StackUnavailable, emulator_for, shared_stack

REQUIRE_ENV = "PCIPLAN_REQUIRE_REALSTACK"


def stack_unavailable(reason: str) -> NoReturn:
    """Skip the current test, or fail it when the real stack is required."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but the libvirt/QEMU stack is unavailable: {reason}", pytrace=False)
    pytest.skip(f"real libvirt/QEMU stack unavailable: {reason}")


def require_emulator(arch: str) -> str:
    """The QEMU binary for arch, or skip/fail like the stack itself."""
    try:
        return emulator_for(arch)
    except StackUnavailable as exc:
        stack_unavailable(str(exc))


@pytest.fixture(scope="session", name="real_stack")
def real_stack_fixture() -> Iterator[EmbeddedLibvirt]:
    """The process's embedded libvirt (one root per process), shared by every test of the session."""
    try:
        stack = shared_stack()
    except StackUnavailable as exc:
        stack_unavailable(str(exc))
    require_emulator("x86_64")
    yield stack
