"""Given the files that decide a pinned Go-built test part (hack/lib/go-module.sh), its cache key changes with any
of them, and a missing one fails the key, naming it, wherever it stands in the list (a key computed without a
file would reuse a binary built from other inputs). Runs the real shell function in bash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

HELPER = Path(__file__).resolve().parents[2] / "hack" / "lib" / "go-module.sh"


def key(folder: Path, *files: str) -> subprocess.CompletedProcess[str]:
    script = 'set -euo pipefail; source "$1"; shift; go_module_key "$@"'
    return subprocess.run(
        ["bash", "-c", script, "key", str(HELPER), str(folder), "part", *files],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_key_follows_every_file(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
    first = key(tmp_path, "a", "b", "c")
    assert first.returncode == 0 and first.stdout.startswith("part-"), first.stderr
    (tmp_path / "b").write_text("changed")
    assert key(tmp_path, "a", "b", "c").stdout != first.stdout


@pytest.mark.parametrize("order", [("a", "missing", "c"), ("a", "c", "missing")], ids=["middle", "last"])
def test_a_missing_file_fails_the_key_naming_it(tmp_path: Path, order: tuple[str, ...]) -> None:
    for name in ("a", "c"):
        (tmp_path / name).write_text(name)
    done = key(tmp_path, *order)
    assert done.returncode != 0 and done.stdout == "", done.stdout
    assert f"{tmp_path}/missing does not exist" in done.stderr, done.stderr
