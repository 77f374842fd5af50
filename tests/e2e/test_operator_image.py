"""The operator from its image, installed by the chart, trains the offline example on two real nodes.

What a user's first hour does: build the images, `helm install` the chart with the image overridden to the
local build, `kubectl apply` manifests/examples/offline.yaml (all-MiniLM-L6-v2 baked into the trainer image,
the paraphrase data in its workdir), and watch `kubectl get finetunejobs`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import OPERATOR_NAMESPACE, RELEASE, PodRecorder, diagnostics, wait_for_phase
from tests.e2e.images import Images
from tests.kube.harness import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1500, func_only=True)]

REPO = Path(__file__).resolve().parents[2]
OFFLINE = REPO / "manifests" / "kind" / "offline.yaml"
WORKER_UID = 1000


def offline_job() -> dict[str, Any]:
    """manifests/kind/offline.yaml (the offline example for CPU nodes, as the kind quickstart applies it) with
    the kind node pool's selector swapped for the real test nodes'. The example's own hyperparameters (3
    epochs, 114 steps), because the accuracy it must reach is the example's."""
    job: dict[str, Any] = yaml.safe_load(OFFLINE.read_text())
    job["spec"]["kubernetes"]["nodeSelector"] = {"type": "real"}
    return job


def test_the_chart_installed_operator_trains_the_offline_example_on_two_real_nodes(
    e2e_cluster: LocalCluster,
    images: Images,
    operator_release: dict[str, Any],
    e2e_namespace: str,
    pod_recorder: PodRecorder,
) -> None:
    cluster, namespace = e2e_cluster, e2e_namespace
    # The operator runs from its image on a real node, as the chart's ServiceAccount.
    operator_pod = json.loads(
        cluster.kubectl("get", "pod", "-n", OPERATOR_NAMESPACE, f"{RELEASE}-0", "-o", "json").stdout
    )
    assert operator_pod["spec"]["nodeName"].startswith("real-")
    assert operator_pod["spec"]["containers"][0]["image"] == images.operator.ref
    assert operator_pod["spec"]["serviceAccountName"] == RELEASE

    job = offline_job()
    name = job["metadata"]["name"]
    started = time.monotonic()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))

    # While it runs, `kubectl get finetunejobs` shows live progress.
    rows: list[str] = []
    done = threading.Event()

    def poll_rows() -> None:
        while not done.is_set():
            result = cluster.kubectl("get", "finetunejobs", "-n", namespace, "--no-headers", check=False)
            if result.returncode == 0 and result.stdout.strip():
                rows.append(result.stdout.strip())
            time.sleep(3)

    poller = threading.Thread(target=poll_rows, daemon=True)
    poller.start()
    identity_checked: dict[str, str] = {}
    try:
        # A running worker really is uid 1000 on a read-only root.
        deadline = time.monotonic() + 600
        while not identity_checked and time.monotonic() < deadline:
            for pod_name, pod in list(pod_recorder.pods.items()):
                if pod.status and pod.status.phase == "Running":
                    probe = cluster.kubectl(
                        "exec",
                        "-n",
                        namespace,
                        pod_name,
                        "--",
                        "python",
                        "-c",
                        "import os\ntry:\n open('/probe','w')\nexcept OSError as e:\n print(os.getuid(), e.errno)",
                        check=False,
                    )
                    if probe.returncode == 0:
                        identity_checked[pod_name] = probe.stdout.strip()
                        break
            time.sleep(2)
        status = wait_for_phase(cluster, namespace, name, {"Succeeded", "Failed"}, 1200)
    finally:
        done.set()
        poller.join(timeout=10)
    elapsed = time.monotonic() - started
    print(f"\n[e2e] offline example: {elapsed:.0f} s from apply to {status.get('phase')}")
    assert status["phase"] == "Succeeded", diagnostics(cluster, namespace, name)

    # Both workers ran the trainer image as uid 1000 with a read-only root filesystem.
    workers = {n: p for n, p in pod_recorder.pods.items() if n.startswith(f"{name}-worker-")}
    assert len(workers) == 2, sorted(pod_recorder.pods)
    for pod in workers.values():
        (container,) = pod.spec.containers
        assert container.image == images.trainer.ref
        assert pod.spec.security_context.run_as_user == WORKER_UID
        assert container.security_context.read_only_root_filesystem is True
        assert pod.spec.node_name.startswith("real-")
    assert identity_checked, "no worker was seen Running to check its identity"
    (identity,) = identity_checked.values()
    assert identity == f"{WORKER_UID} 30", f"uid and errno (30 = EROFS) of a write to /: {identity}"
    assert all(pod_recorder.terminated[n]["exitCode"] == 0 for n in workers), pod_recorder.terminated

    # Live progress was visible while it ran, and at the end the eval accuracy.
    progress = [re.search(r"\b(\d+)/(\d+) \(\d+%\)", row) for row in rows if "Running" in row]
    partial = [m for m in progress if m and 0 < int(m.group(1)) < int(m.group(2))]
    assert partial, f"no live progress in `kubectl get finetunejobs` while Running: {rows[-5:]}"
    accuracy = status["metrics"]["eval"]["eval_accuracy"]
    print(f"[e2e] offline example eval_accuracy={accuracy:.3f}, live rows seen: {len(partial)}")
    assert accuracy >= 0.9, status["metrics"]
    final = cluster.kubectl("get", "finetunejobs", "-n", namespace, "--no-headers").stdout
    assert "Succeeded" in final and status["metrics"]["primary"] in final, final

    # `kubectl logs` of a worker shows the trainer's progress lines.
    logs = cluster.kubectl("logs", "-n", namespace, f"{name}-worker-0").stdout
    steps = [
        json.loads(line.split(" ", 1)[1]) for line in logs.splitlines() if line.startswith("KUBETUNE_EVENT ")
    ]
    assert any(e.get("event") == "step" and e.get("step", 0) > 0 for e in steps), logs[-2000:]
