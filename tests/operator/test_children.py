"""Given a FineTuneJob spec, the builders write the Service, ConfigMap, progress RBAC and worker pods a user
expects: the env contract, GPUs, /dev/shm, volumes, the HF token Secret, placement, a non-root security
context, owner references; every object valid against the Kubernetes 1.36 OpenAPI schema."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubetune.contract import NodeContext
from kubetune.controller.children import (
    JobRef,
    WorkerContext,
    build_config_map,
    build_job_children,
    build_progress_rbac,
    build_service,
    build_worker_pod,
)
from kubetune.spec import SpecError, parse_job, parse_spec
from kubetune.spec.models import FineTuneJobSpec

JOB = JobRef(name="bert", namespace="team-a", uid="1234")
K8S_VERSION = "1.36.0"


def spec(**overrides: Any) -> FineTuneJobSpec:
    document: dict[str, Any] = {
        "model": {"name": "prajjwal1/bert-tiny"},
        "dataset": {"name": "glue", "config": "sst2"},
        "distribution": {"nodes": 4, "processesPerNode": 8, "mainPort": 23456},
    }
    document.update(overrides)
    return parse_spec(document)


def worker(index: int = 1, attempt: int = 2, **overrides: Any) -> dict[str, Any]:
    return build_worker_pod(
        WorkerContext(JOB, spec(**overrides), index, attempt, "registry/trainer:1"), generation=3
    )


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def mounts_of(pod: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}


def volumes_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["spec"]["volumes"]}


def test_a_worker_carries_the_launcher_contract_for_its_rank() -> None:
    pod = worker(index=1, attempt=2)
    context = NodeContext.from_env({k: v for k, v in env_of(pod).items() if isinstance(v, str)})
    assert (context.node_rank, context.num_nodes, context.procs_per_node) == (1, 4, 8)
    assert context.main_addr == "bert-worker-0.bert.team-a.svc"
    assert context.main_port == 23456
    assert context.attempt == 2
    assert context.job_file == "/etc/kubetune/job.yaml"
    assert (context.job_name, context.job_namespace) == ("bert", "team-a")
    assert context.termination_log == "/dev/termination-log"
    assert pod["metadata"]["name"] == "bert-worker-1"
    assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == ("bert-worker-1", "bert")
    labels = pod["metadata"]["labels"]
    assert labels["kubetune.io/node-rank"] == "1" and labels["kubetune.io/attempt"] == "2"


def test_a_worker_requests_one_gpu_per_process_and_runs_the_trainer_like_a_batch_pod() -> None:
    pod = worker(kubernetes={"resources": {"cpu": "8", "memory": "64Gi"}})
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "8"}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["command"] == ["kubetune", "train"]
    assert container["image"] == "registry/trainer:1"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["spec"]["restartPolicy"] == "Never"
    override = worker(kubernetes={"resources": {"gpusPerNode": 0}})
    assert override["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "8", "memory": "16Gi"}}


def test_a_worker_asking_only_for_gpus_gets_cpu_and_memory_requests_so_it_is_not_best_effort() -> None:
    """A pod with only extended resources is BestEffort: evicted and OOM-killed first. Default requests
    (per process, no limits) make it Burstable; given CPU and memory make it Guaranteed."""
    resources = worker()["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": "8"}
    assert resources["requests"] == {"cpu": "8", "memory": "16Gi", "nvidia.com/gpu": "8"}
    partial = worker(kubernetes={"resources": {"memory": "64Gi"}})["spec"]["containers"][0]["resources"]
    assert partial["requests"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "8"}
    assert partial["limits"] == {"memory": "64Gi", "nvidia.com/gpu": "8"}


def test_a_worker_is_told_how_many_gpus_it_was_given_so_a_gpu_pod_without_cuda_fails_at_once() -> None:
    """The trainer refuses to fall back to CPU when the launcher gave it GPUs (KUBETUNE_GPUS_PER_NODE)."""
    assert (
        NodeContext.from_env({k: v for k, v in env_of(worker()).items() if isinstance(v, str)}).gpus_per_node
        == 8
    )
    cpu_pod = worker(kubernetes={"resources": {"gpusPerNode": 0}})
    assert (
        NodeContext.from_env({k: v for k, v in env_of(cpu_pod).items() if isinstance(v, str)}).gpus_per_node
        == 0
    )


def test_the_grace_period_for_the_last_checkpoint_comes_from_the_spec() -> None:
    assert worker()["spec"]["terminationGracePeriodSeconds"] == 120
    slow = worker(kubernetes={"terminationGracePeriodSeconds": 900})
    assert slow["spec"]["terminationGracePeriodSeconds"] == 900


def test_a_worker_mounts_the_config_shm_output_and_cache_volumes() -> None:
    pod = worker(
        kubernetes={
            "outputVolume": {"claimName": "runs", "mountPath": "/output"},
            "cacheVolume": {"claimName": "hf-cache", "mountPath": "/hf"},
            "resources": {"shmSize": "16Gi"},
        }
    )
    mounts, volumes = mounts_of(pod), volumes_of(pod)
    assert mounts == {
        "kubetune-config": "/etc/kubetune",
        "dshm": "/dev/shm",
        "output": "/output",
        "tmp": "/tmp",
        "hf-cache": "/hf",
    }
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["output"]["persistentVolumeClaim"] == {"claimName": "runs"}
    assert volumes["hf-cache"]["persistentVolumeClaim"] == {"claimName": "hf-cache"}
    assert volumes["kubetune-config"]["configMap"] == {"name": "bert-config"}
    assert env_of(pod)["HF_HOME"] == "/hf"


def test_the_hf_token_comes_from_the_secret_reference_never_inline() -> None:
    pod = worker(kubernetes={"hfTokenSecret": {"name": "hf", "key": "token"}})
    assert env_of(pod)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_placement_comes_from_the_spec() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                ]
            }
        }
    }
    pod = worker(
        kubernetes={
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": affinity,
            "priorityClassName": "training",
            "schedulerName": "volcano",
            "imagePullSecrets": ["regcred"],
            "labels": {"team": "nlp"},
            "env": {"NCCL_DEBUG": "INFO"},
        }
    )
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert pod["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        *NODE_LOSS_DEFAULT,
    ]
    assert pod["spec"]["affinity"] == affinity
    assert pod["spec"]["priorityClassName"] == "training"
    assert pod["spec"]["schedulerName"] == "volcano"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["labels"]["team"] == "nlp"
    assert env_of(pod)["NCCL_DEBUG"] == "INFO"


NODE_LOSS_DEFAULT = [
    {
        "key": "node.kubernetes.io/not-ready",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 60,
    },
    {
        "key": "node.kubernetes.io/unreachable",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 60,
    },
]


def test_workers_leave_a_node_that_stopped_reporting_after_node_loss_timeout_seconds() -> None:
    """Without these tolerations the API server gives every pod 300 s on a NotReady/unreachable node; a job's
    own toleration of either key (or of every taint) wins."""
    assert worker()["spec"]["tolerations"] == NODE_LOSS_DEFAULT
    pod = worker(runPolicy={"nodeLossTimeoutSeconds": 15})
    assert [t["tolerationSeconds"] for t in pod["spec"]["tolerations"]] == [15, 15]
    own = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}
    pod = worker(kubernetes={"tolerations": [own]})
    assert pod["spec"]["tolerations"] == [own, NODE_LOSS_DEFAULT[0]]
    everything = {"operator": "Exists"}
    assert worker(kubernetes={"tolerations": [everything]})["spec"]["tolerations"] == [everything]


def test_user_labels_and_env_cannot_override_the_operators_identity() -> None:
    """The operator's env wins over the job's; its label keys (and Kueue's, which would make Kueue take the
    workers for plain pods of its own) are refused in the spec, naming the field."""
    pod = worker(kubernetes={"env": {"KUBETUNE_NODE_RANK": "0", "HF_HOME": "/elsewhere"}})
    assert env_of(pod)["KUBETUNE_NODE_RANK"] == "1"
    assert env_of(pod)["HF_HOME"] == "/cache"
    assert [e["name"] for e in pod["spec"]["containers"][0]["env"]].count("HF_HOME") == 1
    for key in ("kubetune.io/job-name", "kueue.x-k8s.io/queue-name", "app.kubernetes.io/component"):
        with pytest.raises(SpecError) as refused:
            spec(kubernetes={"labels": {key: "other"}})
        assert [p.field for p in refused.value.problems] == ["spec.kubernetes.labels"]
        assert "kubetune's own or Kueue's" in str(refused.value)
    with pytest.raises(SpecError, match=r"spec\.kubernetes\.annotations"):
        spec(kubernetes={"annotations": {"Kubetune.IO/spec-generation": "9"}})


def test_workers_run_as_non_root_without_privileges() -> None:
    pod = worker()
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    container = pod["spec"]["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["readOnlyRootFilesystem"] is True


def test_without_an_output_volume_the_output_and_tmp_are_empty_dirs_on_the_read_only_root() -> None:
    pod = worker(output={"path": "/results"})
    assert mounts_of(pod)["output"] == "/results"
    assert mounts_of(pod)["tmp"] == "/tmp"
    assert volumes_of(pod)["output"] == {"name": "output", "emptyDir": {}}
    assert volumes_of(pod)["tmp"] == {"name": "tmp", "emptyDir": {}}


def test_every_child_is_owned_by_the_job_so_deleting_it_collects_them() -> None:
    children = [*build_job_children(JOB, spec()), worker()]
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "name": "bert",
            "uid": "1234",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["labels"]["kubetune.io/job-name"] == "bert"


def test_the_headless_service_publishes_workers_before_they_are_ready() -> None:
    service = build_service(JOB, spec())
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"kubetune.io/job-name": "bert", "kubetune.io/role": "worker"}
    assert service["metadata"]["name"] == "bert"


def test_the_config_map_holds_the_job_with_defaults_and_the_launch_configs() -> None:
    job_spec = spec(distribution={"nodes": 2, "deepspeed": {"zeroStage": 2}})
    data = build_config_map(JOB, job_spec)["data"]
    job = parse_job(yaml.safe_load(data["job.yaml"]))
    assert job.spec == job_spec and job.metadata.name == "bert"
    assert json.loads(data["deepspeed.json"])["zero_optimization"]["stage"] == 2
    accelerate = yaml.safe_load(data["accelerate.yaml"])
    assert accelerate["distributed_type"] == "DEEPSPEED" and accelerate["num_machines"] == 2
    assert "deepspeed.json" not in build_config_map(JOB, spec())["data"]


def test_progress_rbac_grants_patch_on_this_jobs_status_only() -> None:
    account, role, binding = build_progress_rbac(JOB, spec())
    assert account["metadata"]["name"] == "bert-worker"
    assert role["rules"] == [
        {
            "apiGroups": ["kubetune.io"],
            "resources": ["finetunejobs/status"],
            "resourceNames": ["bert"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "bert-worker", "namespace": "team-a"}]
    pod = worker()
    assert pod["spec"]["serviceAccountName"] == "bert-worker"
    assert pod["spec"]["automountServiceAccountToken"] is True


def test_without_progress_reporting_workers_get_no_api_token() -> None:
    assert build_progress_rbac(JOB, spec(runPolicy={"reportProgress": False})) == []
    pod = worker(runPolicy={"reportProgress": False})
    assert "serviceAccountName" not in pod["spec"]
    assert pod["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    "overrides", [{}, {"kubernetes": {"outputVolume": {"mountPath": "/o", "sizeLimit": "1Gi"}}}]
)
def test_every_object_is_valid_kubernetes(overrides: dict[str, Any]) -> None:
    objects = [*build_job_children(JOB, spec(**overrides)), worker(**overrides)]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_secret_env_and_env_from_secrets_reach_the_worker_by_reference_only() -> None:
    pod = worker(
        kubernetes={
            "secretEnv": {"WANDB_API_KEY": {"name": "wandb", "key": "api-key"}},
            "envFromSecrets": ["shared-keys"],
        }
    )
    container = pod["spec"]["containers"][0]
    entry = next(e for e in container["env"] if e["name"] == "WANDB_API_KEY")
    assert entry == {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}},
    }
    assert container["envFrom"] == [{"secretRef": {"name": "shared-keys"}}]


def test_the_pod_overlay_adds_devices_volumes_and_capabilities() -> None:
    pod = worker(
        kubernetes={
            "annotations": {"k8s.v1.cni.cncf.io/networks": "ib-net"},
            "podOverlay": {
                "extraResources": {"rdma/hca_shared_devices_a": "1"},
                "volumes": [{"name": "ib", "source": {"hostPath": {"path": "/dev/infiniband"}}}],
                "volumeMounts": [{"name": "ib", "mountPath": "/dev/infiniband"}],
                "addCapabilities": ["IPC_LOCK"],
            },
        }
    )
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["rdma/hca_shared_devices_a"] == "1"
    assert container["resources"]["requests"]["rdma/hca_shared_devices_a"] == "1"
    assert {"name": "ib", "hostPath": {"path": "/dev/infiniband"}} in pod["spec"]["volumes"]
    assert mounts_of(pod)["ib"] == "/dev/infiniband"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "ib-net"


@pytest.mark.parametrize(
    ("overlay", "named"),
    [
        ({"volumes": [{"name": "dshm", "source": {"emptyDir": {}}}]}, "kubetune's own volume names"),
        ({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "not in podOverlay.volumes"),
        (
            {
                "volumes": [{"name": "v", "source": {"emptyDir": {}}}],
                "volumeMounts": [{"name": "v", "mountPath": "/etc/kubetune"}],
            },
            "kubetune's own mount paths",
        ),
        ({"extraResources": {"cpu": "4"}}, "extended resources"),
        ({"addCapabilities": ["SYS_ADMIN"]}, "addCapabilities"),
    ],
)
def test_an_invalid_pod_overlay_is_refused_naming_the_field(overlay: dict[str, Any], named: str) -> None:
    with pytest.raises(SpecError) as refused:
        spec(kubernetes={"podOverlay": overlay})
    assert "podOverlay" in str(refused.value) and named in str(refused.value)


def test_object_storage_hub_and_wandb_credentials_come_from_secret_references_never_inline() -> None:
    """Issue 13: the operator maps each Secret key into the worker's environment (valueFrom); the values
    never appear in the pod."""
    pod = worker(
        output={
            "objectStorage": {
                "uri": "s3://models/bert",
                "endpoint": "http://minio.storage:9000",
                "credentialsSecret": {"name": "s3", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"},
            },
            "hub": {"repoId": "org/bert", "tokenSecret": {"name": "hub", "key": "write-token"}},
        },
        tracking={"wandb": {"project": "p", "apiKeySecret": {"name": "wandb", "key": "api-key"}}},
    )
    env = env_of(pod)
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "id"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "secret"}}
    assert env["KUBETUNE_HUB_TOKEN"] == {"secretKeyRef": {"name": "hub", "key": "write-token"}}
    assert env["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wandb", "key": "api-key"}}
    # Without them: no such variables (the pod's ambient credentials, if any, apply).
    assert not {"AWS_ACCESS_KEY_ID", "KUBETUNE_HUB_TOKEN", "WANDB_API_KEY"} & set(env_of(worker()))
