"""pytest plugin: a cluster with real nodes (kubelet + containerd + runc) beside the KWOK GPU nodes.

Fixtures:
- `real_node_cluster` (session): a LocalCluster with 2 real nodes (`real-1`, `real-2`, label `type=real`)
  and 2 KWOK GPU nodes, with a pod network, kube-proxy and CoreDNS (see tests/kube/netns.py). The GPU
  nodes are tainted `nvidia.com/gpu=present:NoSchedule` and pods that request `nvidia.com/gpu` get the
  toleration automatically (ExtendedResourceToleration, as on GKE): CPU pods run on the real nodes. Load
  images with `real_node_cluster.load_image(tar)`; simulate node loss with
  `real_node_cluster.real_node("real-2").stop()` (and `.start()` to bring it back).
- `node_test_image` (session): the reference of a Debian minbase + python3 image, loaded into every real
  node (tests/kube/node_images.py).
- `real_node_namespace` (function): a fresh namespace in that cluster, deleted afterwards.

A cluster with real nodes needs root, the node packages and binaries (hack/nodes/install-packages.sh,
hack/nodes/build.sh) and the control plane (hack/cluster/build.sh). When any of that is missing the
tests FAIL with the reason: a real-node test that quietly skips would hide exactly what it exists to check.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.kube.binaries import BinariesNotFound, find_binaries
from tests.kube.harness import LocalCluster, wait_for
from tests.kube.node_binaries import NodeBinariesNotFound, find_node_bin_dir
from tests.kube.node_images import python_image

REAL_NODES = 2
REAL_NODE_SELECTOR = {"type": "real"}


@pytest.fixture(scope="session")
def real_node_cluster() -> Iterator[LocalCluster]:
    """The session's cluster with real nodes; started on first use, stopped at the end of the session."""
    if os.geteuid() != 0:
        pytest.fail("real nodes need root (network namespaces, cgroups, mounts); run the tests as root")
    try:
        binaries = find_binaries()
        node_bin_dir = find_node_bin_dir()
    except (BinariesNotFound, NodeBinariesNotFound) as error:
        pytest.fail(f"cannot start a cluster with real nodes: {error}", pytrace=False)
    cluster = LocalCluster(
        binaries,
        real_nodes=REAL_NODES,
        node_bin_dir=node_bin_dir,
        cache_node_images=True,
        taint_gpu_nodes=True,
        keep_workdir=os.environ.get("KUBETUNE_KEEP_CLUSTER_DIR") == "1",
    )
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def node_test_image(real_node_cluster: LocalCluster) -> str:
    """Builds (or reuses) the python3 test image, loads it into every real node; returns its reference."""
    image = python_image()
    real_node_cluster.load_image(image.path, image.ref)
    return image.ref


@pytest.fixture
def real_node_namespace(real_node_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace in the real-node cluster, named after the test; deleted (without waiting) afterwards."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(real_node_cluster.api_client())
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        lambda: core.read_namespaced_service_account("default", name), 30, f"{name}/default ServiceAccount"
    )
    yield name
    core.delete_namespace(name, propagation_policy="Background")
