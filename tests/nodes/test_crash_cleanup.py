"""A harness killed with SIGKILL leaves its real nodes' containers, shims, mounts, cgroups and network
namespaces behind; the next LocalCluster removes all of them. Runs its own cluster in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kube.binaries import REPO_ROOT
from tests.kube.harness import LocalCluster
from tests.kube.host_cleanup import cgroup_roots
from tests.kube.netns import NETNS_DIR

pytestmark = pytest.mark.cluster

CRASHING_HARNESS = """
import json, sys, time
from tests.kube.harness import LocalCluster
from tests.kube.node_images import python_image
cluster = LocalCluster(gpu_nodes=0, real_nodes=1)
cluster.start()
image = python_image()
cluster.load_image(image.path, image.ref)
pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"}, "spec": {
    "nodeSelector": {"type": "real"},
    "containers": [{"name": "main", "image": image.ref, "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"]}]}}
cluster.kubectl("apply", "--namespace=default", "-f", "-", input=json.dumps(pod))
cluster.wait_for_pod_phase("default", "sleeper", ["Running"], 120)
print(cluster.workdir, cluster.real_nodes[0].cgroup_root, flush=True)
time.sleep(3600)
"""


def _mounts_under(directory: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if directory in line]


def _processes_mentioning(directory: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if directory.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_next_cluster_removes_what_a_killed_harness_left(node_test_image: str) -> None:
    # (node_test_image: the image is built once by the session fixture, not in the subprocess.)
    harness = subprocess.Popen(
        [sys.executable, "-c", CRASHING_HARNESS],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert harness.stdout is not None
    line = harness.stdout.readline()
    if not line:
        harness.wait(timeout=30)
        pytest.fail(f"the crashing harness did not start its cluster: {harness.stderr.read()[-3000:]}")
    workdir, cgroup_root = line.split()
    harness.send_signal(signal.SIGKILL)
    harness.wait(timeout=30)
    namespace_prefix = cgroup_root.rsplit("-", 1)[0]
    # What the parent-death signal cannot reach: the container, its shim, mounts, cgroups, namespaces.
    assert _processes_mentioning(workdir), "expected the node's containerd shim to outlive the harness"
    assert _mounts_under(workdir)
    assert cgroup_root in cgroup_roots("kt-*")
    assert any(p.name.startswith(namespace_prefix) for p in NETNS_DIR.iterdir())

    LocalCluster().stop()  # its constructor removes what dead owners left (it starts nothing)

    assert not _processes_mentioning(workdir)
    assert not _mounts_under(workdir)
    assert cgroup_root not in cgroup_roots("kt-*")
    assert not any(p.name.startswith(namespace_prefix) for p in NETNS_DIR.iterdir())
    assert not Path(workdir).exists()
