"""The operator and trainer images for the end-to-end tests: built (or reused) by hack/images/build.sh and
imported into every real node's containerd.

Two things the generic `LocalCluster.load_image` does not do, both needed for a 7 GB trainer image:
- A rebuilt image keeps its tag (ghcr.io/kubetune/trainer:<version>-cpu) but not its contents, so a node's
  cached containerd root could hold an older build under the same name. Each imported image is labelled
  with the archive it came from; a node whose label differs imports again.
- After the import has unpacked the layers into snapshots, the layer blobs themselves are only needed to
  push or export the image. They are removed from the node's content store (what containerd 1.7 calls
  `discard_unpacked_layers`; containerd 1.6's `ctr images import` has no such option), which halves the
  disk an image takes per node (7 GB instead of 14 GB for the trainer). Nodes import one after the other.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.kube.containerd import ContainerdError, ctr
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


def _labels_of(node_dir: Path, ref: str) -> dict[str, str] | None:
    """The labels of image `ref` in the node's containerd, None when it has no such image."""
    for line in ctr(node_dir, "images", "list").splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == ref:
            labels = fields[-1] if "=" in fields[-1] else ""
            return dict(item.split("=", 1) for item in labels.split(",") if "=" in item)
    return None


def _discard_layer_blobs(node_dir: Path, ref: str) -> int:
    """Removes the layer blobs of `ref` (unpacked already) from the node's content store; returns how many."""
    listing = [line.split() for line in ctr(node_dir, "images", "list").splitlines()[1:]]
    (manifest_digest,) = [fields[2] for fields in listing if fields and fields[0] == ref]
    manifest = json.loads(ctr(node_dir, "content", "get", manifest_digest))
    layers = [layer["digest"] for layer in manifest.get("layers", [])]
    present = set(ctr(node_dir, "content", "list", "--quiet").split())
    doomed = [digest for digest in layers if digest in present]
    if doomed:
        ctr(node_dir, "content", "rm", *doomed)
    return len(doomed)


def load_into_nodes(cluster: LocalCluster, image: Image) -> dict[str, float]:
    """Imports `image` into every running real node that lacks this very archive; returns the seconds each
    node took (0 when it already had it). Raises ContainerdError."""
    wanted = image.ref if "/" in image.ref.split(":")[0] else f"docker.io/library/{image.ref}"

    # A hard link holds the archive while it is read: a build of other sources (another checkout sharing
    # $KUBETUNE_CACHE) deletes the tars of every other key.
    held = cluster.workdir / f"held-{image.archive.name}"
    if not held.exists():
        os.link(image.archive, held)
    try:
        return _load_each(cluster, image, held, wanted)
    finally:
        held.unlink(missing_ok=True)


def _load_each(cluster: LocalCluster, image: Image, archive: Path, wanted: str) -> dict[str, float]:
    def load(node_dir: Path) -> float:
        started = time.monotonic()
        labels = _labels_of(node_dir, wanted)
        if labels is not None and labels.get(ARCHIVE_LABEL) == image.archive.name:
            return 0.0
        # No `images remove` of an older build first: the import moves the tag, shares the layers that did not
        # change (and finishes an import that was interrupted), and containerd collects the rest.
        ctr(node_dir, "images", "import", "--all-platforms", str(archive), timeout=3600)
        if _labels_of(node_dir, wanted) is None:
            raise ContainerdError(f"importing {image.archive} did not create {wanted}")
        _discard_layer_blobs(node_dir, wanted)
        ctr(node_dir, "images", "label", wanted, f"{ARCHIVE_LABEL}={image.archive.name}")
        return time.monotonic() - started

    # One node after the other: a node holds the layer blobs and their unpacked snapshots at once only until
    # the blobs are discarded, so the disk peak is one image more than the result, not one image per node.
    return {node.name: round(load(node.node_dir), 1) for node in cluster.real_nodes if node.running}
