"""Print the requirements of pyproject.toml's [project] table, one a line, for `pip install --requirement`.

    python requirements.py pyproject.toml [EXTRA ...]

The core dependencies, then those of each named extra (an unknown extra is an error that names the extras
that exist). The images' build stages install these with the constraints before the kubetune wheel, so that
the large dependency layer depends on pyproject.toml and the constraints only, not on the package's sources.
Standard library only: it runs on the bare base image.
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject_path: str, extras: list[str]) -> list[str]:
    """Returns the core requirements followed by those of `extras`; raises SystemExit for an unknown extra."""
    with open(pyproject_path, "rb") as handle:
        project = tomllib.load(handle)["project"]
    lines = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"{pyproject_path}: no extra {extra!r}; extras: {sorted(optional)}")
        lines += optional[extra]
    return lines


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
