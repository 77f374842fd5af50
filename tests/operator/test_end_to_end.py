"""End to end: the pods the operator writes actually train.

KWOK runs no containers, so this test plays the kubelet: for each worker pod the operator created, it runs
the pod's own command with the pod's own environment as a local process (the only substitutions are the
ones a node would provide: the ConfigMap file at a local path, worker 0's DNS name → 127.0.0.1, a writable
termination-log file, an HF cache folder), then reports each exit code and termination message into the
pod status the way a kubelet does. The FineTuneJob must reach Succeeded with real eval metrics, above
chance, in its status and in `kubectl get`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubetune.contract import JOB_FILE, MAIN_ADDR, TERMINATION_LOG

from tests.kube.harness import COMPLETE_ANNOTATION_PREFIX, LocalCluster, wait_for
from tests.kube.processes import free_loopback_port
from tests.operator.conftest import OperatorProcess, job_manifest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NODES = 2


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic sentiment data and a tiny BERT (license-free, built locally)."""
    from kubetune_trainer.synthetic import build_tiny_model, read_texts, write_sentiment_dataset

    root = tmp_path_factory.mktemp("e2e-assets")
    train, evaluation = write_sentiment_dataset(root / "data", n_train=400, n_eval=200, seed=0)
    model = build_tiny_model(root / "tiny-bert", read_texts(train), num_labels=2)
    return {"train": train, "eval": evaluation, "model": model}


class LocalKubelet:
    """Runs worker pods' containers as local processes and reports their ends as a kubelet would."""

    def __init__(self, cluster: LocalCluster, namespace: str, root: Path) -> None:
        self.cluster, self.namespace, self.root = cluster, namespace, root
        self.core: Any = client.CoreV1Api(cluster.api_client())

    def start(self, pod: Any, extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path, Path]:
        (container,) = pod.spec.containers
        folder = self.root / pod.metadata.name
        folder.mkdir(parents=True)
        env = {e.name: e.value for e in container.env if e.value is not None}
        # The volumes a node would mount: the ConfigMap's files, the termination log, the HF cache.
        config = self.core.read_namespaced_config_map(f"{pod.spec.subdomain}-config", self.namespace)
        for key, text in config.data.items():
            (folder / key).write_text(text, encoding="utf-8")
        assert env[JOB_FILE] == "/etc/kubetune/job.yaml"
        env[JOB_FILE] = str(folder / "job.yaml")
        assert env[MAIN_ADDR] == f"{pod.spec.subdomain}-worker-0.{pod.spec.subdomain}.{self.namespace}.svc"
        env[MAIN_ADDR] = "127.0.0.1"  # what the headless Service's DNS name resolves to, here
        termination = folder / "termination-log"
        termination.touch()
        env[TERMINATION_LOG] = str(termination)
        env["HF_HOME"] = str(folder / "hf-cache")
        bin_dir = str(Path(sys.executable).parent)
        base = {
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            "HOME": str(folder),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        }
        if os.environ.get("PYTHONPATH"):
            # The "container" runs the sources under test, like the operator process (a worktree's
            # PYTHONPATH; without it the shared virtualenv's install, which may be another checkout).
            base["PYTHONPATH"] = os.environ["PYTHONPATH"]
        command = list(container.command) + list(container.args or [])
        assert shutil.which(command[0], path=base["PATH"]), f"{command[0]} is not installed"
        log = folder / "container.log"
        process = subprocess.Popen(
            command,
            env={**base, **env, **extra_env},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return process, termination, log

    def report_exit(self, pod_name: str, exit_code: int, termination: Path, log: Path) -> None:
        """Ends the pod with the exit code and termination message (FallbackToLogsOnError: the log tail)."""
        message = termination.read_text(errors="replace").strip()
        if not message and exit_code != 0:
            message = log.read_text(errors="replace")[-2000:]
        prefix = COMPLETE_ANNOTATION_PREFIX
        annotations = {
            f"{prefix}phase": "Succeeded" if exit_code == 0 else "Failed",
            f"{prefix}exit-code": str(exit_code),
            f"{prefix}reason": "Completed" if exit_code == 0 else "Error",
            f"{prefix}message": message,
        }
        self.core.patch_namespaced_pod(pod_name, self.namespace, {"metadata": {"annotations": annotations}})


def test_the_operators_worker_pods_train_a_model_and_the_job_reports_its_metrics(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    operator: OperatorProcess,
    tiny_assets: dict[str, Path],
    tmp_path: Path,
) -> None:
    # Given a 2-node FineTuneJob on local files and a tiny model
    manifest = job_manifest(
        "e2e",
        nodes=NODES,
        model={"name": str(tiny_assets["model"])},
        dataset={
            "files": {"train": str(tiny_assets["train"]), "eval": str(tiny_assets["eval"])},
            "maxLength": 64,
        },
        training={
            "epochs": 3,
            "learningRate": 3e-3,
            "warmupSteps": 5,
            "perDeviceTrainBatchSize": 16,
            "perDeviceEvalBatchSize": 64,
            "loggingSteps": 5,
        },
        distribution={"nodes": NODES, "processesPerNode": 1, "mainPort": free_loopback_port()},
        output={"path": str(tmp_path / "output")},
    )
    kubectl("apply", "-f", "-", input=manifest)

    def scheduled() -> list[Any] | None:
        core: Any = client.CoreV1Api(kube_cluster.api_client())
        pods = core.list_namespaced_pod(kube_namespace, label_selector="kubetune.io/job-name=e2e")
        running = [p for p in pods.items if p.status.phase == "Running"]
        return sorted(running, key=lambda p: p.metadata.name) if len(running) == NODES else None

    pods = wait_for(scheduled, 60, "the workers Running on KWOK nodes")

    # When each worker's container runs (as the worker's own ServiceAccount, for live progress)
    kubelet = LocalKubelet(kube_cluster, kube_namespace, tmp_path / "nodes")
    identity = kube_cluster.kubeconfig_for_service_account(kube_namespace, "e2e-worker")
    started = [kubelet.start(pod, {"KUBECONFIG": str(identity)}) for pod in pods]
    codes = []
    for process, _, log in started:
        try:
            codes.append(process.wait(timeout=420))
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(
                f"a worker hung; log tail:\n{log.read_text(errors='replace')[-3000:]}"
            ) from None
    logs = "\n".join(
        f"--- {p.metadata.name}\n{log.read_text(errors='replace')[-3000:]}"
        for p, (_, _, log) in zip(pods, started, strict=True)
    )
    assert codes == [0] * NODES, logs
    # and the kubelet reports the exits (rank 0 last, as it finishes last in practice)
    for pod, (_, termination, log) in reversed(list(zip(pods, started, strict=True))):
        kubelet.report_exit(pod.metadata.name, 0, termination, log)

    # Then the job Succeeded with the real metrics in its status and in kubectl get
    def succeeded() -> dict[str, Any] | None:
        custom: Any = client.CustomObjectsApi(kube_cluster.api_client())
        job = custom.get_namespaced_custom_object(
            "kubetune.io", "v1alpha1", kube_namespace, "finetunejobs", "e2e"
        )
        status: dict[str, Any] = job.get("status") or {}
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for(succeeded, 60, "the FineTuneJob Succeeded")
    accuracy = status["metrics"]["eval"]["eval_accuracy"]
    print(f"end-to-end eval_accuracy={accuracy:.3f} progress={status['progress']['summary']}")
    assert accuracy >= 0.8, f"the model did not learn (chance is 0.5): {status['metrics']}"
    assert status["progress"]["summary"] == "39/39 (100%)"  # 400 examples / (16 x 2 ranks) x 3 epochs
    assert status["metrics"]["primary"].startswith("accuracy=")
    assert (tmp_path / "output").exists()
    if any(e.value == "kubetune.status_sink:make_sink" for e in entry_points(group="kubetune.sinks")):
        # live progress reached the status through the worker's least-privilege identity, too
        assert status["progress"].get("updateTime"), status["progress"]
    row = kubectl("get", "ftj", "e2e", "--no-headers").stdout.split()
    assert "Succeeded" in row and status["metrics"]["primary"] in row
