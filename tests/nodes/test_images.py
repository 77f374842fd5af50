"""Loading images into the real nodes' runtimes, without a registry."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.kube.harness import LocalCluster
from tests.kube.node_images import write_docker_archive

pytestmark = pytest.mark.cluster


def _tiny_archive(directory: Path, ref: str) -> Path:
    layer = directory / "layer.tar"
    marker = directory / "marker"
    marker.write_text(ref)
    with tarfile.open(layer, "w") as archive:
        archive.add(marker, arcname="marker")
    destination = directory / f"{ref.rsplit(':', 1)[1]}.tar"
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
