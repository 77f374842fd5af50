"""Deterministic names and labels of everything the operator creates for a FineTuneJob.

Every child's name is a pure function of the job's name, so a restarted operator finds (and adopts) what an
earlier process created instead of creating a duplicate.
"""

from __future__ import annotations

from kubetune.spec.models import API_GROUP

MANAGED_BY = "kubetune-operator"
FIELD_MANAGER = "kubetune-operator"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_JOB = f"{API_GROUP}/job-name"
LABEL_ROLE = f"{API_GROUP}/role"
LABEL_NODE_RANK = f"{API_GROUP}/node-rank"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"
ANNOTATION_SPEC_GENERATION = f"{API_GROUP}/spec-generation"
# The label by which the coscheduling plugin of kubernetes-sigs/scheduler-plugins finds a pod's PodGroup
# (apis/scheduling/v1alpha1 PodGroupLabel, v0.34.7).
LABEL_POD_GROUP = "scheduling.x-k8s.io/pod-group"

ROLE_WORKER = "worker"
WORKER_CONTAINER = "trainer"

CONFIG_MOUNT_PATH = "/etc/kubetune"
JOB_FILE_KEY = "job.yaml"
DEEPSPEED_FILE_KEY = "deepspeed.json"
ACCELERATE_FILE_KEY = "accelerate.yaml"


def service_name(job: str) -> str:
    """The headless Service (rendezvous DNS): named like the job, so hostnames read <job>-worker-0.<job>."""
    return job


def config_map_name(job: str) -> str:
    return f"{job}-config"


def service_account_name(job: str) -> str:
    """The per-job ServiceAccount the workers run as when the user names none."""
    return f"{job}-worker"


def progress_role_name(job: str) -> str:
    return f"{job}-progress"


def pod_group_name(job: str) -> str:
    """The job's PodGroup (spec.kubernetes.podGroupPolicy): named like the job, as Kubeflow Trainer names a
    TrainJob's, and one for every attempt (see kubetune.controller.pod_groups)."""
    return job


def worker_name(job: str, index: int) -> str:
    """Worker pod name and hostname: <job>-worker-<index> (stable across gang restarts)."""
    return f"{job}-worker-{index}"


def main_address(job: str, namespace: str) -> str:
    """Stable DNS name of worker 0 through the headless Service (resolves with the pod's search path)."""
    return f"{worker_name(job, 0)}.{service_name(job)}.{namespace}.svc"


def job_labels(job: str) -> dict[str, str]:
    """Labels on every child of a job (the selector the operator lists pods with)."""
    return {LABEL_NAME: "kubetune", LABEL_MANAGED_BY: MANAGED_BY, LABEL_JOB: job}


def worker_selector(job: str) -> str:
    """Label selector string of a job's worker pods."""
    return f"{LABEL_JOB}={job},{LABEL_ROLE}={ROLE_WORKER}"
