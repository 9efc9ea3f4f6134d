"""Which packages the distribution holds; everything else is in pyproject.toml.

Every package named planner* is found, so a new subpackage cannot be left out. models/ stays at the
top of the repository and is installed inside ours as planner.models, so the wheel holds no top-level
name but planner (a module called models would clash with other distributions)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["planner", "planner.*"]), "planner.models"],
    package_dir={"planner.models": "models"},
    package_data={"planner.models": ["*.toml"]},
)
