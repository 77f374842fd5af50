"""Fixtures of the end-to-end tests: the real-node cluster with both images loaded, the operator installed
from its image by the chart, and helpers to run FineTuneJobs and watch their pods.

Everything here is real: the images built from the Dockerfile (hack/images/build.sh), containerd + runc
under a real kubelet, the chart's RBAC, the operator in a pod. When any of it cannot be had, the tests FAIL
with the reason.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch
from kubetune.mappings import deep_merge

from tests.e2e.images import ImageBuildFailed, Images, build_images, load_into_nodes
from tests.kube.harness import LocalCluster, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
OPERATOR_NAMESPACE = "kubetune-system"
RELEASE = "kubetune"
GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"


@pytest.fixture(scope="session")
def images() -> Images:
    """Both images of the current sources (built, or reused from $KUBETUNE_CACHE/images)."""
    started = time.monotonic()
    try:
        built = build_images()
    except (ImageBuildFailed, OSError, subprocess.TimeoutExpired) as error:
        pytest.fail(f"cannot have the kubetune images: {error}", pytrace=False)
    print(f"\n[e2e] images ready in {time.monotonic() - started:.0f} s: {built}")
    return built


@pytest.fixture(scope="session")
def e2e_cluster(real_node_cluster: LocalCluster, images: Images) -> LocalCluster:
    """The real-node cluster with the operator and trainer images in every real node."""
    for image in (images.operator, images.trainer):
        seconds = load_into_nodes(real_node_cluster, image)
        print(
            f"\n[e2e] {image.ref} ({image.archive.stat().st_size / 2**30:.1f} GiB archive) on nodes: {seconds} s"
        )
    return real_node_cluster


def _helm(cluster: LocalCluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    if not cluster.binaries.has("helm"):
        pytest.fail("helm is not among the control-plane binaries (hack/cluster/build.sh)", pytrace=False)
    home = cluster.workdir / "helm-home"
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run(
        [str(cluster.binaries.path("helm")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _split_ref(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


@pytest.fixture(scope="session")
def operator_release(e2e_cluster: LocalCluster, images: Images) -> dict[str, Any]:
    """`helm install` of charts/kubetune with the local images (pulled never: they are in the nodes), the
    operator on a real node, watching every namespace with the chart's own RBAC; returns the values used."""
    operator_repo, operator_tag = _split_ref(images.operator.ref)
    trainer_repo, trainer_tag = _split_ref(images.trainer.ref)
    values = {
        "image": {"repository": operator_repo, "tag": operator_tag, "pullPolicy": "Never"},
        "trainer": {"image": {"repository": trainer_repo, "tag": trainer_tag}},
        # On real-1: test_a_lost_node_does_not_hang_the_job stops real-2, and an operator there would go with
        # it (its StatefulSet pod stays Terminating on the lost node), which is another scenario than the one
        # that test checks (a CI run failed that way when the scheduler happened to pick real-2).
        "nodeSelector": {"type": "real", "kubernetes.io/hostname": "real-1"},
        "logFormat": "plain",
        # Force-delete a worker left Terminating on a lost node 30 s after its grace period (default 300 s).
        "recovery": {"terminatingTimeoutSeconds": 30},
    }
    values_file = e2e_cluster.workdir / "e2e-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    started = time.monotonic()
    result = _helm(
        e2e_cluster,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--values",
        str(values_file),
        "--wait",
        "--timeout",
        "4m",
    )
    if result.returncode != 0:
        pods = e2e_cluster.kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "wide", check=False)
        logs = e2e_cluster.kubectl("logs", "-n", OPERATOR_NAMESPACE, f"{RELEASE}-0", "--tail=60", check=False)
        pytest.fail(
            f"helm install failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
            f"{pods.stdout}{pods.stderr}\n{logs.stdout}{logs.stderr}",
            pytrace=False,
        )
    print(f"\n[e2e] helm install --wait: {time.monotonic() - started:.0f} s")
    return values


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic sentiment data and a tiny BERT (license-free, built locally; 0.5 MB of weights)."""
    from kubetune_trainer.synthetic import build_tiny_model, read_texts, write_sentiment_dataset

    root = tmp_path_factory.mktemp("e2e-assets")
    train, evaluation = write_sentiment_dataset(root / "data", n_train=400, n_eval=200, seed=0)
    model = build_tiny_model(root / "tiny-bert", read_texts(train), num_labels=2)
    return {"train": train, "eval": evaluation, "model": model}


@pytest.fixture
def e2e_namespace(operator_release: dict[str, Any], real_node_namespace: str) -> str:
    """A fresh namespace watched by the installed operator."""
    return real_node_namespace


@pytest.fixture
def tiny_assets_volumes(
    e2e_cluster: LocalCluster, e2e_namespace: str, tiny_assets: dict[str, Path]
) -> dict[str, Any]:
    """ConfigMaps holding the tiny model (/assets/model) and data (/assets/data) in the test's namespace:
    the worker's root filesystem is read-only and the image has neither. Returns the podOverlay for a job."""
    core: Any = client.CoreV1Api(e2e_cluster.api_client())
    for name, folder in (("tiny-model", tiny_assets["model"]), ("tiny-data", tiny_assets["train"].parent)):
        binary = {p.name: base64.b64encode(p.read_bytes()).decode() for p in sorted(folder.iterdir())}
        core.create_namespaced_config_map(e2e_namespace, {"metadata": {"name": name}, "binaryData": binary})
    return {
        # Set although empty: the CRD's CEL rule on podOverlay.extraResources reads it without has() (fixed on
        # wt-operator, 7b8e76f); harmless once that is merged.
        "extraResources": {},
        "volumes": [
            {"name": "tiny-model", "source": {"configMap": {"name": "tiny-model"}}},
            {"name": "tiny-data", "source": {"configMap": {"name": "tiny-data"}}},
        ],
        "volumeMounts": [
            {"name": "tiny-model", "mountPath": "/assets/model", "readOnly": True},
            {"name": "tiny-data", "mountPath": "/assets/data", "readOnly": True},
        ],
    }


def tiny_job(
    name: str,
    overlay: dict[str, Any],
    *,
    nodes: int,
    processes: int,
    epochs: int = 3,
    zero_stage: int = 0,
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A FineTuneJob on the tiny model and data of `tiny_assets_volumes`, CPU only (gpusPerNode 0)."""
    spec: dict[str, Any] = {
        "model": {"name": "/assets/model", "task": "sequence-classification", "numLabels": 2},
        "dataset": {
            "files": {"train": "/assets/data/train.jsonl", "eval": "/assets/data/eval.jsonl"},
            "maxLength": 64,
        },
        "training": {
            "epochs": epochs,
            "learningRate": 3e-3,
            "warmupSteps": 5,
            "perDeviceTrainBatchSize": 16,
            "perDeviceEvalBatchSize": 64,
            "loggingSteps": 5,
            "metrics": ["accuracy"],
        },
        "distribution": {
            "nodes": nodes,
            "processesPerNode": processes,
            "deepspeed": {"zeroStage": zero_stage},
        },
        "kubernetes": {"resources": {"gpusPerNode": 0, "shmSize": "256Mi"}, "podOverlay": overlay},
        "runPolicy": {"backoffLimit": 0},
    }
    if nodes > 1:
        # Each node's output is its pod's own emptyDir (the tests read results from the status and the logs);
        # a job that resumes across nodes sets kubernetes.outputVolume in extra_spec instead.
        spec["output"] = {"ephemeral": True}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": deep_merge(spec, extra_spec or {}),
    }


@dataclass
class PodRecorder:
    """Watches a namespace's pods and keeps every container end it sees: a deleted pod's last state would
    otherwise be gone with the pod object."""

    cluster: LocalCluster
    namespace: str
    terminated: dict[str, dict[str, Any]] = field(default_factory=dict)  # pod name -> terminated state
    nodes: dict[str, str] = field(default_factory=dict)  # pod name -> node name
    pods: dict[str, Any] = field(default_factory=dict)  # pod name -> last seen pod
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> PodRecorder:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        core: Any = client.CoreV1Api(self.cluster.api_client())
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(core.list_namespaced_pod, self.namespace, timeout_seconds=5):
                    self._see(event["object"])
                    if self._stop.is_set():
                        break
            except Exception:
                time.sleep(0.5)

    def _see(self, pod: Any) -> None:
        name = pod.metadata.name
        self.pods[name] = pod
        if pod.spec.node_name:
            self.nodes[name] = pod.spec.node_name
        for status in (pod.status.container_statuses or []) if pod.status else []:
            ended = status.state.terminated if status.state else None
            if ended is None and status.last_state is not None:
                ended = status.last_state.terminated
            if ended is not None:
                self.terminated[name] = {
                    "exitCode": ended.exit_code,
                    "reason": ended.reason,
                    "message": ended.message or "",
                }


@pytest.fixture
def pod_recorder(e2e_cluster: LocalCluster, e2e_namespace: str) -> Iterator[PodRecorder]:
    recorder = PodRecorder(e2e_cluster, e2e_namespace).start()
    yield recorder
    recorder.stop()


def get_job(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    custom: Any = client.CustomObjectsApi(cluster.api_client())
    job: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return job


def wait_for_phase(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    phases: set[str],
    timeout: float,
    also: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Waits until the job's phase is one of `phases`; returns its status. On timeout the AssertionError
    carries the status, the pods and the operator's log tail."""
    try:
        return wait_for(
            lambda: (
                s
                if (s := get_job(cluster, namespace, name).get("status") or {}).get("phase") in phases
                else None
            ),
            timeout,
            f"FineTuneJob {name} in {sorted(phases)}",
        )
    except Exception as error:
        raise AssertionError(f"{error}\n{diagnostics(cluster, namespace, name)}") from error


def diagnostics(cluster: LocalCluster, namespace: str, name: str) -> str:
    """The job's status, its pods and their log tails, and the operator's log tail: for failure messages."""
    parts = [json.dumps(get_job(cluster, namespace, name).get("status"), indent=1)[-3000:]]
    parts.append(cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout)
    core: Any = client.CoreV1Api(cluster.api_client())
    for pod in core.list_namespaced_pod(namespace).items:
        logs = cluster.kubectl("logs", "-n", namespace, pod.metadata.name, "--tail=30", check=False)
        parts.append(f"--- {pod.metadata.name}\n{logs.stdout[-3000:]}{logs.stderr[-500:]}")
    operator = cluster.kubectl("logs", "-n", OPERATOR_NAMESPACE, f"{RELEASE}-0", "--tail=40", check=False)
    parts.append(f"--- operator\n{operator.stdout[-4000:]}")
    return "\n".join(parts)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop a node run last: the session's cluster is shared, and a node comes back with its
    containers gone."""
    items.sort(key=lambda item: item.get_closest_marker("stops_a_node") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stops_a_node: stops a real node of the shared cluster (runs last)")
