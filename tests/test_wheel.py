"""The wheel holds what the code needs, and nothing else at the top level.

Every `planner` module that any file of planner/ imports (at the top or lazily, inside a function: the
whole AST is scanned), every source file of planner/, and every data file the code loads through
importlib.resources must be in the wheel; its only top-level name is `planner`. Then the wheel, unpacked
alone on the path, imports every module and loads every data file.

CI builds the sdist and the wheel from it (.ci/setup) and points PCIPLAN_WHEEL at that wheel; without it
this module builds one the same way. When building is impossible here (no `build`, no network for the
build backend) the module is skipped, unless CI's flags are set (PCIPLAN_REQUIRE_INSTALLED=1 or
PCIPLAN_WHEEL), which make it a failure.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, REQUIRE_INSTALLED, subprocess_env

SOURCE = REPO / "planner"


def _build_wheel(out: Path) -> Path:
    # From a clean copy: a stale pciplan.egg-info/SOURCES.txt in the checkout drags files into the sdist
    # that the package configuration leaves out, and hides the defect. sdist first, then the wheel from
    # the sdist, as .ci/setup does: both must hold everything.
    source = out / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "dist", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(source)],
                       capture_output=True, text=True, timeout=600)
    wheels = sorted(out.glob("pciplan-*.whl"))
    if r.returncode != 0 or len(wheels) != 1:
        message = f"cannot build the wheel here: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
        if REQUIRE_INSTALLED:
            pytest.fail(message)
        pytest.skip(message)
    return wheels[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("PCIPLAN_WHEEL")
    if given:
        assert Path(given).is_file(), f"PCIPLAN_WHEEL={given} is not a file"
        return Path(given)
    return _build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, anywhere in it: `import a.b` gives a.b; `from a.b import c`
    gives a.b and a.b.c (c may be a submodule; the caller keeps only names that are modules)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _module_file(name: str, base: Path) -> Path | None:
    """The file (module or package) that module NAME is under BASE, if any."""
    stem = base.joinpath(*name.split("."))
    for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _wheel_has_module(name: str, names: set[str]) -> bool:
    stem = name.replace(".", "/")
    return f"{stem}.py" in names or f"{stem}/__init__.py" in names


def test_every_imported_planner_module_is_in_the_wheel(names: set[str]) -> None:
    sources = sorted(SOURCE.rglob("*.py"))
    assert len(sources) > 20
    imported = set()
    for path in sources:
        for name in _imported_modules(path):
            if name == "planner" or name.startswith("planner."):
                imported.add((name, path.relative_to(REPO).as_posix()))
    # `from planner.x import name`: name is a module when the source has a file for it, or when it is
    # a package's own name; attributes (functions, classes) are neither.
    modules = {(name, where) for name, where in imported
               if _module_file(name, REPO) is not None or name.count(".") == 0}
    assert any(name == "planner.stack" for name, _ in modules)  # imported lazily, inside functions
    missing = sorted(f"{name} (imported by {where})" for name, where in modules
                     if not _wheel_has_module(name, names))
    assert missing == [], missing
    # Every source file too, imported or not (the console script's module, say).
    files = sorted(p.relative_to(REPO).as_posix() for p in sources)
    assert [f for f in files if f not in names] == []


def _loaded_data_files() -> set[tuple[str, str]]:
    """(package, file name) of every data file the code loads with importlib.resources: the package of
    each resources.files("PKG") call, with every literal file name ending in .toml in that module (the
    loaders take the name as a parameter: facts._load("space.toml"))."""
    loaded = set()
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        packages = {node.args[0].value for node in ast.walk(tree)
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "files" and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)}
        data = {node.value for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and re.fullmatch(r"[\w-]+\.toml", node.value)}
        loaded.update((package, name) for package in packages for name in data)
    return loaded


def test_every_data_file_the_code_loads_is_in_the_wheel(names: set[str]) -> None:
    loaded = _loaded_data_files()
    assert ("planner.models", "space.toml") in loaded and ("planner.models", "devices.toml") in loaded
    missing = sorted(f"{package.replace('.', '/')}/{name}" for package, name in loaded
                     if f"{package.replace('.', '/')}/{name}" not in names)
    assert missing == [], missing
    # Every model file of the repository's models/ folder is shipped, under planner/models/.
    shipped = {f"planner/models/{p.name}" for p in (REPO / "models").glob("*.toml")}
    assert len(shipped) >= 5 and shipped <= names, sorted(shipped - names)


def test_no_top_level_name_but_planner(wheel: Path, names: set[str]) -> None:
    top = {name.split("/")[0] for name in names}
    dist_info = [t for t in top if t.endswith(".dist-info")]
    assert len(dist_info) == 1
    assert top - set(dist_info) == {"planner"}
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read(f"{dist_info[0]}/top_level.txt").decode().split() == ["planner"]


def test_the_wheel_alone_imports_every_module_and_loads_every_data_file(wheel: Path, tmp_path: Path) -> None:
    """The wheel unpacked alone on the path (the checkout is not on it): every module imports, and every
    model file loads. `check --libvirt` from a wheel without planner.stack crashed with ImportError."""
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
        modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in zf.namelist()
                         if n.endswith(".py"))
    code = "\n".join([
        "import importlib, sys",
        f"for name in {modules!r}:",
        "    module = importlib.import_module(name)",
        f"    assert module.__file__.startswith({str(unpacked)!r}), module.__file__",
        "from planner.checker import check; from planner.facts import facts",
        "facts.space_exclusions(), facts.controller_models(), facts.machines(), facts.catalogue_keys()",
        "facts._firmware_table(), check._space_exclusions()",
    ])
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env=subprocess_env(PYTHONPATH=str(unpacked)), timeout=120)
    assert r.returncode == 0, r.stderr
