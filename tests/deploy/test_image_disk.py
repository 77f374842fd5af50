"""Given an image cache holding an earlier tar of the trainer, hack/images/build.sh's disk check sizes the next
build by that tar, although the prune before the build (one tar kept by default, the new one) removes it.

Runs the script's own lines (its prune and room-check functions and the start of `build`, read from the file) in
bash on a temporary cache with a sparse tar; `df` is a shell function reporting a fixed free space, the one stand-in
(no disk of the test machine has a known free space). No Docker is involved.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

BUILD_SH = Path(__file__).resolve().parents[2] / "hack" / "images" / "build.sh"

HARNESS = r"""
set -euo pipefail
script="$1"; images_dir="$2"; cache="$2"; keep_tars=1
log() { printf '%s\n' "$*"; }
df() { if [[ "$*" == *avail* ]]; then printf 'Avail\n%s\n' "$((50 << 20))"; else printf 'Mounted on\n/cache\n'; fi; }
eval "$(sed -n '/^last_tar_bytes() {/,/^}/p; /^prune_tars() {/,/^}/p; /^need_room() {/,/^}/p' "$script")"
start_of_build() {
  local name=$1 room_gb=$2
  eval "$(sed -n '/^  prune_tars "\$name"/,/^  need_room /p; /^  local last_bytes$/,/^  need_room /p' "$script" \
    | awk '!seen[$0]++')"
  echo "room for $name"
}
start_of_build trainer-cpu 7
"""


def test_the_room_check_sizes_a_build_by_the_earlier_tar_that_the_prune_removes(tmp_path: Path) -> None:
    earlier = tmp_path / "trainer-cpu-oldkey.tar"
    with earlier.open("wb") as tar:
        tar.truncate(30 << 30)  # sparse: a 30 GB trainer tar of an earlier key
    done = subprocess.run(
        ["bash", "-c", HARNESS, "harness", str(BUILD_SH), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    said = done.stdout + done.stderr
    assert not earlier.exists(), "the prune keeps no tar of another key by default"
    assert done.returncode == 1, said
    assert "94 GB needed (3 x its 31 GB" in said and "50 GB free" in said, said
