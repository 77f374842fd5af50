"""Suspend mid-training on a real node: the kubelet delivers SIGTERM, the trainer checkpoints within the
grace period and exits 75 (the container's terminated state says so); resuming continues from that step,
reading the checkpoint from a local PersistentVolume that outlived the gang."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.e2e.conftest import PodRecorder, diagnostics, get_job, tiny_job, wait_for_phase
from tests.kube.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900, func_only=True)]

EXIT_PREEMPTED = 75


def events_of(text: str) -> list[dict[str, Any]]:
    """The trainer's KUBETUNE_EVENT lines in a log."""
    return [
        json.loads(line.split(" ", 1)[1]) for line in text.splitlines() if line.startswith("KUBETUNE_EVENT ")
    ]


def test_a_suspended_job_checkpoints_on_sigterm_exits_75_and_resumes_from_that_step(
    e2e_cluster: LocalCluster,
    e2e_namespace: str,
    tiny_assets_volumes: dict[str, Any],
    pod_recorder: PodRecorder,
) -> None:
    cluster, namespace = e2e_cluster, e2e_namespace
    volume = f"ckpt-{uuid.uuid4().hex[:8]}"
    folder = cluster.add_local_persistent_volume(volume, "real-1")
    core: Any = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "checkpoints"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "local",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    name = "suspend"
    job = tiny_job(
        name,
        tiny_assets_volumes,
        nodes=1,
        processes=1,
        epochs=40,  # 1000 steps: long enough to be suspended in the middle
        extra_spec={
            "training": {"loggingSteps": 5, "evalStrategy": "no"},
            "checkpointing": {"everySteps": 100000, "atEpochEnd": False, "keepLast": 1},
            "kubernetes": {"outputVolume": {"claimName": "checkpoints", "mountPath": "/output"}},
        },
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))

    def step() -> int:
        return int(
            (get_job(cluster, namespace, name).get("status") or {}).get("progress", {}).get("step") or 0
        )

    def set_suspend(suspend: bool) -> None:
        patch = {"spec": {"runPolicy": {"suspend": suspend}}}
        cluster.kubectl(
            "patch", "finetunejob", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch)
        )

    try:
        wait_for(lambda: step() >= 20, 420, "20 steps of live progress")
    except Exception as error:
        raise AssertionError(f"{error}\n{diagnostics(cluster, namespace, name)}") from error

    # When the job is suspended, the operator deletes the worker: the kubelet sends SIGTERM.
    suspended_at = time.monotonic()
    set_suspend(True)
    worker = f"{name}-worker-0"
    ended = wait_for(lambda: pod_recorder.terminated.get(worker), 120, f"{worker} terminated")
    grace = time.monotonic() - suspended_at
    print(f"\n[e2e] suspend -> container ended in {grace:.1f} s: {ended}")
    assert ended["exitCode"] == EXIT_PREEMPTED, ended
    status = wait_for_phase(cluster, namespace, name, {"Suspended"}, 120)
    checkpoints = sorted(p.name for p in folder.rglob("step-*") if p.is_dir())
    assert checkpoints, f"no checkpoint on the PersistentVolume {folder}"
    saved = int(checkpoints[-1].removeprefix("step-"))
    print(f"[e2e] checkpoint on the PV: {checkpoints}; status {status.get('progress')}")
    assert 20 <= saved < 1000

    # Resuming continues from that step, on the same volume.
    set_suspend(False)

    def resumed_from() -> int | None:
        pods = core.list_namespaced_pod(namespace, label_selector=f"kubetune.io/job-name={name}").items
        for pod in pods:
            if pod.metadata.deletion_timestamp is None and pod.status.phase in ("Running", "Succeeded"):
                logs = cluster.kubectl("logs", "-n", namespace, pod.metadata.name, check=False).stdout
                for event in events_of(logs):
                    if event.get("event") == "started":
                        return int(event.get("resumed_from_step") or 0)
        return None

    try:
        start = wait_for(resumed_from, 300, "the resumed worker's started event")
    except Exception as error:
        raise AssertionError(f"{error}\n{diagnostics(cluster, namespace, name)}") from error
    assert start == saved, f"resumed from step {start}, the checkpoint was step {saved}"
    final = wait_for_phase(cluster, namespace, name, {"Succeeded", "Failed"}, 600)
    assert final["phase"] == "Succeeded", diagnostics(cluster, namespace, name)
    assert final["progress"]["summary"] == "1000/1000 (100%)", final["progress"]
