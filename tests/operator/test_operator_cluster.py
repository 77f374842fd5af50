"""Given the real API server with KWOK GPU nodes and the real `kubetune operator` process (running as a
ServiceAccount that holds only OPERATOR_RULES), FineTuneJobs behave as a user expects: apply → worker pods,
completion → Succeeded with metrics in `kubectl get`, failures → gang restarts then Failed, bad specs are
refused, suspend/resume, delete leaves nothing behind, and an operator crash duplicates nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubetune.controller.children import JobRef, WorkerContext, build_job_children, build_worker_pod
from kubetune.events import EventKind, JobSummary, ProgressEvent
from kubetune.spec.loading import parse_spec
from kubetune.status_sink import StatusSink

from tests.kube.harness import COMPLETE_ANNOTATION_PREFIX, LocalCluster, wait_for
from tests.operator.conftest import GPUS_PER_NODE, REPO, OperatorProcess, job_manifest
from tests.operator.test_connection import kube_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"


def get_job(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    api: Any = client.CustomObjectsApi(cluster.api_client())
    job: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return job


def status(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = get_job(cluster, namespace, name).get("status") or {}
    return result


def wait_phase(
    cluster: LocalCluster, namespace: str, name: str, phase: str, timeout: float = 30
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        current = status(cluster, namespace, name)
        return current if current.get("phase") == phase else None

    try:
        return wait_for(reached, timeout, f"FineTuneJob {name} to be {phase}")
    except Exception as error:
        raise AssertionError(
            f"{error}; status: {json.dumps(status(cluster, namespace, name), indent=1)}"
        ) from None


def workers(cluster: LocalCluster, namespace: str, name: str) -> list[Any]:
    pods = client.CoreV1Api(cluster.api_client()).list_namespaced_pod(
        namespace, label_selector=f"kubetune.io/job-name={name}"
    )
    return sorted(pods.items, key=lambda p: p.metadata.name)


def running_workers(
    cluster: LocalCluster, namespace: str, name: str, count: int, timeout: float = 30
) -> list[Any]:
    def all_running() -> list[Any] | None:
        pods = [p for p in workers(cluster, namespace, name) if not p.metadata.deletion_timestamp]
        ok = len(pods) == count and all(p.status.phase == "Running" for p in pods)
        return pods if ok else None

    return wait_for(all_running, timeout, f"{count} running workers of {name}")


def events(cluster: LocalCluster, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items: Any = client.CoreV1Api(cluster.api_client()).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=FineTuneJob"
    )
    return [
        (e.type, e.reason, e.message)
        for e in sorted(items.items, key=lambda e: e.metadata.creation_timestamp)
    ]


def wait_event_reasons(
    cluster: LocalCluster, namespace: str, name: str, *wanted: str
) -> list[tuple[str, str, str]]:
    """The job's Events once every reason in `wanted` is among them (Events are posted in the background)."""

    def present() -> list[tuple[str, str, str]] | None:
        found = events(cluster, namespace, name)
        reasons = {reason for _, reason, _ in found}
        return found if set(wanted) <= reasons else None

    return wait_for(present, 10, f"events {wanted} of {name}")


def fail_worker(
    cluster: LocalCluster, namespace: str, name: str, exit_code: int, message: str = "", reason: str = "Error"
) -> None:
    """End a Running worker with `exit_code` as its kubelet would (KWOK stage), without waiting for the
    Failed phase: the operator may delete the pod for the gang restart right after."""
    cluster.wait_for_pod_phase(namespace, name, ["Running"])
    end_worker(cluster, namespace, name, exit_code, message, reason)


def end_worker(
    cluster: LocalCluster, namespace: str, name: str, exit_code: int, message: str = "", reason: str = "Error"
) -> None:
    """Ask KWOK to end worker `name` (it must be Running) with `exit_code`: Succeeded for 0 (reason
    Completed), else Failed with `reason`. Returns at once, without waiting for the phase."""
    prefix = COMPLETE_ANNOTATION_PREFIX
    annotations = {
        f"{prefix}phase": "Succeeded" if exit_code == 0 else "Failed",
        f"{prefix}exit-code": str(exit_code),
        f"{prefix}reason": "Completed" if exit_code == 0 else reason,
        f"{prefix}message": message,
    }
    client.CoreV1Api(cluster.api_client()).patch_namespaced_pod(
        name, namespace, {"metadata": {"annotations": annotations}}
    )


def summary_message(accuracy: float = 0.875) -> str:
    return JobSummary(
        outcome=EventKind.FINISHED,
        step=120,
        total_steps=120,
        epoch=3.0,
        train_loss=0.21,
        metrics={"eval_accuracy": accuracy, "eval_loss": 0.31},
        samples_per_second=55.5,
        model_path="/output/model",
    ).to_termination_message()


def test_apply_creates_worker_pods_on_gpu_nodes_with_the_contract_and_the_job_runs(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    # Given a 3-node job with 2 processes per node, an HF token Secret and an output volume
    kubectl("create", "secret", "generic", "hf", "--from-literal=token=hf_dummy")
    manifest = job_manifest(
        "bert",
        nodes=3,
        processes=2,
        kubernetes={
            "nodeSelector": {"kubetune.test/pool": "operator"},
            "hfTokenSecret": {"name": "hf"},
            "outputVolume": {"mountPath": "/output", "sizeLimit": "10Gi"},
            "priorityClassName": "system-cluster-critical",
        },
    )
    started = time.monotonic()
    kubectl("apply", "-f", "-", input=manifest)

    # Then three workers run on the KWOK GPU nodes, each with its rank, two GPUs and the volumes
    pods = running_workers(kube_cluster, kube_namespace, "bert", 3)
    print(f"apply → 3 workers Running: {time.monotonic() - started:.2f}s")
    job = get_job(kube_cluster, kube_namespace, "bert")
    for index, pod in enumerate(pods):
        assert pod.metadata.name == f"bert-worker-{index}"
        assert pod.spec.node_name.startswith("kwok-gpu-")
        (owner,) = pod.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid, owner.controller) == (
            "FineTuneJob",
            "bert",
            job["metadata"]["uid"],
            True,
        )
        (container,) = pod.spec.containers
        env = {e.name: e.value for e in container.env}
        assert env["KUBETUNE_NODE_RANK"] == str(index)
        assert env["KUBETUNE_NUM_NODES"] == "3" and env["KUBETUNE_PROCS_PER_NODE"] == "2"
        assert env["KUBETUNE_MAIN_ADDR"] == f"bert-worker-0.bert.{kube_namespace}.svc"
        assert env["KUBETUNE_MAIN_PORT"] == "29500" and env["KUBETUNE_ATTEMPT"] == "0"
        token = next(e for e in container.env if e.name == "HF_TOKEN")
        assert (token.value_from.secret_key_ref.name, token.value_from.secret_key_ref.key) == ("hf", "token")
        assert container.resources.limits["nvidia.com/gpu"] == "2"
        assert container.termination_message_policy == "FallbackToLogsOnError"
        mounts = {m.name: m.mount_path for m in container.volume_mounts}
        assert mounts["dshm"] == "/dev/shm" and mounts["output"] == "/output"
        assert mounts["kubetune-config"] == "/etc/kubetune"
        assert pod.spec.priority_class_name == "system-cluster-critical"
        assert pod.spec.security_context.run_as_non_root is True
        assert (pod.spec.hostname, pod.spec.subdomain) == (f"bert-worker-{index}", "bert")
    core: Any = client.CoreV1Api(kube_cluster.api_client())
    service = core.read_namespaced_service("bert", kube_namespace)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses
    config = core.read_namespaced_config_map("bert-config", kube_namespace)
    assert "job.yaml" in config.data and "accelerate.yaml" in config.data

    # And the status says Running, with the transitions as Events and in kubectl get
    current = wait_phase(kube_cluster, kube_namespace, "bert", "Running")
    assert current["workers"]["summary"] == "3/3" and current["observedGeneration"] == 1
    # (Events have one-second timestamps: their order within a second is not kept)
    wait_event_reasons(kube_cluster, kube_namespace, "bert", "Pending", "Running")
    table = kubectl("get", "finetunejobs").stdout
    assert "Running" in table and "3/3" in table and "prajjwal1/bert-tiny" in table


def test_completion_reports_the_termination_message_metrics_in_kubectl_get(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    kubectl("apply", "-f", "-", input=job_manifest("done", nodes=2))
    running_workers(kube_cluster, kube_namespace, "done", 2)

    # When rank 0 ends with its JobSummary as termination message (and rank 1 with nothing)
    kube_cluster.complete_pod(kube_namespace, "done-worker-1", exit_code=0)
    kube_cluster.complete_pod(kube_namespace, "done-worker-0", exit_code=0, message=summary_message(0.875))

    # Then the job Succeeded with the metrics and progress of the summary
    final = wait_phase(kube_cluster, kube_namespace, "done", "Succeeded")
    assert final["metrics"]["primary"] == "accuracy=0.875"
    assert final["metrics"]["eval"]["eval_accuracy"] == 0.875 and final["metrics"]["trainLoss"] == 0.21
    assert final["progress"]["summary"] == "120/120 (100%)" and final["completionTime"]
    table = kubectl("get", "ftj", "done").stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert header[:7] == ["NAME", "PHASE", "MODEL", "NODES", "PROGRESS", "METRIC", "RESTARTS"]
    assert row[1] == "Succeeded" and "accuracy=0.875" in row and "120/120" in row
    assert ("Normal", "Succeeded") in [
        (t, r) for t, r, _ in wait_event_reasons(kube_cluster, kube_namespace, "done", "Succeeded")
    ]


def test_a_failed_worker_restarts_the_gang_and_backoff_limit_fails_the_job_for_good(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    kubectl("apply", "-f", "-", input=job_manifest("flaky", nodes=2, runPolicy={"backoffLimit": 1}))
    first = running_workers(kube_cluster, kube_namespace, "flaky", 2)

    # When one worker is OOM-killed, the whole gang is recreated as attempt 1
    fail_worker(
        kube_cluster, kube_namespace, "flaky-worker-1", exit_code=137, reason="OOMKilled", message="oom"
    )

    def second_gang() -> list[Any] | None:
        pods = running_workers(kube_cluster, kube_namespace, "flaky", 2)
        fresh = {p.metadata.uid for p in pods}.isdisjoint({p.metadata.uid for p in first})
        return pods if fresh and all(p.metadata.labels["kubetune.io/attempt"] == "1" for p in pods) else None

    second = wait_for(second_gang, 30, "the gang recreated as attempt 1")
    assert {e.value for p in second for e in p.spec.containers[0].env if e.name == "KUBETUNE_ATTEMPT"} == {
        "1"
    }
    current = wait_phase(kube_cluster, kube_namespace, "flaky", "Running")
    assert current["restarts"] == 1 and current["failedAttempts"] == 1
    assert current["lastFailure"]["reason"] == "OOMKilled" and current["lastFailure"]["exitCode"] == 137
    assert current["lastFailure"]["pod"] == "flaky-worker-1"

    # When a worker fails again, backoffLimit 1 is exhausted: Failed, and final
    fail_worker(
        kube_cluster, kube_namespace, "flaky-worker-0", exit_code=1, message="RuntimeError: CUDA error"
    )
    failed = wait_phase(kube_cluster, kube_namespace, "flaky", "Failed")
    assert "backoffLimit (1)" in failed["message"] and "CUDA error" in failed["message"]
    failed_condition = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert failed_condition["reason"] == "BackoffLimitExceeded"
    time.sleep(3)
    remaining = [
        p for p in workers(kube_cluster, kube_namespace, "flaky") if not p.metadata.deletion_timestamp
    ]
    assert [p.metadata.name for p in remaining] == ["flaky-worker-0"]  # the failed one, kept for its logs
    assert status(kube_cluster, kube_namespace, "flaky")["phase"] == "Failed"
    assert "kubetune_gang_restarts_total 1.0" in operator.metrics()


def test_invalid_specs_are_refused_at_apply_or_fail_with_the_field_named(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    # The API server refuses schema and CEL violations at apply, naming the field
    cases = {
        "spec.distribution.nodes": job_manifest("bad-nodes", nodes=0),
        "dataset.name (a hub dataset) or dataset.files": job_manifest(
            "bad-data", dataset={"name": "glue", "files": {"train": "a.csv"}}
        ),
        "evalSteps": job_manifest("bad-eval", training={"evalStrategy": "steps"}),
        "zeroStage": job_manifest(
            "bad-ds", distribution={"nodes": 1, "deepspeed": {"offloadOptimizer": "cpu"}}
        ),
        "use perplexity": job_manifest(
            "bad-metric", model={"name": "gpt2", "task": "causal-lm"}, dataset={"name": "wikitext"}
        ),
        'unknown field "spec.trainig"': job_manifest("bad-field", trainig={"epochs": 1}),
        "must be a DNS label (lowercase letters, digits and '-') that starts with a letter": job_manifest(
            "1bad"
        ),
        "dataset.labelField": job_manifest("no-labels", dataset={"name": "glue", "labelField": ""}),
    }
    for expected, manifest in cases.items():
        refused = kubectl("apply", "-f", "-", input=manifest, check=False)
        assert refused.returncode != 0, expected
        assert expected in refused.stderr, refused.stderr

    # A spec the API server accepts but the operator cannot launch (a raw DeepSpeed key contradicting the
    # spec) ends Failed, naming the field; nothing is created
    contradicting = {"nodes": 1, "deepspeed": {"config": {"train_micro_batch_size_per_gpu": 999}}}
    kubectl("apply", "-f", "-", input=job_manifest("no-labels", distribution=contradicting))
    failed = wait_phase(kube_cluster, kube_namespace, "no-labels", "Failed")
    assert "spec.distribution.deepspeed.config" in failed["message"]
    found = wait_event_reasons(kube_cluster, kube_namespace, "no-labels", "InvalidSpec")
    assert [(t, r) for t, r, _ in found] == [("Warning", "InvalidSpec")]
    assert workers(kube_cluster, kube_namespace, "no-labels") == []
    with pytest.raises(ApiException):
        client.CoreV1Api(kube_cluster.api_client()).read_namespaced_service("no-labels", kube_namespace)

    # A running job's spec is locked (except suspend), and apply says why
    kubectl("apply", "-f", "-", input=job_manifest("locked", nodes=1))
    wait_phase(kube_cluster, kube_namespace, "locked", "Running")
    changed = kubectl("apply", "-f", "-", input=job_manifest("locked", nodes=2), check=False)
    assert changed.returncode != 0
    assert "spec cannot change while the job is Running" in changed.stderr


def test_suspend_removes_the_workers_and_resume_brings_them_back(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    kubectl("apply", "-f", "-", input=job_manifest("pausable", nodes=2))
    running_workers(kube_cluster, kube_namespace, "pausable", 2)

    kubectl("patch", "ftj", "pausable", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    suspended = wait_phase(kube_cluster, kube_namespace, "pausable", "Suspended")
    assert "set spec.suspend to false" in suspended["message"]
    wait_for(lambda: workers(kube_cluster, kube_namespace, "pausable") == [], 30, "the workers to be removed")
    assert next(c for c in suspended["conditions"] if c["type"] == "Suspended")["status"] == "True"

    kubectl("patch", "ftj", "pausable", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    running_workers(kube_cluster, kube_namespace, "pausable", 2)
    resumed = wait_phase(kube_cluster, kube_namespace, "pausable", "Running")
    assert resumed["restarts"] == 0
    wait_event_reasons(kube_cluster, kube_namespace, "pausable", "Suspended", "Resumed")

    # The older runPolicy.suspend (PyTorchJob v1 style) is still honoured, and the status says which field.
    kubectl("patch", "ftj", "pausable", "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    legacy = wait_phase(kube_cluster, kube_namespace, "pausable", "Suspended")
    assert "set spec.runPolicy.suspend to false" in legacy["message"]


def test_deleting_a_job_leaves_no_children_behind(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    kubectl("apply", "-f", "-", input=job_manifest("temp", nodes=2))
    running_workers(kube_cluster, kube_namespace, "temp", 2)
    kubectl("delete", "ftj", "temp", "--wait=true")
    selector = "kubetune.io/job-name=temp"

    def nothing_left() -> bool:
        found = kubectl(
            "get", "pods,services,configmaps,serviceaccounts,roles,rolebindings", "-l", selector, "-o", "name"
        )
        return found.stdout.strip() == ""

    wait_for(nothing_left, 60, "garbage collection of the job's children")


def test_an_operator_killed_mid_job_resumes_without_duplicates(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    kubectl("apply", "-f", "-", input=job_manifest("steady", nodes=3))
    before = {
        p.metadata.name: p.metadata.uid for p in running_workers(kube_cluster, kube_namespace, "steady", 3)
    }
    wait_phase(kube_cluster, kube_namespace, "steady", "Running")

    operator.kill()
    operator.start()
    time.sleep(3)  # let the new process list, watch and reconcile

    after = {p.metadata.name: p.metadata.uid for p in workers(kube_cluster, kube_namespace, "steady")}
    assert after == before  # the same three pods: none duplicated, none recreated
    assert status(kube_cluster, kube_namespace, "steady")["restarts"] == 0
    # and the job continues: completing rank 0 ends it
    kube_cluster.complete_pod(kube_namespace, "steady-worker-0", exit_code=0, message=summary_message(0.9))
    assert (
        wait_phase(kube_cluster, kube_namespace, "steady", "Succeeded")["metrics"]["primary"]
        == "accuracy=0.9"
    )


def test_deadline_unschedulable_and_ttl_end_jobs(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    kubectl("apply", "-f", "-", input=job_manifest("slow", nodes=1, runPolicy={"activeDeadlineSeconds": 3}))
    too_big = job_manifest(
        "huge", nodes=1, processes=GPUS_PER_NODE * 2, runPolicy={"schedulingTimeoutSeconds": 3}
    )
    kubectl("apply", "-f", "-", input=too_big)
    kubectl(
        "apply", "-f", "-", input=job_manifest("brief", nodes=1, runPolicy={"ttlSecondsAfterFinished": 2})
    )

    slow = wait_phase(kube_cluster, kube_namespace, "slow", "Failed", timeout=30)
    assert next(c for c in slow["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
    wait_for(
        lambda: workers(kube_cluster, kube_namespace, "slow") == [], 30, "the deadline's workers removed"
    )

    huge = wait_phase(kube_cluster, kube_namespace, "huge", "Failed", timeout=30)
    assert huge["lastFailure"]["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in huge["message"]

    running_workers(kube_cluster, kube_namespace, "brief", 1)
    kube_cluster.complete_pod(kube_namespace, "brief-worker-0", exit_code=0)
    wait_phase(kube_cluster, kube_namespace, "brief", "Succeeded")

    def deleted() -> bool:
        try:
            get_job(kube_cluster, kube_namespace, "brief")
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(deleted, 30, "the finished job deleted after its TTL")


def test_live_progress_is_written_with_the_per_job_least_privilege_identity(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    kubectl("apply", "-f", "-", input=job_manifest("live", nodes=1))
    kubectl("apply", "-f", "-", input=job_manifest("other", nodes=1))
    running_workers(kube_cluster, kube_namespace, "live", 1)
    wait_phase(kube_cluster, kube_namespace, "live", "Running")

    # The worker's own ServiceAccount token, as the pod would have it mounted
    identity = kube_cluster.kubeconfig_for_service_account(kube_namespace, "live-worker")
    kube = kube_for(identity)  # (the operator's own API access, as the status sink builds it in the pod)
    with kube_cluster.new_api_client(identity) as api:
        sink = StatusSink(
            lambda patch: kube.patch_job_status(kube_namespace, "live", patch, None), min_interval=0.0
        )
        sink.emit(ProgressEvent(event=EventKind.STARTED, step=0, total_steps=200))
        sink.emit(
            ProgressEvent(event=EventKind.EVAL, step=50, total_steps=200, metrics={"eval_accuracy": 0.7})
        )
        sink.close(
            JobSummary(outcome=EventKind.FINISHED, step=50, total_steps=200, metrics={"eval_accuracy": 0.7})
        )
        assert sink.writes >= 1  # (events queued together are coalesced into one write)

        # It may write only its own job's status: not another job's, not a spec
        custom = client.CustomObjectsApi(api)
        with pytest.raises(ApiException) as other:
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, kube_namespace, PLURAL, "other", {"status": {"message": "hi"}}
            )
        assert other.value.status == 403
        with pytest.raises(ApiException) as spec:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, kube_namespace, PLURAL, "live", {"spec": {"runPolicy": {"suspend": True}}}
            )
        assert spec.value.status == 403
        with pytest.raises(ApiException) as pods:
            client.CoreV1Api(api).list_namespaced_pod(kube_namespace)
        assert pods.value.status == 403

    live = status(kube_cluster, kube_namespace, "live")
    assert live["progress"]["summary"] == "50/200 (25%)" and live["metrics"]["primary"] == "accuracy=0.7"
    assert live["phase"] == "Running"  # the operator's fields are untouched
    row = kubectl("get", "ftj", "live", "--no-headers").stdout.split()
    assert "50/200" in row and "accuracy=0.7" in row


def test_metrics_and_health_endpoints(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    kubectl("apply", "-f", "-", input=job_manifest("watched", nodes=1))
    wait_phase(kube_cluster, kube_namespace, "watched", "Running")
    assert operator.healthy()

    def running_gauge() -> str | None:
        text = operator.metrics()
        return text if 'kubetune_finetunejobs{phase="Running"} 1.0' in text else None

    text = wait_for(running_gauge, 10, "the Running gauge")
    assert "kubetune_reconcile_duration_seconds_count" in text
    assert "kubetune_worker_pods_created_total 1.0" in text


def test_two_replicas_share_the_work_through_kopf_peering(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    finetunejob_crd: None,
    gpu_pool: list[str],
    operator_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    # Given two operator replicas of different priorities sharing the peering object "kubetune"
    peering_crds = REPO / "manifests" / "operator" / "kopf-peering-crds.yaml"
    kube_cluster.kubectl("apply", "--server-side", "-f", str(peering_crds))
    established = ("wait", "--for=condition=Established", "--timeout=30s", "crd/kopfpeerings.kopf.dev")
    wait_for(lambda: kube_cluster.kubectl(*established, check=False).returncode == 0, 60, "peering CRD")
    kubectl(
        "apply", "-f", "-", input="apiVersion: kopf.dev/v1\nkind: KopfPeering\nmetadata: {name: kubetune}\n"
    )
    standby = OperatorProcess(
        kube_namespace, operator_kubeconfig, tmp_path, ("--priority", "0"), name="standby"
    )
    active = OperatorProcess(
        kube_namespace, operator_kubeconfig, tmp_path, ("--priority", "1"), name="active"
    )
    standby.start()
    active.start()
    try:
        wait_for(lambda: "Pausing operations" in standby.log(), 30, "the standby replica to pause")

        # When a job is applied, exactly one gang is created
        kubectl("apply", "-f", "-", input=job_manifest("shared", nodes=3))
        running_workers(kube_cluster, kube_namespace, "shared", 3)
        wait_phase(kube_cluster, kube_namespace, "shared", "Running")
        time.sleep(2)
        assert len(workers(kube_cluster, kube_namespace, "shared")) == 3

        # When the active replica stops, the standby takes over: a failure is handled (gang restart)
        active.stop()
        wait_for(lambda: "Resuming operations" in standby.log(), 30, "the standby replica to resume")
        fail_worker(kube_cluster, kube_namespace, "shared-worker-2", exit_code=1, message="boom")
        wait_for(
            lambda: status(kube_cluster, kube_namespace, "shared").get("restarts") == 1, 30, "a gang restart"
        )
        pods = running_workers(kube_cluster, kube_namespace, "shared", 3)
        assert {p.metadata.labels["kubetune.io/attempt"] for p in pods} == {"1"}
    finally:
        active.stop()
        standby.stop()


def test_workers_refused_at_admission_are_reported_on_the_job(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    # Given a job naming a ServiceAccount that does not exist (admission refuses its pods)
    kubernetes = {"nodeSelector": {"kubetune.test/pool": "operator"}, "serviceAccountName": "missing"}
    kubectl("apply", "-f", "-", input=job_manifest("refused", nodes=1, kubernetes=kubernetes))

    # Then the status and a Warning Event say why, and no pod exists
    found = wait_event_reasons(kube_cluster, kube_namespace, "refused", "FailedCreatePod")
    message = next(m for _, r, m in found if r == "FailedCreatePod")
    assert 'serviceaccount "missing" not found' in message
    assert "cannot create worker pods" in status(kube_cluster, kube_namespace, "refused")["message"]
    assert workers(kube_cluster, kube_namespace, "refused") == []

    # And creating the ServiceAccount lets the job start on the next retry
    kubectl("create", "serviceaccount", "missing")
    running_workers(kube_cluster, kube_namespace, "refused", 1)


def test_a_new_job_whose_worker_names_are_taken_neither_duplicates_nor_restarts(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    """The operator's first look at a job no operator has touched skips reading its pods (it cannot have
    any yet, unless an operator died before writing the status); pods that already hold its workers' names
    must send it back to a proper look, not be counted as its own or as a failure. Children that a deleted
    earlier job of the same name still controls (deleted and applied again before the garbage collector
    ran) are replaced; objects of anyone else are never touched (test_faults_cluster)."""
    core: Any = client.CoreV1Api(kube_cluster.api_client())

    def create_workers(name: str, owner: dict[str, Any], owned_pods: bool) -> dict[str, str]:
        """The job's ServiceAccount and 2 worker pods, controlled by `owner` (pods: only if `owned_pods`)."""
        spec = parse_spec(get_job(kube_cluster, kube_namespace, name)["spec"])
        ref = JobRef(name, kube_namespace, owner["metadata"]["uid"])
        reference = {**ownership(owner), "controller": True}
        # (the pods' admission needs the ServiceAccount; it gets its owner only after them, so that the
        # garbage collector, which removes what a deleted owner leaves, cannot take it away before)
        (account,) = [c for c in build_job_children(ref, spec) if c["kind"] == "ServiceAccount"]
        account["metadata"]["ownerReferences"] = []
        core.create_namespaced_service_account(kube_namespace, account)
        created = {}
        for index in range(2):
            pod = build_worker_pod(WorkerContext(ref, spec, index, 0, "kubetune/trainer:test"), 1)
            pod["metadata"]["ownerReferences"] = [reference] if owned_pods else []
            created[pod["metadata"]["name"]] = core.create_namespaced_pod(kube_namespace, pod).metadata.uid
        core.patch_namespaced_service_account(
            account["metadata"]["name"], kube_namespace, {"metadata": {"ownerReferences": [reference]}}
        )
        return created

    # Given an operator that died after creating a job's pods and before writing its status,
    operator.kill()
    kubectl("apply", "-f", "-", input=job_manifest("adopted", nodes=2))
    adopted = get_job(kube_cluster, kube_namespace, "adopted")
    before = create_workers("adopted", adopted, owned_pods=True)
    # and a new job whose worker names and ServiceAccount are still held by the children of a deleted
    # earlier job of the same name (the garbage collector has not removed them yet)
    kubectl("apply", "-f", "-", input=job_manifest("reused", nodes=2))
    earlier = {
        "apiVersion": adopted["apiVersion"],
        "kind": adopted["kind"],
        "metadata": {"name": "reused", "uid": "0b0e0000-0000-4000-8000-00000000dead"},
    }
    leftovers = create_workers("reused", earlier, owned_pods=True)

    operator.start()

    # Then the first job's pods are adopted as they are
    wait_phase(kube_cluster, kube_namespace, "adopted", "Running")
    after = {p.metadata.name: p.metadata.uid for p in workers(kube_cluster, kube_namespace, "adopted")}
    assert after == before
    assert status(kube_cluster, kube_namespace, "adopted")["restarts"] == 0
    # and the second job replaces the leftovers with pods of its own, without counting a restart
    reused = get_job(kube_cluster, kube_namespace, "reused")["metadata"]["uid"]

    def own_pods_running() -> list[Any] | None:
        pods = running_workers(kube_cluster, kube_namespace, "reused", 2)
        owned = all(
            p.metadata.owner_references and p.metadata.owner_references[0].uid == reused for p in pods
        )
        return pods if owned else None

    pods = wait_for(own_pods_running, 60, "the reused job's own pods")
    assert not {p.metadata.uid for p in pods} & set(leftovers.values())
    wait_phase(kube_cluster, kube_namespace, "reused", "Running")
    assert status(kube_cluster, kube_namespace, "reused")["restarts"] == 0
    account = core.read_namespaced_service_account("reused-worker", kube_namespace)
    assert [r.uid for r in account.metadata.owner_references if r.controller] == [reused]


def ownership(owner: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to the FineTuneJob `owner`."""
    metadata = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": metadata["name"],
        "uid": metadata["uid"],
    }
