"""Pure builders of the Kubernetes objects a FineTuneJob owns (dicts in the API's camelCase JSON form).

Workers are **bare pods**, one per node, created by the operator itself; not an Indexed Job. Why:

* The unit of failure of a static torch.distributed world is the whole gang: when one rank dies, the others
  hang in a collective or fail. A Job restarts *single* pods, which would rejoin a world that no longer
  exists; JobSet works around that by recreating whole Jobs. Owning the pods makes "delete the gang, wait
  until it is gone, back off, create the next attempt" one small, testable state machine (`plan.py`).
* The attempt number (KUBETUNE_ATTEMPT) and the rank are part of each pod at creation; a Job's template is
  immutable, so every attempt would need a new Job anyway.
* Half the API writes at scale (N pods instead of a Job plus N pods), no dependence on the Job controller's
  batching delays (apply → pods is a benchmark target), and the pods' exit codes and termination messages
  are read directly.
The cost, doing retries and cleanup ourselves, is exactly the gang logic we need anyway. Pods get
deterministic names (<job>-worker-<index>) and owner references, so creation is create-or-adopt and deleting
the FineTuneJob garbage-collects everything without a finalizer.

Each concern of a worker pod (rendezvous, resources, volumes, placement, security, progress identity) is a
small function adding to the pod being built, in the spirit of Kubeflow Trainer's runtime plugins.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.contract import DEFAULT_TERMINATION_LOG, NodeContext
from kubetune.controller import names
from kubetune.controller.delivery_env import delivery_env
from kubetune.launch import accelerate_config, deepspeed_config
from kubetune.spec.loading import dump_job, to_yaml
from kubetune.spec.models import (
    API_GROUP,
    API_VERSION,
    KIND,
    FineTuneJob,
    FineTuneJobSpec,
    ObjectMeta,
    Toleration,
    covers,
)

DEFAULT_IMAGE = "ghcr.io/kubetune/trainer:latest"
# Seconds a worker gets between SIGTERM and SIGKILL: enough for the trainer to write a checkpoint.
TERMINATION_GRACE_SECONDS = 120
# The non-root identity of the workers (the trainer image's user); fsGroup makes PVCs writable for it.
WORKER_UID = 1000
CACHE_MOUNT_PATH = "/cache"
TMP_MOUNT_PATH = "/tmp"
# Requests per process when spec.kubernetes.resources gives no CPU or memory (Burstable QoS by default).
DEFAULT_CPU_PER_PROCESS = 1
DEFAULT_MEMORY_GI_PER_PROCESS = 2


@dataclass(frozen=True)
class JobRef:
    """Identity of the owning FineTuneJob."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class WorkerContext:
    """Everything a worker-pod plugin may read."""

    job: JobRef
    spec: FineTuneJobSpec
    index: int
    attempt: int
    image: str
    # Kueue's admission: the node labels and tolerations of the assigned ResourceFlavors (None: no queue).
    flavor_node_selector: dict[str, str] | None = None
    flavor_tolerations: tuple[dict[str, Any], ...] = ()

    @property
    def gpus(self) -> int:
        requested = self.spec.kubernetes.resources.gpus_per_node
        return self.spec.distribution.processes_per_node if requested is None else requested

    @property
    def service_account(self) -> str | None:
        """The ServiceAccount the workers run as: the user's, the per-job one, or none (no API access)."""
        if self.spec.kubernetes.service_account_name:
            return self.spec.kubernetes.service_account_name
        if self.spec.run_policy.report_progress:
            return names.service_account_name(self.job.name)
        return None


def owner_reference(job: JobRef) -> dict[str, Any]:
    """The ownerReference that makes a child garbage-collected with its FineTuneJob."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    job: JobRef, name: str, component: str, extra_labels: dict[str, str] | None = None
) -> dict[str, Any]:
    labels = {**names.job_labels(job.name), names.LABEL_COMPONENT: component, **(extra_labels or {})}
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }


# --- job-level children ----------------------------------------------------------------------------------------


def build_service(job: JobRef, spec: FineTuneJobSpec) -> dict[str, Any]:
    """The headless Service giving worker 0 the stable DNS name the other ranks rendezvous at.

    publishNotReadyAddresses: ranks resolve worker 0 while it is starting, long before any readiness.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, names.service_name(job.name), "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {names.LABEL_JOB: job.name, names.LABEL_ROLE: names.ROLE_WORKER},
            "ports": [
                {"name": "rendezvous", "port": spec.distribution.main_port, "protocol": "TCP"},
            ],
        },
    }


def config_files(job: JobRef, spec: FineTuneJobSpec) -> dict[str, str]:
    """The files mounted at /etc/kubetune: the job YAML with every default filled in (what `kubetune train`
    reads), plus the accelerate config and, with DeepSpeed, the DeepSpeed JSON it derives from it, so a user
    can see exactly what each node runs with (`kubectl get cm <job>-config -o yaml`).

    Raises LaunchConfigError when the raw DeepSpeed config contradicts the spec (the planner checks first).
    """
    document = FineTuneJob(metadata=ObjectMeta(name=job.name, namespace=job.namespace), spec=spec)
    files = {names.JOB_FILE_KEY: dump_job(document)}
    deepspeed_path = None
    if spec.distribution.deepspeed.enabled:
        files[names.DEEPSPEED_FILE_KEY] = json.dumps(deepspeed_config(spec), indent=2, sort_keys=True)
        deepspeed_path = f"{names.CONFIG_MOUNT_PATH}/{names.DEEPSPEED_FILE_KEY}"
    # One file for every node: the machine rank in it is node 0's; `kubetune train` passes each node's own
    # rank on the accelerate command line, which wins over the file.
    context = _node_context(job, spec, index=0, attempt=0)
    files[names.ACCELERATE_FILE_KEY] = to_yaml(
        accelerate_config(spec, context, deepspeed_path), sort_keys=True
    )
    return files


def build_config_map(job: JobRef, spec: FineTuneJobSpec) -> dict[str, Any]:
    """The ConfigMap holding `config_files` (mounted read-only into every worker)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, names.config_map_name(job.name), "config"),
        "data": config_files(job, spec),
    }


def build_progress_rbac(job: JobRef, spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """Least-privilege identity for live progress: the workers' ServiceAccount may get and patch the status
    of *this* FineTuneJob only (resourceNames), nothing else. Empty when reportProgress is off.

    Returns the ServiceAccount (only when the user named none), the Role and the RoleBinding.
    """
    if not spec.run_policy.report_progress:
        return []
    objects: list[dict[str, Any]] = []
    account = spec.kubernetes.service_account_name or names.service_account_name(job.name)
    if not spec.kubernetes.service_account_name:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": _metadata(job, account, "worker-identity"),
                "automountServiceAccountToken": False,  # mounted explicitly by the worker pods only
            }
        )
    role_name = names.progress_role_name(job.name)
    objects.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(job, role_name, "progress-reporter"),
            "rules": [
                {
                    "apiGroups": [API_GROUP],
                    "resources": ["finetunejobs/status"],
                    "resourceNames": [job.name],
                    "verbs": ["get", "patch"],
                }
            ],
        }
    )
    objects.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(job, role_name, "progress-reporter"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": job.namespace}],
        }
    )
    return objects


def build_job_children(job: JobRef, spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """Every child except the workers, in creation order."""
    return [build_service(job, spec), build_config_map(job, spec), *build_progress_rbac(job, spec)]


# --- worker pods -----------------------------------------------------------------------------------------------

WorkerPlugin = Callable[[dict[str, Any], WorkerContext], None]


def _node_context(
    job: JobRef, spec: FineTuneJobSpec, index: int, attempt: int, gpus_per_node: int | None = None
) -> NodeContext:
    return NodeContext(
        job_file=f"{names.CONFIG_MOUNT_PATH}/{names.JOB_FILE_KEY}",
        node_rank=index,
        num_nodes=spec.distribution.nodes,
        procs_per_node=spec.distribution.processes_per_node,
        main_addr=names.main_address(job.name, job.namespace),
        main_port=spec.distribution.main_port,
        termination_log=DEFAULT_TERMINATION_LOG,
        job_name=job.name,
        job_namespace=job.namespace,
        attempt=attempt,
        gpus_per_node=gpus_per_node,
    )


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = pod["spec"]["containers"][0]
    return container


def _add_env(pod: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    env = _container(pod).setdefault("env", [])
    known = {entry["name"] for entry in env}
    env.extend(entry for entry in entries if entry["name"] not in known)


def _add_volume(pod: dict[str, Any], volume: dict[str, Any], mount: dict[str, Any]) -> None:
    pod["spec"].setdefault("volumes", []).append(volume)
    _container(pod).setdefault("volumeMounts", []).append(mount)


def rendezvous_plugin(pod: dict[str, Any], ctx: WorkerContext) -> None:
    """Hostname/subdomain for worker 0's stable DNS name, and the launcher↔trainer env contract."""
    pod["spec"]["hostname"] = names.worker_name(ctx.job.name, ctx.index)
    pod["spec"]["subdomain"] = names.service_name(ctx.job.name)
    # The GPUs this pod asks for: a worker that gets none visible then fails at once instead of training on CPU.
    env = _node_context(ctx.job, ctx.spec, ctx.index, ctx.attempt, gpus_per_node=ctx.gpus).to_env()
    _add_env(pod, [{"name": key, "value": value} for key, value in env.items()])
    _container(pod)["ports"] = [{"name": "rendezvous", "containerPort": ctx.spec.distribution.main_port}]


def resources_plugin(pod: dict[str, Any], ctx: WorkerContext) -> None:
    """GPUs (one per process by default) as requests = limits; CPU/memory when given as requests = limits
    (with GPUs: Guaranteed QoS). When CPU or memory is not given, a request of DEFAULT_CPU_PER_PROCESS and
    DEFAULT_MEMORY_GI_PER_PROCESS per process (no limit): the pod is Burstable, never BestEffort, which the
    kubelet evicts and the OOM killer picks first, and the scheduler accounts for what it really uses."""
    wanted = ctx.spec.kubernetes.resources
    processes = max(1, ctx.spec.distribution.processes_per_node)
    limits: dict[str, str] = {}
    if wanted.cpu:
        limits["cpu"] = wanted.cpu
    if wanted.memory:
        limits["memory"] = wanted.memory
    if ctx.gpus:
        limits[wanted.gpu_resource_name] = str(ctx.gpus)
    requests = {
        "cpu": str(DEFAULT_CPU_PER_PROCESS * processes),
        "memory": f"{DEFAULT_MEMORY_GI_PER_PROCESS * processes}Gi",
        **limits,
    }
    resources: dict[str, Any] = {"requests": requests}
    if limits:
        resources["limits"] = limits
    _container(pod)["resources"] = resources


def volumes_plugin(pod: dict[str, Any], ctx: WorkerContext) -> None:
    """The job files, /dev/shm in memory, the output volume and the Hugging Face cache."""
    _add_volume(
        pod,
        {"name": "kubetune-config", "configMap": {"name": names.config_map_name(ctx.job.name)}},
        {"name": "kubetune-config", "mountPath": names.CONFIG_MOUNT_PATH, "readOnly": True},
    )
    _add_volume(
        pod,
        {
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": ctx.spec.kubernetes.resources.shm_size},
        },
        {"name": "dshm", "mountPath": "/dev/shm"},
    )
    output = ctx.spec.kubernetes.output_volume
    if output is not None:
        _add_volume(pod, _volume_source("output", output), {"name": "output", "mountPath": output.mount_path})
    elif any(
        covers(m.mount_path, ctx.spec.output.path) for m in ctx.spec.kubernetes.pod_overlay.volume_mounts
    ):
        pass  # output.path is on a volume of the user's podOverlay (a shared one, for several nodes)
    else:
        # The root filesystem is read-only: without a volume of the user's, the output lives (and dies) with
        # the pod, in an emptyDir at output.path.
        _add_volume(
            pod, {"name": "output", "emptyDir": {}}, {"name": "output", "mountPath": ctx.spec.output.path}
        )
    # Scratch for Python's tempfile, torch.distributed and DeepSpeed's op builds (TORCH_EXTENSIONS_DIR).
    _add_volume(pod, {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": TMP_MOUNT_PATH})
    cache = ctx.spec.kubernetes.cache_volume
    cache_path = cache.mount_path if cache is not None else CACHE_MOUNT_PATH
    volume = _volume_source("hf-cache", cache) if cache is not None else {"name": "hf-cache", "emptyDir": {}}
    _add_volume(pod, volume, {"name": "hf-cache", "mountPath": cache_path})
    _add_env(pod, [{"name": "HF_HOME", "value": cache_path}])


def _volume_source(name: str, source: Any) -> dict[str, Any]:
    if source.claim_name:
        return {"name": name, "persistentVolumeClaim": {"claimName": source.claim_name}}
    empty_dir: dict[str, Any] = {}
    if source.size_limit:
        empty_dir["sizeLimit"] = source.size_limit
    return {"name": name, "emptyDir": empty_dir}


def secrets_plugin(pod: dict[str, Any], ctx: WorkerContext) -> None:
    """HF_TOKEN from the Secret reference (never copied into the pod spec), and image pull secrets."""
    ref = ctx.spec.kubernetes.hf_token_secret
    if ref is not None:
        _add_env(
            pod, [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]
        )
    if ctx.spec.kubernetes.image_pull_secrets:
        pod["spec"]["imagePullSecrets"] = [{"name": name} for name in ctx.spec.kubernetes.image_pull_secrets]
    secret_env = ctx.spec.kubernetes.secret_env
    _add_env(
        pod,
        [
            {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            for name, ref in sorted(secret_env.items())
        ],
    )
    # Object storage, hub push and W&B credentials (issue 13).
    _add_env(pod, delivery_env(ctx.spec))
    if ctx.spec.kubernetes.env_from_secrets:
        _container(pod)["envFrom"] = [
            {"secretRef": {"name": name}} for name in ctx.spec.kubernetes.env_from_secrets
        ]


def placement_plugin(pod: dict[str, Any], ctx: WorkerContext) -> None:
    """Node selector, tolerations, affinity, priority class and scheduler from spec.kubernetes."""
    kube = ctx.spec.kubernetes
    spec = pod["spec"]
    if kube.node_selector:
        spec["nodeSelector"] = dict(kube.node_selector)
    tolerations = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in kube.tolerations]
    tolerations += node_loss_tolerations(kube.tolerations, ctx.spec.run_policy.node_loss_timeout_seconds)
    if tolerations:
        spec["tolerations"] = tolerations
    if kube.affinity is not None and kube.affinity.to_pod():
        spec["affinity"] = kube.affinity.to_pod()
    if kube.priority_class_name:
        spec["priorityClassName"] = kube.priority_class_name
    if kube.scheduler_name:
        spec["schedulerName"] = kube.scheduler_name


NODE_LOSS_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def node_loss_tolerations(own: Sequence[Toleration], seconds: int) -> list[dict[str, Any]]:
    """NoExecute tolerations of the taints the node controller puts on a node that stopped reporting, for
    `seconds` (runPolicy.nodeLossTimeoutSeconds): then the taint manager evicts the worker and the gang
    restarts, instead of the API server's default 300 s. A key the job tolerates itself keeps the job's."""
    mine = {t.key for t in own if t.effect in (None, "NoExecute")}
    if any(t.key is None and t.operator == "Exists" for t in own):
        return []  # the job tolerates every taint, for ever: its choice
    return [
        {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}
        for key in NODE_LOSS_TAINTS
        if key not in mine
    ]


def pod_group_plugin(pod: dict[str, Any], ctx: WorkerContext) -> None:
    """spec.kubernetes.podGroupPolicy: the label that puts the worker in the job's PodGroup, which the
    coscheduling plugin schedules all together or not at all (kubetune.controller.pod_groups)."""
    policy = ctx.spec.kubernetes.pod_group_policy
    if policy is not None and policy.coscheduling is not None:
        pod["metadata"]["labels"][names.LABEL_POD_GROUP] = names.pod_group_name(ctx.job.name)


def flavor_plugin(pod: dict[str, Any], ctx: WorkerContext) -> None:
    """Kueue's flavor assignment: the flavors' node labels join the node selector (a label the job sets
    itself to another value keeps the flavor's: Kueue admitted the gang for that flavor's nodes), their
    tolerations join the job's."""
    spec = pod["spec"]
    if ctx.flavor_node_selector:
        spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **ctx.flavor_node_selector}
    for toleration in ctx.flavor_tolerations:
        existing = spec.setdefault("tolerations", [])
        if toleration not in existing:
            existing.append(dict(toleration))


def security_plugin(pod: dict[str, Any], ctx: WorkerContext) -> None:
    """Non-root, no privilege escalation, no capabilities, RuntimeDefault seccomp (PSS 'restricted')."""
    pod["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": WORKER_UID,
        "runAsGroup": WORKER_UID,
        "fsGroup": WORKER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    _container(pod)["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        # Writable space is the pod's volumes only (/tmp, the output, the cache, /dev/shm).
        "readOnlyRootFilesystem": True,
    }


def identity_plugin(pod: dict[str, Any], ctx: WorkerContext) -> None:
    """The ServiceAccount for live progress; without one the pod gets no API token at all."""
    account = ctx.service_account
    if account:
        pod["spec"]["serviceAccountName"] = account
        pod["spec"]["automountServiceAccountToken"] = ctx.spec.run_policy.report_progress or bool(
            ctx.spec.kubernetes.service_account_name
        )
    else:
        pod["spec"]["automountServiceAccountToken"] = False


def user_extras_plugin(pod: dict[str, Any], ctx: WorkerContext) -> None:
    """Extra env, labels and annotations from spec.kubernetes (ours win on a clash: they carry identity)."""
    kube = ctx.spec.kubernetes
    _add_env(pod, [{"name": key, "value": value} for key, value in sorted(kube.env.items())])
    pod["metadata"]["labels"] = {**kube.labels, **pod["metadata"]["labels"]}
    if kube.annotations:
        pod["metadata"]["annotations"] = {**kube.annotations, **pod["metadata"].get("annotations", {})}


def overlay_plugin(pod: dict[str, Any], ctx: WorkerContext) -> None:
    """spec.kubernetes.podOverlay: extra device resources (requests = limits), volumes and their mounts,
    added capabilities. Validated in the spec (no clash with kubetune's own names and paths)."""
    overlay = ctx.spec.kubernetes.pod_overlay
    container = _container(pod)
    if overlay.extra_resources:
        resources = container.setdefault("resources", {})
        for part in ("requests", "limits"):
            resources[part] = {**resources.get(part, {}), **overlay.extra_resources}
    mounts = {m.name: m for m in overlay.volume_mounts}
    for volume in overlay.volumes:
        pod["spec"].setdefault("volumes", []).append({"name": volume.name, **volume.source.to_pod()})
    for mount in mounts.values():
        entry: dict[str, Any] = {"name": mount.name, "mountPath": mount.mount_path}
        if mount.read_only:
            entry["readOnly"] = True
        if mount.sub_path:
            entry["subPath"] = mount.sub_path
        container.setdefault("volumeMounts", []).append(entry)
    if overlay.add_capabilities:
        capabilities = container.setdefault("securityContext", {}).setdefault("capabilities", {})
        capabilities["add"] = list(overlay.add_capabilities)


WORKER_PLUGINS: tuple[WorkerPlugin, ...] = (
    rendezvous_plugin,
    resources_plugin,
    volumes_plugin,
    secrets_plugin,
    placement_plugin,
    pod_group_plugin,
    flavor_plugin,
    security_plugin,
    identity_plugin,
    user_extras_plugin,
    overlay_plugin,
)


def build_worker_pod(ctx: WorkerContext, generation: int | None = None) -> dict[str, Any]:
    """Worker pod `ctx.index` of attempt `ctx.attempt`: the base pod plus every plugin in WORKER_PLUGINS."""
    labels = {
        names.LABEL_ROLE: names.ROLE_WORKER,
        names.LABEL_NODE_RANK: str(ctx.index),
        names.LABEL_ATTEMPT: str(ctx.attempt),
    }
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(ctx.job, names.worker_name(ctx.job.name, ctx.index), "worker", labels),
        "spec": {
            "restartPolicy": "Never",  # restarts are gang-wide, decided by the operator
            "terminationGracePeriodSeconds": (
                ctx.spec.kubernetes.termination_grace_period_seconds or TERMINATION_GRACE_SECONDS
            ),
            "enableServiceLinks": False,  # no env var per Service in the namespace
            "containers": [
                {
                    "name": names.WORKER_CONTAINER,
                    "image": ctx.image,
                    "command": ["kubetune", "train"],
                    "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
                    "terminationMessagePath": DEFAULT_TERMINATION_LOG,
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        },
    }
    if generation is not None:
        pod["metadata"]["annotations"] = {names.ANNOTATION_SPEC_GENERATION: str(generation)}
    if ctx.spec.kubernetes.image_pull_policy:
        _container(pod)["imagePullPolicy"] = ctx.spec.kubernetes.image_pull_policy
    for plugin in WORKER_PLUGINS:
        plugin(pod, ctx)
    return pod
