"""Print pip constraints pinning every runtime dependency of pyproject.toml to its declared floor, so
CI can test the lowest versions we claim to support. A dependency without a plain '>=' floor is an
error: every floor we declare is one we test."""

import re
import sys
import tomllib

with open("pyproject.toml", "rb") as fh:
    dependencies = tomllib.load(fh)["project"]["dependencies"]
for dependency in dependencies:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)", dependency.replace(" ", ""))
    if m is None:
        sys.exit(f"pyproject.toml: dependency '{dependency}' has no plain '>=' floor to test")
    print(f"{m.group(1)}=={m.group(2)}")
