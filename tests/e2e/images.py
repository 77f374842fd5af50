"""The operator and trainer images for the end-to-end tests: built (or reused) by hack/images/build.sh and
imported into every real node's containerd (`LocalCluster.load_image`: re-imported when the archive changed,
layer blobs discarded once unpacked, one node after the other)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.kube.harness import LocalCluster

REPO = Path(__file__).resolve().parents[2]
ARCHIVE_LABEL = "kubetune.test/archive"


@dataclass(frozen=True)
class Image:
    """A docker-archive tar and the reference it carries."""

    archive: Path
    ref: str


@dataclass(frozen=True)
class Images:
    operator: Image
    trainer: Image


class ImageBuildFailed(RuntimeError):
    """hack/images/build.sh failed or printed no image lines."""


def build_images(timeout: float = 3600) -> Images:
    """Runs hack/images/build.sh (instant when its cache holds the images of the current sources); returns
    the two images from its last two stdout lines. Raises ImageBuildFailed with the script's error tail."""
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "images" / "build.sh")],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise ImageBuildFailed(
            f"hack/images/build.sh failed ({result.returncode}); its error output ends with:\n"
            f"{result.stderr[-4000:]}"
        )
    found: dict[str, Image] = {}
    for line in result.stdout.splitlines()[-2:]:
        name, _, rest = line.partition("=")
        archive, _, ref = rest.partition(" ")
        if name in ("operator", "trainer") and Path(archive).is_file() and ref:
            found[name] = Image(Path(archive), ref)
    if set(found) != {"operator", "trainer"}:
        raise ImageBuildFailed(
            f"hack/images/build.sh printed no operator=/trainer= lines:\n{result.stdout[-2000:]}"
        )
    return Images(found["operator"], found["trainer"])


def load_into_nodes(cluster: LocalCluster, image: Image) -> dict[str, float]:
    """Imports `image` into every running real node that lacks this very archive; returns the seconds each
    node took (0 when it already had it). Raises ContainerdError."""
    return cluster.load_image(image.archive, image.ref)
