"""The volumes a worker pod uses, on a real kubelet, for a non-root container with a read-only root
filesystem: a ConfigMap, a memory-backed /dev/shm, a scratch emptyDir, and a local PersistentVolume that
outlives the pods (a checkpoint written by one pod is read by the next)."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from tests.kube.harness import LocalCluster
from tests.nodes.conftest import RunPod, terminated_state
from tests.nodes.pods import restricted_pod

pytestmark = pytest.mark.cluster

VOLUMES_SCRIPT = """
import json, os, pathlib
mounts = {line.split()[1]: line.split()[2] for line in open('/proc/mounts')}
pathlib.Path('/dev/shm/block').write_bytes(b'x' * (32 << 20))
pathlib.Path('/scratch/out').write_text('written')
result = {
    'config': pathlib.Path('/config/job.json').read_text(),
    'shm': mounts.get('/dev/shm'),
    'shm_bytes': os.path.getsize('/dev/shm/block'),
    'scratch': pathlib.Path('/scratch/out').read_text(),
}
pathlib.Path('/dev/termination-log').write_text(json.dumps(result))
"""


def test_configmap_shm_and_scratch_volumes(
    real_node_cluster: LocalCluster, real_node_namespace: str, node_test_image: str, run_pod: RunPod
) -> None:
    client.CoreV1Api(real_node_cluster.api_client()).create_namespaced_config_map(
        real_node_namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="job"), data={"job.json": '{"steps": 3}'}),
    )
    volumes = [
        {"name": "config", "configMap": {"name": "job"}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    mounts = [
        {"name": "config", "mountPath": "/config", "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": "/scratch"},
    ]
    pod = run_pod(
        restricted_pod(
            "volumes",
            node_test_image,
            VOLUMES_SCRIPT,
            memory_limit="256Mi",
            volumes=volumes,
            volume_mounts=mounts,
        )
    )
    terminated = terminated_state(pod)
    assert pod.status.phase == "Succeeded", terminated
    assert json.loads(terminated.message) == {
        "config": '{"steps": 3}',
        "shm": "tmpfs",
        "shm_bytes": 32 << 20,
        "scratch": "written",
    }


def test_local_persistent_volume_outlives_its_pods(
    real_node_cluster: LocalCluster, real_node_namespace: str, node_test_image: str, run_pod: RunPod
) -> None:
    volume_name = f"{real_node_namespace}-ckpt"[:63]
    directory = real_node_cluster.add_local_persistent_volume(volume_name, "real-1")
    client.CoreV1Api(real_node_cluster.api_client()).create_namespaced_persistent_volume_claim(
        real_node_namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="ckpt"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                storage_class_name="local",
                volume_name=volume_name,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    volumes = [{"name": "ckpt", "persistentVolumeClaim": {"claimName": "ckpt"}}]
    mounts = [{"name": "ckpt", "mountPath": "/ckpt"}]
    write = "import pathlib; pathlib.Path('/ckpt/step').write_text('42')"
    read = "import pathlib; pathlib.Path('/dev/termination-log').write_text(pathlib.Path('/ckpt/step').read_text())"
    first = run_pod(restricted_pod("writer", node_test_image, write, volumes=volumes, volume_mounts=mounts))
    assert first.status.phase == "Succeeded", terminated_state(first)
    second = run_pod(restricted_pod("reader", node_test_image, read, volumes=volumes, volume_mounts=mounts))
    assert second.status.phase == "Succeeded", terminated_state(second)
    assert terminated_state(second).message == "42"
    # The volume's node affinity placed both pods on its node; the data is on that node's disk.
    assert first.spec.node_name == second.spec.node_name == "real-1"
    assert (directory / "step").read_text() == "42"
