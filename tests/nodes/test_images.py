"""Loading images into the real nodes' runtimes, without a registry."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.kube.harness import LocalCluster
from tests.kube.node_images import write_docker_archive

pytestmark = pytest.mark.cluster


def _tiny_archive(directory: Path, ref: str, content: str = "") -> Path:
    layer = directory / "layer.tar"
    marker = directory / "marker"
    marker.write_text(ref + content)
    with tarfile.open(layer, "w") as archive:
        archive.add(marker, arcname="marker")
    destination = directory / f"{ref.rsplit(':', 1)[1]}{content}.tar"
    write_docker_archive(layer, ref, {"Cmd": ["/marker"]}, destination)
    return destination


def test_load_image_reaches_every_node_and_replaces_older_tags(
    real_node_cluster: LocalCluster, tmp_path: Path
) -> None:
    old = "kubetune.local/load-test:old"
    new = "kubetune.local/load-test:new"
    real_node_cluster.load_image(_tiny_archive(tmp_path, old), old)
    for node in real_node_cluster.real_nodes:
        assert old in node.image_refs()
    real_node_cluster.load_image(_tiny_archive(tmp_path, new), new)
    for node in real_node_cluster.real_nodes:
        refs = node.image_refs()
        assert new in refs and old not in refs, refs
        # The sandbox image is another repository and stays.
        assert node.sandbox_image.ref in refs
    for node in real_node_cluster.real_nodes:
        node.load_image(_tiny_archive(tmp_path, new), None)  # a plain re-import is fine too


def test_a_rebuilt_image_under_the_same_tag_leaves_no_copy_of_the_old_build(
    real_node_cluster: LocalCluster, tmp_path: Path
) -> None:
    """A rebuild keeps its tag. The CRI plugin gives each image an ID reference as well (`sha256:...`); left
    behind, the old build's would keep its layers on every node's disk for good (a trainer image: 6.6 GB)."""
    ref = "kubetune.local/rebuilt:latest"
    node = real_node_cluster.real_nodes[0]
    node.load_image(_tiny_archive(tmp_path, ref, "-first"), ref)
    first = node._image_digests()[ref]
    node.load_image(_tiny_archive(tmp_path, ref, "-second"), ref)
    digests = node._image_digests()
    assert digests[ref] != first
    assert first not in digests.values(), digests
    # The new build's own ID reference stays: the kubelet finds images by it.
    assert any(r.startswith("sha256:") and d == digests[ref] for r, d in digests.items()), digests
