"""Given an image cache and the disks under it, hack/images/build.sh's disk check asks each disk for the room
the build takes there: the image and Docker's export copy on Docker's data root's filesystem, the tar on the
tars' filesystem (three times the image when one disk holds both), sized by an earlier tar of the image,
although the prune before the build (one tar kept by default, the new one) removes it.

Runs the script's own lines (its prune and room-check functions and the start of `build`, read from the file) in
bash on a temporary cache with a sparse tar. The stand-ins, as no disk of the test machine has a known free
space: `df` reports a fixed free space and mount point per disk, `stat -c %d` a device number per disk (the
data root and the tars share one unless the test puts them apart), and `docker info` answers the data root.
No Docker is involved.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

BUILD_SH = Path(__file__).resolve().parents[2] / "hack" / "images" / "build.sh"

HARNESS = r"""
set -euo pipefail
script="$1"; images_dir="$2"; cache="$2"; docker_root="$3"; keep_tars=1
log() { printf '%s\n' "$*"; }
disk_of() { if [[ "$APART" == 1 && "$1" == "$docker_root"* ]]; then echo docker; else echo tars; fi; }
df() {
  local disk; disk=$(disk_of "${*: -1}")
  local free; if [[ $disk == docker ]]; then free=$FREE_DOCKER_GB; else free=$FREE_TARS_GB; fi
  if [[ "$*" == *avail* ]]; then printf 'Avail\n%s\n' "$((free << 20))"; else printf 'Mounted on\n/%s\n' "$disk"; fi
}
stat() { if [[ "$(disk_of "${*: -1}")" == docker ]]; then echo 2; else echo 1; fi; }
docker() { [[ "$*" == "info --format {{.DockerRootDir}}" ]] && echo "$docker_root"; }
eval "$(sed -n '/^last_tar_bytes() {/,/^}/p; /^prune_tars() {/,/^}/p; /^check_room() {/,/^}/p;
  /^docker_data_root() {/,/^}/p; /^need_room() {/,/^}/p' "$script")"
start_of_build() {
  local name=$1 room_gb=$2
  eval "$(sed -n '/^  prune_tars "\$name"/,/^  need_room /p; /^  local last_bytes$/,/^  need_room /p' "$script" \
    | awk '!seen[$0]++')"
  echo "room for $name"
}
start_of_build trainer-cpu 7
"""


def room_check(tmp_path: Path, apart: bool, free_tars_gb: int, free_docker_gb: int) -> tuple[int, str]:
    """Run the start of the trainer's build after a 30 GB trainer tar of an earlier key; returns the exit
    status and what it said."""
    images = tmp_path / "images"
    images.mkdir()
    earlier = images / "trainer-cpu-oldkey.tar"
    with earlier.open("wb") as tar:
        tar.truncate(30 << 30)  # sparse: a 30 GB trainer tar of an earlier key
    done = subprocess.run(
        ["bash", "-c", HARNESS, "harness", str(BUILD_SH), str(images), str(tmp_path / "docker-data")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "APART": "1" if apart else "0",
            "FREE_TARS_GB": str(free_tars_gb),
            "FREE_DOCKER_GB": str(free_docker_gb),
        },
    )
    assert not earlier.exists(), "the prune keeps no tar of another key by default"
    return done.returncode, done.stdout + done.stderr


def test_the_room_check_sizes_a_build_by_the_earlier_tar_that_the_prune_removes(tmp_path: Path) -> None:
    # Given Docker's data root on the tars' disk, with 50 GB free: the image, its export copy and the tar
    status, said = room_check(tmp_path, apart=False, free_tars_gb=50, free_docker_gb=0)
    assert status == 1, said
    assert "94 GB needed (3 x its 31 GB" in said and "50 GB free on /tars" in said, said
    assert "KUBETUNE_CACHE" in said, said


def test_on_one_disk_the_three_copies_fitting_is_room_enough(tmp_path: Path) -> None:
    status, said = room_check(tmp_path, apart=False, free_tars_gb=94, free_docker_gb=0)
    assert status == 0 and "room for trainer-cpu" in said, said


@pytest.mark.parametrize(
    ("free_tars_gb", "free_docker_gb", "refused"),
    [
        # Docker's disk too small, although the tars' disk would hold all three copies (the old check passed)
        (100, 20, "63 GB needed (2 x its 31 GB in Docker's data root"),
        # the tars' disk too small for the tar, although Docker's disk has room for everything
        (20, 100, "32 GB needed (its 31 GB tar in"),
        # each disk with room for its own part: the build goes on, though neither holds all three copies
        (40, 70, None),
    ],
)
def test_with_docker_on_another_disk_each_disk_is_checked_for_its_own_part(
    tmp_path: Path, free_tars_gb: int, free_docker_gb: int, refused: str | None
) -> None:
    status, said = room_check(tmp_path, apart=True, free_tars_gb=free_tars_gb, free_docker_gb=free_docker_gb)
    if refused is None:
        assert status == 0 and "room for trainer-cpu" in said, said
        return
    assert status == 1 and refused in said, said
    if free_docker_gb < free_tars_gb:
        assert f"{free_docker_gb} GB free on /docker" in said and "KUBETUNE_DOCKER_DATA" in said, said
        assert str(tmp_path / "docker-data") in said, said
    else:
        assert f"{free_tars_gb} GB free on /tars" in said and "KUBETUNE_CACHE" in said, said
