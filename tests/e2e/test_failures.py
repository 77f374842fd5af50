"""What real nodes do to a job that KWOK cannot: the kernel's OOM killer, and a node that disappears."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.e2e.conftest import PodRecorder, diagnostics, get_job, tiny_job, wait_for_phase
from tests.kube.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200, func_only=True)]

# The operator force-deletes a worker stuck Terminating on a lost node 30 s (the job's grace period here) + 30 s
# (the release's recovery.terminatingTimeoutSeconds, see conftest) after deleting it; then the next gang
# starts and needs a minute or two to import and rendezvous on this 2-core machine.
NODE_LOSS_BOUND_SECONDS = 300


# A BERT config with a 16M-token vocabulary: the word embedding alone is 16M x 64 fp32 = 4 GiB, more than the
# worker's limit, and the trainer allocates and initialises it in one go when it loads the model.
OVERSIZED_VOCAB = 16_000_000
OOM_MEMORY_LIMIT = "3Gi"


def _oversized_model_overlay(
    cluster: LocalCluster, namespace: str, tiny_model: Path, overlay: dict[str, Any]
) -> dict[str, Any]:
    """`overlay` with /assets/model replaced by the tiny model's files under a config whose vocabulary is far
    too large: the stored weights no longer fit, so the trainer initialises a fresh 4 GiB embedding."""
    files = {p.name: p.read_bytes() for p in sorted(tiny_model.iterdir())}
    config = json.loads(files["config.json"])
    config["vocab_size"] = OVERSIZED_VOCAB
    files["config.json"] = json.dumps(config).encode()
    core: Any = client.CoreV1Api(cluster.api_client())
    binary = {name: base64.b64encode(data).decode() for name, data in files.items()}
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "oversized-model"}, "binaryData": binary}
    )
    volumes = [
        {"name": v["name"], "source": {"configMap": {"name": "oversized-model"}}}
        if v["name"] == "tiny-model"
        else v
        for v in overlay["volumes"]
    ]
    return {**overlay, "volumes": volumes}


def test_a_worker_far_over_its_memory_limit_is_oomkilled_and_the_status_names_the_pod(
    e2e_cluster: LocalCluster,
    e2e_namespace: str,
    tiny_assets: dict[str, Path],
    tiny_assets_volumes: dict[str, Any],
    pod_recorder: PodRecorder,
) -> None:
    """A model bigger than the worker's memory limit: the kernel's OOM killer ends the worker, and the job
    fails with OOMKilled and the pod's name.

    The excess comes in one allocation (the embedding), as in a real out-of-memory. A limit far below what
    merely importing torch needs would not do: under a cgroup v1 limit the kernel keeps evicting and
    re-reading the libraries' pages instead of killing (measured: no kill within 240 s at 64 MiB), so the
    limit here is above the imports' needs (3 Python processes) and far below the model's.
    """
    name = "oom"
    overlay = _oversized_model_overlay(e2e_cluster, e2e_namespace, tiny_assets["model"], tiny_assets_volumes)
    job = tiny_job(
        name,
        overlay,
        nodes=1,
        processes=1,
        extra_spec={"kubernetes": {"resources": {"memory": OOM_MEMORY_LIMIT}}},
    )
    e2e_cluster.kubectl("apply", "-n", e2e_namespace, "-f", "-", input=yaml.safe_dump(job))
    status = wait_for_phase(e2e_cluster, e2e_namespace, name, {"Succeeded", "Failed"}, 300)
    worker = f"{name}-worker-0"
    print(f"\n[e2e] OOM: {status.get('lastFailure')}")
    assert status["phase"] == "Failed", diagnostics(e2e_cluster, e2e_namespace, name)
    failure = status["lastFailure"]
    assert failure["reason"] == "OOMKilled", failure
    assert failure["pod"] == worker, failure
    assert pod_recorder.terminated[worker]["reason"] == "OOMKilled", pod_recorder.terminated


@pytest.mark.stops_a_node
def test_a_lost_node_does_not_hang_the_job(
    e2e_cluster: LocalCluster,
    e2e_namespace: str,
    tiny_assets_volumes: dict[str, Any],
    pod_recorder: PodRecorder,
) -> None:
    """real-2 (kubelet, kube-proxy, containerd and its containers) is stopped mid-run. Within a bounded time the
    job either runs a new gang on the remaining node or fails with a message that names the lost node."""
    cluster, namespace, name = e2e_cluster, e2e_namespace, "node-loss"
    job = tiny_job(
        name,
        tiny_assets_volumes,
        nodes=2,
        processes=1,
        # Long enough to be mid-training when the node goes: 60 epochs (780 steps) once ended before the stop.
        epochs=1000,
        extra_spec={
            "training": {"evalStrategy": "no"},
            # Both workers on distinct nodes, so that losing one node hits the gang.
            "kubernetes": {
                # Half a CPU each (the default request is 1): after the loss, the whole gang fits on the one
                # node left (2 CPUs, the operator's 0.1 among them), so "restart on the remaining capacity"
                # is possible at all.
                "resources": {"cpu": "500m"},
                "terminationGracePeriodSeconds": 30,
                "affinity": {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {"matchLabels": {"kubetune.io/job-name": name}},
                                },
                            }
                        ]
                    }
                },
            },
            "runPolicy": {"backoffLimit": 2},
        },
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))

    def step() -> int:
        return int(
            (get_job(cluster, namespace, name).get("status") or {}).get("progress", {}).get("step") or 0
        )

    try:
        wait_for(lambda: step() >= 10, 420, "10 steps of live progress")
    except Exception as error:
        raise AssertionError(f"{error}\n{diagnostics(cluster, namespace, name)}") from error
    nodes = {pod_recorder.nodes.get(f"{name}-worker-{i}") for i in range(2)}
    assert nodes == {"real-1", "real-2"}, f"the workers did not spread over both nodes: {pod_recorder.nodes}"
    attempt = int(get_job(cluster, namespace, name)["status"].get("attempt") or 0)

    node = cluster.real_node("real-2")
    lost_at = time.monotonic()
    node.stop()
    progress = (get_job(cluster, namespace, name).get("status") or {}).get("progress") or {}
    assert float(progress.get("percent") or 0) < 50, f"training nearly over when the node went: {progress}"
    try:
        messages: list[str] = []

        def outcome() -> dict[str, Any] | None:
            status: dict[str, Any] = get_job(cluster, namespace, name).get("status") or {}
            messages.append(str(status.get("message", "")))
            if status.get("phase") == "Failed":
                return status
            if int(status.get("attempt") or 0) > attempt and status.get("phase") in ("Running", "Succeeded"):
                return status
            return None

        try:
            status = wait_for(
                outcome, NODE_LOSS_BOUND_SECONDS, "a new gang on real-1, or a failure naming real-2"
            )
        except Exception as error:
            raise AssertionError(f"{error}\n{diagnostics(cluster, namespace, name)}") from error
        seconds = time.monotonic() - lost_at
        print(f"\n[e2e] node loss -> {status['phase']} (attempt {status.get('attempt')}) in {seconds:.0f} s")
        if status["phase"] == "Failed":
            assert "real-2" in str(status.get("message", "")) + str(status.get("lastFailure")), status
        else:
            # While the gang waited for the lost worker, the job said where it hung.
            assert any("on node real-2" in m for m in messages), sorted(set(messages))
            live = [
                p
                for n, p in pod_recorder.pods.items()
                if n.startswith(f"{name}-")
                and p.metadata.deletion_timestamp is None
                and p.status.phase == "Running"
            ]
            assert live and all(p.spec.node_name == "real-1" for p in live), {
                p.metadata.name: p.spec.node_name for p in live
            }
    finally:
        node.start()
        cluster.wait_for_real_nodes_ready(["real-2"], timeout=180)
