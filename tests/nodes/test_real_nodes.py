"""Real nodes come up beside the KWOK GPU nodes, and run locked-down pods to completion."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest
from kubernetes import client

from tests.kube.harness import LocalCluster
from tests.kube.node_fixtures import REAL_NODES
from tests.nodes.conftest import RunPod, terminated_state
from tests.nodes.pods import RUN_AS_USER, restricted_pod

pytestmark = pytest.mark.cluster


def test_real_and_gpu_nodes_are_ready_with_node_addresses(real_node_cluster: LocalCluster) -> None:
    core = client.CoreV1Api(real_node_cluster.api_client())
    real = core.list_node(label_selector="type=real").items
    assert sorted(n.metadata.name for n in real) == [f"real-{i}" for i in range(1, REAL_NODES + 1)]
    for node in real:
        assert real_node_cluster.node_condition(node.metadata.name) == "True"
        internal = [a.address for a in node.status.addresses if a.type == "InternalIP"]
        assert internal, f"{node.metadata.name} has no InternalIP: {node.status.addresses}"
        assert not ipaddress.ip_address(internal[0]).is_loopback
        assert node.status.node_info.kubelet_version == "v1.36.3"
        assert node.status.node_info.container_runtime_version.startswith("containerd://")
    gpu = core.list_node(label_selector="type=kwok").items
    assert gpu and all(n.status.allocatable.get("nvidia.com/gpu") for n in gpu)
    print(
        f"cluster with {len(real)} real and {len(gpu)} KWOK nodes started in {real_node_cluster.startup_seconds:.1f}s"
    )


def test_locked_down_pod_completes_with_termination_message_and_logs(
    real_node_cluster: LocalCluster, real_node_namespace: str, node_test_image: str, run_pod: RunPod
) -> None:
    script = (
        "import os, pathlib\n"
        "print('hello from', os.getuid(), flush=True)\n"
        "try:\n"
        "    pathlib.Path('/probe').write_text('x')\n"
        "    rootfs = 'writable'\n"
        "except OSError:\n"
        "    rootfs = 'read-only'\n"
        "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
        "pathlib.Path('/dev/termination-log').write_text(f'uid={os.getuid()} rootfs={rootfs} caps={caps}')\n"
    )
    pod = run_pod(restricted_pod("locked-down", node_test_image, script))
    assert pod.status.phase == "Succeeded", pod.status
    assert pod.spec.node_name.startswith("real-")
    assert pod.status.pod_ip and ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(
        "10.245.0.0/16"
    )
    terminated = terminated_state(pod)
    assert terminated.reason == "Completed" and terminated.exit_code == 0
    assert terminated.message == f"uid={RUN_AS_USER} rootfs=read-only caps=0000000000000000"
    logs = real_node_cluster.kubectl("logs", "-n", real_node_namespace, "locked-down").stdout
    assert logs.strip() == f"hello from {RUN_AS_USER}"


def test_container_over_its_memory_limit_is_oom_killed(node_test_image: str, run_pod: RunPod) -> None:
    # 400 MB touched page by page against a 64 MiB limit: only the kernel's OOM killer stops it.
    script = "block = bytearray(400 * 1024 * 1024)\nprint('survived', len(block))\n"
    pod = run_pod(restricted_pod("hog", node_test_image, script, memory_limit="64Mi"))
    assert pod.status.phase == "Failed", pod.status
    terminated = terminated_state(pod)
    assert terminated.reason == "OOMKilled", terminated
    assert terminated.exit_code == 137


def test_sigterm_on_deletion_is_delivered_within_the_grace_period(
    real_node_cluster: LocalCluster, real_node_namespace: str, node_test_image: str
) -> None:
    # The container checkpoints on SIGTERM (here: writes its termination message) and exits 75, as the
    # trainer does on suspend. A finalizer holds the Pod object so that its final status can be read.
    script = (
        "import pathlib, signal, sys, time\n"
        "def stop(signum, frame):\n"
        "    pathlib.Path('/dev/termination-log').write_text('checkpointed on SIGTERM')\n"
        "    sys.exit(75)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    time.sleep(1)\n"
    )
    hold = "kubetune.test/hold"
    core = client.CoreV1Api(real_node_cluster.api_client())
    name = "graceful"
    core.create_namespaced_pod(
        real_node_namespace,
        restricted_pod(name, node_test_image, script, grace_seconds=30, finalizers=[hold]),
    )
    real_node_cluster.wait_for_pod_phase(real_node_namespace, name, ["Running"], 120)
    deadline = time.monotonic() + 30
    while "ready" not in real_node_cluster.kubectl("logs", "-n", real_node_namespace, name).stdout:
        assert time.monotonic() < deadline, "the container never printed `ready`"
        time.sleep(0.5)
    # `kubectl exec` goes API server -> kubelet (node address) -> containerd's streaming server.
    exec_result = real_node_cluster.kubectl("exec", "-n", real_node_namespace, name, "--", "id", "-u")
    assert exec_result.stdout.strip() == str(RUN_AS_USER)
    began = time.monotonic()
    core.delete_namespaced_pod(name, real_node_namespace)
    try:
        pod = real_node_cluster.wait_for_pod_phase(real_node_namespace, name, ["Failed", "Succeeded"], 60)
        elapsed = time.monotonic() - began
        terminated = terminated_state(pod)
        assert terminated is not None and terminated.exit_code == 75, pod.status
        assert terminated.message == "checkpointed on SIGTERM"
        assert elapsed < 30, f"the container took {elapsed:.0f}s to stop: SIGKILL after the grace period?"
    finally:
        core.patch_namespaced_pod(name, real_node_namespace, {"metadata": {"finalizers": None}})


def test_cpu_pods_land_on_real_nodes_and_gpu_pods_on_gpu_nodes(
    real_node_cluster: LocalCluster, real_node_namespace: str, node_test_image: str
) -> None:
    core = client.CoreV1Api(real_node_cluster.api_client())
    for name, resources in (("cpu", {}), ("gpu", {"limits": {"nvidia.com/gpu": "1"}})):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": node_test_image,
                        "command": ["sleep", "60"],
                        "resources": resources,
                    }
                ]
            },
        }
        real_node_cluster.kubectl("apply", "-n", real_node_namespace, "-f", "-", input=json.dumps(pod))
    cpu = real_node_cluster.wait_for_pod_phase(real_node_namespace, "cpu", ["Running"], 60)
    gpu = real_node_cluster.wait_for_pod_phase(real_node_namespace, "gpu", ["Running"], 60)
    assert cpu.spec.node_name.startswith("real-")
    assert gpu.spec.node_name.startswith("kwok-gpu-")
    assert any(t.key == "nvidia.com/gpu" for t in gpu.spec.tolerations)
    core.delete_namespaced_pod("cpu", real_node_namespace, grace_period_seconds=0)
